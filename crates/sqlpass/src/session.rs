//! The sandbox: one transaction on a caller's connection, with limits the caller cannot lift,
//! ended so that nothing of the caller's outlives it.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::query::Query;
use sqlx::{Connection as _, Postgres, Row as _};

use crate::own::{self, Own};
use crate::value::PostgisOids;
use crate::{Access, Error, Options, Result};

type Conn = PoolConnection<Postgres>;

/// What begins a sandboxed transaction: `BEGIN`, then the setup (`sql/begin.sql`, prepared
/// once per connection) with its settings, in one round trip.
#[derive(Debug)]
struct Open {
    begin: &'static str,
    setup: Own,
    /// `statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout` (ms), `jit`:
    /// numbers and `on`/`off` only.
    settings: [String; 4],
}

impl Open {
    async fn run(
        &self,
        conn: &mut Conn,
        rollback_first: bool,
    ) -> std::result::Result<PgRow, sqlx::Error> {
        let before = if rollback_first {
            format!("ROLLBACK; {}", self.begin)
        } else {
            self.begin.to_owned()
        };
        let args: Vec<&str> = self.settings.iter().map(String::as_str).collect();
        own::execute(conn, &before, self.setup, &args).await
    }
}

/// One sandboxed transaction on a connection of a caller's pool: the single place where
/// untrusted SQL runs ([`run`](crate::run) and the tile sources are built on it).
///
/// [`Session::begin`] opens it in one round trip: `BEGIN READ ONLY` (or `BEGIN` for a
/// writer) with `statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout`,
/// `jit` and `standard_conforming_strings` set for the transaction. Statements run one at a time
/// in the extended protocol, never kept as named prepared statements, under the wall-clock
/// deadline. [`Session::end`] rolls back (or commits) and resets the session in one round trip —
/// cursors closed, channels unlistened, advisory locks released, temporary tables dropped,
/// settings and role reset — then returns the connection to its pool only when
/// `current_user = session_user` and no SQL-level prepared statement is left but the sandbox's
/// own (its setup and end check, prepared once per connection under `sqlpass_…` names and run
/// with `EXECUTE` in the same message as the `BEGIN` or `ROLLBACK` they follow). A session
/// dropped without `end`, or ended after a statement was cut mid-way, cancels its backend's
/// query and closes the connection.
///
/// ```
/// # async fn demo(pool: sqlx::PgPool) -> sqlpass::Result<()> {
/// use std::ops::ControlFlow;
/// use sqlx::Row;
///
/// let mut session = sqlpass::Session::begin(&pool, &sqlpass::Options::default()).await?;
/// let mut sum = 0;
/// let query = sqlx::query("select n from generate_series(1, $1) n").bind(4);
/// session
///     .for_each_row(query, |row| {
///         sum += row.get::<i32, _>(0);
///         ControlFlow::Continue(())
///     })
///     .await?;
/// session.end().await?;
/// assert_eq!(sum, 10);
/// # Ok(()) }
/// ```
pub struct Session {
    conn: Option<Conn>,
    pool: PgPool,
    canceller: Option<PgPool>,
    pub(crate) pid: i32,
    pub(crate) database: String,
    pub(crate) postgis: PostgisOids,
    pub(crate) access: Access,
    /// Whether `sqlpass.query_tables` is installed ([`install`](crate::install)).
    pub(crate) query_tables: bool,
    /// The login role.
    pub(crate) role: String,
    /// The database's DDL generation, when the options have a [`Plans`](crate::Plans) and
    /// the database has the generation.
    pub(crate) generation: Option<i64>,
    pub(crate) deadline: Instant,
    /// The deadline as the caller set it, for messages.
    pub(crate) total: Duration,
    pub(crate) statement_timeout: Duration,
    /// What began the transaction, to begin it again.
    open: Open,
    /// A script's statements run so far before its last, run again when the transaction is
    /// begun again.
    before: Vec<crate::Statement>,
    /// A caller's statement was prepared named (a writer's, to describe it): sqlx's statement
    /// cache is cleared before the connection is reused.
    caller_prepared: bool,
    /// A statement was cut mid-flight: its backend may still be working, and the connection
    /// waits for messages that will never come.
    cut: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pid", &self.pid)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Opens a sandboxed transaction on a connection of `pool` (a pool that logged in as the
    /// caller's role) with `options`' access, timeouts and deadline; the deadline starts now.
    ///
    /// # Errors
    ///
    /// [`Error::Busy`] when no connection of the pool came free in time,
    /// [`Error::Unavailable`] when the database could not be asked, [`Error::Deadline`].
    pub async fn begin(pool: &PgPool, options: &Options) -> Result<Self> {
        let (mut conn, open, deadline) = Self::connect(pool, options).await?;
        let started = tokio::time::timeout_at(deadline.into(), open.run(&mut conn, false)).await;
        let row = match started {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => return Err(Self::refused(conn, options, e)),
            Err(_) => {
                conn.close_on_drop();
                return Err(Error::Deadline(options.deadline));
            }
        };
        Self::opened(row, conn, pool, options, open, deadline)
    }

