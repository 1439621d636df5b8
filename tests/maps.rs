//! Maps and tiles end to end: a Windshaft layergroup stored under its token, its tiles and
//! TileJSON, table tiles, ETag/304 and 204 — every tile decoded and spec-checked.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::collections::BTreeMap;

use geostack::tiles::{DecodedValue, TileGeometry, decode};
use support::{App, app, app_with};

fn config() -> serde_json::Value {
    serde_json::json!({
        "version": "1.3.0",
        "layers": [
            {"type": "mapnik", "id": "big", "options": {
                "sql": "select gid, name, pop_max, ST_Transform(geom, 3857) as the_geom_webmercator from places where pop_max > 10000000",
                "attributes": {"id": "gid", "columns": ["name", "pop_max"]}}},
            {"type": "mapnik", "id": "capitals", "options": {
                "sql": "select gid, ST_Transform(geom, 3857) as the_geom_webmercator from places where featurecla = 'Admin-0 capital'",
                "minzoom": 2,
                "attributes": {"id": "gid", "columns": []}}}
        ]
    })
}

async fn instantiate(app: &App) -> String {
    let r = app.post_json("/api/v1/map", &config()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let token = doc["layergroupid"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 32);
    assert_eq!(
        doc["metadata"]["tilejson"]["vector"]["tiles"],
        serde_json::json!([format!(
            "http://{}/api/v1/map/{token}/{{z}}/{{x}}/{{y}}.mvt",
            app.addr
        )])
    );
    token
}

/// `lon`/`lat` at zoom 0 in tile units of a 4096 extent, rounded: the model the tiles are
/// checked against.
fn z0(lon: f64, lat: f64) -> [i32; 2] {
    let x = (lon + 180.0) / 360.0 * 4096.0;
    let phi = lat.to_radians();
    let y = (1.0 - (std::f64::consts::FRAC_PI_4 + phi / 2.0).tan().ln() / std::f64::consts::PI)
        / 2.0
        * 4096.0;
    [x.round() as i32, y.round() as i32]
}

#[tokio::test]
async fn a_map_config_s_tiles_hold_exactly_its_features() {
    let app = app().await;
    let token = instantiate(&app).await;
    let r = app.get(&format!("/api/v1/map/{token}/0/0/0.mvt")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.mapbox-vector-tile")
    );
    let tile = decode(&r.body).unwrap();
    // Below its minzoom, "capitals" is not drawn.
    assert_eq!(
        tile.layers
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["big"]
    );
    let places = geostack_testkit::natural_earth::places();
    let mut expected: BTreeMap<u64, (String, i64, [i32; 2])> = BTreeMap::new();
    for (i, p) in places.iter().enumerate() {
        if p.pop_max > 10_000_000 {
            expected.insert(i as u64 + 1, (p.name.clone(), p.pop_max, z0(p.lon, p.lat)));
        }
    }
    let mut got = BTreeMap::new();
    for f in &tile.layer("big").unwrap().features {
        let TileGeometry::Points(points) = &f.geometry else {
            panic!("not a point: {f:?}")
        };
        let (Some(DecodedValue::String(name)), Some(pop)) =
            (f.attributes.get("name"), f.attributes.get("pop_max"))
        else {
            panic!("attributes {:?}", f.attributes)
        };
        let pop = match pop {
            DecodedValue::Int(v) | DecodedValue::Sint(v) => *v,
            DecodedValue::Uint(v) => *v as i64,
            other => panic!("pop_max {other:?}"),
        };
        got.insert(f.id.unwrap(), (name.clone(), pop, points[0]));
    }
    assert_eq!(got, expected);

    // One layer of the two, by index, at a zoom where both are drawn.
    let tokyo = "/2/3/1.mvt";
    let both = decode(&app.get(&format!("/api/v1/map/{token}{tokyo}")).await.body).unwrap();
    assert_eq!(both.layers.len(), 2);
    let one = decode(&app.get(&format!("/api/v1/map/{token}/1{tokyo}")).await.body).unwrap();
    assert_eq!(
        one.layers
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["capitals"]
    );
    assert_eq!(
        one.layers[0].features,
        both.layer("capitals").unwrap().features
    );
    let r = app.get(&format!("/api/v1/map/{token}/2{tokyo}")).await;
    assert_eq!(r.status, 400, "{}", r.text());

    let tilejson = app
        .get(&format!("/api/v1/map/{token}/tilejson.json"))
        .await
        .json();
    assert_eq!(tilejson["tilejson"], "3.0.0");
    assert_eq!(
        tilejson["vector_layers"],
        serde_json::json!([
            {"id": "big", "minzoom": 0, "maxzoom": 30, "fields": {}},
            {"id": "capitals", "minzoom": 2, "maxzoom": 30, "fields": {}}
        ])
    );
}

#[tokio::test]
async fn etags_empty_tiles_and_bad_requests() {
    let app = app().await;
    let token = instantiate(&app).await;
    let path = format!("/api/v1/map/{token}/0/0/0.mvt");
    let first = app.get(&path).await;
    let etag = first.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let again = app.get_with(&path, &[("if-none-match", &etag)]).await;
    assert_eq!((again.status, again.body.len()), (304, 0));
    let other = app
        .get_with(&path, &[("if-none-match", "\"something-else\"")])
        .await;
    assert_eq!((other.status, other.body), (200, first.body.clone()));
    // Mid-Pacific at zoom 6: no feature, no content.
    let empty = app.get(&format!("/api/v1/map/{token}/6/3/30.mvt")).await;
    assert_eq!((empty.status, empty.body.len()), (204, 0));
    assert!(empty.header("etag").is_some());

    for (path, status) in [
        (format!("/api/v1/map/{token}/3/8/0.mvt"), 400),
        (format!("/api/v1/map/{token}/31/0/0.mvt"), 400),
        (format!("/api/v1/map/{token}/0/0/zero.mvt"), 400),
        (
            "/api/v1/map/0123456789abcdef0123456789abcdef/0/0/0.mvt".to_owned(),
            404,
        ),
        ("/api/v1/map/not-a-token/0/0/0.mvt".to_owned(), 404),
    ] {
        let r = app.get(&path).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.json()["error"][0].is_string());
    }
    let r = app
        .post_json("/api/v1/map", &serde_json::json!({"layers": []}))
        .await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            serde_json::json!({"error": ["invalid map config: expected 1 to 16 layers"]})
        )
    );
    // A layer reading a table the caller may not read.
    let secret = serde_json::json!({"layers": [{"id": "s", "options": {
        "sql": "select ST_Transform(ST_SetSRID(ST_MakePoint(id, id), 4326), 3857) as the_geom_webmercator from secrets"}}]});
    let token = app.post_json("/api/v1/map", &secret).await.json()["layergroupid"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.get(&format!("/api/v1/map/{token}/0/0/0.mvt")).await;
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            serde_json::json!({"error": ["permission denied for table secrets"]})
        )
    );
}

