//! Workers: take jobs one at a time per slot from one or more queues, run their handlers, and
//! report the outcome; register a heartbeat; sweep for the jobs of dead workers.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use tokio::sync::{Notify, watch};

use crate::handler::{Erased, Reporter, Typed};
use crate::queue::{BackoffRecord, now_ms};
use crate::registry::host_name;
use crate::scripts::{EXTEND, FETCH, FINISH};
use crate::{Backoff, Connector, Handler, Job, JobContext, JobId, Queue, Result, WorkerConfig};

/// Runs the jobs of one or more queues.
///
/// ```no_run
/// # async fn demo(queue: geostack_jobs::Queue, urgent: geostack_jobs::Queue, client: redis::Client) -> geostack_jobs::Result<()> {
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Import { url: String }
/// # impl geostack_jobs::Job for Import { const NAME: &'static str = "import"; }
/// # struct Importer;
/// # #[async_trait::async_trait]
/// # impl geostack_jobs::Handler<Import> for Importer {
/// #     async fn handle(&self, _: Import, _: geostack_jobs::JobContext) -> Result<serde_json::Value, geostack_jobs::JobError> { Ok(serde_json::Value::Null) }
/// # }
/// use geostack_jobs::{Worker, WorkerConfig};
///
/// let worker = Worker::new(urgent, client, WorkerConfig::default().concurrency(8))
///     .queue(queue) // taken from when `urgent` has nothing
///     .handle::<Import, _>(Importer);
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// // … later, from a signal handler: stop.send(())
/// worker.run(async { let _ = stopped.await; }).await?;
/// # Ok(()) }
/// ```
///
/// On a Redis Cluster, give it queues on a cluster connection and the
/// [`redis::cluster::ClusterClient`] (see [`Connector`]).
pub struct Worker<C = ConnectionManager, K = redis::Client> {
    queues: Vec<Queue<C>>,
    connector: Arc<K>,
    config: WorkerConfig,
    handlers: HashMap<&'static str, Arc<dyn Erased>>,
}

struct Inner<C> {
    queues: Vec<Queue<C>>,
    /// Per queue, what a handler's context reports progress through.
    reporters: Vec<Arc<dyn Reporter>>,
    config: WorkerConfig,
    handlers: HashMap<&'static str, Arc<dyn Erased>>,
    id: String,
    wake: Notify,
    stopping: AtomicBool,
}

