//! The SQL API end to end: the point lookup of `sql_small` sent as `GET /api/v2/sql?q=…` to the
//! composed server over real TCP, by 16 callers on kept-alive HTTP/1.1 connections (anonymous,
//! through the user's `default_public` key, quotas raised so that none is refused), beside
//! pgbench running the same query on the same database with 16 connections, in the same run.
//! Criterion reports requests/s; with `--bench`, rounds side by side then give the SQL API's
//! rate as a ratio of pgbench's and its p50 latency.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops, saying why, when its setup fails"
)]

#[path = "support/small.rs"]
#[expect(dead_code, reason = "the table is made afresh here, never checked")]
mod small;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use geostack::auth::{Api, Grants, Privilege, Quota, UserName};
use geostack::server::{GuardedListener, KeyRequest, Peer, Server, ServerConfig};
use geostack_testkit::{TestDb, TestRedis};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;

/// The allocator the `geostack` binary serves with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SQL: &str = "SELECT id, cat, val, label, ts, geom FROM bench_small WHERE id = 4242";
const CALLERS: usize = 16;
/// Requests per measured batch, spread over the callers.
const BATCH: usize = 800;
/// Seconds each side runs in a side-by-side round.
const ROUND_SECS: u64 = 4;
const ROUNDS: usize = 3;

/// The served database, Redis and server; dropped at the end.
struct Served {
    db: TestDb,
    _redis: TestRedis,
    addr: std::net::SocketAddr,
}

async fn serve() -> Served {
    let db = TestDb::new().await;
    sqlx::raw_sql(small::SETUP)
        .execute(db.pool())
        .await
        .expect("the bench table");
    let redis = TestRedis::new().await;
    let lots = Quota::new(1_000_000, 1_000_000, Duration::from_secs(1)).expect("a quota");
    let config = ServerConfig::default()
        .default_user("bench")
        .key_prefix(geostack::auth::KeyPrefix::new(redis.prefix()).expect("a key prefix"))
        .redis_prefix(redis.prefix())
        .role_prefix("gs_test_role_bench_")
        .sql_quota(lots)
        .anonymous_quotas(lots, lots)
        .max_running_per_caller(CALLERS as u32)
        .pools(sqlpass_pools());
    let server = Server::new(
        redis.connection(),
        redis.client().clone(),
        db.connect_options(),
        config,
    )
    .await;
    let grants = Grants::new().api(Api::Sql).table(
        "public.bench_small".parse().expect("a table name"),
        [Privilege::Select],
    );
    server
        .auth()
        .create_key(
            &UserName::new("bench").expect("a user name"),
            KeyRequest::DefaultPublic,
            grants,
        )
        .await
        .expect("the default_public key");
    let listener = GuardedListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = axum::serve::Listener::local_addr(&listener).expect("its address");
    let app = server
        .router()
        .into_make_service_with_connect_info::<Peer>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Served {
        db,
        _redis: redis,
        addr,
    }
}

fn sqlpass_pools() -> geostack::sql::RegistryConfig {
    geostack::sql::RegistryConfig::default().per_role(CALLERS as u32)
}

/// One kept-alive connection's sender.
async fn connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
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

/// `n` requests on `send`, each one's latency.
async fn requests(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
    n: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
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
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        black_box(body);
        latencies.push(started.elapsed());
    }
    latencies
}

fn path() -> String {
    let q: String = form_urlencoded::byte_serialize(SQL.as_bytes()).collect();
    format!("/api/v2/sql?q={q}")
}

/// `BATCH` requests over `CALLERS` connections; each request's latency.
async fn batch(
    senders: &mut [hyper::client::conn::http1::SendRequest<Empty<Bytes>>],
) -> Vec<Duration> {
    let path = path();
    let per = BATCH / senders.len();
    let runs = senders.iter_mut().map(|send| requests(send, &path, per));
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// pgbench on the same query and database, `CALLERS` connections, prepared: its rate.
fn pgbench(db: &TestDb, secs: u64) -> f64 {
    small::pgbench(
        &db.connect_options(),
        db.name(),
        "prepared",
        &format!("{SQL};\n"),
        CALLERS,
        secs,
    )
}

fn http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let served = rt.block_on(serve());
    let mut senders = rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..CALLERS {
            senders.push(connect(served.addr).await);
        }
        senders
    });

    let mut group = c.benchmark_group("sql_http_16_connections");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH as u64));
    let shared = std::sync::Arc::new(tokio::sync::Mutex::new(std::mem::take(&mut senders)));
    group.bench_function("sql_api", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let shared = std::sync::Arc::clone(&shared);
            async move {
                let mut senders = shared.lock().await;
                let started = Instant::now();
                for _ in 0..iters {
                    batch(&mut senders).await;
                }
                started.elapsed()
            }
        });
    });
    group.finish();
    let mut senders = std::mem::take(&mut *shared.blocking_lock());

    if !std::env::args().any(|a| a == "--bench") {
        // Smoke-run as a test: pgbench answers on the same database.
        assert!(pgbench(&served.db, 1) > 0.0);
        return;
    }
    let mut ratios = Vec::new();
    let mut p50s = Vec::new();
    for _ in 0..ROUNDS {
        let base = pgbench(&served.db, ROUND_SECS);
        let started = Instant::now();
        let mut latencies = Vec::new();
        let mut done = 0;
        while started.elapsed() < Duration::from_secs(ROUND_SECS) {
            latencies.extend(rt.block_on(batch(&mut senders)));
            done += BATCH;
        }
        let rate = done as f64 / started.elapsed().as_secs_f64();
        latencies.sort();
        let p50 = latencies[latencies.len() / 2].as_secs_f64() * 1e3;
        eprintln!(
            "sql_http: pgbench {base:.0} tps, SQL API {rate:.0} requests/s ({:.3}x), p50 {p50:.2} ms",
            rate / base
        );
        ratios.push(rate / base);
        p50s.push(p50);
    }
    ratios.sort_by(f64::total_cmp);
    p50s.sort_by(f64::total_cmp);
    eprintln!(
        "sql_http: median SQL API rate {:.3}x pgbench's, p50 {:.2} ms",
        ratios[ROUNDS / 2],
        p50s[ROUNDS / 2]
    );
}

criterion_group!(benches, http);
criterion_main!(benches);
