//! Small queries through sqlpass: a point lookup by unique id, as widgets, pop-ups and apps send
//! most SQL API traffic, at 1 and 16 concurrent callers, beside a raw sqlx query of the same SQL
//! on the same pool (prepared once and reused, as sqlx does), in the same run. sqlpass runs with
//! every guarantee of its sandbox, with and without cache tags. Criterion reports queries/s;
//! then rounds side by side give each variant's rate and p50 latency as ratios of the raw query's.
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
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw_sqlx",
            Self::Sandbox => "sqlpass_uncached",
            Self::Plans => "sqlpass",
            Self::PlansTags => "sqlpass_cache_tags",
        }
    }
}

const VARIANTS: [Variant; 4] = [
    Variant::Raw,
    Variant::Sandbox,
    Variant::Plans,
    Variant::PlansTags,
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
    }
}

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

criterion_group!(benches, small);
criterion_main!(benches);
