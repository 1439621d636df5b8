//! The SQL API's pipeline: one statement in a session, wrapped for its limits, encoded as the
//! rows arrive.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{
    AssertSqlSafe, Column as _, Executor as _, Row as _, SqlSafeStr as _, Statement as _,
    TypeInfo as _, ValueRef as _,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tracing::Instrument as _;

use crate::body::End;
use crate::format::{self, Column, Summary};
use crate::geom::Header;
use crate::plans::{Described, Key};
use crate::tables;
use crate::value::{self, Kind, PostgisOids, Value};
use crate::{Access, Body, Error, Options, Outcome, Result, Session, Statement};

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
    let statement = Statement::new(sql)?;
    let mut session = Session::begin(pool, &options).await?;
    let deadline = session.deadline;
    let prepared =
        match tokio::time::timeout_at(deadline.into(), prepare(&mut session, &statement, &options))
            .await
        {
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

struct Prepared {
    /// The result columns, as the encoders see them.
    columns: Vec<Column>,
    tables: Vec<String>,
    /// What runs: the statement wrapped, or (a writer's statement without result columns) as
    /// it is.
    query: String,
    /// Whether the query's last column is the value-size guard.
    guarded: bool,
    /// The cached description it was built from, when it was.
    reused: Option<Reused>,
}

/// A cached description used by a run: dropped from its cache when the run fails, and checked
/// against the run's own columns, in case a DDL command committed between the two.
struct Reused {
    plans: crate::Plans,
    key: Key,
    /// The type of each column of the wrapped query.
    oids: Vec<Option<u32>>,
}

/// Describes the statement, finds its tables, and builds what runs.
async fn prepare(
    session: &mut Session,
    statement: &Statement,
    options: &Options,
) -> Result<Prepared> {
    let st = options.statement_timeout;
    let err = |e| Error::from_sqlx(e, st);
    let sql = statement.as_str();
    let postgis = session.postgis;
    let access = session.access;
    // The statement's result columns, always current. A reader's statement is described by
    // running it under `LIMIT 0` beside a one-row relation, as an unnamed statement: one row
    // of NULLs whose columns are the statement's. A writer's cannot run twice, so it is
    // prepared (sqlx names it; the session closes it before the connection is reused).
    // With `sqlpass.query_tables` installed, a reader's cache tags come in the same round trip.
    let want_tables = options.affected_tables || options.allowed_tables.is_some();
    let tables_in_describe = want_tables && session.query_tables;
    let mut tables = None;
    // A reader's statement described before, in this DDL generation, as this role.
    let cache = match (&options.plans, session.generation, access) {
        (Some(plans), Some(generation), Access::ReadOnly) => Some((
            plans,
            generation,
            Key::new(&session.database, &session.role, sql),
        )),
        _ => None,
    };
    let hit = cache
        .as_ref()
        .and_then(|(plans, generation, key)| plans.get(key, *generation, tables_in_describe));
    let described: Vec<(String, sqlx::postgres::PgTypeInfo)> = match (access, &hit) {
        (_, Some(hit)) => {
            tables = hit.tables.clone();
            hit.columns.clone()
        }
        (Access::ReadOnly, None) => {
            let extra = if tables_in_describe {
                ", sqlpass.query_tables($1) AS _tables"
            } else {
                ""
            };
            let describe = format!(
                "SELECT _q.*{extra} FROM (VALUES (1)) AS _one(_) LEFT JOIN \
                 (SELECT * FROM (\n{sql}\n) AS _i LIMIT 0) AS _q ON true"
            );
            let bind = tables_in_describe.then_some(sql);
            let mut row = describe_once(session, &describe, bind).await;
            // sqlx looks up a type it does not know (PostGIS's, an enum) between parsing and
            // binding an unnamed statement, and that look-up replaces the statement. The
            // type is known the second time, in a transaction begun again.
            if let Err(Some(sqlx::Error::Database(db))) = &row
                && db.code().as_deref() == Some("26000")
            {
                session.restart().await?;
                row = describe_once(session, &describe, bind).await;
            }
            let row: PgRow = match row {
                Ok(row) => row,
                Err(Some(e)) => return Err(unwrapped_error(session, statement, e, st).await),
                Err(None) => return Err(Error::Ended),
            };
            let mut described: Vec<_> = row
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_info().clone()))
                .collect();
            if tables_in_describe {
                described.pop();
                let found: Vec<String> = row.try_get(described.len()).map_err(err)?;
                tables = Some(found);
            }
            if let Some((plans, generation, key)) = &cache {
                let entry = Described {
                    columns: described.clone(),
                    tables: tables.clone(),
                };
                plans.insert(key.clone(), *generation, Arc::new(entry));
            }
            described
        }
        (Access::ReadWrite, None) => {
            session.caller_prepared();
            let prepared = (&mut **session.conn_mut()?)
                .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
                .await
                .map_err(err)?;
            prepared
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_info().clone()))
                .collect()
        }
    };
    let mut columns: Vec<Column> = described
        .iter()
        .map(|(name, ty)| Column {
            name: name.clone(),
            pgtype: typname(ty.name()),
            kind: ty.oid().and_then(|oid| Kind::of(oid.0, postgis)),
            skip: options.skipfields.iter().any(|s| s == name),
        })
        .collect();

    let query_tables = session.query_tables;
    let conn: &mut sqlx::PgConnection = session.conn_mut()?;
    let tables = match tables {
        Some(tables) => tables,
        None if !want_tables => Vec::new(),
        None if query_tables => {
            let (found,): (Vec<String>,) = sqlx::query_as("select sqlpass.query_tables($1)")
                .bind(sql)
                .persistent(false)
                .fetch_one(&mut *conn)
                .await
                .map_err(err)?;
            found
        }
        // Without the installed function, the plan is read here.
        None => {
            let explain = format!("EXPLAIN (FORMAT JSON, VERBOSE)\n{sql}");
            let row: PgRow = sqlx::query(AssertSqlSafe(explain))
                .persistent(false)
                .fetch_one(&mut *conn)
                .await
                .map_err(err)?;
            let raw = row.try_get_raw(0).map_err(err)?;
            let plan: serde_json::Value = raw
                .as_bytes()
                .ok()
                .and_then(|b| serde_json::from_slice(b).ok())
                .ok_or_else(|| Error::Internal("unreadable EXPLAIN output".into()))?;
            tables::from_plan(&plan)
        }
    };

    if let Some(allowed) = &options.allowed_tables
        && let Some(table) = tables.iter().find(|t| !allowed.contains(t))
    {
        return Err(Error::Query {
            code: "42501".into(),
            message: format!("permission denied for table {table}: the key does not grant it"),
        });
    }
    if columns.is_empty() && access == Access::ReadWrite {
        return Ok(Prepared {
            columns,
            tables,
            query: sql.to_owned(),
            guarded: false,
            reused: None,
        });
    }
    // What the wrapper makes of each column: types decoded here as they are, others as text.
    let mut oids: Vec<Option<u32>> = columns
        .iter()
        .zip(&described)
        .map(|(c, (_, ty))| match c.kind {
            Some(_) => ty.oid().map(|o| o.0),
            None => Some(TEXT_OID),
        })
        .collect();
    let (query, guarded) = wrap(sql, access, &mut columns, options);
    let guarded = options.value_limit.is_some() && guarded;
    if guarded {
        oids.push(Some(INT4_OID));
    }
    let reused = match (cache, hit) {
        (Some((plans, _, key)), Some(_)) => Some(Reused {
            plans: plans.clone(),
            key,
            oids,
        }),
        _ => None,
    };
    Ok(Prepared {
        guarded,
        columns,
        tables,
        query,
        reused,
    })
}

