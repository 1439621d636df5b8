//! The SQL API's pipeline: one statement in a session, wrapped for its limits
//! ([`prepare`]), encoded as the rows arrive ([`pump`]).

mod prepare;
mod pump;

use std::time::Instant;

use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::tables;
use crate::{Access, Body, Error, Options, Result, Script, Session, Statement};
use prepare::prepare;
use pump::Producer;

/// What a response carries besides its bytes: for the HTTP headers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Meta {
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// `attachment; filename="…"` when a filename was asked for.
    pub content_disposition: Option<String>,
    /// The tables the query reads, `schema.table`, sorted.
    pub tables: Vec<String>,
    /// CARTO's `X-Cache-Channel` value, when the query reads tables.
    pub cache_channel: Option<String>,
    /// `Surrogate-Key` values, one per table.
    pub surrogate_keys: Vec<String>,
}

/// A started run: its metadata, and its body to stream.
pub struct Response {
    /// For the headers.
    pub meta: Meta,
    /// The bytes.
    pub body: Body,
}

/// Runs `sql` from an untrusted caller on `pool`, a pool that logged in as the caller's role,
/// in a [`Session`]: the statement is checked on its own ([`Statement`]), described without
/// being kept, then run once inside a wrapper that applies the row limit, the page and the
/// value-size limit in PostgreSQL itself.
///
/// A reader's rows stream as they come. A writer's statement runs to its end and commits
/// before the first byte is answered, so that a failure is an `Err` here (a 4xx), never a
/// document with an error in it; its output is held in memory up to the byte limit.
///
/// # Errors
///
/// [`Error::InvalidStatement`] for text that is not one allowed statement, [`Error::Query`]
/// when PostgreSQL refuses or (for writers) fails the statement, [`Error::Busy`] /
/// [`Error::Unavailable`] when no connection could be had, [`Error::StatementTimeout`] /
/// [`Error::Deadline`] for timeouts.
pub async fn run(pool: &PgPool, sql: &str, options: Options) -> Result<Response> {
    // The query's span: its shape, never its text (a caller's data may be in it).
    let span = tracing::info_span!(
        "sql",
        format = ?options.format,
        access = ?options.access,
        text_bytes = sql.len(),
    );
    run_in(pool, sql, options).instrument(span).await
}

async fn run_in(pool: &PgPool, sql: &str, options: Options) -> Result<Response> {
    let started = Instant::now();
    let (before, statement) = if options.script {
        Script::new(sql)?.into_parts()
    } else {
        (Vec::new(), Statement::new(sql)?)
    };
    let mut session = Session::begin(pool, &options).await?;
    let deadline = session.deadline;
    let prepared = async {
        if !before.is_empty() {
            session.run_before(before).await?;
        }
        prepare(&mut session, &statement, &options).await
    };
    let prepared = match tokio::time::timeout_at(deadline.into(), prepared).await {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => {
            let _ = session.end().await;
            return Err(e);
        }
        Err(_) => {
            // Cut mid-statement: the connection's state is unknown.
            session.set_cut(true);
            let _ = session.end().await;
            return Err(Error::Deadline(options.deadline));
        }
    };
    let meta = Meta {
        content_type: options.format.content_type(),
        content_disposition: options.filename.as_deref().map(|name| {
            format!(
                "attachment; filename=\"{}.{}\"",
                safe_filename(name),
                options.format.extension()
            )
        }),
        cache_channel: tables::cache_channel(&session.database, &prepared.tables),
        surrogate_keys: tables::surrogate_keys(&session.database, &prepared.tables),
        tables: prepared.tables.clone(),
    };
    let (tx, rx) = mpsc::channel(2);
    let (end_tx, end_rx) = oneshot::channel();
    let producer = Producer {
        session,
        prepared,
        options,
        started,
        tx,
        end: Some(end_tx),
    };
    match producer.options.access {
        Access::ReadOnly => {
            tokio::spawn(producer.run().in_current_span());
        }
        Access::ReadWrite => producer.write().await?,
    }
    Ok(Response {
        meta,
        body: Body::new(rx, end_rx),
    })
}

/// A filename without path separators, quotes or control characters.
pub(crate) fn safe_filename(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    let trimmed = cleaned.trim_matches(|c| c == '.' || c == ' ');
    if trimmed.is_empty() {
        "cartodb-query".into()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::safe_filename;

    #[test]
    fn filenames_cannot_escape_their_header() {
        assert_eq!(safe_filename("my export"), "my export");
        assert_eq!(safe_filename("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_filename("a\"b\r\nc"), "a_b__c");
        assert_eq!(safe_filename("..."), "cartodb-query");
    }
}
