//! A run as an HTTP response, for axum servers (feature `axum`).

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response as HttpResponse};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::{Error, Meta, Response};

impl Meta {
    /// The response headers a run's metadata gives: `Content-Type`, `Content-Disposition`
    /// (when a filename was asked for), CARTO's `X-Cache-Channel`, and `Surrogate-Key` (one per
    /// table read), for caches to drop the response when a table changes. Values that are not
    /// valid header text are left out.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> sqlpass::Result<()> {
    /// let response = sqlpass::run(&pool, "select name from places", Default::default()).await?;
    /// let headers = response.meta.headers();
    /// assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    /// assert!(headers.contains_key("x-cache-channel"));
    /// # Ok(()) }
    /// ```
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(d) = self
            .content_disposition
            .as_deref()
            .and_then(|d| HeaderValue::from_str(d).ok())
        {
            h.insert(header::CONTENT_DISPOSITION, d);
        }
        if let Some(c) = self
            .cache_channel
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert("x-cache-channel", c);
        }
        if !self.surrogate_keys.is_empty()
            && let Ok(keys) = HeaderValue::from_str(&self.surrogate_keys.join(" "))
        {
            h.insert("surrogate-key", keys);
        }
        h
    }
}

/// 200 with [`Meta::headers`], the body streamed as it is made.
impl IntoResponse for Response {
    fn into_response(self) -> HttpResponse {
        let mut response = HttpResponse::new(Body::from_stream(self.body));
        *response.headers_mut() = self.meta.headers();
        response
    }
}

/// The error's status ([`Error::status`]) with CARTO's body, `{"error": ["…"]}`, and
/// `Retry-After` when waiting helps. The message never carries driver text.
///
/// ```
/// use axum_core::response::IntoResponse as _;
///
/// let response = sqlpass::Error::InvalidOption { name: "format", reason: "unknown".into() }
///     .into_response();
/// assert_eq!(response.status(), 400);
/// assert_eq!(response.headers()["content-type"], "application/json; charset=utf-8");
/// ```
impl IntoResponse for Error {
    fn into_response(self) -> HttpResponse {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": [self.to_string()] }).to_string();
        let mut response = HttpResponse::new(Body::from(body));
        *response.status_mut() = status;
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Some(after) = self.retry_after() {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_s_metadata_becomes_its_headers_and_an_error_carto_s_shape() {
        let meta = Meta {
            content_type: "text/csv; charset=utf-8",
            content_disposition: Some("attachment; filename=\"p.csv\"".into()),
            tables: vec!["public.places".into()],
            cache_channel: Some("db:public.places".into()),
            surrogate_keys: vec!["t:1".into(), "t:2".into()],
        };
        let h = meta.headers();
        assert_eq!(h["content-type"], "text/csv; charset=utf-8");
        assert_eq!(h["content-disposition"], "attachment; filename=\"p.csv\"");
        assert_eq!(h["x-cache-channel"], "db:public.places");
        assert_eq!(h["surrogate-key"], "t:1 t:2");
        let bad = Meta {
            content_disposition: Some("line\nbreak".into()),
            ..meta
        };
        assert!(!bad.headers().contains_key("content-disposition"));

        let refused = Error::Busy.into_response();
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().contains_key("retry-after"));
    }
}
