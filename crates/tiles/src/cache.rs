//! Tile caching: ETags, empty tiles, cache tags per table, an in-process cache, and
//! single-flight for identical concurrent requests.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
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
    /// Shared, so an answer sends them without copying.
    bytes: Bytes,
    /// The quoted ETag's text (ASCII), shared as `bytes` are.
    etag: Bytes,
}

impl CachedTile {
    /// A tile and its ETag: `"<32 hex characters of SHA-256>"`.
    pub fn new(bytes: Vec<u8>) -> Self {
        let digest = Sha256::digest(&bytes);
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            bytes: bytes.into(),
            etag: format!("\"{hex}\"").into(),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn with_etag(bytes: Vec<u8>, etag: String) -> Self {
        Self {
            bytes: bytes.into(),
            etag: etag.into(),
        }
    }

    /// The encoded tile.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded tile, shared (a clone copies nothing).
    pub fn shared_bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The ETag, quoted.
    pub fn etag(&self) -> &str {
        // Made from a `String` (ours, or one read back as text from Redis).
        std::str::from_utf8(&self.etag).unwrap_or_default()
    }

    /// The ETag, quoted, shared (a clone copies nothing).
    pub fn shared_etag(&self) -> Bytes {
        self.etag.clone()
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

/// An in-process cache, bounded in bytes and time: tiles weigh their bytes (and their key's and
/// tags'), each is kept `ttl`, and when the cache is full the tiles seldom asked for leave first
/// (moka's TinyLFU: a crawl through every tile once does not push out the tiles in demand).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use geostack_tiles::{CachedTile, MemoryTileCache, TileCache, TileCoord, TileKey};
/// use std::time::Duration;
///
/// let cache = MemoryTileCache::new(64 << 20, Duration::from_secs(300));
/// let key = TileKey::new("public.countries", TileCoord::new_checked(0, 0, 0).unwrap());
/// cache.put(&key, &CachedTile::new(vec![1, 2]), &["public.countries".into()]).await.unwrap();
/// assert!(cache.get(&key).await.unwrap().is_some());
/// assert_eq!(cache.invalidate_table("public.countries").await.unwrap(), 1);
/// assert!(cache.get(&key).await.unwrap().is_none());
/// # });
/// ```
pub struct MemoryTileCache {
    tiles: moka::sync::Cache<TileKey, Kept>,
    /// Per table, the keys of the tiles made from it, for [`TileCache::invalidate_table`].
    by_table: Arc<Mutex<HashMap<String, HashSet<TileKey>>>>,
}

/// A kept tile and the tables it was made from.
#[derive(Clone)]
struct Kept {
    tile: CachedTile,
    tables: Arc<[String]>,
}

impl MemoryTileCache {
    /// At most `bytes` of tiles, each kept `ttl`.
    pub fn new(bytes: u64, ttl: Duration) -> Self {
        let by_table: Arc<Mutex<HashMap<String, HashSet<TileKey>>>> = Arc::default();
        let index = Arc::clone(&by_table);
        let tiles = moka::sync::Cache::builder()
            .max_capacity(bytes)
            .weigher(|key: &TileKey, kept: &Kept| {
                let tags: usize = kept.tables.iter().map(|t| t.len() + 16).sum();
                let weight = kept.tile.bytes().len() + key.source.len() + tags + 96;
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .eviction_listener(move |key: Arc<TileKey>, kept: Kept, cause| {
                // A replaced tile's key is left indexed under its old tables (its put indexes
                // the new ones after): invalidation checks a key's tables before removing.
                if cause != moka::notification::RemovalCause::Replaced {
                    let mut index = lock(&index);
                    for t in kept.tables.iter() {
                        if let Some(keys) = index.get_mut(t) {
                            keys.remove(&*key);
                            if keys.is_empty() {
                                index.remove(t);
                            }
                        }
                    }
                }
            })
            .build();
        Self { tiles, by_table }
    }

    /// The number of tiles held (after pending evictions).
    pub fn len(&self) -> usize {
        self.tiles.run_pending_tasks();
        usize::try_from(self.tiles.entry_count()).unwrap_or(usize::MAX)
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every tile (when changes may have gone unheard: any table may have changed).
    pub fn clear(&self) {
        self.tiles.invalidate_all();
        lock(&self.by_table).clear();
    }

    /// The bytes the tiles held weigh (after pending evictions).
    pub fn weight(&self) -> u64 {
        self.tiles.run_pending_tasks();
        self.tiles.weighted_size()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl TileCache for MemoryTileCache {
    async fn get(&self, key: &TileKey) -> Result<Option<CachedTile>> {
        Ok(self.tiles.get(key).map(|kept| kept.tile))
    }

    async fn put(&self, key: &TileKey, tile: &CachedTile, tables: &[String]) -> Result<()> {
        self.tiles.insert(
            key.clone(),
            Kept {
                tile: tile.clone(),
                tables: tables.into(),
            },
        );
        let mut index = lock(&self.by_table);
        for t in tables {
            index.entry(t.clone()).or_default().insert(key.clone());
        }
        Ok(())
    }

    async fn invalidate_table(&self, table: &str) -> Result<u64> {
        let keys = lock(&self.by_table).remove(table).unwrap_or_default();
        let mut removed = 0;
        for k in keys {
            // The key may since hold a tile of other tables (a replacement): that one stays.
            let made_from_table = self
                .tiles
                .get(&k)
                .is_some_and(|kept| kept.tables.iter().any(|t| t == table));
            if made_from_table {
                self.tiles.invalidate(&k);
                removed += 1;
            }
        }
        Ok(removed)
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
