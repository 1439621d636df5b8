//! geoauth on the request path, against the Redis at `REDIS_URL` (default local): verify
//! cached and uncached, one raw `HGETALL` round trip as the baseline for uncached verification,
//! and one rate-limit check. Also prints the cached verification's p50/p99 latency, which
//! criterion's summary does not show.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops, saying why, when its setup fails"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use geostack::auth::{
    CredentialSource, Credentials, DbRole, KeyPrefix, KeyStore, NewKey, Quota, RateLimiter,
    RateSubject, Secret, UserName, Verifier, VerifierConfig,
};

struct Setup {
    rt: tokio::runtime::Runtime,
    conn: redis::aio::ConnectionManager,
    store: KeyStore,
    cached: Verifier<KeyStore>,
    uncached: Verifier<KeyStore>,
    user: UserName,
    credentials: Credentials,
    record: String,
}

fn setup() -> Setup {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let prefix = KeyPrefix::new("bench:auth:").expect("a valid prefix");
    let (conn, store, cached, uncached, credentials, user, record) = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).expect("a valid REDIS_URL");
        let conn = redis::aio::ConnectionManager::new(client.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("Redis at {url} is unreachable ({e}): run scripts/services")
            });
        let store = KeyStore::with_prefix(conn.clone(), prefix.clone());
        let user = UserName::new("bench").expect("a valid user");
        let (_, token) = store
            .create(
                &user,
                NewKey::master(DbRole::new("bench", Secret::new("pw"))),
            )
            .await
            .expect("a key");
        let record = format!("bench:auth:{{bench}}:key:{}", token.digest().to_hex());
        let credentials = Credentials::token(token, CredentialSource::Bearer);
        let cached = Verifier::with_cache(store.clone(), client, VerifierConfig::default()).await;
        let uncached = Verifier::new(store.clone(), VerifierConfig::default());
        (conn, store, cached, uncached, credentials, user, record)
    });
    Setup {
        rt,
        conn,
        store,
        cached,
        uncached,
        user,
        credentials,
        record,
    }
}

fn verify(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group("auth");
    group.measurement_time(Duration::from_secs(5));

    group.bench_function("verify_cached", |b| {
        b.to_async(&s.rt)
            .iter(|| async { black_box(s.cached.verify(&s.user, &s.credentials).await.is_ok()) });
    });
    group.bench_function("verify_uncached", |b| {
        b.to_async(&s.rt)
            .iter(|| async { black_box(s.uncached.verify(&s.user, &s.credentials).await.is_ok()) });
    });
    group.bench_function("raw_hgetall_round_trip", |b| {
        b.to_async(&s.rt).iter(|| async {
            let mut conn = s.conn.clone();
            let fields: Vec<String> = redis::cmd("HGETALL")
                .arg(&s.record)
                .query_async(&mut conn)
                .await
                .expect("HGETALL");
            black_box(fields.len())
        });
    });
    let limiter = RateLimiter::with_prefix(
        s.conn.clone(),
        KeyPrefix::new("bench:auth:").expect("prefix"),
    );
    let subject = RateSubject::user(&s.user, "sql").expect("a subject");
    let quota = Quota::new(1_000_000, 1_000_000, Duration::from_secs(1)).expect("a quota");
    group.bench_function("rate_limit_check", |b| {
        b.to_async(&s.rt)
            .iter(|| async { black_box(limiter.check(&subject, quota).await.is_ok()) });
    });
    group.finish();

    // Latency percentiles of the cached path, each call timed alone: only under `cargo bench`
    // (not when a test runner lists or smoke-runs the benchmarks).
    if std::env::args().any(|a| a == "--bench") {
        latency_percentiles(&s);
    }
    s.rt.block_on(async {
        for key in s.store.list(&s.user).await.unwrap_or_default() {
            let _ = s.store.revoke(&s.user, &key.id).await;
        }
    });
}

fn latency_percentiles(s: &Setup) {
    let mut samples: Vec<Duration> = s.rt.block_on(async {
        let mut out = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            let start = Instant::now();
            black_box(s.cached.verify(&s.user, &s.credentials).await.is_ok());
            out.push(start.elapsed());
        }
        out
    });
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "auth/verify_cached latency over {} calls: p50 {:?}, p99 {:?}, p99.9 {:?}",
        samples.len(),
        at(0.50),
        at(0.99),
        at(0.999)
    );
}

criterion_group!(benches, verify);
criterion_main!(benches);
