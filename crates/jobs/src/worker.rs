//! Workers: take jobs one at a time per slot, run their handlers, and report the outcome.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use tokio::sync::{Notify, watch};

use crate::queue::{BackoffRecord, now_ms};
use crate::scripts::{EXTEND, FETCH, FINISH};
use crate::{Backoff, Job, JobId, Queue, Result};

/// What a handler knows of the job it runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JobContext {
    /// The job's id.
    pub id: JobId,
    /// This attempt's number, 1 for the first.
    pub attempt: u32,
}

/// A handler's failure: retried (with the job's backoff, while attempts remain) unless fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retry: bool,
}

impl JobError {
    /// A failure worth another attempt.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
        }
    }

    /// A failure no attempt will fix: the job goes to the dead letter now.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
        }
    }
}

/// Runs jobs of one kind.
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Import { url: String }
/// # impl geostack_jobs::Job for Import { const NAME: &'static str = "import"; }
/// use geostack_jobs::{Handler, JobContext, JobError};
///
/// struct Importer;
///
/// #[async_trait::async_trait]
/// impl Handler<Import> for Importer {
///     async fn handle(&self, job: Import, _ctx: JobContext) -> Result<serde_json::Value, JobError> {
///         Ok(serde_json::json!({ "imported": job.url }))
///     }
/// }
/// ```
#[async_trait]
pub trait Handler<J: Job>: Send + Sync + 'static {
    /// Runs one attempt; its value is kept as the job's result.
    async fn handle(&self, job: J, ctx: JobContext) -> Result<serde_json::Value, JobError>;
}

type Run = Pin<Box<dyn Future<Output = Result<serde_json::Value, JobError>> + Send>>;

/// A spawned task that ends when its owner does: dropping the guard aborts it, so a worker's
/// slots, background tasks and running handlers never outlive the worker's own future.
struct Owned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

trait Erased: Send + Sync {
    fn start(&self, payload: &str, ctx: JobContext) -> Result<Run, String>;
}

struct Typed<J, H> {
    handler: Arc<H>,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job, H: Handler<J>> Erased for Typed<J, H> {
    fn start(&self, payload: &str, ctx: JobContext) -> Result<Run, String> {
        let job: J = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        let handler = Arc::clone(&self.handler);
        Ok(Box::pin(async move { handler.handle(job, ctx).await }))
    }
}

/// How a worker behaves. Every setter's doc gives its default.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    concurrency: usize,
    lease: Duration,
    max_stalls: u32,
    result_ttl: Duration,
    keep_completed: u64,
    shutdown_deadline: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 1,
            lease: Duration::from_secs(3),
            max_stalls: 3,
            result_ttl: Duration::from_secs(24 * 3600),
            keep_completed: 1000,
            shutdown_deadline: Duration::from_secs(10),
        }
    }
}

impl WorkerConfig {
    /// Jobs run at once. Default 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a job's lock lasts without renewal; the worker renews it every third of that
    /// while the job runs, so a job whose worker died is taken back by the sweep (run every
    /// second) at most about this long after the death, and a running job that was cancelled
    /// stops within a third of it. Default 3 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// A job taken back from dead workers more than this many times goes to the dead letter.
    /// Default 3.
    pub fn max_stalls(mut self, n: u32) -> Self {
        self.max_stalls = n;
        self
    }

    /// How long a completed or cancelled job is kept. Default 24 hours.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// How many completed jobs are kept at most. Default 1000.
    pub fn keep_completed(mut self, n: u64) -> Self {
        self.keep_completed = n;
        self
    }

    /// On shutdown, how long running jobs may take to finish; those still running then are
    /// given back to the queue. Default 10 s.
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown_deadline = deadline;
        self
    }
}

/// Runs the jobs of a queue.
///
/// ```no_run
/// # async fn demo(queue: geostack_jobs::Queue, client: redis::Client) -> geostack_jobs::Result<()> {
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Import { url: String }
/// # impl geostack_jobs::Job for Import { const NAME: &'static str = "import"; }
/// # struct Importer;
/// # #[async_trait::async_trait]
/// # impl geostack_jobs::Handler<Import> for Importer {
/// #     async fn handle(&self, _: Import, _: geostack_jobs::JobContext) -> Result<serde_json::Value, geostack_jobs::JobError> { Ok(serde_json::Value::Null) }
/// # }
/// use geostack_jobs::{Worker, WorkerConfig};
///
/// let worker = Worker::new(queue, client, WorkerConfig::default().concurrency(8))
///     .handle::<Import, _>(Importer);
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// // … later, from a signal handler: stop.send(())
/// worker.run(async { let _ = stopped.await; }).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    queue: Queue<ConnectionManager>,
    client: redis::Client,
    config: WorkerConfig,
    handlers: HashMap<&'static str, Arc<dyn Erased>>,
}

