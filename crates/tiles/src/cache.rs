//! Tile caching: ETags, empty tiles, cache tags per table, an in-process cache, and
//! single-flight for identical concurrent requests.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::{Error, Result, TileCoord};

/// A tile ready to serve: its bytes and its ETag (a hash of the content).
///
/// ```
/// let tile = geostack_tiles::CachedTile::new(vec![0x1a, 0x00]);
/// assert!(tile.etag().starts_with('"') && tile.etag().len() == 34);
/// assert!(tile.matches(&format!("W/\"x\", {}", tile.etag())));
/// assert!(geostack_tiles::CachedTile::new(vec![]).is_empty()); // answer 204
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedTile {
    bytes: Arc<[u8]>,
    etag: String,
}

impl CachedTile {
    /// A tile and its ETag: `"<32 hex characters of SHA-256>"`.
    pub fn new(bytes: Vec<u8>) -> Self {
        let digest = Sha256::digest(&bytes);
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            bytes: bytes.into(),
            etag: format!("\"{hex}\""),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn with_etag(bytes: Vec<u8>, etag: String) -> Self {
        Self {
            bytes: bytes.into(),
            etag,
        }
    }

    /// The encoded tile.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The ETag, quoted.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// Whether the tile has no features: answer 204 No Content.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether an `If-None-Match` value names this tile (`*`, or a list with its ETag, weak or
    /// not): answer 304 Not Modified.
    pub fn matches(&self, if_none_match: &str) -> bool {
        if_none_match
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag)
    }
}

/// What a cached tile is: its source (a table, a map-config token) and its coordinate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TileKey {
    source: String,
    coord: TileCoord,
}

impl TileKey {
    /// The tile `coord` of `source`.
    pub fn new(source: impl Into<String>, coord: TileCoord) -> Self {
        Self {
            source: source.into(),
            coord,
        }
    }
}

impl fmt::Display for TileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.source, self.coord)
    }
}

/// A tile cache. Tiles are tagged with the tables they were made from, so that a change to a
/// table invalidates exactly its tiles.
#[async_trait]
pub trait TileCache: Send + Sync {
    /// The cached tile, if any.
    ///
    /// # Errors
    ///
    /// Cache-specific ([`Error::Cache`] for Redis).
    async fn get(&self, key: &TileKey) -> Result<Option<CachedTile>>;

    /// Caches a tile made from `tables`.
    ///
    /// # Errors
    ///
    /// As [`TileCache::get`].
    async fn put(&self, key: &TileKey, tile: &CachedTile, tables: &[String]) -> Result<()>;

    /// Forgets every tile made from `table`; returns how many.
    ///
    /// # Errors
    ///
    /// As [`TileCache::get`].
    async fn invalidate_table(&self, table: &str) -> Result<u64>;
}

/// An in-process cache, bounded in tiles and time.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use geostack_tiles::{CachedTile, MemoryTileCache, TileCache, TileCoord, TileKey};
/// use std::time::Duration;
///
/// let cache = MemoryTileCache::new(10_000, Duration::from_secs(300));
/// let key = TileKey::new("public.countries", TileCoord::new_checked(0, 0, 0).unwrap());
/// cache.put(&key, &CachedTile::new(vec![1, 2]), &["public.countries".into()]).await.unwrap();
/// assert!(cache.get(&key).await.unwrap().is_some());
/// assert_eq!(cache.invalidate_table("public.countries").await.unwrap(), 1);
/// assert!(cache.get(&key).await.unwrap().is_none());
/// # });
/// ```
pub struct MemoryTileCache {
    inner: Mutex<MemoryInner>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Default)]
struct MemoryInner {
    tiles: HashMap<TileKey, (CachedTile, Instant, Vec<String>)>,
    by_table: HashMap<String, HashSet<TileKey>>,
}

