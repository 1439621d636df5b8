//! What the queue tests share: a task type whose payload says what its handler does, a
//! recording handler, a queue under the test's prefix, a running worker, and waiting.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::allow_attributes,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a module shared by test files, each using a different part"
)]

pub use std::sync::{Arc, Mutex};
pub use std::time::{Duration, Instant};

pub use async_trait::async_trait;
pub use geostack_jobs::{
    Backoff, Handler, Job, JobContext, JobError, JobOptions, JobState, Queue, QueueName, Worker,
    WorkerConfig,
};
pub use geostack_testkit::TestRedis;
pub use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Task {
    pub n: u32,
    /// What the handler does: "ok", "fail", "fatal", "panic", "sleep:<ms>", "block:<ms>",
    /// "progress" (reports `{"step": n}`, then sleeps 300 ms), "log" (logs two lines).
    pub action: String,
}

impl Job for Task {
    const NAME: &'static str = "task";
}

/// A job with the same name but another payload shape: it cannot deserialize as a Task.
#[derive(Serialize, Deserialize)]
pub struct Impostor {
    pub something: Vec<bool>,
}

impl Job for Impostor {
    const NAME: &'static str = "task";
}

#[derive(Clone, Default)]
pub struct Recorder {
    pub runs: Arc<Mutex<Vec<(u32, u32)>>>,
}

#[async_trait]
impl Handler<Task> for Recorder {
    async fn handle(&self, job: Task, ctx: JobContext) -> Result<serde_json::Value, JobError> {
        self.runs.lock().unwrap().push((job.n, ctx.attempt));
        match job.action.as_str() {
            "fail" => Err(JobError::retry(format!("failed {}", job.n))),
            "fatal" => Err(JobError::fatal("no way")),
            "panic" => panic!("boom {}", job.n),
            "progress" => {
                ctx.progress(serde_json::json!({ "step": job.n }))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(serde_json::json!("progressed"))
            }
            "log" => {
                for line in ["reading", "writing"] {
                    assert!(ctx.log(line).await.unwrap());
                }
                Ok(serde_json::json!("logged"))
            }
            // Blocks its thread, as CPU-bound work written without spawn_blocking does.
            a if a.starts_with("block:") => {
                std::thread::sleep(Duration::from_millis(a[6..].parse().unwrap()));
                Ok(serde_json::json!({"blocked": job.n}))
            }
            a if a.starts_with("sleep:") => {
                tokio::time::sleep(Duration::from_millis(a[6..].parse().unwrap())).await;
                Ok(serde_json::json!({"slept": job.n}))
            }
            _ => Ok(serde_json::json!({"double": job.n * 2})),
        }
    }
}

pub fn task(n: u32, action: &str) -> Task {
    Task {
        n,
        action: action.into(),
    }
}

pub async fn queue(redis: &TestRedis, name: &str) -> Queue {
    Queue::with_prefix(
        redis.connection(),
        QueueName::new(name).unwrap(),
        redis.prefix(),
    )
}

pub struct Running {
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<geostack_jobs::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

pub fn start(
    redis: &TestRedis,
    queue: &Queue,
    recorder: &Recorder,
    config: WorkerConfig,
) -> Running {
    let (stop, rx) = tokio::sync::oneshot::channel();
    let worker = Worker::new(queue.clone(), redis.client().clone(), config)
        .handle::<Task, _>(recorder.clone());
    let task = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    Running { stop, task }
}

pub async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn fast_backoff() -> JobOptions {
    JobOptions::default().backoff(Backoff::Fixed(Duration::from_millis(50)))
}

/// Waits until `queue` holds `n` completed jobs, for at most `limit`.
pub async fn until_completed<C>(queue: &Queue<C>, n: u64, limit: Duration)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    until(&format!("{n} completed"), limit, async || {
        queue.counts().await.unwrap().completed == n
    })
    .await;
}
