//! The pipeline: one statement, in a transaction with timeouts, through a server-side cursor,
//! encoded as the rows arrive.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{
    AssertSqlSafe, Column as _, Connection as _, Executor as _, Postgres, Row as _,
    SqlSafeStr as _, Statement as _, TypeInfo as _, ValueRef as _,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;

use crate::body::End;
use crate::format::{self, Column, Summary};
use crate::geom::Header;
use crate::tables;
use crate::value::{self, Kind, PostgisOids, Value};
use crate::{Access, Body, Error, Options, Outcome, Result};

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

type Conn = PoolConnection<Postgres>;

const CURSOR: &str = "geostack_sqlpass";

/// Runs `sql` from an untrusted caller on `pool`, a pool that logged in as the caller's role.
///
/// Errors found before the first byte (syntax, permissions, a read-only violation caught at
/// planning, options) are returned here; later ones are written into the body in its format.
/// The connection goes back to the pool only when it is clean (no advisory locks, listeners,
/// SQL-level prepared statements, cursors or temporary tables), and is closed otherwise.
///
/// # Errors
///
/// [`Error::Query`] when PostgreSQL refuses the statement, [`Error::Unavailable`] when no
/// connection could be had, [`Error::StatementTimeout`] / [`Error::Deadline`] for timeouts.
pub async fn run(pool: &PgPool, sql: &str, options: Options) -> Result<Response> {
    let started = Instant::now();
    let deadline = started + options.deadline;
    let st = options.statement_timeout;
    let mut conn = match tokio::time::timeout_at(deadline.into(), pool.acquire()).await {
        Ok(conn) => conn.map_err(|e| Error::from_sqlx(e, st))?,
        Err(_) => return Err(Error::Deadline(options.deadline)),
    };
    let prepared =
        match tokio::time::timeout_at(deadline.into(), prepare(&mut conn, sql, &options)).await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(e)) => {
                end(conn, Access::ReadOnly, false).await;
                return Err(e);
            }
            Err(_) => {
                // The prepare was cut mid-statement: the connection's state is unknown.
                conn.close_on_drop();
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
        cache_channel: tables::cache_channel(&prepared.database, &prepared.tables),
        surrogate_keys: tables::surrogate_keys(&prepared.database, &prepared.tables),
        tables: prepared.tables.clone(),
    };
    let (tx, rx) = mpsc::channel(2);
    let (end_tx, end_rx) = oneshot::channel();
    let producer = Producer {
        pool: pool.clone(),
        conn,
        prepared,
        options,
        started,
        deadline,
        tx,
        end: Some(end_tx),
    };
    tokio::spawn(producer.run());
    Ok(Response {
        meta,
        body: Body::new(rx, end_rx),
    })
}

struct Prepared {
    columns: Vec<Column>,
    postgis: PostgisOids,
    pid: i32,
    database: String,
    tables: Vec<String>,
    /// The statement to run for writers (no cursor).
    direct: Option<String>,
}

