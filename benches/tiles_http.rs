//! A small tile's fixed cost and a cached tile's rate, over real TCP through the composed
//! server, beside PostGIS's own `ST_AsMVT(ST_AsMVTGeom(…))` of the same tile in the same run.
//!
//! The small tile is `8/135/86` of `tiles_points` (a few hundred points of a dense cluster
//! over central Europe, 150 000 points in all). Criterion measures, one request at a time on a
//! kept-alive connection:
//!
//! - `round_trip`: `select 1`, a prepared statement's round trip to PostgreSQL;
//! - `st_asmvt_query`: PostGIS's tile alone (a prepared statement on a pooled connection);
//! - `sandbox_session`: the sandbox's own transaction, opened and ended with nothing in it;
//! - `source_query`: the rows the table source reads, on a pooled connection, no sandbox;
//! - `fill_in_process`: the table source's whole tile (sandbox, rows, encoding), no HTTP;
//! - `http_uncached`: the tile through the server with its tile cache off (key check, rate
//!   limit, fair share, discovery, sandbox, rows, encoding, HTTP);
//! - `http_cached`: the tile through a server that has it cached;
//! - `http_floor`: `GET /health`, the HTTP round trip alone.
//! - `router_cached` and `router_bare`: the cached tile, and the same bytes from a route that
//!   only returns them behind the same edge, through the routers in process (no socket): what
//!   the handlers themselves cost, steadier than any figure over TCP.
//!
//! With `--bench`, wrk then loads the cached tile (16 kept-alive connections, a regular key
//! in the URL, its rate limit enforced but high), the same bytes from a route that only
//! returns them behind the same edge (the HTTP floor for that answer) and `/health`, and the
//! medians come out side by side: the small tile's cost above `ST_AsMVT` and the cached rate.
//!
//! With `GEOSTACK_MARTIN` naming a Martin binary, Martin serves the same table from the same
//! database and wrk loads the same tile from it (its own tile cache on, as Martin ships) in
//! the same rounds, so the cached rate is compared with Martin's on the same machine and at
//! the same moment. Martin is not installed by the project's scripts; without it the rounds
//! report ours and `/health` only.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops, saying why, when its setup fails"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use geostack::auth::{Api, Grants, Privilege, Quota, UserName};
use geostack::server::{GuardedListener, KeyRequest, Peer, Server, ServerConfig};
use geostack::tiles::{TableSource, TileBuilder, TileCoord, TileOptions};
use geostack_testkit::{TestDb, TestRedis};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;

/// The allocator the `geostack` binary serves with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The dense cluster's tile.
const SMALL: (u8, u32, u32) = (8, 135, 86);
const CONNECTIONS: usize = 16;
const WRK_SECS: u64 = 4;

/// 100 000 points over the world and 50 000 over central Europe, the same on every run.
const POINTS: &str = "
create table tiles_points (id int primary key, name text, geom geometry(Point, 4326));
select setseed(0.42);
insert into tiles_points
select i, 'p' || i, ST_SetSRID(ST_MakePoint(
         case when i <= 100000 then -180 + 360 * random() else 3 + 14 * random() end,
         case when i <= 100000 then -85 + 170 * random() else 43 + 14 * random() end), 4326)
from generate_series(1, 150000) i;
create index on tiles_points using gist (geom);
analyze tiles_points;
";

const ST_ASMVT: &str = "
select ST_AsMVT(q, 'tiles_points', 4096, 'geom', 'id') from (
  select id, name,
         ST_AsMVTGeom(ST_Transform(geom, 3857), ST_TileEnvelope($1, $2, $3), 4096, 64, true) as geom
  from tiles_points
  where geom && ST_Transform(ST_TileEnvelope($1, $2, $3, margin => 64.0 / 4096), 4326)
) q where geom is not null";

/// The rows the table source reads for a tile (its query, less the size guards).
const SOURCE_QUERY: &str = "
select ST_AsBinary(geom), id::int8, name::text from tiles_points
where geom && ST_Transform(ST_MakeEnvelope($1, $2, $3, $4, 3857), 4326) limit 200001";

