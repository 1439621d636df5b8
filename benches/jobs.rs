//! geostack-jobs against a `redis-server` of the bench's own (so `INFO commandstats` counts
//! only this run): enqueue one job and 100 in bulk; process 5 000 no-op jobs at concurrency 1,
//! 8 and 32; and, as the baseline, the same jobs as a raw `LPUSH` + `BRPOP` loop with as many
//! consumers. After the timings it prints, read from `INFO commandstats`, the Redis round trips
//! per processed job in steady state and what Redis spent its time on.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops, saying why, when its setup fails"
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use geostack::jobs::{
    Handler, Job, JobContext, JobError, JobOptions, Queue, QueueName, Worker, WorkerConfig,
};
use geostack_testkit::RedisServer;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;

/// Jobs per processing run.
const JOBS: usize = 5_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Noop {
    n: u32,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
}

/// Counts the jobs it ran and wakes the bench when the run's last one is done.
#[derive(Clone)]
struct Counter {
    done: Arc<AtomicUsize>,
    target: Arc<AtomicUsize>,
    all: Arc<Notify>,
}

#[async_trait::async_trait]
impl Handler<Noop> for Counter {
    async fn handle(&self, _: Noop, _: JobContext) -> Result<serde_json::Value, JobError> {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target.load(Ordering::Acquire) {
            self.all.notify_one();
        }
        Ok(serde_json::Value::Null)
    }
}

struct Setup {
    rt: tokio::runtime::Runtime,
    _server: RedisServer,
    client: redis::Client,
    conn: ConnectionManager,
}

fn setup() -> Setup {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let client = redis::Client::open(server.url()).expect("a valid URL");
    // Bulk pipelines of 2 000 scripts outlast the default half-second response timeout.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)));
    let conn = rt
        .block_on(ConnectionManager::new_with_config(client.clone(), config))
        .unwrap_or_else(|e| panic!("the bench's redis-server is unreachable ({e})"));
    Setup {
        rt,
        _server: server,
        client,
        conn,
    }
}

fn jobs(n: usize) -> Vec<Noop> {
    (0..n as u32).map(|n| Noop { n }).collect()
}

/// A command's calls and microseconds so far.
#[derive(Clone, Copy, Default)]
struct Stat {
    calls: u64,
    usec: u64,
}

/// Per command name, its stats so far (`INFO commandstats`, which also counts the commands
/// scripts run; a script's time includes theirs).
async fn command_stats(conn: &mut ConnectionManager) -> HashMap<String, Stat> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let field = |key: &str| {
                rest.split(',')
                    .find_map(|f| f.strip_prefix(key))?
                    .parse()
                    .ok()
            };
            let stat = Stat {
                calls: field("calls=")?,
                usec: field("usec=")?,
            };
            Some((name.to_owned(), stat))
        })
        .collect()
}

/// The commands this client sends itself (commandstats also counts those a script runs).
const TOP_LEVEL: [&str; 4] = ["fcall", "fcall_ro", "blpop", "ping"];

fn enqueue(c: &mut Criterion) {
    let s = setup();
    let queue = Queue::with_prefix(
        s.conn.clone(),
        QueueName::new("enqueue").expect("a name"),
        "bench:",
    );
    let mut group = c.benchmark_group("jobs_enqueue");
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.to_async(&s.rt).iter(|| async {
            black_box(
                queue
                    .enqueue(&Noop { n: 1 }, JobOptions::default())
                    .await
                    .expect("enqueue"),
            )
        });
    });
    let batch = jobs(100);
    group.throughput(Throughput::Elements(100));
    group.bench_function("bulk_100", |b| {
        b.to_async(&s.rt).iter(|| async {
            black_box(
                queue
                    .enqueue_bulk(&batch, JobOptions::default())
                    .await
                    .expect("enqueue"),
            )
        });
    });
    group.finish();
}

/// Processes `JOBS` queued jobs with a worker of `concurrency` slots; returns the time from
/// the worker's start to the last job done.
async fn process_run(s: &Setup, queue: &Queue, concurrency: usize) -> Duration {
    fill(queue).await;
    drain(s, queue, concurrency).await
}

/// Enqueues `JOBS` jobs.
async fn fill(queue: &Queue) {
    queue
        .enqueue_bulk(&jobs(JOBS), JobOptions::default())
        .await
        .expect("enqueue");
}

/// Runs a worker until the `JOBS` queued jobs are done; returns the time that took.
async fn drain(s: &Setup, queue: &Queue, concurrency: usize) -> Duration {
    let counter = Counter {
        done: Arc::new(AtomicUsize::new(0)),
        target: Arc::new(AtomicUsize::new(JOBS)),
        all: Arc::new(Notify::new()),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        queue.clone(),
        s.client.clone(),
        WorkerConfig::default().concurrency(concurrency),
    )
    .handle::<Noop, _>(counter.clone());
    let all = counter.all.notified();
    tokio::pin!(all);
    all.as_mut().enable();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    all.await;
    let took = started.elapsed();
    let _ = stop.send(());
    running.await.expect("the worker task").expect("the worker");
    took
}

