//! The queue and its workers against real Redis.

mod common;

use common::*;

#[tokio::test]
async fn jobs_run_once_each_and_keep_their_results() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "basic").await;
    let recorder = Recorder::default();
    let ids = q
        .enqueue_bulk(
            &(0..50).map(|n| task(n, "ok")).collect::<Vec<_>>(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 50);
    let w = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().concurrency(4),
    );
    until_completed(&q, 50, Duration::from_secs(10)).await;
    w.stop().await;
    let mut runs: Vec<u32> = recorder
        .runs
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    runs.sort_unstable();
    assert_eq!(
        runs,
        (0..50).collect::<Vec<_>>(),
        "each job ran exactly once"
    );
    let status = q.status(&ids[7]).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(status.result, Some(serde_json::json!({"double": 14})));
    assert_eq!(status.attempts, 1);
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.waiting, counts.active, counts.dead), (0, 0, 0));
}

#[tokio::test]
async fn higher_priority_first_and_delayed_jobs_wait_for_their_time() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "order").await;
    let recorder = Recorder::default();
    q.enqueue(&task(1, "ok"), JobOptions::default().priority(1))
        .await
        .unwrap();
    q.enqueue(&task(2, "ok"), JobOptions::default().priority(9))
        .await
        .unwrap();
    q.enqueue(&task(3, "ok"), JobOptions::default().priority(9))
        .await
        .unwrap();
    q.enqueue(
        &task(4, "ok"),
        JobOptions::default().delay(Duration::from_millis(700)),
    )
    .await
    .unwrap();
    q.enqueue(&task(5, "ok"), JobOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until(
        "4 before the delayed one",
        Duration::from_secs(5),
        async || recorder.runs.lock().unwrap().len() == 4,
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(700));
    until("the delayed one", Duration::from_secs(5), async || {
        recorder.runs.lock().unwrap().len() == 5
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(700));
    w.stop().await;
    let order: Vec<u32> = recorder
        .runs
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(order, [2, 3, 1, 5, 4]);
}

#[tokio::test]
async fn a_delayed_job_added_to_an_idle_queue_runs_at_its_time_before_later_ones() {
    // The worker has looked at the empty delayed set (and noted that nothing is due) before
    // the delayed jobs come; the one due sooner, added after one due in ten minutes, still runs
    // at its time.
    let redis = TestRedis::new().await;
    let q = queue(&redis, "delays").await;
    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    q.enqueue(&task(1, "ok"), JobOptions::default())
        .await
        .unwrap();
    until("the first job", Duration::from_secs(5), async || {
        recorder.runs.lock().unwrap().len() == 1
    })
    .await;
    q.enqueue(
        &task(2, "ok"),
        JobOptions::default().delay(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    let started = Instant::now();
    q.enqueue(
        &task(3, "ok"),
        JobOptions::default().delay(Duration::from_millis(400)),
    )
    .await
    .unwrap();
    until(
        "the sooner delayed job",
        Duration::from_secs(5),
        async || recorder.runs.lock().unwrap().len() == 2,
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(2500),
        "ran after {waited:?}"
    );
    assert_eq!(recorder.runs.lock().unwrap()[1].0, 3);
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.delayed, counts.completed), (1, 2));
    w.stop().await;
}

#[tokio::test]
async fn failures_retry_with_backoff_then_dead_letter_and_redrive() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "retry").await;
    let recorder = Recorder::default();
    let failing = q
        .enqueue(&task(1, "fail"), fast_backoff().attempts(3))
        .await
        .unwrap();
    let fatal = q
        .enqueue(&task(2, "fatal"), fast_backoff().attempts(3))
        .await
        .unwrap();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until("both dead", Duration::from_secs(5), async || {
        q.counts().await.unwrap().dead == 2
    })
    .await;
    let s = q.status(&failing).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.attempts, s.error.as_deref()),
        (JobState::Dead, 3, Some("failed 1"))
    );
    let s = q.status(&fatal).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.attempts, s.error.as_deref()),
        (JobState::Dead, 1, Some("no way"))
    );
    let attempts: Vec<(u32, u32)> = recorder.runs.lock().unwrap().clone();
    assert_eq!(
        attempts
            .iter()
            .filter(|(n, _)| *n == 1)
            .map(|(_, a)| *a)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // Re-driven, they run again with fresh attempts (and fail again).
    assert_eq!(q.redrive(10).await.unwrap(), 2);
    until("ran again", Duration::from_secs(5), async || {
        recorder.runs.lock().unwrap().len() == 3 + 1 + 3 + 1
    })
    .await;
    until("dead again", Duration::from_secs(5), async || {
        q.counts().await.unwrap().dead == 2
    })
    .await;
    w.stop().await;
}

