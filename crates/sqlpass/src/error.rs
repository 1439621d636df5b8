//! The crate's one error type.

use std::time::Duration;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in sqlpass. [`Error::status`] gives the HTTP status CARTO's SQL
/// API answers with; [`Error::is_unavailable`] tells "could not find out" (retry) from "no".
///
/// ```
/// let err = sqlpass::Error::InvalidOption { name: "dp", reason: "expected 0 to 15".into() };
/// assert_eq!(err.status(), 400);
/// assert_eq!(err.to_string(), "invalid option dp: expected 0 to 15");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL refused the query: a syntax error, a missing table, a permission, a write in a
    /// read-only transaction. The message is PostgreSQL's own.
    #[error("{message}")]
    Query {
        /// The SQLSTATE, as `42601`.
        code: String,
        /// PostgreSQL's message.
        message: String,
    },
    /// The statement ran past its statement timeout.
    #[error("statement timeout: the query ran longer than {0:?}")]
    StatementTimeout(Duration),
    /// The request ran past its wall-clock deadline (a slow query or a slow reader).
    #[error("deadline exceeded: the request ran longer than {0:?}")]
    Deadline(Duration),
    /// An option has a value it cannot take.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option's name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The text is not one statement the sandbox runs (see [`Statement`](crate::Statement)).
    #[error("invalid statement: {0}")]
    InvalidStatement(String),
    /// A row, byte or value-size limit stopped the output (or a copy's input).
    #[error("{0}")]
    Limit(String),
    /// The caller's key may not do this (a reader's key copying rows in).
    #[error("{0}")]
    Forbidden(String),
    /// The rows a caller sent could not be read (its upload failed).
    #[error("the input could not be read: {0}")]
    Input(String),
    /// Every connection of the caller's pool is in use: too many queries at once.
    #[error("too many queries at once: retry later")]
    Busy,
    /// The database could not be asked: the connection failed or dropped. The driver's own
    /// words are kept for logs in [`std::error::Error::source`], never in the message.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The [`Session`](crate::Session) was already ended.
    #[error("the session has ended")]
    Ended,
    /// The server sent something this crate cannot read.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status: 400 for refused queries and options, 403 for permission and read-only
    /// violations, 429 for timeouts (as CARTO answers "over platform limits"), 503 when the
    /// database is unavailable, 500 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Self::Query { code, .. } => match code.as_str() {
                // insufficient_privilege, read_only_sql_transaction
                "42501" | "25006" => 403,
                // query_canceled by lock_timeout / statement_timeout reaches here only as
                // StatementTimeout; lock_not_available:
                "55P03" => 429,
                _ => 400,
            },
            Self::InvalidOption { .. }
            | Self::InvalidStatement(_)
            | Self::Limit(_)
            | Self::Input(_) => 400,
            Self::Forbidden(_) => 403,
            Self::StatementTimeout(_) | Self::Deadline(_) | Self::Busy => 429,
            Self::Unavailable(_) => 503,
            Self::Internal(_) | Self::Ended => 500,
        }
    }

    /// Whether the database could not be asked (retrying may help).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Busy)
    }

    /// How long a client should wait before retrying, for the `Retry-After` header: for
    /// [`Error::Busy`], [`Error::Unavailable`] and the timeouts.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Busy | Self::Unavailable(_) => Some(Duration::from_secs(1)),
            Self::StatementTimeout(_) | Self::Deadline(_) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    /// The SQLSTATE of a refused query.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Query { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn from_sqlx(e: sqlx::Error, statement_timeout: Duration) -> Self {
        match &e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                if code == "57014" && db.message().contains("statement timeout") {
                    Self::StatementTimeout(statement_timeout)
                } else {
                    Self::Query {
                        code,
                        message: db.message().to_owned(),
                    }
                }
            }
            sqlx::Error::PoolTimedOut => Self::Busy,
            sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Self::Unavailable(e),
            _ => Self::Internal("the database answered something unexpected".into()),
        }
    }
}
