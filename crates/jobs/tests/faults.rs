//! Faults between a worker and Redis, injected by a proxy in the path (testkit's
//! [`FaultProxy`]): the reply to the call that takes jobs, to the one that records an outcome,
//! to a lease renewal and to a heartbeat lost after the call ran; a reply cut in its middle;
//! replies slower than the client waits; a network that swallows everything for a while.
//! Jobs are enqueued and watched on a direct connection; only the worker goes through the proxy.

mod common;

use common::*;
use geostack_testkit::FaultProxy;

/// A worker's way to Redis through a fault proxy.
struct Faulty {
    proxy: FaultProxy,
    client: redis::Client,
    queue: Queue,
}

#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn faulty(redis: &TestRedis, name: &str) -> Faulty {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let proxy = FaultProxy::to_url(&url).await;
    let client = redis::Client::open(proxy.url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let queue = Queue::with_prefix(conn, QueueName::new(name).unwrap(), redis.prefix());
    Faulty {
        proxy,
        client,
        queue,
    }
}

impl Faulty {
    fn start(&self, recorder: &Recorder, config: WorkerConfig) -> Running {
        let (stop, rx) = tokio::sync::oneshot::channel();
        let worker = Worker::new(self.queue.clone(), self.client.clone(), config)
            .handle::<Task, _>(recorder.clone());
        let task = tokio::spawn(worker.run(async {
            let _ = rx.await;
        }));
        Running { stop, task }
    }
}

fn is_script(command: &[Vec<u8>]) -> bool {
    command
        .first()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"FCALL"))
}

/// A script call's ARGV (what follows its declared keys).
fn script_args(command: &[Vec<u8>]) -> &[Vec<u8>] {
    let keys: usize = command
        .get(2)
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .unwrap_or(0);
    command.get(3 + keys..).unwrap_or_default()
}

fn has_arg(command: &[Vec<u8>], arg: &[u8]) -> bool {
    command.iter().any(|a| a == arg)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `job` through a worker behind `f`'s proxy with `config` and waits for it to complete;
/// asserts it ran once, as its first attempt, with no stall charged, within `limit`.
#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn completes_once_without_a_stall(
    redis: &TestRedis,
    f: &Faulty,
    id: &geostack_jobs::JobId,
    config: WorkerConfig,
    limit: Duration,
) {
    let direct = queue(redis, f.queue.name().as_str()).await;
    let recorder = Recorder::default();
    let started = Instant::now();
    let w = f.start(&recorder, config);
    until_completed(&direct, 1, limit).await;
    let took = started.elapsed();
    let s = direct.status(id).await.unwrap().unwrap();
    assert_eq!((s.state, s.attempts, s.stalls), (JobState::Completed, 1, 0));
    // Runs are recorded when the handler starts: a second one would have shown by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorder.runs.lock().unwrap().len(), 1, "ran more than once");
    let events = direct.events(None, 1000).await.unwrap();
    let completed = events
        .iter()
        .filter(|e| e.kind == "completed" && e.job == id.as_str())
        .count();
    assert_eq!(completed, 1, "{events:?}");
    assert!(
        !events.iter().any(|e| e.kind == "stalled"),
        "{events:?} after {took:?}"
    );
    w.stop().await;
}

/// Enqueues a job doing `action` on queue `name`, aims `fault` at the calls of a worker behind a
/// proxy (given the proxy and the job's id), runs the job with `config`, and checks that it ran
/// once, as its first attempt, with no stall charged, within `limit`, and that the fault struck.
#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn survives(
    name: &str,
    action: &str,
    config: WorkerConfig,
    limit: Duration,
    fault: impl FnOnce(&FaultProxy, Vec<u8>),
) {
    let redis = TestRedis::new().await;
    let f = faulty(&redis, name).await;
    let id = queue(&redis, name)
        .await
        .enqueue(&task(1, action), JobOptions::default())
        .await
        .unwrap();
    fault(&f.proxy, id.as_str().as_bytes().to_vec());
    completes_once_without_a_stall(&redis, &f, &id, config, limit).await;
    assert_eq!(f.proxy.lost(), 1);
}

#[tokio::test]
async fn a_lost_reply_to_the_call_that_took_a_job_strands_nothing() {
    // The call that takes the job runs; its reply, which carries the job, never arrives. The
    // default lease is 30 s: only the worker's own recovery can run the job sooner.
    survives(
        "lost-take",
        "ok",
        WorkerConfig::default(),
        Duration::from_secs(5),
        |proxy, job| {
            proxy.lose_reply(move |command, reply| is_script(command) && contains(reply, &job));
        },
    )
    .await;
}

#[tokio::test]
async fn a_reply_cut_in_its_middle_strands_nothing() {
    survives(
        "cut-take",
        "ok",
        WorkerConfig::default(),
        Duration::from_secs(5),
        |proxy, job| {
            proxy.cut_mid_reply(move |command, reply| is_script(command) && contains(reply, &job));
        },
    )
    .await;
}

