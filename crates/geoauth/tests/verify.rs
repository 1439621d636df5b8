//! Verification against real Redis: round trips, the cache and its invalidation across
//! processes, and what happens when Redis dies.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::time::{Duration, Instant};

use geoauth::{
    CredentialSource, Credentials, DbRole, Error, KeyStore, NewKey, Secret, UserName, Verifier,
    VerifierConfig,
};
use geostack_testkit::RedisServer;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

fn alice() -> UserName {
    UserName::new("alice").unwrap()
}

fn role() -> DbRole {
    DbRole::new("alice", Secret::new("pw"))
}

/// A connection of its own, with short timeouts so a dead server is noticed quickly.
async fn connection(url: &str) -> ConnectionManager {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(300)))
        .set_response_timeout(Some(Duration::from_millis(300)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100));
    ConnectionManager::new_with_config(redis::Client::open(url).unwrap(), config)
        .await
        .unwrap()
}

/// How many times each command ran since the last `CONFIG RESETSTAT`.
async fn calls(url: &str, command: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

async fn reset_stats(url: &str) {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn uncached_verify_is_one_round_trip_and_cached_verify_none() {
    let server = RedisServer::start();
    let store = KeyStore::new(connection(&server.url()).await);
    let (_, token) = store
        .create(&alice(), NewKey::master(role()))
        .await
        .unwrap();
    let creds = Credentials::token(token, CredentialSource::Bearer);

    let uncached = Verifier::new(store.clone(), VerifierConfig::default());
    uncached.verify(&alice(), &creds).await.unwrap(); // first use writes last-used once
    tokio::time::sleep(Duration::from_millis(50)).await;
    reset_stats(&server.url()).await;
    for _ in 0..10 {
        uncached.verify(&alice(), &creds).await.unwrap();
    }
    assert_eq!(calls(&server.url(), "hgetall").await, 10);
    assert_eq!(
        calls(&server.url(), "evalsha").await,
        0,
        "last-used is throttled"
    );

    let client = redis::Client::open(server.url()).unwrap();
    let cached = Verifier::with_cache(store, client, VerifierConfig::default()).await;
    assert!(cached.is_cache_live());
    cached.verify(&alice(), &creds).await.unwrap();
    reset_stats(&server.url()).await;
    for _ in 0..100 {
        cached.verify(&alice(), &creds).await.unwrap();
    }
    assert_eq!(calls(&server.url(), "hgetall").await, 0);
}

#[tokio::test]
async fn revocation_is_refused_by_every_verifier_within_100ms() {
    let server = RedisServer::start();
    let admin = KeyStore::new(connection(&server.url()).await);
    let (key, token) = admin
        .create(&alice(), NewKey::master(role()))
        .await
        .unwrap();
    let (other, other_token) = admin
        .create(&alice(), NewKey::master(role()))
        .await
        .unwrap();

    // Two independent verifiers, as in two processes: their own connections and caches.
    let config = VerifierConfig::default().cache_ttl(Duration::from_secs(600));
    let mut verifiers = Vec::new();
    for _ in 0..2 {
        let store = KeyStore::new(connection(&server.url()).await);
        let client = redis::Client::open(server.url()).unwrap();
        let verifier = Verifier::with_cache(store, client, config.clone()).await;
        assert!(verifier.is_cache_live());
        verifiers.push(verifier);
    }
    let creds = Credentials::token(token, CredentialSource::Bearer);
    let other_creds = Credentials::token(other_token.clone(), CredentialSource::Bearer);
    for v in &verifiers {
        v.verify(&alice(), &creds).await.unwrap();
        v.verify(&alice(), &other_creds).await.unwrap();
    }
    // Both answer from their caches now: no lookups reach Redis.
    reset_stats(&server.url()).await;
    for v in &verifiers {
        v.verify(&alice(), &creds).await.unwrap();
    }
    assert_eq!(calls(&server.url(), "hgetall").await, 0);

    let start = Instant::now();
    assert!(admin.revoke(&alice(), &key.id).await.unwrap());
    let mut refused = [None, None];
    while refused.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(1) {
        for (i, v) in verifiers.iter().enumerate() {
            if refused[i].is_none()
                && let Err(e) = v.verify(&alice(), &creds).await
            {
                assert!(matches!(e, Error::UnknownKey), "{e}");
                refused[i] = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for (i, at) in refused.iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("verifier {i} still accepts a revoked key after 1 s"));
        assert!(
            at < Duration::from_millis(100),
            "verifier {i} refused only after {at:?}"
        );
    }
    // The other key is untouched.
    for v in &verifiers {
        assert_eq!(
            v.verify(&alice(), &other_creds).await.unwrap().key_id(),
            &other.id
        );
    }

    // Regeneration without overlap: the old token is refused everywhere just as fast.
    let start = Instant::now();
    admin
        .regenerate(&alice(), &other.id, std::time::SystemTime::now())
        .await
        .unwrap()
        .unwrap();
    loop {
        let mut all = true;
        for v in &verifiers {
            all &= v.verify(&alice(), &other_creds).await.is_err();
        }
        if all {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "regenerated token still accepted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn unknown_results_are_cached_briefly_and_a_new_key_ends_that_at_once() {
    let server = RedisServer::start();
    let store = KeyStore::new(connection(&server.url()).await);
    let client = redis::Client::open(server.url()).unwrap();
    let config = VerifierConfig::default().negative_ttl(Duration::from_millis(300));
    let verifier = Verifier::with_cache(store.clone(), client, config).await;

    assert!(matches!(
        verifier.verify(&alice(), &Credentials::none()).await,
        Err(Error::NoPublicKey)
    ));
    reset_stats(&server.url()).await;
    for _ in 0..5 {
        assert!(
            verifier
                .verify(&alice(), &Credentials::none())
                .await
                .is_err()
        );
    }
    assert_eq!(
        calls(&server.url(), "hgetall").await,
        0,
        "negative answer not cached"
    );

    // Creating the key announces it: the negative entry goes at once.
    store
        .create(&alice(), NewKey::default_public(role()))
        .await
        .unwrap();
    let start = Instant::now();
    while verifier
        .verify(&alice(), &Credentials::none())
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "new key not seen"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn redis_killed_mid_verify_gives_503_and_verification_recovers() {
    let mut server = RedisServer::start_persistent();
    let store = KeyStore::new(connection(&server.url()).await);
    let (_, token) = store
        .create(&alice(), NewKey::master(role()))
        .await
        .unwrap();
    let creds = Credentials::token(token, CredentialSource::Bearer);
    let uncached = Verifier::new(store.clone(), VerifierConfig::default());
    let client = redis::Client::open(server.url()).unwrap();
    let cached = Verifier::with_cache(
        store,
        client,
        VerifierConfig::default().heartbeat(Duration::from_millis(100)),
    )
    .await;
    uncached.verify(&alice(), &creds).await.unwrap();
    cached.verify(&alice(), &creds).await.unwrap();

    // Verifications in flight while the server dies: each is Ok or 503, none panics.
    let load = {
        let (verifier, creds) = (uncached.clone(), creds.clone());
        tokio::spawn(async move {
            let mut outcomes = (0, 0);
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(400) {
                match verifier.verify(&alice(), &creds).await {
                    Ok(_) => outcomes.0 += 1,
                    Err(e) => {
                        assert!(e.is_unavailable(), "{e:?}");
                        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
                        outcomes.1 += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.kill();
    let (ok, unavailable) = load.await.unwrap();
    assert!(
        ok > 0 && unavailable > 0,
        "ok {ok}, unavailable {unavailable}"
    );

    let err = uncached.verify(&alice(), &creds).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    // The cached verifier notices the dead subscription and stops serving from its cache.
    let start = Instant::now();
    while cached.is_cache_live() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "cache still live with Redis dead"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cached
            .verify(&alice(), &creds)
            .await
            .unwrap_err()
            .is_unavailable()
    );

    server.restart();
    let start = Instant::now();
    loop {
        let (a, b) = (
            uncached.verify(&alice(), &creds).await,
            cached.verify(&alice(), &creds).await,
        );
        if a.is_ok() && b.is_ok() && cached.is_cache_live() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no recovery: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