/// PostgreSQL's `text` and `int4` types.
const TEXT_OID: u32 = 25;
const INT4_OID: u32 = 23;

/// One try of a reader's describe statement; `None` when the session has ended.
async fn describe_once(
    session: &mut Session,
    describe: &str,
    bind: Option<&str>,
) -> Result<PgRow, Option<sqlx::Error>> {
    let query = sqlx::query(AssertSqlSafe(describe.to_owned())).persistent(false);
    let query = match bind {
        Some(text) => query.bind(text.to_owned()),
        None => query,
    };
    let conn = session.conn_mut().map_err(|_| None)?;
    query.fetch_one(&mut **conn).await.map_err(Some)
}

/// The error to report when a reader's wrapped statement failed to describe: the statement's
/// own, from preparing it alone (so messages and positions are those of the caller's text), or,
/// when it is valid alone, that it is not a query a reader may run.
async fn unwrapped_error(
    session: &mut Session,
    statement: &Statement,
    wrapped: sqlx::Error,
    st: Duration,
) -> Error {
    let wrapped = Error::from_sqlx(wrapped, st);
    if wrapped.sqlstate() != Some("42601") {
        return wrapped;
    }
    // The transaction is aborted by the failure: begin it again to ask.
    if let Err(e) = session.restart().await {
        return e;
    }
    session.caller_prepared();
    let alone = match session.conn_mut() {
        Ok(conn) => (&mut **conn)
            .prepare(AssertSqlSafe(statement.as_str().to_owned()).into_sql_str())
            .await
            .map(|_| ()),
        Err(e) => return e,
    };
    match alone {
        Err(e) => Error::from_sqlx(e, st),
        Ok(()) => match statement.keyword() {
            keyword @ ("insert" | "update" | "delete" | "merge" | "create" | "drop" | "alter"
            | "truncate" | "grant" | "revoke" | "comment" | "refresh" | "reindex"
            | "cluster" | "security" | "import" | "call" | "do" | "lock") => {
                // A write: PostgreSQL's own refusal when the role lacks the privilege (EXPLAIN
                // checks privileges without running anything), else the read-only one.
                let explain = format!("EXPLAIN\n{}", statement.as_str());
                let checked = match session.conn_mut() {
                    Ok(conn) => {
                        sqlx::query(AssertSqlSafe(explain))
                            .persistent(false)
                            .execute(&mut **conn)
                            .await
                    }
                    Err(e) => return e,
                };
                match checked {
                    Err(e @ sqlx::Error::Database(_)) => Error::from_sqlx(e, st),
                    _ => Error::Query {
                        code: "25006".into(),
                        message: format!(
                            "cannot execute {} in a read-only transaction",
                            keyword.to_ascii_uppercase()
                        ),
                    },
                }
            }
            keyword => Error::InvalidStatement(format!(
                "{} does not return rows: only queries (SELECT, VALUES, TABLE, WITH) can run here",
                keyword.to_ascii_uppercase()
            )),
        },
    }
}

