//! Hostile SQL from a public caller, against real PostgreSQL: refused or without trace, and the
//! next caller on the same connection finds it clean.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use std::time::{Duration, Instant};

use common::{body, env, text};
use futures_util::StreamExt;
use sqlpass::{Access, Error, Options};

/// What the admin sees of the world a caller could have changed.
async fn world(env: &common::Env) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "select (select count(*) from places),
                (select count(*) from pg_largeobject_metadata),
                (select count(*) from pg_locks where locktype = 'advisory'
                 and database = (select oid from pg_database where datname = current_database())),
                (select count(*) from pg_class where relname = 'evil')",
    )
    .fetch_one(env.db.pool())
    .await
    .unwrap()
}

/// The outcome of a hostile statement: refused before streaming, or an error in the body.
async fn attempt(env: &common::Env, sql: &str) -> String {
    match sqlpass::run(&env.pool, sql, Options::default()).await {
        Err(e) => format!("refused {}: {e}", e.status()),
        Ok(response) => body(response).await,
    }
}

#[tokio::test]
async fn hostile_statements_are_refused_or_leave_no_trace() {
    let env = env().await;
    let before = world(&env).await;
    assert_eq!(before, (3, 0, 0, 0));
    let hostile = [
        "select 1; delete from places",
        "commit; delete from places",
        "delete from places",
        "update places set name = 'x'",
        "insert into places (id) values (99)",
        "create table evil (id int)",
        "set transaction read write",
        "select set_config('transaction_read_only', 'off', false)",
        "with d as (delete from places returning *) select * from d",
        "do $$ begin delete from places; end $$",
        "copy places to stdout",
        "copy places from stdin",
        "call nothing()",
        "listen evil",
        "notify evil",
        "select pg_notify('evil', 'x')",
        "select pg_advisory_lock(42)",
        "select pg_try_advisory_lock(42)",
        "select lo_from_bytea(0, 'evil')",
        "select lo_create(0)",
        "select pg_sleep(10)",
        "select * from secrets",
        "select set_config('role', 'postgres', false)",
        "reset role",
        "set session authorization postgres",
        "set role postgres",
        "prepare evil as select 1",
        "declare evil cursor with hold for select 1",
        "vacuum places",
        "select 1 /* unterminated",
    ];
    for sql in hostile {
        let outcome = attempt(&env, sql).await;
        assert!(
            outcome.starts_with("refused") || outcome.contains("\"error\""),
            "{sql:?} was not refused: {outcome}"
        );
        assert_eq!(world(&env).await, before, "{sql:?} left a trace");
        // The next caller on the same (single) connection finds it clean and read-only.
        let next = common::json(
            &env.pool,
            "select current_user::text as who, current_setting('transaction_read_only') as ro,
                    (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()) as locks,
                    (select count(*) from pg_listening_channels()) as listens,
                    (select count(*) from pg_prepared_statements where from_sql and name not like 'sqlpass\\_%') as prepared,
                    (select count(*) from pg_cursors where is_holdable) as held",
        )
        .await;
        assert_eq!(
            next["rows"][0],
            serde_json::json!({"who": env.role.name(), "ro": "on", "locks": 0, "listens": 0, "prepared": 0, "held": 0}),
            "after {sql:?}"
        );
    }
    // The refusals are typed: read-only violations and permissions are 403, syntax 400.
    let e = sqlpass::run(&env.pool, "select * from secrets", Options::default())
        .await
        .err()
        .unwrap();
    assert_eq!((e.status(), e.sqlstate()), (403, Some("42501")));
    let e = sqlpass::run(&env.pool, "select 1; select 2", Options::default())
        .await
        .err()
        .unwrap();
    assert_eq!(e.status(), 400);
}

#[tokio::test]
async fn a_session_advisory_lock_of_an_unprovisioned_role_does_not_outlive_the_request() {
    let env = env().await;
    // A bare role: pg_advisory_lock is still executable by PUBLIC for it.
    let bare = env.db.create_role().await;
    // The provisioning revoked pg_advisory_lock from PUBLIC in this database: give it back.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant select on places to \"{0}\"; grant execute on function pg_advisory_lock(bigint) to \"{0}\"",
        bare.name()
    )))
        .execute(env.db.pool())
        .await
        .unwrap();
    let pool = bare.pool(1).await;
    let out = text(
        &pool,
        "select pg_advisory_lock(7) is not null as locked",
        Options::default(),
    )
    .await;
    assert!(out.contains("\"locked\":true"), "{out}");
    // The connection that took it was closed, not reused: the lock is gone.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (locks,): (i64,) =
            sqlx::query_as("select count(*) from pg_locks where locktype = 'advisory'")
                .fetch_one(env.db.pool())
                .await
                .unwrap();
        if locks == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an advisory lock outlived its request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = text(
        &pool,
        "select count(*) as n from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
        Options::default(),
    )
    .await;
    assert!(again.contains("\"n\":0"), "{again}");
}

