//! Raster tiles against Mapnik, in the same run, over the same table (the Natural Earth
//! countries in the benchmark database) and the same 21 tiles (every tile of zooms 0 to 2), for
//! the styles `tests/mapnik.rs` checks: each side reads the rows of a tile from PostGIS, draws
//! them and encodes a 256-pixel PNG. Mapnik is Debian's Mapnik 3.1 through its Python binding,
//! one process asked tile by tile over a pipe (`tests/mapnik/render.py`); ours is
//! `MapConfig::render_png`, one tile after another (`in_process`) and all 21 at once on a
//! runtime with a worker per core (`in_process_parallel`: the drawing runs on the blocking pool,
//! so tiles draw on every core). Criterion reports tiles/s; a tile's time is its inverse.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops, saying why, when its setup fails"
)]

#[path = "support/mod.rs"]
mod support;

#[path = "../tests/support/mapnik.rs"]
mod mapnik;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use geostack::tiles::{MapConfig, TileCoord, TileOptions};

fn bench(c: &mut Criterion) {
    let measuring = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2),
        )
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pool = rt.block_on(async {
        let pool = support::bench_pool("select 1", "").await;
        support::countries(&pool).await;
        pool
    });
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut source = mapnik::Source::new(&url, "bench_countries");
    source.dbname = support::DATABASE.to_owned();

    // As a test (unoptimised) one tile shows each side runs; the measured run takes 21.
    let tiles: Vec<TileCoord> = (0..=2u8)
        .flat_map(|z| {
            (0..1u32 << z).flat_map(move |x| {
                (0..1u32 << z).map(move |y| TileCoord::new_checked(z, x, y).expect("a tile"))
            })
        })
        .take(if measuring { usize::MAX } else { 1 })
        .collect();
    let options = TileOptions::default();
    let sandbox = sqlpass::Options::default();

    for style in mapnik::STYLES {
        let config = serde_json::json!({"version": "1.3.0", "layers": [{"type": "mapnik", "options": {
            "sql": style.sql.replace("{table}", "bench_countries"),
            "cartocss": style.cartocss, "cartocss_version": "2.1.1"}}]});
        let config = MapConfig::parse(&config.to_string()).expect("the map config");
        let mut renderer = mapnik::Mapnik::start(style, &source);

        let mut group = c.benchmark_group(format!("raster_{}", style.name));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(if measuring { 8 } else { 1 }));
        group.throughput(Throughput::Elements(tiles.len() as u64));
        group.bench_function("in_process", |b| {
            b.to_async(&rt).iter(|| async {
                let mut bytes = 0;
                for t in &tiles {
                    let png = config
                        .render_png(&pool, *t, 1, &options, &sandbox)
                        .await
                        .expect("our tile");
                    bytes += png.len();
                }
                black_box(bytes)
            });
        });
        group.bench_function("in_process_parallel", |b| {
            b.to_async(&rt).iter(|| async {
                let renders = tiles.iter().map(|t| {
                    let (config, pool, options, sandbox) = (&config, &pool, &options, &sandbox);
                    async move {
                        config
                            .render_png(pool, *t, 1, options, sandbox)
                            .await
                            .expect("our tile")
                            .len()
                    }
                });
                black_box(futures_util::future::join_all(renders).await)
            });
        });
        group.bench_function("mapnik", |b| {
            b.iter(|| {
                let mut bytes = 0;
                for t in &tiles {
                    bytes += renderer.render(t.z(), t.x(), t.y()).len();
                }
                black_box(bytes)
            });
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
