//! Operating a queue: pause and resume, jobs by state, one job removed, retried or promoted,
//! drain, clean, obliterate, job logs, per-minute counts, and following events with one
//! connection object ([`Jobs`]) instead of polling.

mod common;

use common::*;
use geostack_jobs::{Jobs, Metric};

#[tokio::test]
async fn a_paused_queue_keeps_its_jobs_until_it_is_resumed() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "paused").await;
    let recorder = Recorder::default();
    let w = start(
        &redis,
        &q,
        &recorder,
        WorkerConfig::default().concurrency(4),
    );
    q.pause().await.unwrap();
    assert!(q.is_paused().await.unwrap());
    for n in 0..3 {
        q.enqueue(&task(n, "ok"), JobOptions::default())
            .await
            .unwrap();
    }
    // Idle workers look again each second: two of their looks find the queue paused.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(q.counts().await.unwrap().waiting, 3);
    assert!(recorder.runs.lock().unwrap().is_empty());
    let resumed = Instant::now();
    q.resume().await.unwrap();
    assert!(!q.is_paused().await.unwrap());
    until_completed(&q, 3, Duration::from_secs(5)).await;
    // Woken by the resume, not by their next look.
    assert!(
        resumed.elapsed() < Duration::from_millis(900),
        "{:?}",
        resumed.elapsed()
    );
    let kinds: Vec<String> = q
        .events(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"paused".to_owned()) && kinds.contains(&"resumed".to_owned()));
    w.stop().await;
}

