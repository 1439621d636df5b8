//! The operator's configuration: a TOML file, then `GEOSTACK_…` environment variables over it
//! (`GEOSTACK_SQL__STATEMENT_TIMEOUT_SECS=5` sets `[sql] statement_timeout_secs`), and
//! `DATABASE_URL` / `REDIS_URL` as the usual names of the two services. A setting left out keeps
//! the library's default ([`ServerConfig`]'s, documented there and in
//! `geostack.example.toml`). Unknown settings and wrong types are errors that name the setting.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use geostack::auth::{KeyPrefix, Quota};
use geostack::server::{KeyLayout, Purge, ServerConfig};
use serde::Deserialize;

/// The top-level settings and sections, as named in the file (and, upper-cased, in
/// `GEOSTACK_…` variables).
const SETTINGS: [&str; 24] = [
    "listen",
    "database_url",
    "changes_database_url",
    "redis_url",
    "redis_ca_file",
    "batch_workers",
    "log_format",
    "shutdown_grace_secs",
    "default_user",
    "host_suffix",
    "key_prefix",
    "redis_prefix",
    "role_prefix",
    "key_layout",
    "carto_keys_db",
    "trusted_proxies",
    "operators",
    "purge_varnish",
    "purge_hooks",
    "sql",
    "quotas",
    "pools",
    "tiles",
    "maps",
];

/// Everything `geostack` reads.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Where `serve` listens.
    #[serde(default = "default_listen")]
    pub(crate) listen: SocketAddr,
    /// The admin connection: it provisions keys' roles and cancels callers' queries.
    #[serde(default = "default_database")]
    pub(crate) database_url: String,
    /// Where `serve` listens for table changes (LISTEN needs a session of its own): the
    /// database's own address when `database_url` is pgbouncer's. Default `database_url`.
    pub(crate) changes_database_url: Option<String>,
    #[serde(default = "default_redis")]
    pub(crate) redis_url: String,
    /// The authority (PEM) a `rediss://` server's certificate is checked against, instead of
    /// the system's roots.
    pub(crate) redis_ca_file: Option<std::path::PathBuf>,
    /// Batch queries `serve` runs at once in process (0: leave them to `geostack worker`).
    #[serde(default = "default_workers")]
    pub(crate) batch_workers: usize,
    #[serde(default)]
    pub(crate) log_format: LogFormat,
    /// How long `serve` lets requests in flight finish after SIGTERM or Ctrl-C.
    #[serde(default = "default_grace")]
    pub(crate) shutdown_grace_secs: u64,
    default_user: Option<String>,
    host_suffix: Option<String>,
    key_prefix: Option<String>,
    redis_prefix: Option<String>,
    role_prefix: Option<String>,
    #[serde(default)]
    pub(crate) key_layout: Layout,
    carto_keys_db: Option<i64>,
    trusted_proxies: Option<Vec<IpAddr>>,
    operators: Option<Vec<String>>,
    /// Varnish addresses to send CARTO's `PURGE` to when a table changes.
    purge_varnish: Option<Vec<String>>,
    /// Addresses to `POST` `{"tables": […]}` to when a table changes.
    purge_hooks: Option<Vec<String>>,
    #[serde(default)]
    sql: Sql,
    #[serde(default)]
    quotas: Quotas,
    #[serde(default)]
    pools: Pools,
    #[serde(default)]
    tiles: Tiles,
    #[serde(default)]
    maps: Maps,
}

