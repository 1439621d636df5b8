//! Rate limits: GCRA in one Lua script, one round trip, no Redis module.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        let reset = ceil_secs(self.reset);
        let pairs = [
            ("ratelimit-limit", self.limit.into()),
            ("ratelimit-remaining", self.remaining.into()),
            ("ratelimit-reset", reset),
            ("carto-rate-limit-limit", self.limit.into()),
            ("carto-rate-limit-remaining", self.remaining.into()),
            ("carto-rate-limit-reset", reset),
        ];
        for (name, value) in pairs {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
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
        Self { conn, prefix }
    }

    /// Counts one request of `subject` now (Redis's clock) against `quota`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn check(&self, subject: &RateSubject, quota: Quota) -> Result<RateDecision> {
        self.run(subject, quota, 0).await
    }

    /// Counts one request of `subject` at `now` (a clock of the caller's: tests, replays).
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
        self.run(subject, quota, u64::try_from(us).unwrap_or(u64::MAX).max(1))
            .await
    }

    async fn run(&self, subject: &RateSubject, quota: Quota, now_us: u64) -> Result<RateDecision> {
        let (allowed, remaining, reset, retry): (i64, i64, i64, i64) = GCRA
            .key(
                self.prefix
                    .rate(&subject.user, &subject.group, &subject.subject),
            )
            .arg(quota.emission_us)
            .arg(quota.burst)
            .arg(now_us)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: quota.burst,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: micros(reset),
            retry_after: (allowed != 1).then(|| micros(retry)),
        })
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
