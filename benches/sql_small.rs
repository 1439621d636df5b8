//! Small queries through sqlpass: a point lookup by unique id, as widgets, pop-ups and apps send
//! most SQL API traffic, at 1 and 16 concurrent callers, beside a raw sqlx query of the same SQL
//! on the same pool (prepared once and reused, as sqlx does), in the same run. sqlpass runs with
//! every guarantee of its sandbox, with and without cache tags. Criterion reports queries/s;
//! then rounds side by side give each variant's rate and p50 latency as ratios of the raw query's,
//! after pgbench has shown what the server alone does with the query (prepared, or parsed each
//! time). Beside sqlpass, the sandbox's whole run sent as one message through sqlx: the floor under
//! any client of this sandbox, however few its round trips.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops, saying why, when its setup fails"
)]

#[path = "support/small.rs"]
mod small;
#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use geostack::sql::Options;

const SQL: &str = "SELECT id, cat, val, label, ts, geom FROM bench_small WHERE id = 4242";
/// Queries per measured batch, spread over the callers.
const BATCH: usize = 800;

#[derive(Clone, Copy, Debug)]
enum Variant {
    Raw,
    /// Every run describes its statement.
    Sandbox,
    /// Descriptions kept in a plan cache, as the server runs.
    Plans,
    /// With the plan cache, and the tables the statement reads found for cache tags.
    PlansTags,
    /// Not sqlpass: the sandbox's whole run (BEGIN, its setup, the wrapped statement, ROLLBACK,
    /// its end check) sent as one simple-protocol message through sqlx, the floor under any
    /// client of this sandbox however few its round trips.
    OneMessage,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw_sqlx",
            Self::Sandbox => "sqlpass_uncached",
            Self::Plans => "sqlpass",
            Self::PlansTags => "sqlpass_cache_tags",
            Self::OneMessage => "sandbox_one_message",
        }
    }
}

const VARIANTS: [Variant; 5] = [
    Variant::Raw,
    Variant::Sandbox,
    Variant::Plans,
    Variant::PlansTags,
    Variant::OneMessage,
];

/// The plan cache of the cached variants, shared by all their runs.
static PLANS: std::sync::LazyLock<geostack::sql::Plans> =
    std::sync::LazyLock::new(geostack::sql::Plans::default);

async fn one(pool: &sqlx::PgPool, variant: Variant) -> usize {
    match variant {
        Variant::Raw => sqlx::query(SQL)
            .fetch_all(pool)
            .await
            .expect("the raw query")
            .len(),
        Variant::Sandbox | Variant::Plans | Variant::PlansTags => {
            let mut options =
                Options::default().affected_tables(matches!(variant, Variant::PlansTags));
            if !matches!(variant, Variant::Sandbox) {
                options = options.plans(PLANS.clone());
            }
            let mut body = geostack::sql::run(pool, SQL, options)
                .await
                .expect("the sandboxed query")
                .body;
            let mut n = 0;
            while let Some(chunk) = body.next().await {
                n += chunk.expect("a chunk").len();
            }
            n
        }
        Variant::OneMessage => {
            let mut conn = pool.acquire().await.expect("a connection");
            let sent = sqlx::raw_sql(sqlx::AssertSqlSafe(ONE_MESSAGE.0.clone()))
                .fetch_all(&mut *conn)
                .await;
            match sent {
                Ok(rows) => rows.len(),
                // A connection that has not prepared the sandbox's statements yet.
                Err(_) => sqlx::raw_sql(sqlx::AssertSqlSafe(ONE_MESSAGE.1.clone()))
                    .fetch_all(&mut *conn)
                    .await
                    .expect("the sandbox in one message")
                    .len(),
            }
        }
    }
}

