//! The queue's other features against real Redis: the worker registry and death by silence,
//! progress, the event stream, batched calls of a busy worker, a rate limit, tenants served in
//! turn, repeatable jobs, retention, several queues per worker, and a Redis restart mid-run.

mod common;

use common::*;
use geostack_jobs::Schedule;
use geostack_testkit::RedisServer;

#[tokio::test]
async fn workers_register_and_a_silent_one_loses_its_job_at_once() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "registry").await;
    let id = q
        .enqueue(&task(1, "sleep:60000"), JobOptions::default())
        .await
        .unwrap();
    let first = Recorder::default();
    // The default lease (30 s): only the heartbeat can find this worker dead in time.
    let config = || WorkerConfig::default().heartbeat(Duration::from_millis(200));
    let a = start(&redis, &q, &first, config());
    until("the job running", Duration::from_secs(5), async || {
        q.status(&id).await.unwrap().unwrap().state == JobState::Active
    })
    .await;
    let workers = q.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    let w = &workers[0];
    assert_eq!(
        (w.pid, w.queues.clone()),
        (std::process::id(), vec!["registry".to_owned()])
    );
    assert!(w.id.starts_with(&format!("{}-", std::process::id())));
    assert!(!w.host.is_empty() && w.heartbeat >= w.started);

    // Killed: its future dropped mid-job, no goodbye.
    a.task.abort();
    let died = Instant::now();
    let second = Recorder::default();
    let b = start(&redis, &q, &second, config().lease(Duration::from_secs(30)));
    until(
        "the job started again",
        Duration::from_secs(5),
        async || !second.runs.lock().unwrap().is_empty(),
    )
    .await;
    // The interrupted run was a stall, not an attempt: the job runs its first attempt again.
    let status = q.status(&id).await.unwrap().unwrap();
    assert_eq!((status.attempts, status.stalls), (1, 1));
    assert_eq!(second.runs.lock().unwrap()[0], (1, 1));
    // Three heartbeats of silence (600 ms) plus at most a second for the sweep: well inside
    // 5 s, and far from the 30 s the lease alone would take.
    assert!(
        died.elapsed() < Duration::from_secs(5),
        "{:?}",
        died.elapsed()
    );
    let events = q.events(None, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "worker-lost" && e.job == w.id),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "stalled" && e.job == id.as_str())
    );
    let alive = q.workers().await.unwrap();
    assert_eq!(alive.len(), 1);
    assert_ne!(alive[0].id, w.id);
    // A clean stop leaves the registry.
    q.cancel(&id).await.unwrap();
    b.stop().await;
    assert!(q.workers().await.unwrap().is_empty());
}

#[tokio::test]
async fn progress_and_events_tell_what_happened() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "progress").await;
    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    let id = q
        .enqueue(&task(7, "progress"), JobOptions::default().tenant("alice"))
        .await
        .unwrap();
    until("progress reported", Duration::from_secs(5), async || {
        q.status(&id).await.unwrap().unwrap().progress == Some(serde_json::json!({"step": 7}))
    })
    .await;
    until("the job done", Duration::from_secs(5), async || {
        q.status(&id).await.unwrap().unwrap().state == JobState::Completed
    })
    .await;
    let status = q.status(&id).await.unwrap().unwrap();
    assert_eq!(status.tenant.as_deref(), Some("alice"));
    let events = q.events(None, 100).await.unwrap();
    let of_job: Vec<&str> = events
        .iter()
        .filter(|e| e.job == id.as_str())
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(of_job, ["added", "active", "progress", "completed"]);
    // Paging: after the first event, the rest.
    let rest = q.events(Some(&events[0].id), 100).await.unwrap();
    assert_eq!(rest.len(), events.len() - 1);
    w.stop().await;
}

