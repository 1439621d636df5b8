//! Enqueuing and looking at jobs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager};

use crate::scripts::{
    CANCEL, Call, ENQUEUE, Function, RECORDS, REDRIVE, SWEEP, UPDATE, invocation, load, queue_keys,
};
use crate::{Error, Job, JobId, JobOptions, QueueName, Result};

/// The state of a job; serialized as its lower-case name (`"waiting"`, `"dead"`…).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a worker.
    Waiting,
    /// Waiting for its time (a delay, or a retry's backoff).
    Delayed,
    /// Running.
    Active,
    /// Done; its result is kept for the result TTL.
    Completed,
    /// Out of attempts (or not runnable): in the dead letter.
    Dead,
    /// Cancelled by [`Queue::cancel`] before it finished.
    Cancelled,
}

impl JobState {
    /// The state named `name` as it serializes (`"waiting"`, `"dead"`…), `None` for another.
    ///
    /// ```
    /// use geostack_jobs::JobState;
    ///
    /// assert_eq!(JobState::from_name("delayed"), Some(JobState::Delayed));
    /// assert_eq!(JobState::from_name("lost"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "waiting" => Self::Waiting,
            "delayed" => Self::Delayed,
            "active" => Self::Active,
            "completed" => Self::Completed,
            "dead" => Self::Dead,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// A state as a script wrote it (anything else: dead).
    pub(crate) fn parse(s: &str) -> Self {
        Self::from_name(s).unwrap_or(Self::Dead)
    }

    /// The name of the sorted set that holds the queue's jobs in this state.
    pub(crate) fn set(self) -> &'static str {
        match self {
            Self::Waiting => "wait",
            Self::Delayed => "delayed",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What [`Queue::status`] tells of a job. Serializes for a status endpoint: times as
/// milliseconds since the Unix epoch (as BullMQ's), absent values as `null`.
///
/// ```no_run
/// # async fn demo(queue: geostack_jobs::Queue, id: geostack_jobs::JobId) -> Result<(), Box<dyn std::error::Error>> {
/// if let Some(status) = queue.status(&id).await? {
///     let json = serde_json::to_value(&status)?;
///     assert_eq!(json["state"], "completed");
///     assert!(json["finished"].is_u64());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct JobStatus {
    /// Its id.
    pub id: JobId,
    /// Its kind.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Its runs that ended (or the one running now): at most [`JobOptions::attempts`]. A run
    /// interrupted by its worker's death is a stall, not an attempt.
    pub attempts: u32,
    /// How many of its runs were interrupted (its worker died, or its lease ran out).
    pub stalls: u32,
    /// The last failure's reason.
    pub error: Option<String>,
    /// The result, when completed.
    pub result: Option<serde_json::Value>,
    /// The payload, as enqueued.
    pub payload: Option<serde_json::Value>,
    /// When it was enqueued.
    #[serde(serialize_with = "epoch_millis")]
    pub created: Option<SystemTime>,
    /// When its last attempt started.
    #[serde(serialize_with = "epoch_millis")]
    pub started: Option<SystemTime>,
    /// When it completed, died or was cancelled.
    #[serde(serialize_with = "epoch_millis")]
    pub finished: Option<SystemTime>,
    /// The last progress its handler reported ([`crate::JobContext::progress`]).
    pub progress: Option<serde_json::Value>,
    /// Its tenant, if it was given one.
    pub tenant: Option<String>,
    /// The worker that took it last (its id, as [`crate::WorkerInfo`] gives it), if one did.
    pub worker: Option<String>,
}

/// One entry of a queue's event stream.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct QueueEvent {
    /// The stream entry's id (`<ms>-<seq>`), for [`Queue::events`]' `after`; shared by the
    /// events of one script call.
    pub id: String,
    /// `added`, `active`, `progress`, `completed`, `retrying`, `dead`, `stalled`, `released`,
    /// `cancelled`, `updated`, `redriven`, `retried`, `promoted`, `removed` (its detail: the
    /// state it was in, `drained` or `cleaned`), `paused`, `resumed` (no job), `repeat_parked`
    /// (the repeat's key) or `worker-lost` (the worker's id).
    pub kind: String,
    /// The job's id (the worker's, for `worker-lost`).
    pub job: String,
    /// The error, the progress, the worker, or empty.
    pub detail: String,
}

/// How many jobs a queue holds in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Waiting.
    pub waiting: u64,
    /// Delayed.
    pub delayed: u64,
    /// Active.
    pub active: u64,
    /// Completed and still kept.
    pub completed: u64,
    /// In the dead letter.
    pub dead: u64,
    /// Cancelled and still kept.
    pub cancelled: u64,
}

