//! Windshaft-style maps: `POST /api/v1/map` stores a layergroup config under its token; its
//! tiles are rendered on the tile caller's own pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use geoauth::{Api, UserName};
use geostack_tiles::{DataviewQuery, MapConfig, TileKey};

use super::gate::{ApiRequest, Gate, Params, respond};
use super::tile::{coord, tile_response, tilejson as tilejson_of, with_key};
use super::{Error, RedisConnection, Result, Sandbox, ServerConfig, Tiles};

/// How long a stored map config lives after its last instantiation.
const MAP_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Windshaft's Maps API, as CARTO.js and carto-python use it: `POST /api/v1/map` (or `GET`
/// with `config`/`lzma` and a JSONP `callback`) checks a layergroup config as the caller,
/// stores it and answers its token and metadata; `GET /api/v1/map/{token}[/{layers}]/{z}/{x}/{y}.mvt`,
/// `…/{token}/tilejson.json`, `…/{token}/dataview/{id}[/search]`,
/// `…/{token}/{layer}/attributes/{id}` serve it. Named maps (`/api/v1/map/named`: templates
/// the master key stores, instantiated by anyone their auth admits, run as their owner) too.
/// All also under `/user/{user}`. Configs live in Redis under
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
    pub(super) inner: Arc<Inner<C>>,
}

pub(super) struct Inner<C> {
    pub(super) gate: Gate<C>,
    pub(super) sandbox: Sandbox,
    pub(super) tiles: Tiles,
    /// Where configs are stored.
    pub(super) redis: C,
    pub(super) prefix: String,
    pub(super) config_limit: usize,
    pub(super) per_user: usize,
    /// The largest static map, in pixels a side.
    pub(super) static_limit: u32,
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
                static_limit: config.static_map_limit,
            }),
        }
    }

    /// Its routes, also under `/user/{user}`.
    pub fn router(&self) -> Router {
        let mut routes = super::with_slash("/api/v1/map", get(create_get::<C>).post(create::<C>));
        routes.extend(self.named_routes());
        routes.extend([
            (
                "/api/v1/map/{token}/tilejson.json".to_owned(),
                get(tilejson::<C>),
            ),
            (
                "/api/v1/map/{token}/dataview/{dataview}".to_owned(),
                get(dataview::<C>),
            ),
            (
                "/api/v1/map/{token}/dataview/{dataview}/search".to_owned(),
                get(dataview_search::<C>),
            ),
            (
                "/api/v1/map/{token}/analysis/node/{node}".to_owned(),
                get(analysis_node::<C>),
            ),
            (
                "/api/v1/map/{token}/{layers}/attributes/{id}".to_owned(),
                get(attributes::<C>),
            ),
            (
                "/api/v1/map/static/center/{token}/{z}/{lat}/{lng}/{width}/{height}".to_owned(),
                get(static_map::<C>),
            ),
            (
                "/api/v1/map/static/bbox/{token}/{bbox}/{width}/{height}".to_owned(),
                get(static_map::<C>),
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

    /// The map `layergroupid` names, as `caller` may use it: an anonymous map (its token), or
    /// a named map's instance (`<template>@<token>`), which the template's auth must admit and
    /// whose SQL runs as the key that made the template.
    async fn load_map(
        &self,
        caller: &super::gate::Caller,
        req: &ApiRequest,
        layergroupid: &str,
    ) -> Result<Loaded> {
        let not_found = || Error::NotFound(format!("no map {layergroupid}"));
        let user = caller.principal.user();
        let (named, token) = match layergroupid.split_once('@') {
            Some((template, token)) => (Some(template), token),
            None => (None, layergroupid),
        };
        if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let owner = match named {
            Some(template) => Some(self.instance_owner(user, template, req).await?),
            None => None,
        };
        let key = match named {
            Some(template) => self.named_map_key(user, template, token),
            None => self.map_key(user, token),
        };
        let json: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.inner.redis.clone())
            .await?;
        let json = json.ok_or_else(not_found)?;
        let tables = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| serde_json::from_value(v[TABLES_MEMBER].clone()).ok())
            .unwrap_or_default();
        Ok(Loaded {
            config: MapConfig::parse(&json)?,
            owner,
            tables,
        })
    }

    /// The Redis key of an instance of named map `template`: apart from anonymous maps, so
    /// that no anonymous config can pass for a template's.
    pub(super) fn named_map_key(&self, user: &UserName, template: &str, token: &str) -> String {
        self.map_key(user, &format!("named:{template}:{token}"))
    }

    /// The pool a loaded map's SQL runs on, and the role it logs in as: the owner's for a
    /// named map's instance, else the caller's.
    fn pool_for(
        &self,
        caller: &super::gate::Caller,
        loaded: &Loaded,
    ) -> Result<(sqlx::PgPool, String)> {
        match &loaded.owner {
            Some(owner) => {
                let role = &owner.db_role;
                let pool = self
                    .inner
                    .sandbox
                    .registry()
                    .pool(role.name(), role.password().expose())?;
                Ok((pool, role.name().to_owned()))
            }
            None => Ok((
                self.inner.sandbox.pool_of(&caller.principal)?,
                caller.principal.db_role().name().to_owned(),
            )),
        }
    }
}

/// A stored map and, for a named map's instance, the key its SQL runs as.
pub(super) struct Loaded {
    pub(super) config: MapConfig,
    pub(super) owner: Option<geoauth::ApiKey>,
    /// The tables its layers read (its tiles' cache tags), as found when it was made.
    pub(super) tables: Vec<String>,
}

/// The member of a stored config that keeps the tables its layers read (written by the server
/// over whatever the caller sent under that name).
const TABLES_MEMBER: &str = "geostack_tables";

/// `POST /api/v1/map`: the body is the config; the key comes from the query string, the
/// headers, or the body's own `api_key` member (as carto-python sends it).
async fn create<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    let json = String::from_utf8_lossy(&body).into_owned();
    let answer = async {
        let params = Params::with_body_key(req.query.as_deref(), &body)?;
        if std::str::from_utf8(&body).is_err() {
            return Err(Error::BadRequest("the map config is not UTF-8".into()));
        }
        api.instantiate(&req, &json, &params, None).await
    }
    .await;
    windshaft_answer(answer, &json, None).await
}

