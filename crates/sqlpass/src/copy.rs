//! `COPY` between a caller and its tables, as CARTO's `copyfrom` and `copyto`: the statement
//! checked so that rows only travel through the connection (`STDIN`, `STDOUT`: no file, no
//! program), run in the sandbox with its timeouts, deadline and table grants.

use std::fmt::Display;
use std::time::Instant;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt as _;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::body::End;
use crate::statement::{Token, one_statement, tokens};
use crate::{
    Access, Body, Error, Meta, Options, Outcome, Response, Result, Session, Statement, tables,
};

/// Which way a [`CopyStatement`] moves rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CopyDirection {
    /// `COPY … FROM STDIN`: into a table.
    In,
    /// `COPY … TO STDOUT`: out of a table or a query.
    Out,
}

/// A `COPY` statement that passed [`CopyStatement::new`]: `COPY <table> [(columns)] FROM STDIN …` or
/// `COPY <table> [(columns)] | (<query>) TO STDOUT …`, with any of PostgreSQL's options.
///
/// ```
/// use sqlpass::{CopyDirection, CopyStatement};
///
/// let c = CopyStatement::new("COPY (select * from places) TO STDOUT WITH (FORMAT csv, HEADER true)")?;
/// assert_eq!(c.direction(), CopyDirection::Out);
/// let c = CopyStatement::new(r#"copy "My Places" (name, geom) from stdin with (format csv)"#)?;
/// assert_eq!(c.table(), Some("public.My Places"));
/// for bad in [
///     "COPY places TO '/tmp/x'",
///     "COPY places FROM PROGRAM 'id'",
///     "COPY (select 1) FROM STDIN",
///     "COPY (set role postgres) TO STDOUT",
///     "select 1",
/// ] {
///     assert!(CopyStatement::new(bad).is_err(), "{bad}");
/// }
/// # Ok::<(), sqlpass::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyStatement {
    text: String,
    direction: CopyDirection,
    table: Option<String>,
    query: Option<Statement>,
    binary: bool,
}

impl CopyStatement {
    /// Checks `sql` as one `COPY` statement between the connection and a table or a query.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStatement`] for anything else: another statement, a file or a program,
    /// a query copied in, a query that is not a reader's (checked as [`Statement::new`]).
    pub fn new(sql: &str) -> Result<Self> {
        let text = one_statement(sql)?;
        let bad = |why: &str| Error::InvalidStatement(format!("COPY: {why}"));
        let tokens = tokens(text)?;
        let mut it = tokens.iter().peekable();
        if !matches!(it.next(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("copy")) {
            return Err(bad("expected a COPY statement"));
        }
        let (table, query) = match it.next() {
            Some(Token::Group(q)) => {
                let query = Statement::new(q)?;
                if !matches!(query.keyword(), "select" | "with" | "values" | "table") {
                    return Err(bad("only a query's rows can be copied out"));
                }
                (None, Some(query))
            }
            Some(first @ (Token::Word(_) | Token::Quoted(_))) => {
                let mut parts = vec![name(first)];
                if matches!(it.peek(), Some(Token::Other("."))) {
                    it.next();
                    match it.next() {
                        Some(part @ (Token::Word(_) | Token::Quoted(_))) => parts.push(name(part)),
                        _ => return Err(bad("expected a table name")),
                    }
                }
                if matches!(it.peek(), Some(Token::Group(_))) {
                    it.next(); // the column list
                }
                let table = match parts.as_slice() {
                    [t] => format!("public.{t}"),
                    [s, t] => format!("{s}.{t}"),
                    _ => return Err(bad("expected a table name")),
                };
                (Some(table), None)
            }
            _ => return Err(bad("expected a table or a parenthesized query")),
        };
        let word = |t: Option<&Token<'_>>| match t {
            Some(Token::Word(w)) => w.to_ascii_lowercase(),
            _ => String::new(),
        };
        let direction = match (word(it.next()).as_str(), word(it.next()).as_str()) {
            ("from", "stdin") if query.is_none() => CopyDirection::In,
            ("to", "stdout") => CopyDirection::Out,
            ("from", _) | ("to", _) => {
                return Err(bad(
                    "rows travel through the connection only: FROM STDIN or TO STDOUT",
                ));
            }
            _ => return Err(bad("expected FROM STDIN or TO STDOUT")),
        };
        let binary = it.any(|t| match t {
            Token::Word(w) => w.eq_ignore_ascii_case("binary"),
            Token::Group(g) => g
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .any(|w| w.eq_ignore_ascii_case("binary")),
            _ => false,
        });
        Ok(Self {
            text: text.to_owned(),
            direction,
            table,
            query,
            binary,
        })
    }