async fn prepare(conn: &mut Conn, sql: &str, options: &Options) -> Result<Prepared> {
    let st = options.statement_timeout;
    let err = |e| Error::from_sqlx(e, st);
    let begin = match options.access {
        Access::ReadOnly => "BEGIN READ ONLY",
        Access::ReadWrite => "BEGIN",
    };
    sqlx::raw_sql(begin)
        .execute(&mut **conn)
        .await
        .map_err(err)?;
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let (pid, database, geometry, geography): (i32, String, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "select pg_backend_pid(), current_database()::text,
                to_regtype('geometry')::oid::int8, to_regtype('geography')::oid::int8,
                set_config('statement_timeout', $1, true),
                set_config('lock_timeout', $2, true),
                set_config('idle_in_transaction_session_timeout', $3, true),
                set_config('jit', $4, true)",
        )
        .bind(ms(options.statement_timeout))
        .bind(ms(options.lock_timeout))
        .bind(ms(options.idle_timeout))
        // JIT compilation is off unless asked for: it costs tens of milliseconds per large
        // plan, and a statement being compiled cannot be cancelled.
        .bind(if options.jit { "on" } else { "off" })
        .fetch_one(&mut **conn)
        .await
        .map_err(err)?;
    let postgis = PostgisOids {
        geometry: geometry.and_then(|o| u32::try_from(o).ok()),
        geography: geography.and_then(|o| u32::try_from(o).ok()),
    };

    // The statement's result columns. Preparing also refuses more than one statement: the
    // extended protocol takes exactly one.
    let sql = sql.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let statement = (&mut **conn)
        .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
        .await
        .map_err(err)?;
    let mut columns: Vec<Column> = statement
        .columns()
        .iter()
        .map(|c| {
            let ty = c.type_info();
            let kind = ty.oid().and_then(|oid| Kind::of(oid.0, postgis));
            Column {
                name: c.name().to_owned(),
                pgtype: typname(ty.name()),
                kind,
                skip: options.skipfields.iter().any(|s| s == c.name()),
            }
        })
        .collect();

    let tables = if options.affected_tables {
        let explain = format!("EXPLAIN (FORMAT JSON, VERBOSE)\n{sql}");
        let row: PgRow = sqlx::query(AssertSqlSafe(explain))
            .persistent(false)
            .fetch_one(&mut **conn)
            .await
            .map_err(err)?;
        let raw = row.try_get_raw(0).map_err(err)?;
        let plan: serde_json::Value = raw
            .as_bytes()
            .ok()
            .and_then(|b| serde_json::from_slice(b).ok())
            .ok_or_else(|| Error::Internal("unreadable EXPLAIN output".into()))?;
        tables::from_plan(&plan)
    } else {
        Vec::new()
    };

    // Columns of types decoded here go as they are; others are cast to text by position.
    let needs_cast = columns.iter().any(|c| c.kind.is_none());
    let query = if needs_cast {
        let aliases: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
        let select: Vec<String> = columns
            .iter()
            .zip(&aliases)
            .map(|(c, a)| match c.kind {
                Some(_) => format!("_q.{a}"),
                None => format!("_q.{a}::text"),
            })
            .collect();
        for c in &mut columns {
            c.kind.get_or_insert(Kind::Text);
        }
        format!(
            "SELECT {} FROM (\n{sql}\n) AS _q({})",
            select.join(", "),
            aliases.join(", ")
        )
    } else {
        sql.to_owned()
    };

    let direct = match options.access {
        Access::ReadOnly => {
            let declare = format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR\n{query}");
            sqlx::query(AssertSqlSafe(declare))
                .persistent(false)
                .execute(&mut **conn)
                .await
                .map_err(err)?;
            None
        }
        Access::ReadWrite => Some(query),
    };
    Ok(Prepared {
        columns,
        postgis,
        pid,
        database,
        tables,
        direct,
    })
}

struct Producer {
    pool: PgPool,
    conn: Conn,
    prepared: Prepared,
    options: Options,
    started: Instant,
    deadline: Instant,
    tx: mpsc::Sender<Bytes>,
    end: Option<oneshot::Sender<End>>,
}

/// How a producer stopped.
enum Stop {
    /// All rows, or an error written into the document; the transaction can end normally.
    Done(Option<String>),
    /// The caller dropped the body.
    Dropped,
    /// The caller did not read in time.
    Stalled,
    /// The deadline came while the database was working: the statement is cut mid-flight.
    Late,
}

/// What writing a row needs, borrowed from the producer.
struct Ctx<'a> {
    tx: &'a mpsc::Sender<Bytes>,
    deadline: Instant,
    options: &'a Options,
    postgis: PostgisOids,
    columns: &'a [Column],
}

