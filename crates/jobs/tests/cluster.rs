//! The core of the queue on a real Redis Cluster of three masters: each queue lives in one
//! slot (its hash tag), every script runs there, and workers block on connections of their own
//! from the cluster client. Queues are named so that they land on different masters.
mod common;

use common::*;
use geostack_jobs::Schedule;
use geostack_testkit::RedisCluster;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

fn start_on(
    client: &ClusterClient,
    queue: &Queue<ClusterConnection>,
    recorder: &Recorder,
    config: WorkerConfig,
) -> Running {
    let (stop, rx) = tokio::sync::oneshot::channel();
    let worker =
        Worker::new(queue.clone(), client.clone(), config).handle::<Task, _>(recorder.clone());
    let task = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    Running { stop, task }
}

#[tokio::test]
async fn the_core_suite_runs_on_a_cluster() {
    let cluster = RedisCluster::start();
    let client = ClusterClient::new(cluster.urls()).unwrap();
    let conn = client.get_async_connection().await.unwrap();
    let mut slots = Vec::new();
    for name in ["alpha", "bravo", "echo", "golf"] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(name)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        slots.push(slot);
    }
    // The three masters hold 0–5460, 5461–10922 and 10923–16383.
    assert!(
        slots.iter().any(|s| *s < 5461) && slots.iter().any(|s| *s >= 10923),
        "{slots:?}"
    );

    // Results, priorities, delays.
    let q = Queue::with_prefix(conn.clone(), QueueName::new("alpha").unwrap(), "c:");
    let ids = q
        .enqueue_bulk(
            &(0..20).map(|n| task(n, "ok")).collect::<Vec<_>>(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let later = q
        .enqueue(
            &task(99, "ok"),
            JobOptions::default().delay(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let first = q
        .enqueue(&task(50, "ok"), JobOptions::default().priority(200))
        .await
        .unwrap();
    let recorder = Recorder::default();
    let w = start_on(
        &client,
        &q,
        &recorder,
        WorkerConfig::default().concurrency(4),
    );
    until_completed(&q, 22, Duration::from_secs(10)).await;
    let status = q.status(&ids[7]).await.unwrap().unwrap();
    assert_eq!(status.result, Some(serde_json::json!({"double": 14})));
    assert_eq!(
        recorder.runs.lock().unwrap()[0].0,
        50,
        "the high priority first"
    );
    assert_eq!(
        recorder.runs.lock().unwrap().last().unwrap().0,
        99,
        "the delayed last"
    );
    assert!(q.status(&first).await.unwrap().is_some() && q.status(&later).await.unwrap().is_some());
    assert_eq!(q.workers().await.unwrap().len(), 1);
    w.stop().await;
    assert!(q.workers().await.unwrap().is_empty());

    // Retries into the dead letter, re-drive; unique keys; cancellation.
    let q = Queue::with_prefix(conn.clone(), QueueName::new("bravo").unwrap(), "c:");
    let fast = JobOptions::default().backoff(Backoff::Fixed(Duration::from_millis(20)));
    let failing = q
        .enqueue(&task(1, "fail"), fast.clone().attempts(2))
        .await
        .unwrap();
    let once = q
        .enqueue(&task(2, "sleep:300"), JobOptions::default().unique("u"))
        .await
        .unwrap();
    assert_eq!(
        q.enqueue(&task(3, "ok"), JobOptions::default().unique("u"))
            .await
            .unwrap(),
        once
    );
    let waiting = q
        .enqueue(
            &task(4, "ok"),
            JobOptions::default().delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(q.cancel(&waiting).await.unwrap(), Some(JobState::Cancelled));
    let recorder = Recorder::default();
    let w = start_on(
        &client,
        &q,
        &recorder,
        WorkerConfig::default().concurrency(2),
    );
    until(
        "the failing job dead",
        Duration::from_secs(10),
        async || q.status(&failing).await.unwrap().unwrap().state == JobState::Dead,
    )
    .await;
    assert_eq!(q.status(&failing).await.unwrap().unwrap().attempts, 2);
    assert_eq!(q.redrive(10).await.unwrap(), 1);
    until(
        "dead again after the re-drive",
        Duration::from_secs(10),
        async || {
            let s = q.status(&failing).await.unwrap().unwrap();
            s.state == JobState::Dead
                && s.attempts == 2
                && recorder
                    .runs
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.0 == 1)
                    .count()
                    == 4
        },
    )
    .await;
    let events = q.events(None, 1000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "redriven" && e.job == failing.as_str())
    );
    w.stop().await;

    // A worker that dies: its job runs again on another, found through the heartbeat.
    let q = Queue::with_prefix(conn.clone(), QueueName::new("echo").unwrap(), "c:");
    let long = q
        .enqueue(&task(5, "sleep:60000"), JobOptions::default())
        .await
        .unwrap();
    let config = || WorkerConfig::default().heartbeat(Duration::from_millis(200));
    let a = start_on(&client, &q, &Recorder::default(), config());
    until("running", Duration::from_secs(5), async || {
        q.status(&long).await.unwrap().unwrap().state == JobState::Active
    })
    .await;
    a.task.abort();
    let b = start_on(&client, &q, &Recorder::default(), config());
    until("taken over", Duration::from_secs(5), async || {
        let status = q.status(&long).await.unwrap().unwrap();
        status.stalls == 1 && status.state == JobState::Active
    })
    .await;
    assert_eq!(q.cancel(&long).await.unwrap(), Some(JobState::Active));
    until("cancelled", Duration::from_secs(5), async || {
        q.status(&long).await.unwrap().unwrap().state == JobState::Cancelled
    })
    .await;
    b.stop().await;

    // Tenants in turn and repeatable jobs.
    let q = Queue::with_prefix(conn, QueueName::new("golf").unwrap(), "c:");
    for (tenant, base) in [("x", 100), ("y", 200)] {
        let jobs: Vec<Task> = (0..3).map(|i| task(base + i, "ok")).collect();
        q.enqueue_bulk(&jobs, JobOptions::default().tenant(tenant))
            .await
            .unwrap();
    }
    q.repeat(
        "tick",
        &task(900, "ok"),
        Schedule::every(Duration::from_secs(1)).unwrap(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    let recorder = Recorder::default();
    let w = start_on(&client, &q, &recorder, WorkerConfig::default());
    until(
        "the tenants' jobs and a repeat run",
        Duration::from_secs(10),
        async || {
            recorder.runs.lock().unwrap().iter().any(|r| r.0 == 900)
                && recorder
                    .runs
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.0 < 900)
                    .count()
                    == 6
        },
    )
    .await;
    w.stop().await;
    let order: Vec<u32> = recorder
        .runs
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 < 900)
        .map(|r| r.0 / 100)
        .collect();
    assert_eq!(order, [1, 2, 1, 2, 1, 2]);
}
