//! The tower layer and the axum extractor, in front of a real router, against real Redis.
#![cfg(feature = "axum")]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use geoauth::{
    Api, AuthLayer, DbRole, Grants, KeyPrefix, KeyStore, NewKey, Principal, Secret, UserName,
    Verifier, VerifierConfig,
};
use geostack_testkit::TestRedis;
use tower_service::Service;

/// `/user/<name>/…` names the user, as in CARTO's path-based routes.
fn user_of(parts: &http::request::Parts) -> geoauth::Result<UserName> {
    let name = parts
        .uri
        .path()
        .strip_prefix("/user/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    UserName::new(name)
}

async fn whoami(principal: Principal) -> String {
    format!(
        "{} {} {}",
        principal.user(),
        principal.kind(),
        principal.db_role().name()
    )
}

async fn call(
    router: &mut Router,
    uri: &str,
    auth: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let mut req = http::Request::get(uri);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let response = router.call(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn requests_are_verified_and_refusals_answered_in_carto_shape() {
    let redis = TestRedis::new().await;
    let store = KeyStore::with_prefix(redis.connection(), KeyPrefix::new(redis.prefix()).unwrap());
    let alice = UserName::new("alice").unwrap();
    let (_, master) = store
        .create(
            &alice,
            NewKey::master(DbRole::new("alice", Secret::new("pw"))),
        )
        .await
        .unwrap();
    let (_, maps_only) = store
        .create(
            &alice,
            NewKey::regular("tiles", DbRole::new("alice_tiles", Secret::new("pw2")))
                .grants(Grants::new().api(Api::Maps)),
        )
        .await
        .unwrap();
    let verifier =
        Verifier::with_cache(store, redis.client().clone(), VerifierConfig::default()).await;
    let mut router = Router::new()
        .route("/user/{user}/api/v2/sql", get(whoami))
        .layer(AuthLayer::new(verifier, user_of).require(Api::Sql));

    let uri = |token: &str| format!("/user/alice/api/v2/sql?q=select+1&api_key={token}");
    let (status, _, body) = call(&mut router, &uri(master.expose()), None).await;
    assert_eq!((status, body.as_str()), (200, "alice master alice"));

    let (status, _, body) = call(&mut router, &uri(maps_only.expose()), None).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        r#"{"error":["the api key does not grant access to the sql api"]}"#
    );

    let unknown = geoauth::Token::generate().unwrap();
    let (status, headers, body) = call(&mut router, &uri(unknown.expose()), None).await;
    assert_eq!(status, 401);
    assert_eq!(body, r#"{"error":["unknown api key"]}"#);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["www-authenticate"], "Basic realm=\"geostack\"");

    let (status, _, body) = call(&mut router, &uri("gsk_typo"), None).await;
    assert_eq!(status, 401);
    assert!(body.contains("malformed api key"), "{body}");
    assert!(!body.contains("gsk_typo"), "the token is echoed: {body}");

    // No key, no public key.
    let (status, _, _) = call(&mut router, "/user/alice/api/v2/sql?q=select+1", None).await;
    assert_eq!(status, 401);

    // Basic credentials for another user than the path's.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("bob:{}", master.expose()))
    );
    let (status, _, _) = call(&mut router, "/user/alice/api/v2/sql", Some(&basic)).await;
    assert_eq!(status, 403);

    // A path without a valid user.
    let (status, _, _) = call(&mut router, "/user/NOPE/api/v2/sql", None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_extractor_fails_loudly_without_the_layer() {
    let mut router = Router::new().route("/x", get(whoami));
    let (status, _, body) = call(&mut router, "/x", None).await;
    assert_eq!(status, 500);
    assert!(body.contains("AuthLayer"), "{body}");
}

#[tokio::test]
async fn the_layer_limits_each_key_s_rate_and_says_so_in_its_headers() {
    let redis = TestRedis::new().await;
    let prefix = KeyPrefix::new(redis.prefix()).unwrap();
    let store = KeyStore::with_prefix(redis.connection(), prefix.clone());
    let alice = UserName::new("alice").unwrap();
    let (_, first) = store
        .create(
            &alice,
            NewKey::master(DbRole::new("alice", Secret::new("pw"))),
        )
        .await
        .unwrap();
    let (_, second) = store
        .create(
            &alice,
            NewKey::regular("other", DbRole::new("alice", Secret::new("pw")))
                .grants(Grants::new().api(Api::Sql)),
        )
        .await
        .unwrap();
    let verifier =
        Verifier::with_cache(store, redis.client().clone(), VerifierConfig::default()).await;
    let limiter = geoauth::RateLimiter::with_prefix(redis.connection(), prefix);
    // Two at once, then one a minute: the third request in a row is refused.
    let quota = geoauth::Quota::new(2, 1, std::time::Duration::from_secs(60)).unwrap();
    let mut router = Router::new()
        .route("/user/{user}/api/v2/sql", get(whoami))
        .layer(AuthLayer::new(verifier, user_of).rate_limit(limiter, "sql", quota));
    let uri = |token: &str| format!("/user/alice/api/v2/sql?api_key={token}");

    let (status, headers, _) = call(&mut router, &uri(first.expose()), None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["ratelimit-limit"], "2");
    assert_eq!(headers["carto-rate-limit-remaining"], "1");
    let (status, _, _) = call(&mut router, &uri(first.expose()), None).await;
    assert_eq!(status, 200);
    let (status, headers, body) = call(&mut router, &uri(first.expose()), None).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("over platform's limits"), "{body}");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert!(headers.contains_key("retry-after"));
    // Another key of the same user has a bucket of its own.
    let (status, _, _) = call(&mut router, &uri(second.expose()), None).await;
    assert_eq!(status, 200);
}
