//! The sandbox's own statements, prepared once per connection at the SQL level under names of
//! their own (`sqlpass_…`), and run with `EXECUTE` in the same simple-protocol message as the
//! `BEGIN` or `ROLLBACK` they follow: one round trip each, parsed and planned once. Only our own
//! text is ever prepared; callers may neither `PREPARE`, `EXECUTE` nor `DEALLOCATE`
//! ([`Statement`](crate::Statement) refuses them).

use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnection, PgRow};

/// One of the sandbox's own prepared statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Own {
    /// The setup of a transaction just begun (`sql/begin.sql`).
    Open,
    /// The same, with the database's DDL generation (`sql/generation.sql`).
    OpenWithGeneration,
    /// The check after a reader's rollback (`sql/end.sql`).
    End,
}

impl Own {
    fn name(self) -> &'static str {
        match self {
            Self::Open => "sqlpass_open",
            Self::OpenWithGeneration => "sqlpass_open_generation",
            Self::End => "sqlpass_end",
        }
    }

    fn prepare(self) -> String {
        let open = "(text, text, text, text) AS\n";
        match self {
            Self::Open => format!(
                "PREPARE {}{open}{}",
                self.name(),
                include_str!("sql/begin.sql")
            ),
            Self::OpenWithGeneration => format!(
                "PREPARE {}{open}{}{}",
                self.name(),
                include_str!("sql/begin.sql"),
                include_str!("sql/generation.sql")
            ),
            Self::End => format!(
                "PREPARE {} AS\n{}",
                self.name(),
                include_str!("sql/end.sql")
            ),
        }
    }
}

/// Runs `before` (our own statements: `BEGIN …`, `ROLLBACK`) and then `EXECUTE`s `own` with
/// `args` (our own literals), in one simple-protocol round trip. On a connection that lacks
/// `own` (a new one, or behind a transaction-mode pooler a server connection that has not run
/// the sandbox yet), the same message is sent again with `own` prepared first. Other prepared
/// statements of the connection (sqlx's own, on a pool shared with other code) are left alone;
/// a pooler may hand the second message to a connection that has `own` already, which is then
/// run as it is.
pub(crate) async fn execute(
    conn: &mut PgConnection,
    before: &str,
    own: Own,
    args: &[&str],
) -> Result<PgRow, sqlx::Error> {
    let (run, prepare_and_run) = messages(before, own, args, "");
    let mut result = sqlx::raw_sql(AssertSqlSafe(run.clone()))
        .fetch_one(&mut *conn)
        .await;
    for _ in 0..2 {
        let sql = match &result {
            Err(e) => match retry(e) {
                Some(Retry::Prepare) => &prepare_and_run,
                Some(Retry::Run) => &run,
                None => break,
            },
            Ok(_) => break,
        };
        result = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .fetch_one(&mut *conn)
            .await;
    }
    result
}

/// The message that runs `before`, `EXECUTE`s `own` with `args` and then runs `after` (our
/// own statements, `""` for none), and the same message with `own` prepared first.
pub(crate) fn messages(before: &str, own: Own, args: &[&str], after: &str) -> (String, String) {
    let args = if args.is_empty() {
        String::new()
    } else {
        format!("('{}')", args.join("', '"))
    };
    let after = if after.is_empty() {
        String::new()
    } else {
        format!(";\n{after}")
    };
    let run = format!("{before}; EXECUTE {}{args}{after}", own.name());
    // A failed `EXECUTE` after `BEGIN` leaves the transaction aborted: it is rolled back first.
    // The end check's message rolled back already.
    let reset = if own == Own::End { "" } else { "ROLLBACK; " };
    let prepare_and_run = format!("{reset}{};\n{run}", own.prepare());
    (run, prepare_and_run)
}

/// What to send after a message of [`messages`] failed with `e`.
pub(crate) enum Retry {
    /// The connection lacks the statement: the message that prepares it first.
    Prepare,
    /// Another client prepared it meanwhile (a pooler's server connection): the message again.
    Run,
}

pub(crate) fn retry(e: &sqlx::Error) -> Option<Retry> {
    match e {
        sqlx::Error::Database(e) if e.code().as_deref() == Some("26000") => Some(Retry::Prepare),
        sqlx::Error::Database(e) if e.code().as_deref() == Some("42P05") => Some(Retry::Run),
        _ => None,
    }
}