#[tokio::test]
async fn a_statement_timeout_ends_the_request_with_a_clear_error() {
    let env = env().await;
    let options = Options::default().statement_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let sql = "select count(*) from generate_series(1, 10000000000) g";
    match sqlpass::run(&env.pool, sql, options).await {
        // Usually the timeout fires while the cursor runs: the document ends with the error.
        Ok(response) => {
            let out = body(response).await;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert!(
                v["error"][0]
                    .as_str()
                    .unwrap()
                    .contains("statement timeout"),
                "{out}"
            );
            assert_eq!(v["rows"], serde_json::json!([]));
        }
        // On a loaded machine it can fire before the first byte: a 429, as CARTO answers.
        Err(e) => {
            assert!(matches!(e, Error::StatementTimeout(_)), "{e:?}");
            assert_eq!(e.status(), 429);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn row_and_byte_limits_end_valid_documents_with_an_error() {
    let env = env().await;
    let sql = "select g as n from generate_series(1, 10000) g";
    let out = text(&env.pool, sql, Options::default().row_limit(5)).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 5);
    assert_eq!(v["total_rows"], 5);
    assert_eq!(v["error"], serde_json::json!(["row limit of 5 exceeded"]));
    // Exactly at the limit is no error.
    let out = text(&env.pool, "select 1 as n", Options::default().row_limit(1)).await;
    assert!(!out.contains("error"), "{out}");

    let out = text(
        &env.pool,
        sql,
        Options::default()
            .format(sqlpass::Format::GeoJson)
            .byte_limit(1000),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["error"],
        serde_json::json!(["byte limit of 1000 exceeded"])
    );
    assert!(out.len() < 1100, "{}", out.len());
    let out = text(
        &env.pool,
        sql,
        Options::default().format(sqlpass::Format::Csv).row_limit(2),
    )
    .await;
    assert_eq!(out, "n\r\n1\r\n2\r\n#error,row limit of 2 exceeded\r\n");
}

/// The admin's view of `pid`'s state, or `None` when it has no backend any more.
async fn backend_state(env: &common::Env, query_like: &str) -> Option<(i32, String)> {
    sqlx::query_as(
        "select pid, state from pg_stat_activity where usename = $1 and query like $2 and pid <> pg_backend_pid()",
    )
    .bind(env.role.name())
    .bind(query_like)
    .fetch_optional(env.db.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_backend_query_within_100ms() {
    let env = env().await;
    let response = sqlpass::run(
        &env.pool,
        "select count(*) from generate_series(1, 100000000000) g",
        // The caller's role may not signal backends: the admin's pool cancels.
        Options::default()
            .statement_timeout(Duration::from_secs(60))
            .canceller(env.db.pool().clone()),
    )
    .await
    .unwrap();
    // Wait until the statement runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((_, state)) = backend_state(&env, "%generate_series(1, 1000000%").await
            && state == "active"
        {
            break;
        }
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dropped = Instant::now();
    drop(response);
    loop {
        match backend_state(&env, "%generate_series(1, 1000000%").await {
            Some((_, state)) if state == "active" => {}
            _ => break,
        }
        assert!(
            dropped.elapsed() < Duration::from_millis(100),
            "still running {:?} after the drop",
            dropped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_slow_reader_meets_the_deadline_and_the_query_stops() {
    let env = env().await;
    let options = Options::default().deadline(Duration::from_millis(500));
    let response = sqlpass::run(
        &env.pool,
        "select g, repeat('x', 100) as pad from generate_series(1, 2000000) g",
        options,
    )
    .await
    .unwrap();
    let mut body = response.body;
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut last = None;
    while let Some(item) = body.next().await {
        last = Some(item);
    }
    assert!(matches!(last, Some(Err(Error::Deadline(_)))), "{last:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        backend_state(&env, "%generate_series(1, 1000000%").await,
        None,
        "the backend outlived the deadline"
    );
}

#[tokio::test]
async fn a_writer_commits_on_success_and_rolls_back_on_failure() {
    let env = env().await;
    let writer = env.db.create_role().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant select, insert on places to \"{}\"",
        writer.name()
    )))
    .execute(env.db.pool())
    .await
    .unwrap();
    let pool = writer.pool(1).await;
    let rw = || Options::default().access(Access::ReadWrite);
    let out = text(
        &pool,
        "insert into places (id, name) values (10, 'new') returning id",
        rw(),
    )
    .await;
    assert!(out.contains("\"rows\":[{\"id\":10}]"), "{out}");
    // Two rows returned past a row limit of 1: the insert is rolled back, and the answer is
    // an error, not a document.
    let e = sqlpass::run(
        &pool,
        "insert into places (id) values (11), (12) returning id",
        rw().row_limit(1),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        (e.status(), e.to_string().as_str()),
        (400, "row limit of 1 exceeded")
    );
    let e = sqlpass::run(
        &pool,
        "insert into places (id) values (10) returning id",
        rw(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!((e.status(), e.sqlstate()), (400, Some("23505")));
    let e = sqlpass::run(
        &pool,
        "insert into places (id) select 1/(id-id) from places",
        rw(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!((e.status(), e.sqlstate()), (400, Some("22012")));
    let ids: Vec<(i32,)> = sqlx::query_as("select id from places order by id")
        .fetch_all(env.db.pool())
        .await
        .unwrap();
    assert_eq!(ids, vec![(1,), (2,), (3,), (10,)]);
    // Its grants still bound it: refused before streaming.
    let e = sqlpass::run(&pool, "delete from places", rw())
        .await
        .err()
        .unwrap();
    assert_eq!((e.status(), e.sqlstate()), (403, Some("42501")));
}

/// Reads a body to its end, keeping nothing, and returns how the run ended.
async fn outcome(pool: &sqlx::PgPool, sql: &str, options: Options) -> sqlpass::Outcome {
    use futures_util::StreamExt;
    let mut body = sqlpass::run(pool, sql, options).await.unwrap().body;
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
    }
    body.outcome().cloned().unwrap()
}

#[tokio::test]
async fn the_outcome_tells_rows_and_the_error_written_into_the_document() {
    let env = env().await;
    let all = outcome(&env.pool, "select id from places", Options::default()).await;
    assert_eq!((all.rows, all.error), (3, None));
    let cut = outcome(
        &env.pool,
        "select 1 / (n - 2) from generate_series(1, 3) n",
        Options::default().batch_rows(1),
    )
    .await;
    assert_eq!(
        (cut.rows, cut.error.as_deref()),
        (1, Some("division by zero"))
    );
    let limited = outcome(
        &env.pool,
        "select id from places",
        Options::default().format(sqlpass::Format::Csv).row_limit(2),
    )
    .await;
    assert_eq!(limited.rows, 2);
    assert!(limited.error.unwrap().contains("row limit of 2 exceeded"));

    let writer = env.db.create_role().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant select, update on places to \"{}\"",
        writer.name()
    )))
    .execute(env.db.pool())
    .await
    .unwrap();
    let pool = writer.pool(1).await;
    let updated = outcome(
        &pool,
        "update places set name = upper(name) where name is not null",
        Options::default().access(Access::ReadWrite),
    )
    .await;
    assert_eq!((updated.rows, updated.error), (2, None));
}

#[tokio::test]
async fn jit_is_off_unless_asked_for() {
    let env = env().await;
    let q = "select current_setting('jit') as jit";
    let off = text(
        &env.pool,
        q,
        Options::default().format(sqlpass::Format::Csv),
    )
    .await;
    assert_eq!(off, "jit\r\noff\r\n");
    let on = text(
        &env.pool,
        q,
        Options::default().format(sqlpass::Format::Csv).jit(true),
    )
    .await;
    assert_eq!(on, "jit\r\non\r\n");
}

#[tokio::test]
async fn explain_shows_a_plan_of_what_the_caller_may_read_and_runs_nothing_else() {
    let env = env().await;
    let plan = text(
        &env.pool,
        "EXPLAIN select name from places where id = 1",
        Options::default(),
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(doc["fields"]["QUERY PLAN"]["pgtype"], "text", "{plan}");
    assert!(
        doc["rows"][0]["QUERY PLAN"]
            .as_str()
            .unwrap()
            .contains("places"),
        "{plan}"
    );
    let json = text(
        &env.pool,
        "explain (format json, costs false) select * from places",
        Options::default(),
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        doc["rows"][0]["QUERY PLAN"][0]["Plan"]["Relation Name"],
        "places"
    );

    let refused = |sql: &'static str, options: Options| {
        let pool = env.pool.clone();
        async move { sqlpass::run(&pool, sql, options).await.err().unwrap() }
    };
    // A table the role may not read, or the key does not list: no plan.
    let e = refused("EXPLAIN select * from secrets", Options::default()).await;
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    let listed = Options::default().allowed_tables(["public.secrets"]);
    let e = refused("EXPLAIN select * from places", listed).await;
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    // ANALYZE runs the statement: in a reader's transaction it cannot write.
    let e = refused(
        "EXPLAIN ANALYZE insert into places (id) values (99)",
        Options::default(),
    )
    .await;
    assert_eq!(e.status(), 403, "{e}");
    // What an EXPLAIN wraps is checked as any statement.
    let e = refused("EXPLAIN EXECUTE something", Options::default()).await;
    assert!(matches!(e, Error::InvalidStatement(_)), "{e}");
    let (n,): (i64,) = sqlx::query_as("select count(*) from places")
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 3);
}
