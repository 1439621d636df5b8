//! Several statements in one text, as CARTO runs a master key's: in order, in one transaction,
//! all or nothing, each under the timeouts, through real PostgreSQL.

mod common;

use std::time::Duration;

use common::{body, env};
use sqlpass::{Access, CallerRole, Error, Options};

/// A role that may create tables in `public` (a master key's), and its pool.
#[expect(clippy::expect_used, reason = "a test helper")]
async fn owner(env: &common::Env) -> sqlx::PgPool {
    CallerRole::new(env.role.name(), env.role.password())
        .grant("public", "places", ["select"])
        .create_in("public")
        .provision(env.db.pool(), &[])
        .await
        .expect("provisioned");
    env.role.pool(1).await
}

fn master() -> Options {
    Options::default().access(Access::ReadWrite).script(true)
}

#[expect(clippy::expect_used, reason = "a test helper")]
async fn exists(env: &common::Env, table: &str) -> bool {
    let (found,): (bool,) = sqlx::query_as("select to_regclass($1) is not null")
        .bind(table)
        .fetch_one(env.db.pool())
        .await
        .expect("asked");
    found
}

#[tokio::test]
async fn a_script_runs_in_order_and_answers_with_its_last_statement() {
    let env = env().await;
    let pool = owner(&env).await;
    let sql = "BEGIN; CREATE TABLE made (id int, name text); \
               INSERT INTO made VALUES (1, 'a'), (2, 'b'); \
               SELECT count(*)::int AS n, current_user = (select tableowner from pg_tables where tablename = 'made') AS owned FROM made; \
               COMMIT;";
    let text = body(sqlpass::run(&pool, sql, master()).await.expect("ran")).await;
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v["rows"],
        serde_json::json!([{"n": 2, "owned": true}]),
        "{text}"
    );
    assert!(exists(&env, "public.made").await);

    // The same text without the option is one statement too many.
    let e = sqlpass::run(&pool, sql, Options::default().access(Access::ReadWrite))
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, Error::InvalidStatement(_)), "{e}");
}

#[tokio::test]
async fn a_failing_statement_undoes_the_whole_script() {
    let env = env().await;
    let pool = owner(&env).await;
    let sql = "CREATE TABLE undone (id int); INSERT INTO undone VALUES (1); SELECT 1/0";
    let e = sqlpass::run(&pool, sql, master())
        .await
        .err()
        .expect("failed");
    assert_eq!(e.sqlstate(), Some("22012"), "{e}");
    assert!(!exists(&env, "public.undone").await);
    // A failure in the middle stops the rest.
    let sql = "CREATE TABLE undone (id int); SELECT 1/0; CREATE TABLE later (id int)";
    assert!(sqlpass::run(&pool, sql, master()).await.is_err());
    assert!(!exists(&env, "public.undone").await);
    assert!(!exists(&env, "public.later").await);
    // The connection is clean for the next caller: the pool's one connection answers.
    let text = body(
        sqlpass::run(&pool, "select 1 as one", master())
            .await
            .expect("ran"),
    )
    .await;
    assert!(text.contains("\"one\":1"), "{text}");
}

#[tokio::test]
async fn no_statement_of_a_script_lifts_the_timeouts_for_the_next() {
    let env = env().await;
    let pool = owner(&env).await;
    let options = master().statement_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let sql = "SELECT set_config('statement_timeout', '0', true); SELECT count(*) FROM generate_series(1, 500000000)";
    let e = sqlpass::run(&pool, sql, options.clone())
        .await
        .err()
        .expect("timed out");
    assert!(matches!(e, Error::StatementTimeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // In the middle of a script too.
    let sql = "SELECT set_config('statement_timeout', '0', true); SELECT count(*) FROM generate_series(1, 500000000); SELECT 1";
    let e = sqlpass::run(&pool, sql, options)
        .await
        .err()
        .expect("timed out");
    assert!(matches!(e, Error::StatementTimeout(_)), "{e}");
}

#[tokio::test]
async fn a_script_refuses_what_a_statement_refuses_and_keys_with_listed_tables_run_no_ddl() {
    let env = env().await;
    let pool = owner(&env).await;
    for sql in [
        "select 1; rollback",
        "begin; set statement_timeout = 0; select 1",
        "begin isolation level serializable; select 1",
        "begin; commit",
        "select 1; copy places to stdout",
    ] {
        let e = sqlpass::run(&pool, sql, master()).await.err().expect(sql);
        assert!(matches!(e, Error::InvalidStatement(_)), "{sql}: {e}");
    }
    // DDL has no plan whose tables could be checked against a key's list.
    let listed = master().allowed_tables(["public.places"]);
    let e = sqlpass::run(&pool, "create table sneaky (id int)", listed)
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, Error::Forbidden(_)), "{e}");
    assert!(!exists(&env, "public.sneaky").await);
}

