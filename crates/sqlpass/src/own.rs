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
/// `own` (a new one, or behind a transaction-mode pooler, a server connection that has not run
/// the sandbox yet), one more message deallocates what the connection holds, prepares `own` and
/// the end check, and runs the same: one message is served by one server connection, so this
/// holds whatever a pooler in between does.
pub(crate) async fn execute(
    conn: &mut PgConnection,
    before: &str,
    own: Own,
    args: &[&str],
) -> Result<PgRow, sqlx::Error> {
    let args = if args.is_empty() {
        String::new()
    } else {
        format!("('{}')", args.join("', '"))
    };
    let run = format!("{before}; EXECUTE {}{args}", own.name());
    match sqlx::raw_sql(AssertSqlSafe(run.clone()))
        .fetch_one(&mut *conn)
        .await
    {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("26000") => {
            let mut again = format!("ROLLBACK; DEALLOCATE ALL;\n{};\n", own.prepare());
            if own != Own::End {
                again.push_str(&Own::End.prepare());
                again.push_str(";\n");
            }
            again.push_str(&run);
            sqlx::raw_sql(AssertSqlSafe(again))
                .fetch_one(&mut *conn)
                .await
        }
        done => done,
    }
}
