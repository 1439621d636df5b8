//! How the server behaves: users, quotas, timeouts, key prefixes.

use std::time::Duration;

use geoauth::{KeyPrefix, Quota};
use geostack_tiles::TileOptions;

/// The server's settings. Every setter's doc gives its default.
///
/// ```
/// use std::time::Duration;
/// use geostack::server::ServerConfig;
///
/// let config = ServerConfig::default()
///     .default_user("demo")
///     .host_suffix("maps.example.org")
///     .statement_timeout(Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) default_user: Option<String>,
    pub(crate) host_suffix: Option<String>,
    pub(crate) sql_quota: Quota,
    pub(crate) maps_quota: Quota,
    pub(crate) statement_timeout: Duration,
    pub(crate) deadline: Duration,
    pub(crate) row_limit: u64,
    pub(crate) byte_limit: u64,
    pub(crate) value_limit: u64,
    pub(crate) batch_timeout: Duration,
    pub(crate) tile_options: TileOptions,
    pub(crate) key_prefix: KeyPrefix,
    pub(crate) redis_prefix: String,
    pub(crate) tile_cache_bytes: u64,
    pub(crate) tile_cache_ttl: Duration,
    pub(crate) role_prefix: String,
    pub(crate) body_limit: usize,
    pub(crate) anonymous_sql_quota: Quota,
    pub(crate) anonymous_maps_quota: Quota,
    pub(crate) rate_sync: Duration,
    pub(crate) trusted_proxies: Vec<std::net::IpAddr>,
    pub(crate) max_running_per_caller: u32,
    pub(crate) max_renders_per_caller: u32,
    pub(crate) pools: sqlpass::RegistryConfig,
    pub(crate) query_limit: usize,
    pub(crate) map_config_limit: usize,
    pub(crate) maps_per_user: usize,
    pub(crate) static_map_limit: u32,
    pub(crate) key_layout: KeyLayout,
    pub(crate) operators: Vec<String>,
    pub(crate) tile_id_columns: Vec<String>,
    pub(crate) tile_zooms: std::ops::RangeInclusive<u8>,
    pub(crate) purge: Vec<super::Purge>,
}

/// Where the server reads API keys.
///
/// ```
/// use geostack::server::{KeyLayout, ServerConfig};
///
/// // An existing CARTO installation's keys, in database 5 of the server's Redis.
/// let config = ServerConfig::default().key_layout(KeyLayout::Carto { db: 5 });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyLayout {
    /// geoauth's own layout under [`ServerConfig::key_prefix`]: tokens kept as digests,
    /// changes announced to every server; keys made and revoked by this server (its Auth API,
    /// the `geostack` command).
    #[default]
    Native,
    /// CARTO's layout ([`geoauth::CartoKeys`]): `api_keys:<user>:<token>` hashes as CARTO's
    /// application writes them, read from Redis database `db` of the server's Redis (CARTO's
    /// default is 5), tokens in CARTO's format. CARTO manages these keys: the Auth API and key
    /// commands refuse, and a changed key is seen within the verifier's cache time (CARTO
    /// announces nothing).
    Carto {
        /// The Redis database holding CARTO's keys.
        db: i64,
    },
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            default_user: None,
            host_suffix: None,
            sql_quota: quota(40, 20),
            maps_quota: quota(400, 200),
            statement_timeout: Duration::from_secs(15),
            deadline: Duration::from_secs(60),
            row_limit: sqlpass::DEFAULT_ROW_LIMIT,
            byte_limit: sqlpass::DEFAULT_BYTE_LIMIT,
            value_limit: sqlpass::DEFAULT_VALUE_LIMIT,
            batch_timeout: Duration::from_secs(300),
            // Caps a hostile layer cannot lift: features per layer, the tile's byte budget
            // (then degraded to fit), and what a layer may read (TileOptions' own defaults).
            tile_options: TileOptions::default()
                .max_features(100_000)
                .max_bytes(2 << 20),
            key_prefix: KeyPrefix::default(),
            redis_prefix: "geostack:".into(),
            tile_cache_bytes: 64 << 20,
            tile_cache_ttl: Duration::from_secs(300),
            role_prefix: "geostack_key_".into(),
            body_limit: 2 << 20,
            anonymous_sql_quota: quota(400, 200),
            anonymous_maps_quota: quota(4000, 2000),
            rate_sync: Duration::from_millis(100),
            trusted_proxies: Vec::new(),
            max_running_per_caller: 2,
            max_renders_per_caller: 8,
            pools: sqlpass::RegistryConfig::default().per_role(8),
            query_limit: 1 << 20,
            map_config_limit: 256 << 10,
            maps_per_user: 1000,
            static_map_limit: 2048,
            key_layout: KeyLayout::Native,
            operators: Vec::new(),
            tile_id_columns: geostack_tiles::DEFAULT_ID_COLUMNS
                .map(str::to_owned)
                .to_vec(),
            tile_zooms: 0..=22,
            purge: Vec::new(),
        }
    }
}

