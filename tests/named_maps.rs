//! Named maps end to end: templates stored by the master key, instantiated by anyone their
//! auth admits with typed placeholder values that never become SQL, their SQL run as the
//! template's owner, their tiles behind the same auth.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use geostack::auth::{Grants, UserName};
use geostack::server::KeyRequest;
use geostack::tiles::decode;
use support::{App, app, encode};

async fn master(app: &App) -> String {
    let alice = UserName::new("alice").unwrap();
    let (_, token) = app
        .server
        .auth()
        .create_key(&alice, KeyRequest::Master, Grants::new())
        .await
        .unwrap();
    token.expose().to_owned()
}

/// A template over `notes` (which the public key cannot read), filtered by its placeholders.
fn template(name: &str, auth: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "version": "0.0.1",
        "name": name,
        "auth": auth,
        "placeholders": {
            "word": {"type": "sql_literal", "default": "alpha"},
            "min": {"type": "number", "default": 0},
            "col": {"type": "sql_ident", "default": "note"},
            "color": {"type": "css_color", "default": "#ff0000"}
        },
        "layergroup": {"version": "1.3.0", "layers": [{"type": "cartodb", "options": {
            "sql": "select id, <%= col %> as label, ST_Transform(geom, 3857) as the_geom_webmercator from notes where note like '%<%= word %>%' and id >= <%= min %>",
            "cartocss": "#l { marker-fill: <%= color %>; }",
            "cartocss_version": "3.0.12"}}]}
    })
}

async fn features(app: &App, path: &str) -> (u16, usize) {
    let r = app.get(path).await;
    if r.status != 200 {
        return (r.status, 0);
    }
    (200, decode(&r.body).unwrap().layers[0].features.len())
}

