//! One connection object for everything: queues, their workers, event subscriptions and
//! awaited completions.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::queue::queue_events;
use crate::{
    Connector, Error, JobId, JobState, JobStatus, Queue, QueueEvent, QueueName, Result, Worker,
    WorkerConfig,
};

/// The job queues of one Redis (or Redis Cluster): makes queues on one shared connection, their
/// workers, and subscriptions to their events, from one client.
///
/// ```no_run
/// # async fn demo() -> geostack_jobs::Result<()> {
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Import { url: String }
/// # impl geostack_jobs::Job for Import { const NAME: &'static str = "import"; }
/// use std::time::Duration;
/// use geostack_jobs::{JobOptions, Jobs, WorkerConfig};
///
/// let jobs = Jobs::connect(redis::Client::open("redis://127.0.0.1:6379")?).await?;
/// let imports = jobs.queue("imports")?;
/// let worker = jobs.worker(imports.clone(), WorkerConfig::default());
/// let id = imports.enqueue(&Import { url: "a.csv".into() }, JobOptions::default()).await?;
/// // … with the worker running: the job's end, awaited (no polling).
/// let status = jobs.wait_for(&imports, &id, Duration::from_secs(30)).await?;
/// # let _ = (worker, status); Ok(()) }
/// ```
pub struct Jobs<K: Connector = redis::Client> {
    connector: Arc<K>,
    shared: K::Shared,
}

impl<K: Connector + Clone> Jobs<K> {
    /// Opens the shared connection of `connector` (a [`redis::Client`], or a
    /// [`redis::cluster::ClusterClient`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn connect(connector: K) -> Result<Self> {
        let shared = connector.shared().await?;
        Ok(Self {
            connector: Arc::new(connector),
            shared,
        })
    }

    /// The queue `name`, keys under `jobs:{<name>}:`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a name [`QueueName::new`] refuses.
    pub fn queue(&self, name: &str) -> Result<Queue<K::Shared>> {
        Ok(Queue::new(self.shared.clone(), QueueName::new(name)?))
    }

    /// The queue `name` with keys under `<prefix>{<name>}:`.
    ///
    /// # Errors
    ///
    /// As [`Jobs::queue`].
    pub fn queue_with_prefix(&self, name: &str, prefix: &str) -> Result<Queue<K::Shared>> {
        Ok(Queue::with_prefix(
            self.shared.clone(),
            QueueName::new(name)?,
            prefix,
        ))
    }

    /// A worker for `queue` (add handlers and more queues to it, then run it).
    pub fn worker(&self, queue: Queue<K::Shared>, config: WorkerConfig) -> Worker<K::Shared, K> {
        Worker::new(queue, (*self.connector).clone(), config)
    }

    /// Follows `queue`'s events from after entry `after` (from now when `None`), on a
    /// connection of the subscription's own that blocks in Redis until events come
    /// (`XREAD BLOCK`): no polling.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn subscribe<C>(
        &self,
        queue: &Queue<C>,
        after: Option<&str>,
    ) -> Result<Subscription<K>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
    {
        let conn = self.connector.blocking().await?;
        let key = format!("{}events", queue.key_prefix());
        let last = match after {
            Some(id) => id.to_owned(),
            None => queue
                .newest_event()
                .await?
                .unwrap_or_else(|| "0-0".to_owned()),
        };
        Ok(Subscription { conn, key, last })
    }

    /// Waits until job `id` of `queue` has ended (completed, dead or cancelled), for at most
    /// `timeout`; returns its status then, its status as it stands when the time is up, or
    /// `None` when the queue holds no such job. Follows the queue's events, so that it answers
    /// as soon as the job ends.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn wait_for<C>(
        &self,
        queue: &Queue<C>,
        id: &JobId,
        timeout: Duration,
    ) -> Result<Option<JobStatus>>
    where
        C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
    {
        let until = Instant::now() + timeout;
        // Subscribed before the first look, so that an end between the two is not missed.
        let mut events = self.subscribe(queue, None).await?;
        loop {
            let status = queue.status(id).await?;
            let ended = status.as_ref().is_none_or(|s| {
                matches!(
                    s.state,
                    JobState::Completed | JobState::Dead | JobState::Cancelled
                )
            });
            let left = until.saturating_duration_since(Instant::now());
            if ended || left.is_zero() {
                return Ok(status);
            }
            // The job's own events end the wait; any other only wakes it early.
            let _ = events.next(left.min(Duration::from_secs(5))).await?;
        }
    }
}

/// A queue's events as they come ([`Jobs::subscribe`]).
pub struct Subscription<K: Connector> {
    conn: K::Connection,
    key: String,
    last: String,
}

impl<K: Connector> Subscription<K> {
    /// The next events (up to 100), waiting for them at most `wait`; empty when none came.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn next(&mut self, wait: Duration) -> Result<Vec<QueueEvent>> {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        type Reply = Option<Vec<(String, Vec<(String, Vec<(String, String)>)>)>>;
        let reply: Reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(ms)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last)
            .query_async(&mut self.conn)
            .await
            .map_err(Error::from)?;
        let entries: Vec<(String, Vec<(String, String)>)> = reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .collect();
        if let Some((id, _)) = entries.last() {
            self.last.clone_from(id);
        }
        Ok(queue_events(entries))
    }

    /// The id of the last entry read, to subscribe again from there.
    pub fn last(&self) -> &str {
        &self.last
    }
}