/// The sandbox's whole run as one message, and the same message preparing its own statements
/// first: sqlpass's `begin.sql` and `end.sql`, prepared once per connection as sqlpass does
/// (under names of their own in its `sqlpass_` namespace, so that sqlpass's end check accepts
/// them), with the statement in the wrapper sqlpass puts round it (columns int8, int4, float8,
/// text, timestamptz, geometry; the default row and value-size limits).
static ONE_MESSAGE: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| {
    let (rows, value) = (
        geostack::sql::DEFAULT_ROW_LIMIT + 1,
        geostack::sql::DEFAULT_VALUE_LIMIT,
    );
    let wrapped = format!(
        "SELECT _q.c1, _q.c2, _q.c3, \
         CASE WHEN octet_length(_q.c4::text) > {value} THEN NULL ELSE _q.c4 END, _q.c5, \
         CASE WHEN pg_column_size(_q.c6) > {value} THEN NULL ELSE _q.c6 END, \
         CASE WHEN octet_length(_q.c4::text) > {value} THEN 4 \
         WHEN pg_column_size(_q.c6) > {value} THEN 6 END \
         FROM (SELECT * FROM (\n{SQL}\n) AS _i LIMIT {rows} OFFSET 0) AS _q(c1, c2, c3, c4, c5, c6)"
    );
    let run = format!(
        "BEGIN READ ONLY ISOLATION LEVEL READ COMMITTED; \
         EXECUTE sqlpass_floor_open('15000', '2000', '10000', 'off');\n{wrapped};\n\
         ROLLBACK; EXECUTE sqlpass_floor_end"
    );
    let prepare = format!(
        "ROLLBACK;\nPREPARE sqlpass_floor_open(text, text, text, text) AS\n{};\n\
         PREPARE sqlpass_floor_end AS\n{};\n{run}",
        include_str!("../crates/sqlpass/src/sql/begin.sql"),
        include_str!("../crates/sqlpass/src/sql/end.sql")
    );
    (run, prepare)
});

/// `BATCH` queries by `callers` concurrent callers; each query's latency.
async fn batch(pool: &sqlx::PgPool, variant: Variant, callers: usize) -> Vec<Duration> {
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(BATCH / callers);
                for _ in 0..BATCH / callers {
                    let started = Instant::now();
                    black_box(one(&pool, variant).await);
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(BATCH);
    for t in tasks {
        all.extend(t.await.expect("a caller"));
    }
    all
}

fn small(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let setup = rt.block_on(support::bench_pool(small::CHECK, small::SETUP));
    rt.block_on(geostack::sql::install(&setup))
        .expect("install sqlpass's function");
    let pool = rt.block_on(async {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            // As sqlpass's PoolRegistry makes them (each run checks its connection at its end).
            .test_before_acquire(false)
            .connect_with(setup.connect_options().as_ref().clone())
            .await
            .expect("a pool of 16")
    });

    for callers in [1, 16] {
        let mut group = c.benchmark_group(format!("sql_small_{callers}_callers"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(5));
        group.throughput(Throughput::Elements(BATCH as u64));
        for variant in VARIANTS {
            group.bench_function(variant.name(), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let pool = pool.clone();
                    async move {
                        let started = Instant::now();
                        for _ in 0..iters {
                            batch(&pool, variant, callers).await;
                        }
                        started.elapsed()
                    }
                });
            });
        }
        group.finish();
    }

    // Side by side, the ratios: rate and p50 of each variant against the raw query's, rounds
    // of all three in turn. Only when benchmarking, not when smoke-run as a test.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    server_floor(&pool);
    for callers in [1, 16] {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        for _ in 0..ROUNDS {
            for (i, variant) in VARIANTS.iter().enumerate() {
                let started = Instant::now();
                let mut latencies = rt.block_on(batch(&pool, *variant, callers));
                let took = started.elapsed();
                latencies.sort();
                rates[i].push(BATCH as f64 / took.as_secs_f64());
                p50s[i].push(latencies[latencies.len() / 2].as_secs_f64() * 1e3);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let raw_rate = median(&mut rates[0].clone());
        let raw_p50 = median(&mut p50s[0].clone());
        for (i, variant) in VARIANTS.iter().enumerate() {
            let rate = median(&mut rates[i]);
            let p50 = median(&mut p50s[i]);
            eprintln!(
                "sql_small: {callers} callers, {}: {rate:.0} queries/s ({:.3}x raw), p50 {p50:.3} ms ({:.2}x raw)",
                variant.name(),
                rate / raw_rate,
                p50 / raw_p50
            );
        }
    }
}

/// Rounds of side-by-side runs.
const ROUNDS: usize = 5;

/// The same point lookup as the server alone runs it, driven by pgbench (16 connections,
/// nothing of ours on the client side): planned once and bound (prepared, as the raw sqlx query
/// runs) and parsed and planned each time (simple protocol).
fn server_floor(pool: &sqlx::PgPool) {
    let connect = pool.connect_options();
    let script = format!("{SQL};\n");
    let run = |mode| small::pgbench(&connect, support::DATABASE, mode, &script, 16, 5);
    let prepared = run("prepared");
    let simple = run("simple");
    eprintln!(
        "sql_small: the server alone (pgbench, 16 connections): prepared {prepared:.0} tps, \
         parsed each time {simple:.0} tps ({:.3}x)",
        simple / prepared
    );
}

criterion_group!(benches, small);
criterion_main!(benches);
