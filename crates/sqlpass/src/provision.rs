//! SQL that provisions a least-privileged public role.

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Executor as _};

use crate::{Error, Result};

/// Functions every role may call by default that a caller should not: large objects (they
/// write even where the caller can write nothing else), session advisory locks (they outlive
/// the transaction), sleeping, notifications, signalling other backends and reading their
/// query text.
const DANGEROUS: &[&str] = &[
    "lo_from_bytea(oid, bytea)",
    "lo_create(oid)",
    "lo_creat(integer)",
    "lo_put(oid, bigint, bytea)",
    "lo_unlink(oid)",
    "lo_import(text)",
    "lo_import(text, oid)",
    "lo_export(oid, text)",
    "pg_advisory_lock(bigint)",
    "pg_advisory_lock(integer, integer)",
    "pg_advisory_lock_shared(bigint)",
    "pg_advisory_lock_shared(integer, integer)",
    "pg_try_advisory_lock(bigint)",
    "pg_try_advisory_lock(integer, integer)",
    "pg_try_advisory_lock_shared(bigint)",
    "pg_try_advisory_lock_shared(integer, integer)",
    "pg_sleep(double precision)",
    "pg_sleep_for(interval)",
    "pg_sleep_until(timestamp with time zone)",
    "pg_notify(text, text)",
    // Signalling and watching other backends: a caller of a shared role (every anonymous
    // caller of a user) would otherwise cancel, terminate or read the queries of the others.
    "pg_cancel_backend(integer)",
    "pg_terminate_backend(integer, bigint)",
    "pg_terminate_backend(integer)",
    "pg_stat_get_activity(integer)",
    "pg_stat_get_backend_activity(integer)",
];

/// Installs in `admin`'s database what the sandbox uses there: `sqlpass.query_tables(text)`,
/// which finds the tables a statement reads (for cache tags) inside PostgreSQL. Without it,
/// [`run`](crate::run) reads the whole `EXPLAIN` output instead, whose size a hostile statement
/// controls (a folded constant appears in it), so a server should install it. Idempotent;
/// [`PublicRole::provision`] calls it.
///
/// ```no_run
/// # async fn demo(admin: sqlx::PgPool) -> sqlpass::Result<()> {
/// sqlpass::install(&admin).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Query`] when PostgreSQL refuses (no right to create the schema).
pub async fn install(admin: &PgPool) -> Result<()> {
    let err = |e| Error::from_sqlx(e, std::time::Duration::from_secs(0));
    // Two installs at once (the tests' parallel set-ups) would race on CREATE OR REPLACE: a
    // transaction-level advisory lock orders them.
    let mut tx = admin.begin().await.map_err(err)?;
    sqlx::query("select pg_advisory_xact_lock(7345103221)")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    sqlx::raw_sql(include_str!("sql/install.sql"))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// A public login role: `SELECT` on the chosen tables of one schema and nothing else.
///
/// ```no_run
/// # async fn demo(admin: sqlx::PgPool) -> sqlpass::Result<()> {
/// let role = sqlpass::PublicRole::new("demo_public", "its password", "public")
///     .tables(["countries", "places"]);
/// role.provision(&admin, &["demo_owner"]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PublicRole {
    name: String,
    password: String,
    schema: String,
    tables: Vec<String>,
}

impl std::fmt::Debug for PublicRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicRole")
            .field("name", &self.name)
            .field("password", &"[redacted]")
            .field("schema", &self.schema)
            .field("tables", &self.tables)
            .finish()
    }
}

impl PublicRole {
    /// A role `name` logging in with `password`, reading in `schema`.
    pub fn new(
        name: impl Into<String>,
        password: impl Into<String>,
        schema: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            password: password.into(),
            schema: schema.into(),
            tables: Vec::new(),
        }
    }

    /// The tables of the schema it may `SELECT` from (default none).
    pub fn tables(mut self, tables: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tables = tables.into_iter().map(Into::into).collect();
        self
    }

    /// Creates the role (or resets its password and grants when it exists) through `admin`, a
    /// pool with the right to create roles and grant on the schema. It gets `USAGE` on the
    /// schema, `SELECT` on the listed tables only, no other privilege, and loses `EXECUTE` on
    /// the dangerous functions: those are revoked from `PUBLIC` (the only way to deny a role
    /// what `PUBLIC` may do) and granted back to `trusted` roles. Superusers and owners keep
    /// them regardless. Idempotent; one transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when PostgreSQL refuses a step (a missing table, no right to grant).
    pub async fn provision(&self, admin: &PgPool, trusted: &[&str]) -> Result<()> {
        install(admin).await?;
        let st = std::time::Duration::from_secs(0);
        let err = |e| Error::from_sqlx(e, st);
        let mut tx = admin.begin().await.map_err(err)?;
        // Every statement is built by PostgreSQL's format() from bound values: identifiers
        // with %I, the password with %L.
        let mut statements: Vec<String> = Vec::new();
        let (create,): (String,) = sqlx::query_as(include_str!("sql/public_role.sql"))
            .bind(&self.name)
            .bind(&self.password)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        statements.push(create);
        let (usage,): (String,) =
            sqlx::query_as("select format('GRANT USAGE ON SCHEMA %I TO %I', $1::text, $2::text)")
                .bind(&self.schema)
                .bind(&self.name)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
        statements.push(usage);
        for table in &self.tables {
            let (grant,): (String,) = sqlx::query_as(
                "select format('GRANT SELECT ON %I.%I TO %I', $1::text, $2::text, $3::text)",
            )
            .bind(&self.schema)
            .bind(table)
            .bind(&self.name)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
            statements.push(grant);
        }
        let functions: Vec<(String,)> = sqlx::query_as(
            "select to_regprocedure(f)::text from unnest($1::text[]) f where to_regprocedure(f) is not null",
        )
        .bind(DANGEROUS)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        for (function,) in functions {
            // A regprocedure's text is already a valid, quoted signature.
            statements.push(format!("REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC"));
            for role in trusted {
                let (grant,): (String,) = sqlx::query_as(
                    "select format('GRANT EXECUTE ON FUNCTION %s TO %I', $1::text, $2::text)",
                )
                .bind(&function)
                .bind(*role)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
                statements.push(grant);
            }
        }
        for statement in statements {
            (&mut *tx)
                .execute(AssertSqlSafe(statement))
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }
}
