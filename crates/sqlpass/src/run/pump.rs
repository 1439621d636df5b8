//! The rows as they arrive: read from the session, encoded, sent to the body within the
//! deadline, and the run's end reported.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Column as _, Row as _, ValueRef as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;

use super::prepare::Prepared;
use crate::body::End;
use crate::format::{self, Column, Summary};
use crate::geom::Header;
use crate::value::{self, Kind, PostgisOids, Value};
use crate::{Error, Options, Outcome, Result, Session};

pub(super) struct Producer {
    pub(super) session: Session,
    pub(super) prepared: Prepared,
    pub(super) options: Options,
    pub(super) started: Instant,
    pub(super) tx: mpsc::Sender<Bytes>,
    pub(super) end: Option<oneshot::Sender<End>>,
}

/// How a statement's rows stopped coming.
pub(super) enum Stop {
    /// All rows, or an error written into the document. `cut` when the statement was still
    /// running (a limit stopped the reading), so the session must cancel it.
    Done { error: Option<Error>, cut: bool },
    /// The caller dropped the body.
    Dropped,
    /// The caller did not read in time.
    Stalled,
    /// The deadline came while the database was working: the statement is cut mid-flight.
    Late,
}

impl Stop {
    fn failed(error: Error, cut: bool) -> Self {
        Self::Done {
            error: Some(error),
            cut,
        }
    }
}

/// [`pump`] on the session's connection, and once more in a transaction begun again when the
/// statement's unnamed statement was replaced before its first row ([`replaced`]).
pub(super) async fn pump_on(
    session: &mut Session,
    query: &str,
    ctx: &Ctx<'_>,
    sleep: &mut Pin<&mut Sleep>,
    encoder: &mut dyn format::Encoder,
    state: &mut State,
) -> Stop {
    let stop = match session.conn_mut() {
        Ok(conn) => pump(conn, query, ctx, sleep, encoder, state).await,
        Err(e) => return Stop::failed(e, false),
    };
    if !replaced(&stop, state) {
        return stop;
    }
    match session.restart().await.and_then(|()| session.conn_mut()) {
        Ok(conn) => pump(conn, query, ctx, sleep, encoder, state).await,
        Err(e) => Stop::failed(e, false),
    }
}

/// Whether the statement failed before its first row because its unnamed statement was
/// replaced (26000): sqlx looks up a type the connection has not met yet (PostGIS's, an enum)
/// between parsing and binding, and that look-up takes the unnamed statement's place. The type
/// is known the second time: run it again in a transaction begun again.
pub(super) fn replaced(stop: &Stop, state: &State) -> bool {
    state.rows == 0
        && matches!(stop, Stop::Done { error: Some(e), .. } if e.sqlstate() == Some("26000"))
}

/// What writing a row needs, borrowed from the producer.
pub(super) struct Ctx<'a> {
    pub(super) tx: &'a mpsc::Sender<Bytes>,
    pub(super) deadline: Instant,
    pub(super) options: &'a Options,
    pub(super) postgis: PostgisOids,
    pub(super) columns: &'a [Column],
    pub(super) guarded: bool,
    /// Rows are kept in memory until the end (a writer's), not sent as chunks.
    pub(super) hold: bool,
    /// The column types the first row must have (a run built from a cached description).
    pub(super) expect: Option<&'a [Option<u32>]>,
}

impl Producer {
    /// The state, the columns (taken from the prepared run) and the encoder, with the
    /// document's beginning written.
    fn start(&mut self) -> (State, Vec<Column>, Box<dyn format::Encoder>) {
        let mut state = self.state();
        let columns = std::mem::take(&mut self.prepared.columns);
        let mut encoder = format::encoder(
            self.options.format,
            self.options.dp,
            self.options.csv_geometry,
        );
        encoder.begin(&mut state.out, &columns);
        (state, columns, encoder)
    }

    fn state(&self) -> State {
        let n = self.prepared.columns.len();
        State {
            scratch: Vec::with_capacity(n),
            out: Vec::with_capacity(self.options.chunk_bytes * 2),
            rows: 0,
            sent: 0,
            geometry: vec![None; n],
        }
    }

