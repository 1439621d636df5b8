//! The sandbox against callers who share a role or a connection, against real PostgreSQL: no
//! signalling or watching each other, nothing kept of one for the next, limits that hold.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use std::time::{Duration, Instant};

use common::{env, json, text};
use futures_util::StreamExt;
use sqlpass::{Access, Error, Options, Statement};

/// The body's JSON `error` member, if any.
fn error_of(doc: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(doc).unwrap();
    v["error"][0].as_str().map(str::to_owned)
}

#[tokio::test]
async fn callers_of_one_role_can_neither_signal_nor_watch_each_other() {
    let env = env().await;
    // Caller B: a long query of the same role, on a pool of its own.
    let other = env.role.pool(1).await;
    let long = "select count(*) from generate_series(1, 100000000000) as b_secret_text";
    let running = sqlpass::run(
        &other,
        long,
        Options::default().statement_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let b_pid: i32 = common::until_active(&env, "%b_secret_text%").await;

    // Caller A tries to terminate, cancel and read B.
    for sql in [
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = current_user and pid <> pg_backend_pid()",
        &format!("select pg_terminate_backend({b_pid})"),
        &format!("select pg_cancel_backend({b_pid})"),
        "select query from pg_stat_activity where query like '%b_secret%'",
        "select pg_stat_get_backend_activity(s) from pg_stat_get_backend_idset() s",
    ] {
        let e = sqlpass::run(&env.pool, sql, Options::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran"));
        assert_eq!(
            (e.status(), e.sqlstate()),
            (403, Some("42501")),
            "{sql}: {e}"
        );
    }
    // B still runs, untouched.
    assert_eq!(common::until_active(&env, "%b_secret_text%").await, b_pid);
    drop(running);
}

#[tokio::test]
async fn a_wide_value_is_refused_by_the_database_and_memory_stays_flat() {
    let env = env().await;
    let before = peak_rss_kb();
    let doc = text(
        &env.pool,
        "select 1 as id, repeat('x', 300000000) as wide",
        Options::default(),
    )
    .await;
    assert_eq!(
        error_of(&doc).as_deref(),
        Some("a value of column wide is larger than the value-size limit of 16777216 bytes")
    );
    assert!(doc.len() < 1000, "{} bytes came", doc.len());
    // The value never crossed the wire: this process grew by far less than its 300 MB.
    let grown = peak_rss_kb().saturating_sub(before);
    assert!(grown < 64 * 1024, "peak RSS grew by {grown} kB");
    // A value cast to text (not decoded here) is measured as text.
    let doc = text(
        &env.pool,
        "select repeat('y', 2000)::xml as x",
        Options::default().value_limit(1000),
    )
    .await;
    assert_eq!(
        error_of(&doc).as_deref(),
        Some("a value of column x is larger than the value-size limit of 1000 bytes")
    );
    // Under the limit, values pass whole.
    let doc = json(&env.pool, "select repeat('z', 5) as z").await;
    assert_eq!(doc["rows"], serde_json::json!([{"z": "zzzzz"}]));
}

/// This process's peak resident memory, in kB (nextest runs each test in its own process).
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_caller_s_text_is_not_kept_and_metadata_is_always_current() {
    let env = env().await;
    // env.pool has one connection: every run below uses the same backend.
    let _ = text(
        &env.pool,
        "select 'caller-a-secret' as a, id from places",
        Options::default(),
    )
    .await;
    // What the connection keeps prepared is the sandbox's own text, none of the caller's.
    let seen = json(
        &env.pool,
        "select name, statement from pg_prepared_statements order by name",
    )
    .await;
    let kept = seen["rows"].as_array().unwrap();
    let names: Vec<&str> = kept.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sqlpass_end", "sqlpass_open"], "{seen}");
    for r in kept {
        assert!(
            !r["statement"].as_str().unwrap().contains("caller-a"),
            "{seen}"
        );
    }
    // A writer's statement, prepared to be described, is closed too.
    let writer = env.db.create_role().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant select, update on places to \"{}\"",
        writer.name()
    )))
    .execute(env.db.pool())
    .await
    .unwrap();
    let wpool = writer.pool(1).await;
    let rw = || Options::default().access(Access::ReadWrite);
    let _ = text(
        &wpool,
        "update places set pop = pop where id = 1 returning 'writer-secret' as s",
        rw(),
    )
    .await;
    let seen = text(
        &wpool,
        "select count(*) as n from pg_prepared_statements where statement like '%writer-' || 'secret%'",
        Options::default(),
    )
    .await;
    assert!(seen.contains("\"rows\":[{\"n\":0}]"), "{seen}");

    // The same text after ALTER TABLE … TYPE: the new type, not a cached one.
    let q = "select id, score from places where id = 1";
    let before = json(&env.pool, q).await;
    assert_eq!(before["fields"]["score"]["pgtype"], "float8");
    sqlx::raw_sql("alter table places alter column score type text using score::text")
        .execute(env.db.pool())
        .await
        .unwrap();
    let after = json(&env.pool, q).await;
    assert_eq!(after["fields"]["score"]["pgtype"], "text");
    assert_eq!(
        after["rows"],
        serde_json::json!([{"id": 1, "score": "0.5"}])
    );
}

