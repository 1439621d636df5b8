//! One job's run: its handler under its timeout and the worker's hard stop, its lease
//! extended while it runs, and its outcome as the queue records it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use redis::aio::ConnectionLike;
use tokio::sync::watch;

use super::Inner;
use super::keeper::{Lease, Watch};
use super::lane::Taken;
use crate::queue::millis;
use crate::{JobContext, JobId};

pub(super) enum Outcome {
    Done(serde_json::Value),
    Failed { message: String, retry: bool },
    Release,
    Cancelled,
    Lost,
}

/// A finished job's outcome, waiting for its queue's next finish call.
pub(super) struct Report {
    pub(super) id: JobId,
    pub(super) token: String,
    pub(super) kind: &'static str,
    pub(super) text: String,
    pub(super) delay_ms: u64,
    /// The job's lease, kept until the outcome is reported: the report may wait for the
    /// lane's next call (behind a handler that blocks the thread) well past the lease.
    pub(super) _lease: Option<Watch>,
}

/// What a job's task hands back to the worker when the job is over.
pub(super) struct Ended {
    pub(super) queue: usize,
    /// `None` when the job's lock was lost: there is nothing to report.
    pub(super) report: Option<Report>,
}

pub(super) async fn run_job<C>(
    inner: &Inner<C>,
    job: &Taken,
    hard_stop: &mut watch::Receiver<bool>,
    lease: &mut Watch,
) -> Outcome
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let Some(handler) = inner.handlers.get(job.name.as_str()) else {
        return Outcome::Failed {
            message: format!("no handler for jobs named {}", job.name),
            retry: false,
        };
    };
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
    // The keeper renews the lease on a thread of its own (a handler blocking this one cannot
    // starve it) and tells of a lost lease or a cancellation.
    let mut keeper_alive = true;
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
            changed = lease.lease.changed(), if keeper_alive => {
                if changed.is_err() {
                    keeper_alive = false;
                    continue;
                }
                match *lease.lease.borrow() {
                    Lease::Lost => return Outcome::Lost,
                    Lease::Cancelled => return Outcome::Cancelled,
                    Lease::Held => {}
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

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("the handler panicked: {what}")
}

/// What is reported for a job's outcome; `None` when its lock was lost (another worker has
/// the job now).
pub(super) fn report(job: &Taken, outcome: Outcome) -> Option<Report> {
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
        _lease: None,
    })
}

/// A number in `0..1` from the operating system's random source (for backoff jitter).
pub(super) fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