/// `t` as milliseconds since the Unix epoch, `None` before it.
fn ms_since_epoch(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `t` as milliseconds since the Unix epoch (0 before it).
pub(crate) fn epoch_millis_at<S: serde::Serializer>(
    t: &SystemTime,
    out: S,
) -> std::result::Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&ms_since_epoch(*t).unwrap_or(0), out)
}

/// `t` as milliseconds since the Unix epoch (`null` when absent or before it).
fn epoch_millis<S: serde::Serializer>(
    t: &Option<SystemTime>,
    out: S,
) -> std::result::Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&t.and_then(ms_since_epoch), out)
}

/// A named queue in Redis. Every key of a queue is under `<prefix>{<name>}:`, one hash tag, so
/// the queue lives in one Redis Cluster slot and every script may touch all of it.
///
/// ```no_run
/// # async fn demo() -> geostack_jobs::Result<()> {
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Import { url: String }
/// # impl geostack_jobs::Job for Import { const NAME: &'static str = "import"; }
/// use geostack_jobs::{JobOptions, Queue, QueueName};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let queue = Queue::new(redis::aio::ConnectionManager::new(client).await?, QueueName::new("imports")?);
/// let id = queue.enqueue(&Import { url: "https://example.org/a.csv".into() }, JobOptions::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue<C = ConnectionManager> {
    conn: C,
    name: QueueName,
    prefix: String,
    keys: Arc<[String]>,
}

