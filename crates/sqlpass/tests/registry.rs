//! The pool registry: one pool per login role, bounded in total, against real PostgreSQL.

mod common;

use std::time::Duration;

use sqlpass::{Options, PoolRegistry, RegistryConfig};

#[tokio::test]
async fn each_role_gets_a_pool_that_logged_in_as_it() {
    let env = common::env().await;
    let other = env.db.create_role().await;
    let registry = PoolRegistry::new(env.db.connect_options(), RegistryConfig::default());

    for role in [&env.role, &other] {
        let pool = registry.pool(role.name(), role.password()).unwrap();
        let doc = common::json(
            &pool,
            "select current_user::text as who, session_user::text as login",
        )
        .await;
        assert_eq!(
            doc["rows"][0],
            serde_json::json!({"who": role.name(), "login": role.name()})
        );
    }
    assert_eq!(registry.len(), 2);
    // The same role again: the same pool.
    let a = registry.pool(env.role.name(), env.role.password()).unwrap();
    let b = registry.pool(env.role.name(), env.role.password()).unwrap();
    assert_eq!(registry.len(), 2);
    let _ = common::text(&a, "select 1", Options::default()).await;
    assert_eq!(b.size(), a.size());
    // A changed password replaces the role's pool; the old one is closed.
    let replaced = registry.pool(env.role.name(), "a new password").unwrap();
    assert_eq!(registry.len(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !a.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old pool was not closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!replaced.is_closed());
}

#[tokio::test]
async fn the_total_is_bounded_and_idle_pools_make_room() {
    let env = common::env().await;
    let roles = [
        env.db.create_role().await,
        env.db.create_role().await,
        env.db.create_role().await,
    ];
    let config = RegistryConfig::default()
        .per_role(1)
        .max_total(2)
        .acquire_timeout(Duration::from_secs(2));
    let registry = PoolRegistry::new(env.db.connect_options(), config);

    let first = registry.pool(roles[0].name(), roles[0].password()).unwrap();
    let _held = first.acquire().await.unwrap();
    let second = registry.pool(roles[1].name(), roles[1].password()).unwrap();
    let _held_too = second.acquire().await.unwrap();
    // Both pools hold a connection in use: no room for a third role.
    let err = registry
        .pool(roles[2].name(), roles[2].password())
        .err()
        .unwrap();
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(err.status(), 503);

    // Once the second is idle (a dropped connection returns to its pool in the background), it
    // is closed to make room.
    drop(_held_too);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let third = loop {
        match registry.pool(roles[2].name(), roles[2].password()) {
            Ok(pool) => break pool,
            Err(e) => assert!(std::time::Instant::now() < deadline, "no room made: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The least recently used idle pool was the one closed.
    while !second.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle pool was not closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!first.is_closed(), "a pool in use was closed");
    assert_eq!(registry.len(), 2);
    let doc = common::json(&third, "select current_user::text as who").await;
    assert_eq!(doc["rows"][0]["who"], roles[2].name());
}
