//! Tile caches (in process and in real Redis), ETags and single-flight.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use geostack_testkit::TestRedis;
use geostack_tiles::{
    CachedTile, Error, MemoryTileCache, RedisTileCache, SingleFlight, TileCache, TileCoord, TileKey,
};

fn key(source: &str, z: u8, x: u32, y: u32) -> TileKey {
    TileKey::new(source, TileCoord::new_checked(z, x, y).unwrap())
}

/// What every cache must do: keep tiles with their ETag, and forget exactly the tiles of an
/// invalidated table.
async fn behaves(cache: &dyn TileCache) {
    let (a, b, c) = (key("m", 0, 0, 0), key("m", 1, 0, 0), key("n", 1, 1, 1));
    let tile = CachedTile::new(vec![0x1a, 0x02, 0x78, 0x02]);
    assert_eq!(cache.get(&a).await.unwrap(), None);
    cache
        .put(&a, &tile, &["public.roads".into(), "public.places".into()])
        .await
        .unwrap();
    cache
        .put(&b, &CachedTile::new(vec![]), &["public.places".into()])
        .await
        .unwrap();
    cache
        .put(&c, &CachedTile::new(vec![9]), &["public.rivers".into()])
        .await
        .unwrap();

    let got = cache.get(&a).await.unwrap().unwrap();
    assert_eq!(got, tile);
    assert_eq!(got.etag(), tile.etag());
    assert!(
        cache.get(&b).await.unwrap().unwrap().is_empty(),
        "empty tiles are cached as empty"
    );

    assert_eq!(cache.invalidate_table("public.places").await.unwrap(), 2);
    assert_eq!(cache.get(&a).await.unwrap(), None);
    assert_eq!(cache.get(&b).await.unwrap(), None);
    assert!(
        cache.get(&c).await.unwrap().is_some(),
        "another table's tile survives"
    );
    assert_eq!(cache.invalidate_table("public.places").await.unwrap(), 0);
    assert_eq!(
        cache.invalidate_table("public.roads").await.unwrap(),
        0,
        "a already gone"
    );
}