#[tokio::test]
async fn named_maps_run_as_their_owner_with_placeholders_that_stay_data() {
    let app = app().await;
    sqlx::raw_sql(
        "insert into notes (note, geom) values
           ('alpha one', ST_SetSRID(ST_MakePoint(1, 1), 4326)),
           ('alpha two', ST_SetSRID(ST_MakePoint(2, 2), 4326)),
           ('beta', ST_SetSRID(ST_MakePoint(3, 3), 4326))",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    let master = master(&app).await;

    // Made by the master key only.
    let open = template("notes_open", serde_json::json!({"method": "open"}));
    let r = app
        .post_json(&format!("/api/v1/map/named?api_key={}", app.regular), &open)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = app
        .post_json(&format!("/api/v1/map/named?api_key={master}"), &open)
        .await;
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"template_id": "notes_open"}))
    );
    let r = app
        .post_json(&format!("/api/v1/map/named?api_key={master}"), &open)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let secret = template(
        "notes_secret",
        serde_json::json!({"method": "token", "valid_tokens": ["s3cret"]}),
    );
    let r = app
        .post_json(&format!("/api/v1/map/named/?api_key={master}"), &secret)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .get(&format!("/api/v1/map/named?api_key={master}"))
        .await;
    assert_eq!(
        r.json(),
        serde_json::json!({"template_ids": ["notes_open", "notes_secret"]})
    );
    let r = app
        .get(&format!("/api/v1/map/named/notes_secret?api_key={master}"))
        .await;
    assert_eq!(
        r.json()["template"]["auth"]["valid_tokens"],
        serde_json::json!(["s3cret"])
    );
    assert_eq!(app.get("/api/v1/map/named").await.status, 403);

    // Anyone instantiates the open one; its SQL runs as the owner (the public key cannot read
    // notes), with the values given.
    let r = app
        .post_json(
            "/api/v1/map/named/notes_open",
            &serde_json::json!({"word": "alpha", "min": 2}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["layergroupid"].as_str().unwrap().to_owned();
    assert!(id.starts_with("notes_open@"), "{id}");
    assert_eq!(
        r.json()["metadata"]["layers"][0]["meta"]["cartocss"],
        "#l { marker-fill: #ff0000; }"
    );
    assert_eq!(
        features(&app, &format!("/api/v1/map/{id}/0/0/0.mvt")).await,
        (200, 1)
    );
    // The same config as an anonymous map is the public key's: refused.
    let plain = app.post_json("/api/v1/map", &serde_json::json!({"layers": [{"options": {
        "sql": "select id, note as label, ST_Transform(geom, 3857) as the_geom_webmercator from notes"}}]})).await;
    assert_eq!(plain.status, 403, "{}", plain.text());
    // An anonymous map's token under a template's name is no instance of it.
    let mine = app
        .post_json(
            "/api/v1/map",
            &serde_json::json!({"layers": [{"options": {
        "sql": "select ST_Transform(geom, 3857) as the_geom_webmercator from places"}}]}),
        )
        .await;
    let token = mine.json()["layergroupid"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get(&format!("/api/v1/map/notes_open@{token}/0/0/0.mvt"))
            .await
            .status,
        404
    );

    // Values stay data: a quote in a literal, SQL in a number or an identifier.
    let r = app
        .post_json(
            "/api/v1/map/named/notes_open",
            &serde_json::json!({"word": "x' or '1' = '1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id2 = r.json()["layergroupid"].as_str().unwrap().to_owned();
    assert_eq!(
        features(&app, &format!("/api/v1/map/{id2}/0/0/0.mvt"))
            .await
            .1,
        0
    );
    for values in [
        serde_json::json!({"min": "0 or true"}),
        serde_json::json!({"col": "note from notes; --"}),
        serde_json::json!({"color": "red; }"}),
        serde_json::json!({"word": "back\\\\slash"}),
    ] {
        let r = app.post_json("/api/v1/map/named/notes_open", &values).await;
        assert_eq!(r.status, 400, "{values}: {}", r.text());
        assert!(
            r.json()["errors"][0]
                .as_str()
                .unwrap()
                .contains("placeholder"),
            "{}",
            r.text()
        );
    }

    // A token template: instances and their tiles need a valid auth_token.
    let r = app
        .post_json("/api/v1/map/named/notes_secret", &serde_json::json!({}))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = app
        .post_json(
            "/api/v1/map/named/notes_secret?auth_token=s3cret",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id3 = r.json()["layergroupid"].as_str().unwrap().to_owned();
    assert_eq!(
        features(
            &app,
            &format!("/api/v1/map/{id3}/0/0/0.mvt?auth_token=s3cret")
        )
        .await,
        (200, 2)
    );
    assert_eq!(
        features(&app, &format!("/api/v1/map/{id3}/0/0/0.mvt"))
            .await
            .0,
        403
    );
    assert_eq!(
        features(
            &app,
            &format!("/api/v1/map/{id3}/0/0/0.mvt?auth_token=nope")
        )
        .await
        .0,
        403
    );

    // CARTO.js's JSONP form.
    let r = app
        .get(&format!(
            "/api/v1/map/named/notes_open/jsonp?callback=cb&config={}",
            encode(&serde_json::json!({"word": "beta"}).to_string())
        ))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("notes_open@"), "{}", r.text());

    // Updated and deleted by the master key; a deleted template's instances are gone.
    let mut changed = open.clone();
    changed["placeholders"]["word"]["default"] = serde_json::json!("beta");
    let r = app
        .request(
            "PUT",
            &format!("/api/v1/map/named/notes_open?api_key={master}"),
            &[("content-type", "application/json")],
            changed.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .post_json("/api/v1/map/named/notes_open", &serde_json::json!({}))
        .await;
    let id4 = r.json()["layergroupid"].as_str().unwrap().to_owned();
    assert_eq!(
        features(&app, &format!("/api/v1/map/{id4}/0/0/0.mvt")).await,
        (200, 1)
    );
    let r = app
        .request(
            "DELETE",
            &format!("/api/v1/map/named/notes_open?api_key={master}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        app.get(&format!("/api/v1/map/{id}/0/0/0.mvt")).await.status,
        404
    );
    assert_eq!(
        app.request(
            "DELETE",
            &format!("/api/v1/map/named/notes_open?api_key={master}"),
            &[],
            b""
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn templates_whose_placeholders_could_become_sql_are_refused() {
    let app = app().await;
    let master = master(&app).await;
    let mut unquoted = template("bad", serde_json::json!({"method": "open"}));
    unquoted["layergroup"]["layers"][0]["options"]["sql"] = serde_json::json!(
        "select id, ST_Transform(geom, 3857) as the_geom_webmercator from notes where note = <%= word %>"
    );
    let mut undeclared = template("bad", serde_json::json!({"method": "open"}));
    undeclared["layergroup"]["layers"][0]["options"]["cartocss"] =
        serde_json::json!("#l { marker-fill: <%= nope %>; }");
    let mut bad_default = template("bad", serde_json::json!({"method": "open"}));
    bad_default["placeholders"]["min"]["default"] = serde_json::json!("1; drop table notes");
    let mut bad_name = template("bad/../x", serde_json::json!({"method": "open"}));
    bad_name["name"] = serde_json::json!("bad/../x");
    for (t, reason) in [
        (unquoted, "must stand inside"),
        (undeclared, "nope is not declared"),
        (bad_default, "placeholder min"),
        (bad_name, "a name has"),
        (
            template("bad", serde_json::json!({"method": "token"})),
            "valid_tokens",
        ),
    ] {
        let r = app
            .post_json(&format!("/api/v1/map/named?api_key={master}"), &t)
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(reason), "{reason}: {}", r.text());
    }
}
