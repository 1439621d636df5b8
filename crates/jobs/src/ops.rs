//! Operating a queue, as BullMQ's and Sidekiq's users do: pause and resume it, list its jobs by
//! state, remove, retry or promote one job, drain, clean or delete the queue, read a job's log
//! and the per-minute counts of completed and dead jobs.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::queue::{job_status, millis};
use crate::scripts::{CLEAN, DRAIN, OBLITERATE, PAUSE, PROMOTE, REMOVE, RETRY};
use crate::{Error, JobId, JobState, JobStatus, Queue, Result};

/// How many jobs one call of a bulk operation (drain, clean, obliterate) handles: each call is
/// one script, which holds Redis for its time, so the operation goes in steps.
const STEP: u64 = 1000;

/// What [`Queue::metrics`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Metric {
    /// Jobs that completed.
    Completed,
    /// Jobs that went to the dead letter.
    Dead,
}

impl<C> Queue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Pauses the queue: workers take none of its jobs until [`Queue::resume`] (running ones
    /// finish); enqueuing goes on.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn pause(&self) -> Result<()> {
        self.set_paused(true).await
    }

    /// Resumes a paused queue; its workers wake at once.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn resume(&self) -> Result<()> {
        self.set_paused(false).await
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        let _: i64 = self
            .call(&PAUSE)
            .arg(if paused { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Whether the queue is paused.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn is_paused(&self) -> Result<bool> {
        let paused: Option<String> = redis::cmd("HGET")
            .arg(format!("{}meta", self.key_prefix()))
            .arg("paused")
            .query_async(&mut self.conn())
            .await?;
        Ok(paused.as_deref() == Some("1"))
    }

    /// A page of the jobs in `state`: `count` from position `start`. Waiting and delayed jobs
    /// come in the order they will run, active ones by their lease's end, finished ones
    /// (completed, dead, cancelled) newest first.
    ///
    /// ```no_run
    /// # async fn demo(queue: geostack_jobs::Queue) -> geostack_jobs::Result<()> {
    /// use geostack_jobs::JobState;
    ///
    /// for job in queue.jobs(JobState::Dead, 0, 50).await? {
    ///     println!("{} failed: {:?}", job.id, job.error);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn jobs(
        &self,
        state: JobState,
        start: usize,
        count: usize,
    ) -> Result<Vec<JobStatus>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let newest_first = matches!(
            state,
            JobState::Completed | JobState::Dead | JobState::Cancelled
        );
        let ids: Vec<String> = redis::cmd(if newest_first { "ZREVRANGE" } else { "ZRANGE" })
            .arg(format!("{}{}", self.key_prefix(), state.set()))
            .arg(start)
            .arg(start.saturating_add(count) - 1)
            .query_async(&mut self.conn())
            .await?;
        let records = self.records("job", &ids).await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for (id, fields) in ids.into_iter().zip(records) {
            // A job removed between the two reads.
            if !fields.is_empty() {
                jobs.push(job_status(JobId::new(id)?, &fields));
            }
        }
        Ok(jobs)
    }

    /// Removes job `id` with its result, error and log. Returns the state it was in, or `None`
    /// when the queue holds no such job.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a running job (cancel it: it stops, then it can be removed);
    /// [`Error::Unavailable`].
    pub async fn remove(&self, id: &JobId) -> Result<Option<JobState>> {
        let state = self.one_job(&REMOVE, id).await?;
        if state == Some(JobState::Active) {
            return Err(Error::invalid(
                "job",
                format!("{} is running: cancel it first", id.as_str()),
            ));
        }
        Ok(state)
    }

    /// Runs dead job `id` again, with fresh attempts. Returns its state after the call
    /// ([`JobState::Waiting`] when it was dead, else the state it is in and stays in), or `None`
    /// when the queue holds no such job.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn retry(&self, id: &JobId) -> Result<Option<JobState>> {
        self.one_job(&RETRY, id).await
    }

    /// Runs delayed job `id` now. Returns its state after the call ([`JobState::Waiting`] when
    /// it was delayed, else the state it is in), or `None` when the queue holds no such job.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn promote(&self, id: &JobId) -> Result<Option<JobState>> {
        self.one_job(&PROMOTE, id).await
    }

    async fn one_job(
        &self,
        script: &crate::scripts::Function,
        id: &JobId,
    ) -> Result<Option<JobState>> {
        let state: Option<String> = self
            .call(script)
            .arg(id.as_str())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(state.as_deref().map(JobState::parse))
    }

    /// Removes every waiting job (and with `delayed`, every delayed one); running and finished
    /// jobs stay. Returns how many were removed.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn drain(&self, delayed: bool) -> Result<u64> {
        self.in_steps(|| {
            let mut call = self.call(&DRAIN);
            call.arg(if delayed { "1" } else { "0" }).arg(STEP);
            call
        })
        .await
    }

    /// Removes the jobs in finished state `state` (completed, dead or cancelled) that finished
    /// at least `older_than` ago ([`Duration::ZERO`]: all of them). Returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a state jobs are not finished in; [`Error::Unavailable`].
    pub async fn clean(&self, state: JobState, older_than: Duration) -> Result<u64> {
        if !matches!(
            state,
            JobState::Completed | JobState::Dead | JobState::Cancelled
        ) {
            return Err(Error::invalid(
                "state",
                "only completed, dead and cancelled jobs are cleaned",
            ));
        }
        self.in_steps(|| {
            let mut call = self.call(&CLEAN);
            call.arg(state.set()).arg(millis(older_than)).arg(STEP);
            call
        })
        .await
    }

    /// Deletes the queue and everything in it: jobs in every state, their logs and unique keys,
    /// repeatable jobs, the worker registry, the event stream, the counts. Paused first, so
    /// that workers take nothing meanwhile. Returns how many jobs were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when jobs are running and `force` is false (with `force`, their
    /// workers' outcomes are dropped); [`Error::Unavailable`].
    pub async fn obliterate(&self, force: bool) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let n: i64 = self
                .call(&OBLITERATE)
                .arg(if force { "1" } else { "0" })
                .arg(STEP)
                .invoke_async(&mut self.conn())
                .await?;
            match u64::try_from(n) {
                Err(_) => {
                    return Err(Error::invalid(
                        "queue",
                        "jobs are running: stop its workers, or obliterate with force",
                    ));
                }
                Ok(0) => return Ok(deleted),
                Ok(n) => deleted += n,
            }
        }
    }

    /// Calls a bulk script until it removes nothing more; the total it removed.
    async fn in_steps(&self, call: impl Fn() -> crate::scripts::Call) -> Result<u64> {
        let mut total = 0;
        loop {
            let n: u64 = call().invoke_async(&mut self.conn()).await?;
            total += n;
            if n < STEP {
                return Ok(total);
            }
        }
    }

    /// A page of job `id`'s log ([`crate::JobContext::log`]), oldest line first: `count` lines
    /// from line `start`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn logs(&self, id: &JobId, start: usize, count: usize) -> Result<Vec<String>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        // Members '<id>\n', the line's number in 10 digits, the line: in order (logs.lua).
        let id = id.as_str();
        let lines: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(format!("{}logs", self.key_prefix()))
            .arg(format!("[{id}\n"))
            .arg(format!("({id}\u{b}"))
            .arg("LIMIT")
            .arg(start)
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        Ok(lines
            .into_iter()
            .map(|l| l.get(id.len() + 11..).unwrap_or_default().to_owned())
            .collect())
    }

    /// How many jobs completed (or died) in each of the last `minutes` minutes (at most a day:
    /// 1440), the oldest first, the current minute last.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`].
    pub async fn metrics(&self, metric: Metric, minutes: u32) -> Result<Vec<u64>> {
        let kind = match metric {
            Metric::Completed => "completed",
            Metric::Dead => "dead",
        };
        let minutes = u64::from(minutes.min(1440));
        let now = self.server_time().await? / 60_000;
        let counts: HashMap<u64, u64> = redis::cmd("HGETALL")
            .arg(format!("{}metrics:{kind}", self.key_prefix()))
            .query_async(&mut self.conn())
            .await?;
        Ok((0..minutes)
            .rev()
            .map(|ago| counts.get(&(now - ago)).copied().unwrap_or(0))
            .collect())
    }
}