impl<C> Queue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The queue `name` on `conn`, keys under `jobs:{<name>}:`.
    pub fn new(conn: C, name: QueueName) -> Self {
        Self::with_prefix(conn, name, "jobs:")
    }

    /// The queue `name` with keys under `<prefix>{<name>}:` (the prefix must not contain braces).
    pub fn with_prefix(conn: C, name: QueueName, prefix: &str) -> Self {
        let prefix = format!("{}{{{}}}:", prefix.replace(['{', '}'], ""), name.as_str());
        let keys = queue_keys(&prefix).into();
        Self {
            conn,
            name,
            prefix,
            keys,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &QueueName {
        &self.name
    }

    /// The queue's key prefix, with its hash tag.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// A call of `function` with the queue's keys (every key it touches, declared) and its
    /// prefix as its first argument.
    pub(crate) fn call(&self, function: &Function) -> Call {
        invocation(function, &self.keys, &self.prefix)
    }

    /// The queue's keys, in the order its scripts take them.
    pub(crate) fn keys(&self) -> &Arc<[String]> {
        &self.keys
    }

    /// Adds a job; returns its id (the existing job's, for a unique key already queued).
    ///
    /// # Errors
    ///
    /// [`Error::Payload`] for a payload that does not serialize; [`Error::Unavailable`].
    pub async fn enqueue<J: Job>(&self, job: &J, options: JobOptions) -> Result<JobId> {
        let id = options.id.clone().map_or_else(JobId::generate, Ok)?;
        let args = self.enqueue_args(job, &id, options.unique.as_deref(), &options)?;
        let mut inv = self.call(&ENQUEUE);
        inv.arg(&args);
        let id: String = inv.invoke_async(&mut self.conn.clone()).await?;
        JobId::new(id)
    }

    /// Adds several jobs with the same options in two round trips (the library loaded, then one
    /// pipelined call per job); returns their ids in order. A given id or unique key applies to
    /// the first job only.
    ///
    /// # Errors
    ///
    /// As [`Queue::enqueue`].
    pub async fn enqueue_bulk<J: Job>(
        &self,
        jobs: &[J],
        options: JobOptions,
    ) -> Result<Vec<JobId>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        load(&mut self.conn.clone()).await?;
        let mut pipe = redis::pipe();
        for (i, job) in jobs.iter().enumerate() {
            let id = match (&options.id, i) {
                (Some(id), 0) => id.clone(),
                _ => JobId::generate()?,
            };
            let unique = if i == 0 {
                options.unique.as_deref()
            } else {
                None
            };
            let args = self.enqueue_args(job, &id, unique, &options)?;
            let mut call = self.call(&ENQUEUE);
            call.arg(&args);
            pipe.add_command(call.into_command());
        }
        let returned: Vec<String> = pipe.query_async(&mut self.conn.clone()).await?;
        returned.into_iter().map(JobId::new).collect()
    }

    /// The enqueue function's arguments for one job, after the prefix.
    fn enqueue_args<J: Job>(
        &self,
        job: &J,
        id: &JobId,
        unique: Option<&str>,
        options: &JobOptions,
    ) -> Result<Vec<String>> {
        let mut args = vec![
            id.as_str().to_owned(),
            millis(options.delay).to_string(),
            options.priority.to_string(),
            unique.unwrap_or_default().to_owned(),
        ];
        args.extend(job_fields(job, options)?);
        Ok(args)
    }

    /// The job `id`, if the queue still holds it.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn status(&self, id: &JobId) -> Result<Option<JobStatus>> {
        let records = self.records("job", &[id.as_str().to_owned()]).await?;
        Ok(records
            .into_iter()
            .next()
            .filter(|fields| !fields.is_empty())
            .map(|fields| job_status(id.clone(), &fields)))
    }

    /// Cancels the job `id`: a waiting or delayed job at once; a running one is stopped by its
    /// worker at the next renewal of its lock (within a second, or a third of a shorter lease), its
    /// handler dropped where it waits. A cancelled job is kept for 24 hours, then removed (by a
    /// worker's sweep).
    /// Returns the job's state after the call ([`JobState::Cancelled`], [`JobState::Active`]
    /// while it is being stopped, or the state it finished in), or `None` when the queue
    /// holds no such job.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn cancel(&self, id: &JobId) -> Result<Option<JobState>> {
        const KEEP_MS: u64 = 24 * 3600 * 1000;
        let state: Option<String> = self
            .call(&CANCEL)
            .arg(id.as_str())
            .arg(KEEP_MS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(state.as_deref().map(JobState::parse))
    }

    /// Replaces the payload of job `id` with `job`, when it has not started (waiting or
    /// delayed): what CARTO's Batch API lets a pending query do. Returns the job's state (the
    /// payload replaced only when it is [`JobState::Waiting`] or [`JobState::Delayed`]), or
    /// `None` when the queue holds no such job.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `id` is a job of another name, [`Error::Payload`] for a payload
    /// that does not serialize, [`Error::Unavailable`].
    pub async fn update<J: Job>(&self, id: &JobId, job: &J) -> Result<Option<JobState>> {
        let payload = serde_json::to_string(job).map_err(Error::Payload)?;
        let state: Option<String> = self
            .call(&UPDATE)
            .arg(id.as_str())
            .arg(J::NAME)
            .arg(payload)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match state.as_deref() {
            Some("mismatch") => Err(Error::Invalid {
                what: "job",
                reason: format!("{} is not a {} job", id.as_str(), J::NAME),
            }),
            other => Ok(other.map(JobState::parse)),
        }
    }

    /// How many jobs are in each state.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn counts(&self) -> Result<QueueCounts> {
        let p = &self.prefix;
        let (waiting, delayed, active, completed, dead, cancelled): (u64, u64, u64, u64, u64, u64) =
            redis::pipe()
                .zcard(format!("{p}wait"))
                .zcard(format!("{p}delayed"))
                .zcard(format!("{p}active"))
                .zcard(format!("{p}completed"))
                .zcard(format!("{p}dead"))
                .zcard(format!("{p}cancelled"))
                .query_async(&mut self.conn.clone())
                .await?;
        Ok(QueueCounts {
            waiting,
            delayed,
            active,
            completed,
            dead,
            cancelled,
        })
    }

    /// Takes back the jobs of workers without a heartbeat for `worker_ttl` (they died), and
    /// jobs whose lock expired (their worker hangs): to the wait queue, or to the dead letter
    /// after more than `max_stalls` stalls. Workers run it every second; returns how many were
    /// taken back.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn sweep(&self, max_stalls: u32, worker_ttl: Duration) -> Result<u64> {
        Ok(self
            .call(&SWEEP)
            .arg(max_stalls)
            .arg(millis(worker_ttl))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Limits the queue to `max` jobs started per `per` (a fixed window, shared by every
    /// worker), or lifts the limit with `None`. Workers that meet the limit wait for the
    /// window to end. Default: no limit.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a zero maximum or window; [`Error::Unavailable`].
    pub async fn rate_limit(&self, limit: Option<(u32, Duration)>) -> Result<()> {
        let meta = format!("{}meta", self.prefix);
        let mut conn = self.conn.clone();
        match limit {
            None => {
                let _: i64 = redis::cmd("HDEL")
                    .arg(&meta)
                    .arg("rate_max")
                    .arg("rate_ms")
                    .query_async(&mut conn)
                    .await?;
            }
            Some((max, per)) => {
                let ms = millis(per);
                if max == 0 || ms == 0 {
                    return Err(Error::invalid(
                        "rate limit",
                        "at least one job per window of at least 1 ms",
                    ));
                }
                let _: i64 = redis::cmd("HSET")
                    .arg(&meta)
                    .arg("rate_max")
                    .arg(max)
                    .arg("rate_ms")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// The queue's events from up to `count` stream entries (the stream keeps about the last
    /// 10 000), oldest first, after the entry id `after` (all kept ones when `None`). The events
    /// of one script call (a worker finishing a batch and taking the next) share one entry:
    /// they come one per job, in order, with the entry's id.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn events(&self, after: Option<&str>, count: usize) -> Result<Vec<QueueEvent>> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{}events", self.prefix))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(queue_events(entries))
    }

    /// The id of the newest entry of the queue's event stream (`None` while it is empty): what
    /// comes after it is new, for [`Queue::events`]' `after`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn newest_event(&self) -> Result<Option<String>> {
        let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(format!("{}events", self.prefix))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(newest.into_iter().next().map(|(id, _)| id))
    }

    /// Moves up to `max` jobs from the dead letter back to the wait queue with fresh attempts.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn redrive(&self, max: u32) -> Result<u64> {
        Ok(self
            .call(&REDRIVE)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// The records of `ids` (`kind` "job" or "worker"), field by field, read in one call;
    /// empty for one that is gone.
    pub(crate) async fn records(
        &self,
        kind: &str,
        ids: &[String],
    ) -> Result<Vec<HashMap<String, String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.call(&RECORDS);
        call.arg(kind).arg(ids);
        Ok(call.invoke_async(&mut self.conn.clone()).await?)
    }

    /// The Redis server's clock, in milliseconds since the Unix epoch: the one clock the queue
    /// compares times with (leases, heartbeats, delays, schedules), whatever the clocks of its
    /// clients say.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn server_time(&self) -> Result<u64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
    }

    /// A clone of the queue's connection, for keys of one's own beside the queue's (an index of
    /// jobs by owner, say).
    pub fn conn(&self) -> C {
        self.conn.clone()
    }
}

/// The events of stream entries, one per job. A script call writes one entry: its events as
/// `event`, `id`, `detail` triples in order, where `id` is one job's or, for the same event of
/// several jobs, their ids joined by commas (job ids have none).
pub(crate) fn queue_events(entries: Vec<(String, Vec<(String, String)>)>) -> Vec<QueueEvent> {
    let mut events = Vec::with_capacity(entries.len());
    for (entry, fields) in entries {
        let mut kind: Option<String> = None;
        let mut jobs = String::new();
        let mut detail = String::new();
        let mut push = |kind: String, jobs: &str, detail: &str| {
            for job in jobs.split(',') {
                events.push(QueueEvent {
                    id: entry.clone(),
                    kind: kind.clone(),
                    job: job.to_owned(),
                    detail: detail.to_owned(),
                });
            }
        };
        for (field, value) in fields {
            match field.as_str() {
                "event" => {
                    if let Some(kind) = kind.take() {
                        push(kind, &jobs, &detail);
                    }
                    kind = Some(value);
                    jobs.clear();
                    detail.clear();
                }
                "id" => jobs = value,
                "detail" => detail = value,
                _ => {}
            }
        }
        if let Some(kind) = kind {
            push(kind, &jobs, &detail);
        }
    }
    events
}

/// A job's status from the fields of its hash.
pub(crate) fn job_status(id: JobId, fields: &HashMap<String, String>) -> JobStatus {
    let state = JobState::parse(fields.get("state").map_or("", String::as_str));
    let time = |name: &str| {
        fields
            .get(name)
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    };
    JobStatus {
        id,
        name: fields.get("name").cloned().unwrap_or_default(),
        state,
        attempts: fields
            .get("attempts")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        stalls: fields
            .get("stalls")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        error: fields.get("error").filter(|e| !e.is_empty()).cloned(),
        result: fields
            .get("result")
            .and_then(|r| serde_json::from_str(r).ok()),
        payload: fields
            .get("payload")
            .and_then(|p| serde_json::from_str(p).ok()),
        created: time("created"),
        started: time("started"),
        finished: time("finished"),
        progress: fields
            .get("progress")
            .and_then(|p| serde_json::from_str(p).ok()),
        tenant: fields.get("tenant").filter(|t| !t.is_empty()).cloned(),
        worker: fields.get("worker").filter(|w| !w.is_empty()).cloned(),
    }
}

/// The field, value pairs of a job's hash that come from the job and its options.
pub(crate) fn job_fields<J: Job>(job: &J, options: &JobOptions) -> Result<Vec<String>> {
    let backoff =
        serde_json::to_string(&BackoffRecord::from(options.backoff)).map_err(Error::Payload)?;
    let payload = serde_json::to_string(job).map_err(Error::Payload)?;
    let timeout = options.timeout.map_or(0, millis);
    Ok(vec![
        "name".into(),
        J::NAME.into(),
        "payload".into(),
        payload,
        "max_attempts".into(),
        if options.at_most_once {
            1
        } else {
            options.attempts
        }
        .to_string(),
        "backoff".into(),
        backoff,
        "timeout_ms".into(),
        timeout.to_string(),
        "tenant".into(),
        options.tenant.clone().unwrap_or_default(),
        "once".into(),
        if options.at_most_once { "1" } else { "0" }.into(),
    ])
}

/// The backoff as stored with the job.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct BackoffRecord {
    fixed_ms: Option<u64>,
    base_ms: u64,
    max_ms: u64,
    jitter: f64,
}

