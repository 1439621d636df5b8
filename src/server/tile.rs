//! What the tile routes share: the coordinate from the path, the cache, single-flight, and
//! the answer (200 with an ETag, 304 when it matches, 204 for an empty tile).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use geostack_tiles::{
    CachedTile, MemoryTileCache, SingleFlight, TileCache as _, TileCoord, TileKey, TileOptions,
    TileResponse,
};

use super::gate::{Caller, Gate};
use super::{RedisConnection, Result, ServerConfig};

/// `z`, `x` and `y` from the path, `y` with or without `.mvt`.
pub(crate) fn coord(path: &HashMap<String, String>) -> Result<TileCoord> {
    let part = |name: &str| path.get(name).map(String::as_str).unwrap_or_default();
    Ok(TileCoord::parse(part("z"), part("x"), part("y"))?)
}

/// The tiles of a server's tile APIs: how they are made (the settings' [`TileOptions`]),
/// the cache they are kept in, and the renders in flight (a tile asked for by many at once is
/// rendered once). Shared by the maps and table APIs; cheap to clone.
///
/// ```
/// use geostack::server::{ServerConfig, Tiles};
///
/// let tiles = Tiles::new(&ServerConfig::default());
/// assert_eq!(tiles.options().extent_units(), 4096);
/// ```
#[derive(Clone)]
pub struct Tiles {
    inner: Arc<Inner>,
}

struct Inner {
    cache: MemoryTileCache,
    /// Whether tiles are kept (a cache of 0 bytes: never).
    caching: bool,
    /// The caches in front to purge when a table's tiles are dropped.
    purge: Vec<super::Purge>,
    flights: SingleFlight,
    options: TileOptions,
    /// When each table was last heard to change, and since when changes are heard at all:
    /// a tile's `Last-Modified` is the latest of them for its tables.
    changes: std::sync::Mutex<Changes>,
}

/// The changes heard: per table its last, and since when everything is known.
struct Changes {
    since: std::time::SystemTime,
    tables: HashMap<String, std::time::SystemTime>,
    /// The last `Last-Modified` written: its second and its text (most answers repeat it).
    written: Option<(i64, HeaderValue)>,
}

