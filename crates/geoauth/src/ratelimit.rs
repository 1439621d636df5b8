//! Rate limits: GCRA in one Lua script, one round trip, no Redis module; optionally decided in
//! process between reconciliations with Redis.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use redis::aio::{ConnectionLike, ConnectionManager};

use crate::scripts::GCRA;
use crate::{Error, KeyPrefix, Principal, Result, UserName};

/// A rate: `rate` requests per `period`, with bursts of up to `burst` at once.
///
/// ```
/// use std::time::Duration;
///
/// // 10 requests a second on average, up to 20 at once.
/// let quota = geoauth::Quota::new(20, 10, Duration::from_secs(1)).unwrap();
/// assert_eq!(quota.emission_interval(), Duration::from_millis(100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    burst: u32,
    emission_us: u64,
}

impl Quota {
    /// `rate` per `period`, bursts of `burst`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `burst` or `rate` is 0 or the interval between requests
    /// (`period / rate`) is under a microsecond.
    pub fn new(burst: u32, rate: u32, period: Duration) -> Result<Self> {
        if burst == 0 || rate == 0 {
            return Err(Error::invalid("quota", "burst and rate must be at least 1"));
        }
        let emission_us = u64::try_from(period.as_micros() / u128::from(rate)).unwrap_or(u64::MAX);
        if emission_us == 0 {
            return Err(Error::invalid(
                "quota",
                "period / rate is under a microsecond",
            ));
        }
        Ok(Self { burst, emission_us })
    }

    /// The most requests allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The steady-state interval between two allowed requests.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_micros(self.emission_us)
    }
}

/// Whose requests a cell counts: one key, or one user, within an endpoint group (`sql`,
/// `maps`, …).
///
/// ```
/// # fn demo(principal: &geoauth::Principal) -> geoauth::Result<()> {
/// let per_key = geoauth::RateSubject::key(principal, "sql")?;
/// let per_user = geoauth::RateSubject::user(principal.user(), "maps")?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSubject {
    user: UserName,
    group: String,
    subject: String,
}

impl RateSubject {
    /// The requests of the principal's key in `group`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a group that is not 1 to 32 of `a-z 0-9 - _`.
    pub fn key(principal: &Principal, group: &str) -> Result<Self> {
        Self::new(
            principal.user(),
            group,
            format!("key:{}", principal.key_id()),
        )
    }

    /// The requests of the principal's key in `group` from one client address: anonymous
    /// callers share the user's public key, so each address gets a bucket of its own.
    ///
    /// ```
    /// # fn demo(principal: &geoauth::Principal) -> geoauth::Result<()> {
    /// let addr: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    /// let per_client = geoauth::RateSubject::client(principal, "sql", addr)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RateSubject::key`].
    pub fn client(principal: &Principal, group: &str, addr: std::net::IpAddr) -> Result<Self> {
        Self::new(
            principal.user(),
            group,
            format!("key:{}:client:{addr}", principal.key_id()),
        )
    }

    /// All requests to `user`'s data in `group`, whatever the key.
    ///
    /// # Errors
    ///
    /// As [`RateSubject::key`].
    pub fn user(user: &UserName, group: &str) -> Result<Self> {
        Self::new(user, group, "user".to_owned())
    }

    fn new(user: &UserName, group: &str, subject: String) -> Result<Self> {
        let ok = !group.is_empty()
            && group.len() <= 32
            && group
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
        if !ok {
            return Err(Error::invalid(
                "rate limit group",
                "expected 1 to 32 of a-z 0-9 - _",
            ));
        }
        Ok(Self {
            user: user.clone(),
            group: group.to_owned(),
            subject,
        })
    }
}

/// The outcome of a rate-limit check, with what the response headers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// The burst: the most requests allowed at once.
    pub limit: u32,
    /// How many more requests would be allowed right now.
    pub remaining: u32,
    /// How long until the allowance is full again.
    pub reset: Duration,
    /// When denied: how long until a request would be allowed.
    pub retry_after: Option<Duration>,
}