#[tokio::test]
async fn cartodbfy_makes_a_table_carto_s_and_keeps_its_mercator_geometry_in_step() {
    let env = env().await;
    let pool = owner(&env).await;
    let sql = "CREATE TABLE spots (name text, geom geometry(Point, 4326)); \
               INSERT INTO spots VALUES ('zurich', ST_SetSRID(ST_MakePoint(8.54, 47.37), 4326)), \
                                        ('pole', ST_SetSRID(ST_MakePoint(0, 89.9), 4326)); \
               SELECT CDB_CartodbfyTable('public', 'spots'); \
               SELECT CDB_CartodbfyTable('public', 'spots')";
    body(sqlpass::run(&pool, sql, master()).await.expect("ran")).await;
    let columns: Vec<(String, String)> = sqlx::query_as(
        "select attname::text, format_type(atttypid, atttypmod) from pg_attribute
         where attrelid = 'spots'::regclass and attnum > 0 and not attisdropped order by attnum",
    )
    .fetch_all(env.db.pool())
    .await
    .expect("columns");
    let columns: Vec<(&str, &str)> = columns
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("name", "text"),
            ("the_geom", "geometry(Point,4326)"),
            ("cartodb_id", "bigint"),
            ("the_geom_webmercator", "geometry(Geometry,3857)"),
        ]
    );
    // Filled now, the pole clipped to the projection; kept in step on insert and update.
    let sql = "INSERT INTO spots (name, the_geom) VALUES ('null island', ST_SetSRID(ST_MakePoint(0, 0), 4326)); \
               UPDATE spots SET the_geom = ST_SetSRID(ST_MakePoint(1, 1), 4326) WHERE name = 'zurich'; \
               SELECT 1";
    body(sqlpass::run(&pool, sql, master()).await.expect("ran")).await;
    let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
        "select cartodb_id, name, ST_AsText(ST_SnapToGrid(the_geom_webmercator, 1)) from spots order by cartodb_id",
    )
    .fetch_all(env.db.pool())
    .await
    .expect("rows");
    assert_eq!(
        rows,
        [
            (1, "zurich".into(), Some("POINT(111319 111325)".into())),
            (2, "pole".into(), Some("POINT EMPTY".into())),
            (3, "null island".into(), Some("POINT(0 0)".into())),
        ]
    );
    let (primary, indexes): (String, i64) = sqlx::query_as(
        "select (select string_agg(a.attname, ',') from pg_index i join pg_attribute a
                 on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
                 where i.indrelid = 'spots'::regclass and i.indisprimary),
                (select count(*) from pg_indexes where tablename = 'spots' and indexdef like '%gist%')",
    )
    .fetch_one(env.db.pool())
    .await
    .expect("indexes");
    assert_eq!((primary.as_str(), indexes), ("cartodb_id", 2));

    // Only a table's owner can: a role that may write to it but does not own it may not.
    let e = sqlpass::run(
        &pool,
        "select CDB_CartodbfyTable('public', 'places')",
        Options::default().access(Access::ReadWrite),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    // The same from Rust, as the table's owner.
    sqlpass::cartodbfy(env.db.pool(), "public.places")
        .await
        .expect("cartodbfied");
    let (n,): (i64,) = sqlx::query_as("select count(the_geom_webmercator) from places")
        .fetch_one(env.db.pool())
        .await
        .expect("counted");
    assert_eq!(n, 2);
}