    /// A reader's run: rows stream to the body as they come.
    pub(super) async fn run(mut self) {
        let (mut state, columns, mut encoder) = self.start();
        let sleep = tokio::time::sleep_until(self.session.deadline.into());
        tokio::pin!(sleep);
        let ctx = Ctx {
            tx: &self.tx,
            deadline: self.session.deadline,
            options: &self.options,
            postgis: self.session.postgis,
            columns: &columns,
            guarded: self.prepared.guarded,
            hold: false,
            expect: self.prepared.reused.as_ref().map(|r| r.oids.as_slice()),
        };
        let query = std::mem::take(&mut self.prepared.query);
        let stop = pump_on(
            &mut self.session,
            &query,
            &ctx,
            &mut sleep,
            encoder.as_mut(),
            &mut state,
        )
        .await;
        if let (Stop::Done { error: Some(_), .. }, Some(reused)) = (&stop, &self.prepared.reused) {
            reused.plans.remove(&reused.key);
        }
        let (error, cut) = match stop {
            Stop::Done { error, cut } => (error.map(|e| e.to_string()), cut),
            Stop::Late => (
                Some(Error::Deadline(self.options.deadline).to_string()),
                true,
            ),
            Stop::Dropped => {
                self.session.set_cut(true);
                let _ = self.session.finish(false).await;
                return;
            }
            Stop::Stalled => {
                self.session.set_cut(true);
                let _ = self.session.finish(false).await;
                self.fail(Error::Deadline(self.options.deadline));
                return;
            }
        };
        self.session.set_cut(cut);
        tracing::debug!(
            rows = state.rows,
            failed = error.is_some(),
            ms = self.started.elapsed().as_millis() as u64,
            "query streamed"
        );
        // The document's end goes to a caller that keeps up before the session ends: the
        // rollback and the connection's check are one round trip off the response's path. A
        // caller that does not keep up is not waited for with the transaction open: the
        // session ends first (as does one cut mid-statement, whose cancel comes first).
        let last = self.last_chunk(encoder.as_mut(), &columns, &mut state, error.as_deref());
        let last = if cut {
            Err(last)
        } else {
            self.tx.try_send(last).map_err(|e| match e {
                mpsc::error::TrySendError::Full(last) | mpsc::error::TrySendError::Closed(last) => {
                    last
                }
            })
        };
        match last {
            Ok(()) => {
                send_outcome(&mut self.end, self.started, state.rows, error);
                // The body ends when the chunks' channel closes.
                self.tx = mpsc::channel(1).0;
                let _ = self.session.finish(false).await;
            }
            Err(last) => {
                let _ = self.session.finish(false).await;
                if self.send_last(last).await {
                    send_outcome(&mut self.end, self.started, state.rows, error);
                }
            }
        }
    }

    /// A writer's run: the statement runs to its end and commits, its output held until
    /// then; a failure is returned, and nothing is written.
    pub(super) async fn write(mut self) -> Result<()> {
        let (mut state, columns, mut encoder) = self.start();
        let sleep = tokio::time::sleep_until(self.session.deadline.into());
        tokio::pin!(sleep);
        let ctx = Ctx {
            tx: &self.tx,
            deadline: self.session.deadline,
            options: &self.options,
            postgis: self.session.postgis,
            columns: &columns,
            guarded: self.prepared.guarded,
            hold: true,
            expect: None,
        };
        let query = std::mem::take(&mut self.prepared.query);
        let st = self.options.statement_timeout;
        let deadline = self.session.deadline;
        // A statement without result columns (DML without RETURNING, DDL): report the rows it
        // affected as total_rows, as CARTO does.
        let stop = if columns.is_empty() {
            match self.session.conn_mut() {
                Err(e) => Stop::failed(e, false),
                Ok(conn) => {
                    let run = sqlx::query(AssertSqlSafe(query))
                        .persistent(false)
                        .execute(&mut **conn);
                    match tokio::time::timeout_at(deadline.into(), run).await {
                        Ok(Ok(done)) => {
                            state.rows = done.rows_affected();
                            Stop::Done {
                                error: None,
                                cut: false,
                            }
                        }
                        Ok(Err(e)) => Stop::failed(Error::from_sqlx(e, st), false),
                        Err(_) => Stop::Late,
                    }
                }
            }
        } else {
            pump_on(
                &mut self.session,
                &query,
                &ctx,
                &mut sleep,
                encoder.as_mut(),
                &mut state,
            )
            .await
        };
        let failure = match stop {
            Stop::Done {
                error: None,
                cut: false,
            } => None,
            Stop::Done {
                error: Some(e),
                cut,
            } => Some((e, cut)),
            Stop::Done { error: None, cut } => Some((Error::Internal("cut short".into()), cut)),
            Stop::Late | Stop::Dropped | Stop::Stalled => {
                Some((Error::Deadline(self.options.deadline), true))
            }
        };
        if let Some((error, cut)) = failure {
            self.session.set_cut(cut);
            let _ = self.session.finish(false).await;
            return Err(error);
        }
        self.session.finish(true).await?;
        let summary = Summary {
            elapsed: self.started.elapsed(),
            rows: state.rows,
            geometry: &state.geometry,
        };
        encoder.finish(&mut state.out, &columns, &summary, None);
        let _ = self.tx.try_send(Bytes::from(state.out));
        send_outcome(&mut self.end, self.started, state.rows, None);
        Ok(())
    }

    /// Writes the end of the document: the last chunk.
    fn last_chunk(
        &self,
        encoder: &mut dyn format::Encoder,
        columns: &[Column],
        state: &mut State,
        error: Option<&str>,
    ) -> Bytes {
        let summary = Summary {
            elapsed: self.started.elapsed(),
            rows: state.rows,
            geometry: &state.geometry,
        };
        encoder.finish(&mut state.out, columns, &summary, error);
        Bytes::from(std::mem::take(&mut state.out))
    }