#[tokio::test]
async fn a_statement_cannot_lift_its_own_timeouts() {
    let env = env().await;
    let options = Options::default().statement_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let doc = text(
        &env.pool,
        "select set_config('statement_timeout', '0', true) as lifted, g
         from generate_series(1, 3000000000) g where g % 1000000000 = 0",
        options,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        error_of(&doc).as_deref(),
        Some("statement timeout: the query ran longer than 300ms"),
        "{doc}"
    );
    // And the next caller has the defaults back.
    let next = json(
        &env.pool,
        "select current_setting('statement_timeout') as t",
    )
    .await;
    assert_eq!(next["rows"][0]["t"], "15s");
}

#[tokio::test]
async fn text_that_would_rewrite_the_wrapper_is_refused_before_it_runs() {
    let env = env().await;
    for sql in [
        "select id from places) AS _i LIMIT 0) AS _q ON true UNION ALL SELECT secret FROM secrets --",
        "select id from places) _i OFFSET 0) _q(c1) UNION SELECT 1 --",
        "select 1; select secret from secrets",
        "select 1 /* ) */ ) union select 2 --",
        "select '\0'",
    ] {
        let e = sqlpass::run(&env.pool, sql, Options::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran"));
        assert!(matches!(e, Error::InvalidStatement(_)), "{sql}: {e:?}");
        assert_eq!(e.status(), 400);
    }
    // A comment or a parenthesis inside the statement's own strings hides nothing.
    let doc = json(&env.pool, "select ')' as p, $$ ) $$ as d -- ) AS _q").await;
    assert_eq!(doc["rows"], serde_json::json!([{"p": ")", "d": " ) "}]));
    assert!(Statement::new("select ')' -- )").is_ok());
}

#[tokio::test]
async fn a_writer_cannot_keep_another_role_on_the_connection() {
    let env = env().await;
    let writer = env.db.create_role().await;
    let other = env.db.create_role().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant select, insert on places to \"{w}\"; grant \"{o}\" to \"{w}\"",
        w = writer.name(),
        o = other.name()
    )))
    .execute(env.db.pool())
    .await
    .unwrap();
    let pool = writer.pool(1).await;
    let rw = || Options::default().access(Access::ReadWrite);
    let doc = text(
        &pool,
        &format!("select set_config('role', '{}', false) as r", other.name()),
        rw(),
    )
    .await;
    assert!(doc.contains(other.name()), "{doc}");
    let next = text(&pool, "select current_user::text as who", rw()).await;
    assert!(
        next.contains(&format!("\"who\":\"{}\"", writer.name())),
        "{next}"
    );
    // SET ROLE and transaction control are refused outright.
    for sql in [
        format!("set role \"{}\"", other.name()),
        "commit".to_owned(),
        "savepoint s".to_owned(),
    ] {
        let e = sqlpass::run(&pool, &sql, rw()).await.err().unwrap();
        assert!(matches!(e, Error::InvalidStatement(_)), "{sql}: {e:?}");
    }
}

