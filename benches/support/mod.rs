//! Shared set-up of the benchmarks: a database of their own with deterministic data, made once
//! and kept between runs.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The benchmark database, cloned from the PostGIS template on first use.
pub(crate) const DATABASE: &str = "geostack_bench";

/// The advisory lock that serializes set-up across benchmark binaries.
const LOCK: i64 = 0x6765_6f73_7461_636b;

/// A pool on the benchmark database; it and `setup` (run only when `check` returns 0) are
/// created on first use. Benchmark binaries start side by side (a test runner lists them at
/// once), so both steps hold an advisory lock: one binary loads, the others wait and find
/// the data there.
pub(crate) async fn bench_pool(check: &str, setup: &str) -> PgPool {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let template =
        std::env::var("GEOSTACK_PG_TEMPLATE").unwrap_or_else(|_| "geostack_template".into());
    let admin = PgConnectOptions::from_str(&url).expect("a valid DATABASE_URL");
    let admin_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin.clone())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is unreachable ({e}): run scripts/services"));
    let mut lock = SetupLock::take(&admin_pool).await;
    let exists: bool =
        sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut *lock.0)
            .await
            .expect("pg_database");
    if !exists {
        let create = format!("create database {DATABASE} template \"{template}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut *lock.0)
            .await
            .expect("create the benchmark database");
    }
    lock.release().await;
    admin_pool.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(admin.database(DATABASE))
        .await
        .expect("connect to the benchmark database");
    let mut lock = SetupLock::take(&pool).await;
    let ready: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(check.to_owned()))
        .fetch_one(&mut *lock.0)
        .await
        .unwrap_or(0);
    if ready == 0 {
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup.to_owned()))
            .execute(&mut *lock.0)
            .await
            .expect("load the benchmark data");
    }
    lock.release().await;
    pool
}

/// The set-up lock held on a connection of its own, for a binary whose set-up is more than SQL
/// (it loads through other connections of the pool meanwhile).
pub(crate) struct SetupLock(sqlx::pool::PoolConnection<sqlx::Postgres>);

impl SetupLock {
    /// Waits for the lock.
    pub(crate) async fn take(pool: &PgPool) -> Self {
        let mut conn = pool.acquire().await.expect("a connection");
        sqlx::query("select pg_advisory_lock($1)")
            .bind(LOCK)
            .execute(&mut *conn)
            .await
            .expect("the set-up lock");
        Self(conn)
    }

    /// Lets the next binary's set-up go on.
    pub(crate) async fn release(mut self) {
        sqlx::query("select pg_advisory_unlock($1)")
            .bind(LOCK)
            .execute(&mut *self.0)
            .await
            .expect("the set-up lock");
    }
}

/// Makes sure `bench_countries` (the Natural Earth countries at 1:110m) and
/// `bench_countries_50m` (at 1:50m) are in the benchmark database, loading them under the set-up
/// lock when another binary has not.
#[allow(
    clippy::allow_attributes,
    dead_code,
    reason = "the tile benchmarks use it, the others include this module too"
)]
pub(crate) async fn countries(pool: &PgPool) {
    use geostack_testkit::natural_earth::{load_countries, load_countries_50m};
    // Another binary (or this one, listed twice by the test runner) may be loading them.
    let lock = SetupLock::take(pool).await;
    let exists = |table: &'static str| async move {
        sqlx::query_scalar::<_, bool>("select exists(select 1 from pg_tables where tablename = $1)")
            .bind(table)
            .fetch_one(pool)
            .await
            .expect("pg_tables")
    };
    if !exists("bench_countries").await {
        load_countries(pool, "bench_countries").await;
    }
    if !exists("bench_countries_50m").await {
        load_countries_50m(pool, "bench_countries_50m").await;
    }
    lock.release().await;
}