impl MemoryTileCache {
    /// At most `capacity` tiles, each kept `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(MemoryInner::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The number of tiles held.
    pub fn len(&self) -> usize {
        self.lock().tiles.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MemoryInner {
    fn remove(&mut self, key: &TileKey) -> bool {
        match self.tiles.remove(key) {
            Some((_, _, tables)) => {
                for t in tables {
                    if let Some(keys) = self.by_table.get_mut(&t) {
                        keys.remove(key);
                    }
                }
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl TileCache for MemoryTileCache {
    async fn get(&self, key: &TileKey) -> Result<Option<CachedTile>> {
        let mut inner = self.lock();
        match inner.tiles.get(key) {
            Some((tile, at, _)) if at.elapsed() < self.ttl => Ok(Some(tile.clone())),
            Some(_) => {
                inner.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, key: &TileKey, tile: &CachedTile, tables: &[String]) -> Result<()> {
        let mut inner = self.lock();
        inner.remove(key);
        if inner.tiles.len() >= self.capacity {
            // Expired first; then the oldest.
            let ttl = self.ttl;
            let stale: Vec<TileKey> = inner
                .tiles
                .iter()
                .filter(|(_, (_, at, _))| at.elapsed() >= ttl)
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                inner.remove(&k);
            }
            while inner.tiles.len() >= self.capacity {
                let Some(oldest) = inner
                    .tiles
                    .iter()
                    .min_by_key(|(_, (_, at, _))| *at)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                inner.remove(&oldest);
            }
        }
        for t in tables {
            inner
                .by_table
                .entry(t.clone())
                .or_default()
                .insert(key.clone());
        }
        inner
            .tiles
            .insert(key.clone(), (tile.clone(), Instant::now(), tables.to_vec()));
        Ok(())
    }

    async fn invalidate_table(&self, table: &str) -> Result<u64> {
        let mut inner = self.lock();
        let keys: Vec<TileKey> = inner
            .by_table
            .remove(table)
            .map(|k| k.into_iter().collect())
            .unwrap_or_default();
        Ok(keys.iter().filter(|k| inner.remove(k)).count() as u64)
    }
}

/// Identical concurrent requests share one rendering: the first renders, the others wait for
/// its result.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use geostack_tiles::{CachedTile, SingleFlight, TileCoord, TileKey};
///
/// let flights = SingleFlight::default();
/// let key = TileKey::new("t", TileCoord::new_checked(0, 0, 0).unwrap());
/// let tile = flights.run(&key, || async { Ok(CachedTile::new(vec![1])) }).await.unwrap();
/// assert_eq!(tile.bytes(), [1]);
/// # });
/// ```
#[derive(Default)]
pub struct SingleFlight {
    inflight: Mutex<HashMap<TileKey, Flight>>,
}

/// One rendering under way: its result once there, or its error's message.
type Flight = Arc<OnceCell<Result<CachedTile, String>>>;

impl SingleFlight {
    /// Runs `render` for `key`, unless the same key is being rendered already, in which case
    /// waits for that result.
    ///
    /// # Errors
    ///
    /// The renderer's error; [`Error::Coalesced`] for the waiters when it failed.
    pub async fn run<F, Fut>(&self, key: &TileKey, render: F) -> Result<CachedTile>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedTile>>,
    {
        let (cell, leader) = {
            let mut map = self
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(key) {
                Some(cell) => (Arc::clone(cell), false),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    map.insert(key.clone(), Arc::clone(&cell));
                    (cell, true)
                }
            }
        };
        if !leader {
            // Waits for the leader's rendering; renders nothing itself (were the leader dropped
            // midway, the first waiter here would get this error instead).
            let shared = cell
                .get_or_init(|| async { Err("the request rendering it was dropped".to_owned()) })
                .await;
            return shared.clone().map_err(Error::Coalesced);
        }
        // The leader removes the entry even when its future is dropped midway.
        struct Done<'a>(&'a SingleFlight, &'a TileKey);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let mut map = self
                    .0
                    .inflight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                map.remove(self.1);
            }
        }
        let _done = Done(self, key);
        // Rendering inside the cell's initializer is what makes the waiters wait for it.
        let mut own_error = None;
        let shared = cell
            .get_or_init(|| async {
                match render().await {
                    Ok(tile) => Ok(tile),
                    Err(e) => {
                        let message = e.to_string();
                        own_error = Some(e);
                        Err(message)
                    }
                }
            })
            .await;
        match own_error {
            Some(e) => Err(e),
            None => shared.clone().map_err(Error::Coalesced),
        }
    }
}
