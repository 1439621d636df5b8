//! One bounded pool per PostgreSQL login role.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::{Error, Result};

/// Limits of a [`PoolRegistry`]. Every setter's doc gives its default.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    per_role: u32,
    max_total: u32,
    idle: Duration,
    acquire_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            per_role: 4,
            max_total: 64,
            idle: Duration::from_secs(300),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl RegistryConfig {
    /// Connections per role. Default 4.
    pub fn per_role(mut self, n: u32) -> Self {
        self.per_role = n.max(1);
        self
    }

    /// Connections across all roles. Default 64.
    pub fn max_total(mut self, n: u32) -> Self {
        self.max_total = n.max(1);
        self
    }

    /// A pool unused this long is closed. Default 5 minutes.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How long a run waits for a connection. Default 5 s.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }
}

/// Pools keyed by login role: SQL from a caller must run on a connection that *logged in* as
/// the caller's role, because `SET ROLE` is not a boundary (a statement can set `role` back to
/// any role the login role is a member of). The registry bounds the connections of all pools
/// together and closes pools that go unused.
///
/// It is not a cache: a pool with a connection in use is never closed to make room (that would
/// cut a caller's query); when every pool is in use, a new role is refused instead. General
/// caches (moka, used for the crate's [`Plans`](crate::Plans)) evict by their own policy, so
/// this bookkeeping stays here.
///
/// ```no_run
/// # async fn demo() -> sqlpass::Result<()> {
/// use sqlpass::{PoolRegistry, RegistryConfig};
///
/// let base: sqlx::postgres::PgConnectOptions = "postgres://db.internal/carto".parse().unwrap();
/// let registry = PoolRegistry::new(base, RegistryConfig::default());
/// let pool = registry.pool("carto_public_role", "its password")?;
/// let response = sqlpass::run(&pool, "select 1", sqlpass::Options::default()).await?;
/// # Ok(()) }
/// ```
pub struct PoolRegistry {
    base: PgConnectOptions,
    config: RegistryConfig,
    pools: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    pool: PgPool,
    password: String,
    used: Instant,
}

impl PoolRegistry {
    /// A registry connecting with `base` (host, port, database, TLS…) as each role.
    pub fn new(base: PgConnectOptions, config: RegistryConfig) -> Self {
        Self {
            base,
            config,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool of `role`, made on first use (it connects lazily). A changed password replaces
    /// the pool.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when every connection is held by pools in use and no idle pool can
    /// be closed to make room.
    pub fn pool(&self, role: &str, password: &str) -> Result<PgPool> {
        let now = Instant::now();
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle = self.config.idle;
        pools.retain(|_, e| {
            let keep = now.duration_since(e.used) < idle || in_use(&e.pool);
            if !keep {
                close(e.pool.clone());
            }
            keep
        });
        if let Some(entry) = pools.get_mut(role) {
            if entry.password == password {
                entry.used = now;
                return Ok(entry.pool.clone());
            }
            if let Some(old) = pools.remove(role) {
                close(old.pool);
            }
        }
        // Make room: close the least recently used pools that hold no connection in use.
        while (pools.len() as u32 + 1) * self.config.per_role > self.config.max_total {
            let victim = pools
                .iter()
                .filter(|(_, e)| !in_use(&e.pool))
                .min_by_key(|(_, e)| e.used)
                .map(|(role, _)| role.clone());
            match victim.and_then(|v| pools.remove(&v)) {
                Some(entry) => close(entry.pool),
                None => return Err(Error::Unavailable(sqlx::Error::PoolTimedOut)),
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.config.per_role)
            .min_connections(0)
            .acquire_timeout(self.config.acquire_timeout)
            // Every run ends with a round trip that checks its connection: no ping before.
            .test_before_acquire(false)
            .idle_timeout(Some(self.config.idle))
            .connect_lazy_with(quiet(self.base.clone().username(role).password(password)));
        pools.insert(
            role.to_owned(),
            Entry {
                pool: pool.clone(),
                password: password.to_owned(),
                used: now,
            },
        );
        Ok(pool)
    }

    /// Closes the pool of `role`, if one is open (its key was revoked, its role dropped).
    pub fn forget(&self, role: &str) {
        let removed = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(role);
        if let Some(entry) = removed {
            close(entry.pool);
        }
    }

    /// Each open pool's role, connections open and connections in use, sorted by role (for
    /// metrics).
    pub fn stats(&self) -> Vec<(String, u32, u32)> {
        let pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stats: Vec<_> = pools
            .iter()
            .map(|(role, e)| {
                let size = e.pool.size();
                (
                    role.clone(),
                    size,
                    size.saturating_sub(e.pool.num_idle() as u32),
                )
            })
            .collect();
        stats.sort();
        stats
    }

    /// How many role pools are open.
    pub fn len(&self) -> usize {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no pool is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `options` without sqlx's statement logs: they would write callers' SQL text (every
/// statement at DEBUG, slow ones at WARN) into the application's logs.
fn quiet(options: PgConnectOptions) -> PgConnectOptions {
    use sqlx::ConnectOptions as _;
    options
        .log_statements(log::LevelFilter::Off)
        .log_slow_statements(log::LevelFilter::Off, Duration::MAX)
}

fn in_use(pool: &PgPool) -> bool {
    pool.size() > pool.num_idle() as u32
}

fn close(pool: PgPool) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move { pool.close().await });
    }
}
