//! A tile cache in Redis.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager};

use crate::{CachedTile, Error, Result, TileCache, TileKey};

/// Tiles in Redis, shared by every process: `<prefix>tile:<source>/<z>/<x>/<y>` holds the
/// ETag and the bytes with a TTL; `<prefix>table:<table>` lists the tiles made from a table.
///
/// ```no_run
/// # async fn demo() -> geostack_tiles::Result<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
/// let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
/// let cache = geostack_tiles::RedisTileCache::new(conn, "tiles:", std::time::Duration::from_secs(3600));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTileCache<C = ConnectionManager> {
    conn: C,
    prefix: String,
    ttl: Duration,
}

impl<C> RedisTileCache<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A cache on `conn` under `prefix`, tiles kept `ttl`.
    pub fn new(conn: C, prefix: impl Into<String>, ttl: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            ttl,
        }
    }

    fn tile_key(&self, key: &TileKey) -> String {
        format!("{}tile:{key}", self.prefix)
    }

    fn table_key(&self, table: &str) -> String {
        format!("{}table:{table}", self.prefix)
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

#[async_trait]
impl<C> TileCache for RedisTileCache<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn get(&self, key: &TileKey) -> Result<Option<CachedTile>> {
        let (etag, bytes): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.tile_key(key))
            .arg("etag")
            .arg("bytes")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::Cache)?;
        Ok(match (etag, bytes) {
            (Some(etag), Some(bytes)) => Some(CachedTile::with_etag(bytes, etag)),
            _ => None,
        })
    }

    async fn put(&self, key: &TileKey, tile: &CachedTile, tables: &[String]) -> Result<()> {
        let k = self.tile_key(key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &k,
                &[("etag", tile.etag().as_bytes()), ("bytes", tile.bytes())],
            )
            .ignore()
            .cmd("PEXPIRE")
            .arg(&k)
            .arg(self.ms())
            .ignore();
        for t in tables {
            // The tag list outlives its tiles a little, so no live tile is ever missing from it.
            pipe.cmd("SADD").arg(self.table_key(t)).arg(&k).ignore();
            pipe.cmd("PEXPIRE")
                .arg(self.table_key(t))
                .arg(self.ms().saturating_mul(2))
                .ignore();
        }
        let () = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::Cache)?;
        Ok(())
    }

    async fn invalidate_table(&self, table: &str) -> Result<u64> {
        let tag = self.table_key(table);
        let keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&tag)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::Cache)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in &keys {
            pipe.cmd("UNLINK").arg(k);
        }
        pipe.cmd("SREM").arg(&tag).arg(&keys).ignore();
        if keys.is_empty() {
            return Ok(0);
        }
        let removed: Vec<u64> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(Error::Cache)?;
        Ok(removed.iter().sum())
    }
}