impl From<crate::Backoff> for BackoffRecord {
    fn from(b: crate::Backoff) -> Self {
        match b {
            crate::Backoff::Fixed(d) => Self {
                fixed_ms: Some(millis(d)),
                base_ms: 0,
                max_ms: 0,
                jitter: 0.0,
            },
            crate::Backoff::Exponential { base, max, jitter } => Self {
                fixed_ms: None,
                base_ms: millis(base),
                max_ms: millis(max),
                jitter,
            },
        }
    }
}

impl From<&BackoffRecord> for crate::Backoff {
    fn from(r: &BackoffRecord) -> Self {
        match r.fixed_ms {
            Some(ms) => Self::Fixed(Duration::from_millis(ms)),
            None => Self::Exponential {
                base: Duration::from_millis(r.base_ms),
                max: Duration::from_millis(r.max_ms),
                jitter: r.jitter,
            },
        }
    }
}

/// Whole milliseconds of `d`, as Redis takes them (saturating).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_of_one_entry_come_in_order_one_per_job() {
        let pairs = |fields: &[&str]| {
            fields
                .chunks(2)
                .map(|p| (p[0].to_owned(), p[1].to_owned()))
                .collect::<Vec<_>>()
        };
        let entries = vec![
            (
                "1-0".to_owned(),
                pairs(&[
                    "event",
                    "completed",
                    "id",
                    "a,b",
                    "detail",
                    "",
                    "event",
                    "active",
                    "id",
                    "c",
                    "detail",
                    "w1",
                ]),
            ),
            ("2-0".to_owned(), pairs(&["event", "paused", "id", ""])),
        ];
        let got: Vec<(String, String, String, String)> = queue_events(entries)
            .into_iter()
            .map(|e| (e.id, e.kind, e.job, e.detail))
            .collect();
        let want = [
            ("1-0", "completed", "a", ""),
            ("1-0", "completed", "b", ""),
            ("1-0", "active", "c", "w1"),
            ("2-0", "paused", "", ""),
        ];
        assert_eq!(
            got,
            want.map(|(a, b, c, d)| (a.into(), b.into(), c.into(), d.into()))
        );
    }

    #[test]
    fn a_status_serializes_for_an_endpoint_with_times_in_epoch_milliseconds() {
        let status = JobStatus {
            id: JobId::new("j1").unwrap(),
            name: "import".into(),
            state: JobState::Dead,
            attempts: 3,
            stalls: 0,
            error: Some("no such file".into()),
            result: None,
            payload: Some(serde_json::json!({"url": "a.csv"})),
            created: Some(UNIX_EPOCH + Duration::from_millis(1_796_146_813_123)),
            started: None,
            finished: Some(UNIX_EPOCH - Duration::from_secs(1)),
            progress: None,
            tenant: None,
            worker: None,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["id"], "j1");
        assert_eq!(json["state"], "dead");
        assert_eq!(json["attempts"], 3);
        assert_eq!(json["created"], 1_796_146_813_123_u64);
        assert!(json["started"].is_null());
        // A time before the epoch cannot be told in its unit: null, not a wrong number.
        assert!(json["finished"].is_null());
        let counts = QueueCounts {
            waiting: 2,
            ..QueueCounts::default()
        };
        assert_eq!(serde_json::to_value(counts).unwrap()["waiting"], 2);
    }
}