#[tokio::test]
async fn a_unique_key_deduplicates_while_the_job_lives() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "unique").await;
    let a = q
        .enqueue(&task(1, "ok"), JobOptions::default().unique("import:42"))
        .await
        .unwrap();
    let b = q
        .enqueue(&task(2, "ok"), JobOptions::default().unique("import:42"))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(q.counts().await.unwrap().waiting, 1);
    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until_completed(&q, 1, Duration::from_secs(5)).await;
    // Completed: the key is free again.
    let c = q
        .enqueue(&task(3, "ok"), JobOptions::default().unique("import:42"))
        .await
        .unwrap();
    assert_ne!(c, a);
    until_completed(&q, 2, Duration::from_secs(5)).await;
    w.stop().await;
}

#[tokio::test]
async fn bad_payloads_panics_and_timeouts_fail_with_their_reason_and_the_worker_goes_on() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "bad").await;
    let recorder = Recorder::default();
    let impostor = q
        .enqueue(
            &Impostor {
                something: vec![true],
            },
            fast_backoff(),
        )
        .await
        .unwrap();
    let panics = q
        .enqueue(&task(1, "panic"), fast_backoff().attempts(1))
        .await
        .unwrap();
    let slow = q
        .enqueue(
            &task(2, "sleep:5000"),
            fast_backoff()
                .attempts(1)
                .timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let fine = q
        .enqueue(&task(3, "ok"), JobOptions::default())
        .await
        .unwrap();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until("all settled", Duration::from_secs(5), async || {
        let c = q.counts().await.unwrap();
        c.dead == 3 && c.completed == 1
    })
    .await;
    w.stop().await;
    let reason = |s: Option<geostack_jobs::JobStatus>| s.unwrap().error.unwrap();
    assert!(reason(q.status(&impostor).await.unwrap()).contains("does not deserialize"));
    assert!(reason(q.status(&panics).await.unwrap()).contains("panicked: boom 1"));
    assert!(reason(q.status(&slow).await.unwrap()).contains("timed out"));
    assert_eq!(
        q.status(&fine).await.unwrap().unwrap().state,
        JobState::Completed
    );
}

/// A 1.5 s job, taken by a worker (600 ms lease) that then dies without a word: its task is
/// aborted, so the job is neither renewed nor finished.
#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn taken_by_a_doomed_worker(
    redis: &TestRedis,
    q: &Queue,
    recorder: &Recorder,
) -> geostack_jobs::JobId {
    let id = q
        .enqueue(&task(1, "sleep:1500"), JobOptions::default())
        .await
        .unwrap();
    let doomed = start(
        redis,
        q,
        recorder,
        WorkerConfig::default().lease(Duration::from_millis(600)),
    );
    until("taken", Duration::from_secs(5), async || {
        q.counts().await.unwrap().active == 1
    })
    .await;
    doomed.task.abort();
    id
}

