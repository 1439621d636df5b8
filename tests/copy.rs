//! CARTO's copy endpoints over TCP: `copyto` streams PostgreSQL's own COPY bytes, `copyfrom`
//! takes a plain or gzip body into a table the key may write, and nothing else.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::io::Write as _;

use futures_util::StreamExt as _;
use support::{App, app, encode};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

async fn copyfrom(
    app: &App,
    key: &str,
    sql: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> support::Reply {
    let path = format!("/api/v2/sql/copyfrom?api_key={key}&q={}", encode(sql));
    app.request("POST", &path, headers, body).await
}

async fn notes(app: &App) -> Vec<String> {
    sqlx::query_scalar("select note from notes order by id")
        .fetch_all(app.db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn copyto_streams_postgresql_s_own_copy_output() {
    let app = app().await;
    let sql = "COPY (select name, pop_max from places order by gid limit 5) TO STDOUT WITH (FORMAT csv, HEADER true)";
    let r = app
        .get(&format!(
            "/api/v2/sql/copyto?api_key={}&q={}&filename=five.csv",
            app.regular,
            encode(sql)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"five.csv\"")
    );
    let mut conn = app.db.pool().acquire().await.unwrap();
    let mut direct = Vec::new();
    let mut stream = conn.copy_out_raw(sql).await.unwrap();
    while let Some(chunk) = stream.next().await {
        direct.extend_from_slice(&chunk.unwrap());
    }
    drop(stream);
    assert_eq!(r.body, direct);
    assert_eq!(r.text().lines().count(), 6);

    // Anonymous callers copy what the public key lists, and nothing else.
    let r = app
        .get(&format!(
            "/api/v2/sql/copyto?q={}",
            encode("COPY countries (name) TO STDOUT")
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().lines().count(), 177);
    let r = app
        .get(&format!(
            "/api/v2/sql/copyto?q={}",
            encode("COPY notes TO STDOUT")
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.json()["error"][0]
            .as_str()
            .unwrap()
            .contains("permission denied")
    );
    // No file, no program, no other statement.
    for bad in [
        "COPY countries TO '/tmp/countries'",
        "COPY countries TO PROGRAM 'cat'",
        "COPY countries FROM STDIN",
        "select 1",
    ] {
        let r = app
            .get(&format!(
                "/api/v2/sql/copyto?api_key={}&q={}",
                app.regular,
                encode(bad)
            ))
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"][0].is_string());
    }
    // POST with a form body, as clients do for long statements.
    let r = app
        .post_form(
            "/api/v2/sql/copyto/",
            &[
                ("q", "COPY (select 1 as one) TO STDOUT"),
                ("api_key", &app.regular),
            ],
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "1\n"));
}

#[tokio::test]
async fn copyfrom_takes_plain_and_gzip_bodies_into_a_table_the_key_may_write() {
    let app = app().await;
    let sql = "COPY notes (note) FROM STDIN WITH (FORMAT csv)";
    let r = copyfrom(&app, &app.regular, sql, &[], b"first\nsecond\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["total_rows"], 2);
    assert!(r.json()["time"].is_f64());
    let body = gzip(b"third\n\"fourth, with a comma\"\n");
    let r = copyfrom(
        &app,
        &app.regular,
        sql,
        &[
            ("content-encoding", "gzip"),
            ("content-type", "application/octet-stream"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["total_rows"], 2);
    assert_eq!(
        notes(&app).await,
        ["first", "second", "third", "fourth, with a comma"]
    );

    // Refused, and nothing written: a key that may not write, a table the role may not
    // write, a damaged archive, an unknown encoding, a copy out.
    let r = copyfrom(&app, &app.sql_only, sql, &[], b"x\n").await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = copyfrom(
        &app,
        &app.regular,
        "COPY countries (name) FROM STDIN",
        &[],
        b"x\n",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let mut damaged = gzip(b"fifth\nsixth\n");
    damaged.truncate(damaged.len() - 6);
    let r = copyfrom(
        &app,
        &app.regular,
        sql,
        &[("content-encoding", "gzip")],
        &damaged,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = copyfrom(
        &app,
        &app.regular,
        sql,
        &[("content-encoding", "br")],
        b"x\n",
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.text());
    let r = copyfrom(&app, &app.regular, "COPY notes TO STDOUT", &[], b"").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(notes(&app).await.len(), 4);
}
