//! Windshaft-style maps: `POST /api/v1/map` stores a layergroup config under its token; its
//! tiles are rendered on the tile caller's own pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use geoauth::{Api, UserName};
use geostack_tiles::{MapConfig, TileKey};

use super::gate::{ApiRequest, Gate, respond};
use super::tile::{coord, origin, tile_response, tilejson as tilejson_of};
use super::{Error, RedisConnection, Result, Sandbox, ServerConfig, Tiles};

/// How long a stored map config lives after its last instantiation.
const MAP_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Windshaft's Maps API: `POST /api/v1/map` stores a layergroup config and answers its token
/// and TileJSON; `GET /api/v1/map/{token}[/{layers}]/{z}/{x}/{y}.mvt` and
/// `…/{token}/tilejson.json` serve it (also under `/user/{user}`). Configs live in Redis under
/// the settings' prefix, bounded in size and per user; tiles are rendered on the tile caller's
/// own pool.
///
/// ```no_run
/// # async fn demo(gate: geostack::server::Gate, sandbox: geostack::server::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
/// use geostack::server::{MapsApi, ServerConfig, Tiles};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client).await?;
/// let config = ServerConfig::default().map_limits(64 << 10, 100);
/// let maps = MapsApi::new(gate, sandbox, Tiles::new(&config), conn, &config);
/// let app = axum::Router::new().merge(maps.router());
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone)]
pub struct MapsApi<C = redis::aio::ConnectionManager> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    gate: Gate<C>,
    sandbox: Sandbox,
    tiles: Tiles,
    /// Where configs are stored.
    redis: C,
    prefix: String,
    config_limit: usize,
    per_user: usize,
}

impl<C: RedisConnection> MapsApi<C> {
    /// The maps of callers passing `gate`: configs stored on `redis` under `config`'s Redis
    /// prefix and within its map limits, tiles read in `sandbox` and kept in `tiles`.
    pub fn new(
        gate: Gate<C>,
        sandbox: Sandbox,
        tiles: Tiles,
        redis: C,
        config: &ServerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                gate,
                sandbox,
                tiles,
                redis,
                prefix: config.redis_prefix.clone(),
                config_limit: config.map_config_limit,
                per_user: config.maps_per_user,
            }),
        }
    }

    /// Its routes, also under `/user/{user}`.
    pub fn router(&self) -> Router {
        let mut routes = super::with_slash("/api/v1/map", post(create::<C>));
        routes.extend([
            (
                "/api/v1/map/{token}/tilejson.json".to_owned(),
                get(tilejson::<C>),
            ),
            ("/api/v1/map/{token}/{z}/{x}/{y}".to_owned(), get(tile::<C>)),
            (
                "/api/v1/map/{token}/{layers}/{z}/{x}/{y}".to_owned(),
                get(tile::<C>),
            ),
        ]);
        super::mount(routes, self.clone())
    }

    /// A config's Redis key; a user's keys share a cluster slot (`{user}`), so that a config
    /// and the user's index change in one transaction.
    fn map_key(&self, user: &UserName, token: &str) -> String {
        format!("{}map:{{{}}}:{token}", self.inner.prefix, user.as_str())
    }

    /// Stores a map config under its token, and drops the user's least recently stored ones
    /// beyond `maps_per_user`.
    async fn store_map(&self, user: &UserName, token: &str, json: &str) -> Result<()> {
        let index = self.map_key(user, "index");
        let mut redis = self.inner.redis.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let (count,): (usize,) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.map_key(user, token))
            .arg(json)
            .arg("EX")
            .arg(MAP_TTL.as_secs())
            .ignore()
            .zadd(&index, token, now.to_string())
            .ignore()
            .expire(&index, MAP_TTL.as_secs() as i64)
            .ignore()
            .zcard(&index)
            .query_async(&mut redis)
            .await?;
        let max = self.inner.per_user;
        if count > max {
            let dropped: Vec<(String, f64)> = redis::cmd("ZPOPMIN")
                .arg(&index)
                .arg(count - max)
                .query_async(&mut redis)
                .await?;
            let keys: Vec<String> = dropped
                .iter()
                .map(|(old, _)| self.map_key(user, old))
                .collect();
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut redis).await?;
        }
        Ok(())
    }

    async fn load_map(&self, user: &UserName, token: &str) -> Result<MapConfig> {
        let not_found = || Error::NotFound(format!("no map {token}"));
        if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let json: Option<String> = redis::cmd("GET")
            .arg(self.map_key(user, token))
            .query_async(&mut self.inner.redis.clone())
            .await?;
        Ok(MapConfig::parse(&json.ok_or_else(not_found)?)?)
    }
}