impl Producer {
    async fn run(mut self) {
        let columns = self.prepared.columns.clone();
        let mut encoder = format::encoder(
            self.options.format,
            self.options.dp,
            self.options.csv_geometry,
        );
        let mut state = State {
            scratch: Vec::with_capacity(columns.len()),
            out: Vec::with_capacity(self.options.chunk_bytes * 2),
            rows: 0,
            sent: 0,
            geometry: vec![None; columns.len()],
        };
        encoder.begin(&mut state.out, &columns);
        let sleep = tokio::time::sleep_until(self.deadline.into());
        tokio::pin!(sleep);
        let direct = self.prepared.direct.take();
        let ctx = Ctx {
            tx: &self.tx,
            deadline: self.deadline,
            options: &self.options,
            postgis: self.prepared.postgis,
            columns: &columns,
        };
        let conn: &mut sqlx::PgConnection = &mut self.conn;
        let stop = match direct {
            None => read_cursor(conn, &ctx, &mut sleep, encoder.as_mut(), &mut state).await,
            // A writer's statement without result columns (DML without RETURNING): report
            // the rows it affected as total_rows, as CARTO does.
            Some(sql) if columns.is_empty() => {
                let st = self.options.statement_timeout;
                let run = sqlx::query(AssertSqlSafe(sql))
                    .persistent(false)
                    .execute(&mut *conn);
                match tokio::time::timeout_at(self.deadline.into(), run).await {
                    Ok(Ok(done)) => {
                        state.rows = done.rows_affected();
                        Stop::Done(None)
                    }
                    Ok(Err(e)) => Stop::Done(Some(Error::from_sqlx(e, st).to_string())),
                    Err(_) => Stop::Late,
                }
            }
            Some(sql) => {
                match pump(conn, sql, &ctx, &mut sleep, encoder.as_mut(), &mut state).await {
                    Ok(_) => Stop::Done(None),
                    Err(stop) => stop,
                }
            }
        };
        let deadline_error = || Error::Deadline(self.options.deadline);
        match stop {
            Stop::Done(error) => {
                let sent = self
                    .finish(encoder.as_mut(), &columns, &mut state, error.as_deref())
                    .await;
                let ended = end(self.conn, self.options.access, error.is_none()).await;
                let error = match error {
                    None if !ended && self.options.access == Access::ReadWrite => {
                        Some("the transaction did not commit".to_owned())
                    }
                    error => error,
                };
                if sent {
                    send_outcome(&mut self.end, self.started, state.rows, error);
                }
            }
            Stop::Late => {
                // Cut mid-statement: stop the query, do not reuse the connection, and finish
                // the document with the reason.
                cancel(&self.pool, self.prepared.pid).await;
                self.conn.close_on_drop();
                let error = deadline_error().to_string();
                if self
                    .finish(encoder.as_mut(), &columns, &mut state, Some(&error))
                    .await
                {
                    send_outcome(&mut self.end, self.started, state.rows, Some(error));
                }
            }
            // The statement was cut mid-flight: its connection waits for a Sync that never
            // comes, so it is closed at once (the backend then ends), not reused.
            Stop::Dropped => {
                cancel(&self.pool, self.prepared.pid).await;
                let _ = self.conn.detach().close_hard().await;
            }
            Stop::Stalled => {
                cancel(&self.pool, self.prepared.pid).await;
                self.fail(deadline_error());
                let _ = self.conn.detach().close_hard().await;
            }
        }
    }

    /// Writes the end of the document and sends the last chunk (briefly past the deadline, so
    /// a deadline error itself can still reach a reader that keeps up). Returns whether it was
    /// sent.
    async fn finish(
        &mut self,
        encoder: &mut dyn format::Encoder,
        columns: &[Column],
        state: &mut State,
        error: Option<&str>,
    ) -> bool {
        let summary = Summary {
            elapsed: self.started.elapsed(),
            rows: state.rows,
            geometry: &state.geometry,
        };
        encoder.finish(&mut state.out, columns, &summary, error);
        let last = Bytes::from(std::mem::take(&mut state.out));
        let until = self.deadline.max(Instant::now()) + Duration::from_millis(100);
        if tokio::time::timeout_at(until.into(), self.tx.send(last))
            .await
            .is_err()
        {
            self.fail(Error::Deadline(self.options.deadline));
            return false;
        }
        true
    }

    fn fail(&mut self, e: Error) {
        if let Some(end) = self.end.take() {
            let _ = end.send(End::Failed(e));
        }
    }
}

/// Tells the body how the run ended.
fn send_outcome(
    end: &mut Option<oneshot::Sender<End>>,
    started: Instant,
    rows: u64,
    error: Option<String>,
) {
    if let Some(end) = end.take() {
        let _ = end.send(End::Finished(Outcome {
            rows,
            error,
            elapsed: started.elapsed(),
        }));
    }
}

