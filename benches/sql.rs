//! sqlpass throughput: 1 M rows (an int8, a float8, a text and a point) streamed as JSON,
//! GeoJSON and CSV, against PostgreSQL's own `COPY (same query) TO STDOUT WITH CSV` read
//! through sqlx's copy-out, in the same run on the same database. Criterion reports rows/s.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops, saying why, when its setup fails"
)]

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Duration;

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
        b.to_async(&rt).iter(|| async {
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
            black_box(bytes)
        });
    });
    for (name, format) in [
        ("json", Format::Json),
        ("geojson", Format::GeoJson),
        ("csv", Format::Csv),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let options = Options::default().format(format).affected_tables(false);
                let response = geostack::sql::run(&pool, QUERY, options)
                    .await
                    .expect("a run");
                let mut body = response.body;
                let mut bytes = 0usize;
                while let Some(chunk) = body.next().await {
                    bytes += chunk.expect("a chunk").len();
                }
                black_box(bytes)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, formats);
criterion_main!(benches);
