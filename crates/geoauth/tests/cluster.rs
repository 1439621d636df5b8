//! geoauth on a real Redis Cluster of three masters: each user's keys share one hash slot, so
//! every multi-key script runs; invalidations published on one node reach verifiers everywhere.

use std::time::{Duration, Instant, SystemTime};

use geoauth::{
    Channel, CredentialSource, Credentials, DbRole, Error, KeySource, KeyStore, NewKey, Quota,
    RateLimiter, RateSubject, Secret, SessionConfig, SessionStore, UserName, Verifier,
    VerifierConfig,
};
use geostack_testkit::RedisCluster;

#[tokio::test]
async fn keys_sessions_and_rate_limits_work_on_a_cluster() {
    let cluster = RedisCluster::start();
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let conn = client.get_async_connection().await.unwrap();

    let store = KeyStore::new(conn.clone());
    let role = || DbRole::new("r", Secret::new("pw"));
    // Users whose tags land on different masters.
    let users: Vec<UserName> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|u| UserName::new(*u).unwrap())
        .collect();
    for user in &users {
        let (key, token) = store.create(user, NewKey::master(role())).await.unwrap();
        assert_eq!(
            store.lookup(user, &token).await.unwrap().unwrap().id,
            key.id
        );
        let new = store
            .regenerate(user, &key.id, SystemTime::now())
            .await
            .unwrap()
            .unwrap();
        assert!(store.lookup(user, &token).await.unwrap().is_none());
        assert!(store.lookup(user, &new).await.unwrap().is_some());
        assert_eq!(store.list(user).await.unwrap().len(), 1);
        assert!(store.revoke(user, &key.id).await.unwrap());
        assert!(store.lookup(user, &new).await.unwrap().is_none());
    }

    let sessions = SessionStore::new(conn.clone(), SessionConfig::default());
    let id = sessions
        .create(&users[0], Channel::Web, serde_json::Map::new())
        .await
        .unwrap();
    let id = sessions
        .rotate(&users[0], &id, Channel::Web, None)
        .await
        .unwrap();
    sessions.load(&users[0], &id, Channel::Web).await.unwrap();
    sessions.revoke_all(&users[0]).await.unwrap();
    assert!(matches!(
        sessions.load(&users[0], &id, Channel::Web).await,
        Err(Error::InvalidSession)
    ));

    let limiter = RateLimiter::new(conn.clone());
    let quota = Quota::new(2, 1, Duration::from_secs(3600)).unwrap();
    let subject = RateSubject::user(&users[1], "sql").unwrap();
    let allowed: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(limiter.check(&subject, quota).await.unwrap().allowed);
        }
        v
    };
    assert_eq!(allowed, [true, true, false]);
}

#[tokio::test]
async fn a_revocation_reaches_a_cached_verifier_on_another_node() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let client = redis::cluster::ClusterClient::new(urls.clone()).unwrap();
    let store = KeyStore::new(client.get_async_connection().await.unwrap());
    let user = UserName::new("erin").unwrap();
    let (key, token) = store
        .create(&user, NewKey::master(DbRole::new("r", Secret::new("pw"))))
        .await
        .unwrap();
    assert!(store.invalidation_channel().is_some());

    // The verifier subscribes on the last node; the record lives wherever its slot is.
    let verifier_store = KeyStore::new(client.get_async_connection().await.unwrap());
    let subscriber = redis::Client::open(urls[2].as_str()).unwrap();
    let verifier =
        Verifier::with_cache(verifier_store, subscriber, VerifierConfig::default()).await;
    assert!(verifier.is_cache_live());
    let creds = Credentials::token(token, CredentialSource::Bearer);
    verifier.verify(&user, &creds).await.unwrap();

    let start = Instant::now();
    store.revoke(&user, &key.id).await.unwrap();
    while verifier.verify(&user, &creds).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "still accepted after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
