//! Purging a cache in front of the server (a CDN, Varnish) when a table changes: the tiles
//! made from it answer with `X-Cache-Channel` naming their tables, as CARTO's do.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Uri, header};

/// How long one purge request may take before it is given up (and logged).
const PURGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the server sends a purge when a table's tiles are dropped (plain HTTP).
///
/// ```
/// use geostack::server::{Purge, ServerConfig};
///
/// let config = ServerConfig::default()
///     .purge(Purge::Varnish("http://127.0.0.1:6081/".parse().unwrap()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purge {
    /// Varnish as CARTO runs it: `PURGE` to the address with `X-Cache-Channel` holding a
    /// regular expression that matches the channels naming the table, for a VCL that bans
    /// them: `ban("obj.http.X-Cache-Channel ~ " + req.http.X-Cache-Channel)`.
    Varnish(Uri),
    /// A hook of one's own: `POST` to the address with `{"tables": ["schema.table"]}`.
    Hook(Uri),
}

/// Sends `table`'s purge to each target, in the background: a write never waits for a cache.
pub(crate) fn purge(targets: &[Purge], table: &str) {
    for target in targets {
        let (target, table) = (target.clone(), table.to_owned());
        tokio::spawn(async move {
            match tokio::time::timeout(PURGE_TIMEOUT, send(&target, &table)).await {
                Ok(Ok(status)) if status.is_success() => {}
                Ok(Ok(status)) => {
                    tracing::warn!(%status, target = %uri(&target), "purge refused");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, target = %uri(&target), "purge failed"),
                Err(_) => tracing::warn!(target = %uri(&target), "purge timed out"),
            }
        });
    }
}

fn uri(target: &Purge) -> &Uri {
    match target {
        Purge::Varnish(u) | Purge::Hook(u) => u,
    }
}

/// A regular expression matching an `X-Cache-Channel` that names `table`: CARTO's
/// `<database>:<table>,<table>…` or a list of tables.
pub(crate) fn channel_pattern(table: &str) -> String {
    let mut escaped = String::with_capacity(table.len() * 2);
    for c in table.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("(^|[:,]){escaped}(,|$)")
}

async fn send(
    target: &Purge,
    table: &str,
) -> Result<axum::http::StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    let address = uri(target);
    let host = address.host().ok_or("the purge address has no host")?;
    let port = address.port_u16().unwrap_or(80);
    let path = address.path_and_query().map_or("/", |p| p.as_str());
    let authority = address
        .authority()
        .map_or_else(|| host.to_owned(), |a| a.as_str().to_owned());
    let request = match target {
        Purge::Varnish(_) => Request::builder()
            .method(Method::from_bytes(b"PURGE")?)
            .uri(path)
            .header(header::HOST, authority)
            .header("x-cache-channel", channel_pattern(table))
            .body(Body::empty())?,
        Purge::Hook(_) => Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::json!({ "tables": [table] }).to_string(),
            ))?,
    };
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_s_pattern_matches_the_channels_naming_it_only() {
        let p = channel_pattern("public.my-table");
        assert_eq!(p, "(^|[:,])public\\.my\\-table(,|$)");
    }
}