    /// The statement, without a trailing `;`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Which way it moves rows.
    pub fn direction(&self) -> CopyDirection {
        self.direction
    }

    /// The table it names (`schema.table`; `public` when unqualified), when it names one.
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    /// Whether it moves PostgreSQL's binary format (else text or CSV).
    pub fn is_binary(&self) -> bool {
        self.binary
    }
}

/// An identifier as PostgreSQL folds it: unquoted lower-cased, quoted as written.
fn name(token: &Token<'_>) -> String {
    match token {
        Token::Word(w) => w.to_ascii_lowercase(),
        Token::Quoted(q) => q.clone(),
        _ => String::new(),
    }
}

/// The tables `copy` touches, checked against the key's grants when `options` lists them.
async fn check_tables(
    session: &mut Session,
    copy: &CopyStatement,
    options: &Options,
) -> Result<Vec<String>> {
    let tables = match (&copy.table, &copy.query) {
        (Some(t), _) => vec![t.clone()],
        (None, Some(query)) => {
            let st = options.statement_timeout;
            tables::planned(session.conn_mut()?, query.as_str(), st).await?
        }
        (None, None) => Vec::new(),
    };
    tables::check_granted(options, &tables)?;
    Ok(tables)
}

/// Runs `copy` (`TO STDOUT`) for an untrusted caller on `pool` (a pool that logged in as the
/// caller's role) in a read-only [`Session`], and streams PostgreSQL's own bytes as they come:
/// CSV or text as `text/csv` or `text/plain`, binary as `application/octet-stream`. The
/// tables must be granted by the key when `options` lists them; the statement timeout and the
/// deadline hold, and dropping the body cancels the copy.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> sqlpass::Result<()> {
/// use futures_util::StreamExt as _;
///
/// let copy = sqlpass::CopyStatement::new("COPY (select name from places) TO STDOUT WITH (FORMAT csv)")?;
/// let mut body = sqlpass::copy_to(&pool, &copy, sqlpass::Options::default()).await?.body;
/// while let Some(chunk) = body.next().await {
///     print!("{}", String::from_utf8_lossy(&chunk?));
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::InvalidStatement`] for a `COPY … FROM`, [`Error::Query`] when PostgreSQL refuses
/// it (no privilege, no such table) or the key does not grant a table, and the errors of
/// [`Session::begin`].
pub async fn copy_to(pool: &PgPool, copy: &CopyStatement, options: Options) -> Result<Response> {
    if copy.direction != CopyDirection::Out {
        return Err(Error::InvalidStatement(
            "COPY: copyto takes COPY … TO STDOUT".into(),
        ));
    }
    let started = Instant::now();
    let options = options.access(Access::ReadOnly);
    let mut session = Session::begin(pool, &options).await?;
    let tables = match check_tables(&mut session, copy, &options).await {
        Ok(t) => t,
        Err(e) => {
            let _ = session.end().await;
            return Err(e);
        }
    };
    let content_type = if copy.binary {
        "application/octet-stream"
    } else {
        "text/csv; charset=utf-8"
    };
    let meta = Meta {
        content_type,
        content_disposition: options
            .filename
            .as_deref()
            .map(|f| format!("attachment; filename=\"{}\"", crate::run::safe_filename(f))),
        cache_channel: tables::cache_channel(&session.database, &tables),
        surrogate_keys: tables::surrogate_keys(&session.database, &tables),
        tables,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let (end_tx, end_rx) = oneshot::channel();
    let (begun_tx, begun_rx) = oneshot::channel();
    let text = copy.text.clone();
    let byte_limit = options.byte_limit;
    tokio::spawn(async move {
        let end = pump_out(&mut session, &text, begun_tx, &tx, byte_limit, started).await;
        let ok = matches!(end, End::Finished(_));
        session.set_cut(!ok);
        let _ = session.finish(false).await;
        let _ = end_tx.send(end);
    });
    // A refusal (no privilege, no such table) comes before the first byte: an error, not a
    // cut document.
    match begun_rx.await {
        Ok(Ok(())) => Ok(Response {
            meta,
            body: Body::new(rx, end_rx),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Internal("the copy ended before it began".into())),
    }
}

/// Streams the copy's bytes into `tx` until they end, the deadline, a limit or the reader goes.
async fn pump_out(
    session: &mut Session,
    text: &str,
    begun: oneshot::Sender<Result<()>>,
    tx: &mpsc::Sender<Bytes>,
    byte_limit: Option<u64>,
    started: Instant,
) -> End {
    let deadline = session.deadline;
    let total = session.total;
    let st = session.statement_timeout;
    let refused = |begun: oneshot::Sender<Result<()>>, e: Error| {
        let _ = begun.send(Err(e));
        End::Failed(Error::Internal("the copy was refused".into()))
    };
    let conn = match session.conn_mut() {
        Ok(c) => c,
        Err(e) => return refused(begun, e),
    };
    let mut stream = match tokio::time::timeout_at(deadline.into(), conn.copy_out_raw(text)).await {
        Err(_) => return refused(begun, Error::Deadline(total)),
        Ok(Err(e)) => return refused(begun, Error::from_sqlx(e, st)),
        Ok(Ok(stream)) => stream,
    };
    let _ = begun.send(Ok(()));
    let mut sent: u64 = 0;
    loop {
        let next = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Err(_) => return End::Failed(Error::Deadline(total)),
            Ok(next) => next,
        };
        match next {
            None => {
                return End::Finished(Outcome {
                    rows: 0,
                    error: None,
                    elapsed: started.elapsed(),
                });
            }
            Some(Err(e)) => return End::Failed(Error::from_sqlx(e, st)),
            Some(Ok(chunk)) => {
                sent += chunk.len() as u64;
                if byte_limit.is_some_and(|limit| sent > limit) {
                    return End::Failed(Error::Limit(format!(
                        "the copy is larger than the limit of {} bytes",
                        byte_limit.unwrap_or_default()
                    )));
                }
                match tokio::time::timeout_at(deadline.into(), tx.send(chunk)).await {
                    Err(_) => return End::Failed(Error::Deadline(total)),
                    // The reader went: the copy is cut.
                    Ok(Err(_)) => return End::Failed(Error::Internal("the reader went".into())),
                    Ok(Ok(())) => {}
                }
            }
        }
    }
}

/// Runs `copy` (`FROM STDIN`) for an untrusted caller on `pool` (a pool that logged in as the
/// caller's role) in a writer's [`Session`], feeding it `data` as it arrives, and commits;
/// returns the rows copied. The table must be granted by the key when `options` lists it (and
/// the role must hold `INSERT` on it). The input is bounded by the byte limit; the statement
/// timeout and the deadline hold; nothing is written unless every row was.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> sqlpass::Result<()> {
/// let copy = sqlpass::CopyStatement::new("COPY notes (note) FROM STDIN WITH (FORMAT csv)")?;
/// let data = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("one\ntwo\n"))]);
/// let options = sqlpass::Options::default().access(sqlpass::Access::ReadWrite);
/// assert_eq!(sqlpass::copy_from(&pool, &copy, data, options).await?, 2);
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::InvalidStatement`] for a `COPY … TO`, [`Error::Forbidden`] when `options` are a
/// reader's, [`Error::Query`] when PostgreSQL refuses a row or the statement,
/// [`Error::Limit`] over the byte limit, [`Error::Input`] when `data` fails, and the errors
/// of [`Session::begin`].
pub async fn copy_from<S, E>(
    pool: &PgPool,
    copy: &CopyStatement,
    data: S,
    options: Options,
) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: Display,
{
    if copy.direction != CopyDirection::In {
        return Err(Error::InvalidStatement(
            "COPY: copyfrom takes COPY … FROM STDIN".into(),
        ));
    }
    if options.access != Access::ReadWrite {
        return Err(Error::Forbidden(
            "copyfrom writes a table: the key may not write".into(),
        ));
    }
    let mut session = Session::begin(pool, &options).await?;
    let copied = match check_tables(&mut session, copy, &options).await {
        Ok(_) => feed(&mut session, &copy.text, data, options.byte_limit).await,
        Err(e) => Err(e),
    };
    match copied {
        Ok(rows) => {
            session.commit().await?;
            Ok(rows)
        }
        Err(e) => {
            session.set_cut(true);
            let _ = session.end().await;
            Err(e)
        }
    }
}