/// `JOBS` payloads pushed in one pipeline, popped by `consumers` connections with `BRPOP`.
async fn raw_run(s: &Setup, consumers: usize) -> Duration {
    let key = "bench:raw";
    let mut pipe = redis::pipe();
    for job in jobs(JOBS) {
        pipe.lpush(key, serde_json::to_string(&job).expect("json"))
            .ignore();
    }
    let _: () = pipe.query_async(&mut s.conn.clone()).await.expect("LPUSH");
    let left = Arc::new(AtomicUsize::new(JOBS));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut conn = s
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("a connection");
        let left = Arc::clone(&left);
        tasks.push(tokio::spawn(async move {
            while left.load(Ordering::Acquire) > 0 {
                let popped: Option<(String, String)> = redis::cmd("BRPOP")
                    .arg(key)
                    .arg(0.05)
                    .query_async(&mut conn)
                    .await
                    .expect("BRPOP");
                if let Some((_, payload)) = popped {
                    black_box(serde_json::from_str::<Noop>(&payload).expect("json"));
                    left.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a consumer");
    }
    started.elapsed()
}

fn process(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group("jobs_process");
    group.throughput(Throughput::Elements(JOBS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for concurrency in [1usize, 8, 32] {
        let queue = Queue::with_prefix(
            s.conn.clone(),
            QueueName::new(format!("noop{concurrency}")).expect("a name"),
            "bench:",
        );
        group.bench_function(format!("queue_c{concurrency}"), |b| {
            b.to_async(&s.rt).iter_custom(|iters| {
                let queue = queue.clone();
                let s = &s;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += process_run(s, &queue, concurrency).await;
                    }
                    total
                }
            });
        });
        group.bench_function(format!("raw_lpush_brpop_c{concurrency}"), |b| {
            b.to_async(&s.rt).iter_custom(|iters| {
                let s = &s;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += raw_run(s, concurrency).await;
                    }
                    total
                }
            });
        });
    }
    group.finish();

    // Round trips per job in steady state: the top-level commands of one more run each at
    // concurrency 1, 8 and 32, counted after the jobs are enqueued, per job; with the commands
    // the scripts ran and where Redis spent its time. Only when benchmarking (`cargo bench`
    // passes --bench), not when a test runner lists or smoke-runs the benchmarks.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for concurrency in [1, 8, 32] {
        let queue = Queue::with_prefix(
            s.conn.clone(),
            QueueName::new(format!("trips{concurrency}")).expect("a name"),
            "bench:",
        );
        let (per_job, inside) = s.rt.block_on(async {
            let mut conn = s.conn.clone();
            fill(&queue).await;
            let before = command_stats(&mut conn).await;
            drain(&s, &queue, concurrency).await;
            let after = command_stats(&mut conn).await;
            let delta = |name: &str| {
                let (a, b) = (
                    after.get(name).copied().unwrap_or_default(),
                    before.get(name).copied().unwrap_or_default(),
                );
                Stat {
                    calls: a.calls - b.calls,
                    usec: a.usec - b.usec,
                }
            };
            // Where Redis spent its time: the costliest commands per job.
            let mut spent: Vec<(&str, u64)> = after
                .keys()
                .map(|c| (c.as_str(), delta(c).usec))
                .filter(|(_, u)| *u > 0)
                .collect();
            spent.sort_by_key(|(_, u)| std::cmp::Reverse(*u));
            let spent: Vec<String> = spent
                .iter()
                .take(12)
                .map(|(c, u)| format!("{c}={:.2}", *u as f64 / JOBS as f64))
                .collect();
            eprintln!(
                "jobs: Redis µs per job by command at concurrency {concurrency}: {}",
                spent.join(" ")
            );
            let top: u64 = TOP_LEVEL.iter().map(|c| delta(c).calls).sum::<u64>()
                + delta("function|load").calls;
            let all: u64 = after.keys().map(|c| delta(c).calls).sum();
            let lines: Vec<String> = TOP_LEVEL
                .iter()
                .map(|c| format!("{c}={}", delta(c).calls))
                .collect();
            eprintln!(
                "jobs: commands during a run of {JOBS} jobs at concurrency {concurrency}: {}",
                lines.join(" ")
            );
            (top as f64 / JOBS as f64, (all - top) as f64 / JOBS as f64)
        });
        eprintln!(
            "jobs: concurrency {concurrency}: {per_job:.2} Redis round trips per processed job \
             (goal <= 2); {inside:.1} commands run by scripts per job"
        );
    }
}

criterion_group!(benches, enqueue, process);
criterion_main!(benches);