struct Inner {
    queue: Queue<ConnectionManager>,
    config: WorkerConfig,
    handlers: HashMap<&'static str, Arc<dyn Erased>>,
    id: String,
    wake: Notify,
    stopping: AtomicBool,
}

/// A job taken by a slot.
struct Taken {
    id: JobId,
    name: String,
    payload: String,
    attempt: u32,
    max_attempts: u32,
    timeout: Option<Duration>,
    backoff: Backoff,
    token: String,
}

type TakenTuple = (String, String, String, u32, u32, u64, String);

enum Outcome {
    Done(serde_json::Value),
    Failed { message: String, retry: bool },
    Release,
    Cancelled,
    Lost,
}

impl Worker {
    /// A worker for `queue`; `client` opens its dedicated blocking connection.
    pub fn new(
        queue: Queue<ConnectionManager>,
        client: redis::Client,
        config: WorkerConfig,
    ) -> Self {
        Self {
            queue,
            client,
            config,
            handlers: HashMap::new(),
        }
    }

    /// Runs jobs of kind `J` with `handler`.
    pub fn handle<J: Job, H: Handler<J>>(mut self, handler: H) -> Self {
        let typed: Arc<dyn Erased> = Arc::new(Typed::<J, H> {
            handler: Arc::new(handler),
            _job: PhantomData,
        });
        self.handlers.insert(J::NAME, typed);
        self
    }

    /// Runs until `shutdown` resolves, then stops taking jobs, lets running ones finish until
    /// the shutdown deadline and gives the rest back to the queue.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`] when the blocking connection cannot be opened; failures
    /// after that are retried.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut blocking = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let inner = Arc::new(Inner {
            queue: self.queue,
            config: self.config,
            handlers: self.handlers,
            id: format!(
                "{}-{}",
                std::process::id(),
                JobId::generate()?.as_str().get(..8).unwrap_or("0")
            ),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
        });
        let (hard_stop, stop_rx) = watch::channel(false);

        // Idle slots wait on `wake`; this task turns enqueue signals into wake-ups.
        let signal_key = format!("{}signal", inner.queue.key_prefix());
        let _waker = {
            let inner = Arc::clone(&inner);
            Owned(tokio::spawn(async move {
                while !inner.stopping.load(Ordering::Acquire) {
                    let popped: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
                        .arg(&signal_key)
                        .arg(1)
                        .query_async(&mut blocking)
                        .await;
                    match popped {
                        Ok(_) => inner.wake.notify_waiters(),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }))
        };
        let _sweeper = {
            let inner = Arc::clone(&inner);
            Owned(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while !inner.stopping.load(Ordering::Acquire) {
                    tick.tick().await;
                    if inner
                        .queue
                        .sweep(inner.config.max_stalls)
                        .await
                        .unwrap_or(0)
                        > 0
                    {
                        inner.wake.notify_waiters();
                    }
                }
            }))
        };
        let mut slots: Vec<Owned<()>> = (0..inner.config.concurrency)
            .map(|_| Owned(tokio::spawn(slot(Arc::clone(&inner), stop_rx.clone()))))
            .collect();

        shutdown.await;
        inner.stopping.store(true, Ordering::Release);
        inner.wake.notify_waiters();
        let all = futures_util::future::join_all(slots.iter_mut().map(|s| &mut s.0));
        tokio::pin!(all);
        if tokio::time::timeout(inner.config.shutdown_deadline, &mut all)
            .await
            .is_err()
        {
            let _ = hard_stop.send(true);
            let _ = all.await;
        }
        Ok(())
    }
}

async fn slot(inner: Arc<Inner>, mut hard_stop: watch::Receiver<bool>) {
    let mut next: Option<Taken> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => {
                if inner.stopping.load(Ordering::Acquire) {
                    return;
                }
                match fetch(&inner).await {
                    Ok(Some(job)) => job,
                    Ok(None) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), inner.wake.notified())
                            .await;
                        continue;
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
        };
        let outcome = run_job(&inner, &job, &mut hard_stop).await;
        let fetch_next = !inner.stopping.load(Ordering::Acquire);
        next = match finish(&inner, &job, outcome, fetch_next).await {
            Ok(next) => next,
            // Redis is away: the job's lock will expire and the sweep will take it back.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        };
    }
}

