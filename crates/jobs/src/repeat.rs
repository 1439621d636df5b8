//! Repeatable jobs: a job and a [`Schedule`] kept under a key; every worker's sweep enqueues
//! the runs that are due, each exactly once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionLike;

use crate::queue::job_fields;
use crate::scripts::{REPEAT_FIRE, REPEAT_REMOVE, REPEAT_SET};
use crate::{Error, Job, JobOptions, Queue, Result, Schedule};

/// A repeatable job as [`Queue::repeatables`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Repeatable {
    /// Its key.
    pub key: String,
    /// The job's kind.
    pub name: String,
    /// When it runs.
    pub schedule: Schedule,
    /// Its next run.
    pub next: SystemTime,
}

impl<C> Queue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Runs `job` on `schedule` from now on, under `key` (defining the key again replaces its
    /// job and schedule). Each run is a job of its own, with `options` (their delay, id and
    /// unique key are not used) and the id `<key>-<run time in ms>`, so a run is enqueued once
    /// however many workers see it due. Runs are enqueued by the workers' sweep, every
    /// second; a run missed while no worker ran is skipped (the next one is the next after
    /// now).
    ///
    /// ```no_run
    /// # async fn demo(queue: geostack_jobs::Queue) -> geostack_jobs::Result<()> {
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Report { day: bool }
    /// # impl geostack_jobs::Job for Report { const NAME: &'static str = "report"; }
    /// use geostack_jobs::{JobOptions, Schedule};
    ///
    /// queue.repeat("nightly-report", &Report { day: true }, Schedule::cron("0 3 * * *")?, JobOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a key that is not 1 to 48 of `A-Z a-z 0-9 - _`;
    /// [`Error::Payload`]; [`Error::Unavailable`].
    pub async fn repeat<J: Job>(
        &self,
        key: &str,
        job: &J,
        schedule: Schedule,
        options: JobOptions,
    ) -> Result<()> {
        let valid = !key.is_empty()
            && key.len() <= 48
            && key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !valid {
            return Err(Error::invalid("repeat key", "1 to 48 of A-Z a-z 0-9 - _"));
        }
        let next = schedule
            .next_after(self.server_time().await?)
            .ok_or_else(|| Error::invalid("schedule", "it never runs"))?;
        let fields = serde_json::to_string(&job_fields(job, &options)?).map_err(Error::Payload)?;
        let _: i64 = self
            .call(&REPEAT_SET)
            .arg(key)
            .arg(next)
            .arg("name")
            .arg(J::NAME)
            .arg("fields")
            .arg(fields)
            .arg("priority")
            .arg(options.priority)
            .arg("schedule")
            .arg(schedule.encode())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Stops repeating `key`; returns whether it was defined. Runs already enqueued stay.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn unrepeat(&self, key: &str) -> Result<bool> {
        let removed: i64 = self
            .call(&REPEAT_REMOVE)
            .arg(key)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(removed == 1)
    }

    /// The repeatable jobs, the next to run first (at most `count`).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`]; [`Error::Invalid`] for a stored schedule this version cannot read.
    pub async fn repeatables(&self, count: usize) -> Result<Vec<Repeatable>> {
        let keys: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(format!("{}repeats", self.key_prefix()))
            .arg(0)
            .arg(count.saturating_sub(1))
            .arg("WITHSCORES")
            .query_async(&mut self.conn())
            .await?;
        self.definitions(keys)
            .await?
            .into_iter()
            .filter_map(|(key, next, def)| def.map(|def| (key, next, def)))
            .map(|(key, next, def)| {
                Ok(Repeatable {
                    key,
                    name: def.name,
                    schedule: Schedule::decode(&def.schedule)?,
                    next: UNIX_EPOCH + Duration::from_millis(next),
                })
            })
            .collect()
    }

    /// Enqueues the runs due now (at most 10 per call); returns how many this call enqueued.
    pub(crate) async fn fire_due(&self) -> Result<usize> {
        // The server's clock decides what is due, as it decides every other time of the queue.
        let now = self.server_time().await?;
        let due: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{}repeats", self.key_prefix()))
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(10)
            .query_async(&mut self.conn())
            .await?;
        let mut fired = 0;
        for (key, run, def) in self.definitions(due).await? {
            // What cannot run is parked, so that it never stands before the runs that can.
            let Some(def) = def else {
                self.park(&key, run, "its definition is missing").await?;
                continue;
            };
            let Ok(schedule) = Schedule::decode(&def.schedule) else {
                self.park(&key, run, "its schedule cannot be read").await?;
                continue;
            };
            // The next run after this one and after now: runs missed meanwhile are skipped.
            let Some(next) = schedule.next_after(run.max(now)) else {
                self.park(&key, run, "its schedule has no next run").await?;
                continue;
            };
            let Ok(fields) = serde_json::from_str::<Vec<String>>(&def.fields) else {
                self.park(&key, run, "its job fields cannot be read")
                    .await?;
                continue;
            };
            let mut inv = self.call(&REPEAT_FIRE);
            inv.arg(&key)
                .arg(run)
                .arg(next)
                .arg(format!("{key}-{run}"))
                .arg(0)
                .arg(&def.priority)
                .arg("")
                .arg(&fields)
                .arg("repeat")
                .arg(&key);
            let id: Option<String> = inv.invoke_async(&mut self.conn()).await?;
            fired += usize::from(id.is_some());
        }
        Ok(fired)
    }

    /// Takes repeatable job `key` (due at `run`) out of the schedule into
    /// `<prefix>repeats:parked`, with `why`, unless it changed meanwhile.
    async fn park(&self, key: &str, run: u64, why: &str) -> Result<()> {
        let _: i64 = self
            .call(&crate::scripts::REPEAT_PARK)
            .arg(key)
            .arg(run)
            .arg(why)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The stored definitions of `keys` (with their scores); `None` for one whose fields are
    /// gone or incomplete.
    async fn definitions(
        &self,
        keys: Vec<(String, u64)>,
    ) -> Result<Vec<(String, u64, Option<Definition>)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, _) in &keys {
            pipe.cmd("HMGET")
                .arg(format!("{}repeat", self.key_prefix()))
                .arg(format!("{key}:name"))
                .arg(format!("{key}:fields"))
                .arg(format!("{key}:priority"))
                .arg(format!("{key}:schedule"));
        }
        let defs: Vec<StoredFields> = pipe.query_async(&mut self.conn()).await?;
        Ok(keys
            .into_iter()
            .zip(defs)
            .map(|((key, next), d)| match d {
                (Some(name), Some(fields), Some(priority), Some(schedule)) => (
                    key,
                    next,
                    Some(Definition {
                        name,
                        fields,
                        priority,
                        schedule,
                    }),
                ),
                _ => (key, next, None),
            })
            .collect())
    }
}

/// A definition's fields as read: name, fields, priority, schedule.
type StoredFields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

struct Definition {
    name: String,
    fields: String,
    priority: String,
    schedule: String,
}
