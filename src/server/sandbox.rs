//! The one sandbox every caller's SQL runs in, as the server sets it up: a pool per key's
//! role, the administrative pool that provisions roles and cancels queries, the statement
//! descriptions kept between runs, and the settings' timeouts and limits.

use std::sync::Arc;

use geoauth::{ApiKey, KeyKind, Principal, TableGrants};
use sqlpass::{Options, PoolRegistry};

use super::{Error, Result, ServerConfig};

/// The sandbox of a server's APIs: [`Sandbox::options`] are the sqlpass options every caller's
/// SQL starts from (SQL API, tiles, batch queries), [`Sandbox::pool_of`] the pool of the
/// caller's own role. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use geostack::server::{Sandbox, ServerConfig};
///
/// let pg: sqlx::postgres::PgConnectOptions = "postgres://127.0.0.1/test".parse()?;
/// let config = ServerConfig::default().statement_timeout(Duration::from_secs(5));
/// let sandbox = Sandbox::new(pg, config).await;
/// assert_eq!(sandbox.options().total_deadline(), Duration::from_secs(60));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<PoolRegistry>,
    /// The base options' user: provisions keys' roles, and cancels callers' queries cut short
    /// (it holds `pg_signal_backend`; caller roles may not signal backends).
    admin: sqlx::PgPool,
    /// Statement descriptions kept between runs, when sqlpass is installed.
    plans: Option<sqlpass::Plans>,
    config: ServerConfig,
}

impl Sandbox {
    /// The sandbox of PostgreSQL at `pg` (host, port, database and the administrative user;
    /// each caller logs in as its key's role) with `config`'s timeouts, limits and pools.
    /// Installs sqlpass's DDL generation when it may (then statement descriptions are kept
    /// between runs; otherwise every statement is described).
    pub async fn new(pg: sqlx::postgres::PgConnectOptions, config: ServerConfig) -> Self {
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_lazy_with(pg.clone());
        let plans = match sqlpass::install(&admin).await {
            Ok(()) => Some(sqlpass::Plans::default()),
            Err(e) => {
                tracing::warn!(error = %e, "sqlpass could not be installed: no plan cache");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                registry: Arc::new(PoolRegistry::new(pg, config.pools.clone())),
                admin,
                plans,
                config,
            }),
        }
    }

    /// The options of a caller's SQL, from the settings: timeouts, limits, the canceller and
    /// the kept descriptions.
    pub fn options(&self) -> Options {
        let inner = &*self.inner;
        let config = &inner.config;
        let options = Options::default()
            .statement_timeout(config.statement_timeout)
            .deadline(config.deadline)
            .row_limit(config.row_limit)
            .byte_limit(config.byte_limit)
            .value_limit(config.value_limit)
            .canceller(inner.admin.clone());
        match &inner.plans {
            Some(plans) => options.plans(plans.clone()),
            None => options,
        }
    }

    /// [`Sandbox::options`] for `key`'s SQL: see [`Sandbox::limit_to_key`].
    pub fn options_for(&self, key: &ApiKey) -> Options {
        Self::limit_to_key(self.options(), key)
    }

    /// `options` limited to the tables `key` lists, when it lists them (a master key, or one
    /// whose tables are left to its database role, is bounded by the role alone). A master
    /// key's text may hold several statements, as CARTO runs them ([`sqlpass::Script`]).
    pub fn limit_to_key(options: Options, key: &ApiKey) -> Options {
        let options = options.script(key.kind == KeyKind::Master);
        match key.grants.tables() {
            TableGrants::Listed(tables) if key.kind != KeyKind::Master => {
                options.allowed_tables(tables.keys().map(ToString::to_string))
            }
            _ => options,
        }
    }

    /// The pool that logs in as the caller's role.
    ///
    /// # Errors
    ///
    /// [`Error::Sql`] when the registry holds as many pools as it may, all in use.
    pub fn pool_of(&self, principal: &Principal) -> Result<sqlx::PgPool> {
        let role = principal.db_role();
        Ok(self
            .inner
            .registry
            .pool(role.name(), role.password().expose())?)
    }

    /// Refuses query text over the configured limit.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] with the limit in its message.
    pub fn check_query_size(&self, sql: &str) -> Result<()> {
        let limit = self.inner.config.query_limit;
        if sql.len() > limit {
            return Err(Error::TooLarge(format!(
                "the query is {} bytes long, over the limit of {limit} bytes",
                sql.len()
            )));
        }
        Ok(())
    }

    /// The administrative pool: the base options' user, which provisions and drops keys'
    /// roles and cancels callers' queries.
    pub fn admin(&self) -> &sqlx::PgPool {
        &self.inner.admin
    }

    /// The pools of the callers' roles.
    pub fn registry(&self) -> &Arc<PoolRegistry> {
        &self.inner.registry
    }

    /// The settings the sandbox was made with.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }
}