/// Rows from the cursor, a page of them when asked, `batch_rows` per `FETCH`.
async fn read_cursor(
    conn: &mut sqlx::PgConnection,
    ctx: &Ctx<'_>,
    sleep: &mut Pin<&mut Sleep>,
    encoder: &mut dyn format::Encoder,
    state: &mut State,
) -> Stop {
    let mut remaining = u64::MAX;
    if let Some((per_page, page)) = ctx.options.page {
        remaining = per_page;
        let skip = per_page.saturating_mul(page);
        if skip > 0
            && let Err(stop) = pump(
                conn,
                format!("MOVE FORWARD {skip} IN {CURSOR}"),
                ctx,
                sleep,
                encoder,
                state,
            )
            .await
        {
            return stop;
        }
    }
    loop {
        let want = u64::from(ctx.options.batch_rows).min(remaining);
        if want == 0 {
            return Stop::Done(None);
        }
        let fetch = format!("FETCH FORWARD {want} FROM {CURSOR}");
        match pump(conn, fetch, ctx, sleep, encoder, state).await {
            Ok(got) if got < want => return Stop::Done(None),
            Ok(got) => remaining = remaining.saturating_sub(got),
            Err(stop) => return stop,
        }
    }
}

/// Runs one statement and writes its rows as they arrive from the socket, so encoding here
/// overlaps with PostgreSQL producing the next rows. Returns how many rows came.
async fn pump(
    conn: &mut sqlx::PgConnection,
    sql: String,
    ctx: &Ctx<'_>,
    sleep: &mut Pin<&mut Sleep>,
    encoder: &mut dyn format::Encoder,
    state: &mut State,
) -> Result<u64, Stop> {
    let st = ctx.options.statement_timeout;
    let mut rows = sqlx::query(AssertSqlSafe(sql))
        .persistent(false)
        .fetch(conn);
    let mut got = 0;
    loop {
        // A row already read from the socket needs no watching; only a wait does.
        let next = match rows.next().now_or_never() {
            Some(next) => next,
            None => tokio::select! {
                biased;
                row = rows.next() => row,
                () = sleep.as_mut() => return Err(Stop::Late),
                () = ctx.tx.closed() => return Err(Stop::Dropped),
            },
        };
        match next {
            None => return Ok(got),
            Some(Err(e)) => return Err(Stop::Done(Some(Error::from_sqlx(e, st).to_string()))),
            Some(Ok(row)) => {
                got += 1;
                // Rows that keep coming never wait on the timer: look at the clock instead. A
                // dropped body shows at the next chunk sent.
                if got % 1024 == 0 && Instant::now() >= ctx.deadline {
                    return Err(Stop::Late);
                }
                write_row(&row, ctx, sleep, encoder, state).await?;
            }
        }
    }
}

async fn write_row(
    row: &PgRow,
    ctx: &Ctx<'_>,
    sleep: &mut Pin<&mut Sleep>,
    encoder: &mut dyn format::Encoder,
    state: &mut State,
) -> Result<(), Stop> {
    if let Some(limit) = ctx.options.row_limit
        && state.rows >= limit
    {
        return Err(Stop::Done(Some(format!("row limit of {limit} exceeded"))));
    }
    let mut values = recycle(std::mem::take(&mut state.scratch));
    for (i, c) in ctx.columns.iter().enumerate() {
        let raw = row
            .try_get_raw(i)
            .map_err(|e| Stop::Done(Some(e.to_string())))?;
        if raw.is_null() {
            values.push(Value::Null);
            continue;
        }
        let bytes = raw
            .as_bytes()
            .map_err(|e| Stop::Done(Some(e.to_string())))?;
        let kind = c.kind.unwrap_or(Kind::Text);
        let v = value::decode(kind, bytes, ctx.postgis)
            .map_err(|e| Stop::Done(Some(format!("cannot read column {}: {}", c.name, e.0))))?;
        if let Value::Geometry(ewkb) = v
            && state.geometry[i].is_none()
        {
            state.geometry[i] = Header::read(ewkb);
        }
        values.push(v);
    }
    let mark = state.out.len();
    encoder.row(&mut state.out, ctx.columns, &values, state.rows == 0);
    state.scratch = recycle(values);
    if let Some(limit) = ctx.options.byte_limit
        && state.sent + state.out.len() as u64 > limit
    {
        state.out.truncate(mark);
        return Err(Stop::Done(Some(format!("byte limit of {limit} exceeded"))));
    }
    state.rows += 1;
    if state.out.len() >= ctx.options.chunk_bytes {
        let chunk = Bytes::from(std::mem::replace(
            &mut state.out,
            Vec::with_capacity(ctx.options.chunk_bytes * 2),
        ));
        state.sent += chunk.len() as u64;
        tokio::select! {
            sent = ctx.tx.send(chunk) => sent.map_err(|_| Stop::Dropped)?,
            () = sleep.as_mut() => return Err(Stop::Stalled),
        }
    }
    Ok(())
}

