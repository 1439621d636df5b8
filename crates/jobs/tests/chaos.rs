//! kill -9 chaos: worker processes are killed repeatedly mid-job and replaced; every job must
//! complete at least once, none lost. Reports lost (must be 0), duplicates, and the median time
//! from a worker's death to its job starting again.
//!
//! A test with its own main: `--list` names it to test runners, `--worker` turns the process
//! into a worker (it re-executes itself for that), anything else runs the scenario.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "a test fails by panicking and reports on stdout"
)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use geostack_jobs::{
    Handler, Job, JobContext, JobError, JobOptions, JobState, Queue, QueueName, Worker,
    WorkerConfig,
};
use geostack_testkit::TestRedis;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

const JOBS: u32 = 300;

#[derive(Serialize, Deserialize)]
struct Work {
    n: u32,
}

impl Job for Work {
    const NAME: &'static str = "work";
}

struct Counter {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

#[async_trait]
impl Handler<Work> for Counter {
    async fn handle(&self, job: Work, _ctx: JobContext) -> Result<serde_json::Value, JobError> {
        // Work for 20 to 80 ms, then count the execution.
        tokio::time::sleep(Duration::from_millis(20 + u64::from(job.n * 7919 % 61))).await;
        let _: i64 = self
            .conn
            .clone()
            .incr(format!("{}runs:{}", self.prefix, job.n), 1)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        Ok(serde_json::json!(job.n))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("kill_9_chaos_loses_no_job: test");
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if args.iter().any(|a| a == "--worker") {
        rt.block_on(worker());
        return;
    }
    rt.block_on(scenario());
}

async fn worker() {
    // A worker never outlives the test that started it.
    let parent = std::os::unix::process::parent_id();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        }
    });
    let url = std::env::var("CHAOS_REDIS_URL").unwrap();
    let prefix = std::env::var("CHAOS_PREFIX").unwrap();
    let client = redis::Client::open(url).unwrap();
    let conn = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let queue = Queue::with_prefix(conn.clone(), QueueName::new("chaos").unwrap(), &prefix);
    // The default lease (30 s) and heartbeat (1 s): a dead worker is found by its silence.
    let config = WorkerConfig::default().concurrency(4).max_stalls(1000);
    let worker = Worker::new(queue, client, config).handle::<Work, _>(Counter { conn, prefix });
    worker.run(std::future::pending()).await.unwrap();
}

/// The worker processes; killed when dropped, even when the scenario panics.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn spawn_worker(url: &str, prefix: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .arg("--worker")
        .env("CHAOS_REDIS_URL", url)
        .env("CHAOS_PREFIX", prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a worker process")
}

async fn scenario() {
    let redis = TestRedis::new().await;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = redis.prefix().to_owned();
    let queue = Queue::with_prefix(
        redis.connection(),
        QueueName::new("chaos").unwrap(),
        &prefix,
    );
    let jobs: Vec<Work> = (0..JOBS).map(|n| Work { n }).collect();
    let ids = queue
        .enqueue_bulk(&jobs, JobOptions::default().attempts(50))
        .await
        .unwrap();
    let mut conn = redis.connection();
    let job_key = |id: &geostack_jobs::JobId| format!("{}{{chaos}}:job:{}", prefix, id.as_str());

    let mut workers = Workers((0..3).map(|_| spawn_worker(&url, &prefix)).collect());
    let started = Instant::now();
    let mut kills = 0;
    // (kill time in ms since the epoch, the jobs the killed worker held)
    let mut killed: Vec<(u64, Vec<String>)> = Vec::new();
    let mut round = 0usize;
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let victim = round % workers.0.len();
        round += 1;
        let pid = workers.0[victim].id();
        // The jobs it holds right now: active, with its pid in the worker id.
        let active: Vec<String> = conn
            .zrange(format!("{prefix}{{chaos}}:active"), 0, -1)
            .await
            .unwrap();
        let mut held = Vec::new();
        for id in active {
            let w: Option<String> = conn
                .hget(format!("{prefix}{{chaos}}:job:{id}"), "worker")
                .await
                .unwrap();
            if w.is_some_and(|w| w.starts_with(&format!("{pid}-"))) {
                held.push(id);
            }
        }
        workers.0[victim].kill().expect("SIGKILL");
        let _ = workers.0[victim].wait();
        let at = now_ms();
        kills += 1;
        if !held.is_empty() {
            killed.push((at, held));
        }
        workers.0[victim] = spawn_worker(&url, &prefix);
    }

    // Let the survivors finish, watching when the killed workers' jobs start again.
    let mut restarts: Vec<u64> = Vec::new();
    let mut pending: Vec<(u64, String)> = killed
        .iter()
        .flat_map(|(at, ids)| ids.iter().map(move |id| (*at, id.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut still = Vec::new();
        for (at, id) in pending {
            let (state, started): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(format!("{prefix}{{chaos}}:job:{id}"))
                .arg("state")
                .arg("started")
                .query_async(&mut conn)
                .await
                .unwrap();
            match started.and_then(|s| s.parse::<u64>().ok()) {
                Some(started) if started > at => restarts.push(started - at),
                // Finished between the look and the kill: it was not interrupted.
                Some(_) if state.as_deref() == Some("completed") => {}
                _ => still.push((at, id)),
            }
        }
        pending = still;
        let counts = queue.counts().await.unwrap();
        if counts.completed == u64::from(JOBS) && pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for (at, id) in &pending {
                let fields: std::collections::HashMap<String, String> = conn
                    .hgetall(format!("{prefix}{{chaos}}:job:{id}"))
                    .await
                    .unwrap();
                println!("chaos: unseen restart of {id} killed at {at}: {fields:?}");
            }
            println!(
                "chaos: not done in 20 s: {counts:?}, {} restarts unseen",
                pending.len()
            );
            panic!(
                "not done in 20 s: {counts:?}, {} restarts unseen",
                pending.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(workers);

    let mut lost = 0;
    let mut duplicates = 0;
    for (n, id) in ids.iter().enumerate() {
        let state = queue.status(id).await.unwrap().map(|s| s.state);
        let runs: i64 = conn.get(format!("{prefix}runs:{n}")).await.unwrap_or(0);
        if state != Some(JobState::Completed) || runs < 1 {
            lost += 1;
        }
        duplicates += (runs - 1).max(0);
        let _ = job_key(id);
    }
    restarts.sort_unstable();
    let median = restarts.get(restarts.len() / 2).copied();
    println!(
        "chaos: {JOBS} jobs, {kills} kills, lost {lost}, duplicates {duplicates}, \
         death to restart median {median:?} ms over {} interrupted jobs (max {:?} ms)",
        restarts.len(),
        restarts.last()
    );
    assert_eq!(lost, 0, "jobs lost");
    assert!(kills >= 10, "only {kills} kills");
    assert!(
        !restarts.is_empty(),
        "no job was interrupted: the chaos did not bite"
    );
    assert!(
        median.unwrap() <= 5000,
        "median death to restart {median:?} ms"
    );
    println!("1 passed, 0 failed");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