impl RateDecision {
    /// Sets `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (the IETF
    /// httpapi draft's header fields, reset in whole seconds), their CARTO twins
    /// `Carto-Rate-Limit-Limit`, `-Remaining` and `-Reset`, and `Retry-After` (whole seconds,
    /// rounded up) when denied.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let decision = geoauth::RateDecision {
    ///     allowed: false,
    ///     limit: 5,
    ///     remaining: 0,
    ///     reset: Duration::from_millis(4_100),
    ///     retry_after: Some(Duration::from_millis(200)),
    /// };
    /// let mut headers = http::HeaderMap::new();
    /// decision.write_headers(&mut headers);
    /// assert_eq!(headers["ratelimit-remaining"], "0");
    /// assert_eq!(headers["carto-rate-limit-reset"], "5");
    /// assert_eq!(headers["retry-after"], "1");
    /// ```
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        const NAMES: [[HeaderName; 3]; 2] = [
            [
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
            ],
            [
                HeaderName::from_static("carto-rate-limit-limit"),
                HeaderName::from_static("carto-rate-limit-remaining"),
                HeaderName::from_static("carto-rate-limit-reset"),
            ],
        ];
        // Each value made once, shared by both spellings.
        let values = [
            HeaderValue::from(self.limit),
            HeaderValue::from(self.remaining),
            HeaderValue::from(ceil_secs(self.reset)),
        ];
        for names in NAMES {
            for (name, value) in names.into_iter().zip(&values) {
                headers.insert(name, value.clone());
            }
        }
        if let Some(retry) = self.retry_after {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(retry).max(1)),
            );
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_micros()
        .div_ceil(1_000_000)
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Checks rates in Redis: each check is one `EVALSHA` of a GCRA script, so every process
/// sharing the Redis shares the limit exactly.
///
/// With [`RateLimiter::deciding_locally`], checks are decided in process from the state Redis
/// last gave, and reconciled with Redis at most `sync` apart per subject: the hot path then makes
/// no round trip.
///
/// ```no_run
/// # async fn demo(principal: geoauth::Principal) -> geoauth::Result<()> {
/// use std::time::Duration;
/// use geoauth::{Quota, RateLimiter, RateSubject};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let limiter = RateLimiter::new(redis::aio::ConnectionManager::new(client).await?);
/// let quota = Quota::new(20, 10, Duration::from_secs(1))?;
/// let decision = limiter.check(&RateSubject::key(&principal, "sql")?, quota).await?;
/// if !decision.allowed { /* answer 429 with decision.write_headers(..) */ }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RateLimiter<C = ConnectionManager> {
    conn: C,
    prefix: KeyPrefix,
    local: Option<Arc<Local>>,
}

