//! `GET /`: the map page (MapLibre GL JS, served from here, never from a CDN) and its assets.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const MAPLIBRE_JS: &[u8] = include_bytes!("../../assets/maplibre-gl/maplibre-gl.js");
const MAPLIBRE_CSS: &[u8] = include_bytes!("../../assets/maplibre-gl/maplibre-gl.css");

/// `GET /`: a MapLibre page of the caller's tables with a SQL box, and `GET /assets/{file}`:
/// MapLibre GL JS and its style sheet (about 800 KB, compiled in with the `page` feature).
///
/// ```
/// let app = axum::Router::new().merge(geostack::server::page());
/// # let _ = app;
/// ```
pub fn page() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "maplibre-gl.js" => (MAPLIBRE_JS, "text/javascript; charset=utf-8"),
        "maplibre-gl.css" => (MAPLIBRE_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    response
}
