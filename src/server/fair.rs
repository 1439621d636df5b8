//! Fair share between callers: who the client is (its address, `X-Forwarded-For` believed only
//! from trusted proxies) and how many requests each caller has running at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::HeaderMap;
use futures_util::Stream;

/// The client's address: the peer's, or — when the peer is a trusted proxy — the last address
/// of `X-Forwarded-For` that is not itself a trusted proxy.
pub(crate) fn client_addr(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .unwrap_or(peer),
    )
}

/// Requests running per caller, bounded.
#[derive(Default)]
pub(crate) struct Inflight {
    running: Arc<Mutex<HashMap<String, u32>>>,
}

impl Inflight {
    /// Admits one more request of `caller` unless it has `max` running.
    pub(crate) fn admit(&self, caller: String, max: u32) -> Option<Admission> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = running.entry(caller.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Admission {
            running: Arc::clone(&self.running),
            caller,
        })
    }
}

/// One admitted request ([`Gate::admit`](super::Gate::admit)); dropping it (when the response
/// has been sent) frees its place.
///
/// ```no_run
/// # async fn demo(gate: geostack::server::Gate, caller: geostack::server::Caller) -> geostack::server::Result<()> {
/// let admission = gate.admit(&caller)?; // 429 when the caller has its share running
/// // … stream the response, then:
/// drop(admission);
/// # Ok(()) }
/// ```
pub struct Admission {
    running: Arc<Mutex<HashMap<String, u32>>>,
    caller: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = running.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.caller);
            }
        }
    }
}

/// A response body that holds its request's admission until it has been streamed.
pub(crate) struct Admitted<S> {
    pub(crate) body: S,
    pub(crate) _admission: Admission,
    /// The connection's cut, armed at the response's deadline while it is written.
    pub(crate) _armed: Option<super::conn::Armed>,
    /// Bytes streamed so far, for the metrics.
    pub(crate) bytes: u64,
}

impl Stream for Admitted<sqlpass::Body> {
    type Item = <sqlpass::Body as Stream>::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.body).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => self.bytes += chunk.len() as u64,
            Poll::Ready(None) => {
                let rows = self.body.outcome().map_or(0, |o| o.rows);
                super::metrics::streamed(rows, std::mem::take(&mut self.bytes));
            }
            _ => {}
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 198.51.100.9".parse().unwrap());
        let peer = |ip: IpAddr| Some(SocketAddr::new(ip, 4000));
        // From the proxy: the last address it did not add itself.
        assert_eq!(
            client_addr(peer(proxy), &headers, &[proxy]),
            Some("198.51.100.9".parse().unwrap())
        );
        // From anyone else, the header is the caller's own claim: the peer counts.
        let caller: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(client_addr(peer(caller), &headers, &[proxy]), Some(caller));
        assert_eq!(client_addr(None, &headers, &[proxy]), None);
    }

    #[test]
    fn a_caller_has_at_most_its_share_running() {
        let inflight = Inflight::default();
        let a1 = inflight.admit("a".into(), 2);
        let a2 = inflight.admit("a".into(), 2);
        assert!(a1.is_some() && a2.is_some());
        assert!(inflight.admit("a".into(), 2).is_none());
        assert!(inflight.admit("b".into(), 2).is_some());
        drop(a1);
        assert!(inflight.admit("a".into(), 2).is_some());
    }
}
