//! Vector tiles of the Natural Earth countries, per tile, for the 85 tiles of zooms 0 to 3:
//! encoding alone (points, lines and polygons already in tile space) and the whole in-process
//! pipeline from WKB bytes; then, fetch included on both sides, in the same run, the
//! in-process table source against PostGIS's `ST_AsMVT(ST_AsMVTGeom(…))`: the countries at
//! 1:110m and at 1:50m (ten times the vertices) from z0 to z5 (every tile to z3, the tiles over
//! land at z4, every other one at z5) and 150 000 points (`bench_points`, a third of them over
//! central Europe) from z0 to z3. Criterion reports
//! tiles/s (per-tile time is its inverse); `vertices` reports the pipeline's vertices/s.
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
use geo_types::{Geometry, LineString, MultiPoint, Point};
use geostack::tiles::{TileBuilder, TileCoord, TileGeometry, TileOptions, Value, tile_geometry};

/// The allocator the `geostack` binary serves with: the in-process side allocates as the
/// server's tile routes do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns a country into the geometry kind under test.
type Convert = fn(&Geometry<f64>) -> Geometry<f64>;

const POINTS_CHECK: &str = "select count(*) from pg_tables where tablename = 'bench_points'";

/// 100 000 points over the world and 50 000 over central Europe, the same on every run.
const POINTS: &str = "
create table bench_points (id int primary key, name text, geom geometry(Point, 4326));
select setseed(0.42);
insert into bench_points
select i, 'p' || i, ST_SetSRID(ST_MakePoint(
         case when i <= 100000 then -180 + 360 * random() else 3 + 14 * random() end,
         case when i <= 100000 then -85 + 170 * random() else 43 + 14 * random() end), 4326)
from generate_series(1, 150000) i;
create index on bench_points using gist (geom);
analyze bench_points;
";

/// PostGIS's tile of a table with `gid`, `iso`, `name` and a `geom` in EPSG:4326.
const COUNTRIES_ST_ASMVT: &str = include_str!("../crates/testkit/src/sql/st_asmvt_countries.sql");

/// PostGIS's tile of the points.
const POINTS_ST_ASMVT: &str = "
select ST_AsMVT(q, 'points', 4096, 'geom', 'id') from (
  select id, name,
         ST_AsMVTGeom(ST_Transform(geom, 3857), ST_TileEnvelope($1, $2, $3), 4096, 64, true) as geom
  from bench_points
  where geom && (
    select ST_Transform(ST_MakeEnvelope(
             greatest(ST_XMin(e), -20037508.342789244), greatest(ST_YMin(e), -20037508.342789244),
             least(ST_XMax(e), 20037508.342789244), least(ST_YMax(e), 20037508.342789244), 3857), 4326)
    from ST_TileEnvelope($1, $2, $3, margin => 64.0 / 4096) as e)
) q where geom is not null";

fn tiles() -> Vec<TileCoord> {
    let mut out = Vec::new();
    for z in 0..=3u8 {
        for x in 0..(1u32 << z) {
            for y in 0..(1u32 << z) {
                out.push(TileCoord::new_checked(z, x, y).expect("a tile"));
            }
        }
    }
    out
}

/// The countries in EPSG:3857, with their vertex counts.
fn countries_3857() -> Vec<(u64, String, Geometry<f64>)> {
    geostack_testkit::natural_earth::countries()
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut g = Geometry::MultiPolygon(c.geometry);
            project(&mut g);
            (i as u64 + 1, c.name, g)
        })
        .collect()
}

fn project(g: &mut Geometry<f64>) {
    if let Geometry::MultiPolygon(mp) = g {
        for p in &mut mp.0 {
            let f = |l: &mut LineString<f64>| {
                for c in &mut l.0 {
                    let (x, y) = geostack::tiles::to_web_mercator(c.x, c.y);
                    *c = geo_types::Coord { x, y };
                }
            };
            p.exterior_mut(f);
            p.interiors_mut(|rs| rs.iter_mut().for_each(f));
        }
    }
}

fn vertices(g: &Geometry<f64>) -> u64 {
    match g {
        Geometry::MultiPolygon(mp) => mp
            .0
            .iter()
            .map(|p| p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>())
            .sum::<usize>() as u64,
        _ => 0,
    }
}

