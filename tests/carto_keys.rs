//! The server on CARTO's own Redis key layout: keys written exactly as CARTO's application
//! writes them (`HMSET api_keys:<user>:<token> user … type … database_role … database_password
//! … grants_sql true …` in Redis database 5) authenticate the SQL API, tiles and batch queries
//! as their database roles; this server's own keys and key management are not used.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::time::Duration;

use geostack::server::KeyLayout;
use support::{App, app_with, encode, until};

/// A connection to CARTO's key database of the test Redis.
async fn carto_redis() -> redis::aio::MultiplexedConnection {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(format!("{}/5", url.trim_end_matches('/'))).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// A random lowercase name part.
fn random() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a key as CARTO's `Carto::ApiKey#add_to_redis` does: the fields it sets, a
/// `grants_<api>` set to `true` for each granted API.
async fn carto_key(
    conn: &mut redis::aio::MultiplexedConnection,
    user: &str,
    token: &str,
    kind: &str,
    role: (&str, &str),
    apis: &[&str],
) -> String {
    let name = format!("api_keys:{user}:{token}");
    let mut fields = vec![
        ("user", user.to_owned()),
        ("type", kind.to_owned()),
        ("database_role", role.0.to_owned()),
        ("database_password", role.1.to_owned()),
    ];
    for api in apis {
        fields.push((
            if *api == "sql" {
                "grants_sql"
            } else {
                "grants_maps"
            },
            "true".into(),
        ));
    }
    fields.push(("data_observatory_datasets", String::new()));
    let _: () = redis::cmd("HMSET")
        .arg(&name)
        .arg(&fields)
        .query_async(conn)
        .await
        .unwrap();
    name
}

async fn sql(app: &App, user: &str, q: &str, key: Option<&str>) -> support::Reply {
    let key = key.map(|k| format!("&api_key={k}")).unwrap_or_default();
    app.get(&format!("/user/{user}/api/v2/sql?q={}{key}", encode(q)))
        .await
}

#[tokio::test]
async fn keys_written_as_carto_writes_them_authenticate_every_api() {
    let app = app_with(|c| c.key_layout(KeyLayout::Carto { db: 5 })).await;
    let mut conn = carto_redis().await;
    let user = format!("carto-{}", random());
    let writer = random();
    let sql_only = random();
    let public = (app.public_role.name(), app.public_role.password());
    let regular = (app.regular_role.name(), app.regular_role.password());
    let written = [
        carto_key(
            &mut conn,
            &user,
            "default_public",
            "default",
            public,
            &["sql", "maps"],
        )
        .await,
        carto_key(
            &mut conn,
            &user,
            &writer,
            "regular",
            regular,
            &["sql", "maps"],
        )
        .await,
        carto_key(&mut conn, &user, &sql_only, "regular", regular, &["sql"]).await,
    ];

    // Anonymous requests use the user's CARTO default_public key, whose role reads the two
    // public tables only.
    let r = sql(&app, &user, "select count(*) as n from countries", None).await;
    assert_eq!(
        (r.status, r.json()["rows"][0]["n"].as_i64()),
        (200, Some(177)),
        "{}",
        r.text()
    );
    let r = sql(&app, &user, "select count(*) from notes", None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // The regular key runs as its role, which writes notes.
    let r = sql(
        &app,
        &user,
        "insert into notes (note) values ('from carto')",
        Some(&writer),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sql(&app, &user, "select note from notes", Some(&writer)).await;
    assert_eq!(
        r.json()["rows"],
        serde_json::json!([{"note": "from carto"}]),
        "{}",
        r.text()
    );
    // grants_maps absent: no tiles for that key; present: tiles.
    let r = app
        .get(&format!(
            "/user/{user}/tiles/countries/0/0/0.mvt?api_key={sql_only}"
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = app
        .get(&format!(
            "/user/{user}/tiles/countries/0/0/0.mvt?api_key={writer}"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A token CARTO does not have, and this server's own (native) key, are refused.
    let r = sql(&app, &user, "select 1", Some(&random())).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = app
        .get(&format!("/api/v2/sql?q=select%201&api_key={}", app.regular))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());

    // A batch query queued with a CARTO key runs as its role: the worker finds the key again
    // by its id.
    let r = app
        .post_form(
            &format!("/user/{user}/api/v2/sql/job?api_key={writer}"),
            &[("query", "update notes set note = 'batched'")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["job_id"].as_str().unwrap().to_owned();
    let done = until(
        "the CARTO key's batch query done",
        Duration::from_secs(20),
        async || {
            let s = app
                .get(&format!(
                    "/user/{user}/api/v2/sql/job/{id}?api_key={writer}"
                ))
                .await
                .json();
            matches!(s["status"].as_str(), Some("done" | "failed")).then_some(s)
        },
    )
    .await;
    assert_eq!(done["status"], "done", "{done}");
    let r = sql(&app, &user, "select note from notes", Some(&writer)).await;
    assert_eq!(r.json()["rows"], serde_json::json!([{"note": "batched"}]));

    // CARTO manages these keys: the Auth API is not served.
    let r = app
        .get(&format!("/user/{user}/api/v3/api_keys?api_key={writer}"))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("CARTO manages them"), "{}", r.text());

    let _: () = redis::cmd("DEL")
        .arg(&written)
        .query_async(&mut conn)
        .await
        .unwrap();
}