    /// Sends the last chunk (briefly past the deadline, so a deadline error itself can still
    /// reach a reader that keeps up). Returns whether it was sent.
    async fn send_last(&mut self, last: Bytes) -> bool {
        let until = self.session.deadline.max(Instant::now()) + Duration::from_millis(100);
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
pub(super) fn send_outcome(
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

/// Runs the query and writes its rows as they arrive from the socket, so encoding here
/// overlaps with PostgreSQL producing the next rows.
pub(super) async fn pump(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    ctx: &Ctx<'_>,
    sleep: &mut Pin<&mut Sleep>,
    encoder: &mut dyn format::Encoder,
    state: &mut State,
) -> Stop {
    let st = ctx.options.statement_timeout;
    let mut rows = sqlx::query(AssertSqlSafe(sql))
        .persistent(false)
        .fetch(conn);
    let mut got: u64 = 0;
    loop {
        // A row already read from the socket needs no watching; only a wait does.
        let next = match rows.next().now_or_never() {
            Some(next) => next,
            None => tokio::select! {
                biased;
                row = rows.next() => row,
                () = sleep.as_mut() => return Stop::Late,
                () = ctx.tx.closed() => return Stop::Dropped,
            },
        };
        match next {
            None => {
                return Stop::Done {
                    error: None,
                    cut: false,
                };
            }
            // PostgreSQL ended the statement: the connection is in sync again.
            Some(Err(e @ sqlx::Error::Database(_))) => {
                return Stop::failed(Error::from_sqlx(e, st), false);
            }
            Some(Err(e)) => return Stop::failed(Error::from_sqlx(e, st), true),
            Some(Ok(row)) => {
                got += 1;
                if got == 1
                    && let Some(expect) = ctx.expect
                    && !row
                        .columns()
                        .iter()
                        .map(|c| c.type_info().oid().map(|o| o.0))
                        .eq(expect.iter().copied())
                {
                    return Stop::failed(
                        Error::Query {
                            code: "40001".into(),
                            message: "a table the statement reads changed while it ran: \
                                      run it again"
                                .into(),
                        },
                        true,
                    );
                }
                // Rows that keep coming never wait on the timer: look at the clock instead. A
                // dropped body shows at the next chunk sent.
                if got.is_multiple_of(1024) && Instant::now() >= ctx.deadline {
                    return Stop::Late;
                }
                if let Err(stop) = write_row(&row, ctx, sleep, encoder, state).await {
                    return stop;
                }
            }
        }
    }
}

pub(super) async fn write_row(
    row: &PgRow,
    ctx: &Ctx<'_>,
    sleep: &mut Pin<&mut Sleep>,
    encoder: &mut dyn format::Encoder,
    state: &mut State,
) -> Result<(), Stop> {
    let limited = |e: Error| Stop::failed(e, true);
    if let Some(limit) = ctx.options.row_limit
        && state.rows >= limit
    {
        return Err(limited(Error::Limit(format!(
            "row limit of {limit} exceeded"
        ))));
    }
    let read = |e: sqlx::Error| Stop::failed(Error::Internal(e.to_string()), true);
    if ctx.guarded {
        let guard = row.try_get_raw(ctx.columns.len()).map_err(read)?;
        if !guard.is_null() {
            let i: i32 = row.try_get(ctx.columns.len()).map_err(read)?;
            let name = usize::try_from(i - 1)
                .ok()
                .and_then(|i| ctx.columns.get(i))
                .map_or("?", |c| c.name.as_str());
            let max = ctx.options.value_limit.unwrap_or_default();
            return Err(limited(Error::Limit(format!(
                "a value of column {name} is larger than the value-size limit of {max} bytes"
            ))));
        }
    }
    let mut values = recycle(std::mem::take(&mut state.scratch));
    for (i, c) in ctx.columns.iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(read)?;
        if raw.is_null() {
            values.push(Value::Null);
            continue;
        }
        let bytes = raw.as_bytes().map_err(|e| read(sqlx::Error::Decode(e)))?;
        let kind = c.kind.unwrap_or(Kind::Text);
        let v = value::decode(kind, bytes, ctx.postgis).map_err(|e| {
            limited(Error::Internal(format!(
                "cannot read column {}: {}",
                c.name, e.0
            )))
        })?;
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
        return Err(limited(Error::Limit(format!(
            "byte limit of {limit} exceeded"
        ))));
    }
    state.rows += 1;
    if !ctx.hold && state.out.len() >= ctx.options.chunk_bytes {
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
pub(super) fn recycle<'a>(mut values: Vec<Value<'_>>) -> Vec<Value<'a>> {
    values.clear();
    values.into_iter().map(|_| Value::Null).collect()
}

pub(super) struct State {
    /// The values of the row being written, reused from row to row.
    pub(super) scratch: Vec<Value<'static>>,
    pub(super) out: Vec<u8>,
    pub(super) rows: u64,
    pub(super) sent: u64,
    pub(super) geometry: Vec<Option<Header>>,
}
