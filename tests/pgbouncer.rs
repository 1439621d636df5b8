//! The composed server with PostgreSQL behind a real pgbouncer (Debian's 1.18, transaction
//! mode): the server's admin pool and every key role's pool connect through it. The SQL API
//! (reads repeated and concurrent, so that server connections are shared between clients; a
//! write with the regular key; hostile statements refused as without a pooler), a table tile, a
//! map config's tile and a batch query work as they do when connected directly.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::time::Duration;

use support::{App, app_behind_pgbouncer, encode, until};

fn sql(app: &App, q: &str) -> String {
    format!("/api/v2/sql?q={}&api_key={}", encode(q), app.regular)
}

#[tokio::test]
async fn the_apis_work_through_pgbouncer_in_transaction_mode() {
    let app = app_behind_pgbouncer().await;

    // Reads, anonymous and keyed, one after another and at once.
    for _ in 0..10 {
        let r = app
            .get(&format!(
                "/api/v2/sql?q={}",
                encode("select count(*) as n from places")
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["rows"][0]["n"].as_i64().unwrap() > 0);
    }
    // Two callers (a caller may have two requests running), two requests each.
    let keyed = sql(&app, "select name from countries where name = 'Japan'");
    let anonymous = format!(
        "/api/v2/sql?q={}",
        encode("select name from countries where name = 'Japan'")
    );
    let (a, b, c, d) = tokio::join!(
        app.get(&keyed),
        app.get(&keyed),
        app.get(&anonymous),
        app.get(&anonymous)
    );
    for r in [a, b, c, d] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["rows"], serde_json::json!([{"name": "Japan"}]));
    }

    // A write with the regular key, then read back.
    let r = app
        .get(&sql(
            &app,
            "insert into notes (note) values ('through pgbouncer') returning note",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(notes(&app, "through pgbouncer").await, 1);

    // Hostile statements are refused here too, and leave no trace for the next caller.
    for hostile in [
        "select set_config('role', 'postgres', false)",
        "select pg_advisory_lock(42)",
        "select 1; delete from notes",
    ] {
        let _ = app.get(&sql(&app, hostile)).await;
        let r = app
            .get(&sql(
                &app,
                "select current_user = session_user as same,
                        (select count(*) from pg_locks where locktype = 'advisory'
                         and database = (select oid from pg_database
                                         where datname = current_database())) as locks",
            ))
            .await;
        assert_eq!(
            r.json()["rows"],
            serde_json::json!([{"same": true, "locks": 0}]),
            "after {hostile}: {}",
            r.text()
        );
    }

    // A table tile and a map config's tile.
    let r = app
        .get(&format!(
            "/tiles/countries/1/1/0.mvt?api_key={}",
            app.regular
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let config = serde_json::json!({"version": "1.3.0", "layers": [{"type": "mapnik", "options": {
        "sql": "select gid, ST_Transform(geom, 3857) as the_geom_webmercator from places"}}]});
    let r = app.post_json("/api/v1/map", &config).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["layergroupid"].as_str().unwrap().to_owned();
    let r = app.get(&format!("/api/v1/map/{token}/0/0/0.mvt")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A batch query runs to its end.
    let r = app
        .post_json(
            &format!("/api/v2/sql/job?api_key={}", app.regular),
            &serde_json::json!({ "query": "insert into notes (note) values ('from a batch')" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["job_id"].as_str().unwrap().to_owned();
    until(
        "the batch query to be done",
        Duration::from_secs(20),
        async || {
            let r = app
                .get(&format!("/api/v2/sql/job/{id}?api_key={}", app.regular))
                .await;
            let status = r.json()["status"].as_str().unwrap_or_default().to_owned();
            assert_ne!(status, "failed", "{}", r.text());
            (status == "done").then_some(())
        },
    )
    .await;
    assert_eq!(notes(&app, "from a batch").await, 1);
}

/// How many notes say `note`, read through the SQL API with the regular key.
async fn notes(app: &App, note: &str) -> i64 {
    let q = format!("select count(*) as n from notes where note = '{note}'");
    let r = app.get(&sql(app, &q)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["rows"][0]["n"].as_i64().unwrap()
}
