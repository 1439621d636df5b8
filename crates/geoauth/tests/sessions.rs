//! Sessions against real Redis: channels, idle and absolute expiry, rotation, revoke-all.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::time::Duration;

use geoauth::{Channel, Error, KeyPrefix, SessionConfig, SessionId, SessionStore, UserName};
use geostack_testkit::TestRedis;

fn store(redis: &TestRedis, config: SessionConfig) -> SessionStore {
    SessionStore::with_prefix(
        redis.connection(),
        KeyPrefix::new(redis.prefix()).unwrap(),
        config,
    )
}

fn data(level: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    map.insert("level".into(), level.into());
    map
}

fn alice() -> UserName {
    UserName::new("alice").unwrap()
}

#[tokio::test]
async fn a_session_is_accepted_only_on_its_channel_and_for_its_user() {
    let redis = TestRedis::new().await;
    let sessions = store(&redis, SessionConfig::default());
    let id = sessions
        .create(&alice(), Channel::Web, data("viewer"))
        .await
        .unwrap();
    assert!(id.expose().starts_with("gss_") && id.expose().len() == 42);

    let session = sessions.load(&alice(), &id, Channel::Web).await.unwrap();
    assert_eq!(session.user, alice());
    assert_eq!(session.channel, Channel::Web);
    assert_eq!(session.data, data("viewer"));
    let left = session
        .absolute_expiry
        .duration_since(session.created)
        .unwrap();
    assert_eq!(left, Duration::from_secs(12 * 3600));

    let app = sessions
        .load(&alice(), &id, Channel::App)
        .await
        .unwrap_err();
    assert!(matches!(app, Error::InvalidSession));
    assert_eq!(app.status(), http::StatusCode::UNAUTHORIZED);
    let bob = UserName::new("bob").unwrap();
    assert!(matches!(
        sessions.load(&bob, &id, Channel::Web).await,
        Err(Error::InvalidSession)
    ));
    // Refusing it on the wrong channel did not end it.
    assert!(sessions.load(&alice(), &id, Channel::Web).await.is_ok());
    // Only a digest of the id is in Redis.
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", redis.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| !k.contains(id.expose())));
}

#[tokio::test]
async fn an_idle_session_ends_and_activity_extends_it() {
    let redis = TestRedis::new().await;
    let sessions = store(
        &redis,
        SessionConfig::default().idle(Duration::from_millis(300)),
    );
    let id = sessions
        .create(&alice(), Channel::App, data("a"))
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        sessions.load(&alice(), &id, Channel::App).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(matches!(
        sessions.load(&alice(), &id, Channel::App).await,
        Err(Error::InvalidSession)
    ));
}

#[tokio::test]
async fn an_active_session_still_ends_at_its_absolute_expiry() {
    let redis = TestRedis::new().await;
    let config = SessionConfig::default()
        .idle(Duration::from_secs(60))
        .absolute(Duration::from_millis(400));
    let sessions = store(&redis, config);
    let id = sessions
        .create(&alice(), Channel::Web, data("a"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    sessions.load(&alice(), &id, Channel::Web).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    sessions.load(&alice(), &id, Channel::Web).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        sessions.load(&alice(), &id, Channel::Web).await,
        Err(Error::InvalidSession)
    ));
}

#[tokio::test]
async fn rotation_kills_the_old_id_at_once() {
    let redis = TestRedis::new().await;
    let sessions = store(&redis, SessionConfig::default());
    let old = sessions
        .create(&alice(), Channel::Web, data("viewer"))
        .await
        .unwrap();
    let created = sessions
        .load(&alice(), &old, Channel::Web)
        .await
        .unwrap()
        .created;

    // The wrong channel cannot rotate it.
    assert!(
        sessions
            .rotate(&alice(), &old, Channel::App, None)
            .await
            .is_err()
    );

    let new = sessions
        .rotate(&alice(), &old, Channel::Web, Some(data("admin")))
        .await
        .unwrap();
    assert_ne!(new, old);
    assert!(matches!(
        sessions.load(&alice(), &old, Channel::Web).await,
        Err(Error::InvalidSession)
    ));
    let session = sessions.load(&alice(), &new, Channel::Web).await.unwrap();
    assert_eq!(session.data, data("admin"));
    assert_eq!(
        session.created, created,
        "rotation keeps the absolute lifetime"
    );
    // A dead id cannot be rotated again.
    assert!(matches!(
        sessions.rotate(&alice(), &old, Channel::Web, None).await,
        Err(Error::InvalidSession)
    ));
}

#[tokio::test]
async fn revoke_all_ends_every_session_of_one_user_only() {
    let redis = TestRedis::new().await;
    let sessions = store(&redis, SessionConfig::default());
    let bob = UserName::new("bob").unwrap();
    let mut ids = Vec::new();
    for channel in [Channel::Web, Channel::App, Channel::Web] {
        ids.push((
            channel,
            sessions.create(&alice(), channel, data("a")).await.unwrap(),
        ));
    }
    let bobs = sessions
        .create(&bob, Channel::Web, data("b"))
        .await
        .unwrap();

    let (channel, first) = &ids[0];
    assert!(sessions.revoke(&alice(), first).await.unwrap());
    assert!(sessions.load(&alice(), first, *channel).await.is_err());
    assert!(sessions.load(&alice(), &ids[1].1, ids[1].0).await.is_ok());

    sessions.revoke_all(&alice()).await.unwrap();
    for (channel, id) in &ids {
        assert!(matches!(
            sessions.load(&alice(), id, *channel).await,
            Err(Error::InvalidSession)
        ));
    }
    assert!(sessions.load(&bob, &bobs, Channel::Web).await.is_ok());
}

#[tokio::test]
async fn a_forged_id_is_refused_before_redis() {
    let forged = "gss_0123456789abcdefghijklmnopqrstuv000000";
    assert!(matches!(
        SessionId::parse(forged),
        Err(Error::InvalidSession)
    ));
}