#[tokio::test]
async fn a_busy_worker_batches_its_calls_and_every_job_keeps_its_own_events() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "batches").await;
    let tasks: Vec<Task> = (0..300).map(|n| task(n, "ok")).collect();
    let ids = q.enqueue_bulk(&tasks, JobOptions::default()).await.unwrap();
    let recorder = Recorder::default();
    let w = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().concurrency(16),
    );
    until_completed(&q, 300, Duration::from_secs(20)).await;
    w.stop().await;

    let mut runs: Vec<u32> = recorder.runs.lock().unwrap().iter().map(|r| r.0).collect();
    runs.sort_unstable();
    assert_eq!(runs, (0..300).collect::<Vec<_>>(), "each job ran once");
    let events = q.events(None, 10_000).await.unwrap();
    for kind in ["active", "completed"] {
        let mut jobs: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.job.as_str())
            .collect();
        jobs.sort_unstable();
        let mut expected: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        expected.sort_unstable();
        assert_eq!(jobs, expected, "one {kind} event per job");
        // Outcomes were reported several to a call: fewer stream entries than jobs.
        let mut entries: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.id.as_str())
            .collect();
        entries.dedup();
        assert!(entries.len() < 300, "{kind}: {} entries", entries.len());
    }
    for id in &ids {
        let status = q.status(id).await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Completed, "{id}");
    }
    assert_eq!(q.counts().await.unwrap().active, 0);
}

#[tokio::test]
async fn a_rate_limit_spreads_jobs_over_windows() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "rated").await;
    q.rate_limit(Some((4, Duration::from_millis(500))))
        .await
        .unwrap();
    assert!(
        q.rate_limit(Some((0, Duration::from_secs(1))))
            .await
            .is_err()
    );
    let ids = q
        .enqueue_bulk(
            &(0..10).map(|n| task(n, "ok")).collect::<Vec<_>>(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let recorder = Recorder::default();
    let started = Instant::now();
    let w = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().concurrency(8),
    );
    until_completed(&q, 10, Duration::from_secs(5)).await;
    // 10 jobs at 4 per 500 ms take three windows: at least two ends of a window.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let mut starts: Vec<u64> = Vec::new();
    for id in &ids {
        let s = q.status(id).await.unwrap().unwrap();
        starts.push(
            s.started
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        );
    }
    starts.sort_unstable();
    // No 5 starts within one window's length.
    for w5 in starts.windows(5) {
        assert!(w5[4] - w5[0] >= 400, "{starts:?}");
    }
    w.stop().await;
    q.rate_limit(None).await.unwrap();
}

#[tokio::test]
async fn tenants_are_served_in_turn() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "fair").await;
    // Tenant a floods the queue first; b and c come after.
    for (tenant, count, base) in [("a", 6, 100), ("b", 3, 200), ("c", 3, 300)] {
        let jobs: Vec<Task> = (0..count).map(|i| task(base + i, "ok")).collect();
        q.enqueue_bulk(&jobs, JobOptions::default().tenant(tenant))
            .await
            .unwrap();
    }
    // And one without a tenant: it takes its turn like a tenant of its own.
    q.enqueue(&task(900, "ok"), JobOptions::default())
        .await
        .unwrap();
    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until_completed(&q, 13, Duration::from_secs(5)).await;
    w.stop().await;
    let order: Vec<u32> = recorder
        .runs
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| n / 100)
        .collect();
    assert_eq!(order, [1, 2, 3, 9, 1, 2, 3, 1, 2, 3, 1, 1, 1]);
}

