//! The crate's one error type.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in geostack-jobs.
///
/// ```
/// let err = geostack_jobs::QueueName::new("bad name").unwrap_err();
/// assert!(matches!(err, geostack_jobs::Error::Invalid { .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name, id or option that cannot be used.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A payload that could not be serialized.
    #[error("the payload cannot be serialized")]
    Payload(#[source] serde_json::Error),
    /// Redis could not be asked: unreachable, connection dropped, timed out.
    #[error("redis is unavailable")]
    Unavailable(#[source] redis::RedisError),
    /// Redis answered with an error.
    #[error("redis refused the command")]
    Redis(#[source] redis::RedisError),
}

impl Error {
    /// Whether Redis could not be asked (retrying may help).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
        {
            Self::Unavailable(e)
        } else {
            Self::Redis(e)
        }
    }
}
