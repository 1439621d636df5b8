//! CARTO's Auth API end to end: the master key makes, lists, shows, regenerates and deletes
//! keys whose roles hold exactly their grants in PostgreSQL; other keys see only themselves and
//! change nothing; refusals in the API's error shape.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use geostack::auth::{Grants, UserName};
use geostack::server::KeyRequest;
use serde_json::json;
use support::{App, app, encode};

/// alice's master key, made through the server.
async fn master(app: &App) -> String {
    let alice = UserName::new("alice").unwrap();
    let (key, token) = app
        .server
        .auth()
        .create_key(&alice, KeyRequest::Master, Grants::new())
        .await
        .unwrap();
    assert_eq!(key.kind.as_str(), "master");
    token.expose().to_owned()
}

async fn table_grants(app: &App, role: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "select table_name::text, privilege_type::text from information_schema.role_table_grants
         where grantee = $1 order by 1, 2",
    )
    .bind(role)
    .fetch_all(app.db.pool())
    .await
    .unwrap()
}

async fn roles_named(app: &App, role: &str) -> i64 {
    sqlx::query_scalar("select count(*) from pg_roles where rolname = $1")
        .bind(role)
        .fetch_one(app.db.pool())
        .await
        .unwrap()
}

/// The role behind a key, as the server stored it.
async fn role_of(app: &App, name: &str) -> String {
    let alice = UserName::new("alice").unwrap();
    let keys = app.server.auth().key_store().list(&alice).await.unwrap();
    let key = keys.iter().find(|k| k.name == name).unwrap();
    key.db_role.name().to_owned()
}

fn sql(q: &str, token: &str) -> String {
    format!("/api/v2/sql?q={}&api_key={token}", encode(q))
}

