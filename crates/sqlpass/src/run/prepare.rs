//! What runs: the statement described (or its kept description reused), its tables found,
//! and the query that wraps it for its limits.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{
    AssertSqlSafe, Column as _, Executor as _, Row as _, SqlSafeStr as _, Statement as _,
    TypeInfo as _,
};

use crate::format::Column;
use crate::plans::{Described, Key};
use crate::tables;
use crate::value::Kind;
use crate::{Access, Error, Options, Result, Session, Statement};

pub(super) struct Prepared {
    /// The result columns, as the encoders see them.
    pub(super) columns: Vec<Column>,
    pub(super) tables: Vec<String>,
    /// What runs: the statement wrapped, or (a writer's statement without result columns) as
    /// it is.
    pub(super) query: String,
    /// Whether the query's last column is the value-size guard.
    pub(super) guarded: bool,
    /// The cached description it was built from, when it was.
    pub(super) reused: Option<Reused>,
}

/// A cached description used by a run: dropped from its cache when the run fails, and checked
/// against the run's own columns, in case a DDL command committed between the two.
pub(super) struct Reused {
    pub(super) plans: crate::Plans,
    pub(super) key: Key,
    /// The type of each column of the wrapped query.
    pub(super) oids: Vec<Option<u32>>,
}

/// Describes the statement, finds its tables, and builds what runs.
pub(super) async fn prepare(
    session: &mut Session,
    statement: &Statement,
    options: &Options,
) -> Result<Prepared> {
    if let Some(inner) = crate::statement::explained(statement.as_str())? {
        return prepare_explain(session, statement, inner, options).await;
    }
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
    let mut want_tables = options.affected_tables || options.allowed_tables.is_some();
    // A writer's command that has no plan (DDL, DO, CALL…) reads no table that a plan would
    // name: it has no cache tags, and a key limited to listed tables may not run it (its
    // tables could not be checked; the role's own privileges would be the only guard).
    if access == Access::ReadWrite && !statement.has_plan() {
        if options.allowed_tables.is_some() {
            return Err(Error::Forbidden(format!(
                "{} statements need a key that grants every table",
                statement.keyword().to_ascii_uppercase()
            )));
        }
        want_tables = false;
    }
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
        None => tables::planned(conn, sql, st).await?,
    };
    tables::check_granted(options, &tables)?;
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

/// An `EXPLAIN`: run as it is (its plan is small), its columns found by preparing it (sqlx
/// names the statement; the session closes it before the connection is reused). The statement
/// it explains is checked as any caller's, and its tables as the statement's own would be: a
/// key that does not list a table sees no plan of it.
async fn prepare_explain(
    session: &mut Session,
    statement: &Statement,
    inner: &str,
    options: &Options,
) -> Result<Prepared> {
    let st = options.statement_timeout;
    let err = |e| Error::from_sqlx(e, st);
    let inner = Statement::new(inner)?;
    let postgis = session.postgis;
    let want_tables = options.affected_tables || options.allowed_tables.is_some();
    let tables = if want_tables {
        tables::planned(session.conn_mut()?, inner.as_str(), st).await?
    } else {
        Vec::new()
    };
    tables::check_granted(options, &tables)?;
    session.caller_prepared();
    let prepared = (&mut **session.conn_mut()?)
        .prepare(AssertSqlSafe(statement.as_str().to_owned()).into_sql_str())
        .await
        .map_err(err)?;
    let columns = prepared
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            pgtype: typname(c.type_info().name()),
            kind: c.type_info().oid().and_then(|oid| Kind::of(oid.0, postgis)),
            skip: options.skipfields.iter().any(|s| s == c.name()),
        })
        .collect();
    Ok(Prepared {
        columns,
        tables,
        query: statement.as_str().to_owned(),
        guarded: false,
        reused: None,
    })
}

/// PostgreSQL's `text` and `int4` types.
pub(super) const TEXT_OID: u32 = 25;
pub(super) const INT4_OID: u32 = 23;

/// One try of a reader's describe statement; `None` when the session has ended.
pub(super) async fn describe_once(
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
pub(super) async fn unwrapped_error(
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
pub(super) fn wrap(
    sql: &str,
    access: Access,
    columns: &mut [Column],
    options: &Options,
) -> (String, bool) {
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

/// PostgreSQL's `typname` from sqlx's display name: built-in types are upper-cased there
/// (`INT4`, arrays `INT4[]`); extension types keep their name (`geometry`).
pub(super) fn typname(display: &str) -> String {
    match display.strip_suffix("[]") {
        Some(base) => format!("_{}", base.to_ascii_lowercase()),
        None => display.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::typname;

    #[test]
    fn type_names_are_postgres_typnames() {
        assert_eq!(typname("INT4"), "int4");
        assert_eq!(typname("TEXT[]"), "_text");
        assert_eq!(typname("geometry"), "geometry");
    }
}