impl<C> RateLimiter<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A limiter on `conn` under the default prefix `geoauth:`.
    pub fn new(conn: C) -> Self {
        Self::with_prefix(conn, KeyPrefix::default())
    }

    /// A limiter on `conn` under `prefix`.
    pub fn with_prefix(conn: C, prefix: KeyPrefix) -> Self {
        Self {
            conn,
            prefix,
            local: None,
        }
    }

    /// Decides checks in this process, from each subject's state as Redis last gave it, and
    /// reconciles with Redis at most `sync` apart per subject: the first check of a subject
    /// after `sync` has passed goes to Redis, carrying the requests allowed here since the
    /// last reconciliation, and is decided there; the others make no round trip. `subjects`
    /// bounds how many subjects are kept (the least used leave first; a subject that left is
    /// decided in Redis again).
    ///
    /// Every allowed request is counted in Redis, at the latest with the subject's next
    /// reconciliation, so the long-run rate stays the quota's. What several processes sharing
    /// one Redis may allow beyond the quota is bounded: each decides from a state at most
    /// `sync` old, so `n` processes allow at most `(n - 1) × (burst + sync / interval)` more
    /// requests than the quota's burst for a subject, and that excess is then taken back (the
    /// subject is refused until it is repaid). A single process decides exactly as Redis
    /// would, to the precision of the clocks' offset (measured at each reconciliation, within
    /// a round trip). [`RateLimiter::check_at`] always goes to Redis.
    ///
    /// ```no_run
    /// # async fn demo(conn: redis::aio::ConnectionManager) {
    /// use std::time::Duration;
    ///
    /// let limiter = geoauth::RateLimiter::new(conn)
    ///     .deciding_locally(Duration::from_millis(100), 100_000);
    /// # }
    /// ```
    pub fn deciding_locally(mut self, sync: Duration, subjects: u64) -> Self {
        self.local = Some(Arc::new(Local {
            cells: moka::sync::Cache::builder().max_capacity(subjects).build(),
            sync,
            base: Instant::now(),
        }));
        self
    }

    /// Counts one request of `subject` now (Redis's clock) against `quota`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn check(&self, subject: &RateSubject, quota: Quota) -> Result<RateDecision> {
        let key = self.key(subject);
        let Some(local) = &self.local else {
            return Ok(self.run(key, quota, 0, 0).await?.decision);
        };
        let cell = local
            .cells
            .get_with_by_ref(&key, || Arc::new(Mutex::new(Cell::default())));
        // Decided here, or the requests to carry to Redis (none when this check goes to Redis
        // without reconciling: its quota changed while a reconciliation is out).
        let counted = {
            let mut c = lock(&cell);
            if c.quota == Some(quota)
                && (c.syncing || c.synced.is_some_and(|at| at.elapsed() < local.sync))
            {
                return Ok(c.decide(local.now(), quota));
            }
            (!c.syncing).then(|| {
                c.syncing = true;
                std::mem::take(&mut c.pending)
            })
        };
        let Some(counted) = counted else {
            return Ok(self.run(key, quota, 0, 0).await?.decision);
        };
        // Gives the counts back if this future is dropped before Redis answers.
        let mut out = Out {
            cell: &cell,
            counted,
            done: false,
        };
        let before = local.now();
        // On an error `out` gives the counts back, and the next check reconciles again.
        let answer = self.run(key, quota, 0, counted).await?;
        let after = local.now();
        out.done = true;
        let mut c = lock(&cell);
        c.syncing = false;
        // Requests allowed here while the call was out come on top of Redis's state.
        let late = i64::try_from(c.pending).unwrap_or(i64::MAX);
        c.offset = answer.now - (before + after) / 2;
        c.tat = answer.tat.max(answer.now) + late.saturating_mul(quota.interval());
        c.synced = Some(Instant::now());
        c.quota = Some(quota);
        Ok(answer.decision)
    }

    /// The Redis key of `subject`'s cell.
    fn key(&self, subject: &RateSubject) -> String {
        self.prefix
            .rate(&subject.user, &subject.group, &subject.subject)
    }

    /// Counts one request of `subject` at `now` (a clock of the caller's: tests, replays).
    /// Always decided in Redis.
    ///
    /// # Errors
    ///
    /// As [`RateLimiter::check`].
    pub async fn check_at(
        &self,
        subject: &RateSubject,
        quota: Quota,
        now: SystemTime,
    ) -> Result<RateDecision> {
        let us = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::invalid("time", "before 1970"))?
            .as_micros();
        let key = self.key(subject);
        let now = u64::try_from(us).unwrap_or(u64::MAX).max(1);
        Ok(self.run(key, quota, now, 0).await?.decision)
    }

    /// One GCRA call: `counted` requests allowed elsewhere first, then this one. Boxed: a
    /// check decided in process seldom makes it, and its own future stays small (every
    /// request's future holds it, and is moved whole).
    fn run(
        &self,
        key: String,
        quota: Quota,
        now_us: u64,
        counted: u64,
    ) -> Pin<Box<impl Future<Output = Result<Answer>> + '_>> {
        Box::pin(async move {
            let (allowed, remaining, reset, retry, tat, now): (i64, i64, i64, i64, i64, i64) = GCRA
                .key(key)
                .arg(quota.emission_us)
                .arg(quota.burst)
                .arg(now_us)
                .arg(counted)
                .invoke_async(&mut self.conn.clone())
                .await?;
            Ok(Answer {
                decision: decision(quota, allowed == 1, remaining, reset, retry),
                tat,
                now,
            })
        })
    }
}

/// What the script answered: the decision, the subject's TAT after it and Redis's clock (µs).
struct Answer {
    decision: RateDecision,
    tat: i64,
    now: i64,
}

fn decision(quota: Quota, allowed: bool, remaining: i64, reset: i64, retry: i64) -> RateDecision {
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    RateDecision {
        allowed,
        limit: quota.burst,
        remaining: u32::try_from(remaining).unwrap_or(0),
        reset: micros(reset),
        retry_after: (!allowed).then(|| micros(retry)),
    }
}

impl Quota {
    /// The emission interval in µs, as the cells' arithmetic wants it.
    fn interval(&self) -> i64 {
        i64::try_from(self.emission_us).unwrap_or(i64::MAX)
    }
}

/// The subjects decided in process ([`RateLimiter::deciding_locally`]).
struct Local {
    cells: moka::sync::Cache<String, Arc<Mutex<Cell>>>,
    sync: Duration,
    base: Instant,
}