#[tokio::test]
async fn pages_and_row_limits_are_applied_by_the_database_for_readers_and_writers() {
    let env = env().await;
    let q = "select g from generate_series(1, 10) g order by g";
    let page = json_with(&env.pool, q, Options::default().page(3, 1)).await;
    assert_eq!(
        page["rows"],
        serde_json::json!([{"g": 4}, {"g": 5}, {"g": 6}])
    );
    let writer = env.db.create_role().await;
    let pool = writer.pool(1).await;
    let page = json_with(
        &pool,
        q,
        Options::default().access(Access::ReadWrite).page(4, 2),
    )
    .await;
    assert_eq!(page["rows"], serde_json::json!([{"g": 9}, {"g": 10}]));
    // A reader past its row limit is stopped by the database, not after reading everything.
    let started = Instant::now();
    let mut body = sqlpass::run(
        &env.pool,
        // Set-returning functions materialise their rows: a join of two small ones is read
        // lazily, as a table would be.
        "select a.g from generate_series(1, 100000) a(g), generate_series(1, 100000) b(g)",
        Options::default().row_limit(5),
    )
    .await
    .unwrap()
    .body;
    while body.next().await.is_some() {}
    assert_eq!(
        body.outcome().and_then(|o| o.error.as_deref()),
        Some("row limit of 5 exceeded")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn kept_descriptions_follow_ddl_stay_with_their_role_and_a_change_mid_run_is_caught() {
    let env = env().await;
    let plans = sqlpass::Plans::default();
    let with = || Options::default().plans(plans.clone());
    let q = "select id, score from places where id = 1";
    let first = json_with(&env.pool, q, with()).await;
    assert_eq!(first["fields"]["score"]["pgtype"], "float8");
    assert_eq!(plans.len(), 1);
    let again = json_with(&env.pool, q, with()).await;
    assert_eq!(again["rows"], first["rows"]);
    assert_eq!(plans.len(), 1);

    // Another role's run of the same text is its own: refused by its privileges.
    let stranger = env.db.create_role().await;
    sqlpass::PublicRole::new(stranger.name(), stranger.password(), "public")
        .provision(env.db.pool(), &[])
        .await
        .unwrap();
    let e = sqlpass::run(&stranger.pool(1).await, q, with())
        .await
        .err()
        .unwrap();
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");

    // A DDL command: the next run describes again.
    let admin = env.db.pool();
    sqlx::raw_sql("alter table places alter column score type text using score::text")
        .execute(admin)
        .await
        .unwrap();
    let after = json_with(&env.pool, q, with()).await;
    assert_eq!(after["fields"]["score"]["pgtype"], "text");
    assert_eq!(
        after["rows"],
        serde_json::json!([{"id": 1, "score": "0.5"}])
    );

    // A DDL command committed between the generation's read and the run (made here by
    // setting the generation back after it): the first row's types give it away, the kept
    // description is dropped, and the next run is right.
    sqlx::raw_sql(
        "alter table places alter column score type float8 using score::float8;
         update sqlpass.generation set n = n - 1",
    )
    .execute(admin)
    .await
    .unwrap();
    let raced = text(&env.pool, q, with()).await;
    assert_eq!(
        error_of(&raced).as_deref(),
        Some("a table the statement reads changed while it ran: run it again")
    );
    let next = json_with(&env.pool, q, with()).await;
    assert_eq!(next["fields"]["score"]["pgtype"], "float8");
    assert_eq!(next["rows"], serde_json::json!([{"id": 1, "score": 0.5}]));
}

#[tokio::test]
async fn a_kept_description_runs_on_a_connection_that_has_not_met_its_types() {
    let env = env().await;
    let plans = sqlpass::Plans::default();
    let with = || Options::default().plans(plans.clone());
    let q = "select id, geom from places where id = 1";
    let first = json_with(&env.pool, q, with()).await;
    assert_eq!(first["fields"]["geom"]["type"], "geometry", "{first}");
    assert_eq!(plans.len(), 1);
    // A new connection of the same role: the description is reused, and sqlx has not looked
    // PostGIS's types up on it yet when it runs the statement.
    let fresh = env.role.pool(1).await;
    let again = json_with(&fresh, q, with()).await;
    assert_eq!(again["rows"], first["rows"], "{again}");
    assert!(again.get("error").is_none(), "{again}");
}

async fn json_with(pool: &sqlx::PgPool, sql: &str, options: Options) -> serde_json::Value {
    serde_json::from_str(&text(pool, sql, options).await).unwrap()
}

#[tokio::test]
async fn a_read_sent_with_its_transaction_s_start_is_sandboxed_and_ends_clean() {
    use sqlx::Row as _;
    use std::ops::ControlFlow;

    let env = env().await;
    // The rows, in text format, decoded as a tile source decodes them; the transaction is
    // read-only with the sandbox's timeout.
    let sql = "select id::int8, name, score::float8, pop > 1000 as big, \
               ST_AsBinary(geom) as wkb, current_setting('statement_timeout') as st, \
               current_setting('transaction_read_only') as ro \
               from places order by id";
    let mut rows = Vec::new();
    let options = Options::default().statement_timeout(Duration::from_secs(7));
    let (session, read) = sqlpass::Session::begin_reading(&env.pool, &options, sql, |row| {
        rows.push((
            row.get::<i64, _>(0),
            row.get::<Option<String>, _>(1),
            row.get::<Option<f64>, _>(2),
            row.get::<Option<bool>, _>(3),
            row.get::<Option<Vec<u8>>, _>(4),
            row.get::<String, _>(5),
            row.get::<String, _>(6),
        ));
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    session.end().await.unwrap();
    let n = read.unwrap();
    assert_eq!(n as usize, rows.len());
    assert!(n >= 2, "{n} rows");
    let (id, _, _, _, wkb, st, ro) = &rows[0];
    assert_eq!(*id, 1);
    // A point's WKB: byte order, type 1, two doubles.
    assert_eq!(wkb.as_ref().map(Vec::len), Some(21));
    assert_eq!((st.as_str(), ro.as_str()), ("7s", "on"));

    // A second statement is refused before anything is sent.
    let e = sqlpass::Session::begin_reading(
        &env.pool,
        &Options::default(),
        "select 1; select 2",
        |_| ControlFlow::Continue(()),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(e, Error::InvalidStatement(_)), "{e}");

    // A statement the database ends (its timeout) comes back as the read's error, and the
    // session still ends; the pool's next caller has the defaults back.
    let options = Options::default().statement_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let (session, read) = sqlpass::Session::begin_reading(
        &env.pool,
        &options,
        "select count(*) from generate_series(1, 3000000000)",
        |_| ControlFlow::Continue(()),
    )
    .await
    .unwrap();
    session.end().await.unwrap();
    let e = read.err().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("statement timeout"), "{e}");
    let next = json(
        &env.pool,
        "select current_setting('statement_timeout') as t",
    )
    .await;
    assert_eq!(next["rows"][0]["t"], "15s");

    // A reader that stops early cuts the statement: the session ends it.
    let mut seen = 0;
    let (session, read) = sqlpass::Session::begin_reading(
        &env.pool,
        &Options::default(),
        "select g from generate_series(1, 10000000) g",
        |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(read.unwrap(), 3);
    session.end().await.unwrap();
    assert_eq!(
        json(&env.pool, "select 1 as one").await["rows"][0]["one"],
        1
    );
}
