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
    /// The HTTP status a status endpoint answers this error with: 400 for an invalid name,
    /// id or payload, 503 when Redis could not be asked, 500 when it refused.
    ///
    /// ```
    /// let err = geostack_jobs::JobId::new("not an id!").unwrap_err();
    /// assert_eq!(err.status(), 400);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid { .. } | Self::Payload(_) => 400,
            Self::Unavailable(_) => 503,
            Self::Redis(_) => 500,
        }
    }

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

/// [`Error::status`] with CARTO's body, `{"error": ["…"]}` (the error's own words, never
/// Redis's).
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        let status = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "job queue error");
        }
        let body = serde_json::json!({ "error": [self.to_string()] }).to_string();
        let mut response = axum_core::response::Response::new(axum_core::body::Body::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        response
    }
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    use super::*;
    use axum_core::response::IntoResponse as _;

    #[test]
    fn an_error_answers_with_its_status_in_carto_s_shape() {
        let response = Error::invalid("job id", "too long").into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
        let io = redis::RedisError::from(std::io::Error::other("reset"));
        assert_eq!(Error::from(io).into_response().status(), 503);
    }
}
