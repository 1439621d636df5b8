//! The server's one error type, answered as CARTO answers: a status and `{"error":["…"]}`.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `Result` with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the server can answer with instead of a result. [`Error::status`] is the HTTP
/// status; the body is CARTO's `{"error":["<message>"]}`.
///
/// ```
/// use geostack::server::Error;
///
/// let e = Error::NotFound("no such map".into());
/// assert_eq!(e.status(), 404);
/// assert_eq!(e.to_string(), "no such map");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Authentication, authorization or rate limiting refused the request (401, 403, 429, 503).
    #[error(transparent)]
    Auth(#[from] geoauth::Error),
    /// The SQL was refused or failed before its first byte (400, 403, 429, 503).
    #[error(transparent)]
    Sql(#[from] sqlpass::Error),
    /// A tile could not be made (400 for a bad coordinate or map config, 503 for the database).
    #[error(transparent)]
    Tiles(#[from] geostack_tiles::Error),
    /// The job queue could not be asked.
    #[error(transparent)]
    Jobs(#[from] geostack_jobs::Error),
    /// Redis could not be asked.
    #[error("redis unavailable")]
    Redis(#[source] redis::RedisError),
    /// The request is malformed: a missing or invalid parameter.
    #[error("{0}")]
    BadRequest(String),
    /// The request needs credentials it did not carry.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's key may not do this (the Auth API without the master key).
    #[error("{0}")]
    Forbidden(String),
    /// Nothing is there.
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but what it asks for is invalid (a key's name or grants).
    #[error("{0}")]
    Unprocessable(String),
    /// The request's body is in an encoding or type the route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The route does not take this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request, or its query text, is larger than the server takes.
    #[error("{0}")]
    TooLarge(String),
    /// Something the server itself could not do (no randomness for a new key).
    #[error("internal error: {0}")]
    Internal(String),
    /// Over the rate limit; the headers carry the limit and `Retry-After`.
    #[error("{message}")]
    RateLimited {
        /// What was limited.
        message: String,
        /// `RateLimit-*`, `Carto-Rate-Limit-*`, `Retry-After`.
        headers: HeaderMap,
    },
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

impl Error {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Auth(e) => e.status().as_u16(),
            Self::Sql(e) => e.status(),
            Self::Tiles(e) => e.status(),
            Self::Jobs(e) => e.status(),
            Self::Redis(_) => 503,
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Unprocessable(_) => 422,
            Self::RateLimited { .. } => 429,
            Self::Internal(_) => 500,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedMediaType(_) => 415,
            Self::TooLarge(_) => 413,
        }
    }
}

/// CARTO's error shape, `{"error":["…"]}`: the SQL, tiles and jobs errors answer as their
/// crates do (with `Retry-After` where waiting helps); the others are answered here.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        }
        let message = match self {
            Error::Sql(e) => return e.into_response(),
            Error::Tiles(e) => return e.into_response(),
            Error::Jobs(e) => return e.into_response(),
            ref other => other.to_string(),
        };
        let body = serde_json::json!({ "error": [message] }).to_string();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        match &self {
            Error::Auth(e) => {
                if e.status() == StatusCode::UNAUTHORIZED {
                    headers.insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"geostack\""),
                    );
                }
                if let Some(after) = e.retry_after() {
                    headers.insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(after.as_secs().max(1)),
                    );
                }
            }
            Error::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"geostack\""),
                );
            }
            Error::RateLimited {
                headers: limits, ..
            } => headers.extend(limits.clone()),
            _ => {}
        }
        response
    }
}