/// `GET /api/v1/map?config=…` (or `lzma=…`, the same compressed) with an optional JSONP
/// `callback`, as CARTO.js instantiates a map whose config fits in a URL.
async fn create_get<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
) -> Response {
    let mut json = String::new();
    let mut callback = None;
    let answer = async {
        let mut params = Params::new(req.query.as_deref(), &axum::http::HeaderMap::new(), &[])?;
        if let Some(name) = params.get("callback") {
            callback = Some(jsonp_callback(name)?);
        }
        if let Some(packed) = params.get("lzma") {
            for (name, value) in unlzma(packed)? {
                params.push(name, value);
            }
        }
        json = params
            .get("config")
            .ok_or_else(|| Error::BadRequest("no map config: give config or lzma".into()))?
            .to_owned();
        api.instantiate(&req, &json, &params, None).await
    }
    .await;
    windshaft_answer(answer, &json, callback.as_deref()).await
}

impl<C: RedisConnection> MapsApi<C> {
    /// Checks, stores and describes a map config for the caller `params` authenticate, as
    /// Windshaft answers CARTO.js: the token, each layer's type and metadata, each dataview's
    /// and analysis node's URL. Every data layer's SQL is described as the caller before the
    /// map is stored, so that a bad layer fails here, with its index, and not per tile.
    pub(super) async fn instantiate(
        &self,
        req: &ApiRequest,
        json: &str,
        params: &Params,
        named: Option<(&str, &geoauth::ApiKey)>,
    ) -> Result<Response> {
        let inner = &*self.inner;
        let caller = inner
            .gate
            .authenticate(&req.path, &req.headers, params, Api::Maps, req.peer)
            .await?;
        // Windshaft's `filters` (the dataviews' filters, applied to the layers that share a
        // dataview's source) are kept in the stored config: they are part of the map.
        let json = match params.get("filters") {
            Some(filters) => with_filters(json, filters)?,
            None => json.to_owned(),
        };
        let limit = inner.config_limit;
        if json.len() > limit {
            return Err(Error::TooLarge(format!(
                "the map config is larger than the limit of {limit} bytes"
            )));
        }
        let config = MapConfig::parse(&json)?;
        let loaded = Loaded {
            config,
            owner: named.map(|(_, owner)| owner.clone()),
            tables: Vec::new(),
        };
        let (pool, _) = self.pool_for(&caller, &loaded)?;
        let config = loaded.config;
        let tables = config.check(&pool, &inner.sandbox.options()).await?;
        // The tables its layers read are kept with it: its tiles' cache tags.
        let json = with_member(&json, TABLES_MEMBER, serde_json::json!(tables))?;
        let user = caller.principal.user().clone();
        let layergroupid = match named {
            Some((template, _)) => {
                self.store_map(
                    &user,
                    &format!("named:{template}:{}", config.token()),
                    &json,
                )
                .await?;
                format!("{template}@{}", config.token())
            }
            None => {
                self.store_map(&user, config.token(), &json).await?;
                config.token().to_owned()
            }
        };
        let base = format!(
            "{}{}/api/v1/map/{layergroupid}",
            self.inner.gate.origin(req),
            user_path(&req.path),
        );
        let both = |url: String| serde_json::json!({ "http": url, "https": url });
        let layers: Vec<_> = config
            .layers()
            .iter()
            .map(|l| {
                let meta = if l.is_data() {
                    serde_json::json!({
                        "stats": {},
                        "cartocss": l.cartocss(),
                        "cartocss_version": l.cartocss_version(),
                        "cartocss_meta": { "rules": [] },
                        // What the style has that raster tiles do not draw.
                        "warnings": l.style().map(|s| s.warnings()).unwrap_or_default(),
                        "minzoom": l.minzoom(),
                        "maxzoom": l.maxzoom(),
                    })
                } else {
                    serde_json::json!({})
                };
                serde_json::json!({ "type": l.kind().as_str(), "id": l.name(), "meta": meta })
            })
            .collect();
        let dataviews: serde_json::Map<String, serde_json::Value> = config
            .dataviews()
            .iter()
            .map(|d| {
                let url = format!("{base}/dataview/{}", d.id());
                (d.id().to_owned(), serde_json::json!({ "url": both(url) }))
            })
            .collect();
        let nodes: serde_json::Map<String, serde_json::Value> = config
            .analyses()
            .iter()
            .map(|(id, query)| {
                let url = format!("{base}/analysis/node/{id}");
                let node =
                    serde_json::json!({ "status": "ready", "query": query, "url": both(url) });
                (id.clone(), node)
            })
            .collect();
        let analyses = if nodes.is_empty() {
            Vec::new()
        } else {
            vec![serde_json::json!({ "nodes": nodes })]
        };
        let mvt = format!("{base}/{{z}}/{{x}}/{{y}}.mvt");
        let png = format!("{base}/{{z}}/{{x}}/{{y}}.png");
        let mut response = Json(serde_json::json!({
            "layergroupid": layergroupid,
            // Windshaft's time of the tables' last change; none is kept here.
            "last_updated": "1970-01-01T00:00:00.000Z",
            "metadata": {
                "layers": layers,
                "dataviews": dataviews,
                "analyses": analyses,
                "tilejson": {
                    "vector": tilejson_of(&layergroupid, vec![mvt.clone()], &zooms(&config)),
                    "raster": tilejson_of(&layergroupid, vec![png.clone()], &zooms(&config)),
                },
                "url": {
                    "vector": { "urlTemplate": mvt, "subdomains": [] },
                    "raster": { "urlTemplate": png, "subdomains": [] },
                },
            },
            // No CDN: CARTO.js then builds URLs from its own server URL.
            "cdn_url": { "templates": {} },
        }))
        .into_response();
        caller.rate.write_headers(response.headers_mut());
        Ok(response)
    }
}

