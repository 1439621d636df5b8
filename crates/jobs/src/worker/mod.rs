//! Workers: take jobs from one or more queues for their free slots, run their handlers, and
//! report the outcomes (batched with the next take); register a heartbeat; sweep for the jobs
//! of dead workers. Each lane ([`lane`]) takes and reports in one script call; each job
//! ([`job`]) runs in a task of its own, except a lane of one slot's lone job, which runs in
//! the lane's task; the keeper ([`keeper`]), on a thread of its own, beats the heartbeat and
//! renews the leases, from a job's take until its outcome is reported.

mod job;
mod keeper;
mod lane;

use lane::drive;

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use tokio::sync::{Notify, watch};

use crate::handler::{Erased, Reporter, Typed};
use crate::registry::host_name;
use crate::{Connector, Handler, Job, JobId, Queue, Result, WorkerConfig};

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
    pub(super) queues: Vec<Queue<C>>,
    /// Per queue, what a handler's context reports progress through.
    pub(super) reporters: Vec<Arc<dyn Reporter>>,
    pub(super) config: WorkerConfig,
    pub(super) handlers: HashMap<&'static str, Arc<dyn Erased>>,
    pub(super) id: String,
    /// Beats the heartbeat and renews the running jobs' leases on a thread of its own.
    pub(super) keeper: keeper::Keeper,
    /// Per queue, where the keeper renews its jobs' leases (made once, shared by every job).
    pub(super) leases: Vec<Arc<keeper::BeatIn>>,
    /// Per lane, what wakes it when it waits for jobs.
    pub(super) wake: Vec<Notify>,
    pub(super) stopping: AtomicBool,
}

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
        let id = format!(
            "{}-{}",
            std::process::id(),
            JobId::generate()?.as_str().get(..8).unwrap_or("0")
        );
        let host = host_name();
        let names: Vec<&str> = self.queues.iter().map(|q| q.name().as_str()).collect();
        let names = names.join(",");
        let beat = keeper::Beat {
            queues: self
                .queues
                .iter()
                .map(|q| {
                    Arc::new(keeper::BeatIn {
                        prefix: q.key_prefix().to_owned(),
                        keys: Arc::clone(q.keys()),
                    })
                })
                .collect(),
            worker: id.clone(),
            ttl: self.config.worker_ttl(),
            host: host.clone(),
            names: names.clone(),
            every: self.config.heartbeat,
        };
        let leases = beat.queues.clone();
        let keeper = keeper::Keeper::start(Arc::clone(&self.connector), beat, self.config.lease)
            .map_err(|e| crate::Error::Invalid {
                what: "worker",
                reason: format!("its keeper thread could not start: {e}"),
            })?;
        let inner = Arc::new(Inner {
            queues: self.queues,
            reporters,
            config: self.config,
            handlers: self.handlers,
            id,
            keeper,
            leases,
            wake: (0..lanes).map(|_| Notify::new()).collect(),
            stopping: AtomicBool::new(false),
        });
        // Registered before the first job is taken, so the sweep never takes a live worker
        // for a dead one.
        for q in &inner.queues {
            q.beat(&inner.id, inner.config.worker_ttl(), &host, &names)
                .await?;
        }
        let (hard_stop, stop_rx) = watch::channel(false);

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