#[tokio::test]
async fn a_dead_workers_job_is_taken_back_and_a_slow_live_one_is_kept() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "stalled").await;
    let recorder = Recorder::default();
    // A worker takes it, then dies without a word (its task is aborted: no renewal, no finish).
    let id = taken_by_a_doomed_worker(&redis, &q, &recorder).await;
    let died = Instant::now();
    // Another worker (its sweeper runs every second) takes it back and runs it to the end, its
    // lock renewed although the job outlasts the lease.
    let rescuer = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().lease(Duration::from_millis(600)),
    );
    until("run again", Duration::from_secs(5), async || {
        recorder.runs.lock().unwrap().len() == 2
    })
    .await;
    assert!(
        died.elapsed() < Duration::from_secs(5),
        "taken back after {:?}",
        died.elapsed()
    );
    until_completed(&q, 1, Duration::from_secs(5)).await;
    rescuer.stop().await;
    let s = q.status(&id).await.unwrap().unwrap();
    // The interrupted run was a stall: the job completed at its first attempt.
    assert_eq!((s.state, s.attempts, s.stalls), (JobState::Completed, 1, 1));
    assert_eq!(
        recorder.runs.lock().unwrap().len(),
        2,
        "the live slow run was not taken away"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_time_or_gives_the_job_back() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "shutdown").await;
    let recorder = Recorder::default();
    let quick = q
        .enqueue(&task(1, "sleep:200"), JobOptions::default())
        .await
        .unwrap();
    let w = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().shutdown_deadline(Duration::from_secs(2)),
    );
    until("taken", Duration::from_secs(5), async || {
        q.counts().await.unwrap().active == 1
    })
    .await;
    w.stop().await;
    assert_eq!(
        q.status(&quick).await.unwrap().unwrap().state,
        JobState::Completed
    );

    let long = q
        .enqueue(&task(2, "sleep:10000"), JobOptions::default())
        .await
        .unwrap();
    let w = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().shutdown_deadline(Duration::from_millis(300)),
    );
    until("taken", Duration::from_secs(5), async || {
        q.counts().await.unwrap().active == 1
    })
    .await;
    let stopping = Instant::now();
    w.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
    let s = q.status(&long).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.attempts),
        (JobState::Waiting, 0),
        "given back, the attempt not counted"
    );
}

#[tokio::test]
async fn cancel_ends_a_waiting_job_at_once_and_stops_a_running_one() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "cancel").await;
    let later = q
        .enqueue(
            &task(1, "ok"),
            JobOptions::default()
                .delay(Duration::from_secs(60))
                .unique("only-one"),
        )
        .await
        .unwrap();
    assert_eq!(q.cancel(&later).await.unwrap(), Some(JobState::Cancelled));
    let status = q.status(&later).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Cancelled);
    assert!(status.finished.is_some() && status.created.is_some());
    assert_eq!(
        status.payload,
        Some(serde_json::json!({"n": 1, "action": "ok"}))
    );
    assert_eq!(q.counts().await.unwrap().delayed, 0);
    // Its unique key is free again.
    let again = q
        .enqueue(&task(1, "ok"), JobOptions::default().unique("only-one"))
        .await
        .unwrap();
    assert_ne!(again, later);

    let recorder = Recorder::default();
    let running = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().lease(Duration::from_millis(600)),
    );
    until("the first job done", Duration::from_secs(5), async || {
        q.status(&again).await.unwrap().unwrap().state == JobState::Completed
    })
    .await;
    let long = q
        .enqueue(&task(2, "sleep:30000"), JobOptions::default())
        .await
        .unwrap();
    until("the long job running", Duration::from_secs(5), async || {
        q.status(&long).await.unwrap().unwrap().state == JobState::Active
    })
    .await;
    let asked = Instant::now();
    assert_eq!(q.cancel(&long).await.unwrap(), Some(JobState::Active));
    until(
        "the running job cancelled",
        Duration::from_secs(2),
        async || q.status(&long).await.unwrap().unwrap().state == JobState::Cancelled,
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_millis(600),
        "{:?}",
        asked.elapsed()
    );
    // The worker goes on with the next job; a finished job stays as it ended.
    let next = q
        .enqueue(&task(3, "ok"), JobOptions::default())
        .await
        .unwrap();
    until("the next job done", Duration::from_secs(5), async || {
        q.status(&next).await.unwrap().unwrap().state == JobState::Completed
    })
    .await;
    assert_eq!(q.cancel(&next).await.unwrap(), Some(JobState::Completed));
    let unknown = geostack_jobs::JobId::new("no-such-job").unwrap();
    assert_eq!(q.cancel(&unknown).await.unwrap(), None);
    assert_eq!(q.counts().await.unwrap().active, 0);
    running.stop().await;
}