/// `json` (a map config) with its `filters` member set to `filters` (JSON text).
fn with_filters(json: &str, filters: &str) -> Result<String> {
    let filters: serde_json::Value = serde_json::from_str(filters)
        .map_err(|_| Error::BadRequest("filters is not JSON".into()))?;
    with_member(json, "filters", filters)
}

/// `json` (a map config) with its member `name` set to `value`.
fn with_member(json: &str, name: &str, value: serde_json::Value) -> Result<String> {
    let mut config: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::BadRequest(format!("invalid map config: not a layergroup: {e}")))?;
    let Some(members) = config.as_object_mut() else {
        return Err(Error::BadRequest(
            "invalid map config: not a layergroup".into(),
        ));
    };
    members.insert(name.into(), value);
    Ok(config.to_string())
}

/// A JSONP callback name, when it is one: letters, digits, `_`, `$` and `.` only.
pub(super) fn jsonp_callback(name: &str) -> Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(Error::BadRequest(
            "invalid callback: letters, digits, _, $ and . only".into(),
        ))
    }
}

/// The parameters CARTO.js packed into `lzma`: base64 of LZMA ("alone" format) bytes, each
/// shifted by 128 (JavaScript's signed bytes), of a JSON object (`{"config": "…"}`).
fn unlzma(packed: &str) -> Result<Vec<(String, String)>> {
    use base64::Engine as _;
    let bad = |what: &str| Error::BadRequest(format!("invalid lzma parameter: {what}"));
    let shifted = base64::engine::general_purpose::STANDARD
        .decode(packed.trim())
        .map_err(|_| bad("not base64"))?;
    let bytes: Vec<u8> = shifted.iter().map(|b| b ^ 0x80).collect();
    let mut json = Vec::new();
    // Bounded: a few bytes of LZMA can stand for gigabytes.
    let limit = 4 << 20;
    let options = lzma_rs::decompress::Options {
        memlimit: Some(limit),
        ..Default::default()
    };
    lzma_rs::lzma_decompress_with_options(&mut &bytes[..], &mut json, &options)
        .map_err(|_| bad("not LZMA, or larger than 4 MiB"))?;
    if json.len() > limit {
        return Err(bad("larger than 4 MiB"));
    }
    let serde_json::Value::Object(members) =
        serde_json::from_slice(&json).map_err(|_| bad("not a JSON object"))?
    else {
        return Err(bad("not a JSON object"));
    };
    Ok(members
        .into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => (name, s),
            other => (name, other.to_string()),
        })
        .collect())
}

