//! Workers: take jobs from one or more queues for their free slots, run their handlers, and
//! report the outcomes (batched with the next take); register a heartbeat; sweep for the jobs
//! of dead workers.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument as _;

use futures_util::FutureExt as _;
use redis::aio::{ConnectionLike, ConnectionManager};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::handler::{Erased, Reporter, Typed};
use crate::queue::{BackoffRecord, millis, now_ms};
use crate::registry::host_name;
use crate::scripts::{EXTEND, FINISH};
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
    /// Per lane, what wakes it when it waits for jobs.
    wake: Vec<Notify>,
    stopping: AtomicBool,
}

/// A job taken from a queue.
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

type TakenTuple = (String, String, String, u32, u32, u64, String, String);

/// What the take step of a script answered: the jobs taken, and how long the queue's rate
/// limit asks to wait before the next take (0: no wait).
struct Took {
    wait_ms: u64,
    jobs: Vec<TakenTuple>,
}

impl redis::FromRedisValue for Took {
    fn from_redis_value(v: redis::Value) -> std::result::Result<Self, redis::ParsingError> {
        let mut items: Vec<redis::Value> = redis::from_redis_value(v)?;
        if items.is_empty() {
            return Err("an empty take reply".into());
        }
        let wait_ms = redis::from_redis_value(items.remove(0))?;
        let jobs = items
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self { wait_ms, jobs })
    }
}

enum Outcome {
    Done(serde_json::Value),
    Failed { message: String, retry: bool },
    Release,
    Cancelled,
    Lost,
}

/// A finished job's outcome, waiting for its queue's next finish call.
struct Report {
    id: JobId,
    token: String,
    kind: &'static str,
    text: String,
    delay_ms: u64,
}

/// What a job's task hands back to the worker when the job is over.
struct Ended {
    queue: usize,
    /// `None` when the job's lock was lost: there is nothing to report.
    report: Option<Report>,
}

/// The most jobs one script call takes, and the most outcomes it reports.
const BATCH: usize = 64;

/// How many lanes share a worker's slots: each lane has one script call out at a time, so
/// with two, one lane's jobs start while the other's call is in Redis.
fn lanes(concurrency: usize) -> usize {
    if concurrency >= LANE_MIN { LANES } else { 1 }
}
const LANES: usize = 2;
const LANE_MIN: usize = 8;

impl<C> Inner<C> {
    fn wake_all(&self) {
        for lane in &self.wake {
            lane.notify_one();
        }
    }
}

