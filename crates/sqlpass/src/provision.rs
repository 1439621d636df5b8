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
/// controls (a folded constant appears in it), so a server should install it. As a superuser,
/// it also installs the DDL generation that [`Plans`](crate::Plans) reads: a one-row table
/// and an event trigger bumping it in every transaction that runs DDL. Where PostGIS is
/// installed (in schema `public`), it also installs CARTO's table functions there, as CARTO's
/// clients call them: `CDB_CartodbfyTable` (see [`cartodbfy`]) and
/// `CDB_TransformToWebmercator`. Idempotent; [`PublicRole::provision`] calls it.
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
    let err = refused;
    // Two installs at once (the tests' parallel set-ups) would race on CREATE OR REPLACE: a
    // transaction-level advisory lock orders them.
    let mut tx = admin.begin().await.map_err(err)?;
    sqlx::query("select pg_advisory_xact_lock(7345103221)")
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    sqlx::raw_sql(include_str!("sql/install.sql"))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    let (postgis,): (bool,) = sqlx::query_as("select to_regtype('public.geometry') is not null")
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
    if postgis {
        sqlx::raw_sql(include_str!("sql/carto.sql"))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

/// Makes `table` (a name as SQL writes it: `places`, `public."My table"`) what CARTO's APIs
/// and clients expect, in place, as CARTO's `CDB_CartodbfyTable` does, through `pool` (a role
/// that owns the table):
/// - `cartodb_id`: a `bigint` numbered from its own sequence, the primary key when the table
///   has none (a unique index otherwise);
/// - `the_geom`: the geometry in EPSG:4326 — kept when there, else the table's one other
///   geometry column renamed (as CARTO's import does), else a new empty column; another SRID
///   is transformed;
/// - `the_geom_webmercator`: the same in EPSG:3857 (latitudes clipped to the projection),
///   filled now and kept in step by a trigger on insert and update;
/// - GiST indexes on both geometries.
///
/// Idempotent. The SQL function behind it ([`install`]) is what a master key's SQL calls:
/// `SELECT CDB_CartodbfyTable('public', 'places')`.
///
/// ```no_run
/// # async fn demo(admin: sqlx::PgPool) -> sqlpass::Result<()> {
/// sqlpass::install(&admin).await?;
/// sqlpass::cartodbfy(&admin, "public.places").await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Query`] when PostgreSQL refuses: no such table, not its owner, no PostGIS.
pub async fn cartodbfy(pool: &PgPool, table: &str) -> Result<()> {
    sqlx::query("select public.cdb_cartodbfytable($1::text::regclass)::text")
        .bind(table)
        .persistent(false)
        .execute(pool)
        .await
        .map_err(refused)?;
    Ok(())
}

/// A caller's login role — one per API key, as CARTO makes them — with exactly the table
/// privileges it is given and nothing else: `USAGE` on the schemas of its tables, the listed
/// privileges on the listed tables (and `USAGE` on the serial sequences of tables it may
/// insert into), no `EXECUTE` on the dangerous functions ([`CallerRole::provision`]).
///
/// ```no_run
/// # async fn demo(admin: sqlx::PgPool) -> sqlpass::Result<()> {
/// let role = sqlpass::CallerRole::new("key_role_1", "its password")
///     .grant("public", "counties", ["select"])
///     .grant("public", "notes", ["select", "insert"]);
/// role.provision(&admin, &[]).await?;
/// sqlpass::CallerRole::drop_role(&admin, "key_role_1").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CallerRole {
    name: String,
    password: String,
    grants: Vec<(String, String, Vec<String>)>,
    /// Schemas whose every table gets these privileges when the role is provisioned.
    schema_grants: Vec<(String, Vec<String>)>,
    /// Schemas the role may create tables (and other objects) in.
    creates: Vec<String>,
}

impl std::fmt::Debug for CallerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerRole")
            .field("name", &self.name)
            .field("password", &"[redacted]")
            .field("grants", &self.grants)
            .field("schema_grants", &self.schema_grants)
            .field("creates", &self.creates)
            .finish()
    }
}

/// The table privileges a caller role may be given.
const PRIVILEGES: &[&str] = &["select", "insert", "update", "delete"];