/// An instantiation's answer in Windshaft's shape: an error as `errors` and
/// `errors_with_context` (the layer's index, id and type when one is at fault), and with a
/// `callback`, JSONP: status 200 and the answer (or error) as the callback's argument, as
/// CARTO.js reads it.
pub(super) async fn windshaft_answer(
    answer: Result<Response>,
    json: &str,
    callback: Option<&str>,
) -> Response {
    let response = match answer {
        Ok(response) => response,
        Err(e) => {
            let layer = match &e {
                Error::Tiles(t) => t.layer(),
                _ => None,
            };
            windshaft_error(e.into_response(), layer, json).await
        }
    };
    let Some(callback) = callback else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
        return Error::Internal("the answer could not be read".into()).into_response();
    };
    let text = format!(
        "/**/ typeof {callback} === 'function' && {callback}({});",
        String::from_utf8_lossy(&body)
    );
    parts.status = axum::http::StatusCode::OK;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    parts.headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// CARTO's error answer (`{"error": ["…"]}`, its status and headers kept) in Windshaft's shape.
async fn windshaft_error(response: Response, layer: Option<usize>, json: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"][0].as_str().map(str::to_owned))
        .unwrap_or_else(|| "the map could not be instantiated".to_owned());
    let context = match layer {
        Some(index) => {
            let raw = serde_json::from_str::<serde_json::Value>(json).unwrap_or_default();
            let given = &raw["layers"][index];
            let kind = match given["type"].as_str() {
                None | Some("cartodb" | "mvt") => "mapnik",
                Some(other) => other,
            };
            let id = given["id"]
                .as_str()
                .map_or_else(|| format!("layer{index}"), str::to_owned);
            serde_json::json!({
                "type": "layer",
                "message": message,
                "layer": { "index": index, "id": id, "type": kind },
            })
        }
        None => serde_json::json!({ "type": "unknown", "message": message }),
    };
    let body = serde_json::json!({ "errors": [message], "errors_with_context": [context] });
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// `GET …/{token}/dataview/{id}` (and `…/search?q=`): the dataview computed by PostgreSQL
/// as the caller, counted with the caller's tile renders (a map asks for its dataviews at once).
async fn dataview<C: RedisConnection>(State(api): State<MapsApi<C>>, req: ApiRequest) -> Response {
    dataview_answer(&api, req, false).await
}

async fn dataview_search<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
) -> Response {
    dataview_answer(&api, req, true).await
}