/// A spawned task that ends when its owner does: dropping the guard aborts it, so a worker's
/// lanes and background tasks (and with the lanes, their running jobs) never outlive the
/// worker's own future.
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

    /// Also takes jobs from `queue`, after the queues given before it: free slots are filled
    /// from them in order, from a later queue only what the earlier ones did not have.
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
        let lanes = lanes(self.config.concurrency);
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
            wake: (0..lanes).map(|_| Notify::new()).collect(),
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
        // Lanes with free slots wait on `wake`; these tasks turn enqueue signals into wake-ups.
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
                            inner.wake_all();
                        }
                    }
                }
            }))
        };
        let concurrency = inner.config.concurrency;
        let mut drivers: Vec<Owned<()>> = (0..lanes)
            .map(|lane| {
                // The slots shared out among the lanes, the first ones taking the remainder.
                let slots = concurrency / lanes + usize::from(lane < concurrency % lanes);
                let run = drive(Arc::clone(&inner), stop_rx.clone(), lane, slots);
                Owned(tokio::spawn(run))
            })
            .collect();

        shutdown.await;
        inner.stopping.store(true, Ordering::Release);
        inner.wake_all();
        let all = futures_util::future::join_all(drivers.iter_mut().map(|d| &mut d.0));
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
/// wakes the lanes at each push; reconnects when the connection fails.
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
            Ok(_) => inner.wake_all(),
            Err(_) => {
                conn = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The worker's loop: hands the outcomes of finished jobs to their queues and takes new jobs
/// for the free slots, both in the same script call per queue, as many at once as there are
/// (up to [`BATCH`]). While one call is out, the outcomes of jobs finishing meanwhile gather
/// for the next, so the round trips per job fall as the load rises.
async fn drive<C>(inner: Arc<Inner<C>>, hard_stop: watch::Receiver<bool>, lane: usize, slots: usize)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let queues = inner.queues.len();
    let mut running: JoinSet<Ended> = JoinSet::new();
    let mut reports: Vec<Vec<Report>> = (0..queues).map(|_| Vec::new()).collect();
    // Per queue: its last take found fewer jobs than asked (cleared by an enqueue signal, a
    // sweep that gave jobs back, or each second for delayed jobs come due).
    let mut empty = vec![false; queues];
    // Per queue: no job is to be taken before this time (its rate limit).
    let mut limited_until = vec![0u64; queues];
    loop {
        gather(&mut running, &mut reports).await;
        let stopping = inner.stopping.load(Ordering::Acquire);
        if stopping && running.is_empty() && reports.iter().all(Vec::is_empty) {
            return;
        }
        let mut free = if stopping {
            0
        } else {
            slots.saturating_sub(running.len())
        };
        let mut called = false;
        let mut failed = false;
        for q in 0..queues {
            let now = now_ms();
            let may_take = free > 0 && limited_until[q] <= now;
            // A queue thought empty is asked again only when a call goes to it anyway.
            if reports[q].is_empty() && (!may_take || empty[q]) {
                continue;
            }
            let want = if may_take { free.min(BATCH) } else { 0 };
            let batch: Vec<Report> = {
                let n = reports[q].len().min(BATCH);
                reports[q].drain(..n).collect()
            };
            match finish_and_take(&inner, q, &batch, want).await {
                Ok((jobs, wait_ms)) => {
                    called = true;
                    if want > 0 {
                        empty[q] = jobs.len() < want && wait_ms == 0;
                    }
                    if wait_ms > 0 {
                        limited_until[q] = now_ms() + wait_ms;
                    }
                    free = free.saturating_sub(jobs.len());
                    for job in jobs {
                        let inner = Arc::clone(&inner);
                        let mut hard_stop = hard_stop.clone();
                        // A job run's span: which job, never its payload.
                        let span = tracing::info_span!(
                            "job",
                            queue = inner.queues[job.queue].name().as_str(),
                            id = %job.id,
                            name = %job.name,
                            attempt = job.attempt,
                        );
                        running.spawn(
                            async move {
                                let outcome = run_job(&inner, &job, &mut hard_stop).await;
                                Ended {
                                    queue: job.queue,
                                    report: report(&job, outcome),
                                }
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(_) => {
                    // Redis is away: the outcomes wait for the next call (their locks hold for
                    // the lease; after that the sweep takes the jobs back, and an outcome sent
                    // late is dropped for its lost lock).
                    reports[q].splice(0..0, batch);
                    failed = true;
                }
            }
        }
        if failed {
            if *hard_stop.borrow() {
                // Shutting down past the deadline with Redis away: give up the outcomes.
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if called {
            continue;
        }
        // Nothing to send: wait for a job to end, a wake-up, or the next due time.
        let now = now_ms();
        let soonest = limited_until
            .iter()
            .filter(|t| **t > now)
            .min()
            .map_or(1000, |t| t - now)
            .min(1000);
        tokio::select! {
            Some(ended) = running.join_next(), if !running.is_empty() => {
                collect(ended, &mut reports);
            }
            () = inner.wake[lane].notified() => empty.fill(false),
            () = tokio::time::sleep(Duration::from_millis(soonest)) => empty.fill(false),
        }
    }
}

/// Collects the jobs that ended. Jobs ending together go in one call: running jobs get turns
/// to end as long as that brings more (no timer: a lone job's outcome waits for nothing).
async fn gather(running: &mut JoinSet<Ended>, reports: &mut [Vec<Report>]) {
    let mut first = true;
    loop {
        let before = running.len();
        while let Some(ended) = running.try_join_next() {
            collect(ended, reports);
        }
        if running.is_empty() || (running.len() == before && !first) {
            return;
        }
        first = false;
        tokio::task::yield_now().await;
    }
}

fn collect(ended: std::result::Result<Ended, tokio::task::JoinError>, reports: &mut [Vec<Report>]) {
    // A job task that itself failed (it catches its handler's panics) has nothing to report:
    // its lock expires and the sweep takes the job back.
    if let Ok(Ended {
        queue,
        report: Some(report),
    }) = ended
    {
        reports[queue].push(report);
    }
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
    // The handler runs in this task; a panic in it is caught here, and returning drops it
    // where it waits.
    let mut run = std::panic::AssertUnwindSafe(run).catch_unwind();
    let timeout = async {
        match job.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    let lease = inner.config.lease;
    // Renewal, which also tells of a cancellation, every third of the lease or every second,
    // whichever is sooner; the first one period from now. (An interval's immediate first tick
    // would wait for the timer driver's next turn, up to a millisecond, on every job.)
    let period = (lease / 3).min(Duration::from_secs(1));
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            biased;
            done = &mut run => {
                return match done {
                    Ok(Ok(value)) => Outcome::Done(value),
                    Ok(Err(e)) => Outcome::Failed { message: e.message, retry: e.retry },
                    Err(panic) => Outcome::Failed { message: panic_message(&*panic), retry: true },
                };
            }
            () = &mut timeout => {
                let limit = job.timeout.unwrap_or_default();
                return Outcome::Failed { message: format!("timed out after {limit:?}"), retry: true };
            }
            _ = renew.tick() => {
                let deadline = now_ms().saturating_add(millis(lease));
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

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("the handler panicked: {what}")
}

/// What is reported for a job's outcome; `None` when its lock was lost (another worker has
/// the job now).
fn report(job: &Taken, outcome: Outcome) -> Option<Report> {
    let (kind, text, delay) = match outcome {
        Outcome::Done(value) => ("done", value.to_string(), Duration::ZERO),
        Outcome::Failed { message, retry } if retry && job.attempt < job.max_attempts => {
            let delay = job.backoff.delay(job.attempt, random_unit());
            ("retry", message, delay)
        }
        Outcome::Failed { message, .. } => ("fail", message, Duration::ZERO),
        Outcome::Release => ("release", String::new(), Duration::ZERO),
        Outcome::Cancelled => ("cancel", String::new(), Duration::ZERO),
        Outcome::Lost => return None,
    };
    Some(Report {
        id: job.id.clone(),
        token: job.token.clone(),
        kind,
        text,
        delay_ms: millis(delay),
    })
}

/// Reports `reports` to queue `queue` and takes up to `want` of its jobs, in one script call.
/// Returns the jobs taken and how long the queue's rate limit asks to wait (0: no wait).
async fn finish_and_take<C>(
    inner: &Inner<C>,
    queue: usize,
    reports: &[Report],
    want: usize,
) -> Result<(Vec<Taken>, u64)>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let config = &inner.config;
    let q = &inner.queues[queue];
    // 64 random bits per call, each job's token this and its id: short enough (under Redis's
    // 64 bytes) to keep the job's hash in its compact encoding.
    let random = JobId::generate()?;
    let token = random.as_str().get(..16).unwrap_or(random.as_str());
    let mut call = FINISH.key(q.route_key());
    let now = now_ms();
    call.arg(q.key_prefix())
        .arg(now)
        .arg(&inner.id)
        .arg(now.saturating_add(millis(config.lease)))
        .arg(want)
        .arg(token)
        .arg(millis(config.result_ttl))
        .arg(config.keep_completed)
        .arg(config.completed_age().map_or(0, millis))
        .arg(
            config
                .keep_dead
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        )
        .arg(config.keep_dead_for.map_or(0, millis));
    for r in reports {
        call.arg(r.id.as_str())
            .arg(&r.token)
            .arg(r.kind)
            .arg(&r.text)
            .arg(r.delay_ms);
    }
    let took: Took = call.invoke_async(&mut q.conn()).await?;
    let mut jobs = Vec::with_capacity(took.jobs.len());
    for (id, name, payload, attempt, max_attempts, timeout_ms, backoff, token) in took.jobs {
        let backoff = serde_json::from_str::<BackoffRecord>(&backoff)
            .map(|r| Backoff::from(&r))
            .unwrap_or(Backoff::Fixed(Duration::from_secs(1)));
        jobs.push(Taken {
            queue,
            id: JobId::new(id)?,
            name,
            payload,
            attempt,
            max_attempts,
            timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
            backoff,
            token,
        });
    }
    Ok((jobs, took.wait_ms))
}

/// A number in `0..1` from the operating system's random source (for backoff jitter).
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