/// `burst` requests at once, `per_second` a second after that.
#[expect(
    clippy::expect_used,
    reason = "called with non-zero constants only, which Quota takes"
)]
fn quota(burst: u32, per_second: u32) -> Quota {
    Quota::new(burst, per_second, Duration::from_secs(1)).expect("a valid constant quota")
}

impl ServerConfig {
    /// The user of requests whose path has no `/user/<name>/` and whose host is not
    /// `<name>.<host suffix>`. Default none: such requests are answered 404.
    pub fn default_user(mut self, user: impl Into<String>) -> Self {
        self.default_user = Some(user.into());
        self
    }

    /// Requests to `<name>.<suffix>` are for user `<name>`, as CARTO's
    /// `<user>.carto.com`. Default none.
    pub fn host_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.host_suffix = Some(suffix.into().trim_start_matches('.').to_owned());
        self
    }

    /// The rate of SQL API requests per key. Default bursts of 40, 20 a second.
    pub fn sql_quota(mut self, quota: Quota) -> Self {
        self.sql_quota = quota;
        self
    }

    /// The rate of map and tile requests per key. Default bursts of 400, 200 a second.
    pub fn maps_quota(mut self, quota: Quota) -> Self {
        self.maps_quota = quota;
        self
    }

    /// The statement timeout of SQL API queries and tiles. Default 15 s.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The wall-clock deadline of an SQL API request and of a tile, from its start to its last
    /// byte: the query is cut then, and a response whose client is not reading it is cut on a
    /// [`GuardedListener`](super::GuardedListener) a second later (the connection is reset).
    /// Default 60 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// What one SQL API request or batch query may read: rows, bytes of output,
    /// bytes of one value. Defaults [`sqlpass::DEFAULT_ROW_LIMIT`] (10 M),
    /// [`sqlpass::DEFAULT_BYTE_LIMIT`] (1 GiB), [`sqlpass::DEFAULT_VALUE_LIMIT`] (16 MiB).
    pub fn sql_limits(mut self, rows: u64, bytes: u64, value: u64) -> Self {
        self.row_limit = rows.max(1);
        self.byte_limit = bytes.max(1);
        self.value_limit = value.max(1);
        self
    }

    /// The statement timeout (and deadline) of batch queries. Default 300 s.
    pub fn batch_timeout(mut self, timeout: Duration) -> Self {
        self.batch_timeout = timeout;
        self
    }

    /// How tiles are made. Default [`TileOptions::default`] (extent 4096, buffer 64, source
    /// limits of 200 000 rows and 64 MiB per layer) with at most 100 000 features per layer and
    /// a budget of 2 MiB per tile.
    pub fn tile_options(mut self, options: TileOptions) -> Self {
        self.tile_options = options;
        self
    }

    /// Where API keys live in Redis. Default [`KeyPrefix::default`] (`geoauth:`).
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.key_prefix = prefix;
        self
    }

    /// The prefix of the server's own Redis keys (rate limits, map configs, the batch
    /// queue). Default `geostack:`.
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis_prefix = prefix.into();
        self
    }

    /// The start of the names of the login roles made for keys ([`AuthApi::create_key`]
    /// appends 16 random hex digits); revoking a key drops only roles named so. At most 47
    /// bytes. Default `geostack_key_`.
    ///
    /// [`AuthApi::create_key`]: crate::server::AuthApi::create_key
    pub fn role_prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix: String = prefix.into();
        while prefix.len() > 47 {
            prefix.pop();
        }
        self.role_prefix = prefix;
        self
    }

    /// The rate of all anonymous callers of a user together (each client address has
    /// [`ServerConfig::sql_quota`] and [`ServerConfig::maps_quota`] of its own). Default
    /// bursts of 400, 200 a second for SQL; 4000, 2000 a second for maps.
    pub fn anonymous_quotas(mut self, sql: Quota, maps: Quota) -> Self {
        self.anonymous_sql_quota = sql;
        self.anonymous_maps_quota = maps;
        self
    }

    /// How far apart, per rate-limited subject, this server reconciles its rate decisions with
    /// Redis ([`geoauth::RateLimiter::deciding_locally`]): between reconciliations requests are
    /// counted and decided in process, with no round trip. One server decides exactly as Redis
    /// would; `n` servers sharing a Redis may together allow up to `(n - 1) × (burst + sync ×
    /// rate)` requests beyond a quota's burst, taken back afterwards. Zero decides every
    /// request in Redis. Default 100 ms.
    pub fn rate_sync(mut self, sync: Duration) -> Self {
        self.rate_sync = sync;
        self
    }

    /// Proxies whose `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` are
    /// believed: behind them, a client's address is the last one of `X-Forwarded-For` that is
    /// not a trusted proxy, and the URLs the server writes (TileJSON, map metadata, the Auth
    /// API's links) take the forwarded scheme and host; from anyone else these headers are
    /// ignored. Needs the server started with connect info
    /// (`into_make_service_with_connect_info::<SocketAddr>()`). Default none.
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = std::net::IpAddr>) -> Self {
        self.trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// How many SQL API requests and tile renders one caller (a key; an anonymous client
    /// address) may have running at once; more are answered 429 with `Retry-After`. Default 2.
    pub fn max_running_per_caller(mut self, n: u32) -> Self {
        self.max_running_per_caller = n.max(1);
        self
    }

    /// Tile renders a caller may have running at once (tiles answered from the cache are not
    /// counted); one more is answered 429 with `Retry-After`. Default 8, as many as a browser
    /// asks at once.
    pub fn max_renders_per_caller(mut self, n: u32) -> Self {
        self.max_renders_per_caller = n.max(1);
        self
    }

    /// The pools' settings ([`ServerConfig::pools`]).
    pub fn pool_config(&self) -> &sqlpass::RegistryConfig {
        &self.pools
    }

    /// The pools of the callers' roles: connections per role and in all, how long a run waits
    /// for one (then 429 with `Retry-After`). Default [`sqlpass::RegistryConfig`] with 8
    /// connections per role (64 in all, 5 s).
    pub fn pools(mut self, pools: sqlpass::RegistryConfig) -> Self {
        self.pools = pools;
        self
    }

    /// The largest request body (a POSTed query, a map config), in bytes; a larger one is
    /// answered 413. Default 2 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Stored map configs (`POST /api/v1/map`): a config larger than `config_bytes` is answered
    /// 413; a user keeps at most `per_user` of them, and instantiating one more drops the
    /// least recently instantiated. Default 256 KiB and 1 000.
    pub fn map_limits(mut self, config_bytes: usize, per_user: usize) -> Self {
        self.map_config_limit = config_bytes;
        self.maps_per_user = per_user.max(1);
        self
    }

    /// The largest static map (`/api/v1/map/static/…`), in pixels a side; a larger one is
    /// answered 400. Default 2 048, at most 4 096.
    pub fn static_map_limit(mut self, pixels: u32) -> Self {
        self.static_map_limit = pixels.clamp(1, 4096);
        self
    }

    /// The longest query text (`q` of the SQL API, `query` of a batch job), in bytes; a longer
    /// one is answered 413 with the limit in the message. GET requests are also bounded by the
    /// HTTP server's URI length (64 KiB): longer queries go in a POST body. Default 1 MiB.
    pub fn query_limit(mut self, bytes: usize) -> Self {
        self.query_limit = bytes;
        self
    }

    /// How many bytes of tiles the in-process cache keeps, and for how long; 0 bytes switches
    /// the cache off (every tile is rendered when asked; concurrent requests for one tile still
    /// share one render). Default 64 MiB, 300 s.
    pub fn tile_cache(mut self, bytes: u64, ttl: Duration) -> Self {
        self.tile_cache_bytes = bytes;
        self.tile_cache_ttl = ttl;
        self
    }

    /// The columns table tiles take feature ids from when a table has no one-column integer
    /// primary key (a view has none), the first an integer column of the table has. Default
    /// [`DEFAULT_ID_COLUMNS`](geostack_tiles::DEFAULT_ID_COLUMNS): `cartodb_id`, then `id`.
    pub fn tile_id_columns(mut self, columns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tile_id_columns = columns.into_iter().map(Into::into).collect();
        self
    }

    /// The zooms the table tiles are served at, as their TileJSON says (`minzoom`, `maxzoom`);
    /// a tile outside is empty (204) without a query, as a map layer's tile outside its zooms.
    /// Default 0 to 22.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`](super::Error::BadRequest) unless `min <= max <= 30`.
    pub fn tile_zooms(mut self, min: u8, max: u8) -> Result<Self, super::Error> {
        if min > max || max > 30 {
            return Err(super::Error::BadRequest(format!(
                "tile zooms: expected 0 <= min <= max <= 30, got {min} and {max}"
            )));
        }
        self.tile_zooms = min..=max;
        Ok(self)
    }

    /// A cache in front of the server to purge when a table's tiles are dropped (a write
    /// through the SQL API; any committed write while
    /// [`Server::follow_table_changes`](super::Server::follow_table_changes) runs); may be given
    /// several times. Tiles answer with `X-Cache-Channel` naming the tables they were made from,
    /// which [`Purge::Varnish`](super::Purge::Varnish) bans by. Default none.
    pub fn purge(mut self, target: super::Purge) -> Self {
        self.purge.push(target);
        self
    }

    /// Where API keys are read. Default [`KeyLayout::Native`].
    pub fn key_layout(mut self, layout: KeyLayout) -> Self {
        self.key_layout = layout;
        self
    }

    /// The users whose master key operates the server's job queues: the jobs dashboard
    /// ([`JobsDashboard`](super::JobsDashboard)) shows every tenant's jobs and acts on whole
    /// queues, so it is not for every user's master key. Default none: the dashboard answers
    /// 403 to everyone.
    pub fn operators(mut self, users: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.operators = users.into_iter().map(Into::into).collect();
        self
    }
}
