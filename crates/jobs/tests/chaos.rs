//! Faults only real processes show: worker processes killed with SIGKILL again and again (the
//! chaos run and a kill storm), a poison job that kills every worker taking it, and workers whose
//! clock is ten seconds off (run under libfaketime).
//!
//! A test binary with its own main: `--list` names its tests to test runners, a test's name runs
//! it (no name: all of them), `--worker` turns the process into a worker (the tests re-execute
//! this binary for that, configured through the environment).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "a test fails by panicking and reports on stdout"
)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use geostack_jobs::{
    Handler, Job, JobContext, JobError, JobId, JobOptions, JobState, Queue, QueueName, Worker,
    WorkerConfig,
};
use geostack_testkit::TestRedis;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

const TESTS: [&str; 4] = [
    "kill_9_chaos_loses_no_job",
    "a_kill_storm_loses_nothing_and_dead_letters_nothing",
    "a_poison_job_is_dead_lettered_after_a_bounded_number_of_deaths",
    "a_worker_whose_clock_is_ten_seconds_off_neither_steals_nor_keeps_jobs",
];

#[derive(Serialize, Deserialize)]
struct Work {
    n: u32,
    /// How long it works.
    ms: u64,
    /// Kills its worker process instead.
    poison: bool,
}

impl Job for Work {
    const NAME: &'static str = "work";
}

fn work(n: u32, ms: u64) -> Work {
    Work {
        n,
        ms,
        poison: false,
    }
}

struct Counter {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

#[async_trait]
impl Handler<Work> for Counter {
    async fn handle(&self, job: Work, _ctx: JobContext) -> Result<serde_json::Value, JobError> {
        if job.poison {
            std::process::abort();
        }
        tokio::time::sleep(Duration::from_millis(job.ms)).await;
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            for test in TESTS {
                println!("{test}: test");
            }
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
    let exact = args.iter().any(|a| a == "--exact");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let chosen: Vec<&str> = TESTS
        .into_iter()
        .filter(|t| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        *t == f.as_str()
                    } else {
                        t.contains(f.as_str())
                    }
                })
        })
        .collect();
    for test in &chosen {
        println!("test {test} ...");
        rt.block_on(async {
            match *test {
                "kill_9_chaos_loses_no_job" => chaos().await,
                "a_kill_storm_loses_nothing_and_dead_letters_nothing" => storm().await,
                "a_poison_job_is_dead_lettered_after_a_bounded_number_of_deaths" => poison().await,
                _ => skewed_clocks().await,
            }
        });
        println!("test {test} ... ok");
    }
    println!("{} passed, 0 failed", chosen.len());
}

/// A worker process: its queue, prefix and settings from the environment.
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
    let env = |name: &str| std::env::var(name).unwrap();
    let ms = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| Duration::from_millis(v.parse().unwrap()))
    };
    let prefix = env("CHAOS_PREFIX");
    let client = redis::Client::open(env("CHAOS_REDIS_URL")).unwrap();
    let conn = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    // What this process believes the time is: the clock tests check it is off as meant.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let _: () = conn
        .clone()
        .set(format!("{prefix}clock:{}", std::process::id()), now)
        .await
        .unwrap();
    let queue = Queue::with_prefix(
        conn.clone(),
        QueueName::new(env("CHAOS_QUEUE")).unwrap(),
        &prefix,
    );
    let mut config = WorkerConfig::default().concurrency(env("CHAOS_CONCURRENCY").parse().unwrap());
    if let Some(d) = ms("CHAOS_HEARTBEAT_MS") {
        config = config.heartbeat(d);
    }
    if let Some(d) = ms("CHAOS_LEASE_MS") {
        config = config.lease(d);
    }
    if let Ok(n) = std::env::var("CHAOS_MAX_STALLS") {
        config = config.max_stalls(n.parse().unwrap());
    }
    let worker = Worker::new(queue, client, config).handle::<Work, _>(Counter { conn, prefix });
    worker.run(std::future::pending()).await.unwrap();
}

/// How the tests start worker processes.
#[derive(Clone)]
struct Spawn {
    url: String,
    prefix: String,
    queue: &'static str,
    concurrency: usize,
    env: Vec<(&'static str, String)>,
    /// The clock offset it runs with (libfaketime's syntax, `-10s`), if any.
    clock: Option<&'static str>,
}

impl Spawn {
    fn new(redis: &TestRedis, queue: &'static str, concurrency: usize) -> Self {
        Self {
            url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: redis.prefix().to_owned(),
            queue,
            concurrency,
            env: Vec::new(),
            clock: None,
        }
    }

    fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.env.push((name, value.to_string()));
        self
    }

    fn clock(mut self, offset: &'static str) -> Self {
        self.clock = Some(offset);
        self
    }

    fn start(&self) -> Child {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .arg("--worker")
            .env("CHAOS_REDIS_URL", &self.url)
            .env("CHAOS_PREFIX", &self.prefix)
            .env("CHAOS_QUEUE", self.queue)
            .env("CHAOS_CONCURRENCY", self.concurrency.to_string())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(offset) = self.clock {
            let lib = std::env::var("GEOSTACK_LIBFAKETIME").unwrap_or_else(|_| {
                panic!("GEOSTACK_LIBFAKETIME is not set: run `scripts/services` (it installs libfaketime) and use its environment")
            });
            assert!(
                std::path::Path::new(&lib).exists(),
                "{lib} is missing: run scripts/services"
            );
            // Only the wall clock is off; the monotonic clock the runtime's timers use is not.
            command
                .env("LD_PRELOAD", lib)
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_DONT_RESET", "1");
        }
        command.spawn().expect("spawn a worker process")
    }
}

/// The worker processes; killed when dropped, even when the test panics.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn queue_of(redis: &TestRedis, name: &str) -> Queue {
    Queue::with_prefix(
        redis.connection(),
        QueueName::new(name).unwrap(),
        redis.prefix(),
    )
}

/// How many times each of `n` jobs ran to its end.
async fn runs(redis: &TestRedis, n: u32) -> Vec<i64> {
    let mut conn = redis.connection();
    let mut out = Vec::new();
    for i in 0..n {
        let runs: Option<i64> = conn
            .get(format!("{}runs:{i}", redis.prefix()))
            .await
            .unwrap();
        out.push(runs.unwrap_or(0));
    }
    out
}

/// The job's state, start (ms since the epoch) and worker, as its status gives them.
async fn job_fields(redis: &TestRedis, queue: &str, id: &str) -> HashMap<String, String> {
    let q = queue_of(redis, queue);
    let Some(s) = q.status(&JobId::new(id).unwrap()).await.unwrap() else {
        return HashMap::new();
    };
    let mut f = HashMap::new();
    f.insert("state".to_owned(), format!("{:?}", s.state).to_lowercase());
    if let Some(started) = s.started {
        let ms = started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        f.insert("started".to_owned(), ms.to_string());
    }
    if let Some(w) = s.worker {
        f.insert("worker".to_owned(), w);
    }
    f
}

/// Kill -9 chaos: three workers (concurrency 4, the default lease and heartbeat), one of them
/// killed every 400 ms for 6 s and replaced; every job must complete, none lost. Reports
/// duplicates and the median time from a worker's death to its job starting again.
async fn chaos() {
    const JOBS: u32 = 300;
    let redis = TestRedis::new().await;
    let queue = queue_of(&redis, "chaos");
    let jobs: Vec<Work> = (0..JOBS)
        .map(|n| work(n, 20 + u64::from(n * 7919 % 61)))
        .collect();
    let ids = queue
        .enqueue_bulk(&jobs, JobOptions::default().attempts(50))
        .await
        .unwrap();
    let spawn = Spawn::new(&redis, "chaos", 4).with("CHAOS_MAX_STALLS", 1000);
    let mut conn = redis.connection();
    let prefix = redis.prefix().to_owned();

    let mut workers = Workers((0..3).map(|_| spawn.start()).collect());
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
            let w = job_fields(&redis, "chaos", &id).await.remove("worker");
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
        workers.0[victim] = spawn.start();
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
            let f = job_fields(&redis, "chaos", &id).await;
            match f.get("started").and_then(|s| s.parse::<u64>().ok()) {
                Some(started) if started > at => restarts.push(started - at),
                // Finished between the look and the kill: it was not interrupted.
                Some(_) if f.get("state").map(String::as_str) == Some("completed") => {}
                _ => still.push((at, id)),
            }
        }
        pending = still;
        let counts = queue.counts().await.unwrap();
        if counts.completed == u64::from(JOBS) && pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not done in 20 s: {counts:?}, {} restarts unseen",
            pending.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(workers);

    let runs = runs(&redis, JOBS).await;
    let mut lost = 0;
    for (n, id) in ids.iter().enumerate() {
        let state = queue.status(id).await.unwrap().map(|s| s.state);
        if state != Some(JobState::Completed) || runs[n] < 1 {
            lost += 1;
        }
    }
    let duplicates: i64 = runs.iter().map(|r| (r - 1).max(0)).sum();
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
}

