//! How a worker behaves.

use std::time::Duration;

/// How many dead jobs a worker keeps by default ([`WorkerConfig::keep_dead`]).
pub const DEFAULT_KEEP_DEAD: u64 = 10_000;
/// How long dead jobs are kept by default ([`WorkerConfig::keep_dead_for`]): 180 days.
pub const DEFAULT_KEEP_DEAD_FOR: Duration = Duration::from_secs(180 * 24 * 3600);

/// How a worker behaves. Every setter's doc gives its default.
///
/// ```
/// use std::time::Duration;
/// use geostack_jobs::WorkerConfig;
///
/// let config = WorkerConfig::default()
///     .concurrency(8)
///     .heartbeat(Duration::from_millis(500))
///     .keep_completed_for(Duration::from_secs(3600));
/// ```
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub(crate) concurrency: usize,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) max_stalls: u32,
    pub(crate) result_ttl: Duration,
    pub(crate) keep_completed: u64,
    pub(crate) keep_completed_for: Option<Duration>,
    pub(crate) keep_dead: Option<u64>,
    pub(crate) keep_dead_for: Option<Duration>,
    pub(crate) shutdown_deadline: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 1,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            max_stalls: 5,
            result_ttl: Duration::from_secs(24 * 3600),
            keep_completed: 1000,
            keep_completed_for: None,
            keep_dead: Some(DEFAULT_KEEP_DEAD),
            keep_dead_for: Some(DEFAULT_KEEP_DEAD_FOR),
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

    /// How long a job's lock lasts without renewal. The worker renews it every third of that
    /// (at least every second) while the job runs; a job whose lock expired is taken back by
    /// the sweep (run every second by every worker). This covers what the heartbeat misses — a
    /// worker that still beats but no longer renews. A running job that was cancelled stops at
    /// the next renewal. Default 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How often the worker registers its heartbeat. A worker silent for three heartbeats is
    /// dead: the next sweep gives its jobs back at once, so they run again about three
    /// heartbeats plus a second after the death. Default 1 s.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval.max(Duration::from_millis(50));
        self
    }

    /// A job charged more than this many stalls goes to the dead letter. A worker that died
    /// holding k jobs charges each 1/k of a stall; a lease that expired under a live worker
    /// charges its job a whole one. A job charged a whole stall or more runs again only after
    /// a wait that doubles with each (1 s, 2 s, … at most a minute). Default 5.
    pub fn max_stalls(mut self, n: u32) -> Self {
        self.max_stalls = n;
        self
    }

    /// How long a completed or cancelled job is kept (zero: until the count limit removes
    /// it). A completed job is removed by the first call its queue gets from a worker after
    /// that (a worker with a free slot calls each second). Default 24 hours.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// How many completed jobs are kept at most. The oldest go in batches: the count may run
    /// over by a 64th of it before they do. Default 1000.
    pub fn keep_completed(mut self, n: u64) -> Self {
        self.keep_completed = n;
        self
    }

    /// Completed jobs older than this are removed. Default: kept for the result TTL.
    pub fn keep_completed_for(mut self, age: Duration) -> Self {
        self.keep_completed_for = Some(age);
        self
    }

    /// How many jobs the dead letter keeps at most (over by a 64th at most, as
    /// [`WorkerConfig::keep_completed`]), the oldest removed first. Default 10 000
    /// ([`DEFAULT_KEEP_DEAD`], as Sidekiq's dead set): a failing job is kept to be looked at
    /// and re-driven, never without bound.
    pub fn keep_dead(mut self, n: u64) -> Self {
        self.keep_dead = Some(n);
        self
    }

    /// Dead jobs older than this are removed. Default 180 days ([`DEFAULT_KEEP_DEAD_FOR`]).
    pub fn keep_dead_for(mut self, age: Duration) -> Self {
        self.keep_dead_for = Some(age);
        self
    }

    /// On shutdown, how long running jobs may take to finish; those still running then are
    /// given back to the queue. Default 10 s.
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown_deadline = deadline;
        self
    }

    /// How old a completed job may grow: the sooner of its result TTL and the age limit.
    pub(crate) fn completed_age(&self) -> Option<Duration> {
        let ttl = (!self.result_ttl.is_zero()).then_some(self.result_ttl);
        match (ttl, self.keep_completed_for) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How long a worker may go without a heartbeat before it counts as dead.
    pub(crate) fn worker_ttl(&self) -> Duration {
        self.heartbeat * 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_retention_is_bounded_by_default() {
        let c = WorkerConfig::default();
        assert_eq!(c.keep_completed, 1000);
        assert_eq!(c.completed_age(), Some(Duration::from_secs(24 * 3600)));
        assert_eq!(c.keep_dead, Some(DEFAULT_KEEP_DEAD));
        assert_eq!(c.keep_dead_for, Some(DEFAULT_KEEP_DEAD_FOR));
    }
}