/// Sends `data` through the copy, within the session's deadline and `byte_limit`.
async fn feed<S, E>(
    session: &mut Session,
    text: &str,
    data: S,
    byte_limit: Option<u64>,
) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: Display,
{
    let deadline = session.deadline;
    let total = session.total;
    let st = session.statement_timeout;
    let conn = session.conn_mut()?;
    let timed = |e: sqlx::Error| Error::from_sqlx(e, st);
    let mut sink = match tokio::time::timeout_at(deadline.into(), conn.copy_in_raw(text)).await {
        Err(_) => return Err(Error::Deadline(total)),
        Ok(sink) => sink.map_err(timed)?,
    };
    let mut data = std::pin::pin!(data);
    let mut received: u64 = 0;
    loop {
        let next = match tokio::time::timeout_at(deadline.into(), data.next()).await {
            Err(_) => {
                let _ = sink.abort("the deadline passed").await;
                return Err(Error::Deadline(total));
            }
            Ok(next) => next,
        };
        let chunk = match next {
            None => break,
            Some(Err(e)) => {
                let _ = sink.abort("the upload failed").await;
                return Err(Error::Input(e.to_string()));
            }
            Some(Ok(chunk)) => chunk,
        };
        received += chunk.len() as u64;
        if let Some(limit) = byte_limit
            && received > limit
        {
            let _ = sink.abort("the upload is over the limit").await;
            return Err(Error::Limit(format!(
                "the upload is larger than the limit of {limit} bytes"
            )));
        }
        match tokio::time::timeout_at(deadline.into(), sink.send(chunk)).await {
            Err(_) => return Err(Error::Deadline(total)),
            Ok(sent) => {
                sent.map_err(timed)?;
            }
        }
    }
    match tokio::time::timeout_at(deadline.into(), sink.finish()).await {
        Err(_) => Err(Error::Deadline(total)),
        Ok(rows) => rows.map_err(timed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_name_their_table_and_format() {
        let c = CopyStatement::new("copy Public.Places to stdout (format binary)").unwrap();
        assert_eq!(c.table(), Some("public.places"));
        assert!(c.is_binary());
        let c = CopyStatement::new("COPY places TO STDOUT WITH CSV HEADER;").unwrap();
        assert!(!c.is_binary());
        assert_eq!(c.as_str(), "COPY places TO STDOUT WITH CSV HEADER");
        let c = CopyStatement::new("COPY (select ')' as p, 'binary' as b) TO STDOUT").unwrap();
        assert_eq!(c.table(), None);
        assert!(!c.is_binary());
        assert_eq!(
            CopyStatement::new("copy x from stdin").unwrap().direction(),
            CopyDirection::In
        );
    }

    #[test]
    fn files_programs_and_other_statements_are_refused() {
        for bad in [
            "COPY places TO '/tmp/x'",
            "COPY places TO PROGRAM 'id'",
            "COPY places FROM '/etc/passwd'",
            "COPY places FROM STDOUT",
            "COPY (select 1) FROM STDIN",
            "COPY (delete from places returning *) TO STDOUT",
            "COPY (select 1); select 2",
            "COPY places TO STDOUT; drop table places",
            "COPY TO STDOUT",
            "COPY a.b.c TO STDOUT",
            "select 1",
        ] {
            assert!(CopyStatement::new(bad).is_err(), "{bad}");
        }
    }
}
