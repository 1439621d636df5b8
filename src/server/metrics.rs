//! What the server reports through the [`metrics`] facade, for whichever recorder the
//! application installs (the `geostack` command serves Prometheus's text format on
//! `GET /metrics`):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `geostack_http_requests_total` | counter | `route` (the matched template), `method`, `status` |
//! | `geostack_http_request_duration_seconds` | histogram, to the response's head | `route` |
//! | `geostack_sql_rows_total`, `geostack_sql_bytes_total` | counters, streamed by the SQL API | |
//! | `geostack_tile_cache_total` | counter | `result`: `hit`, `miss` |
//! | `geostack_refused_total` | counter | `reason`: `rate`, `running`, `renders` |
//! | `geostack_pool_connections` | gauge, at [`Server::record_gauges`] | `role`, `state`: `open`, `in_use` |
//! | `geostack_batch_jobs` | gauge, at [`Server::record_gauges`] | `state`: `waiting`, `delayed`, `active`, `completed`, `dead`, `cancelled` |
//! | `geostack_batch_workers` | gauge, at [`Server::record_gauges`]: the batch queue's live workers | |
//! | `geostack_batch_paused` | gauge, at [`Server::record_gauges`]: 1 while the batch queue is paused | |
//! | `geostack_batch_jobs_last_minute` | gauge, at [`Server::record_gauges`]: batch jobs that ended in the last whole minute | `outcome`: `completed`, `dead` |

use geostack_jobs::Metric;
use metrics::SharedString;

use super::{RedisConnection, Server};

pub(crate) fn request(route: String, method: SharedString, status: u16, seconds: f64) {
    metrics::counter!(
        "geostack_http_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status_label(status)
    )
    .increment(1);
    metrics::histogram!("geostack_http_request_duration_seconds", "route" => route).record(seconds);
}

/// A method as a label, without allocating for the standard ones.
pub(crate) fn method_label(method: &axum::http::Method) -> SharedString {
    const STANDARD: [&str; 7] = ["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"];
    match STANDARD.iter().find(|m| **m == method.as_str()) {
        Some(name) => SharedString::const_str(name),
        None => SharedString::from(method.as_str().to_owned()),
    }
}

/// A status as a label, without allocating for the usual ones.
fn status_label(status: u16) -> SharedString {
    const USUAL: [(u16, &str); 14] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (206, "206"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (413, "413"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
    ];
    match USUAL.iter().find(|(code, _)| *code == status) {
        Some((_, text)) => SharedString::const_str(text),
        None => SharedString::from(status.to_string()),
    }
}

pub(crate) fn streamed(rows: u64, bytes: u64) {
    metrics::counter!("geostack_sql_rows_total").increment(rows);
    metrics::counter!("geostack_sql_bytes_total").increment(bytes);
}

pub(crate) fn tile_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!("geostack_tile_cache_total", "result" => result).increment(1);
}

pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("geostack_refused_total", "reason" => reason).increment(1);
}

impl<C: RedisConnection> Server<C> {
    /// Sets the gauges that are read rather than counted: each role pool's connections open and
    /// in use, and the batch queue's jobs by state. Call it before rendering a scrape.
    ///
    /// # Errors
    ///
    /// [`Error::Jobs`](super::Error) when Redis does not answer for the queue's counts.
    pub async fn record_gauges(&self) -> super::Result<()> {
        for (role, open, in_use) in self.sandbox().registry().stats() {
            metrics::gauge!("geostack_pool_connections", "role" => role.clone(), "state" => "open")
                .set(f64::from(open));
            metrics::gauge!("geostack_pool_connections", "role" => role, "state" => "in_use")
                .set(f64::from(in_use));
        }
        let queue = self.batch().queue();
        let counts = queue.counts().await?;
        for (state, n) in [
            ("waiting", counts.waiting),
            ("delayed", counts.delayed),
            ("active", counts.active),
            ("completed", counts.completed),
            ("dead", counts.dead),
            ("cancelled", counts.cancelled),
        ] {
            metrics::gauge!("geostack_batch_jobs", "state" => state).set(n as f64);
        }
        metrics::gauge!("geostack_batch_workers").set(queue.workers().await?.len() as f64);
        metrics::gauge!("geostack_batch_paused").set(if queue.is_paused().await? {
            1.0
        } else {
            0.0
        });
        for (outcome, metric) in [("completed", Metric::Completed), ("dead", Metric::Dead)] {
            // The last whole minute: the current one is still counting.
            let last = queue
                .metrics(metric, 2)
                .await?
                .first()
                .copied()
                .unwrap_or(0);
            metrics::gauge!("geostack_batch_jobs_last_minute", "outcome" => outcome)
                .set(last as f64);
        }
        Ok(())
    }
}