impl std::fmt::Debug for Config {
    /// Connection strings may hold passwords: they are left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("batch_workers", &self.batch_workers)
            .finish_non_exhaustive()
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Lines for people (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Where keys are read.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Layout {
    /// This server's own keys.
    #[default]
    Native,
    /// An existing CARTO installation's.
    Carto,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sql {
    statement_timeout_secs: Option<u64>,
    deadline_secs: Option<u64>,
    batch_timeout_secs: Option<u64>,
    query_limit: Option<usize>,
    body_limit: Option<usize>,
    max_running_per_caller: Option<u32>,
    row_limit: Option<u64>,
    byte_limit: Option<u64>,
    value_limit: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Quotas {
    sql: Option<QuotaSetting>,
    maps: Option<QuotaSetting>,
    anonymous_sql: Option<QuotaSetting>,
    anonymous_maps: Option<QuotaSetting>,
    sync_ms: Option<u64>,
}

/// A GCRA quota: `burst` at once, then `per_second` a second.
#[derive(Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaSetting {
    burst: u32,
    per_second: u32,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pools {
    per_role: Option<u32>,
    max_total: Option<u32>,
    acquire_timeout_secs: Option<u64>,
    idle_secs: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tiles {
    cache_bytes: Option<u64>,
    cache_ttl_secs: Option<u64>,
    max_renders_per_caller: Option<u32>,
    id_columns: Option<Vec<String>>,
    minzoom: Option<u8>,
    maxzoom: Option<u8>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Maps {
    config_limit: Option<usize>,
    per_user: Option<usize>,
    static_limit: Option<u32>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_database() -> String {
    "postgres://postgres@127.0.0.1:5432/test".into()
}
fn default_redis() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_workers() -> usize {
    2
}
fn default_grace() -> u64 {
    30
}

/// A setting that is not valid, by its name.
#[derive(Debug)]
pub(crate) struct Invalid(pub(crate) String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for Invalid {}

impl Config {
    /// Reads `file` (when given) and the environment.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, Invalid> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(Invalid(format!("no configuration file {}", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            .merge(Env::raw().only(&["DATABASE_URL", "REDIS_URL"]))
            // Only the settings' own names: other GEOSTACK_ variables (the scripts', the
            // tests') are not settings.
            .merge(Env::prefixed("GEOSTACK_").split("__").filter(|key| {
                let top = key.as_str().split('.').next().unwrap_or_default();
                SETTINGS.iter().any(|s| s.eq_ignore_ascii_case(top))
            }));
        let config: Self = figment.extract().map_err(|e| Invalid(describe(&e)))?;
        config.server()?;
        Ok(config)
    }

    /// The server's settings, checked.
    pub(crate) fn server(&self) -> Result<ServerConfig, Invalid> {
        let mut c = ServerConfig::default();
        if let Some(user) = &self.default_user {
            c = c.default_user(user.as_str());
        }
        if let Some(suffix) = &self.host_suffix {
            c = c.host_suffix(suffix.as_str());
        }
        if let Some(prefix) = &self.key_prefix {
            let prefix =
                KeyPrefix::new(prefix.as_str()).map_err(|e| Invalid(format!("key_prefix: {e}")))?;
            c = c.key_prefix(prefix);
        }
        if let Some(prefix) = &self.redis_prefix {
            c = c.redis_prefix(prefix.as_str());
        }
        if let Some(prefix) = &self.role_prefix {
            c = c.role_prefix(prefix.as_str());
        }
        match (self.key_layout, self.carto_keys_db) {
            (Layout::Native, None) => {}
            (Layout::Native, Some(_)) => {
                return Err(Invalid(
                    "carto_keys_db: only read with key_layout = \"carto\"".into(),
                ));
            }
            (Layout::Carto, db) => {
                let db = db.unwrap_or(5);
                if !(0..=15).contains(&db) {
                    return Err(Invalid("carto_keys_db: expected 0 to 15".into()));
                }
                c = c.key_layout(KeyLayout::Carto { db });
            }
        }
        if let Some(proxies) = &self.trusted_proxies {
            c = c.trusted_proxies(proxies.iter().copied());
        }
        if let Some(users) = &self.operators {
            for user in users {
                geostack::auth::UserName::new(user.as_str())
                    .map_err(|e| Invalid(format!("operators: {e}")))?;
            }
            c = c.operators(users.iter().cloned());
        }
        let targets = [
            (
                "purge_varnish",
                &self.purge_varnish,
                Purge::Varnish as fn(_) -> Purge,
            ),
            (
                "purge_hooks",
                &self.purge_hooks,
                Purge::Hook as fn(_) -> Purge,
            ),
        ];
        for (name, urls, target) in targets {
            for url in urls.iter().flatten() {
                let uri: axum::http::Uri = url
                    .parse()
                    .ok()
                    .filter(|u: &axum::http::Uri| {
                        u.scheme_str() == Some("http") && u.host().is_some()
                    })
                    .ok_or_else(|| Invalid(format!("{name}: {url:?} is not an http:// address")))?;
                c = c.purge(target(uri));
            }
        }
        let secs = Duration::from_secs;
        let s = &self.sql;
        if let Some(t) = s.statement_timeout_secs {
            c = c.statement_timeout(secs(positive("sql.statement_timeout_secs", t)?));
        }
        if let Some(t) = s.deadline_secs {
            c = c.deadline(secs(positive("sql.deadline_secs", t)?));
        }
        if let Some(t) = s.batch_timeout_secs {
            c = c.batch_timeout(secs(positive("sql.batch_timeout_secs", t)?));
        }
        if let Some(n) = s.query_limit {
            c = c.query_limit(n);
        }
        if let Some(n) = s.body_limit {
            c = c.body_limit(n);
        }
        if let Some(n) = s.max_running_per_caller {
            c = c.max_running_per_caller(n);
        }
        if s.row_limit.is_some() || s.byte_limit.is_some() || s.value_limit.is_some() {
            c = c.sql_limits(
                positive(
                    "sql.row_limit",
                    s.row_limit.unwrap_or(geostack::sql::DEFAULT_ROW_LIMIT),
                )?,
                positive(
                    "sql.byte_limit",
                    s.byte_limit.unwrap_or(geostack::sql::DEFAULT_BYTE_LIMIT),
                )?,
                positive(
                    "sql.value_limit",
                    s.value_limit.unwrap_or(geostack::sql::DEFAULT_VALUE_LIMIT),
                )?,
            );
        }
        let q = &self.quotas;
        if let Some(sql) = q.sql {
            c = c.sql_quota(quota("quotas.sql", sql)?);
        }
        if let Some(maps) = q.maps {
            c = c.maps_quota(quota("quotas.maps", maps)?);
        }
        if let Some((sql, maps)) = pair(
            q.anonymous_sql,
            q.anonymous_maps,
            "quotas.anonymous_sql and quotas.anonymous_maps",
        )? {
            c = c.anonymous_quotas(
                quota("quotas.anonymous_sql", sql)?,
                quota("quotas.anonymous_maps", maps)?,
            );
        }
        if let Some(ms) = q.sync_ms {
            c = c.rate_sync(Duration::from_millis(ms));
        }
        let p = &self.pools;
        let mut pools = c.pool_config().clone();
        if let Some(n) = p.per_role {
            pools = pools.per_role(positive("pools.per_role", n.into())? as u32);
        }
        if let Some(n) = p.max_total {
            pools = pools.max_total(positive("pools.max_total", n.into())? as u32);
        }
        if let Some(t) = p.acquire_timeout_secs {
            pools = pools.acquire_timeout(secs(positive("pools.acquire_timeout_secs", t)?));
        }
        if let Some(t) = p.idle_secs {
            pools = pools.idle(secs(t));
        }
        c = c.pools(pools);
        let t = &self.tiles;
        if let Some((bytes, ttl)) = pair(
            t.cache_bytes,
            t.cache_ttl_secs,
            "tiles.cache_bytes and tiles.cache_ttl_secs",
        )? {
            // 0 bytes: no cache.
            c = c.tile_cache(bytes, secs(ttl));
        }
        if let Some(n) = t.max_renders_per_caller {
            c = c.max_renders_per_caller(n);
        }
        if let Some(columns) = &t.id_columns {
            c = c.tile_id_columns(columns.iter().cloned());
        }
        if let Some((min, max)) = pair(t.minzoom, t.maxzoom, "tiles.minzoom and tiles.maxzoom")? {
            c = c
                .tile_zooms(min, max)
                .map_err(|_| {
                    Invalid(format!(
                        "tiles.minzoom and tiles.maxzoom: expected 0 <= minzoom <= maxzoom <= 30, got {min} and {max}"
                    ))
                })?;
        }
        let m = &self.maps;
        if let Some((bytes, per_user)) = pair(
            m.config_limit,
            m.per_user,
            "maps.config_limit and maps.per_user",
        )? {
            c = c.map_limits(bytes, per_user);
        }
        if let Some(pixels) = m.static_limit {
            if !(1..=4096).contains(&pixels) {
                return Err(Invalid(format!(
                    "maps.static_limit: expected 1 to 4096 pixels, got {pixels}"
                )));
            }
            c = c.static_map_limit(pixels);
        }
        Ok(c)
    }
}

/// Two settings that go together: both, or neither.
fn pair<A, B>(a: Option<A>, b: Option<B>, names: &str) -> Result<Option<(A, B)>, Invalid> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        _ => Err(Invalid(format!("{names} are set together"))),
    }
}

fn positive(name: &str, n: u64) -> Result<u64, Invalid> {
    if n == 0 {
        return Err(Invalid(format!("{name}: must be at least 1")));
    }
    Ok(n)
}

fn quota(name: &str, q: QuotaSetting) -> Result<Quota, Invalid> {
    Quota::new(q.burst, q.per_second, Duration::from_secs(1))
        .map_err(|e| Invalid(format!("{name}: {e}")))
}

/// figment's error, naming the setting (`sql.statement_timeout_secs`) and where it came from.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let from = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            if path.is_empty() {
                format!("{}{from}", e.kind)
            } else {
                format!("{path}: {}{from}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, Invalid> {
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| Invalid(describe(&e)))?;
        config.server()?;
        Ok(config)
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../geostack.example.toml");
        let config = from_toml(text).map_err(|e| e.to_string());
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn every_setting_is_in_the_example_file_and_read_from_the_environment() {
        let text = include_str!("../../../geostack.example.toml");
        // Top-level names, commented out or not, and sections.
        let mut named: Vec<String> = text
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .take_while(|l| !l.starts_with('['))
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
            .filter(|k| !k.contains(' '))
            .chain(
                text.lines()
                    .filter_map(|l| l.strip_prefix('[')?.strip_suffix(']'))
                    .map(str::to_owned),
            )
            .collect();
        named.sort();
        let mut settings: Vec<String> = SETTINGS.iter().map(|s| (*s).to_owned()).collect();
        settings.sort();
        assert_eq!(named, settings);
    }

    #[test]
    fn errors_name_the_setting() {
        let cases = [
            ("listen = \"nowhere\"", "listen: "),
            (
                "[sql]\nstatement_timeout_secs = \"soon\"",
                "sql.statement_timeout_secs: ",
            ),
            (
                "[sql]\nstatement_timeout_secs = 0",
                "sql.statement_timeout_secs: must be at least 1",
            ),
            (
                "[sql]\nstatment_timeout_secs = 3",
                "sql.statment_timeout_secs: unknown field",
            ),
            (
                "[quotas]\nsql = { burst = 0, per_second = 1 }",
                "quotas.sql: ",
            ),
            (
                "[quotas]\nanonymous_sql = { burst = 1, per_second = 1 }",
                "quotas.anonymous_sql and quotas.anonymous_maps",
            ),
            ("log_format = \"xml\"", "log_format: "),
            ("[sql]\nrow_limit = 0", "sql.row_limit: must be at least 1"),
            ("key_prefix = \"{braces}\"", "key_prefix: "),
            ("key_layout = \"rails\"", "key_layout: "),
            (
                "carto_keys_db = 5",
                "carto_keys_db: only read with key_layout",
            ),
            (
                "key_layout = \"carto\"\ncarto_keys_db = 16",
                "carto_keys_db: expected 0 to 15",
            ),
        ];
        for (text, expected) in cases {
            let e = from_toml(text).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(expected)),
                "{text:?}: {e:?}"
            );
        }
    }
}