/// A kill storm with the default settings: two workers of concurrency 8, one of them killed
/// every 300 ms and replaced, 200 ms jobs, until every job has ended. Nothing is lost and
/// nothing goes to the dead letter: the jobs that died with a worker share the blame for it.
async fn storm() {
    let jobs: u32 = std::env::var("CHAOS_STORM_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(600);
    let redis = TestRedis::new().await;
    let queue = queue_of(&redis, "storm");
    let batch: Vec<Work> = (0..jobs).map(|n| work(n, 200)).collect();
    let ids = queue
        .enqueue_bulk(&batch, JobOptions::default())
        .await
        .unwrap();
    let spawn = Spawn::new(&redis, "storm", 8);
    let mut workers = Workers((0..2).map(|_| spawn.start()).collect());
    let started = Instant::now();
    let mut kills = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Every job is in exactly one state set: none waiting, delayed or active means all
        // ended (the completed set itself keeps only the last 1000).
        let counts = queue.counts().await.unwrap();
        if counts.waiting + counts.delayed + counts.active == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the storm did not end in 240 s: {counts:?} after {kills} kills"
        );
        let victim = kills % 2;
        workers.0[victim].kill().expect("SIGKILL");
        let _ = workers.0[victim].wait();
        workers.0[victim] = spawn.start();
        kills += 1;
    }
    let took = started.elapsed();
    drop(workers);
    let runs = runs(&redis, jobs).await;
    let mut dead = Vec::new();
    let mut stalls = Vec::new();
    for id in &ids {
        // A completed job beyond the last 1000 is gone: its run count tells it completed.
        let Some(s) = queue.status(id).await.unwrap() else {
            continue;
        };
        if s.state != JobState::Completed {
            dead.push((id.clone(), s.error.clone()));
        }
        stalls.push(s.stalls);
    }
    let interrupted = stalls.iter().filter(|s| **s > 0).count();
    let duplicates: i64 = runs.iter().map(|r| (r - 1).max(0)).sum();
    println!(
        "storm: {jobs} jobs in {took:?}, {kills} kills, {interrupted} jobs interrupted (at most \
         {} times), {duplicates} duplicate runs, {} dead",
        stalls.iter().max().unwrap_or(&0),
        dead.len()
    );
    assert!(kills >= 20, "only {kills} kills: the storm did not rage");
    assert!(interrupted > 0, "no job was interrupted");
    assert!(dead.is_empty(), "dead-lettered by the storm: {dead:?}");
    assert!(runs.iter().all(|r| *r >= 1), "a job never completed");
}