/// An emptied vector of values with its allocation kept, for values of another lifetime: the
/// standard library collects a mapped `IntoIter` of same-sized items in place.
fn recycle<'a>(mut values: Vec<Value<'_>>) -> Vec<Value<'a>> {
    values.clear();
    values.into_iter().map(|_| Value::Null).collect()
}

struct State {
    /// The values of the row being written, reused from row to row.
    scratch: Vec<Value<'static>>,
    out: Vec<u8>,
    rows: u64,
    sent: u64,
    geometry: Vec<Option<Header>>,
}

/// Ends the transaction (COMMIT only for a writer whose statement succeeded) and returns the
/// connection to the pool only when nothing of the caller's outlives it.
/// Commits (a writer's successful run) or rolls back, then checks the connection for dirt and
/// closes it when there is some. Returns whether the COMMIT or ROLLBACK went through.
async fn end(mut conn: Conn, access: Access, success: bool) -> bool {
    let finish = if access == Access::ReadWrite && success {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let mut ended = false;
    let clean = async {
        sqlx::raw_sql(finish).execute(&mut *conn).await?;
        ended = true;
        if access == Access::ReadWrite {
            sqlx::raw_sql("RESET ALL").execute(&mut *conn).await?;
        }
        let (dirt,): (i64,) = sqlx::query_as(include_str!("sql/dirt.sql"))
            .fetch_one(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>(dirt == 0)
    };
    let clean = tokio::time::timeout(Duration::from_secs(5), clean).await;
    if !matches!(clean, Ok(Ok(true))) {
        let _ = conn.detach().close().await;
    }
    ended
}

/// Cancels whatever backend `pid` runs, from a connection of its own (the same role may cancel
/// its own backends).
async fn cancel(pool: &PgPool, pid: i32) {
    const CANCEL: &str = "select pg_cancel_backend($1)";
    // An idle connection of the pool, when there is one, saves connecting.
    if let Some(mut idle) = pool.try_acquire() {
        let sent = sqlx::query(CANCEL).bind(pid).execute(&mut *idle);
        if matches!(
            tokio::time::timeout(Duration::from_secs(2), sent).await,
            Ok(Ok(_))
        ) {
            return;
        }
        idle.close_on_drop();
    }
    let options = pool.connect_options();
    let work = async {
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        sqlx::query(CANCEL).bind(pid).execute(&mut conn).await?;
        conn.close().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
}

/// PostgreSQL's `typname` from sqlx's display name: built-in types are upper-cased there
/// (`INT4`, arrays `INT4[]`); extension types keep their name (`geometry`).
fn typname(display: &str) -> String {
    match display.strip_suffix("[]") {
        Some(base) => format!("_{}", base.to_ascii_lowercase()),
        None => display.to_ascii_lowercase(),
    }
}

/// A filename without path separators, quotes or control characters.
fn safe_filename(name: &str) -> String {
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
    use super::{safe_filename, typname};

    #[test]
    fn type_names_are_postgres_typnames() {
        assert_eq!(typname("INT4"), "int4");
        assert_eq!(typname("TEXT[]"), "_text");
        assert_eq!(typname("geometry"), "geometry");
    }

    #[test]
    fn filenames_cannot_escape_their_header() {
        assert_eq!(safe_filename("my export"), "my export");
        assert_eq!(safe_filename("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_filename("a\"b\r\nc"), "a_b__c");
        assert_eq!(safe_filename("..."), "cartodb-query");
    }
}