async fn run_job(inner: &Inner, job: &Taken, hard_stop: &mut watch::Receiver<bool>) -> Outcome {
    let Some(handler) = inner.handlers.get(job.name.as_str()) else {
        return Outcome::Failed {
            message: format!("no handler for jobs named {}", job.name),
            retry: false,
        };
    };
    let ctx = JobContext {
        id: job.id.clone(),
        attempt: job.attempt,
    };
    let run = match handler.start(&job.payload, ctx) {
        Ok(run) => run,
        Err(e) => {
            return Outcome::Failed {
                message: format!("the payload does not deserialize: {e}"),
                retry: false,
            };
        }
    };
    let mut task = Owned(tokio::spawn(run));
    let timeout = tokio::time::sleep(job.timeout.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(timeout);
    let lease = inner.config.lease;
    // The first renewal a third of the lease from now. (An interval's immediate first tick
    // would wait for the timer driver's next turn, up to a millisecond, on every job.)
    let period = lease / 3;
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            done = &mut task.0 => {
                return match done {
                    Ok(Ok(value)) => Outcome::Done(value),
                    Ok(Err(e)) => Outcome::Failed { message: e.message, retry: e.retry },
                    Err(join) => Outcome::Failed { message: panic_message(join), retry: true },
                };
            }
            () = &mut timeout => {
                drop(task);
                let limit = job.timeout.unwrap_or_default();
                return Outcome::Failed { message: format!("timed out after {limit:?}"), retry: true };
            }
            _ = renew.tick() => {
                let deadline = now_ms() + u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
                let kept: redis::RedisResult<i64> = EXTEND
                    .key(inner.queue.route_key())
                    .arg(inner.queue.key_prefix())
                    .arg(job.id.as_str())
                    .arg(&job.token)
                    .arg(deadline)
                    .invoke_async(&mut inner.queue.conn())
                    .await;
                match kept {
                    Ok(0) => return Outcome::Lost,
                    // Dropping the task stops the handler where it waits.
                    Ok(2) => return Outcome::Cancelled,
                    _ => {}
                }
            }
            changed = hard_stop.changed() => {
                if changed.is_err() || *hard_stop.borrow() {
                    return Outcome::Release;
                }
            }
        }
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            format!("the handler panicked: {what}")
        }
        Err(_) => "the handler was cancelled".into(),
    }
}

async fn fetch(inner: &Inner) -> Result<Option<Taken>> {
    let token = JobId::generate()?.as_str().to_owned();
    let taken: Option<TakenTuple> = FETCH
        .key(inner.queue.route_key())
        .arg(inner.queue.key_prefix())
        .arg(now_ms())
        .arg(&token)
        .arg(&inner.id)
        .arg(u64::try_from(inner.config.lease.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(&mut inner.queue.conn())
        .await?;
    taken.map(|t| taken_from(t, token)).transpose()
}

fn taken_from(
    (id, name, payload, attempt, max_attempts, timeout_ms, backoff): TakenTuple,
    token: String,
) -> Result<Taken> {
    let backoff = serde_json::from_str::<BackoffRecord>(&backoff)
        .map(|r| Backoff::from(&r))
        .unwrap_or(Backoff::Fixed(Duration::from_secs(1)));
    Ok(Taken {
        id: JobId::new(id)?,
        name,
        payload,
        attempt,
        max_attempts,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        backoff,
        token,
    })
}

async fn finish(
    inner: &Inner,
    job: &Taken,
    outcome: Outcome,
    fetch_next: bool,
) -> Result<Option<Taken>> {
    let (kind, text, delay) = match outcome {
        Outcome::Done(value) => ("done", value.to_string(), Duration::ZERO),
        Outcome::Failed { message, retry } if retry && job.attempt < job.max_attempts => {
            let delay = job.backoff.delay(job.attempt, random_unit());
            ("retry", message, delay)
        }
        Outcome::Failed { message, .. } => ("fail", message, Duration::ZERO),
        Outcome::Release => ("release", String::new(), Duration::ZERO),
        Outcome::Cancelled => ("cancel", String::new(), Duration::ZERO),
        Outcome::Lost => {
            // Taken back by the sweep meanwhile: another worker has it; report nothing.
            return if fetch_next {
                fetch(inner).await
            } else {
                Ok(None)
            };
        }
    };
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let next_token = JobId::generate()?.as_str().to_owned();
    let (_, next): (i64, Option<TakenTuple>) = FINISH
        .key(inner.queue.route_key())
        .arg(inner.queue.key_prefix())
        .arg(job.id.as_str())
        .arg(&job.token)
        .arg(now_ms())
        .arg(kind)
        .arg(text)
        .arg(ms(delay))
        .arg(ms(inner.config.result_ttl))
        .arg(inner.config.keep_completed)
        .arg(if fetch_next { "1" } else { "0" })
        .arg(&next_token)
        .arg(&inner.id)
        .arg(ms(inner.config.lease))
        .invoke_async(&mut inner.queue.conn())
        .await?;
    next.map(|t| taken_from(t, next_token)).transpose()
}

/// A number in `0..1` from the operating system's random source (for backoff jitter).
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
