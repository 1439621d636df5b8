//! Windshaft-style maps: `POST /api/v1/map` stores a layergroup config under its token; its
//! tiles are rendered on the tile caller's own pool.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use geoauth::{Api, UserName};
use geostack_tiles::{MapConfig, TileKey};

use super::request::{ApiRequest, respond};
use super::tile::{coord, origin, tile_response, tilejson as tilejson_of};
use super::{Error, Result, Server};

/// How long a stored map config lives after its last instantiation.
const MAP_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Server {
    fn map_key(&self, user: &UserName, token: &str) -> String {
        format!(
            "{}map:{}:{token}",
            self.inner.config.redis_prefix,
            user.as_str()
        )
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
        let max = self.inner.config.maps_per_user;
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

pub(super) async fn create(State(server): State<Server>, req: ApiRequest, body: Bytes) -> Response {
    respond(
        async {
        // The body is the config; credentials come from the query string and headers.
        let caller = server.caller(&req, Api::Maps).await?;
        let json = std::str::from_utf8(&body)
            .map_err(|_| Error::BadRequest("the map config is not UTF-8".into()))?;
        let limit = server.inner.config.map_config_limit;
        if json.len() > limit {
            return Err(Error::TooLarge(format!(
                "the map config is larger than the limit of {limit} bytes"
            )));
        }
        let config = MapConfig::parse(json)?;
        let user = caller.principal.user().clone();
        server.store_map(&user, config.token(), json).await?;
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

pub(super) async fn tilejson(State(server): State<Server>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = server.caller(&req, Api::Maps).await?;
            let token = req
                .path
                .get("token")
                .map(String::as_str)
                .unwrap_or_default();
            let config = server.load_map(caller.principal.user(), token).await?;
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

pub(super) async fn tile(State(server): State<Server>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = server.caller(&req, Api::Maps).await?;
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
            if let Some(tile) = server.cached_tile(&key).await? {
                return Ok(tile_response(&caller, &req.headers, &tile));
            }
            let config = server.load_map(caller.principal.user(), token).await?;
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
            let pool = server.pool_of(&caller.principal)?;
            let options = server.inner.config.tile_options.clone();
            let sandbox = server.sandbox();
            let tile = server
                .render_tile(&caller, &key, &[], || async move {
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
