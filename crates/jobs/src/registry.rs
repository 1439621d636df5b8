//! The worker registry: each worker's heartbeat under each of its queues, and who is alive.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionLike;

use crate::queue::millis;
use crate::scripts::{HEARTBEAT, UNREGISTER, invocation};
use crate::{Queue, Result};

/// A worker as it registered itself. Serializes for a status endpoint, times as milliseconds
/// since the Unix epoch (as [`crate::JobStatus`]'s).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its id: `<pid>-<random>`.
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The queues it takes jobs from.
    pub queues: Vec<String>,
    /// When it started.
    #[serde(serialize_with = "crate::queue::epoch_millis_at")]
    pub started: SystemTime,
    /// Its last heartbeat.
    #[serde(serialize_with = "crate::queue::epoch_millis_at")]
    pub heartbeat: SystemTime,
}

impl<C> Queue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The workers registered on this queue whose record is still alive (a worker's record
    /// lives three heartbeats after its last one), by id.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`].
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{}workers", self.key_prefix()))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await?;
        let records = self.records("worker", &ids).await?;
        let now = self.server_time().await?;
        let time = |f: &HashMap<String, String>, name: &str| {
            UNIX_EPOCH
                + Duration::from_millis(f.get(name).and_then(|v| v.parse().ok()).unwrap_or(0))
        };
        Ok(ids
            .into_iter()
            .zip(records)
            .filter(|(_, f)| {
                f.get("expires")
                    .and_then(|e| e.parse::<u64>().ok())
                    .is_some_and(|e| e >= now)
            })
            .map(|(id, f)| WorkerInfo {
                host: f.get("host").cloned().unwrap_or_default(),
                pid: f.get("pid").and_then(|p| p.parse().ok()).unwrap_or(0),
                queues: f
                    .get("queues")
                    .map(|q| q.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
                started: time(&f, "started"),
                heartbeat: time(&f, "beat"),
                id,
            })
            .collect())
    }

    /// Registers or refreshes worker `id`'s heartbeat; the record lives `ttl`.
    pub(crate) async fn beat(
        &self,
        id: &str,
        ttl: Duration,
        host: &str,
        queues: &str,
    ) -> Result<()> {
        let _: i64 = heartbeat(self.keys(), self.key_prefix(), id, ttl, host, queues)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Removes worker `id` from the registry (on a clean shutdown).
    pub(crate) async fn unregister(&self, id: &str) -> Result<()> {
        let _: i64 = self
            .call(&UNREGISTER)
            .arg(id)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }
}

/// This machine's host name, as the registry shows it.
pub(crate) fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The heartbeat of worker `id` in the queue of `keys` and `prefix`: the record lives `ttl`;
/// its times are the server's.
pub(crate) fn heartbeat(
    keys: &[String],
    prefix: &str,
    id: &str,
    ttl: Duration,
    host: &str,
    queues: &str,
) -> crate::scripts::Call {
    let mut invocation = invocation(&HEARTBEAT, keys, prefix);
    invocation
        .arg(id)
        .arg(millis(ttl))
        .arg("host")
        .arg(host)
        .arg("pid")
        .arg(std::process::id())
        .arg("queues")
        .arg(queues);
    invocation
}
