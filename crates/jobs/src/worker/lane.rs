//! A lane of a worker: one script call out at a time, which reports the outcomes of the jobs
//! that ended and takes jobs for the free slots.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::Instrument as _;

use redis::aio::ConnectionLike;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Inner;
use super::job::{Ended, Report, report, run_job};
use super::keeper::Watch;
use crate::queue::{BackoffRecord, millis};
use crate::scripts::FINISH;
use crate::{Backoff, JobId, Result};

/// A job taken from a queue.
pub(super) struct Taken {
    pub(super) queue: usize,
    pub(super) id: JobId,
    pub(super) name: String,
    pub(super) payload: String,
    pub(super) attempt: u32,
    pub(super) max_attempts: u32,
    pub(super) timeout: Option<Duration>,
    pub(super) backoff: Backoff,
    pub(super) token: String,
}

pub(super) type TakenTuple = (String, String, String, u32, u32, u64, String, String);

/// What the take step of a script answered: the jobs taken, and how long the queue's rate
/// limit asks to wait before the next take (0: no wait).
pub(super) struct Took {
    pub(super) wait_ms: u64,
    pub(super) jobs: Vec<TakenTuple>,
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

/// The most jobs one script call takes, and the most outcomes it reports.
pub(super) const BATCH: usize = 64;

/// The most tokens of calls with a lost reply a lane remembers per queue.
const LOST_KEPT: usize = 16;

/// The worker's loop: hands the outcomes of finished jobs to their queues and takes new jobs
/// for the free slots, both in the same script call per queue, as many at once as there are
/// (up to [`BATCH`]). While one call is out, the outcomes of jobs finishing meanwhile gather
/// for the next, so the round trips per job fall as the load rises.
pub(super) async fn drive<C>(
    inner: Arc<Inner<C>>,
    hard_stop: watch::Receiver<bool>,
    lane: usize,
    slots: usize,
) where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let queues = inner.queues.len();
    let mut running: JoinSet<Ended> = JoinSet::new();
    let mut reports: Vec<Vec<Report>> = (0..queues).map(|_| Vec::new()).collect();
    // Per queue: its last take found fewer jobs than asked (cleared by an enqueue signal, a
    // sweep that gave jobs back, or each second for delayed jobs come due).
    let mut empty = vec![false; queues];
    // Per queue: no job is to be taken before this time (its rate limit).
    let mut limited_until: Vec<Option<Instant>> = vec![None; queues];
    // Per queue: the tokens of calls whose reply was lost (they may have taken jobs, which
    // the next call that gets through hands back).
    let mut lost: Vec<Vec<String>> = (0..queues).map(|_| Vec::new()).collect();
    // Each call's token: 48 random bits drawn once for the lane and the call's number, unique
    // among every worker's calls, and short enough (under Redis's 64 bytes with a job's id) to
    // keep the job's hash in its compact encoding. No system call per job for randomness.
    let mut calls: u64 = 0;
    let mut lane_bits: Option<String> = None;
    loop {
        gather(&mut running, &mut reports, slots).await;
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
        let mut taken = Vec::new();
        for q in 0..queues {
            let may_take = free > 0 && limited_until[q].is_none_or(|t| t <= Instant::now());
            // A queue thought empty is asked again only when a call goes to it anyway, or
            // when a lost reply may have left it jobs taken in this worker's name.
            if reports[q].is_empty() && lost[q].is_empty() && (!may_take || empty[q]) {
                continue;
            }
            let want = if may_take { free.min(BATCH) } else { 0 };
            let batch: Vec<Report> = {
                let n = reports[q].len().min(BATCH);
                reports[q].drain(..n).collect()
            };
            if lane_bits.is_none() {
                match JobId::generate() {
                    Ok(random) => {
                        lane_bits = Some(random.as_str().get(..12).unwrap_or("").to_owned());
                    }
                    Err(_) => {
                        reports[q].splice(0..0, batch);
                        failed = true;
                        continue;
                    }
                }
            }
            calls += 1;
            let token = format!("{}{calls:x}", lane_bits.as_deref().unwrap_or(""));
            match finish_and_take(&inner, q, &batch, want, &token, &lost[q]).await {
                Ok((jobs, wait_ms)) => {
                    called = true;
                    lost[q].clear();
                    if want > 0 {
                        empty[q] = jobs.len() < want && wait_ms == 0;
                    }
                    limited_until[q] =
                        (wait_ms > 0).then(|| Instant::now() + Duration::from_millis(wait_ms));
                    free = free.saturating_sub(jobs.len());
                    for job in jobs {
                        // Its lease is kept from now, before it starts: on a busy runtime
                        // it may wait for a thread well past the lease.
                        let watch = inner.keeper.watch(
                            &inner.leases[job.queue],
                            job.id.as_str(),
                            &job.token,
                        );
                        taken.push((job, watch));
                    }
                }
                Err(_) => {
                    // Redis is away, or the reply was lost: the call may or may not have run.
                    // The outcomes go again with the next call (one already recorded is
                    // dropped there for its ended lock), and that call hands back what this
                    // one may have taken (its token remembered; bounded, the oldest first
                    // forgotten: a lease that expires under them is the last resort).
                    reports[q].splice(0..0, batch);
                    if lost[q].len() >= LOST_KEPT {
                        lost[q].remove(0);
                    }
                    lost[q].push(token);
                    failed = true;
                }
            }
        }
        // A lone job that fills the lane, with nothing else to send, runs in the lane's own
        // task: the lane would only wait for it, and a task of its own costs a spawn and, on
        // a multi-threaded runtime, often the wake-up of another thread, on every job.
        let alone = taken.len() == 1
            && running.is_empty()
            && slots == 1
            && !failed
            && lost.iter().all(Vec::is_empty)
            && reports.iter().all(Vec::is_empty);
        if alone && let Some((job, watch)) = taken.pop() {
            let ended = run_taken(Arc::clone(&inner), hard_stop.clone(), job, watch).await;
            collect(Ok(ended), &mut reports);
        }
        for (job, watch) in taken {
            running.spawn(run_taken(Arc::clone(&inner), hard_stop.clone(), job, watch));
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
        let now = Instant::now();
        let soonest = limited_until
            .iter()
            .flatten()
            .filter(|t| **t > now)
            .min()
            .map_or(Duration::from_secs(1), |t| *t - now)
            .min(Duration::from_secs(1));
        tokio::select! {
            Some(ended) = running.join_next(), if !running.is_empty() => {
                collect(ended, &mut reports);
            }
            () = inner.wake[lane].notified() => empty.fill(false),
            () = tokio::time::sleep(soonest) => empty.fill(false),
        }
    }
}

/// Runs a taken job under its lease `watch` (its span names the job, never its payload);
/// ends with what its queue's next call reports.
fn run_taken<C>(
    inner: Arc<Inner<C>>,
    mut hard_stop: watch::Receiver<bool>,
    job: Taken,
    mut watch: Watch,
) -> impl Future<Output = Ended> + Send + 'static
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let span = tracing::info_span!(
        "job",
        queue = inner.queues[job.queue].name().as_str(),
        id = %job.id,
        name = %job.name,
        attempt = job.attempt,
    );
    async move {
        let outcome = run_job(&inner, &job, &mut hard_stop, &mut watch).await;
        Ended {
            queue: job.queue,
            report: report(&job, outcome).map(|r| Report {
                _lease: Some(watch),
                ..r
            }),
        }
    }
    .instrument(span)
}