fn bench(c: &mut Criterion) {
    let tiles = tiles();
    let options = TileOptions::default();
    let countries = countries_3857();
    let n = tiles.len() as u64;

    // Encoding alone: every country as polygons, its rings as lines, its vertices as points,
    // already clipped and quantized per tile.
    let mut group = c.benchmark_group("tiles_encode_only");
    group.throughput(Throughput::Elements(n));
    group.measurement_time(Duration::from_secs(8));
    let kinds: [(&str, Convert); 3] = [
        ("polygons", |g| g.clone()),
        ("lines", |g| match g {
            Geometry::MultiPolygon(mp) => {
                Geometry::MultiLineString(geo_types::MultiLineString::new(
                    mp.0.iter().map(|p| p.exterior().clone()).collect(),
                ))
            }
            other => other.clone(),
        }),
        ("points", |g| match g {
            Geometry::MultiPolygon(mp) => Geometry::MultiPoint(MultiPoint::new(
                mp.0.iter()
                    .flat_map(|p| p.exterior().0.iter().map(|c| Point(*c)))
                    .collect(),
            )),
            other => other.clone(),
        }),
    ];
    for (name, convert) in kinds {
        let prepared: Vec<(TileCoord, Vec<(u64, TileGeometry)>)> = tiles
            .iter()
            .map(|&t| {
                let gs = countries
                    .iter()
                    .filter_map(|(id, _, g)| {
                        tile_geometry(&convert(g), t, &options).map(|tg| (*id, tg))
                    })
                    .collect();
                (t, gs)
            })
            .collect();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut bytes = 0;
                for (t, gs) in &prepared {
                    let mut builder = TileBuilder::new(*t, &options);
                    let mut layer = builder.layer("countries");
                    for (id, g) in gs {
                        layer.add_tile_geometry(g, Some(*id), &[]).expect("encode");
                    }
                    layer.finish().expect("layer");
                    bytes += builder.into_bytes().expect("tile").len();
                }
                black_box(bytes)
            });
        });
    }
    group.finish();

    // The whole pipeline from WKB bytes (EPSG:3857), as a source hands them over.
    let wkbs: Vec<(u64, String, Vec<u8>)> = countries
        .iter()
        .map(|(id, name, g)| {
            let mut out = Vec::new();
            wkb::writer::write_geometry(&mut out, g, &Default::default()).expect("wkb");
            (*id, name.clone(), out)
        })
        .collect();
    let per_tile: Vec<(TileCoord, Vec<usize>)> = tiles
        .iter()
        .map(|&t| {
            let b = t.bounds_3857().expand(64.0 * t.size_3857() / 4096.0);
            let near = countries
                .iter()
                .enumerate()
                .filter(|(_, (_, _, g))| intersects(g, &b))
                .map(|(i, _)| i)
                .collect();
            (t, near)
        })
        .collect();
    let input_vertices: u64 = per_tile
        .iter()
        .map(|(_, near)| near.iter().map(|&i| vertices(&countries[i].2)).sum::<u64>())
        .sum();
    let run_pipeline = || {
        let mut bytes = 0;
        for (t, near) in &per_tile {
            let mut builder = TileBuilder::new(*t, &options);
            let mut layer = builder.layer("countries");
            for &i in near {
                let (id, name, wkb) = &wkbs[i];
                layer
                    .add_wkb(wkb, Some(*id), &[("name", Value::String(name))])
                    .expect("add");
            }
            layer.finish().expect("layer");
            bytes += builder.into_bytes().expect("tile").len();
        }
        bytes
    };
    let mut group = c.benchmark_group("tiles_pipeline_from_wkb");
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(n));
    group.bench_function("tiles", |b| b.iter(|| black_box(run_pipeline())));
    group.throughput(Throughput::Elements(input_vertices));
    group.bench_function("vertices", |b| b.iter(|| black_box(run_pipeline())));
    group.finish();

    // Fetch included, both sides, same tiles, same table, same run.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pool = rt.block_on(async {
        let pool = support::bench_pool("select 1", "").await;
        support::countries(&pool).await;
        // Another binary (or this one, listed twice by the test runner) may be loading it.
        let lock = support::SetupLock::take(&pool).await;
        let (exists,): (i64,) = sqlx::query_as(POINTS_CHECK)
            .fetch_one(&pool)
            .await
            .expect("pg_tables");
        if exists == 0 {
            sqlx::raw_sql(POINTS)
                .execute(&pool)
                .await
                .expect("the points");
        }
        lock.release().await;
        pool
    });
    let source = |table: &str| {
        rt.block_on(async {
            geostack::tiles::discover(&pool)
                .await
                .expect("discover")
                .into_iter()
                .find(|s| s.table == table)
                .expect("the table is a source")
        })
    };
    // Countries z0–z5: every tile to z3, then every tile over a country at z4 and every other
    // one at z5. Points z0–z3: every tile.
    let mut over_land: Vec<TileCoord> = tiles.clone();
    for z in 4..=5u8 {
        let mut at = Vec::new();
        for x in 0..(1u32 << z) {
            for y in 0..(1u32 << z) {
                let t = TileCoord::new_checked(z, x, y).expect("a tile");
                if countries
                    .iter()
                    .any(|(_, _, g)| intersects(g, &t.bounds_3857()))
                {
                    at.push(t);
                }
            }
        }
        over_land.extend(at.into_iter().step_by(usize::from(z) - 3));
    }
    let sets = [
        (
            "countries",
            source("bench_countries"),
            over_land.clone(),
            COUNTRIES_ST_ASMVT.replace("{table}", "bench_countries"),
        ),
        (
            "countries_50m",
            source("bench_countries_50m"),
            over_land.clone(),
            COUNTRIES_ST_ASMVT.replace("{table}", "bench_countries_50m"),
        ),
        (
            "points",
            source("bench_points"),
            tiles.clone(),
            POINTS_ST_ASMVT.to_owned(),
        ),
    ];
    // As a test (`cargo test --benches`, unoptimised, on a busy machine) two z3 tiles of each set
    // show the code runs; the measured run takes them all.
    let measuring = std::env::args().any(|a| a == "--bench");
    let sets = sets.map(|(name, source, tiles, st_asmvt)| {
        let tiles: Vec<TileCoord> = if measuring {
            tiles
        } else {
            tiles.into_iter().filter(|t| t.z() == 3).take(2).collect()
        };
        (name, source, tiles, st_asmvt)
    });
    let fill_options = sqlpass::Options::default()
        .statement_timeout(Duration::from_secs(120))
        .deadline(Duration::from_secs(300));
    for (name, source, tiles, st_asmvt) in &sets {
        let mut group = c.benchmark_group(format!("tiles_fetch_and_encode_{name}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(10));
        group.throughput(Throughput::Elements(tiles.len() as u64));
        group.bench_function("in_process", |b| {
            b.to_async(&rt).iter(|| async {
                let mut bytes = 0;
                for t in tiles {
                    let mut builder = TileBuilder::new(*t, &options);
                    let mut layer = builder.layer(name);
                    source
                        .fill(&pool, &fill_options, &mut layer)
                        .await
                        .expect("fill");
                    layer.finish().expect("layer");
                    bytes += builder.into_bytes().expect("tile").len();
                }
                black_box(bytes)
            });
        });
        group.bench_function("postgis_st_asmvt", |b| {
            b.to_async(&rt).iter(|| async {
                let mut bytes = 0;
                for t in tiles {
                    let (tile,): (Vec<u8>,) = sqlx::query_as(sqlx::AssertSqlSafe(st_asmvt.clone()))
                        .bind(i32::from(t.z()))
                        .bind(t.x() as i32)
                        .bind(t.y() as i32)
                        .fetch_one(&pool)
                        .await
                        .expect("ST_AsMVT");
                    bytes += tile.len();
                }
                black_box(bytes)
            });
        });
        group.finish();
    }
}

fn intersects(g: &Geometry<f64>, b: &geostack::tiles::Bounds) -> bool {
    let Geometry::MultiPolygon(mp) = g else {
        return false;
    };
    let mut bb: Option<geostack::tiles::Bounds> = None;
    for c in mp.0.iter().flat_map(|p| p.exterior().0.iter()) {
        let e = bb.get_or_insert(geostack::tiles::Bounds {
            min_x: c.x,
            min_y: c.y,
            max_x: c.x,
            max_y: c.y,
        });
        e.min_x = e.min_x.min(c.x);
        e.min_y = e.min_y.min(c.y);
        e.max_x = e.max_x.max(c.x);
        e.max_y = e.max_y.max(c.y);
    }
    bb.is_some_and(|bb| bb.intersects(b))
}

criterion_group!(benches, bench);
criterion_main!(benches);