    /// Opens a sandboxed transaction as [`Session::begin`] does and runs `sql` in the same
    /// round trip: the `BEGIN`, the sandbox's setup and `sql` go to PostgreSQL as one
    /// simple-protocol message, and each of `sql`'s rows is handed to `f` as it arrives, until
    /// `f` breaks or the rows end. For small reads this saves the two round trips of a
    /// separate `BEGIN` and of an extended-protocol statement's parse.
    ///
    /// `sql` is trusted code's own statement with its values written as literals (a tile
    /// source's query over identifiers read from the catalog), never a caller's text; it must
    /// be exactly one statement (a second one is refused, as it would run too). Its values
    /// come in text format (sqlx decodes numbers, text, booleans and `bytea` as `Vec<u8>`).
    ///
    /// Returns the session, to be ended, and the outcome of `sql`: how many rows `f` saw, or
    /// the error (a break or an error cuts the statement, as [`Session::for_each_row`] does).
    ///
    /// ```
    /// # async fn demo(pool: sqlx::PgPool) -> sqlpass::Result<()> {
    /// use std::ops::ControlFlow;
    /// use sqlx::Row;
    ///
    /// let mut sum = 0;
    /// let (session, read) = sqlpass::Session::begin_reading(
    ///     &pool,
    ///     &sqlpass::Options::default(),
    ///     "select n from generate_series(1, 4) n",
    ///     |row| {
    ///         sum += row.get::<i32, _>(0);
    ///         ControlFlow::Continue(())
    ///     },
    /// )
    /// .await?;
    /// session.end().await?;
    /// assert_eq!(read?, 4);
    /// assert_eq!(sum, 10);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Session::begin`] when the transaction could not be opened;
    /// [`Error::InvalidStatement`] when `sql` is not one statement.
    pub async fn begin_reading<F>(
        pool: &PgPool,
        options: &Options,
        sql: &str,
        mut f: F,
    ) -> Result<(Self, Result<u64>)>
    where
        F: FnMut(PgRow) -> ControlFlow<()>,
    {
        let sql = crate::statement::one_statement(sql)?;
        let (mut conn, open, deadline) = Self::connect(pool, options).await?;
        let st = options.statement_timeout;
        let args: Vec<&str> = open.settings.iter().map(String::as_str).collect();
        let (run, prepare_and_run) = own::messages(open.begin, open.setup, &args, sql);
        let mut setup: Option<PgRow> = None;
        let mut seen = 0;
        let mut message = &run;
        let mut tries = 0;
        // Ok(true): the rows ended; Ok(false): `f` broke; Err: the message failed.
        let read = loop {
            let outcome = tokio::time::timeout_at(deadline.into(), async {
                let mut items =
                    sqlx::raw_sql(sqlx::AssertSqlSafe(message.clone())).fetch_many(&mut *conn);
                while let Some(item) = items.next().await {
                    let sqlx::Either::Right(row) = item? else {
                        continue;
                    };
                    if setup.is_none() {
                        setup = Some(row);
                    } else {
                        seen += 1;
                        if f(row).is_break() {
                            return Ok(false);
                        }
                    }
                }
                Ok::<bool, sqlx::Error>(true)
            })
            .await;
            match outcome {
                Ok(Err(e)) if setup.is_none() && tries < 2 => {
                    tries += 1;
                    message = match own::retry(&e) {
                        Some(own::Retry::Prepare) => &prepare_and_run,
                        Some(own::Retry::Run) => &run,
                        None => break Ok(Err(e)),
                    };
                }
                Ok(outcome) => break Ok(outcome),
                Err(_) => break Err(()),
            }
        };
        let Some(row) = setup else {
            return Err(match read {
                Ok(Err(e)) => Self::refused(conn, options, e),
                _ => {
                    conn.close_on_drop();
                    Error::Deadline(options.deadline)
                }
            });
        };
        let mut session = Self::opened(row, conn, pool, options, open, deadline)?;
        let read = match read {
            Ok(Ok(true)) => Ok(seen),
            Ok(Ok(false)) => {
                session.cut = true;
                Ok(seen)
            }
            Ok(Err(e)) => {
                // PostgreSQL ended the statement itself: the connection is in sync.
                session.cut = !matches!(e, sqlx::Error::Database(_));
                Err(Error::from_sqlx(e, st))
            }
            Err(()) => {
                session.cut = true;
                Err(Error::Deadline(options.deadline))
            }
        };
        Ok((session, read))
    }

