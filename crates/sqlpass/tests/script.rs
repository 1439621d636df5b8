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