/// Collects the jobs that ended. Jobs ending together go in one call: running jobs get turns
/// to end as long as that brings more (no timer: a lone job's outcome waits for nothing).
/// With nothing to send (no outcome, no free slot of the `slots`) it gives no turns: the lane
/// then waits for a job to end, and a turn given here would only wake another runtime thread
/// for nothing (at one job at a time, on every job).
pub(super) async fn gather(
    running: &mut JoinSet<Ended>,
    reports: &mut [Vec<Report>],
    slots: usize,
) {
    let mut first = true;
    loop {
        let before = running.len();
        while let Some(ended) = running.try_join_next() {
            collect(ended, reports);
        }
        let idle = reports.iter().all(Vec::is_empty) && running.len() >= slots;
        if running.is_empty() || idle || (running.len() == before && !first) {
            return;
        }
        first = false;
        tokio::task::yield_now().await;
    }
}

pub(super) fn collect(
    ended: std::result::Result<Ended, tokio::task::JoinError>,
    reports: &mut [Vec<Report>],
) {
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

/// Reports `reports` to queue `queue` and takes up to `want` of its jobs under `token`, in one
/// script call that also hands back the jobs still held under the `lost` calls' tokens.
/// Returns those jobs and how long the queue's rate limit asks to wait (0: no wait).
pub(super) async fn finish_and_take<C>(
    inner: &Inner<C>,
    queue: usize,
    reports: &[Report],
    want: usize,
    token: &str,
    lost: &[String],
) -> Result<(Vec<Taken>, u64)>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let config = &inner.config;
    let q = &inner.queues[queue];
    let mut call = q.call(&FINISH);
    call.arg(lost.join(","))
        .arg(&inner.id)
        .arg(millis(config.lease))
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