#[tokio::test]
async fn the_memory_cache_keeps_tags_bounds_and_ttl() {
    behaves(&MemoryTileCache::new(1 << 20, Duration::from_secs(60))).await;

    // Bounded by bytes: 200 tiles of 10 KB do not fit in 256 KB.
    let small = MemoryTileCache::new(256 << 10, Duration::from_secs(60));
    for x in 0..200u32 {
        small
            .put(&key("s", 8, x, 0), &CachedTile::new(vec![7; 10_000]), &[])
            .await
            .unwrap();
    }
    let (n, weight) = (small.len(), small.weight());
    assert!(weight <= 256 << 10, "{weight} bytes held");
    assert!((10..=25).contains(&n), "{n} tiles held");
    // A tile asked for often stays while a crawl passes through every other tile once.
    let hot = key("s", 8, 255, 255);
    small
        .put(&hot, &CachedTile::new(vec![1; 10_000]), &[])
        .await
        .unwrap();
    for round in 0..3u32 {
        for _ in 0..5 {
            assert!(small.get(&hot).await.unwrap().is_some(), "round {round}");
        }
        for x in 0..100u32 {
            let k = key("crawl", 8, x, round);
            small
                .put(&k, &CachedTile::new(vec![2; 10_000]), &[])
                .await
                .unwrap();
        }
    }
    assert!(
        small.get(&hot).await.unwrap().is_some(),
        "the hot tile stays"
    );

    let brief = MemoryTileCache::new(1 << 20, Duration::from_millis(50));
    brief
        .put(&key("b", 0, 0, 0), &CachedTile::new(vec![1]), &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(brief.get(&key("b", 0, 0, 0)).await.unwrap().is_none());
}

#[tokio::test]
async fn the_memory_cache_s_tags_follow_evictions_and_replacements() {
    let cache = MemoryTileCache::new(1 << 20, Duration::from_secs(60));
    let k = key("t", 1, 0, 0);
    cache
        .put(&k, &CachedTile::new(vec![1]), &["public.a".into()])
        .await
        .unwrap();
    // Replaced by a tile of another table: the old tag no longer reaches it, the new one does.
    cache
        .put(&k, &CachedTile::new(vec![2]), &["public.b".into()])
        .await
        .unwrap();
    assert_eq!(cache.invalidate_table("public.a").await.unwrap(), 0);
    assert!(cache.get(&k).await.unwrap().is_some());
    assert_eq!(cache.invalidate_table("public.b").await.unwrap(), 1);
    assert!(cache.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn the_redis_cache_is_shared_between_processes() {
    let redis = TestRedis::new().await;
    let one = RedisTileCache::new(redis.connection(), redis.prefix(), Duration::from_secs(60));
    behaves(&one).await;
    // A second cache (another process) sees what the first put, and its invalidations.
    let two = RedisTileCache::new(redis.connection(), redis.prefix(), Duration::from_secs(60));
    let k = key("shared", 3, 1, 2);
    one.put(&k, &CachedTile::new(vec![4, 2]), &["public.t".into()])
        .await
        .unwrap();
    assert_eq!(two.get(&k).await.unwrap().unwrap().bytes(), [4, 2]);
    assert_eq!(two.invalidate_table("public.t").await.unwrap(), 1);
    assert!(one.get(&k).await.unwrap().is_none());
    // Tiles expire with their TTL.
    let brief = RedisTileCache::new(
        redis.connection(),
        redis.prefix(),
        Duration::from_millis(50),
    );
    brief.put(&k, &CachedTile::new(vec![1]), &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(one.get(&k).await.unwrap().is_none());
}

#[test]
fn etags_follow_the_content_and_if_none_match_rules() {
    let a = CachedTile::new(vec![1, 2, 3]);
    assert_eq!(a.etag(), CachedTile::new(vec![1, 2, 3]).etag());
    assert_ne!(a.etag(), CachedTile::new(vec![1, 2, 4]).etag());
    assert!(a.matches(a.etag()));
    assert!(a.matches(&format!("W/{}", a.etag())));
    assert!(a.matches("*"));
    assert!(a.matches(&format!("\"other\", {}", a.etag())));
    assert!(!a.matches("\"other\""));
}

#[tokio::test]
async fn identical_concurrent_requests_render_once() {
    let flights = Arc::new(SingleFlight::default());
    let renders = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (flights, renders) = (Arc::clone(&flights), Arc::clone(&renders));
        tasks.push(tokio::spawn(async move {
            flights
                .run(&key("f", 0, 0, 0), || async {
                    renders.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(CachedTile::new(vec![7]))
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().bytes(), [7]);
    }
    assert_eq!(renders.load(Ordering::SeqCst), 1);

    // Once done, the next request renders again; other keys never wait for each other.
    flights
        .run(&key("f", 0, 0, 0), || async {
            Ok(CachedTile::new(vec![8]))
        })
        .await
        .unwrap();
    flights
        .run(&key("g", 0, 0, 0), || async {
            Ok(CachedTile::new(vec![9]))
        })
        .await
        .unwrap();

    // A failure reaches the waiters as Coalesced, the renderer as itself.
    let first = {
        let flights = Arc::clone(&flights);
        tokio::spawn(async move {
            flights
                .run(&key("e", 0, 0, 0), || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(Error::Encode("boom".into()))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiter = flights
        .run(&key("e", 0, 0, 0), || async { Ok(CachedTile::new(vec![])) })
        .await;
    assert!(
        matches!(waiter, Err(Error::Coalesced(ref m)) if m.contains("boom")),
        "{waiter:?}"
    );
    assert!(matches!(first.await.unwrap(), Err(Error::Encode(_))));
}