#[tokio::test]
async fn a_lost_reply_to_the_call_that_recorded_an_outcome_changes_nothing() {
    // The call that reports the job done runs; the worker never hears so, and reports again.
    survives(
        "lost-finish",
        "ok",
        WorkerConfig::default(),
        Duration::from_secs(5),
        |proxy, job| {
            proxy.lose_reply(move |command, _| {
                is_script(command) && has_arg(command, &job) && has_arg(command, b"done")
            });
        },
    )
    .await;
}

#[tokio::test]
async fn a_lost_reply_to_a_lease_renewal_keeps_the_job() {
    // Runs 2.5 s under a 900 ms lease: renewed every 300 ms, and it must be. A renewal is the
    // script call naming the job with four arguments after its keys (prefix, id, token, lease).
    let config = WorkerConfig::default().lease(Duration::from_millis(900));
    survives(
        "lost-extend",
        "sleep:2500",
        config,
        Duration::from_secs(8),
        |proxy, job| {
            proxy.lose_reply(move |command, _| {
                is_script(command) && script_args(command).len() == 4 && has_arg(command, &job)
            });
        },
    )
    .await;
}

#[tokio::test]
async fn a_lost_reply_to_a_heartbeat_loses_no_worker() {
    let redis = TestRedis::new().await;
    let f = faulty(&redis, "lost-beat").await;
    let direct = queue(&redis, "lost-beat").await;
    let config = || WorkerConfig::default().heartbeat(Duration::from_millis(200));
    let recorder = Recorder::default();
    let w = f.start(&recorder, config());
    let id = direct
        .enqueue(&task(1, "sleep:1500"), JobOptions::default())
        .await
        .unwrap();
    until("the job running", Duration::from_secs(5), async || {
        direct.counts().await.unwrap().active == 1
    })
    .await;
    // Another worker, on a direct connection, sweeps for dead workers meanwhile.
    let sweeper = start(&redis, &direct, &Recorder::default(), config());
    f.proxy
        .lose_reply(|command, _| is_script(command) && has_arg(command, b"host"));
    until_completed(&direct, 1, Duration::from_secs(8)).await;
    assert_eq!(f.proxy.lost(), 1);
    let s = direct.status(&id).await.unwrap().unwrap();
    assert_eq!((s.attempts, s.stalls), (1, 0));
    assert_eq!(recorder.runs.lock().unwrap().len(), 1);
    let events = direct.events(None, 1000).await.unwrap();
    assert!(
        !events.iter().any(|e| e.kind == "worker-lost"),
        "{events:?}"
    );
    sweeper.stop().await;
    w.stop().await;
}

#[tokio::test]
async fn replies_slower_than_the_client_waits_strand_nothing() {
    let redis = TestRedis::new().await;
    let f = faulty(&redis, "slow").await;
    let direct = queue(&redis, "slow").await;
    let recorder = Recorder::default();
    let w = f.start(&recorder, WorkerConfig::default());
    until(
        "the worker registered",
        Duration::from_secs(5),
        async || !direct.workers().await.unwrap().is_empty(),
    )
    .await;
    // 400 ms each way: every call outlives the client's 500 ms response timeout, though it
    // runs in Redis. The first take is among them.
    f.proxy.delay(Duration::from_millis(400));
    let id = direct
        .enqueue(&task(1, "ok"), JobOptions::default())
        .await
        .unwrap();
    until(
        "a call taking the job",
        Duration::from_secs(5),
        async || direct.counts().await.unwrap().active == 1,
    )
    .await;
    f.proxy.delay(Duration::ZERO);
    until_completed(&direct, 1, Duration::from_secs(5)).await;
    let s = direct.status(&id).await.unwrap().unwrap();
    assert_eq!((s.attempts, s.stalls), (1, 0));
    w.stop().await;
}

#[tokio::test]
async fn a_network_that_swallows_everything_for_a_while_loses_nothing() {
    let redis = TestRedis::new().await;
    let f = faulty(&redis, "blackhole").await;
    let direct = queue(&redis, "blackhole").await;
    let recorder = Recorder::default();
    let w = f.start(&recorder, WorkerConfig::default());
    let first = direct
        .enqueue(&task(1, "sleep:2500"), JobOptions::default())
        .await
        .unwrap();
    until("the job running", Duration::from_secs(5), async || {
        direct.counts().await.unwrap().active == 1
    })
    .await;
    // Shorter than the three heartbeats that make a worker dead.
    f.proxy.blackhole(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.proxy.blackhole(false);
    let second = direct
        .enqueue(&task(2, "ok"), JobOptions::default())
        .await
        .unwrap();
    until_completed(&direct, 2, Duration::from_secs(10)).await;
    for id in [&first, &second] {
        let s = direct.status(id).await.unwrap().unwrap();
        assert_eq!((s.attempts, s.stalls), (1, 0), "{id}");
    }
    assert_eq!(recorder.runs.lock().unwrap().len(), 2);
    w.stop().await;
}
