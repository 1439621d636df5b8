//! The error a test sees when a service it needs cannot be reached.

use std::fmt;

/// A service the test needs could not be reached or prepared; its message names the command
/// that provisions it.
///
/// ```
/// let err = geostack_testkit::Unavailable::new("Redis", "connection refused");
/// assert!(err.to_string().contains("scripts/services"));
/// ```
#[derive(Debug)]
pub struct Unavailable {
    service: &'static str,
    cause: String,
}

impl Unavailable {
    /// An unavailable `service` (a human name such as `"PostgreSQL"`), with its cause.
    pub fn new(service: &'static str, cause: impl fmt::Display) -> Self {
        Self {
            service,
            cause: cause.to_string(),
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is unavailable for this test ({}): run `{}` to install and start it",
            self.service,
            self.cause,
            crate::PROVISION
        )
    }
}

impl std::error::Error for Unavailable {}