async fn dataview_answer<C: RedisConnection>(
    api: &MapsApi<C>,
    req: ApiRequest,
    search: bool,
) -> Response {
    let inner = &*api.inner;
    respond(
        async {
            let caller = inner.gate.caller(&req, Api::Maps).await?;
            let (token, id) = (path_part(&req, "token"), path_part(&req, "dataview"));
            let loaded = api.load_map(&caller, &req, token).await?;
            let config = &loaded.config;
            if config.dataview(id).is_none() {
                return Err(Error::NotFound(format!("no dataview {id} in map {token}")));
            }
            let params = Params::new(req.query.as_deref(), &axum::http::HeaderMap::new(), &[])?;
            let mut query = DataviewQuery::from_params(params.pairs())?;
            if search {
                query.search = Some(params.get("q").unwrap_or_default().to_owned());
            }
            let _running = inner.gate.admit_renders(&caller)?;
            let (pool, _) = api.pool_for(&caller, &loaded)?;
            let value = config
                .dataview_data(id, &query, &pool, &inner.sandbox.options())
                .await?;
            let mut response = Json(value).into_response();
            caller.rate.write_headers(response.headers_mut());
            Ok(response)
        }
        .await,
    )
}

/// `GET …/{token}/{layer}/attributes/{id}`: one feature's attributes, as the caller reads
/// them.
async fn attributes<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
) -> Response {
    let inner = &*api.inner;
    respond(
        async {
            let caller = inner.gate.caller(&req, Api::Maps).await?;
            let token = path_part(&req, "token");
            let layer: usize = path_part(&req, "layers")
                .parse()
                .map_err(|_| Error::BadRequest("the layer is its index: 0, 1, …".into()))?;
            let id: i64 = path_part(&req, "id")
                .parse()
                .map_err(|_| Error::BadRequest("a feature id is a whole number".into()))?;
            let loaded = api.load_map(&caller, &req, token).await?;
            let _running = inner.gate.admit_renders(&caller)?;
            let (pool, _) = api.pool_for(&caller, &loaded)?;
            let found = loaded
                .config
                .attributes(layer, id, &pool, &inner.sandbox.options())
                .await?
                .ok_or_else(|| Error::NotFound(format!("no feature {id} in layer {layer}")))?;
            let mut response = Json(found).into_response();
            caller.rate.write_headers(response.headers_mut());
            Ok(response)
        }
        .await,
    )
}

/// `GET …/{token}/analysis/node/{id}`: a node's status (source nodes are always ready).
async fn analysis_node<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            let caller = api.inner.gate.caller(&req, Api::Maps).await?;
            let (token, node) = (path_part(&req, "token"), path_part(&req, "node"));
            let loaded = api.load_map(&caller, &req, token).await?;
            let (id, query) = loaded
                .config
                .analyses()
                .iter()
                .find(|(id, _)| id == node)
                .ok_or_else(|| Error::NotFound(format!("no analysis node {node}")))?;
            Ok(
                Json(serde_json::json!({ "id": id, "status": "ready", "query": query }))
                    .into_response(),
            )
        }
        .await,
    )
}

/// A path parameter of the route, empty when absent.
fn path_part<'a>(req: &'a ApiRequest, name: &str) -> &'a str {
    req.path.get(name).map(String::as_str).unwrap_or_default()
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
            let config = api.load_map(&caller, &req, token).await?.config;
            let url = with_key(
                format!(
                    "{}{}/api/v1/map/{token}/{{z}}/{{x}}/{{y}}.mvt",
                    api.inner.gate.origin(&req),
                    user_path(&req.path)
                ),
                req.query.as_deref(),
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
            let (coord, format) = map_tile_coord(&req.path)?;
            let token = req
                .path
                .get("token")
                .map(String::as_str)
                .unwrap_or_default();
            let layers = req.path.get("layers").map_or("all", String::as_str);
            if format == TileFormat::Grid && (layers == "all" || layers.contains(',')) {
                return Err(Error::BadRequest(
                    "a grid is of one layer: …/{layer}/{z}/{x}/{y}.grid.json".into(),
                ));
            }
            // Tiles differ by role (each reads what its grants allow): the role is in the key.
            // A named map's instance is loaded first: its template decides who may see it,
            // and its tiles are its owner's.
            let (loaded, role) = if token.contains('@') {
                let loaded = api.load_map(&caller, &req, token).await?;
                let role = loaded.owner.as_ref().map(|o| o.db_role.name().to_owned());
                (Some(loaded), role.unwrap_or_default())
            } else {
                (None, caller.principal.db_role().name().to_owned())
            };
            let key = TileKey::new(
                format!("map:{token}:{layers}:{role}{}", format.key()),
                coord,
            );
            // A cached tile needs neither the config nor a connection.
            if let Some(tile) = inner.tiles.cached(&key).await? {
                return Ok(format.answer(tile_response(&caller, &req.headers, &tile)));
            }
            let loaded = match loaded {
                Some(loaded) => loaded,
                None => api.load_map(&caller, &req, token).await?,
            };
            let (pool, _) = api.pool_for(&caller, &loaded)?;
            let (config, tables) = (loaded.config, loaded.tables);
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
            let options = match config.buffer() {
                Some(buffer) => inner.tiles.options().clone().buffer(buffer)?,
                None => inner.tiles.options().clone(),
            };
            let sandbox = inner.sandbox.options();
            let tile = inner
                .tiles
                .render(&inner.gate, &caller, &key, &tables, || async move {
                    match format {
                        TileFormat::Mvt => {
                            Ok(config.render(&pool, coord, &options, &sandbox).await?.bytes)
                        }
                        TileFormat::Png(scale) => {
                            config
                                .render_png(&pool, coord, scale, &options, &sandbox)
                                .await
                        }
                        TileFormat::Grid => Ok(config
                            .render_grid(&pool, coord, &options, &sandbox)
                            .await?
                            .to_string()
                            .into_bytes()),
                    }
                })
                .await?;
            Ok(format.answer(tile_response(&caller, &req.headers, &tile)))
        }
        .await,
    )
}