impl Local {
    /// This process's clock, µs since the limiter was made.
    fn now(&self) -> i64 {
        i64::try_from(self.base.elapsed().as_micros()).unwrap_or(i64::MAX)
    }
}

/// One subject's state as decided in process.
#[derive(Default)]
struct Cell {
    /// The theoretical arrival time, µs of Redis's clock.
    tat: i64,
    /// Redis's clock minus this process's ([`Local::now`]), as of the last reconciliation.
    offset: i64,
    /// Requests allowed here and not yet counted in Redis.
    pending: u64,
    /// When the last reconciliation ended (none yet: the next check goes to Redis).
    synced: Option<Instant>,
    /// A reconciliation is out; checks meanwhile are decided here.
    syncing: bool,
    /// The quota of the last reconciliation (another one goes to Redis).
    quota: Option<Quota>,
}

impl Cell {
    /// The script's GCRA, on this process's state.
    fn decide(&mut self, local_now: i64, quota: Quota) -> RateDecision {
        let now = local_now.saturating_add(self.offset);
        let t = quota.interval();
        let tat = self.tat.max(now);
        let new_tat = tat.saturating_add(t);
        let allow_at = new_tat.saturating_sub(i64::from(quota.burst).saturating_mul(t));
        if now < allow_at {
            return decision(quota, false, 0, tat - now, allow_at - now);
        }
        self.tat = new_tat;
        self.pending += 1;
        decision(quota, true, (now - allow_at) / t, new_tat - now, 0)
    }
}

fn lock(cell: &Mutex<Cell>) -> MutexGuard<'_, Cell> {
    cell.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A reconciliation out: if Redis does not answer (an error, or its future dropped), the
/// requests it carried go back to the cell's pending count and the next check reconciles again.
struct Out<'a> {
    cell: &'a Mutex<Cell>,
    counted: u64,
    done: bool,
}

impl Drop for Out<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut c = lock(self.cell);
            c.syncing = false;
            c.pending += self.counted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_refuse_nonsense() {
        assert!(Quota::new(0, 1, Duration::from_secs(1)).is_err());
        assert!(Quota::new(1, 0, Duration::from_secs(1)).is_err());
        assert!(Quota::new(1, 2_000_000, Duration::from_secs(1)).is_err());
        assert_eq!(
            Quota::new(3, 4, Duration::from_secs(1))
                .unwrap()
                .emission_interval(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn cells_decide_as_the_script_does() {
        // 4 at once, one every 100 ms; the clocks 1 s apart.
        let quota = Quota::new(4, 10, Duration::from_secs(1)).unwrap();
        let mut cell = Cell {
            offset: 1_000_000,
            ..Cell::default()
        };
        let remaining: Vec<Option<u32>> = (0..5)
            .map(|_| {
                let d = cell.decide(0, quota);
                d.allowed.then_some(d.remaining)
            })
            .collect();
        assert_eq!(remaining, [Some(3), Some(2), Some(1), Some(0), None]);
        assert_eq!(cell.pending, 4);
        let refused = cell.decide(50_000, quota);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(50)));
        assert_eq!(refused.reset, Duration::from_millis(350));
        // One interval later, one more passes.
        assert!(cell.decide(100_000, quota).allowed);
        assert_eq!(cell.pending, 5);
    }

    #[test]
    fn a_reconciliation_dropped_midway_gives_its_counts_back() {
        let cell = Mutex::new(Cell {
            syncing: true,
            pending: 2,
            ..Cell::default()
        });
        drop(Out {
            cell: &cell,
            counted: 3,
            done: false,
        });
        let c = lock(&cell);
        assert!(!c.syncing);
        assert_eq!(c.pending, 5);
    }

    #[test]
    fn allowed_decisions_carry_no_retry_after() {
        let decision = RateDecision {
            allowed: true,
            limit: 10,
            remaining: 9,
            reset: Duration::from_millis(100),
            retry_after: None,
        };
        let mut headers = HeaderMap::new();
        decision.write_headers(&mut headers);
        assert_eq!(headers["ratelimit-limit"], "10");
        assert_eq!(headers["carto-rate-limit-remaining"], "9");
        assert_eq!(headers["ratelimit-reset"], "1");
        assert!(!headers.contains_key("retry-after"));
    }
}