struct Served {
    db: TestDb,
    _redis: TestRedis,
    cached: std::net::SocketAddr,
    uncached: std::net::SocketAddr,
    /// The cached server's routes, to call in process.
    router: axum::Router,
    key: String,
}

async fn serve() -> Served {
    let db = TestDb::new().await;
    sqlx::raw_sql(POINTS)
        .execute(db.pool())
        .await
        .expect("the points");
    let redis = TestRedis::new().await;
    let lots = Quota::new(1_000_000, 1_000_000, Duration::from_secs(1)).expect("a quota");
    let config = ServerConfig::default()
        .default_user("bench")
        .key_prefix(geostack::auth::KeyPrefix::new(redis.prefix()).expect("a key prefix"))
        .redis_prefix(redis.prefix())
        .role_prefix("gs_test_role_tiles_")
        .maps_quota(lots)
        .anonymous_quotas(lots, lots)
        .max_renders_per_caller(CONNECTIONS as u32);
    let mut addrs = Vec::new();
    let mut key = String::new();
    let mut routers = Vec::new();
    for cache in [true, false] {
        let config = if cache {
            config.clone()
        } else {
            config.clone().tile_cache(0, Duration::from_secs(1))
        };
        let server = Server::new(
            redis.connection(),
            redis.client().clone(),
            db.connect_options(),
            config,
        )
        .await;
        if cache {
            let grants = Grants::new().api(Api::Maps).table(
                "public.tiles_points".parse().expect("a table name"),
                [Privilege::Select],
            );
            let (_, token) = server
                .auth()
                .create_key(
                    &UserName::new("bench").expect("a user name"),
                    KeyRequest::Regular("tiles".into()),
                    grants,
                )
                .await
                .expect("a regular key");
            key = token.expose().to_owned();
        }
        let listener = GuardedListener::bind("127.0.0.1:0").await.expect("a port");
        addrs.push(axum::serve::Listener::local_addr(&listener).expect("its address"));
        let router = server.router();
        routers.push(router.clone());
        let app = router.into_make_service_with_connect_info::<Peer>();
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    Served {
        db,
        _redis: redis,
        cached: addrs[0],
        uncached: addrs[1],
        router: routers.swap_remove(0),
        key,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the server");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(conn);
    send
}

/// One GET; its body, after checking the status is 200.
async fn get(send: &mut Sender, path: &str) -> Bytes {
    send.ready().await.expect("the connection");
    let request = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::new())
        .expect("a request");
    let response = send.send_request(request).await.expect("a response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    body
}

fn tile_path(key: &str) -> String {
    let (z, x, y) = SMALL;
    format!("/tiles/tiles_points/{z}/{x}/{y}.mvt?api_key={key}")
}

/// wrk on `url` with [`CONNECTIONS`] connections for `secs`: its requests/s.
fn wrk(url: &str, secs: u64) -> f64 {
    let wrk = std::env::var("GEOSTACK_WRK").unwrap_or_else(|_| "wrk".into());
    let out = std::process::Command::new(wrk)
        .args(["-t", "1", "-c", &CONNECTIONS.to_string()])
        .args(["-d", &format!("{secs}s"), url])
        .output()
        .unwrap_or_else(|e| panic!("wrk could not run ({e}): run scripts/services"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw refusals on {url}: {text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no rate in wrk's output: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn small_tile(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let served = rt.block_on(serve());
    // As the server's pools: no ping before a connection is handed out.
    let pool = rt
        .block_on(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .test_before_acquire(false)
                .connect_with(served.db.connect_options()),
        )
        .expect("a pool");
    let coord = TileCoord::new_checked(SMALL.0, SMALL.1, SMALL.2).expect("a tile");
    let source = rt.block_on(async {
        geostack::tiles::discover(&pool)
            .await
            .expect("discover")
            .into_iter()
            .find(|s: &TableSource| s.table == "tiles_points")
            .expect("tiles_points is a source")
    });
    let options = TileOptions::default();
    let bounds = {
        let mut builder = TileBuilder::new(coord, &options);
        let b = builder.layer("x").buffered_bounds();
        [b.min_x, b.min_y, b.max_x, b.max_y]
    };
    let (cached, mut uncached, floor) = rt.block_on(async {
        (
            connect(served.cached).await,
            connect(served.uncached).await,
            connect(served.cached).await,
        )
    });
    let path = tile_path(&served.key);
    // The same features both ways, a few hundred of them.
    let (ours, theirs) = rt.block_on(async {
        let ours = get(&mut uncached, &path).await;
        let (theirs,): (Vec<u8>,) = sqlx::query_as(ST_ASMVT)
            .bind(i32::from(SMALL.0))
            .bind(SMALL.1 as i32)
            .bind(SMALL.2 as i32)
            .fetch_one(&pool)
            .await
            .expect("ST_AsMVT");
        (ours, theirs)
    });
    let count = |bytes: &[u8]| {
        geostack::tiles::decode(bytes).expect("a tile").layers[0]
            .features
            .len()
    };
    let features = count(&ours);
    assert_eq!(features, count(&theirs));
    assert!((100..1000).contains(&features), "{features} features");

    let mut group = c.benchmark_group("tiles_small_tile");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("round_trip", |b| {
        b.to_async(&rt).iter(|| async {
            let one: i32 = sqlx::query_scalar("select 1")
                .fetch_one(&pool)
                .await
                .expect("select 1");
            black_box(one)
        });
    });
    group.bench_function("st_asmvt_query", |b| {
        b.to_async(&rt).iter(|| async {
            let (tile,): (Vec<u8>,) = sqlx::query_as(ST_ASMVT)
                .bind(i32::from(SMALL.0))
                .bind(SMALL.1 as i32)
                .bind(SMALL.2 as i32)
                .fetch_one(&pool)
                .await
                .expect("ST_AsMVT");
            black_box(tile)
        });
    });
    let sandbox = geostack::sql::Options::default().access(geostack::sql::Access::ReadOnly);
    group.bench_function("sandbox_session", |b| {
        b.to_async(&rt).iter(|| async {
            let session = geostack::sql::Session::begin(&pool, &sandbox)
                .await
                .expect("a session");
            session.end().await.expect("ended");
        });
    });
    group.bench_function("source_query", |b| {
        b.to_async(&rt).iter(|| async {
            let rows = sqlx::query(SOURCE_QUERY)
                .bind(bounds[0])
                .bind(bounds[1])
                .bind(bounds[2])
                .bind(bounds[3])
                .fetch_all(&pool)
                .await
                .expect("the rows");
            black_box(rows.len())
        });
    });
    group.bench_function("fill_in_process", |b| {
        b.to_async(&rt).iter(|| async {
            let mut builder = TileBuilder::new(coord, &options);
            let mut layer = builder.layer("tiles_points");
            source
                .fill(&pool, &geostack::sql::Options::default(), &mut layer)
                .await
                .expect("fill");
            layer.finish().expect("layer");
            black_box(builder.into_bytes().expect("tile"))
        });
    });
    for (name, send, url) in [
        ("http_uncached", uncached, path.clone()),
        ("http_cached", cached, path.clone()),
        ("http_floor", floor, "/health".to_owned()),
    ] {
        let send = std::sync::Arc::new(tokio::sync::Mutex::new(send));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let send = std::sync::Arc::clone(&send);
                let url = url.clone();
                async move { black_box(get(&mut *send.lock().await, &url).await) }
            });
        });
    }
    // The same answers in process, no socket: what the handlers themselves cost.
    let bare = bytes_router(ours.clone());
    for (name, router, url) in [
        ("router_cached", served.router.clone(), path.clone()),
        ("router_bare", bare, "/tile".to_owned()),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let mut router = router.clone();
                let request = axum::http::Request::get(&url)
                    .header("host", "127.0.0.1")
                    .body(axum::body::Body::empty())
                    .expect("a request");
                async move {
                    let response = tower_service::Service::call(&mut router, request)
                        .await
                        .expect("infallible");
                    assert_eq!(response.status(), 200);
                    black_box(response)
                }
            });
        });
    }
    group.finish();

    if !std::env::args().any(|a| a == "--bench") {
        // Smoke-run as a test: wrk answers with no refusal.
        assert!(wrk(&format!("http://{}{path}", served.cached), 1) > 0.0);
        return;
    }
    // The cached tile under load, its key checked and its rate limited on every request;
    // beside it, in the same rounds, the same bytes from a route that only returns them
    // behind the same edge (the HTTP floor for this answer) and, when given, Martin's.
    let bare = rt.block_on(serve_bytes(ours.clone()));
    let martin = std::env::var_os("GEOSTACK_MARTIN").map(|bin| Martin::start(&bin, &served.db));
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let round = [
            Some(wrk(&format!("http://{}{path}", served.cached), WRK_SECS)),
            Some(wrk(&format!("http://{bare}/tile"), WRK_SECS)),
            Some(wrk(&format!("http://{}/health", served.cached), WRK_SECS)),
            martin.as_ref().map(|m| wrk(&m.tile_url(), WRK_SECS)),
        ];
        eprintln!(
            "tiles_http: cached tile {:.0} requests/s; its bytes behind the edge alone {:.0}; /health {:.0}{}",
            round[0].unwrap_or_default(),
            round[1].unwrap_or_default(),
            round[2].unwrap_or_default(),
            round[3].map_or(String::new(), |m| format!("; Martin's cached tile {m:.0}"))
        );
        rounds.push(round);
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = rounds.iter().filter_map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let ours_rate = median(0).unwrap_or_default();
    eprintln!(
        "tiles_http: median cached tile rate {ours_rate:.0} requests/s ({} bytes, {features} features); \
         the same bytes behind the edge alone {:.0}; /health {:.0}",
        ours.len(),
        median(1).unwrap_or_default(),
        median(2).unwrap_or_default(),
    );
    if let Some(theirs) = median(3) {
        eprintln!(
            "tiles_http: median Martin cached tile rate {theirs:.0} requests/s: ours {:.2}x Martin's",
            ours_rate / theirs
        );
    }
}

