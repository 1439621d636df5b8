//! What a worker runs: handlers of typed jobs, what they know of their job, how they fail.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::ConnectionLike;

use crate::scripts::{LOG, PROGRESS};
use crate::{Job, JobId, Queue, Result};

/// What a handler's context needs of its queue, whatever its connection.
#[async_trait]
pub(crate) trait Reporter: Send + Sync {
    fn name(&self) -> &str;
    async fn progress(&self, id: &JobId, token: &str, progress: String) -> Result<bool>;
    async fn log(&self, id: &JobId, token: &str, line: &str) -> Result<bool>;
}

#[async_trait]
impl<C> Reporter for Queue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        Queue::name(self).as_str()
    }

    async fn progress(&self, id: &JobId, token: &str, progress: String) -> Result<bool> {
        let kept: i64 = self
            .call(&PROGRESS)
            .arg(id.as_str())
            .arg(token)
            .arg(progress)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(kept == 1)
    }

    async fn log(&self, id: &JobId, token: &str, line: &str) -> Result<bool> {
        let kept: i64 = self
            .call(&LOG)
            .arg(id.as_str())
            .arg(token)
            .arg(line)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(kept == 1)
    }
}

/// What a handler knows of the job it runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct JobContext {
    /// The job's id.
    pub id: JobId,
    /// This attempt's number, 1 for the first.
    pub attempt: u32,
    queue: Arc<dyn Reporter>,
    token: String,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("queue", &self.queue.name())
            .finish_non_exhaustive()
    }
}

impl JobContext {
    pub(crate) fn new(id: JobId, attempt: u32, queue: Arc<dyn Reporter>, token: String) -> Self {
        Self {
            id,
            attempt,
            queue,
            token,
        }
    }

    /// The job's id (for a handler that names its work after its job).
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        self.queue.name()
    }

    /// Reports the job's progress (any JSON: a percentage, a row count…), shown by
    /// [`Queue::status`] and written to the queue's event stream. Returns `false` when this
    /// attempt has lost its lock (it was taken back: stop working).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`].
    pub async fn progress(&self, progress: serde_json::Value) -> Result<bool> {
        self.queue
            .progress(&self.id, &self.token, progress.to_string())
            .await
    }

    /// Appends `line` to the job's log, which [`Queue::logs`] reads (the last 1000 lines are
    /// kept, and removed with the job). Returns `false` when this attempt has lost its lock.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`].
    pub async fn log(&self, line: &str) -> Result<bool> {
        self.queue.log(&self.id, &self.token, line).await
    }
}

/// A handler's failure: retried (with the job's backoff, while attempts remain) unless fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    pub(crate) message: String,
    pub(crate) retry: bool,
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
/// A handler runs on the worker's runtime. CPU-bound work (geometry matching, parsing a large
/// file) belongs in `tokio::task::spawn_blocking`, so that the runtime's other jobs, the
/// worker's lanes and everything else on it go on; a handler that blocks its thread anyway
/// delays those, but never loses its job: the worker's heartbeat and its jobs' leases are kept
/// by a thread of the worker's own.
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
///     async fn handle(&self, job: Import, ctx: JobContext) -> Result<serde_json::Value, JobError> {
///         ctx.progress(serde_json::json!({ "percent": 50 })).await.ok();
///         Ok(serde_json::json!({ "imported": job.url }))
///     }
/// }
/// ```
#[async_trait]
pub trait Handler<J: Job>: Send + Sync + 'static {
    /// Runs one attempt; its value is kept as the job's result.
    async fn handle(&self, job: J, ctx: JobContext) -> Result<serde_json::Value, JobError>;
}

pub(crate) type Run = Pin<Box<dyn Future<Output = Result<serde_json::Value, JobError>> + Send>>;

/// A handler with its job type erased, to keep handlers of several kinds in one map.
pub(crate) trait Erased: Send + Sync {
    fn start(&self, payload: &str, ctx: JobContext) -> Result<Run, String>;
}

pub(crate) struct Typed<J, H> {
    pub(crate) handler: Arc<H>,
    pub(crate) _job: PhantomData<fn() -> J>,
}

impl<J: Job, H: Handler<J>> Erased for Typed<J, H> {
    fn start(&self, payload: &str, ctx: JobContext) -> Result<Run, String> {
        let job: J = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        let handler = Arc::clone(&self.handler);
        Ok(Box::pin(async move { handler.handle(job, ctx).await }))
    }
}