/// The statement inside the query that runs: its rows limited (one more than the row limit,
/// to tell "exceeded"), paged, values of types decoded here as they are and others cast to
/// text, and values over the value-size limit replaced by NULL with a last column naming the
/// first such column. Returns the query and whether it has that guard column.
///
/// The inner subquery has `OFFSET`, so PostgreSQL computes each value once although the outer
/// list names it twice. A reader's statement is a subquery; a writer's a `WITH` query (which
/// runs to its end whatever is read of it).
fn wrap(sql: &str, access: Access, columns: &mut [Column], options: &Options) -> (String, bool) {
    let limit = options.row_limit.map(|l| l.saturating_add(1));
    let (limit, offset) = match options.page {
        Some((per_page, page)) => (
            Some(limit.map_or(per_page, |l| l.min(per_page))),
            per_page.saturating_mul(page),
        ),
        None => (limit, 0),
    };
    let limit = limit.map_or_else(|| "ALL".to_owned(), |l| l.to_string());
    let aliases: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    let mut select = Vec::with_capacity(columns.len() + 1);
    let mut guards = Vec::new();
    for (i, (c, a)) in columns.iter_mut().zip(&aliases).enumerate() {
        let value = match c.kind {
            Some(_) => format!("_q.{a}"),
            None => format!("_q.{a}::text"),
        };
        let size = match c.kind {
            Some(
                Kind::Bool
                | Kind::Int2
                | Kind::Int4
                | Kind::Int8
                | Kind::Oid
                | Kind::Float4
                | Kind::Float8
                | Kind::Uuid
                | Kind::Date
                | Kind::Time
                | Kind::Timestamp
                | Kind::Timestamptz
                | Kind::Interval,
            ) => None,
            Some(Kind::Text) => Some(format!("octet_length(_q.{a}::text)")),
            Some(Kind::Bytea) => Some(format!("octet_length(_q.{a})")),
            Some(_) => Some(format!("pg_column_size(_q.{a})")),
            None => Some(format!("octet_length({value})")),
        };
        c.kind.get_or_insert(Kind::Text);
        match (size, options.value_limit) {
            (Some(size), Some(max)) => {
                select.push(format!(
                    "CASE WHEN {size} > {max} THEN NULL ELSE {value} END"
                ));
                guards.push(format!("WHEN {size} > {max} THEN {}", i + 1));
            }
            _ => select.push(value),
        }
    }
    let guarded = !guards.is_empty();
    if guarded {
        select.push(format!("CASE {} END", guards.join(" ")));
    }
    let columns = aliases.join(", ");
    let select = select.join(", ");
    let query = match access {
        Access::ReadOnly => format!(
            "SELECT {select} FROM (SELECT * FROM (\n{sql}\n) AS _i LIMIT {limit} OFFSET {offset}) AS _q({columns})"
        ),
        Access::ReadWrite => format!(
            "WITH _w AS (\n{sql}\n) SELECT {select} FROM (SELECT * FROM _w LIMIT {limit} OFFSET {offset}) AS _q({columns})"
        ),
    };
    (query, guarded)
}

