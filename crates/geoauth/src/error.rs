//! The crate's one error type.

use std::time::Duration;

use http::StatusCode;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in geoauth.
///
/// Callers classify without parsing messages: [`Error::kind`] says whether the answer is *no*
/// ([`ErrorKind::Unauthenticated`], [`ErrorKind::Forbidden`]), whether the answer could not be
/// found out ([`ErrorKind::Unavailable`]: Redis unreachable or timed out), and
/// [`Error::status`] maps that to HTTP. No message ever contains a token, a session id or a
/// password.
///
/// ```
/// use geoauth::{Error, ErrorKind, Token, TokenFormat};
///
/// let err = Token::parse("gsk_not-a-real-token", TokenFormat::Native).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Unauthenticated);
/// assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
/// assert!(matches!(err, Error::MalformedToken { .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token is not one this service could have issued (length, characters, checksum);
    /// refused without asking Redis.
    #[error("malformed api key: {reason}")]
    MalformedToken {
        /// What is wrong with it (never the token itself).
        reason: &'static str,
    },
    /// No key with this token exists for the user, or it was revoked.
    #[error("unknown api key")]
    UnknownKey,
    /// The key existed but its expiry has passed.
    #[error("expired api key")]
    ExpiredKey,
    /// The request carried no key and the user has no `default_public` key.
    #[error("no api key given and the user has no public key")]
    NoPublicKey,
    /// The credentials could not be read (a Basic header that is not `user:token` in base64).
    #[error("malformed credentials: {reason}")]
    MalformedCredentials {
        /// What is wrong with them.
        reason: &'static str,
    },
    /// Basic credentials name a different user than the request's.
    #[error("credentials are for another user")]
    UserMismatch,
    /// The key does not grant this API.
    #[error("the api key does not grant access to the {api} api")]
    ApiNotGranted {
        /// The API asked for.
        api: crate::Api,
    },
    /// The key does not grant this privilege on this table.
    #[error("the api key does not grant {privilege} on {table}")]
    TableNotGranted {
        /// The table asked for, `schema.table`.
        table: String,
        /// The privilege asked for.
        privilege: crate::Privilege,
    },
    /// The session id is unknown, expired, revoked, or presented on the wrong channel.
    #[error("invalid session")]
    InvalidSession,
    /// A value given to this crate's API is not valid (a user name, a table name, a quota).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A record in Redis could not be read back (written by something else, or damaged).
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt {
        /// The Redis key (never contains a secret: native keys are stored under a digest).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system's random source failed (no token or session id could be made).
    #[error("the operating system's random source failed")]
    Random,
    /// Redis could not be asked: unreachable, connection dropped, or timed out.
    #[error("redis is unavailable")]
    Unavailable(#[source] redis::RedisError),
    /// Redis answered with an error (a script error, a wrong type).
    #[error("redis refused the command")]
    Redis(#[source] redis::RedisError),
}

/// The class of an [`Error`], for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Who is calling is unknown or not believed: answer 401.
    Unauthenticated,
    /// The caller is known but may not do this: answer 403.
    Forbidden,
    /// The caller's input is invalid: answer 400.
    Invalid,
    /// The answer could not be found out (Redis unreachable or timed out): answer 503, retry.
    Unavailable,
    /// A fault on our side (corrupt data, a refused command): answer 500.
    Internal,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::MalformedToken { .. }
            | Self::UnknownKey
            | Self::ExpiredKey
            | Self::NoPublicKey
            | Self::MalformedCredentials { .. }
            | Self::InvalidSession => ErrorKind::Unauthenticated,
            Self::UserMismatch | Self::ApiNotGranted { .. } | Self::TableNotGranted { .. } => {
                ErrorKind::Forbidden
            }
            Self::Invalid { .. } => ErrorKind::Invalid,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Corrupt { .. } | Self::Redis(_) | Self::Random => ErrorKind::Internal,
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self.kind() {
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the answer could not be found out (the request may succeed when retried).
    pub fn is_unavailable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// How long to wait before retrying, when that is known (rate limits report theirs in
    /// [`crate::RateDecision`] instead).
    pub fn retry_after(&self) -> Option<Duration> {
        self.is_unavailable().then_some(Duration::from_secs(1))
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<redis::RedisError> for Error {
    /// Connection-level failures become [`Error::Unavailable`]; answers from the server
    /// become [`Error::Redis`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_statuses() {
        let cases = [
            (Error::UnknownKey, StatusCode::UNAUTHORIZED),
            (Error::ExpiredKey, StatusCode::UNAUTHORIZED),
            (Error::UserMismatch, StatusCode::FORBIDDEN),
            (
                Error::ApiNotGranted {
                    api: crate::Api::Maps,
                },
                StatusCode::FORBIDDEN,
            ),
            (Error::invalid("user", "empty"), StatusCode::BAD_REQUEST),
            (
                Error::corrupt("k", "no type"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status, "{err}");
        }
    }

    #[test]
    fn connection_failures_are_unavailable_and_server_errors_are_not() {
        let io = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let err = Error::from(io);
        assert!(err.is_unavailable());
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));

        let parse = redis::RedisError::from((redis::ErrorKind::Parse, "bad reply"));
        let err = Error::from(parse);
        assert!(!err.is_unavailable());
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