/// A job that kills every worker taking it, among ordinary ones, with the default stall
/// bound: it goes to the dead letter after at most (max_stalls + 1) × concurrency deaths; the
/// ordinary jobs complete.
async fn poison() {
    const JOBS: u32 = 30;
    const CONCURRENCY: usize = 4;
    let redis = TestRedis::new().await;
    let queue = queue_of(&redis, "poison");
    let batch: Vec<Work> = (0..JOBS).map(|n| work(n, 100)).collect();
    let ordinary = queue
        .enqueue_bulk(&batch, JobOptions::default())
        .await
        .unwrap();
    let pill = queue
        .enqueue(
            &Work {
                n: JOBS,
                ms: 0,
                poison: true,
            },
            JobOptions::default(),
        )
        .await
        .unwrap();
    // Heartbeats of 200 ms: a death is found in well under a second.
    let spawn = Spawn::new(&redis, "poison", CONCURRENCY).with("CHAOS_HEARTBEAT_MS", 200);
    let mut workers = Workers((0..2).map(|_| spawn.start()).collect());
    let started = Instant::now();
    let mut deaths = 0usize;
    let state = |id: JobId| {
        let queue = queue.clone();
        async move { queue.status(&id).await.unwrap().unwrap() }
    };
    loop {
        for w in &mut workers.0 {
            if w.try_wait().unwrap().is_some() {
                deaths += 1;
                *w = spawn.start();
            }
        }
        let counts = queue.counts().await.unwrap();
        if state(pill.clone()).await.state == JobState::Dead && counts.completed == u64::from(JOBS)
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let mut dead = Vec::new();
            for id in ordinary.iter().chain([&pill]) {
                let s = state(id.clone()).await;
                if s.state != JobState::Completed {
                    dead.push(format!(
                        "{id}: {:?} {:?} stalls {}",
                        s.state, s.error, s.stalls
                    ));
                }
            }
            panic!("not over in 90 s: {counts:?}, {deaths} deaths; not completed: {dead:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(workers);
    let s = state(pill.clone()).await;
    println!(
        "poison: dead-lettered after {} interrupted runs, {deaths} worker deaths, in {:?}",
        s.stalls,
        started.elapsed()
    );
    assert_eq!(s.error.as_deref(), Some("stalled too often"));
    // The default max_stalls (5): a death charges the job at least 1 / CONCURRENCY.
    let bound = (5 + 1) * CONCURRENCY;
    assert!(
        (6..=bound).contains(&deaths),
        "{deaths} deaths (bound {bound})"
    );
    for id in ordinary {
        assert_eq!(state(id).await.state, JobState::Completed);
    }
}

/// Workers whose clocks are ten seconds off, beside a worker whose clock is right: one ten
/// seconds behind keeps the job it runs (its lease is not thought expired), and one ten seconds
/// ahead, killed, loses its job as soon as its heartbeat stops (it is not thought alive).
async fn skewed_clocks() {
    let redis = TestRedis::new().await;
    let queue = queue_of(&redis, "clocks");
    let conn = redis.connection();
    let prefix = redis.prefix().to_owned();
    let clock_offset = async |child: &Child| {
        let key = format!("{prefix}clock:{}", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen: Option<u64> = conn.clone().get(&key).await.unwrap();
            if let Some(seen) = seen {
                return seen as i64 - now_ms() as i64;
            }
            assert!(Instant::now() < deadline, "the worker did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let holder_of = async |id: &JobId| {
        job_fields(&redis, "clocks", id.as_str())
            .await
            .get("worker")
            .cloned()
            .unwrap_or_default()
    };
    let normal = Spawn::new(&redis, "clocks", 1);

    // Behind: a 4 s job under a 2 s lease, renewed with the worker's clock ten seconds slow.
    let behind = Spawn::new(&redis, "clocks", 1)
        .with("CHAOS_LEASE_MS", 2000)
        .clock("-10s");
    let mut workers = Workers(vec![behind.start()]);
    let offset = clock_offset(&workers.0[0]).await;
    assert!(
        (-12_000..=-8_000).contains(&offset),
        "its clock is off by {offset} ms, not -10 s"
    );
    let slow = queue
        .enqueue(&work(0, 4000), JobOptions::default())
        .await
        .unwrap();
    let pid = workers.0[0].id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holder_of(&slow).await.starts_with(&format!("{pid}-")) {
        assert!(Instant::now() < deadline, "the slow worker did not take it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The right-clocked worker sweeps every second meanwhile.
    workers.0.push(normal.start());
    let deadline = Instant::now() + Duration::from_secs(15);
    while queue.status(&slow).await.unwrap().unwrap().state != JobState::Completed {
        assert!(Instant::now() < deadline, "the job did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = queue.status(&slow).await.unwrap().unwrap();
    assert_eq!((s.attempts, s.stalls), (1, 0), "its job was taken from it");
    assert_eq!(runs(&redis, 1).await, [1]);

    // Ahead: killed while it runs a long job; its last heartbeat must not keep it alive for
    // the ten seconds its clock adds.
    drop(workers);
    let ahead = Spawn::new(&redis, "clocks", 1).clock("+10s");
    let mut workers = Workers(vec![ahead.start()]);
    let offset = clock_offset(&workers.0[0]).await;
    assert!(
        (8_000..=12_000).contains(&offset),
        "its clock is off by {offset} ms, not +10 s"
    );
    let pid = workers.0[0].id();
    let long = queue
        .enqueue(&work(1, 30_000), JobOptions::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holder_of(&long).await.starts_with(&format!("{pid}-")) {
        assert!(Instant::now() < deadline, "the fast worker did not take it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.0[0].kill().unwrap();
    let _ = workers.0[0].wait();
    let killed = Instant::now();
    // A worker with a right clock takes it back once the dead one is found.
    workers.0.push(normal.start());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let holder = holder_of(&long).await;
        if !holder.is_empty() && !holder.starts_with(&format!("{pid}-")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead fast worker kept its job for 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = killed.elapsed();
    println!(
        "clocks: a worker 10 s slow kept its job; one 10 s fast, killed, lost its job after {after:?}"
    );
    // Three heartbeats (3 s) and a sweep (1 s), not ten seconds more.
    assert!(after < Duration::from_secs(6), "taken back after {after:?}");
}
