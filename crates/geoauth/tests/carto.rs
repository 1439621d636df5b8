//! Authenticating against keys as CARTO writes them in Redis.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use base64::Engine;
use geoauth::{
    Api, CartoKeys, CredentialSource, Credentials, Error, KeyKind, TokenFormat, UserName, Verifier,
    VerifierConfig,
};
use geostack_testkit::RedisServer;

const TOKEN: &str = "3a9b0c1d2e3f40516273849a5b6c7d8e9f0a1b2c";

/// Writes what CARTO's Rails app writes for user alice.
async fn carto_redis(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    pipe.hset_multiple(
        format!("api_keys:alice:{TOKEN}"),
        &[
            ("user", "alice"),
            ("type", "regular"),
            ("database_role", "carto_role_alice_1"),
            ("database_password", "s3cret"),
            ("grants_sql", "true"),
        ],
    )
    .hset_multiple(
        "api_keys:alice:default_public",
        &[
            ("user", "alice"),
            ("type", "default"),
            ("database_role", "cartodb_publicuser_1"),
            ("database_password", ""),
            ("grants_sql", "true"),
            ("grants_maps", "true"),
        ],
    )
    .hset_multiple(
        "api_keys:alice:incomplete",
        &[
            ("user", "alice"),
            ("type", "regular"),
            ("database_role", "r"),
        ],
    )
    .hset_multiple(
        "rails:users:alice",
        &[
            ("database_name", "cartodb_user_1_db"),
            ("database_host", "127.0.0.1"),
            ("database_publicuser", "cartodb_publicuser_1"),
            ("map_key", TOKEN),
        ],
    );
    let () = pipe.query_async(&mut conn).await.unwrap();
    conn
}

fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut req = http::Request::get(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(()).unwrap().into_parts().0
}

async fn verifier(server: &RedisServer) -> Verifier<CartoKeys> {
    let client = redis::Client::open(server.url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let config = VerifierConfig::default().token_format(TokenFormat::CartoCompatible);
    Verifier::with_cache(CartoKeys::new(conn), client, config).await
}

#[tokio::test]
async fn a_carto_key_authenticates_with_its_grants_role_and_database() {
    let server = RedisServer::start();
    let _conn = carto_redis(&server).await;
    let verifier = verifier(&server).await;
    let alice = UserName::new("alice").unwrap();

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("alice:{TOKEN}"))
    );
    let ways = [
        request(&format!("/api/v2/sql?q=select+1&api_key={TOKEN}"), &[]),
        request(&format!("/api/v1/map?map_key={TOKEN}"), &[]),
        request("/api/v2/sql", &[("authorization", &basic)]),
    ];
    for parts in ways {
        let creds = Credentials::from_request(&parts, &alice, verifier.token_format()).unwrap();
        let principal = verifier.verify(&alice, &creds).await.unwrap();
        assert_eq!(principal.kind(), KeyKind::Regular);
        assert_eq!(principal.db_role().name(), "carto_role_alice_1");
        assert_eq!(principal.db_role().password().expose(), "s3cret");
        assert_eq!(
            principal.key().database.as_deref(),
            Some("cartodb_user_1_db")
        );
        assert_eq!(principal.key().database_host.as_deref(), Some("127.0.0.1"));
        assert!(principal.authorize(Api::Sql).is_ok());
        assert!(matches!(
            principal.authorize(Api::Maps),
            Err(Error::ApiNotGranted { .. })
        ));
        assert!(
            !format!("{principal:?}").contains("s3cret"),
            "password in Debug output"
        );
    }
}

#[tokio::test]
async fn no_key_is_the_users_default_public_key() {
    let server = RedisServer::start();
    let _conn = carto_redis(&server).await;
    let verifier = verifier(&server).await;
    let alice = UserName::new("alice").unwrap();
    let parts = request("/api/v2/sql?q=select+1", &[]);
    let creds = Credentials::from_request(&parts, &alice, verifier.token_format()).unwrap();
    assert_eq!(creds.source(), CredentialSource::None);
    let principal = verifier.verify(&alice, &creds).await.unwrap();
    assert_eq!(principal.kind(), KeyKind::DefaultPublic);
    assert!(principal.is_anonymous());
    assert_eq!(principal.db_role().name(), "cartodb_publicuser_1");
    assert!(principal.authorize(Api::Maps).is_ok());

    // A user without keys has no public key either.
    let bob = UserName::new("bob").unwrap();
    let err = verifier
        .verify(&bob, &Credentials::none())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoPublicKey));
    assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn incomplete_or_foreign_hashes_are_not_keys() {
    let server = RedisServer::start();
    let _conn = carto_redis(&server).await;
    let verifier = verifier(&server).await;
    let alice = UserName::new("alice").unwrap();
    let bob = UserName::new("bob").unwrap();
    for (user, uri) in [
        (&alice, "/?api_key=incomplete".to_owned()),
        (&alice, "/?api_key=nonexistent".to_owned()),
        (&bob, format!("/?api_key={TOKEN}")),
    ] {
        let creds =
            Credentials::from_request(&request(&uri, &[]), user, verifier.token_format()).unwrap();
        let err = verifier.verify(user, &creds).await.unwrap_err();
        assert!(matches!(err, Error::UnknownKey), "{uri}: {err}");
    }
}
