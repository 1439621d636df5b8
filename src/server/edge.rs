//! The HTTP edge: refusals made outside the handlers (no route, a method the route lacks, a
//! body over the limit, an extractor's rejection) answered in CARTO's `{"error":["…"]}` shape;
//! cross-origin access; a span and the metrics of every request.

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Error, ServerConfig};

/// `router` behind the edge CARTO's clients expect, as the composed server has it: an unknown
/// route (404), a method a route lacks (405) and a body over `config`'s body limit (413) are
/// answered in CARTO's `{"error":["…"]}` shape, so is every other error response that is not
/// JSON; any origin may call (CORS, preflights answered); each request gets a tracing span,
/// a log line and its metrics.
///
/// ```no_run
/// # fn demo(sql: geostack::server::SqlApi) {
/// use geostack::server::{ServerConfig, edge};
///
/// let app = edge(sql.router(), &ServerConfig::default());
/// # let _ = app; }
/// ```
pub fn edge(router: Router, config: &ServerConfig) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(config.body_limit))
        .layer(axum::middleware::from_fn(around))
}

/// The edge's work around each request, outermost first: the span and metrics, CORS, CARTO's
/// error shape. One middleware, so a request pays for one boxed future, not three.
async fn around(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    trace(request, |request| {
        cors(request, |request| carto_errors(request, next))
    })
    .await
}

/// No route for the path.
async fn not_found() -> Response {
    Error::NotFound("no such route: see the SQL, Batch and Maps APIs".into()).into_response()
}

/// The route exists, not with this method.
async fn method_not_allowed() -> Response {
    Error::MethodNotAllowed.into_response()
}

/// Turns an error response that is not JSON (axum's and hyper's own: 413, 400 from an
/// extractor, 405) into CARTO's shape, keeping its status and headers.
async fn carto_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Those bodies are a line of text at most; anything longer is not shown.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| reason(status).to_owned());
    let body = serde_json::json!({ "error": [text] }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("request refused")
}

/// Cross-origin access, as CARTO's APIs allow it: any origin may call them (credentials travel
/// as keys, not cookies); a preflight `OPTIONS` is answered here with what a request may send.
async fn cors<F, Fut>(request: axum::extract::Request, next: F) -> Response
where
    F: FnOnce(axum::extract::Request) -> Fut,
    Fut: Future<Output = Response>,
{
    use axum::http::{HeaderValue, Method, StatusCode, header};
    let mut response = if request.method() == Method::OPTIONS {
        let mut preflight = Response::new(Body::empty());
        *preflight.status_mut() = StatusCode::NO_CONTENT;
        let h = preflight.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, X-Api-Key, If-None-Match"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("3600"),
        );
        preflight
    } else {
        next(request).await
    };
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "ETag, X-Cache-Channel, Surrogate-Key, Retry-After, RateLimit-Limit, RateLimit-Remaining, \
             RateLimit-Reset, Carto-Rate-Limit-Limit, Carto-Rate-Limit-Remaining, Carto-Rate-Limit-Reset",
        ),
    );
    response
}

/// A span per request, and one line when it is answered.
async fn trace<F, Fut>(request: axum::extract::Request, next: F) -> Response
where
    F: FnOnce(axum::extract::Request) -> Fut,
    Fut: Future<Output = Response>,
{
    use tracing::Instrument as _;
    let span =
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = super::metrics::method_label(request.method());
    async move {
        let started = Instant::now();
        let response = next(request).await;
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        tracing::info!(status, ms = elapsed.as_millis() as u64, "answered");
        super::metrics::request(route, method, status, elapsed.as_secs_f64());
        response
    }
    .instrument(span)
    .await
}