struct Producer {
    session: Session,
    prepared: Prepared,
    options: Options,
    started: Instant,
    tx: mpsc::Sender<Bytes>,
    end: Option<oneshot::Sender<End>>,
}

/// How a statement's rows stopped coming.
enum Stop {
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
async fn pump_on(
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
fn replaced(stop: &Stop, state: &State) -> bool {
    state.rows == 0
        && matches!(stop, Stop::Done { error: Some(e), .. } if e.sqlstate() == Some("26000"))
}

/// What writing a row needs, borrowed from the producer.
struct Ctx<'a> {
    tx: &'a mpsc::Sender<Bytes>,
    deadline: Instant,
    options: &'a Options,
    postgis: PostgisOids,
    columns: &'a [Column],
    guarded: bool,
    /// Rows are kept in memory until the end (a writer's), not sent as chunks.
    hold: bool,
    /// The column types the first row must have (a run built from a cached description).
    expect: Option<&'a [Option<u32>]>,
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
    async fn run(mut self) {
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
        let _ = self.session.finish(false).await;
        tracing::debug!(
            rows = state.rows,
            failed = error.is_some(),
            ms = self.started.elapsed().as_millis() as u64,
            "query streamed"
        );
        if self
            .finish(encoder.as_mut(), &columns, &mut state, error.as_deref())
            .await
        {
            send_outcome(&mut self.end, self.started, state.rows, error);
        }
    }

    /// A writer's run: the statement runs to its end and commits, its output held until
    /// then; a failure is returned, and nothing is written.
    async fn write(mut self) -> Result<()> {
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

/// Runs the query and writes its rows as they arrive from the socket, so encoding here
/// overlaps with PostgreSQL producing the next rows.
async fn pump(
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

async fn write_row(
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