#[tokio::test]
async fn a_job_cancelled_while_its_worker_dies_is_never_run_again() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "cancel-stall").await;
    let recorder = Recorder::default();
    // Its worker dies while it runs; then it is cancelled, before the sweep takes it back.
    let id = taken_by_a_doomed_worker(&redis, &q, &recorder).await;
    assert_eq!(q.cancel(&id).await.unwrap(), Some(JobState::Active));
    let rescuer = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().lease(Duration::from_millis(600)),
    );
    until("ended cancelled", Duration::from_secs(8), async || {
        q.status(&id).await.unwrap().unwrap().state == JobState::Cancelled
    })
    .await;
    // Time for a wrong second run to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rescuer.stop().await;
    assert_eq!(recorder.runs.lock().unwrap().len(), 1, "it ran again");
    assert_eq!(q.counts().await.unwrap().waiting, 0);
}

#[tokio::test]
async fn a_dead_job_frees_its_unique_key() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "unique-dead").await;
    let recorder = Recorder::default();
    let options = || fast_backoff().attempts(1).unique("import:7");
    let first = q.enqueue(&task(1, "fatal"), options()).await.unwrap();
    // While it waits, the key stands for it.
    assert_eq!(
        q.enqueue(&task(1, "fatal"), options()).await.unwrap(),
        first
    );
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until("dead", Duration::from_secs(5), async || {
        q.counts().await.unwrap().dead == 1
    })
    .await;
    w.stop().await;
    // Once dead, the same work may be queued again: a new job.
    let second = q.enqueue(&task(1, "ok"), options()).await.unwrap();
    assert_ne!(second, first);
}

#[tokio::test]
async fn a_handler_that_blocks_its_thread_does_not_lose_its_worker_s_jobs() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "blocked").await;
    let recorder = Recorder::default();
    let ids = q
        .enqueue_bulk(
            &[task(1, "block:2500"), task(2, "block:2500")],
            JobOptions::default(),
        )
        .await
        .unwrap();
    // A worker whose handlers block the only thread of its runtime, as a worker on a busy
    // runtime's threads does: short lease and heartbeat, so that lateness would show.
    let config = WorkerConfig::default()
        .concurrency(2)
        .lease(Duration::from_millis(600))
        .heartbeat(Duration::from_millis(200));
    let blocked = Worker::new(q.clone(), redis.client().clone(), config.clone())
        .handle::<Task, _>(recorder.clone());
    let (stop_blocked, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(blocked.run(async {
            let _ = stopped.await;
        }))
    });
    until("both taken", Duration::from_secs(5), async || {
        q.counts().await.unwrap().active == 2
    })
    .await;
    // Another worker, whose sweep would take back the jobs of a worker gone silent.
    let rescuer = start(&redis, &q, &recorder, config);
    until_completed(&q, 2, Duration::from_secs(10)).await;
    rescuer.stop().await;
    let _ = stop_blocked.send(());
    thread.join().unwrap().unwrap();
    let events: Vec<String> = q
        .events(None, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| format!("{} {} {}", e.kind, e.job, e.detail))
        .collect();
    assert_eq!(
        recorder.runs.lock().unwrap().len(),
        2,
        "a job of the live, blocked worker ran again: {events:?}"
    );
    for id in &ids {
        let s = q.status(id).await.unwrap().unwrap();
        assert_eq!((s.state, s.attempts), (JobState::Completed, 1));
    }
}