#[tokio::test]
async fn jobs_are_listed_by_state_a_page_at_a_time() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "listed").await;
    let waiting = q
        .enqueue_bulk(
            &(0..5).map(|n| task(n, "ok")).collect::<Vec<_>>(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let urgent = q
        .enqueue(&task(9, "ok"), JobOptions::default().priority(9))
        .await
        .unwrap();
    let later = q
        .enqueue(
            &task(7, "ok"),
            JobOptions::default().delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    // In the order they will run: the urgent one first.
    let ids =
        |jobs: Vec<geostack_jobs::JobStatus>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let first = ids(q.jobs(JobState::Waiting, 0, 3).await.unwrap());
    assert_eq!(
        first,
        [urgent.clone(), waiting[0].clone(), waiting[1].clone()]
    );
    let rest = ids(q.jobs(JobState::Waiting, 3, 3).await.unwrap());
    assert_eq!(rest, waiting[2..].to_vec());
    assert!(q.jobs(JobState::Waiting, 6, 3).await.unwrap().is_empty());
    let delayed = q.jobs(JobState::Delayed, 0, 10).await.unwrap();
    assert_eq!(
        (delayed.len(), &delayed[0].id, delayed[0].state),
        (1, &later, JobState::Delayed)
    );

    // Finished jobs come newest first.
    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until_completed(&q, 6, Duration::from_secs(5)).await;
    w.stop().await;
    let done = q.jobs(JobState::Completed, 0, 10).await.unwrap();
    assert_eq!(done.len(), 6);
    // Jobs finished in the same millisecond come in any order among themselves.
    assert!(
        done.windows(2).all(|w| w[0].finished >= w[1].finished),
        "{done:?}"
    );
    assert!(
        done.iter()
            .all(|j| j.state == JobState::Completed && j.result.is_some())
    );
}

#[tokio::test]
async fn one_job_is_removed_retried_or_promoted() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "one").await;
    // A waiting job with a unique key: removed, the key is free again.
    let unique = q
        .enqueue(&task(1, "ok"), JobOptions::default().unique("report"))
        .await
        .unwrap();
    assert_eq!(q.remove(&unique).await.unwrap(), Some(JobState::Waiting));
    assert!(q.status(&unique).await.unwrap().is_none());
    assert_eq!(q.remove(&unique).await.unwrap(), None);
    let again = q
        .enqueue(&task(1, "ok"), JobOptions::default().unique("report"))
        .await
        .unwrap();
    assert_ne!(again, unique);
    q.remove(&again).await.unwrap();

    // A delayed job promoted runs now.
    let later = q
        .enqueue(
            &task(2, "ok"),
            JobOptions::default().delay(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    assert_eq!(q.promote(&later).await.unwrap(), Some(JobState::Waiting));
    // A job that fails for good, retried from the dead letter, runs again with fresh attempts.
    let doomed = q
        .enqueue(&task(3, "fatal"), JobOptions::default())
        .await
        .unwrap();
    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    until("promoted and dead", Duration::from_secs(5), async || {
        q.status(&later).await.unwrap().unwrap().state == JobState::Completed
            && q.status(&doomed).await.unwrap().unwrap().state == JobState::Dead
    })
    .await;
    assert_eq!(q.promote(&later).await.unwrap(), Some(JobState::Completed));
    assert_eq!(q.retry(&later).await.unwrap(), Some(JobState::Completed));
    assert_eq!(q.retry(&doomed).await.unwrap(), Some(JobState::Waiting));
    until("run again", Duration::from_secs(5), async || {
        recorder
            .runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == 3)
            .count()
            == 2
    })
    .await;
    until("dead again", Duration::from_secs(5), async || {
        q.status(&doomed).await.unwrap().unwrap().state == JobState::Dead
    })
    .await;
    assert_eq!(recorder.runs.lock().unwrap().last(), Some(&(3, 1)));
    // A running job is not removed; a dead one is.
    let running = q
        .enqueue(&task(4, "sleep:1000"), JobOptions::default())
        .await
        .unwrap();
    until("running", Duration::from_secs(5), async || {
        q.status(&running).await.unwrap().unwrap().state == JobState::Active
    })
    .await;
    let refused = q.remove(&running).await.unwrap_err();
    assert!(refused.to_string().contains("cancel it first"), "{refused}");
    assert_eq!(q.remove(&doomed).await.unwrap(), Some(JobState::Dead));
    assert_eq!(q.counts().await.unwrap().dead, 0);
    w.stop().await;
}

#[tokio::test]
async fn drain_clean_and_obliterate_empty_what_they_say() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "bulk").await;
    // More than one step of a bulk script (1000 jobs each).
    let many: Vec<Task> = (0..2500).map(|n| task(n, "ok")).collect();
    q.enqueue_bulk(&many, JobOptions::default().unique("x"))
        .await
        .unwrap();
    for n in 0..3 {
        q.enqueue(
            &task(n, "ok"),
            JobOptions::default().delay(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    }
    assert_eq!(q.drain(false).await.unwrap(), 2500);
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.waiting, counts.delayed), (0, 3));
    assert_eq!(q.drain(true).await.unwrap(), 3);
    // The drained job's unique key went with it.
    let fresh = q
        .enqueue(&task(1, "ok"), JobOptions::default().unique("x"))
        .await
        .unwrap();

    let recorder = Recorder::default();
    let w = start(&redis, &q, &recorder, WorkerConfig::default());
    q.enqueue(&task(2, "fatal"), JobOptions::default())
        .await
        .unwrap();
    until(
        "one completed, one dead",
        Duration::from_secs(5),
        async || {
            let c = q.counts().await.unwrap();
            c.completed == 1 && c.dead == 1
        },
    )
    .await;
    assert!(q.clean(JobState::Waiting, Duration::ZERO).await.is_err());
    // Not old enough yet.
    assert_eq!(
        q.clean(JobState::Completed, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        q.clean(JobState::Completed, Duration::ZERO).await.unwrap(),
        1
    );
    assert!(q.status(&fresh).await.unwrap().is_none());
    assert_eq!(q.clean(JobState::Dead, Duration::ZERO).await.unwrap(), 1);

    // Obliterate: refused while a job runs, unless forced; nothing of the queue is left.
    q.repeat(
        "tick",
        &task(5, "ok"),
        geostack_jobs::Schedule::every(Duration::from_secs(3600)).unwrap(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    let long = q
        .enqueue(&task(6, "sleep:1500"), JobOptions::default().tenant("t1"))
        .await
        .unwrap();
    until("running", Duration::from_secs(5), async || {
        q.status(&long)
            .await
            .unwrap()
            .is_some_and(|s| s.state == JobState::Active)
    })
    .await;
    q.enqueue(
        &task(7, "ok"),
        JobOptions::default().delay(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    assert!(q.obliterate(false).await.is_err());
    assert!(q.obliterate(true).await.unwrap() >= 2);
    w.stop().await;
    let mut conn = redis.connection();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}{{bulk}}:*", redis.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_job_s_log_and_the_per_minute_counts_are_kept() {
    let redis = TestRedis::new().await;
    let q = queue(&redis, "logged").await;
    let logged = q
        .enqueue(&task(1, "log"), JobOptions::default())
        .await
        .unwrap();
    q.enqueue(&task(2, "fatal"), JobOptions::default())
        .await
        .unwrap();
    let w = start(&redis, &q, &Recorder::default(), WorkerConfig::default());
    until("ended", Duration::from_secs(5), async || {
        let c = q.counts().await.unwrap();
        c.completed == 1 && c.dead == 1
    })
    .await;
    w.stop().await;
    assert_eq!(
        q.logs(&logged, 0, 10).await.unwrap(),
        ["reading", "writing"]
    );
    assert_eq!(q.logs(&logged, 1, 10).await.unwrap(), ["writing"]);
    let completed = q.metrics(Metric::Completed, 3).await.unwrap();
    let dead = q.metrics(Metric::Dead, 3).await.unwrap();
    assert_eq!(completed.len(), 3);
    // Both ended this minute or, at a minute's turn, the one before.
    assert_eq!(completed.iter().sum::<u64>(), 1, "{completed:?}");
    assert_eq!(dead.iter().sum::<u64>(), 1, "{dead:?}");
    // The log goes with its job.
    q.remove(&logged).await.unwrap();
    assert!(q.logs(&logged, 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn one_connection_object_makes_queues_workers_and_subscriptions() {
    let redis = TestRedis::new().await;
    let jobs = Jobs::connect(redis.client().clone()).await.unwrap();
    let q = jobs.queue_with_prefix("followed", redis.prefix()).unwrap();
    let mut events = jobs.subscribe(&q, None).await.unwrap();
    let id = q
        .enqueue(&task(1, "sleep:300"), JobOptions::default())
        .await
        .unwrap();
    let seen = events.next(Duration::from_secs(2)).await.unwrap();
    assert!(
        seen.iter()
            .any(|e| e.kind == "added" && e.job == id.as_str()),
        "{seen:?}"
    );
    // Nothing more happens without a worker: the subscription waits, then answers empty.
    let quiet = Instant::now();
    assert!(
        events
            .next(Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(quiet.elapsed() >= Duration::from_millis(250));

    let worker = jobs
        .worker(q.clone(), WorkerConfig::default())
        .handle::<Task, _>(Recorder::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let status = jobs
        .wait_for(&q, &id, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, JobState::Completed);
    let seen = events.next(Duration::from_secs(2)).await.unwrap();
    assert!(seen.iter().any(|e| e.kind == "active"), "{seen:?}");
    // A job that does not end in time: its status as it stands.
    let slow = q
        .enqueue(&task(2, "sleep:2000"), JobOptions::default())
        .await
        .unwrap();
    let waited = Instant::now();
    let status = jobs
        .wait_for(&q, &slow, Duration::from_millis(500))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(status.state, JobState::Waiting | JobState::Active));
    assert!(waited.elapsed() < Duration::from_millis(1500));
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