#[tokio::test]
async fn repeatable_jobs_run_on_their_schedule_once_per_run() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "repeat").await;
    let scheduled_at = std::time::SystemTime::now();
    q.repeat(
        "tick",
        &task(5, "ok"),
        Schedule::every(Duration::from_secs(1)).unwrap(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        q.repeat(
            "bad key",
            &task(5, "ok"),
            Schedule::every(Duration::from_secs(1)).unwrap(),
            JobOptions::default()
        )
        .await
        .is_err()
    );
    let listed = q.repeatables(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].key.as_str(), listed[0].name.as_str()),
        ("tick", "task")
    );
    // After the moment it was scheduled (by now, a 1 s boundary may already have passed).
    assert!(listed[0].next > scheduled_at);
    // Two workers see the same due runs; each run is enqueued once.
    let (r1, r2) = (Recorder::default(), Recorder::default());
    let w1 = start(&redis, &q, &r1, WorkerConfig::default());
    let w2 = start(&redis, &q, &r2, WorkerConfig::default());
    until("three runs", Duration::from_secs(6), async || {
        q.counts().await.unwrap().completed >= 3
    })
    .await;
    assert!(q.unrepeat("tick").await.unwrap());
    assert!(!q.unrepeat("tick").await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let done = q.counts().await.unwrap().completed;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        q.counts().await.unwrap().completed,
        done,
        "runs after unrepeat"
    );
    w1.stop().await;
    w2.stop().await;
    let runs = r1.runs.lock().unwrap().len() + r2.runs.lock().unwrap().len();
    assert_eq!(runs as u64, done, "a run enqueued twice");
    // Each run's id is the key and its time, on a whole second.
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{}{{repeat}}:completed", redis.prefix()))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis.connection())
        .await
        .unwrap();
    for id in &ids {
        let ms: u64 = id.strip_prefix("tick-").unwrap().parse().unwrap();
        assert_eq!(ms % 1000, 0, "{id}");
    }
}

