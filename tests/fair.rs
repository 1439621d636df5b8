//! Fair share between callers, end to end: anonymous callers are limited per client address
//! (`X-Forwarded-For` believed only from a trusted proxy), one caller cannot hold its role's
//! pool, and an exhausted pool answers 429 with `Retry-After` and no driver words.
mod support;

use std::time::Duration;

use geostack::auth::Quota;
use support::{app_with, encode};

fn sql(q: &str) -> String {
    format!("/api/v2/sql?q={}", encode(q))
}

/// About two seconds of work for the public role.
const SLOW: &str =
    "select count(*) from places a, places b, places c where a.pop_max > b.pop_max + c.pop_max";

#[tokio::test]
async fn anonymous_callers_are_limited_per_client_address() {
    let localhost = "127.0.0.1".parse().unwrap();
    let app = app_with(|c| {
        c.sql_quota(Quota::new(3, 1, Duration::from_secs(60)).unwrap())
            .trusted_proxies([localhost])
    })
    .await;
    let from = |client: &'static str| [("x-forwarded-for", client)];
    for _ in 0..3 {
        let r = app.get_with(&sql("select 1"), &from("198.51.100.1")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = app.get_with(&sql("select 1"), &from("198.51.100.1")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // Another client behind the same proxy has its own allowance.
    let r = app.get_with(&sql("select 1"), &from("198.51.100.2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The proxy's own hop is skipped: the client is the last address it did not add.
    let r = app
        .get_with(&sql("select 1"), &from("198.51.100.3, 127.0.0.1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn forwarded_addresses_from_an_untrusted_peer_are_ignored() {
    let app = app_with(|c| c.sql_quota(Quota::new(2, 1, Duration::from_secs(60)).unwrap())).await;
    let mut statuses = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let r = app
            .get_with(&sql("select 1"), &[("x-forwarded-for", client)])
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test]
async fn one_caller_cannot_hold_its_role_s_pool() {
    let localhost = "127.0.0.1".parse().unwrap();
    let app = app_with(|c| c.max_running_per_caller(1).trusted_proxies([localhost])).await;
    let app = std::sync::Arc::new(app);
    let slow = {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            app.get_with(&sql(SLOW), &[("x-forwarded-for", "198.51.100.7")])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .get_with(&sql("select 1"), &[("x-forwarded-for", "198.51.100.7")])
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.json(),
        serde_json::json!({"error": ["You are over platform's limits: at most 1 requests running at once; retry later"]})
    );
    // Another client is served meanwhile.
    let r = app
        .get_with(
            &sql("select 1 as n"),
            &[("x-forwarded-for", "198.51.100.8")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn an_exhausted_pool_answers_429_with_retry_after_and_no_driver_words() {
    let localhost = "127.0.0.1".parse().unwrap();
    let app = app_with(|c| {
        c.pools(
            geostack::sql::RegistryConfig::default()
                .per_role(1)
                .acquire_timeout(Duration::from_millis(300)),
        )
        .trusted_proxies([localhost])
    })
    .await;
    let app = std::sync::Arc::new(app);
    let slow = {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            app.get_with(&sql(SLOW), &[("x-forwarded-for", "198.51.100.20")])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .get_with(&sql("select 1"), &[("x-forwarded-for", "198.51.100.21")])
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.json(),
        serde_json::json!({"error": ["too many queries at once: retry later"]})
    );
    assert_eq!(slow.await.unwrap().status, 200);
}
