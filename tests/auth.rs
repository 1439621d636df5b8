//! Authentication, authorization and rate limits through the composed server, over real TCP.

mod support;

use std::time::Duration;

use base64::Engine as _;
use geostack::auth::Quota;
use support::{app, app_with};

#[tokio::test]
async fn credentials_are_checked_as_carto_checks_them() {
    let app = app().await;
    let q = "/api/v2/sql?q=select+1+as+n";
    let one = serde_json::json!([{"n": 1}]);
    // Anonymous: the user's default_public key.
    assert_eq!(app.get(q).await.json()["rows"], one);
    // Each place a key may come from.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{}", app.regular));
    for headers in [
        vec![("authorization".to_owned(), format!("Basic {basic}"))],
        vec![(
            "authorization".to_owned(),
            format!("Bearer {}", app.regular),
        )],
        vec![("x-api-key".to_owned(), app.regular.clone())],
    ] {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let r = app.get_with(q, &h).await;
        assert_eq!(r.status, 200, "{h:?}: {}", r.text());
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }

    let refused = |status: u16, message: &str| (status, serde_json::json!({ "error": [message] }));
    let malformed = app.get(&format!("{q}&api_key=not-a-key")).await;
    assert_eq!(
        (malformed.status, malformed.json()),
        refused(401, "malformed api key: missing the gsk_ prefix")
    );
    assert_eq!(
        malformed.header("www-authenticate"),
        Some("Basic realm=\"geostack\"")
    );
    // A well-formed key that does not exist: two neighbouring characters after the prefix
    // swapped (two that differ, or the key would be the same).
    let mut forged = app.regular.clone().into_bytes();
    let at = (4..forged.len() - 1)
        .find(|&i| forged[i] != forged[i + 1])
        .unwrap();
    forged.swap(at, at + 1);
    let forged = String::from_utf8(forged).unwrap();
    let r = app.get(&format!("{q}&api_key={forged}")).await;
    assert_eq!(r.status, 401);
    // bob's key is not alice's.
    let r = app.get(&format!("{q}&api_key={}", app.bob)).await;
    assert_eq!((r.status, r.json()), refused(401, "unknown api key"));
    let other = base64::engine::general_purpose::STANDARD.encode(format!("bob:{}", app.bob));
    let r = app
        .get_with(q, &[("authorization", &format!("Basic {other}"))])
        .await;
    assert_eq!(
        (r.status, r.json()),
        refused(403, "credentials are for another user")
    );
    // bob has no public key: his anonymous requests have no role to run as.
    let r = app.get(&format!("/user/bob{q}")).await;
    assert_eq!(
        (r.status, r.json()),
        refused(401, "no api key given and the user has no public key")
    );
    // …but his own key works on his routes.
    let r = app.get(&format!("/user/bob{q}&api_key={}", app.bob)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A key for the SQL API only may not draw tiles.
    let r = app
        .get(&format!(
            "/tiles/countries/0/0/0.mvt?api_key={}",
            app.sql_only
        ))
        .await;
    assert_eq!(
        (r.status, r.json()),
        refused(403, "the api key does not grant access to the maps api")
    );
}

#[tokio::test]
async fn the_user_comes_from_the_host_name_too() {
    let app = app_with(|c| c.host_suffix("maps.test")).await;
    let q = "/api/v2/sql?q=select+current_user+as+u";
    let r = app.get_with(q, &[("host", "bob.maps.test")]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = app
        .get_with(
            &format!("{q}&api_key={}", app.bob),
            &[("host", "bob.maps.test:8080")],
        )
        .await;
    assert_eq!(
        r.json()["rows"],
        serde_json::json!([{ "u": app.regular_role.name() }])
    );
    // Elsewhere, the default user.
    let r = app.get_with(q, &[("host", "localhost")]).await;
    assert_eq!(
        r.json()["rows"],
        serde_json::json!([{ "u": app.public_role.name() }])
    );
}

#[tokio::test]
async fn over_the_rate_the_answer_is_429_with_its_headers() {
    let quota = Quota::new(3, 1, Duration::from_secs(60)).unwrap();
    let app = app_with(|c| c.sql_quota(quota)).await;
    let q = "/api/v2/sql?q=select+1";
    for remaining in ["2", "1", "0"] {
        let r = app.get(q).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
    }
    let r = app.get(q).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": ["You are over platform's limits: sql requests, at most 3 at once; retry later"]})
    );
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("carto-rate-limit-limit"), Some("3"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // One request a minute refills the allowance.
    assert!((1..=60).contains(&retry), "{retry}");
    // Another key has its own allowance; the maps API its own quota.
    let r = app.get(&format!("{q}&api_key={}", app.regular)).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.get("/tiles/countries/0/0/0.mvt").await.status, 200);
}