#[tokio::test]
async fn table_tiles_match_postgis_and_only_readable_tables_are_served() {
    let app = app().await;
    let r = app.get("/tiles/countries/0/0/0.mvt").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ours = decode(&r.body).unwrap();
    let reference =
        geostack_testkit::natural_earth::st_asmvt_tile(app.db.pool(), "countries", 0, 0, 0).await;
    let theirs = decode(&reference).unwrap();
    let ids = |t: &geostack::tiles::DecodedTile| {
        let mut v: Vec<(u64, DecodedValue)> = t.layers[0]
            .features
            .iter()
            .map(|f| (f.id.unwrap(), f.attributes["name"].clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    };
    assert_eq!(ids(&ours), ids(&theirs));
    assert_eq!(ours.layers[0].name, "countries");

    let tilejson = app.get("/tiles/countries").await.json();
    assert_eq!(
        tilejson["tiles"],
        serde_json::json!([format!(
            "http://{}/tiles/public.countries/{{z}}/{{x}}/{{y}}.mvt",
            app.addr
        )])
    );
    assert_eq!(app.get("/tiles/public.places/0/0/0.mvt").await.status, 200);
    sqlx::raw_sql("create table hidden (id int primary key, geom geometry(Point, 4326))")
        .execute(app.db.pool())
        .await
        .unwrap();
    for path in [
        "/tiles/hidden/0/0/0.mvt",
        "/tiles/secrets/0/0/0.mvt",
        "/tiles/nothing/0/0/0.mvt",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    // The regular key's role reads notes; the public one does not.
    sqlx::raw_sql(
        "insert into notes (note, geom) values ('here', ST_SetSRID(ST_MakePoint(10, 10), 4326))",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    let r = app
        .get(&format!("/tiles/notes/0/0/0.mvt?api_key={}", app.regular))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(decode(&r.body).unwrap().layers[0].features.len(), 1);
    assert_eq!(r.header("cache-control"), Some("private, max-age=60"));
    assert_eq!(app.get("/tiles/notes/0/0/0.mvt").await.status, 404);
}

#[tokio::test]
async fn stored_map_configs_are_bounded_in_size_and_per_user() {
    let app = app_with(|c| c.map_limits(4096, 2)).await;
    let map = |n: u32| {
        serde_json::json!({"version": "1.3.0", "layers": [{"type": "mapnik", "options": {
            "sql": format!("select gid, ST_Transform(geom, 3857) as the_geom_webmercator from places where gid = {n}")}}]})
    };
    // Too large: refused in CARTO's error shape, nothing stored.
    let mut big = map(0);
    big["padding"] = serde_json::Value::String("x".repeat(5000));
    let r = app.post_json("/api/v1/map", &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.json()["error"][0]
            .as_str()
            .unwrap()
            .contains("4096 bytes"),
        "{}",
        r.text()
    );
    // Three maps for a user who may keep two: the first one is dropped.
    let mut tokens = Vec::new();
    for n in 1..=3 {
        let r = app.post_json("/api/v1/map", &map(n)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokens.push(r.json()["layergroupid"].as_str().unwrap().to_owned());
    }
    let mut statuses = Vec::new();
    for t in &tokens {
        statuses.push(
            app.get(&format!("/api/v1/map/{t}/tilejson.json"))
                .await
                .status,
        );
    }
    assert_eq!(statuses, [404, 200, 200]);
}
