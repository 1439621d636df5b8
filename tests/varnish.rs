//! A real Varnish in front of the server, purged as CARTO purges its Varnish (`PURGE` with an
//! `X-Cache-Channel` pattern, banned by the VCL): a tile Varnish keeps is fresh within a second
//! after a write through the SQL API and after a write straight into PostgreSQL.
mod support;

use std::time::{Duration, Instant};

use geostack::auth::{Grants, UserName};
use geostack::server::{KeyRequest, Purge};
use geostack_testkit::TestVarnish;
use support::{app_with, encode, request_to, until};

#[tokio::test]
async fn a_tile_varnish_keeps_is_fresh_within_a_second_after_a_write() {
    let port = geostack_testkit::free_port();
    let app = app_with(|c| {
        c.purge(Purge::Varnish(
            format!("http://127.0.0.1:{port}/").parse().unwrap(),
        ))
    })
    .await;
    let varnish = TestVarnish::start_on(port, app.addr);
    let front = varnish.addr();
    let tile = "/tiles/countries/2/2/1.mvt";

    // Kept by Varnish: the second answer is a hit (two transaction ids, an age).
    let first = request_to(front, "GET", tile, &[], b"").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let channel = first.header("x-cache-channel").unwrap().to_owned();
    assert!(
        channel.split([':', ',']).any(|t| t == "public.countries"),
        "{channel}"
    );
    let hit = request_to(front, "GET", tile, &[], b"").await;
    assert_eq!(hit.header("etag"), first.header("etag"));
    assert_eq!(
        hit.header("x-varnish").unwrap().split(' ').count(),
        2,
        "not a hit: {:?}",
        hit.headers
    );

    // Straight into PostgreSQL.
    sqlx::raw_sql("update countries set name = name || ' (direct)'")
        .execute(app.db.pool())
        .await
        .unwrap();
    let written = Instant::now();
    let fresh = until(
        "fresh after a direct write",
        Duration::from_secs(1),
        async || {
            let r = request_to(front, "GET", tile, &[], b"").await;
            (r.header("etag") != first.header("etag")).then_some(r)
        },
    )
    .await;
    eprintln!(
        "varnish: fresh {:?} after a direct write",
        written.elapsed()
    );
    assert_eq!(fresh.status, 200);

    // Through the SQL API, with alice's master key.
    let (_, master) = app
        .server
        .auth()
        .create_key(
            &UserName::new("alice").unwrap(),
            KeyRequest::Master,
            Grants::new(),
        )
        .await
        .unwrap();
    let update = format!(
        "/api/v2/sql?q={}&api_key={}",
        encode("update countries set name = name || ' (api)'"),
        master.expose()
    );
    let r = app.get(&update).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let written = Instant::now();
    until(
        "fresh after an API write",
        Duration::from_secs(1),
        async || {
            let r = request_to(front, "GET", tile, &[], b"").await;
            (r.header("etag") != fresh.header("etag")).then_some(())
        },
    )
    .await;
    eprintln!("varnish: fresh {:?} after an API write", written.elapsed());
    // A table the tile does not read leaves it cached.
    let kept = request_to(front, "GET", tile, &[], b"").await;
    sqlx::raw_sql("insert into notes (note) values ('elsewhere')")
        .execute(app.db.pool())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = request_to(front, "GET", tile, &[], b"").await;
    assert_eq!(still.header("x-varnish").unwrap().split(' ').count(), 2);
    assert_eq!(still.header("etag"), kept.header("etag"));
}

#[tokio::test]
async fn a_purge_hook_hears_of_every_changed_table() {
    // The hook: a server of the test's own that keeps what it is sent.
    let heard: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let kept = std::sync::Arc::clone(&heard);
    let hook = axum::Router::new().route(
        "/purge",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = std::sync::Arc::clone(&kept);
            async move {
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, hook).await;
    });
    let app =
        app_with(|c| c.purge(Purge::Hook(format!("http://{at}/purge").parse().unwrap()))).await;
    // Written again until heard: the server starts listening a moment after it starts.
    until("the hook heard", Duration::from_secs(5), async || {
        sqlx::raw_sql("insert into notes (note) values ('hooked')")
            .execute(app.db.pool())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        heard
            .lock()
            .unwrap()
            .contains(&serde_json::json!({"tables": ["public.notes"]}))
            .then_some(())
    })
    .await;
    serving.abort();
}
