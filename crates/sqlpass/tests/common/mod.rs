//! Shared set-up of the sqlpass tests: a database with a small table and a provisioned public
//! role whose pool the tests run SQL on.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::allow_attributes,
    clippy::unwrap_used,
    reason = "a module shared by test files, each using a different part"
)]

use futures_util::StreamExt;
use geostack_testkit::{TestDb, TestRole};
use sqlpass::{Options, PublicRole, Response};
use sqlx::PgPool;

pub struct Env {
    pub role: TestRole,
    pub pool: PgPool,
    pub db: TestDb,
}

pub const SETUP: &str = "
create table places (id int primary key, name text, pop int8, score float8, geom geometry(Point, 4326));
insert into places values
  (1, 'Zürich', 421878, 0.5, ST_SetSRID(ST_MakePoint(8.541694, 47.376887), 4326)),
  (2, 'a \"quoted\", name', null, -1.25, ST_SetSRID(ST_MakePoint(-0.1275, 51.507222), 4326)),
  (3, null, 9223372036854775807, 'NaN', null);
create table secrets (id int, secret text);
insert into secrets values (1, 'hidden');
";

/// A database with `places` and `secrets`, and a public role that may read `places` only.
pub async fn env() -> Env {
    let db = TestDb::new().await;
    sqlx::raw_sql(SETUP).execute(db.pool()).await.unwrap();
    let role = db.create_role().await;
    PublicRole::new(role.name(), role.password(), "public")
        .tables(["places"])
        .provision(db.pool(), &[])
        .await
        .unwrap();
    let pool = role.pool(1).await;
    Env { role, pool, db }
}

/// The whole body as text; an `Err` item is appended as `<<error: …>>`.
pub async fn body(response: Response) -> String {
    let mut out = Vec::new();
    let mut body = response.body;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => out.extend_from_slice(format!("<<error: {e}>>").as_bytes()),
        }
    }
    String::from_utf8(out).unwrap()
}

/// Runs `sql` and returns the body.
pub async fn text(pool: &PgPool, sql: &str, options: Options) -> String {
    body(sqlpass::run(pool, sql, options).await.unwrap()).await
}

/// Runs `sql` in the JSON format and parses the envelope, without its `time`.
pub async fn json(pool: &PgPool, sql: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&text(pool, sql, Options::default()).await).unwrap();
    let time = v.as_object_mut().unwrap().remove("time").unwrap();
    assert!(time.as_f64().unwrap() >= 0.0);
    v
}

/// The pid of the role's backend whose query is like `pattern` once it is active (at most 5 s).
pub async fn until_active(env: &Env, pattern: &str) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found: Option<(i32,)> = sqlx::query_as(
            "select pid from pg_stat_activity
             where usename = $1 and query like $2 and state = 'active' and pid <> pg_backend_pid()",
        )
        .bind(env.role.name())
        .bind(pattern)
        .fetch_optional(env.db.pool())
        .await
        .unwrap();
        if let Some((pid,)) = found {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no active query like {pattern}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