    /// A connection of `pool` within `options`' deadline, what begins its transaction, and
    /// the deadline.
    async fn connect(pool: &PgPool, options: &Options) -> Result<(Conn, Open, Instant)> {
        let deadline = Instant::now() + options.deadline;
        let st = options.statement_timeout;
        let conn = match tokio::time::timeout_at(deadline.into(), pool.acquire()).await {
            Ok(conn) => conn.map_err(|e| Error::from_sqlx(e, st))?,
            Err(_) => return Err(Error::Deadline(options.deadline)),
        };
        let ms = |d: Duration| d.as_millis().clamp(1, i32::MAX as u128).to_string();
        let open = Open {
            begin: match options.access {
                Access::ReadOnly => "BEGIN READ ONLY ISOLATION LEVEL READ COMMITTED",
                Access::ReadWrite => "BEGIN READ WRITE ISOLATION LEVEL READ COMMITTED",
            },
            setup: if options.plans.is_some() {
                Own::OpenWithGeneration
            } else {
                Own::Open
            },
            settings: [
                ms(options.statement_timeout),
                ms(options.lock_timeout),
                ms(options.idle_timeout),
                // JIT compilation is off unless asked for: it costs tens of milliseconds per
                // large plan, and a statement being compiled cannot be cancelled.
                (if options.jit { "on" } else { "off" }).to_owned(),
            ],
        };
        Ok((conn, open, deadline))
    }

    /// The error of a transaction that could not be opened; its connection is closed.
    fn refused(mut conn: Conn, options: &Options, e: sqlx::Error) -> Error {
        conn.close_on_drop();
        let e = Error::from_sqlx(e, options.statement_timeout);
        if options.plans.is_some() && matches!(e.sqlstate(), Some("42P01" | "3F000")) {
            return Error::Internal("a plan cache needs sqlpass::install in the database".into());
        }
        e
    }