impl Tiles {
    /// The tiles of `config`: its tile options and cache size.
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache: MemoryTileCache::new(config.tile_cache_bytes, config.tile_cache_ttl),
                caching: config.tile_cache_bytes > 0,
                purge: config.purge.clone(),
                flights: SingleFlight::default(),
                options: config.tile_options.clone(),
                changes: std::sync::Mutex::new(Changes {
                    since: std::time::SystemTime::now(),
                    tables: HashMap::new(),
                    written: None,
                }),
            }),
        }
    }

    /// How tiles are made.
    pub fn options(&self) -> &TileOptions {
        &self.inner.options
    }

    /// The cache (to invalidate a table's tiles).
    pub fn cache(&self) -> &MemoryTileCache {
        &self.inner.cache
    }

    /// Drops every cached tile.
    pub fn invalidate_all(&self) {
        self.inner.cache.clear();
        let mut changes = self.changes();
        changes.since = std::time::SystemTime::now();
        changes.tables.clear();
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, Changes> {
        self.inner
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the latest of `tables` was last heard to change (or, if none was, since when
    /// changes are heard): a tile made from them has not changed since.
    pub fn last_modified(&self, tables: &[String]) -> std::time::SystemTime {
        Self::latest(&self.changes(), tables)
    }

    fn latest(changes: &Changes, tables: &[String]) -> std::time::SystemTime {
        tables
            .iter()
            .filter_map(|t| changes.tables.get(t))
            .copied()
            .fold(changes.since, std::cmp::max)
    }

    /// [`Tiles::last_modified`] in whole seconds since the Unix epoch, and as the
    /// `Last-Modified` header's value (formatted once per second seen).
    fn last_modified_header(&self, tables: &[String]) -> (i64, Option<HeaderValue>) {
        let mut changes = self.changes();
        let t = jiff::Timestamp::try_from(Self::latest(&changes, tables))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let second = t.as_second();
        if let Some((at, text)) = &changes.written
            && *at == second
        {
            return (second, Some(text.clone()));
        }
        let text = HeaderValue::from_str(&http_date(t)).ok();
        if let Some(text) = &text {
            changes.written = Some((second, text.clone()));
        }
        (second, text)
    }

    /// Drops the cached tiles of `table` (`schema.table`) and purges the caches in front
    /// ([`ServerConfig::purge`](super::ServerConfig::purge)); returns how many it held.
    ///
    /// # Errors
    ///
    /// [`Error::Tiles`](super::Error::Tiles) when the cache cannot be asked.
    pub async fn invalidate_table(&self, table: &str) -> Result<u64> {
        use geostack_tiles::TileCache as _;
        self.changes()
            .tables
            .insert(table.to_owned(), std::time::SystemTime::now());
        let dropped = self.inner.cache.invalidate_table(table).await?;
        super::purge::purge(&self.inner.purge, table);
        Ok(dropped)
    }

    /// The tile under `key`: from the cache, else rendered once however many ask at the same
    /// time, then cached with `tables` as its tags; answered for `caller`, whose renders `gate`
    /// bounds.
    ///
    /// # Errors
    ///
    /// What the cache or the render failed with; [`Error::RateLimited`](super::Error::RateLimited) when the caller has
    /// its share of renders running.
    pub async fn tile<C, F, Fut>(
        &self,
        gate: &Gate<C>,
        caller: &Caller,
        headers: &HeaderMap,
        key: TileKey,
        tables: Vec<String>,
        render: F,
    ) -> Result<Response>
    where
        C: RedisConnection,
        F: FnOnce() -> Fut,
        Fut: Future<Output = geostack_tiles::Result<Vec<u8>>>,
    {
        let tile = match self.cached(&key).await? {
            Some(tile) => tile,
            // Boxed: the render's future is large and seldom needed; the cached answer's
            // future stays small (each request's is moved whole).
            None => Box::pin(self.render(gate, caller, &key, &tables, render)).await?,
        };
        let mut response = tile_response(caller, headers, &tile);
        let modified = self.last_modified_header(&tables);
        // A client that validates by date alone is answered 304 when nothing changed since.
        if !headers.contains_key(header::IF_NONE_MATCH)
            && response.status().is_success()
            && headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_http_date)
                .is_some_and(|since| since >= modified.0)
        {
            *response.status_mut() = axum::http::StatusCode::NOT_MODIFIED;
            *response.body_mut() = axum::body::Body::empty();
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        let h = response.headers_mut();
        if let Some(date) = modified.1 {
            h.insert(header::LAST_MODIFIED, date);
        }
        // What a cache in front bans by when one of them changes (as CARTO's tiles say).
        if let Ok(channel) =
            HeaderValue::from_maybe_shared(axum::body::Bytes::from(tables.join(",")))
        {
            h.insert(X_CACHE_CHANNEL, channel);
        }
        Ok(response)
    }

    /// The tile under `key` if the cache holds it (never with the cache switched off).
    ///
    /// # Errors
    ///
    /// [`Error::Tiles`](super::Error::Tiles) when the cache cannot be read.
    pub async fn cached(&self, key: &TileKey) -> Result<Option<CachedTile>> {
        if !self.inner.caching {
            return Ok(None);
        }
        let tile = self.inner.cache.get(key).await?;
        super::metrics::tile_cache(tile.is_some());
        Ok(tile)
    }

    /// Renders the tile under `key` once however many ask at the same time; the renderer
    /// caches it with `tables` as its tags. A caller has at most `max_renders_per_caller`
    /// renders running (a cached tile is not counted).
    ///
    /// # Errors
    ///
    /// What the render failed with; [`Error::RateLimited`](super::Error::RateLimited) when the caller has its share of
    /// renders running.
    pub async fn render<C, F, Fut>(
        &self,
        gate: &Gate<C>,
        caller: &Caller,
        key: &TileKey,
        tables: &[String],
        render: F,
    ) -> Result<CachedTile>
    where
        C: RedisConnection,
        F: FnOnce() -> Fut,
        Fut: Future<Output = geostack_tiles::Result<Vec<u8>>>,
    {
        let _admission = gate.admit_renders(caller)?;
        let cache = &self.inner.cache;
        Ok(self
            .inner
            .flights
            .run(key, || async {
                let tile = CachedTile::new(render().await?);
                if self.inner.caching {
                    cache.put(key, &tile, tables).await?;
                }
                Ok(tile)
            })
            .await?)
    }
}

/// The answer for a tile: [`TileResponse`] (200 with its bytes and ETag, 304 when
/// `If-None-Match` names it, 204 when it is empty), publicly cacheable for a minute when the
/// caller is anonymous, with the caller's rate headers.
///
/// ```no_run
/// # async fn demo(gate: geostack::server::Gate, tiles: geostack::server::Tiles, req: geostack::server::ApiRequest, key: geostack::tiles::TileKey) -> geostack::server::Result<axum::response::Response> {
/// let caller = gate.caller(&req, geoauth::Api::Maps).await?;
/// match tiles.cached(&key).await? {
///     Some(tile) => Ok(geostack::server::tile_response(&caller, &req.headers, &tile)),
///     None => Err(geostack::server::Error::NotFound("not rendered yet".into())),
/// }
/// # }
/// ```
pub fn tile_response(caller: &Caller, headers: &HeaderMap, tile: &CachedTile) -> Response {
    let cache_control = HeaderValue::from_static(if caller.principal.is_anonymous() {
        "public, max-age=60"
    } else {
        "private, max-age=60"
    });
    let mut response = TileResponse::new(tile.clone())
        .cache_control(cache_control)
        .if_none_match(headers)
        .into_response();
    let h = response.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Authorization"));
    caller.rate.write_headers(h);
    response
}

/// `t` as an HTTP date (`Thu, 03 Dec 2026 20:55:37 GMT`).
fn http_date(t: jiff::Timestamp) -> String {
    t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The header naming a tile's tables.
const X_CACHE_CHANNEL: header::HeaderName = header::HeaderName::from_static("x-cache-channel");

/// An HTTP date's seconds since the Unix epoch.
fn parse_http_date(text: &str) -> Option<i64> {
    let text = text.trim().strip_suffix("GMT")?.trim_end();
    jiff::civil::DateTime::strptime("%a, %d %b %Y %H:%M:%S", text)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_second())
}

/// TileJSON 3.0.0 for `tiles` (URL templates), `layers` as `(name, minzoom, maxzoom)`.
pub(crate) fn tilejson(
    name: &str,
    tiles: Vec<String>,
    layers: &[(String, u8, u8)],
) -> serde_json::Value {
    tilejson_with_fields(name, tiles, layers, &[], None)
}

/// As [`tilejson`], each layer's `fields` (attribute name to `Number`, `String` or `Boolean`)
/// given, and the data's `bounds` when known (the world's otherwise).
pub(crate) fn tilejson_with_fields(
    name: &str,
    tiles: Vec<String>,
    layers: &[(String, u8, u8)],
    fields: &[serde_json::Map<String, serde_json::Value>],
    bounds: Option<[f64; 4]>,
) -> serde_json::Value {
    let minzoom = layers.iter().map(|l| l.1).min().unwrap_or(0);
    let maxzoom = layers.iter().map(|l| l.2).max().unwrap_or(22).min(22);
    serde_json::json!({
        "tilejson": "3.0.0",
        "name": name,
        "tiles": tiles,
        "minzoom": minzoom,
        "maxzoom": maxzoom,
        "bounds": bounds.unwrap_or([-180.0, -85.0511, 180.0, 85.0511]),
        "vector_layers": layers
            .iter()
            .enumerate()
            .map(|(i, (id, min, max))| {
                let fields = fields.get(i).cloned().unwrap_or_default();
                serde_json::json!({ "id": id, "minzoom": min, "maxzoom": max, "fields": fields })
            })
            .collect::<Vec<_>>(),
    })
}

/// `<scheme>://<host>` of the request as its client reached it, for absolute URLs: from a
/// trusted proxy (its address in `trusted`), `X-Forwarded-Proto` (`http` or `https`) and
/// `X-Forwarded-Host`; from anyone else, `http` and `Host`.
pub(crate) fn origin(
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    trusted: &[std::net::IpAddr],
) -> String {
    let value = |name| {
        headers
            .get(name)
            .and_then(|h: &HeaderValue| h.to_str().ok())
    };
    let proxied = peer.is_some_and(|p| trusted.contains(&p.ip()));
    let forwarded = |name| {
        value(name)
            .filter(|_| proxied)
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let host = forwarded("x-forwarded-host")
        .or_else(|| value(header::HOST.as_str()))
        .unwrap_or("localhost");
    let scheme = match forwarded("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

/// `url` with the caller's `api_key` when the request carried one in its query, so that a
/// client following a TileJSON's URLs is the same caller.
pub(crate) fn with_key(url: String, query: Option<&str>) -> String {
    let key = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "api_key")
            .map(|(_, v)| v.into_owned())
    });
    match key {
        Some(key) => format!(
            "{url}?api_key={}",
            form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
        ),
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_print_and_read_back() {
        let t = jiff::Timestamp::from_second(1_796_331_337).unwrap();
        let text = http_date(t);
        assert_eq!(text, "Thu, 03 Dec 2026 20:55:37 GMT");
        assert_eq!(parse_http_date(&text), Some(1_796_331_337));
        assert_eq!(parse_http_date("yesterday"), None);
    }

    fn path(z: &str, x: &str, y: &str) -> HashMap<String, String> {
        [("z", z), ("x", x), ("y", y)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn forwarded_scheme_and_host_are_believed_from_trusted_proxies_only() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("10.0.0.5:8080"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("maps.example.org, inner"),
        );
        let proxy: std::net::SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let trusted = [proxy.ip()];
        assert_eq!(
            origin(Some(proxy), &headers, &trusted),
            "https://maps.example.org"
        );
        assert_eq!(
            origin(Some(stranger), &headers, &trusted),
            "http://10.0.0.5:8080"
        );
        assert_eq!(origin(None, &headers, &trusted), "http://10.0.0.5:8080");
        // A scheme other than http or https is not taken.
        headers.insert("x-forwarded-proto", HeaderValue::from_static("javascript"));
        assert_eq!(
            origin(Some(proxy), &headers, &trusted),
            "http://maps.example.org"
        );
    }

    #[test]
    fn tile_urls_carry_the_caller_s_key() {
        let url = "http://h/tiles/t/{z}/{x}/{y}.mvt".to_owned();
        assert_eq!(
            with_key(url.clone(), Some("a=1&api_key=k%2B1")),
            "http://h/tiles/t/{z}/{x}/{y}.mvt?api_key=k%2B1"
        );
        assert_eq!(with_key(url.clone(), Some("a=1")), url);
        assert_eq!(with_key(url.clone(), None), url);
    }

    #[test]
    fn coordinates_come_from_the_path_with_or_without_the_extension() {
        assert_eq!(
            coord(&path("3", "4", "2.mvt")).unwrap(),
            TileCoord::new_checked(3, 4, 2).unwrap()
        );
        assert_eq!(
            coord(&path("0", "0", "0")).unwrap(),
            TileCoord::new_checked(0, 0, 0).unwrap()
        );
        assert_eq!(coord(&path("3", "8", "0.mvt")).unwrap_err().status(), 400);
        assert_eq!(coord(&path("a", "0", "0.mvt")).unwrap_err().status(), 400);
        assert_eq!(coord(&path("1", "0", "0.png")).unwrap_err().status(), 400);
    }
}
