//! The native key store against real Redis: create, get, list, regenerate, revoke, expire.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use geoauth::{
    Api, Credentials, DbRole, Error, Grants, KeyKind, KeyPrefix, KeySource, KeyStore, NewKey,
    Privilege, Secret, Token, UserName, Verifier, VerifierConfig,
};
use geostack_testkit::TestRedis;
use redis::AsyncCommands;

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

fn role(name: &str) -> DbRole {
    DbRole::new(name, Secret::new(format!("{name}-password")))
}

async fn store(redis: &TestRedis) -> KeyStore {
    KeyStore::with_prefix(redis.connection(), KeyPrefix::new(redis.prefix()).unwrap())
}

/// Every field of every hash under the test's prefix.
async fn all_stored_values(redis: &TestRedis) -> Vec<(String, String, String)> {
    let mut conn = redis.connection();
    let keys: Vec<String> = conn.keys(format!("{}*", redis.prefix())).await.unwrap();
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if kind == "hash" {
            let fields: HashMap<String, String> = conn.hgetall(&key).await.unwrap();
            out.extend(fields.into_iter().map(|(f, v)| (key.clone(), f, v)));
        }
    }
    out
}

#[tokio::test]
async fn created_keys_read_back_and_only_a_digest_of_the_token_is_stored() {
    let redis = TestRedis::new().await;
    let store = store(&redis).await;
    let alice = user("alice");
    let grants = Grants::new()
        .api(Api::Sql)
        .table("public.places".parse().unwrap(), [Privilege::Select]);
    let mut metadata = serde_json::Map::new();
    metadata.insert("purpose".into(), "dashboard".into());
    let (regular, token) = store
        .create(
            &alice,
            NewKey::regular("dashboard", role("alice_dash"))
                .grants(grants.clone())
                .metadata(metadata.clone()),
        )
        .await
        .unwrap();
    let (master, master_token) = store
        .create(&alice, NewKey::master(role("alice")))
        .await
        .unwrap();

    assert_eq!(regular.kind, KeyKind::Regular);
    assert_eq!(regular.grants, grants);
    assert_eq!(regular.metadata, metadata);
    assert_eq!(
        store.get(&alice, &regular.id).await.unwrap().unwrap(),
        regular
    );
    assert_eq!(
        store.get(&alice, &master.id).await.unwrap().unwrap(),
        master
    );

    let mut expected_ids = vec![regular.id.clone(), master.id.clone()];
    expected_ids.sort();
    let listed: Vec<_> = store
        .list(&alice)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed, expected_ids);
    assert!(store.list(&user("bob")).await.unwrap().is_empty());

    // The token is nowhere in Redis; its digest names the record.
    let stored = all_stored_values(&redis).await;
    for secret in [token.expose(), master_token.expose()] {
        assert!(
            stored
                .iter()
                .all(|(k, _, v)| !v.contains(secret) && !k.contains(secret)),
            "a token is stored in clear"
        );
    }
    let record = format!(
        "{}{{alice}}:key:{}",
        redis.prefix(),
        token.digest().to_hex()
    );
    assert!(
        stored
            .iter()
            .any(|(k, f, v)| k == &record && f == "id" && v == regular.id.as_str())
    );

    // The token finds the key; the same token for another user does not.
    assert_eq!(
        store.lookup(&alice, &token).await.unwrap().unwrap().id,
        regular.id
    );
    assert!(store.lookup(&user("bob"), &token).await.unwrap().is_none());
}

#[tokio::test]
async fn a_revoked_key_is_gone() {
    let redis = TestRedis::new().await;
    let store = store(&redis).await;
    let alice = user("alice");
    let (key, token) = store
        .create(&alice, NewKey::master(role("alice")))
        .await
        .unwrap();
    assert!(store.revoke(&alice, &key.id).await.unwrap());
    assert!(store.lookup(&alice, &token).await.unwrap().is_none());
    assert!(store.get(&alice, &key.id).await.unwrap().is_none());
    assert!(store.list(&alice).await.unwrap().is_empty());
    assert!(
        !store.revoke(&alice, &key.id).await.unwrap(),
        "revoked twice"
    );
}

