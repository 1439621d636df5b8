//! Fair share between callers, end to end: anonymous callers are limited per client address
//! (`X-Forwarded-For` believed only from a trusted proxy), one caller cannot hold its role's
//! pool, and an exhausted pool answers 429 with `Retry-After` and no driver words.
mod support;

use std::time::{Duration, Instant};

use geostack::auth::Quota;
use support::{app_with, encode, until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn sql(q: &str) -> String {
    format!("/api/v2/sql?q={}", encode(q))
}

/// About two seconds of work for the public role.
/// Waits until a query of the public role runs (on a busy machine a request may take a while
/// to get there): a fixed sleep would race it.
#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn until_running(app: &support::App) {
    until(
        "the slow query running",
        Duration::from_secs(10),
        async || {
            let running: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where usename = $1 and state = 'active'",
            )
            .bind(app.public_role.name())
            .fetch_one(app.db.pool())
            .await
            .unwrap();
            (running > 0).then_some(())
        },
    )
    .await;
}

const SLOW: &str =
    "select count(*) from places a, places b, places c where a.pop_max > b.pop_max + c.pop_max";

#[tokio::test]
async fn anonymous_callers_are_limited_per_client_address() {
    let localhost = "127.0.0.1".parse().unwrap();
    let app = app_with(|c| {
        c.sql_quota(Quota::new(3, 1, Duration::from_secs(60)).unwrap())
            .trusted_proxies([localhost])
    })
    .await;
    let from = |client: &'static str| [("x-forwarded-for", client)];
    for _ in 0..3 {
        let r = app.get_with(&sql("select 1"), &from("198.51.100.1")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = app.get_with(&sql("select 1"), &from("198.51.100.1")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // Another client behind the same proxy has its own allowance.
    let r = app.get_with(&sql("select 1"), &from("198.51.100.2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The proxy's own hop is skipped: the client is the last address it did not add.
    let r = app
        .get_with(&sql("select 1"), &from("198.51.100.3, 127.0.0.1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn forwarded_addresses_from_an_untrusted_peer_are_ignored() {
    let app = app_with(|c| c.sql_quota(Quota::new(2, 1, Duration::from_secs(60)).unwrap())).await;
    let mut statuses = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let r = app
            .get_with(&sql("select 1"), &[("x-forwarded-for", client)])
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test]
async fn one_caller_cannot_hold_its_role_s_pool() {
    let localhost = "127.0.0.1".parse().unwrap();
    let app = app_with(|c| c.max_running_per_caller(1).trusted_proxies([localhost])).await;
    let app = std::sync::Arc::new(app);
    let slow = {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            app.get_with(&sql(SLOW), &[("x-forwarded-for", "198.51.100.7")])
                .await
        })
    };
    until_running(&app).await;
    let r = app
        .get_with(&sql("select 1"), &[("x-forwarded-for", "198.51.100.7")])
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.json(),
        serde_json::json!({"error": ["You are over platform's limits: at most 1 requests running at once; retry later"]})
    );
    // Another client is served meanwhile.
    let r = app
        .get_with(
            &sql("select 1 as n"),
            &[("x-forwarded-for", "198.51.100.8")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn an_exhausted_pool_answers_429_with_retry_after_and_no_driver_words() {
    let localhost = "127.0.0.1".parse().unwrap();
    let app = app_with(|c| {
        c.pools(
            geostack::sql::RegistryConfig::default()
                .per_role(1)
                .acquire_timeout(Duration::from_millis(300)),
        )
        .trusted_proxies([localhost])
    })
    .await;
    let app = std::sync::Arc::new(app);
    let slow = {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            app.get_with(&sql(SLOW), &[("x-forwarded-for", "198.51.100.20")])
                .await
        })
    };
    // The slow query holds the role's one connection.
    until_running(&app).await;
    let r = app
        .get_with(&sql("select 1"), &[("x-forwarded-for", "198.51.100.21")])
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.json(),
        serde_json::json!({"error": ["too many queries at once: retry later"]})
    );
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_deadline_and_its_query_ends() {
    let app = app_with(|c| c.deadline(Duration::from_secs(2))).await;
    // About 100 MB of JSON, read at 10 KB/s through a 4 KB receive buffer.
    let q = "select g, repeat('x', 1000) as slow_reader_pad from generate_series(1, 100000) g";
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let request = format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", sql(q));
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut read = 0;
    let mut buf = [0; 1024];
    let end = loop {
        match stream.read(&mut buf).await {
            Ok(0) => break "closed".to_owned(),
            Ok(n) => read += n,
            Err(e) => break format!("{:?}", e.kind()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still open after 20 s, {read} bytes read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    // Cut a second after the 2 s deadline, not when the 100 MB would have been read.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{end} after {took:?}"
    );
    assert!(read < 200_000, "{read} bytes read");
    // The query is gone from the database too.
    until(
        "the slow reader's query to end",
        Duration::from_secs(5),
        async || {
            let running: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
             where query like '%slow_reader_pad%' and pid <> pg_backend_pid()",
            )
            .fetch_one(app.db.pool())
            .await
            .unwrap();
            (running == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn one_caller_s_tile_renders_are_bounded_and_cached_tiles_are_not_counted() {
    let app = app_with(|c| c.max_renders_per_caller(1)).await;
    // Each render takes about two seconds.
    let sql = format!(
        "select gid, ST_Transform(geom, 3857) as the_geom_webmercator from places where ({SLOW}) >= 0"
    );
    let config = serde_json::json!({"version": "1.3.0", "layers": [{"type": "mapnik", "options": {
        "sql": sql}}]});
    let r = app.post_json("/api/v1/map", &config).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["layergroupid"].as_str().unwrap().to_owned();
    let (z0, z1) = (
        format!("/api/v1/map/{token}/0/0/0.mvt"),
        format!("/api/v1/map/{token}/1/0/0.mvt"),
    );
    // Two renders at once: the second is refused while the first runs.
    let (a, b) = tokio::join!(app.get(&z0), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        app.get(&z1).await
    });
    assert_eq!((a.status, b.status), (200, 429));
    assert!(b.header("retry-after").is_some());
    assert!(
        b.json()["error"][0].as_str().unwrap().contains("at most 1"),
        "{}",
        b.text()
    );
    // A cached tile is answered while another render runs.
    let (c, d) = tokio::join!(app.get(&z1), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        app.get(&z0).await
    });
    assert_eq!(
        (c.status, d.status),
        (200, 200),
        "{} {}",
        c.text(),
        d.text()
    );
}
