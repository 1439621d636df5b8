//! A tile as an HTTP answer (feature `axum`).

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::CachedTile;

/// The MVT media type.
pub const MVT_CONTENT_TYPE: &str = "application/vnd.mapbox-vector-tile";

/// A tile as an HTTP answer, as tile servers give it: 200 with the MVT bytes, its ETag and
/// `Cache-Control`; 304 Not Modified when the request's `If-None-Match` names the tile; 204 No
/// Content when it is empty. `Cache-Control` is `public, max-age=60` unless set.
///
/// ```
/// use axum_core::response::IntoResponse;
/// use geostack_tiles::{CachedTile, TileResponse};
/// use http::{HeaderMap, HeaderValue, header};
///
/// let tile = CachedTile::new(vec![0x1a, 0x00]);
/// let answer = TileResponse::new(tile.clone()).into_response();
/// assert_eq!(answer.status(), 200);
/// assert_eq!(answer.headers()[header::ETAG], tile.etag());
///
/// let mut asked = HeaderMap::new();
/// asked.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tile.etag())?);
/// let again = TileResponse::new(tile).if_none_match(&asked).into_response();
/// assert_eq!(again.status(), 304);
///
/// assert_eq!(TileResponse::new(CachedTile::new(vec![])).into_response().status(), 204);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TileResponse {
    tile: CachedTile,
    not_modified: bool,
    cache_control: HeaderValue,
}

impl TileResponse {
    /// The answer for `tile`.
    pub fn new(tile: CachedTile) -> Self {
        Self {
            tile,
            not_modified: false,
            cache_control: HeaderValue::from_static("public, max-age=60"),
        }
    }

    /// Answers 304 when `headers` (the request's) hold an `If-None-Match` naming the tile.
    pub fn if_none_match(mut self, headers: &HeaderMap) -> Self {
        self.not_modified = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| self.tile.matches(v));
        self
    }

    /// The `Cache-Control` header (`private, max-age=60` for a tile made with a caller's key).
    pub fn cache_control(mut self, value: HeaderValue) -> Self {
        self.cache_control = value;
        self
    }

    /// The tile.
    pub fn tile(&self) -> &CachedTile {
        &self.tile
    }
}

impl IntoResponse for TileResponse {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::empty());
        let h = response.headers_mut();
        // Room for what the servers add (rate limits, CORS, cache channels) without regrowing.
        h.reserve(16);
        if let Ok(etag) = HeaderValue::from_maybe_shared(self.tile.shared_etag()) {
            h.insert(header::ETAG, etag);
        }
        h.insert(header::CACHE_CONTROL, self.cache_control);
        *response.status_mut() = if self.not_modified {
            StatusCode::NOT_MODIFIED
        } else if self.tile.is_empty() {
            StatusCode::NO_CONTENT
        } else {
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(MVT_CONTENT_TYPE),
            );
            *response.body_mut() = Body::from(self.tile.shared_bytes());
            StatusCode::OK
        };
        response
    }
}

/// One table's tiles behind any route ending in `{z}/{x}/{y}` (`y` with or without `.mvt`):
/// [`TableTiles::answer`] is the whole handler — the coordinate from the path, the tile read
/// in sqlpass's sandbox on `pool`, answered as a [`TileResponse`] (ETag, 304, 204), errors with
/// their status in CARTO's shape. Cheap to clone.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, source: geostack_tiles::TableSource) {
/// use axum_core::extract::Request;
/// use geostack_tiles::TableTiles;
///
/// let tiles = TableTiles::new(pool, source);
/// let handler = move |request: Request| async move {
///     tiles.answer(request.uri().path(), request.headers()).await
/// };
/// // axum::Router::new().route("/countries/{z}/{x}/{y}", axum::routing::get(handler))
/// # let _ = handler; }
/// ```
#[cfg(feature = "postgis")]
#[derive(Clone, Debug)]
pub struct TableTiles {
    pool: sqlx::PgPool,
    source: std::sync::Arc<crate::TableSource>,
    sandbox: sqlpass::Options,
    options: crate::TileOptions,
}

#[cfg(feature = "postgis")]
impl TableTiles {
    /// The tiles of `source` read on `pool`, with the default sandbox and tile options.
    pub fn new(pool: sqlx::PgPool, source: crate::TableSource) -> Self {
        Self {
            pool,
            source: std::sync::Arc::new(source),
            sandbox: sqlpass::Options::default(),
            options: crate::TileOptions::default(),
        }
    }

    /// How the tiles are made.
    pub fn options(mut self, options: crate::TileOptions) -> Self {
        self.options = options;
        self
    }

    /// The sandbox the table is read in (timeouts, limits, a canceller).
    pub fn sandbox(mut self, sandbox: sqlpass::Options) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// The answer to a request for `path` (whose last three segments are the tile's `z`, `x`
    /// and `y`) with `headers`.
    pub async fn answer(&self, path: &str, headers: &HeaderMap) -> Response {
        let mut parts = path.rsplit('/');
        let (y, x, z) = (parts.next(), parts.next(), parts.next());
        let coord = match (z, x, y) {
            (Some(z), Some(x), Some(y)) => crate::TileCoord::parse(z, x, y),
            _ => Err(crate::Error::InvalidCoordinate("z")),
        };
        let tile = match coord {
            Ok(coord) => {
                self.source
                    .tile(&self.pool, &self.sandbox, coord, &self.options)
                    .await
            }
            Err(e) => Err(e),
        };
        match tile {
            Ok(bytes) => TileResponse::new(CachedTile::new(bytes))
                .if_none_match(headers)
                .into_response(),
            Err(e) => e.into_response(),
        }
    }
}