/// A static map of a config's layers (Windshaft's `static/center/{token}/{z}/{lat}/{lng}/{w}/{h}`
/// and `static/bbox/{token}/{west},{south},{east},{north}/{w}/{h}`, `h` ending in `.png` or
/// `.jpg`), each side at most `static_limit` pixels; cached and tagged with the config's tables
/// as its tiles are.
async fn static_map<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
) -> Response {
    let inner = &*api.inner;
    respond(
        async {
            let caller = inner.gate.caller(&req, Api::Maps).await?;
            let view = StaticView::parse(&req.path, inner.static_limit)?;
            let canvas = view.canvas()?;
            let token = path_part(&req, "token");
            let loaded = api.load_map(&caller, &req, token).await?;
            let role = match &loaded.owner {
                Some(owner) => owner.db_role.name().to_owned(),
                None => caller.principal.db_role().name().to_owned(),
            };
            let key = TileKey::new(
                format!("map:{token}:static:{}:{role}", view.key()),
                geostack_tiles::TileCoord::new_checked(0, 0, 0)?,
            );
            let format = view.format;
            let answer = |tile: &geostack_tiles::CachedTile| {
                with_media(
                    tile_response(&caller, &req.headers, tile),
                    format.content_type(),
                )
            };
            if let Some(image) = inner.tiles.cached(&key).await? {
                return Ok(answer(&image));
            }
            let (pool, _) = api.pool_for(&caller, &loaded)?;
            let (config, tables) = (loaded.config, loaded.tables);
            let options = inner.tiles.options().clone();
            let sandbox = inner.sandbox.options();
            let image = inner
                .tiles
                .render(&inner.gate, &caller, &key, &tables, || async move {
                    config
                        .render_image(&pool, canvas, format, &options, &sandbox)
                        .await
                })
                .await?;
            Ok(answer(&image))
        }
        .await,
    )
}

/// What a static map's path asks for.
#[derive(Debug, Clone, PartialEq)]
struct StaticView {
    /// By centre and zoom: (zoom, lat, lng); by box: (west, south, east, north).
    place: Place,
    width: u32,
    height: u32,
    format: geostack_tiles::ImageFormat,
}

#[derive(Debug, Clone, PartialEq)]
enum Place {
    Centre { zoom: u8, lat: f64, lng: f64 },
    Box([f64; 4]),
}