    /// The session whose transaction the setup `row` opened on `conn`.
    fn opened(
        row: PgRow,
        conn: Conn,
        pool: &PgPool,
        options: &Options,
        open: Open,
        deadline: Instant,
    ) -> Result<Self> {
        let st = options.statement_timeout;
        let read = |e| Error::from_sqlx(e, st);
        let geometry: Option<i64> = row.try_get(2).map_err(read)?;
        let geography: Option<i64> = row.try_get(3).map_err(read)?;
        Ok(Self {
            pid: row.try_get(0).map_err(read)?,
            database: row.try_get(1).map_err(read)?,
            postgis: PostgisOids {
                geometry: geometry.and_then(|o| u32::try_from(o).ok()),
                geography: geography.and_then(|o| u32::try_from(o).ok()),
            },
            conn: Some(conn),
            pool: pool.clone(),
            canceller: options.canceller.clone(),
            access: options.access,
            query_tables: row.try_get(4).map_err(read)?,
            role: row.try_get(10).map_err(read)?,
            generation: if options.plans.is_some() {
                row.try_get(11).map_err(read)?
            } else {
                None
            },
            deadline,
            total: options.deadline,
            statement_timeout: st,
            open,
            before: Vec::new(),
            caller_prepared: false,
            cut: false,
        })
    }

    /// Runs `query` (built by trusted code around checked caller text: see
    /// [`Statement`](crate::Statement)) as an unnamed statement and hands each row to `f` as it
    /// arrives, until `f` breaks or the rows end. Returns how many rows `f` saw. A break or an
    /// error cuts the statement: the session then ends by cancelling it.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when PostgreSQL refuses or fails the statement,
    /// [`Error::StatementTimeout`], [`Error::Deadline`] when the deadline passes first.
    pub async fn for_each_row<F>(
        &mut self,
        query: Query<'_, Postgres, PgArguments>,
        mut f: F,
    ) -> Result<u64>
    where
        F: FnMut(PgRow) -> ControlFlow<()>,
    {
        let deadline = self.deadline;
        let st = self.statement_timeout;
        let total = self.total;
        self.cut = true;
        let conn = self.conn.as_mut().ok_or(Error::Ended)?;
        let mut rows = query.persistent(false).fetch(&mut **conn);
        let mut seen = 0;
        loop {
            match tokio::time::timeout_at(deadline.into(), rows.next()).await {
                Err(_) => return Err(Error::Deadline(total)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    drop(rows);
                    // PostgreSQL ended the statement itself: the connection is in sync.
                    self.cut = !matches!(e, sqlx::Error::Database(_));
                    return Err(Error::from_sqlx(e, st));
                }
                Ok(Some(Ok(row))) => {
                    seen += 1;
                    if f(row).is_break() {
                        return Ok(seen);
                    }
                }
            }
        }
        drop(rows);
        self.cut = false;
        Ok(seen)
    }

    /// Rolls back and begins the transaction again, on the same connection, with the same
    /// settings (and a script's statements that ran before): after a statement failed for a
    /// reason of the client's own. sqlx's look-up of a type it has not met (PostGIS's, an
    /// enum) replaces an unnamed statement between its parsing and its binding, failing it
    /// with SQLSTATE 26000; the same statement succeeds once begun again.
    ///
    /// # Errors
    ///
    /// [`Error::Ended`] after the session ended, [`Error::Query`] / [`Error::Unavailable`]
    /// when the database refuses or cannot be asked.
    pub async fn restart(&mut self) -> Result<()> {
        let st = self.statement_timeout;
        let conn = self.conn.as_mut().ok_or(Error::Ended)?;
        self.open
            .run(conn, true)
            .await
            .map_err(|e| Error::from_sqlx(e, st))?;
        let before = std::mem::take(&mut self.before);
        for statement in &before {
            self.execute(statement).await?;
        }
        self.before = before;
        Ok(())
    }