async fn create<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    respond(
        async {
        // The body is the config; credentials come from the query string and headers.
        let caller = api.inner.gate.caller(&req, Api::Maps).await?;
        let json = std::str::from_utf8(&body)
            .map_err(|_| Error::BadRequest("the map config is not UTF-8".into()))?;
        let limit = api.inner.config_limit;
        if json.len() > limit {
            return Err(Error::TooLarge(format!(
                "the map config is larger than the limit of {limit} bytes"
            )));
        }
        let config = MapConfig::parse(json)?;
        let user = caller.principal.user().clone();
        api.store_map(&user, config.token(), json).await?;
        let base = format!("{}{}/api/v1/map/{}", origin(&req.headers), user_path(&req.path), config.token());
        let layers: Vec<_> = config
            .layers()
            .iter()
            .map(|l| serde_json::json!({ "type": "mapnik", "id": l.name(), "meta": { "minzoom": l.minzoom(), "maxzoom": l.maxzoom() } }))
            .collect();
        let mut response = Json(serde_json::json!({
            "layergroupid": config.token(),
            "metadata": {
                "layers": layers,
                "tilejson": { "vector": tilejson_of(config.token(), vec![format!("{base}/{{z}}/{{x}}/{{y}}.mvt")], &zooms(&config)) },
                "url": { "vector": { "urlTemplate": format!("{base}/{{z}}/{{x}}/{{y}}.mvt"), "subdomains": [] } },
            },
        }))
        .into_response();
        caller.rate.write_headers(response.headers_mut());
        Ok::<_, Error>(response)
    }
    .await,
    )
}

async fn tilejson<C: RedisConnection>(State(api): State<MapsApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = api.inner.gate.caller(&req, Api::Maps).await?;
            let token = req
                .path
                .get("token")
                .map(String::as_str)
                .unwrap_or_default();
            let config = api.load_map(caller.principal.user(), token).await?;
            let url = format!(
                "{}{}/api/v1/map/{token}/{{z}}/{{x}}/{{y}}.mvt",
                origin(&req.headers),
                user_path(&req.path)
            );
            Ok::<_, Error>(Json(tilejson_of(token, vec![url], &zooms(&config))).into_response())
        }
        .await,
    )
}

async fn tile<C: RedisConnection>(State(api): State<MapsApi<C>>, req: ApiRequest) -> Response {
    let inner = &*api.inner;
    respond(
        async {
            let caller = inner.gate.caller(&req, Api::Maps).await?;
            let coord = coord(&req.path)?;
            let token = req
                .path
                .get("token")
                .map(String::as_str)
                .unwrap_or_default();
            let layers = req.path.get("layers").map_or("all", String::as_str);
            // Tiles differ by role (each reads what its grants allow): the role is in the key.
            let key = TileKey::new(
                format!("map:{token}:{layers}:{}", caller.principal.db_role().name()),
                coord,
            );
            // A cached tile needs neither the config nor a connection.
            if let Some(tile) = inner.tiles.cached(&key).await? {
                return Ok(tile_response(&caller, &req.headers, &tile));
            }
            let config = api.load_map(caller.principal.user(), token).await?;
            let config = match layers {
                "all" => config,
                list => {
                    let indexes = list
                        .split(',')
                        .map(|i| i.trim().parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| {
                            Error::BadRequest(format!(
                                "invalid layers {list}: expected all or 0,1,…"
                            ))
                        })?;
                    config.select(&indexes)?
                }
            };
            let pool = inner.sandbox.pool_of(&caller.principal)?;
            let options = inner.tiles.options().clone();
            let sandbox = inner.sandbox.options();
            let tile = inner
                .tiles
                .render(&inner.gate, &caller, &key, &[], || async move {
                    Ok(config.render(&pool, coord, &options, &sandbox).await?.bytes)
                })
                .await?;
            Ok(tile_response(&caller, &req.headers, &tile))
        }
        .await,
    )
}

fn zooms(config: &MapConfig) -> Vec<(String, u8, u8)> {
    config
        .layers()
        .iter()
        .map(|l| (l.name().to_owned(), l.minzoom(), l.maxzoom()))
        .collect()
}

/// `/user/<name>` when the request came that way.
pub(crate) fn user_path(path: &HashMap<String, String>) -> String {
    path.get("user")
        .map(|u| format!("/user/{u}"))
        .unwrap_or_default()
}