impl StaticView {
    /// The view of a `static/center/…` (with `z`, `lat`, `lng`) or `static/bbox/…` (with
    /// `bbox`) path; each side at most `limit` pixels.
    fn parse(path: &HashMap<String, String>, limit: u32) -> Result<Self> {
        let part = |name: &str| path.get(name).map(String::as_str).unwrap_or_default();
        let number = |name: &str, text: &str| {
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    Error::BadRequest(format!("invalid {name} {text}: expected a number"))
                })
        };
        let place = if let Some(bbox) = path.get("bbox") {
            let values = bbox
                .split(',')
                .map(|v| number("bbox", v))
                .collect::<Result<Vec<_>>>()?;
            let [w, s, e, n] = values[..] else {
                return Err(Error::BadRequest(format!(
                    "invalid bbox {bbox}: expected west,south,east,north"
                )));
            };
            Place::Box([w, s, e, n])
        } else {
            let zoom = part("z")
                .parse::<u8>()
                .ok()
                .filter(|z| *z <= 30)
                .ok_or_else(|| {
                    Error::BadRequest(format!("invalid zoom {}: expected 0 to 30", part("z")))
                })?;
            Place::Centre {
                zoom,
                lat: number("lat", part("lat"))?,
                lng: number("lng", part("lng"))?,
            }
        };
        let (height, format) = match part("height").rsplit_once('.') {
            Some((h, "png")) => (h, geostack_tiles::ImageFormat::Png),
            Some((h, "jpg" | "jpeg")) => (h, geostack_tiles::ImageFormat::Jpeg(85)),
            _ => {
                return Err(Error::BadRequest(format!(
                    "invalid static map {}: expected a height ending in .png or .jpg",
                    part("height")
                )));
            }
        };
        let side = |name: &str, text: &str| {
            text.parse::<u32>()
                .ok()
                .filter(|v| (1..=limit).contains(v))
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "invalid {name} {text}: expected 1 to {limit} pixels"
                    ))
                })
        };
        Ok(Self {
            place,
            width: side("width", part("width"))?,
            height: side("height", height)?,
            format,
        })
    }

    fn canvas(&self) -> Result<geostack_tiles::Canvas> {
        let canvas = match self.place {
            Place::Centre { zoom, lat, lng } => {
                geostack_tiles::Canvas::centred(lng, lat, zoom, self.width, self.height)
            }
            Place::Box([w, s, e, n]) => {
                geostack_tiles::Canvas::fitted(w, s, e, n, self.width, self.height)
            }
        };
        canvas.map_err(|e| Error::BadRequest(e.to_string()))
    }

    /// What the cache key adds for it.
    fn key(&self) -> String {
        let place = match self.place {
            Place::Centre { zoom, lat, lng } => format!("c{zoom},{lat},{lng}"),
            Place::Box([w, s, e, n]) => format!("b{w},{s},{e},{n}"),
        };
        let format = match self.format {
            geostack_tiles::ImageFormat::Jpeg(q) => format!("jpg{q}"),
            _ => "png".to_owned(),
        };
        format!("{place}:{}x{}:{format}", self.width, self.height)
    }
}

/// What a map tile's path asks for: a vector tile (`.mvt` or no extension), an image
/// (`.png`, `@2x.png` twice as large) or a layer's UTFGrid (`.grid.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TileFormat {
    Mvt,
    Png(u8),
    Grid,
}

impl TileFormat {
    /// What the cache key adds for it.
    fn key(self) -> String {
        match self {
            Self::Mvt => String::new(),
            Self::Png(scale) => format!(":png@{scale}"),
            Self::Grid => ":grid".to_owned(),
        }
    }

    /// The tile's answer with the format's media type.
    fn answer(self, response: Response) -> Response {
        match self {
            Self::Mvt => response,
            Self::Png(_) => with_media(response, "image/png"),
            Self::Grid => with_media(response, "application/json; charset=utf-8"),
        }
    }
}

/// A tile's answer (a 200; not a 304 or an error) as `media`.
fn with_media(mut response: Response, media: &'static str) -> Response {
    if response.status() == axum::http::StatusCode::OK {
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(media),
        );
    }
    response
}

/// A map tile's coordinate and format from its path (`y` may end in `.mvt`, `.png`,
/// `@2x.png` or `.grid.json`).
fn map_tile_coord(
    path: &HashMap<String, String>,
) -> Result<(geostack_tiles::TileCoord, TileFormat)> {
    let y = path.get("y").map(String::as_str).unwrap_or_default();
    let (y, format) = if let Some(y) = y.strip_suffix(".grid.json") {
        (y, TileFormat::Grid)
    } else if let Some(y) = y.strip_suffix("@2x.png") {
        (y, TileFormat::Png(2))
    } else if let Some(y) = y.strip_suffix(".png") {
        (y, TileFormat::Png(1))
    } else {
        (y, TileFormat::Mvt)
    };
    let mut path = path.clone();
    path.insert("y".into(), y.to_owned());
    Ok((coord(&path)?, format))
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