    /// Runs the statements of a script that come before its last, in order, each under the
    /// timeouts set again (a statement may have changed them for the transaction). Once
    /// begun again when sqlx's look-up of an unknown type replaced the unnamed statement.
    pub(crate) async fn run_before(&mut self, statements: Vec<crate::Statement>) -> Result<()> {
        for statement in statements {
            if let Err(e) = self.execute(&statement).await {
                if e.sqlstate() != Some("26000") {
                    return Err(e);
                }
                self.restart().await?;
                self.execute(&statement).await?;
            }
            self.before.push(statement);
        }
        // The last statement, too, runs under the timeouts as set.
        self.reset_timeouts().await
    }

    /// Runs one checked statement of a script to its end, as an unnamed statement.
    async fn execute(&mut self, statement: &crate::Statement) -> Result<()> {
        let st = self.statement_timeout;
        self.reset_timeouts().await?;
        self.cut = true;
        let conn = self.conn.as_mut().ok_or(Error::Ended)?;
        let done = sqlx::query(sqlx::AssertSqlSafe(statement.as_str().to_owned()))
            .persistent(false)
            .execute(&mut **conn)
            .await;
        // PostgreSQL ended the statement itself: the connection is in sync.
        self.cut = matches!(&done, Err(e) if !matches!(e, sqlx::Error::Database(_)));
        done.map(|_| ()).map_err(|e| Error::from_sqlx(e, st))
    }

    /// Sets the transaction's timeouts again, to what the session began with.
    async fn reset_timeouts(&mut self) -> Result<()> {
        let st = self.statement_timeout;
        let [statement, lock, idle, _] = &self.open.settings;
        // Numbers only (see `Open::settings`).
        let sql = format!(
            "SELECT set_config('statement_timeout', '{statement}', true), \
             set_config('lock_timeout', '{lock}', true), \
             set_config('idle_in_transaction_session_timeout', '{idle}', true)"
        );
        let conn = self.conn.as_mut().ok_or(Error::Ended)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut **conn)
            .await
            .map(|_| ())
            .map_err(|e| Error::from_sqlx(e, st))
    }

    /// Notes that a caller's statement was prepared named on the connection.
    pub(crate) fn caller_prepared(&mut self) {
        self.caller_prepared = true;
    }

    /// The connection, for the crate's own statements.
    pub(crate) fn conn_mut(&mut self) -> Result<&mut Conn> {
        self.conn.as_mut().ok_or(Error::Ended)
    }

    /// Marks the session as cut mid-statement (or not).
    pub(crate) fn set_cut(&mut self, cut: bool) {
        self.cut = cut;
    }

    /// Rolls back and returns the connection to its pool when clean (closes it otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the connection failed on the way (it is closed).
    pub async fn end(mut self) -> Result<()> {
        self.finish(false).await
    }

    /// Ends a reader's session as [`Session::end`] does, on a task of its own: the caller
    /// goes on with what it read while the rollback and the connection's check run, one round
    /// trip off its path. A failure there is logged; the connection is then closed, never
    /// reused. Outside a tokio runtime, it ends as a dropped session does.
    ///
    /// ```
    /// # async fn demo(pool: sqlx::PgPool) -> sqlpass::Result<()> {
    /// let mut session = sqlpass::Session::begin(&pool, &sqlpass::Options::default()).await?;
    /// let mut rows = 0;
    /// session
    ///     .for_each_row(sqlx::query("select 1"), |_| {
    ///         rows += 1;
    ///         std::ops::ControlFlow::Continue(())
    ///     })
    ///     .await?;
    /// session.end_in_background();
    /// assert_eq!(rows, 1);
    /// # Ok(()) }
    /// ```
    pub fn end_in_background(mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = self.finish(false).await {
                    tracing::warn!(error = %e, "a session ended in the background failed to end");
                }
            });
        }
    }

    /// Commits (a writer's session), then cleans up as [`Session::end`] does.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the commit is refused (a deferred constraint, a serialization
    /// failure): nothing was written.
    pub async fn commit(mut self) -> Result<()> {
        self.finish(true).await
    }

    /// Commits (a writer's, when `commit`) or rolls back, then cleans up; the session is over.
    pub(crate) async fn finish(&mut self, commit: bool) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        if self.cut {
            cancel(self.canceller.as_ref().unwrap_or(&self.pool), self.pid).await;
            discard(conn);
            return Ok(());
        }
        let st = self.statement_timeout;
        let work = async {
            let err = |e| Error::from_sqlx(e, st);
            // A writer's statement, prepared to be described, is closed inside its transaction
            // (behind a transaction-mode pooler, on the server connection that has it): the
            // caller's text is kept by no one.
            if self.caller_prepared {
                conn.clear_cached_statements().await.map_err(err)?;
            }
            // A reader's rollback undoes settings, the role, listens, cursors and temporary
            // tables made in the transaction; only what outlives a transaction is checked. A
            // writer's session is reset inside its transaction, then committed (or rolled back
            // first): every result is read, so a failed COMMIT is this session's error.
            let reset = include_str!("sql/reset.sql");
            let row = match (self.access, commit) {
                (Access::ReadOnly, _) => own::execute(&mut conn, "ROLLBACK", Own::End, &[]).await,
                (Access::ReadWrite, true) => {
                    first_row(&mut conn, format!("{reset}\nCOMMIT;")).await
                }
                (Access::ReadWrite, false) => {
                    first_row(&mut conn, format!("ROLLBACK;\n{reset}")).await
                }
            }
            .map_err(err)?;
            let clean: bool = row.try_get(0).map_err(|e| Error::from_sqlx(e, st))?;
            Ok::<_, Error>(clean)
        };
        match tokio::time::timeout(Duration::from_secs(5), work).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => {
                tracing::warn!(
                    pid = self.pid,
                    "a caller left its connection unclean: the connection is closed"
                );
                let _ = conn.detach().close().await;
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = conn.detach().close().await;
                Err(e)
            }
            Err(_) => {
                discard(conn);
                Err(Error::Deadline(Duration::from_secs(5)))
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let pool = self.canceller.clone().unwrap_or_else(|| self.pool.clone());
        let pid = self.pid;
        // Dropped mid-way (the caller's future was dropped): whatever runs is cancelled.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                cancel(&pool, pid).await;
                discard(conn);
            });
        }
    }
}