impl CallerRole {
    /// A role `name` logging in with `password`, with no privilege yet.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            password: password.into(),
            grants: Vec::new(),
            schema_grants: Vec::new(),
            creates: Vec::new(),
        }
    }

    /// Lets the role create tables, views and functions in `schema` (`CREATE` on it, as
    /// CARTO's master key may): the role owns what it makes, so its DDL needs no other grant,
    /// and [`CallerRole::drop_role`] drops what it made with it.
    pub fn create_in(mut self, schema: impl Into<String>) -> Self {
        self.creates.push(schema.into());
        self
    }

    /// Adds `privileges` on every table, view and foreign table of `schema` that exists when
    /// the role is provisioned, except those an extension owns (PostGIS's `spatial_ref_sys`):
    /// the role of an owner's key. Tables made later are not included.
    pub fn grant_schema<P: AsRef<str>>(
        mut self,
        schema: impl Into<String>,
        privileges: impl IntoIterator<Item = P>,
    ) -> Self {
        self.schema_grants
            .push((schema.into(), lowercase(privileges)));
        self
    }

    /// Adds `privileges` (`select`, `insert`, `update`, `delete`) on `schema.table`.
    pub fn grant<P: AsRef<str>>(
        mut self,
        schema: impl Into<String>,
        table: impl Into<String>,
        privileges: impl IntoIterator<Item = P>,
    ) -> Self {
        self.grants
            .push((schema.into(), table.into(), lowercase(privileges)));
        self
    }

    /// Creates the role (or, when it exists, resets its password and takes every table
    /// privilege it had) and grants exactly what it was given, through `admin`, a pool with
    /// the right to create roles and grant on the tables. Also [`install`]s the sandbox's
    /// function and revokes the dangerous functions from `PUBLIC`, granting them back to
    /// `trusted` roles. Idempotent; one transaction.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for an unknown privilege, [`Error::Query`] when PostgreSQL
    /// refuses a step (a missing table, no right to grant).
    pub async fn provision(&self, admin: &PgPool, trusted: &[&str]) -> Result<()> {
        if let Some(bad) = self
            .grants
            .iter()
            .flat_map(|(_, _, ps)| ps)
            .chain(self.schema_grants.iter().flat_map(|(_, ps)| ps))
            .find(|p| !PRIVILEGES.contains(&p.as_str()))
        {
            return Err(Error::InvalidOption {
                name: "privilege",
                reason: format!("{bad} is not one of select, insert, update, delete"),
            });
        }
        install(admin).await?;
        let err = refused;
        let mut tx = admin.begin().await.map_err(err)?;
        // Every statement is built by PostgreSQL's format() from bound values: identifiers
        // with %I, the password with %L.
        let mut statements: Vec<String> = Vec::new();
        let (create,): (String,) = sqlx::query_as(include_str!("sql/public_role.sql"))
            .bind(&self.name)
            .bind(&self.password)
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        statements.push(create);
        statements.extend(revoke_tables(&mut tx, &self.name).await?);
        let mut grants = self.grants.clone();
        for (schema, privileges) in &self.schema_grants {
            let tables: Vec<(String,)> = sqlx::query_as(
                "select c.relname::text
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace
                 where n.nspname = $1 and c.relkind in ('r', 'p', 'v', 'm', 'f')
                   and not exists (select from pg_depend d
                                   where d.classid = 'pg_class'::regclass and d.objid = c.oid
                                     and d.deptype = 'e')
                 order by 1",
            )
            .bind(schema)
            .persistent(false)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            // The schema itself even when it holds no table yet.
            grants.push((schema.clone(), String::new(), privileges.clone()));
            grants.extend(
                tables
                    .into_iter()
                    .map(|(t,)| (schema.clone(), t, privileges.clone())),
            );
        }
        for (schema, table, privileges) in &grants {
            let (usage, grant): (String, String) = sqlx::query_as(
                "select format('GRANT USAGE ON SCHEMA %I TO %I', $1::text, $3::text),
                        format('GRANT %s ON %I.%I TO %I', upper(array_to_string($4::text[], ', ')),
                               $1::text, $2::text, $3::text)",
            )
            .bind(schema)
            .bind(table)
            .bind(&self.name)
            .bind(privileges)
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
            statements.push(usage);
            // An empty table name grants the schema alone (a public role with no table yet).
            if table.is_empty() {
                continue;
            }
            statements.push(grant);
            if privileges.iter().any(|p| p == "insert") {
                let sequences: Vec<(String,)> = sqlx::query_as(
                    "select format('GRANT USAGE ON SEQUENCE %s TO %I', s, $3::text)
                     from pg_attribute a,
                          pg_get_serial_sequence(format('%I.%I', $1::text, $2::text), a.attname) s
                     where a.attrelid = format('%I.%I', $1::text, $2::text)::regclass
                       and a.attnum > 0 and not a.attisdropped and s is not null",
                )
                .bind(schema)
                .bind(table)
                .bind(&self.name)
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
                statements.extend(sequences.into_iter().map(|(g,)| g));
            }
        }
        for schema in &self.creates {
            let (grant,): (String,) = sqlx::query_as(
                "select format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', $1::text, $2::text)",
            )
            .bind(schema)
            .bind(&self.name)
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
            statements.push(grant);
        }
        statements.extend(revoke_dangerous(&mut tx, trusted).await?);
        for statement in statements {
            (&mut *tx)
                .execute(AssertSqlSafe(statement))
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    /// Drops the login role `name` through `admin`: its sessions are ended, what it owns (the
    /// tables a master key's role made) handed to `admin`'s role so that no data goes with it,
    /// its privileges taken, then the role dropped. Nothing happens when there is no such
    /// role.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when PostgreSQL refuses (the role owns objects, no right to drop it).
    pub async fn drop_role(admin: &PgPool, name: &str) -> Result<()> {
        let err = refused;
        sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where usename = $1")
            .bind(name)
            .persistent(false)
            .execute(admin)
            .await
            .map_err(err)?;
        let mut tx = admin.begin().await.map_err(err)?;
        let (exists,): (bool,) =
            sqlx::query_as("select exists (select from pg_roles where rolname = $1)")
                .bind(name)
                .persistent(false)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
        if !exists {
            return Ok(());
        }
        let (reassign, owned, drop): (String, String, String) = sqlx::query_as(
            "select format('REASSIGN OWNED BY %I TO %I', $1::text, current_user),
                    format('DROP OWNED BY %I', $1::text), format('DROP ROLE %I', $1::text)",
        )
        .bind(name)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        for statement in [reassign, owned, drop] {
            (&mut *tx)
                .execute(AssertSqlSafe(statement))
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }
}

/// Privilege names, lower-cased (checked when the role is provisioned).
fn lowercase<P: AsRef<str>>(privileges: impl IntoIterator<Item = P>) -> Vec<String> {
    privileges
        .into_iter()
        .map(|p| p.as_ref().to_ascii_lowercase())
        .collect()
}

/// An admin statement's failure (no statement timeout is set on these).
fn refused(e: sqlx::Error) -> Error {
    Error::from_sqlx(e, std::time::Duration::ZERO)
}

/// The statements that take every table and sequence privilege `role` has in this database on
/// what it does not own, and `CREATE` on every schema.
async fn revoke_tables(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    role: &str,
) -> Result<Vec<String>> {
    let err = refused;
    let rows: Vec<(String,)> = sqlx::query_as(
        "select format('REVOKE ALL ON %s %s FROM %I',
                       case when c.relkind = 'S' then 'SEQUENCE' else 'TABLE' end,
                       c.oid::regclass, $1::text)
         from pg_class c, aclexplode(c.relacl) a, pg_roles r
         where r.rolname = $1 and a.grantee = r.oid and c.relowner <> r.oid
         group by c.oid, c.relkind
         union all
         select format('REVOKE CREATE ON SCHEMA %I FROM %I', n.nspname, $1::text)
         from pg_namespace n, aclexplode(n.nspacl) a, pg_roles r
         where r.rolname = $1 and a.grantee = r.oid and a.privilege_type = 'CREATE'
           and n.nspowner <> r.oid",
    )
    .bind(role)
    .persistent(false)
    .fetch_all(&mut **tx)
    .await
    .map_err(err)?;
    Ok(rows.into_iter().map(|(s,)| s).collect())
}

/// The statements that revoke the dangerous functions from `PUBLIC` and grant them back to
/// `trusted` roles.
async fn revoke_dangerous(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    trusted: &[&str],
) -> Result<Vec<String>> {
    let err = refused;
    let functions: Vec<(String,)> = sqlx::query_as(
        "select to_regprocedure(f)::text from unnest($1::text[]) f where to_regprocedure(f) is not null",
    )
    .bind(DANGEROUS)
    .persistent(false)
    .fetch_all(&mut **tx)
    .await
    .map_err(err)?;
    let mut statements = Vec::new();
    for (function,) in functions {
        // A regprocedure's text is already a valid, quoted signature.
        statements.push(format!("REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC"));
        for role in trusted {
            let (grant,): (String,) = sqlx::query_as(
                "select format('GRANT EXECUTE ON FUNCTION %s TO %I', $1::text, $2::text)",
            )
            .bind(&function)
            .bind(*role)
            .persistent(false)
            .fetch_one(&mut **tx)
            .await
            .map_err(err)?;
            statements.push(grant);
        }
    }
    Ok(statements)
}

/// A public login role: `SELECT` on the chosen tables of one schema and nothing else (a
/// [`CallerRole`] granted only `select`).
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

    /// Creates the role (or resets its password and grants when it exists) as
    /// [`CallerRole::provision`] does, with `SELECT` on the listed tables only.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when PostgreSQL refuses a step (a missing table, no right to grant).
    pub async fn provision(&self, admin: &PgPool, trusted: &[&str]) -> Result<()> {
        let mut role = CallerRole::new(self.name.clone(), self.password.clone());
        if self.tables.is_empty() {
            role.grants
                .push((self.schema.clone(), String::new(), Vec::new()));
        }
        for table in &self.tables {
            role = role.grant(self.schema.clone(), table.clone(), ["select"]);
        }
        role.provision(admin, trusted).await
    }
}