#[tokio::test]
async fn the_master_key_manages_keys_whose_roles_hold_exactly_their_grants() {
    let app = app().await;
    let master = master(&app).await;

    // The master key's role holds every privilege on the user's tables (not PostGIS's own).
    let master_role = role_of(&app, "Master").await;
    let grants = table_grants(&app, &master_role).await;
    for table in ["countries", "notes", "places", "secrets"] {
        for privilege in ["DELETE", "INSERT", "SELECT", "UPDATE"] {
            assert!(
                grants.contains(&(table.to_owned(), privilege.to_owned())),
                "{table} {privilege}: {grants:?}"
            );
        }
    }
    assert!(
        !grants.iter().any(|(t, _)| t == "spatial_ref_sys"),
        "{grants:?}"
    );

    // Made as carto-python makes it: JSON body, trailing slash, the key in the query.
    let definition = json!({
        "name": "dashboard",
        "grants": [
            {"type": "apis", "apis": ["sql"]},
            {"type": "database", "tables": [
                {"schema": "public", "name": "countries", "permissions": ["select"]},
                {"schema": "public", "name": "notes", "permissions": ["select", "insert"]}
            ]},
            {"type": "dataservices", "services": []}
        ]
    });
    let r = app
        .post_json(&format!("/api/v3/api_keys/?api_key={master}"), &definition)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let made = r.json();
    assert_eq!(made["name"], "dashboard");
    assert_eq!(made["type"], "regular");
    assert_eq!(made["user"], json!({"username": "alice"}));
    assert_eq!(
        made["grants"],
        json!([
            {"type": "apis", "apis": ["sql"]},
            {"type": "database", "schemas": [], "tables": [
                {"schema": "public", "name": "countries", "permissions": ["select"]},
                {"schema": "public", "name": "notes", "permissions": ["select", "insert"]}
            ]}
        ])
    );
    let created_at = made["created_at"].as_str().unwrap();
    assert!(
        created_at.len() == 23 && created_at.ends_with(" UTC"),
        "{created_at}"
    );
    assert!(made.get("role").is_none() && !made.to_string().contains("password"));
    let token = made["token"].as_str().unwrap().to_owned();

    // In PostgreSQL: a login role of its own with exactly those grants.
    let role = role_of(&app, "dashboard").await;
    assert_ne!(role, master_role);
    assert_eq!(
        table_grants(&app, &role).await,
        [
            ("countries".to_owned(), "SELECT".to_owned()),
            ("notes".to_owned(), "INSERT".to_owned()),
            ("notes".to_owned(), "SELECT".to_owned()),
        ]
    );
    let r = app
        .get(&sql("select count(*) as n from countries", &token))
        .await;
    assert_eq!(r.json()["rows"], json!([{"n": 177}]), "{}", r.text());
    let r = app.get(&sql("select count(*) from places", &token)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // It grants the SQL API only.
    let r = app
        .get(&format!("/tiles/countries/0/0/0.mvt?api_key={token}"))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());

    // A name is taken once.
    let r = app
        .post_json(&format!("/api/v3/api_keys?api_key={master}"), &definition)
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.json()["error"][0]
            .as_str()
            .unwrap()
            .contains("already been taken")
    );

    // Listed: the master key sees every key, paged; a regular key sees itself.
    let r = app
        .get(&format!(
            "/api/v3/api_keys?api_key={master}&per_page=2&order=name&order_direction=asc"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    // Master, Default public, app and sql (the harness's) and dashboard.
    assert_eq!(
        (page["total"].as_u64(), page["count"].as_u64()),
        (Some(5), Some(2))
    );
    let names: Vec<&str> = page["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Default public", "Master"]);
    assert_eq!(page["result"][0]["type"], "default");
    assert_eq!(page["result"][0]["token"], "default_public");
    assert_eq!(page["result"][1]["token"], serde_json::Value::Null);
    let next = page["_links"]["next"]["href"].as_str().unwrap();
    assert!(
        next.ends_with("/api/v3/api_keys?page=2&per_page=2&order=name&order_direction=asc"),
        "{next}"
    );
    assert!(page["_links"].get("prev").is_none());
    let last = app
        .get(&format!(
            "/api/v3/api_keys?api_key={master}&per_page=2&page=3&order=name&order_direction=asc"
        ))
        .await
        .json();
    assert_eq!(last["result"][0]["name"], "sql");
    assert!(last["_links"].get("next").is_none() && last["_links"].get("prev").is_some());
    let own = app
        .get(&format!("/api/v3/api_keys?api_key={token}"))
        .await
        .json();
    assert_eq!(
        (own["total"].as_u64(), own["result"][0]["name"].as_str()),
        (Some(1), Some("dashboard"))
    );

    // Shown: its own key to a regular key, any key to the master key.
    let r = app
        .get(&format!("/api/v3/api_keys/dashboard?api_key={token}"))
        .await;
    assert_eq!(
        (r.status, r.json()["token"].clone()),
        (200, serde_json::Value::Null)
    );
    let r = app
        .get(&format!("/api/v3/api_keys/app?api_key={token}"))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json(), json!({"error": ["API key not found: app"]}));
    let r = app
        .get(&format!(
            "/api/v3/api_keys/Default%20public?api_key={master}"
        ))
        .await;
    assert_eq!(
        (r.status, r.json()["type"].clone()),
        (200, json!("default"))
    );

    // Regenerated: a new token, the old one refused; the role stays.
    let r = app
        .request(
            "POST",
            &format!("/api/v3/api_keys/dashboard/token/regenerate?api_key={master}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let fresh = r.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, token);
    let r = app.get(&sql("select 1", &token)).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = app
        .get(&sql("select count(*) as n from countries", &fresh))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(role_of(&app, "dashboard").await, role);

    // Deleted: refused from now on, its role gone; master and default_public stay.
    for name in ["Master", "Default%20public"] {
        let r = app
            .request(
                "DELETE",
                &format!("/api/v3/api_keys/{name}?api_key={master}"),
                &[],
                b"",
            )
            .await;
        assert_eq!(r.status, 403, "{name}: {}", r.text());
    }
    let r = app
        .request(
            "DELETE",
            &format!("/api/v3/api_keys/dashboard?api_key={master}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(
        (r.status, r.json()["name"].clone()),
        (200, json!("dashboard"))
    );
    assert_eq!(roles_named(&app, &role).await, 0);
    let r = app.get(&sql("select 1", &fresh)).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = app
        .get(&format!("/api/v3/api_keys/dashboard?api_key={master}"))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test]
async fn without_the_master_key_nothing_changes_and_bad_definitions_are_named() {
    let app = app().await;
    let master = master(&app).await;
    let definition = json!({
        "name": "sneaky",
        "grants": [{"type": "apis", "apis": ["sql"]},
                   {"type": "database", "tables": [{"name": "secrets", "permissions": ["select"]}]}]
    });
    // No key: 401 in CARTO's shape, with CORS.
    let r = app.get("/api/v3/api_keys").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.json()["error"][0]
            .as_str()
            .unwrap()
            .contains("needs an API key")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // A regular key may not make, regenerate or delete keys.
    let regular = app.regular.clone();
    let r = app
        .post_json(&format!("/api/v3/api_keys?api_key={regular}"), &definition)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = app
        .request(
            "POST",
            &format!("/api/v3/api_keys/app/token/regenerate?api_key={regular}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = app
        .request(
            "DELETE",
            &format!("/api/v3/api_keys/app?api_key={regular}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // The regular key still works.
    let r = app.get(&sql("select 1", &regular)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Definitions the master key sends wrong: each named, nothing made.
    for (body, status, needle) in [
        (
            json!({"grants": [{"type": "apis", "apis": ["sql"]}]}),
            422,
            "Name can't be blank",
        ),
        (json!({"name": "x"}), 422, "Grants can't be blank"),
        (
            json!({"name": "x", "grants": [{"type": "apis", "apis": []}]}),
            422,
            "at least one api",
        ),
        (
            json!({"name": "x", "grants": [{"type": "apis", "apis": ["import"]}]}),
            422,
            "unknown api",
        ),
        (
            json!({"name": "x", "grants": [{"type": "apis", "apis": ["sql"]},
                {"type": "database", "tables": [{"name": "t; drop table notes", "permissions": ["select"]}]}]}),
            422,
            "plain identifiers",
        ),
        (
            json!({"name": "x", "grants": [{"type": "apis", "apis": ["sql"]},
                {"type": "database", "tables": [{"name": "nowhere", "permissions": ["select"]}]}]}),
            400,
            "nowhere",
        ),
    ] {
        let r = app
            .post_json(&format!("/api/v3/api_keys?api_key={master}"), &body)
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let message = r.json()["error"][0].as_str().unwrap().to_owned();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let r = app
        .get(&format!("/api/v3/api_keys?api_key={master}&per_page=abc"))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let alice = UserName::new("alice").unwrap();
    let names: Vec<String> = app
        .server
        .auth()
        .key_store()
        .list(&alice)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[tokio::test]
async fn me_tells_whose_key_it_is_and_needs_one() {
    let app = app().await;
    let r = app
        .get(&format!("/user/alice/api/v3/me?api_key={}", app.regular))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let me = r.json();
    assert_eq!(me["user_data"]["username"], "alice");
    assert_eq!(me["user_data"]["id"], "alice");
    assert_eq!(
        me["user_data"]["base_url"],
        format!("http://{}/user/alice", app.addr)
    );
    assert_eq!(me["api_key"]["type"], "regular");
    assert!(r.header("ratelimit-remaining").is_some());
    let r = app.get("/api/v3/me/").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = app.get("/api/v3/me?api_key=nope").await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn the_master_key_runs_several_statements_and_ddl_as_a_role_that_owns_what_it_makes() {
    let app = app().await;
    let master = master(&app).await;
    let script = "BEGIN; CREATE TABLE made_here (id int, note text); \
                  INSERT INTO made_here VALUES (1, 'one'), (2, 'two'); \
                  SELECT count(*) AS n FROM made_here; COMMIT;";
    let r = app.get(&sql(script, &master)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rows"], json!([{"n": 2}]));
    let owner: String =
        sqlx::query_scalar("select tableowner::text from pg_tables where tablename = 'made_here'")
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    assert_eq!(owner, role_of(&app, "Master").await);

    // All or nothing: a failing statement leaves no table behind.
    let r = app
        .get(&sql("CREATE TABLE half_made (id int); SELECT 1/0", &master))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json(), json!({"error": ["division by zero"]}));
    let r = app.get(&sql("select * from half_made", &master)).await;
    assert_eq!(
        r.json(),
        json!({"error": ["relation \"half_made\" does not exist"]})
    );

    // Any other key: one statement, no DDL.
    let r = app.get(&sql("select 1; select 2", &app.regular)).await;
    assert_eq!(
        r.json(),
        json!({"error": ["invalid statement: only one statement is allowed"]})
    );
    let r = app
        .get(&sql("create table sneaky (id int)", &app.regular))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}