/// Closes a connection that cannot be reused (its statement cut mid-flight) at once, by
/// dropping its socket. Closing it politely would wait: over TLS, the shutdown waits on a
/// server still blocked writing rows nobody reads (ten seconds, sqlx's limit).
fn discard(conn: Conn) {
    drop(conn.detach());
}

/// Runs our own multi-statement `sql` to its end and returns the first row any statement
/// gave.
async fn first_row(conn: &mut Conn, sql: String) -> std::result::Result<PgRow, sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut **conn)
        .await?
        .into_iter()
        .next()
        .ok_or(sqlx::Error::RowNotFound)
}

/// Cancels whatever backend `pid` runs, from a connection of `pool`: the canceller (a role
/// holding `pg_signal_backend` and `EXECUTE` on `pg_cancel_backend`), or the caller's own pool
/// when none was given.
pub(crate) async fn cancel(pool: &PgPool, pid: i32) {
    const CANCEL: &str = "select pg_cancel_backend($1)";
    // An idle connection of the pool, when there is one, saves connecting.
    if let Some(mut idle) = pool.try_acquire() {
        let sent = sqlx::query(CANCEL)
            .bind(pid)
            .persistent(false)
            .execute(&mut *idle);
        if matches!(
            tokio::time::timeout(Duration::from_secs(2), sent).await,
            Ok(Ok(_))
        ) {
            return;
        }
        idle.close_on_drop();
    }
    let options = pool.connect_options();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        sqlx::query(CANCEL)
            .bind(pid)
            .persistent(false)
            .execute(&mut conn)
            .await?;
        conn.close().await
    })
    .await;
}
