//! A Redis key prefix of the test's own, on the shared server.

use std::time::Duration;

use redis::Commands;
use redis::aio::ConnectionManager;

use crate::Unavailable;
use crate::names::unique;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// A key prefix for one test on the Redis at `REDIS_URL`; every key under it is deleted when
/// this value is dropped.
///
/// ```no_run
/// # async fn demo() {
/// use redis::AsyncCommands;
///
/// let redis = geostack_testkit::TestRedis::new().await;
/// let mut conn = redis.connection();
/// let () = conn.set(redis.key("k"), "v").await.unwrap();
/// # }
/// ```
pub struct TestRedis {
    client: redis::Client,
    prefix: String,
    conn: ConnectionManager,
}

impl TestRedis {
    /// Connects to `REDIS_URL` and picks a fresh prefix.
    ///
    /// # Panics
    ///
    /// When Redis is unreachable, with a message that names the command that starts it.
    pub async fn new() -> Self {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        match Self::connect(&url).await {
            Ok(redis) => redis,
            Err(e) => panic!("{e}"),
        }
    }

    /// Connects to the Redis at `url` and picks a fresh prefix.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, Unavailable> {
        let unavailable = |e: redis::RedisError| Unavailable::new("Redis", e);
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let mut conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unavailable)?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            client,
            prefix: format!("{}:", unique("gs_test")),
            conn,
        })
    }

    /// The prefix every key of this test starts with, ending in `:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` under this test's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A clone of the test's connection manager (cheap: it shares one connection).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The client, to open connections of other kinds (pub/sub, blocking).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // The synchronous client needs no runtime, so this works wherever the value drops.
        let Ok(mut conn) = self
            .client
            .get_connection_with_timeout(Duration::from_secs(2))
        else {
            return;
        };
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = match conn.scan_match::<_, String>(&pattern) {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(chunk).query(&mut conn);
        }
    }
}
