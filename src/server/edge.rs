//! The HTTP edge: refusals made outside the handlers (no route, a method the route lacks, a
//! body over the limit, an extractor's rejection) answered in CARTO's `{"error":["…"]}` shape.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Error;

/// No route for the path.
pub(super) async fn not_found() -> Response {
    Error::NotFound("no such route: see the SQL, Batch and Maps APIs".into()).into_response()
}

/// The route exists, not with this method.
pub(super) async fn method_not_allowed() -> Response {
    Error::MethodNotAllowed.into_response()
}

/// Turns an error response that is not JSON (axum's and hyper's own: 413, 400 from an
/// extractor, 405) into CARTO's shape, keeping its status and headers.
pub(super) async fn carto_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
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
