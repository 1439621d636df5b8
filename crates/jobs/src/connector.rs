//! The connections a worker blocks on: one per queue, for `BLPOP` on its signal list, shared
//! with no other command (a blocked connection answers nothing else).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionLike;

/// Opens a worker's blocking connections: [`redis::Client`] for a single Redis,
/// [`redis::cluster::ClusterClient`] for a Redis Cluster.
///
/// ```no_run
/// # async fn demo() -> geostack_jobs::Result<()> {
/// use geostack_jobs::{Queue, QueueName, Worker, WorkerConfig};
///
/// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000"])?;
/// let queue = Queue::new(client.get_async_connection().await?, QueueName::new("imports")?);
/// let worker = Worker::new(queue, client, WorkerConfig::default());
/// # let _ = worker; Ok(()) }
/// ```
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The connection.
    type Connection: ConnectionLike + Send + 'static;

    /// A connection shared by many callers (reconnecting by itself), for queues.
    type Shared: ConnectionLike + Clone + Send + Sync + 'static;

    /// A new connection whose commands may wait well over a second for their answer.
    async fn blocking(&self) -> redis::RedisResult<Self::Connection>;

    /// A new shared connection.
    async fn shared(&self) -> redis::RedisResult<Self::Shared>;
}

#[async_trait]
impl Connector for redis::Client {
    type Connection = redis::aio::MultiplexedConnection;
    type Shared = redis::aio::ConnectionManager;

    async fn blocking(&self) -> redis::RedisResult<Self::Connection> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        self.get_multiplexed_async_connection_with_config(&config)
            .await
    }

    async fn shared(&self) -> redis::RedisResult<Self::Shared> {
        redis::aio::ConnectionManager::new(self.clone()).await
    }
}

#[async_trait]
impl Connector for redis::cluster::ClusterClient {
    type Connection = redis::cluster_async::ClusterConnection;
    type Shared = redis::cluster_async::ClusterConnection;

    async fn blocking(&self) -> redis::RedisResult<Self::Connection> {
        let config =
            redis::cluster::ClusterConfig::new().set_response_timeout(Duration::from_secs(60));
        self.get_async_connection_with_config(config).await
    }

    async fn shared(&self) -> redis::RedisResult<Self::Shared> {
        self.get_async_connection().await
    }
}