#[tokio::test]
async fn finished_jobs_are_kept_by_age_and_count() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "retain").await;
    let recorder = Recorder::default();
    let config = WorkerConfig::default()
        .keep_completed_for(Duration::from_millis(300))
        .keep_dead(1);
    let w = start(&redis, &q, &recorder, config);
    let old = q
        .enqueue_bulk(&[task(1, "ok"), task(2, "ok")], JobOptions::default())
        .await
        .unwrap();
    until_completed(&q, 2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = q
        .enqueue(&task(3, "ok"), JobOptions::default())
        .await
        .unwrap();
    until("the new one done", Duration::from_secs(5), async || {
        q.status(&new).await.unwrap().map(|s| s.state) == Some(JobState::Completed)
    })
    .await;
    for id in &old {
        assert_eq!(q.status(id).await.unwrap(), None, "{id} outlived its age");
    }
    assert_eq!(q.counts().await.unwrap().completed, 1);
    // Two dead jobs, one after the other: the dead letter keeps the later.
    let mut dead = Vec::new();
    for n in [4, 5] {
        let id = q
            .enqueue(&task(n, "fatal"), JobOptions::default())
            .await
            .unwrap();
        until("dead", Duration::from_secs(5), async || {
            q.status(&id).await.unwrap().map(|s| s.state) == Some(JobState::Dead)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        dead.push(id);
    }
    assert_eq!(q.counts().await.unwrap().dead, 1);
    assert_eq!(q.status(&dead[0]).await.unwrap(), None);
    w.stop().await;
}

#[tokio::test]
async fn one_worker_takes_from_several_queues_in_order() {
    let redis = TestRedis::new().await;
    let urgent = queue(&redis, "urgent").await;
    let normal = queue(&redis, "normal").await;
    normal
        .enqueue_bulk(
            &(0..3).map(|n| task(n, "ok")).collect::<Vec<_>>(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    urgent
        .enqueue_bulk(
            &(10..13).map(|n| task(n, "ok")).collect::<Vec<_>>(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let recorder = Recorder::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        urgent.clone(),
        redis.client().clone(),
        WorkerConfig::default(),
    )
    .queue(normal.clone())
    .handle::<Task, _>(recorder.clone());
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    until("all done", Duration::from_secs(5), async || {
        urgent.counts().await.unwrap().completed + normal.counts().await.unwrap().completed == 6
    })
    .await;
    let workers = normal.workers().await.unwrap();
    assert_eq!(workers[0].queues, ["urgent", "normal"]);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let order: Vec<u32> = recorder
        .runs
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(order, [10, 11, 12, 0, 1, 2]);
}

#[tokio::test]
async fn a_redis_restart_mid_run_loses_nothing() {
    let mut server = RedisServer::start_persistent();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let q = Queue::with_prefix(conn, QueueName::new("restart").unwrap(), "t:");
    let ids = q
        .enqueue_bulk(
            &(0..120).map(|n| task(n, "sleep:10")).collect::<Vec<_>>(),
            JobOptions::default().attempts(10),
        )
        .await
        .unwrap();
    let recorder = Recorder::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        q.clone(),
        client,
        WorkerConfig::default()
            .concurrency(4)
            .lease(Duration::from_secs(2)),
    )
    .handle::<Task, _>(recorder.clone());
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    until("some done", Duration::from_secs(10), async || {
        recorder.runs.lock().unwrap().len() >= 30
    })
    .await;
    server.restart();
    until(
        "all done after the restart",
        Duration::from_secs(30),
        async || {
            q.counts()
                .await
                .map(|c| c.completed == 120)
                .unwrap_or(false)
        },
    )
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let mut lost = 0;
    for id in &ids {
        if q.status(id).await.unwrap().map(|s| s.state) != Some(JobState::Completed) {
            lost += 1;
        }
    }
    let runs = recorder.runs.lock().unwrap();
    let mut seen: Vec<u32> = runs.iter().map(|(n, _)| *n).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!((lost, seen.len()), (0, 120));
    eprintln!("restart: 120 jobs, lost 0, duplicates {}", runs.len() - 120);
}

#[tokio::test]
async fn unreadable_repeatables_are_parked_and_never_block_the_others() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "broken").await;
    let prefix = format!("{}{{broken}}:", redis.prefix());
    let mut conn = redis.connection();
    // Twelve entries due long ago that cannot run: a schedule this version cannot read, job
    // fields that are not JSON, a definition gone.
    for i in 0..12 {
        let key = format!("broken-{i}");
        let _: () = redis::cmd("ZADD")
            .arg(format!("{prefix}repeats"))
            .arg(i)
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (schedule, fields) = match i % 3 {
            0 => ("not a schedule", "[]"),
            1 => ("every:1000", "not json"),
            _ => continue,
        };
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}repeat"))
            .arg(format!("{key}:name"))
            .arg("task")
            .arg(format!("{key}:fields"))
            .arg(fields)
            .arg(format!("{key}:priority"))
            .arg("0")
            .arg(format!("{key}:schedule"))
            .arg(schedule)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    q.repeat(
        "tick",
        &task(5, "ok"),
        Schedule::every(Duration::from_secs(1)).unwrap(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until("the healthy one ran", Duration::from_secs(8), async || {
        q.counts().await.unwrap().completed >= 1
    })
    .await;
    w.stop().await;
    let parked: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}repeats:parked"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(parked.len(), 12, "{parked:?}");
    assert_eq!(parked["broken-0"], "its schedule cannot be read");
    assert_eq!(parked["broken-1"], "its job fields cannot be read");
    assert_eq!(parked["broken-2"], "its definition is missing");
    let listed = q.repeatables(100).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "tick");
}

#[tokio::test]
async fn a_job_that_has_not_started_can_be_given_a_new_payload() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "update").await;
    let later = q
        .enqueue(
            &task(1, "ok"),
            JobOptions::default().delay(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    assert_eq!(
        q.update(&later, &task(2, "ok")).await.unwrap(),
        Some(JobState::Delayed)
    );
    let payload = q.status(&later).await.unwrap().unwrap().payload.unwrap();
    assert_eq!(payload, serde_json::to_value(task(2, "ok")).unwrap());
    // A finished job keeps what it ran; a job that is not there is none.
    let now = q
        .enqueue(&task(3, "ok"), JobOptions::default())
        .await
        .unwrap();
    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until_completed(&q, 1, Duration::from_secs(5)).await;
    w.stop().await;
    assert_eq!(
        q.update(&now, &task(4, "ok")).await.unwrap(),
        Some(JobState::Completed)
    );
    assert_eq!(
        q.status(&now).await.unwrap().unwrap().payload.unwrap(),
        serde_json::to_value(task(3, "ok")).unwrap()
    );
    let missing = geostack_jobs::JobId::new("missing-1").unwrap();
    assert_eq!(q.update(&missing, &task(5, "ok")).await.unwrap(), None);
}
