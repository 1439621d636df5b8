//! sqlpass throughput: 1 M rows (an int8, a float8, a text and a point) streamed as JSON,
//! GeoJSON and CSV, against PostgreSQL's own `COPY (same query) TO STDOUT WITH CSV` read
//! through sqlx's copy-out, in the same run on the same database. Criterion reports rows/s;
//! then rounds of the four run side by side give each format's median ratio to COPY.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops, saying why, when its setup fails"
)]

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use geostack::sql::{Format, Options};

const ROWS: u64 = 1_000_000;
const QUERY: &str = "select id, x, name, geom from bench_rows_v2";

const CHECK: &str = "select count(*) from bench_rows_v2";
const SETUP: &str = "
drop table if exists bench_rows;
drop table if exists bench_rows_v2;
create table bench_rows_v2 as
select g::int8 as id, (g * 0.001)::float8 as x, 'place ' || g as name,
       ST_SetSRID(ST_MakePoint((g % 3600) * 0.1 - 180, (g % 1700) * 0.1 - 85), 4326) as geom
from generate_series(1, 1000000) g;
analyze bench_rows_v2;
";

fn formats(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pool = rt.block_on(support::bench_pool(CHECK, SETUP));

    let mut group = c.benchmark_group("sql_1m_rows");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(ROWS));

    group.bench_function("copy_csv_baseline", |b| {
        b.to_async(&rt).iter(|| copy_csv(&pool));
    });
    for (name, format) in FORMATS {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| stream(&pool, format));
        });
    }
    group.finish();

    // This machine's speed drifts between criterion's groups of samples; ratios of runs made
    // side by side are steadier. Rounds of COPY then each format, the median ratio per format.
    // Only when benchmarking (`cargo bench` passes --bench), not when smoke-run as a test.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); FORMATS.len()];
    for _ in 0..ROUNDS {
        let copy = rt.block_on(timed(copy_csv(&pool)));
        for (i, (_, format)) in FORMATS.iter().enumerate() {
            let took = rt.block_on(timed(stream(&pool, *format)));
            ratios[i].push(copy.as_secs_f64() / took.as_secs_f64());
        }
    }
    for ((name, _), mut r) in FORMATS.iter().zip(ratios) {
        r.sort_by(f64::total_cmp);
        let shown: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
        eprintln!(
            "sql: {name} rows/s as a ratio of COPY CSV, run side by side: median {:.2} ({})",
            r[r.len() / 2],
            shown.join(" ")
        );
    }
}

/// Rounds of side-by-side runs.
const ROUNDS: usize = 7;

const FORMATS: [(&str, Format); 3] = [
    ("json", Format::Json),
    ("geojson", Format::GeoJson),
    ("csv", Format::Csv),
];

async fn timed(run: impl Future<Output = usize>) -> Duration {
    let started = Instant::now();
    black_box(run.await);
    started.elapsed()
}

/// The baseline: `COPY (the query) TO STDOUT WITH CSV HEADER` read through sqlx's copy-out.
async fn copy_csv(pool: &sqlx::PgPool) -> usize {
    let mut conn = pool.acquire().await.expect("a connection");
    // The same planner settings as sqlpass's runs: no JIT compilation.
    sqlx::raw_sql("SET jit = off")
        .execute(&mut *conn)
        .await
        .expect("set jit");
    let copy = format!("COPY ({QUERY}) TO STDOUT WITH CSV HEADER");
    let mut stream = conn.copy_out_raw(&copy).await.expect("copy out");
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("a chunk").len();
    }
    bytes
}

/// The query through sqlpass in `format`, every byte read.
async fn stream(pool: &sqlx::PgPool, format: Format) -> usize {
    let options = Options::default().format(format).affected_tables(false);
    let response = geostack::sql::run(pool, QUERY, options)
        .await
        .expect("a run");
    let mut body = response.body;
    let mut bytes = 0usize;
    while let Some(chunk) = body.next().await {
        bytes += chunk.expect("a chunk").len();
    }
    bytes
}

criterion_group!(benches, formats);
criterion_main!(benches);