#[tokio::test]
async fn regenerate_keeps_the_old_token_until_the_overlap_ends() {
    let redis = TestRedis::new().await;
    let store = store(&redis).await;
    let alice = user("alice");
    let (key, old) = store
        .create(&alice, NewKey::master(role("alice")))
        .await
        .unwrap();

    let until = SystemTime::now() + Duration::from_millis(400);
    let new = store
        .regenerate(&alice, &key.id, until)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(new, old);
    let verifier = Verifier::new(store.clone(), VerifierConfig::default());
    let with = |t: &Token| Credentials::token(t.clone(), geoauth::CredentialSource::Bearer);
    assert_eq!(
        verifier.verify(&alice, &with(&new)).await.unwrap().key_id(),
        &key.id
    );
    assert_eq!(
        verifier.verify(&alice, &with(&old)).await.unwrap().key_id(),
        &key.id
    );
    assert_eq!(
        store.get(&alice, &key.id).await.unwrap().unwrap().id,
        key.id
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = verifier.verify(&alice, &with(&old)).await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownKey | Error::ExpiredKey),
        "{err}"
    );
    assert!(verifier.verify(&alice, &with(&new)).await.is_ok());

    // Without overlap the previous token dies at once.
    let newer = store
        .regenerate(&alice, &key.id, SystemTime::now())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        verifier.verify(&alice, &with(&new)).await,
        Err(Error::UnknownKey)
    ));
    assert!(verifier.verify(&alice, &with(&newer)).await.is_ok());
    assert!(
        store
            .regenerate(&user("bob"), &key.id, SystemTime::now())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_expired_key_is_refused_as_expired() {
    let redis = TestRedis::new().await;
    let store = store(&redis).await;
    let alice = user("alice");
    let verifier = Verifier::new(store.clone(), VerifierConfig::default());
    let (key, token) = store
        .create(
            &alice,
            NewKey::master(role("alice")).expires(SystemTime::now() + Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let creds = Credentials::token(token, geoauth::CredentialSource::XApiKey);
    assert!(verifier.verify(&alice, &creds).await.is_ok());

    // Expiry a moment ahead: the record still exists when read, and its expiry is checked.
    let at = SystemTime::now() + Duration::from_millis(150);
    assert!(store.expire(&alice, &key.id, at).await.unwrap());
    assert_eq!(
        store
            .get(&alice, &key.id)
            .await
            .unwrap()
            .unwrap()
            .expires
            .map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
            }),
        Some(
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        )
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let err = verifier.verify(&alice, &creds).await.unwrap_err();
    assert!(
        matches!(err, Error::ExpiredKey | Error::UnknownKey),
        "{err}"
    );
    assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn no_credentials_means_the_default_public_key() {
    let redis = TestRedis::new().await;
    let store = store(&redis).await;
    let alice = user("alice");
    let verifier = Verifier::new(store.clone(), VerifierConfig::default());

    let err = verifier
        .verify(&alice, &Credentials::none())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoPublicKey));

    let public = Grants::new()
        .api(Api::Maps)
        .table("public.places".parse().unwrap(), [Privilege::Select]);
    let (key, token) = store
        .create(
            &alice,
            NewKey::default_public(role("alice_public")).grants(public),
        )
        .await
        .unwrap();
    assert_eq!(token.expose(), "default_public");
    let principal = verifier.verify(&alice, &Credentials::none()).await.unwrap();
    assert!(principal.is_anonymous());
    assert_eq!(principal.key_id(), &key.id);
    assert_eq!(principal.db_role().name(), "alice_public");
    assert!(principal.authorize(Api::Maps).is_ok());
    assert!(matches!(
        principal.authorize(Api::Sql),
        Err(Error::ApiNotGranted { api: Api::Sql })
    ));
    assert!(
        principal
            .authorize_table(&"places".parse().unwrap(), Privilege::Select)
            .is_ok()
    );
    let denied = principal
        .authorize_table(&"places".parse().unwrap(), Privilege::Delete)
        .unwrap_err();
    assert_eq!(denied.status(), http::StatusCode::FORBIDDEN);
    assert!(!principal.may_write());

    // Creating it again replaces it: one public key per user.
    let (again, _) = store
        .create(&alice, NewKey::default_public(role("p2")))
        .await
        .unwrap();
    let ids: Vec<_> = store
        .list(&alice)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, vec![again.id]);
}

#[tokio::test]
async fn last_used_is_written_at_most_once_per_interval() {
    let redis = TestRedis::new().await;
    let store = store(&redis).await;
    let alice = user("alice");
    let (key, token) = store
        .create(&alice, NewKey::master(role("alice")))
        .await
        .unwrap();
    assert_eq!(key.last_used, None);
    let verifier = Verifier::new(
        store.clone(),
        VerifierConfig::default().touch_interval(Duration::from_secs(3600)),
    );
    let creds = Credentials::token(token, geoauth::CredentialSource::Bearer);
    verifier.verify(&alice, &creds).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let first = loop {
        if let Some(t) = store.get(&alice, &key.id).await.unwrap().unwrap().last_used {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_used never written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    for _ in 0..5 {
        verifier.verify(&alice, &creds).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        store.get(&alice, &key.id).await.unwrap().unwrap().last_used,
        Some(first)
    );

    // A touch after revocation does not bring the record back.
    store.revoke(&alice, &key.id).await.unwrap();
    let fast = Verifier::new(
        store.clone(),
        VerifierConfig::default().touch_interval(Duration::ZERO),
    );
    assert!(fast.verify(&alice, &creds).await.is_err());
    assert!(all_stored_values(&redis).await.is_empty());
}