/// A server answering `GET /tile` with `bytes` behind the composed server's edge (CORS,
/// CARTO's errors, the span and metrics), and nothing else: the floor for that answer.
async fn serve_bytes(bytes: Bytes) -> std::net::SocketAddr {
    let app = bytes_router(bytes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The routes of [`serve_bytes`].
fn bytes_router(bytes: Bytes) -> axum::Router {
    let route = axum::routing::get(move || {
        let bytes = bytes.clone();
        async move { bytes }
    });
    geostack::server::edge(
        axum::Router::new().route("/tile", route),
        &ServerConfig::default(),
    )
}

/// A Martin server on the bench's database, stopped when dropped.
struct Martin {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Martin {
    /// Starts `bin` on a free port serving every table of `db`, and waits until it serves
    /// `tiles_points`.
    fn start(bin: &std::ffi::OsStr, db: &TestDb) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = std::process::Command::new(bin)
            .arg("--listen-addresses")
            .arg(addr.to_string())
            .arg(db.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("Martin could not start ({e})"));
        let martin = Self { child, addr };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if martin.serves_tile() {
                return martin;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("Martin did not serve tiles_points within 30 s");
    }

    fn tile_url(&self) -> String {
        let (z, x, y) = SMALL;
        format!("http://{}/tiles_points/{z}/{x}/{y}", self.addr)
    }

    /// Whether Martin answers the small tile with 200 (one request, by hand).
    fn serves_tile(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(self.addr) else {
            return false;
        };
        let (z, x, y) = SMALL;
        let ask = format!(
            "GET /tiles_points/{z}/{x}/{y} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut head = [0; 12];
        s.write_all(ask.as_bytes()).is_ok()
            && s.read_exact(&mut head).is_ok()
            && head.ends_with(b"200")
    }
}

impl Drop for Martin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

criterion_group!(benches, small_tile);
criterion_main!(benches);