/// A job taken by a slot.
struct Taken {
    queue: usize,
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

/// What the take step of a script answered.
enum Take {
    Job(TakenTuple),
    /// The queue's rate limit: wait this many milliseconds.
    Limited(u64),
    Empty,
}

impl redis::FromRedisValue for Take {
    fn from_redis_value(v: redis::Value) -> std::result::Result<Self, redis::ParsingError> {
        match v {
            redis::Value::Nil => Ok(Self::Empty),
            redis::Value::Array(mut items) if items.len() == 1 => {
                Ok(Self::Limited(redis::from_redis_value(items.remove(0))?))
            }
            other => Ok(Self::Job(redis::from_redis_value(other)?)),
        }
    }
}

enum Outcome {
    Done(serde_json::Value),
    Failed { message: String, retry: bool },
    Release,
    Cancelled,
    Lost,
}

/// A spawned task that ends when its owner does: dropping the guard aborts it, so a worker's
/// slots, background tasks and running handlers never outlive the worker's own future.
struct Owned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<C, K> Worker<C, K>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
    K: Connector,
{
    /// A worker for `queue`; `connector` (a [`redis::Client`], or a
    /// [`redis::cluster::ClusterClient`]) opens its dedicated blocking connections.
    pub fn new(queue: Queue<C>, connector: K, config: WorkerConfig) -> Self {
        Self {
            queues: vec![queue],
            connector: Arc::new(connector),
            config,
            handlers: HashMap::new(),
        }
    }

    /// Also takes jobs from `queue`, after the queues given before it: a slot looks at them in
    /// order and takes from the first that has a job.
    pub fn queue(mut self, queue: Queue<C>) -> Self {
        self.queues.push(queue);
        self
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
    /// the shutdown deadline, gives the rest back to their queues and leaves the registry.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`] when Redis cannot be reached at the start; failures after
    /// that are retried.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let reporters = self
            .queues
            .iter()
            .map(|q| Arc::new(q.clone()) as Arc<dyn Reporter>)
            .collect();
        let inner = Arc::new(Inner {
            queues: self.queues,
            reporters,
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
        let host = host_name();
        let names: Vec<&str> = inner.queues.iter().map(|q| q.name().as_str()).collect();
        let names = names.join(",");
        let started = now_ms();
        // Registered before the first job is taken, so the sweep never takes a live worker
        // for a dead one.
        for q in &inner.queues {
            q.beat(&inner.id, inner.config.worker_ttl(), &host, &names, started)
                .await?;
        }
        let (hard_stop, stop_rx) = watch::channel(false);

        let _heart = {
            let inner = Arc::clone(&inner);
            Owned(tokio::spawn(async move {
                let mut tick = tokio::time::interval(inner.config.heartbeat);
                loop {
                    tick.tick().await;
                    for q in &inner.queues {
                        let _ = q
                            .beat(&inner.id, inner.config.worker_ttl(), &host, &names, started)
                            .await;
                    }
                }
            }))
        };
        // Idle slots wait on `wake`; these tasks turn enqueue signals into wake-ups.
        let _wakers: Vec<Owned<()>> = inner
            .queues
            .iter()
            .map(|q| {
                let inner = Arc::clone(&inner);
                let signal = format!("{}signal", q.key_prefix());
                Owned(tokio::spawn(wake_on_signal(
                    inner,
                    Arc::clone(&self.connector),
                    signal,
                )))
            })
            .collect();
        let _sweeper = {
            let inner = Arc::clone(&inner);
            Owned(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while !inner.stopping.load(Ordering::Acquire) {
                    tick.tick().await;
                    for q in &inner.queues {
                        let taken = q
                            .sweep(inner.config.max_stalls, inner.config.worker_ttl())
                            .await
                            .unwrap_or(0);
                        let fired = q.fire_due().await.unwrap_or(0);
                        if taken > 0 || fired > 0 {
                            inner.wake.notify_waiters();
                        }
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
        for q in &inner.queues {
            let _ = q.unregister(&inner.id).await;
        }
        Ok(())
    }
}

/// Blocks on the queue's signal list on a connection of its own (no response timeout), and
/// wakes idle slots at each push; reconnects when the connection fails.
async fn wake_on_signal<C, K: Connector>(inner: Arc<Inner<C>>, connector: Arc<K>, signal: String) {
    let mut conn = None;
    while !inner.stopping.load(Ordering::Acquire) {
        let blocking = match &mut conn {
            Some(c) => c,
            None => match connector.blocking().await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let popped: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
            .arg(&signal)
            .arg(1)
            .query_async(blocking)
            .await;
        match popped {
            Ok(_) => inner.wake.notify_waiters(),
            Err(_) => {
                conn = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn slot<C>(inner: Arc<Inner<C>>, mut hard_stop: watch::Receiver<bool>)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let mut next: Option<Taken> = None;
    // Per queue: no job is to be taken before this time (its rate limit).
    let mut limited_until = vec![0u64; inner.queues.len()];
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => {
                if inner.stopping.load(Ordering::Acquire) {
                    return;
                }
                match fetch_any(&inner, &mut limited_until).await {
                    Ok(Some(job)) => job,
                    Ok(None) => {
                        let now = now_ms();
                        let soonest = limited_until
                            .iter()
                            .filter(|t| **t > now)
                            .min()
                            .map_or(1000, |t| t - now);
                        let _ = tokio::time::timeout(
                            Duration::from_millis(soonest.min(1000)),
                            inner.wake.notified(),
                        )
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
            Ok((next, limited)) => {
                if let Some(ms) = limited {
                    limited_until[job.queue] = now_ms() + ms;
                }
                next
            }
            // Redis is away: the job's lock will expire and the sweep will take it back.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        };
    }
}

/// The first job of the first queue that has one and is not rate limited.
async fn fetch_any<C>(inner: &Inner<C>, limited_until: &mut [u64]) -> Result<Option<Taken>>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    for (i, until) in limited_until.iter_mut().enumerate() {
        if *until > now_ms() {
            continue;
        }
        match fetch(inner, i).await? {
            (Some(job), _) => return Ok(Some(job)),
            (None, Some(ms)) => *until = now_ms() + ms,
            (None, None) => {}
        }
    }
    Ok(None)
}

async fn run_job<C>(inner: &Inner<C>, job: &Taken, hard_stop: &mut watch::Receiver<bool>) -> Outcome
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let Some(handler) = inner.handlers.get(job.name.as_str()) else {
        return Outcome::Failed {
            message: format!("no handler for jobs named {}", job.name),
            retry: false,
        };
    };
    let queue = &inner.queues[job.queue];
    let ctx = JobContext::new(
        job.id.clone(),
        job.attempt,
        Arc::clone(&inner.reporters[job.queue]),
        job.token.clone(),
    );
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
    // Renewal, which also tells of a cancellation, every third of the lease or every second,
    // whichever is sooner; the first one period from now. (An interval's immediate first tick
    // would wait for the timer driver's next turn, up to a millisecond, on every job.)
    let period = (lease / 3).min(Duration::from_secs(1));
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
                    .key(queue.route_key())
                    .arg(queue.key_prefix())
                    .arg(job.id.as_str())
                    .arg(&job.token)
                    .arg(deadline)
                    .invoke_async(&mut queue.conn())
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

/// Takes a job from queue `queue`; also says how long its rate limit asks to wait.
async fn fetch<C>(inner: &Inner<C>, queue: usize) -> Result<(Option<Taken>, Option<u64>)>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let q = &inner.queues[queue];
    let token = JobId::generate()?.as_str().to_owned();
    let taken: Take = FETCH
        .key(q.route_key())
        .arg(q.key_prefix())
        .arg(now_ms())
        .arg(&token)
        .arg(&inner.id)
        .arg(u64::try_from(inner.config.lease.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(&mut q.conn())
        .await?;
    taken_from(taken, queue, token)
}

fn taken_from(take: Take, queue: usize, token: String) -> Result<(Option<Taken>, Option<u64>)> {
    let (id, name, payload, attempt, max_attempts, timeout_ms, backoff) = match take {
        Take::Job(t) => t,
        Take::Limited(ms) => return Ok((None, Some(ms))),
        Take::Empty => return Ok((None, None)),
    };
    let backoff = serde_json::from_str::<BackoffRecord>(&backoff)
        .map(|r| Backoff::from(&r))
        .unwrap_or(Backoff::Fixed(Duration::from_secs(1)));
    Ok((
        Some(Taken {
            queue,
            id: JobId::new(id)?,
            name,
            payload,
            attempt,
            max_attempts,
            timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
            backoff,
            token,
        }),
        None,
    ))
}

/// Reports the job's outcome and takes the next job of the same queue in the same script.
async fn finish<C>(
    inner: &Inner<C>,
    job: &Taken,
    outcome: Outcome,
    fetch_next: bool,
) -> Result<(Option<Taken>, Option<u64>)>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
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
                fetch(inner, job.queue).await
            } else {
                Ok((None, None))
            };
        }
    };
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let config = &inner.config;
    let q = &inner.queues[job.queue];
    let next_token = JobId::generate()?.as_str().to_owned();
    let (_, next): (i64, Take) = FINISH
        .key(q.route_key())
        .arg(q.key_prefix())
        .arg(job.id.as_str())
        .arg(&job.token)
        .arg(now_ms())
        .arg(kind)
        .arg(text)
        .arg(ms(delay))
        .arg(ms(config.result_ttl))
        .arg(config.keep_completed)
        .arg(if fetch_next { "1" } else { "0" })
        .arg(&next_token)
        .arg(&inner.id)
        .arg(ms(config.lease))
        .arg(config.keep_completed_for.map_or(0, ms))
        .arg(
            config
                .keep_dead
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        )
        .arg(config.keep_dead_for.map_or(0, ms))
        .invoke_async(&mut q.conn())
        .await?;
    taken_from(next, job.queue, next_token)
}

/// A number in `0..1` from the operating system's random source (for backoff jitter).
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
