//! A local Redis Cluster of three masters, for tests that must run against a cluster.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{RedisServer, Unavailable};

/// Three `redis-server` processes in cluster mode on free ports, joined into one cluster with
/// the 16 384 slots split between them (no replicas), killed when dropped.
///
/// ```no_run
/// # async fn demo() {
/// let cluster = geostack_testkit::RedisCluster::start();
/// let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
/// let mut conn = client.get_async_connection().await.unwrap();
/// # }
/// ```
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes and creates the cluster; waits until every slot is served.
    ///
    /// # Panics
    ///
    /// When a node does not start or the cluster does not form, naming the command that
    /// installs Redis.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output();
        match created {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "{}",
                Unavailable::new(
                    "a Redis Cluster",
                    String::from_utf8_lossy(&out.stdout).trim().to_owned()
                )
            ),
            Err(e) => panic!("{}", Unavailable::new("redis-cli", e)),
        }
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.is_ok() {
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    Unavailable::new(
                        "a Redis Cluster",
                        "the cluster did not reach state ok in 10 s"
                    )
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The nodes' URLs, `redis://127.0.0.1:<port>`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn is_ok(&self) -> bool {
        self.nodes.iter().all(|n| {
            redis::Client::open(n.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                .is_ok_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
        })
    }
}
