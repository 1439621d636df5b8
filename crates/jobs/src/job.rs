//! What a job is: a name, a serde payload, options.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// A kind of job: its payload type and the name workers find its handler by.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Import { url: String }
///
/// impl geostack_jobs::Job for Import {
///     const NAME: &'static str = "import";
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name, unique among the kinds of job of a queue.
    const NAME: &'static str;
}

/// A queue's name: 1 to 64 of `a-z 0-9 - _ :`.
///
/// ```
/// assert!(geostack_jobs::QueueName::new("new:ad").is_ok());
/// assert!(geostack_jobs::QueueName::new("a{b}").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueName(String);

impl QueueName {
    /// Validates a queue name.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] otherwise.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b':')
            });
        if ok {
            Ok(Self(name))
        } else {
            Err(Error::invalid(
                "queue name",
                "expected 1 to 64 of a-z 0-9 - _ :",
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A job's id: 32 hex characters when generated, or the caller's own (1 to 64 of
/// `A-Z a-z 0-9 - _`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A new random id.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when the operating system's random source fails.
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|_| Error::invalid("job id", "no randomness"))?;
        Ok(Self(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// An id of the caller's choosing.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty, long or odd id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if ok {
            Ok(Self(id))
        } else {
            Err(Error::invalid(
                "job id",
                "expected 1 to 64 of A-Z a-z 0-9 - _",
            ))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How long to wait before a failed job runs again.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay every time.
    Fixed(Duration),
    /// `base × 2^(attempt - 1)`, capped at `max`, minus a random part of up to `jitter` of it
    /// (0 to 1), so that failed jobs do not return all at once.
    Exponential {
        /// The first delay.
        base: Duration,
        /// The cap.
        max: Duration,
        /// The random share taken off, 0 to 1.
        jitter: f64,
    },
}

impl Backoff {
    /// The delay after failed attempt `attempt` (1 for the first), with `random` in `0..1`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use geostack_jobs::Backoff;
    ///
    /// let b = Backoff::Exponential { base: Duration::from_secs(1), max: Duration::from_secs(60), jitter: 0.0 };
    /// assert_eq!(b.delay(1, 0.5), Duration::from_secs(1));
    /// assert_eq!(b.delay(4, 0.5), Duration::from_secs(8));
    /// assert_eq!(b.delay(20, 0.5), Duration::from_secs(60));
    /// ```
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Exponential { base, max, jitter } => {
                let factor =
                    2f64.powi(i32::try_from(attempt.saturating_sub(1).min(62)).unwrap_or(62));
                let full = (base.as_secs_f64() * factor).min(max.as_secs_f64());
                Duration::from_secs_f64(
                    full * (1.0 - jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0)),
                )
            }
        }
    }
}

/// Options of one enqueued job. Every setter's doc gives its default.
#[derive(Clone, Debug, PartialEq)]
pub struct JobOptions {
    pub(crate) delay: Duration,
    pub(crate) priority: u8,
    pub(crate) attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) unique: Option<String>,
    pub(crate) id: Option<JobId>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) tenant: Option<String>,
    pub(crate) at_most_once: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            priority: 0,
            attempts: 3,
            backoff: Backoff::Exponential {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
                jitter: 0.5,
            },
            unique: None,
            id: None,
            timeout: None,
            tenant: None,
            at_most_once: false,
        }
    }
}

impl JobOptions {
    /// Run no sooner than this from now. Default: at once.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// 0 to 255, higher first. Default 0.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// How many times the job may run to an end (a result or an error) before it goes to the
    /// dead letter: a retryable error is retried while fewer runs than this have ended. A run
    /// interrupted by its worker's death is not an attempt but a stall, which
    /// [`crate::WorkerConfig::max_stalls`] bounds. Default 3.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The delay before a retry. Default exponential from 1 s, at most 5 minutes, jitter 0.5.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// A key that makes the job unique while it is waiting, delayed, active or failed: enqueuing
    /// another with the same key returns the first one's id. Default none.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique = Some(key.into());
        self
    }

    /// The job's id. Default: a random one.
    pub fn id(mut self, id: JobId) -> Self {
        self.id = Some(id);
        self
    }

    /// How long one attempt may run; past it the attempt fails as timed out. Default: no limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the job at most once, for work that must not be repeated (a write that may have
    /// committed): once started, it is never started again. A run interrupted by its worker's
    /// death, a lost lease or a shutdown past its deadline sends the job to the dead letter with
    /// an error that begins `interrupted`, and a failure is not retried (one attempt). A job
    /// taken by a worker that died before starting it counts as started. Default off: a job is
    /// run at least once, again after an interruption.
    pub fn at_most_once(mut self) -> Self {
        self.at_most_once = true;
        self.attempts = 1;
        self
    }

    /// The tenant the job belongs to (recorded with the job). Default none.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_grows_caps_and_jitters_down() {
        let b = Backoff::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.5,
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(b.delay(10, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(200));
        assert_eq!(
            Backoff::Fixed(Duration::from_secs(2)).delay(7, 0.9),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn ids_are_random_hex_or_the_callers() {
        let (a, b) = (JobId::generate().unwrap(), JobId::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(JobId::new("import-42").is_ok());
        assert!(JobId::new("a:b").is_err());
    }
}
