//! Maps and tiles end to end: a Windshaft layergroup stored under its token, its tiles and
//! TileJSON, table tiles, ETag/304 and 204 — every tile decoded and spec-checked.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::collections::BTreeMap;

use geostack::server::ServerConfig;
use geostack::tiles::{DecodedValue, TileGeometry, decode};
use support::{App, app, app_with, encode};

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
    // Instantiation errors come in Windshaft's shape.
    let message = "invalid map config: expected 1 to 16 layers";
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            serde_json::json!({"errors": [message],
                               "errors_with_context": [{"type": "unknown", "message": message}]})
        )
    );
    // A layer reading a table the caller may not read is refused when the map is made,
    // with the layer named; nothing is stored.
    let secret = serde_json::json!({"layers": [
        {"id": "ok", "options": {"sql": "select ST_Transform(geom, 3857) as the_geom_webmercator from places"}},
        {"id": "s", "type": "cartodb", "options": {
            "sql": "select ST_Transform(ST_SetSRID(ST_MakePoint(id, id), 4326), 3857) as the_geom_webmercator from secrets"}}]});
    let r = app.post_json("/api/v1/map", &secret).await;
    let message = "permission denied for table secrets";
    assert_eq!(
        (r.status, r.json()),
        (
            403,
            serde_json::json!({"errors": [message], "errors_with_context": [{
                "type": "layer", "message": message,
                "layer": {"index": 1, "id": "s", "type": "mapnik"}}]})
        )
    );
    // A column the layer names but its SQL lacks, and SQL the database cannot parse.
    for (options, message) in [
        (
            serde_json::json!({"sql": "select gid from places"}),
            "column \"the_geom_webmercator\" does not exist in the layer's SQL",
        ),
        (
            serde_json::json!({"sql": "select ST_Transform(geom, 3857) as the_geom_webmercator from places",
                               "interactivity": ["cartodb_id"]}),
            "column \"cartodb_id\" does not exist in the layer's SQL",
        ),
        (
            serde_json::json!({"sql": "selec 1"}),
            "syntax error at or near",
        ),
    ] {
        let config = serde_json::json!({"layers": [{"id": "bad", "options": options}]});
        let r = app.post_json("/api/v1/map", &config).await;
        assert_eq!(r.status, 400, "{}", r.text());
        let got = r.json();
        assert!(
            got["errors"][0].as_str().unwrap().contains(message),
            "{got}"
        );
        assert_eq!(got["errors_with_context"][0]["layer"]["index"], 0, "{got}");
    }
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
    // The attributes the tiles carry, typed.
    assert_eq!(
        tilejson["vector_layers"][0]["fields"],
        serde_json::json!({"iso": "String", "name": "String"})
    );
    let places = app.get("/tiles/places").await.json();
    assert_eq!(
        places["vector_layers"][0]["fields"]["pop_max"], "Number",
        "{places}"
    );
    // Once analyzed, its bounds are where its data is, not the world's.
    sqlx::raw_sql("analyze places")
        .execute(app.db.pool())
        .await
        .unwrap();
    let (west, south, east, north): (f64, f64, f64, f64) = sqlx::query_as(
        "select st_xmin(e), st_ymin(e), st_xmax(e), st_ymax(e) from (select st_extent(geom) e from places) s",
    )
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    let places = app.get("/tiles/places").await.json();
    let bounds: Vec<f64> = serde_json::from_value(places["bounds"].clone()).unwrap();
    assert_ne!(bounds, [-180.0, -85.0511, 180.0, 85.0511], "{places}");
    // The estimate holds the data, within its padding (a few percent of the span).
    let pad = |a: f64, b: f64| (b - a) * 0.05;
    let facts = format!("{bounds:?} against {west} {south} {east} {north}");
    assert!(
        bounds[0] <= west && west - bounds[0] <= pad(west, east),
        "{facts}"
    );
    assert!(
        bounds[1] <= south && south - bounds[1] <= pad(south, north),
        "{facts}"
    );
    assert!(
        bounds[2] >= east && bounds[2] - east <= pad(west, east),
        "{facts}"
    );
    assert!(
        bounds[3] >= north && bounds[3] - north <= pad(south, north),
        "{facts}"
    );
    // A keyed caller's URLs carry its key; a forwarded scheme from an untrusted peer is not
    // believed.
    let keyed = app
        .request(
            "GET",
            &format!("/tiles/countries?api_key={}", app.regular),
            &[("X-Forwarded-Proto", "https")],
            b"",
        )
        .await
        .json();
    assert_eq!(
        keyed["tiles"],
        serde_json::json!([format!(
            "http://{}/tiles/public.countries/{{z}}/{{x}}/{{y}}.mvt?api_key={}",
            app.addr, app.regular
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
        r.json()["errors"][0]
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

/// CARTO.js v4's config for a map of `source` with a background, one data layer and two
/// dataviews.
fn carto_js_config(source: &str) -> serde_json::Value {
    serde_json::json!({
        "buffersize": {"mvt": 0},
        "layers": [
            {"id": "bg", "type": "plain", "options": {"color": "#eee"}},
            {"id": "L1", "type": "mapnik", "options": {
                "cartocss": "#layer { marker-width: 7; }", "cartocss_version": "3.0.12",
                "source": {"id": "a0"}, "interactivity": ["cartodb_id"]}}
        ],
        "dataviews": {
            "cats": {"type": "aggregation", "source": {"id": "a0"},
                     "options": {"column": "name", "aggregation": "count", "aggregationColumn": null}}
        },
        "analyses": [{"id": "a0", "type": "source", "params": {"query": source}}]
    })
}

/// The JSON a JSONP answer passes to `callback`.
fn jsonp(body: &str, callback: &str) -> serde_json::Value {
    let start = format!("/**/ typeof {callback} === 'function' && {callback}(");
    let inner = body.strip_prefix(&start).and_then(|b| b.strip_suffix(");"));
    assert!(inner.is_some(), "not JSONP for {callback}: {body}");
    serde_json::from_str(inner.unwrap()).unwrap()
}

/// What CARTO.js's `lzma` parameter carries: the parameters as JSON, LZMA-compressed, each
/// byte shifted by 128 (JavaScript's signed bytes), in base64.
fn lzma_param(params: &serde_json::Value) -> String {
    use base64::Engine as _;
    let mut packed = Vec::new();
    lzma_rs::lzma_compress(&mut params.to_string().as_bytes(), &mut packed).unwrap();
    let shifted: Vec<u8> = packed.iter().map(|b| b ^ 0x80).collect();
    base64::engine::general_purpose::STANDARD.encode(shifted)
}

#[tokio::test]
async fn carto_js_instantiates_by_jsonp_or_lzma_and_carto_python_with_the_key_in_the_body() {
    let app = app().await;
    let source = "select gid as cartodb_id, name, ST_Transform(geom, 3857) as the_geom_webmercator from places";
    let config = carto_js_config(source).to_string();
    let r = app
        .get(&format!(
            "/user/alice/api/v1/map?config={}&callback=_cdbc_42",
            encode(&config)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let doc = jsonp(&r.text(), "_cdbc_42");
    let token = doc["layergroupid"].as_str().unwrap().to_owned();
    let base = format!("http://{}/user/alice/api/v1/map/{token}", app.addr);
    assert_eq!(doc["last_updated"], "1970-01-01T00:00:00.000Z");
    assert!(doc["cdn_url"].is_object());
    let layers = &doc["metadata"]["layers"];
    assert_eq!(
        (
            &layers[0]["type"],
            &layers[0]["id"],
            &layers[1]["type"],
            &layers[1]["id"]
        ),
        (
            &serde_json::json!("plain"),
            &serde_json::json!("bg"),
            &serde_json::json!("mapnik"),
            &serde_json::json!("L1")
        )
    );
    assert_eq!(layers[1]["meta"]["cartocss"], "#layer { marker-width: 7; }");
    assert_eq!(
        doc["metadata"]["dataviews"]["cats"]["url"]["http"],
        format!("{base}/dataview/cats")
    );
    let node = &doc["metadata"]["analyses"][0]["nodes"]["a0"];
    assert_eq!(
        (&node["status"], &node["query"]),
        (&serde_json::json!("ready"), &serde_json::json!(source))
    );
    // Its data layer's tiles, by the index CARTO.js gives it (1; 0 is the background).
    let tile = app.get(&format!("/api/v1/map/{token}/1/0/0/0.mvt")).await;
    assert_eq!(tile.status, 200, "{}", tile.text());
    let features = decode(&tile.body).unwrap().layers[0].features.len();
    let places: i64 = sqlx::query_scalar("select count(*) from places")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(i64::try_from(features).unwrap(), places);
    assert_eq!(
        app.get(&format!("/api/v1/map/{token}/0/0/0/0.mvt"))
            .await
            .status,
        400
    );

    // The same config compressed: the same map.
    let packed = lzma_param(&serde_json::json!({ "config": config }));
    let r = app
        .get(&format!("/api/v1/map?lzma={}&callback=cb", encode(&packed)))
        .await;
    assert_eq!(jsonp(&r.text(), "cb")["layergroupid"], token.as_str());
    // Errors reach a JSONP caller as its argument, in Windshaft's shape.
    let bad = carto_js_config("select nothing_here from places").to_string();
    let r = app
        .get(&format!("/api/v1/map?config={}&callback=cb", encode(&bad)))
        .await;
    assert_eq!(r.status, 200);
    let got = jsonp(&r.text(), "cb");
    assert_eq!(got["errors_with_context"][0]["layer"]["index"], 1, "{got}");
    assert!(
        got["errors"][0].as_str().unwrap().contains("nothing_here"),
        "{got}"
    );
    // A callback that is not a name is refused, not echoed.
    let r = app
        .get(&format!(
            "/api/v1/map?config={}&callback=alert(1)//",
            encode(&config)
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains("alert(1)"));
    // Undecodable lzma.
    let r = app.get("/api/v1/map?lzma=bm90IGx6bWE%3D").await;
    assert_eq!(r.status, 400, "{}", r.text());

    // carto-python sends the key inside the config's body: a map of notes, which only alice's
    // regular key reads, is made with it and refused without it.
    let mut notes = carto_js_config(
        "select id as cartodb_id, note as name, ST_Transform(geom, 3857) as the_geom_webmercator from notes",
    );
    let r = app.post_json("/api/v1/map", &notes).await;
    assert_eq!(r.status, 403, "{}", r.text());
    notes["api_key"] = serde_json::Value::String(app.regular.clone());
    let r = app.post_json("/api/v1/map", &notes).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A map of places with CARTO.js's dataviews: categories of `featurecla`, a histogram of
/// `pop_max`, a count and a sum; `filters` as Windshaft takes them.
async fn dataview_map(app: &App, filters: Option<serde_json::Value>) -> String {
    let config = serde_json::json!({
        "layers": [{"id": "L1", "type": "mapnik", "options": {
            "source": {"id": "a0"}, "cartocss": "#l {}",
            "attributes": {"id": "cartodb_id", "columns": ["name", "pop_max"]}}}],
        "analyses": [{"id": "a0", "type": "source", "params": {"query":
            "select gid as cartodb_id, name, featurecla, pop_max, ST_Transform(geom, 3857) as the_geom_webmercator from places"}}],
        "dataviews": {
            "cats": {"type": "aggregation", "source": {"id": "a0"},
                     "options": {"column": "featurecla", "aggregation": "count"}},
            "pops": {"type": "histogram", "source": {"id": "a0"},
                     "options": {"column": "pop_max", "bins": 5}},
            "total": {"type": "formula", "source": {"id": "a0"},
                      "options": {"column": "cartodb_id", "operation": "count"}},
            "people": {"type": "formula", "source": {"id": "a0"},
                       "options": {"column": "pop_max", "operation": "sum"}}
        }
    });
    let path = match filters {
        Some(f) => format!("/api/v1/map?filters={}", encode(&f.to_string())),
        None => "/api/v1/map".to_owned(),
    };
    let r = app.post_json(&path, &config).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["layergroupid"].as_str().unwrap().to_owned()
}

async fn scalar(app: &App, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(app.db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn dataviews_and_attributes_are_computed_by_postgresql_as_the_caller() {
    let app = app().await;
    let token = dataview_map(&app, None).await;
    let get = |path: String| {
        let app = &app;
        async move {
            let r = app.get(&path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            r.json()
        }
    };
    let base = format!("/api/v1/map/{token}");

    // Categories: the top six by count, the rest as Other, counted independently.
    let cats = get(format!("{base}/dataview/cats")).await;
    let expected: Vec<(String, i64)> = sqlx::query_as(
        "select featurecla, count(*) from places where featurecla is not null group by 1 order by 2 desc, 1",
    )
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    let got: Vec<(String, i64, bool)> = cats["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["category"].as_str().unwrap().to_owned(),
                c["value"].as_i64().unwrap(),
                c["agg"].as_bool().unwrap(),
            )
        })
        .collect();
    let top: Vec<(String, i64, bool)> = expected
        .iter()
        .take(6)
        .map(|(c, n)| (c.clone(), *n, false))
        .collect();
    assert_eq!(got[..top.len()], top[..]);
    if expected.len() > 6 {
        let rest: i64 = expected[6..].iter().map(|(_, n)| n).sum();
        assert_eq!(got[6], ("Other".to_owned(), rest, true));
    }
    let all = scalar(&app, "select count(*) from places").await;
    assert_eq!(cats["count"], all);
    assert_eq!(
        cats["categoriesCount"],
        i64::try_from(expected.len()).unwrap()
    );

    // Within a bounding box (Europe), by the same test PostGIS makes.
    let europe = "-10,35,30,60";
    let in_box = scalar(
        &app,
        "select count(*) from places where ST_Transform(geom, 3857) && ST_Transform(ST_MakeEnvelope(-10, 35, 30, 60, 4326), 3857)",
    )
    .await;
    let total = get(format!("{base}/dataview/total?bbox={europe}")).await;
    assert_eq!(
        (
            &total["type"],
            &total["operation"],
            total["result"].as_i64()
        ),
        (
            &serde_json::json!("formula"),
            &serde_json::json!("count"),
            Some(in_box)
        )
    );
    assert!(in_box > 0 && in_box < all);
    let people = get(format!("{base}/dataview/people")).await;
    let sum = scalar(&app, "select sum(pop_max)::int8 from places").await;
    assert_eq!(people["result"].as_f64().unwrap() as i64, sum);

    // A histogram: five bins from the smallest value, every row with a value in one of them.
    let pops = get(format!("{base}/dataview/pops")).await;
    assert_eq!(pops["bins_count"], 5);
    let min = scalar(&app, "select min(pop_max)::int8 from places").await;
    assert_eq!(pops["bins_start"].as_f64().unwrap() as i64, min);
    let freq: i64 = pops["bins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["freq"].as_i64().unwrap())
        .sum();
    assert_eq!(
        freq,
        scalar(&app, "select count(pop_max) from places").await
    );
    let ten = get(format!("{base}/dataview/pops?bins=10&start=0&end=1000000")).await;
    assert_eq!(
        (ten["bins_count"].as_i64(), ten["bins_start"].as_f64()),
        (Some(10), Some(0.0))
    );
    assert_eq!(
        ten["bins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["freq"].as_i64().unwrap())
            .sum::<i64>(),
        scalar(
            &app,
            "select count(*) from places where pop_max between 0 and 1000000"
        )
        .await
    );

    // Search among the categories.
    let found = get(format!("{base}/dataview/cats/search?q=capital")).await;
    let names: Vec<&str> = found["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["category"].as_str().unwrap())
        .collect();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.to_lowercase().contains("capital")),
        "{names:?}"
    );

    // Filters given at instantiation: the layer and the other dataviews keep the accepted
    // category's rows; the dataview's own only with own_filter=1.
    let filtered = dataview_map(
        &app,
        Some(serde_json::json!({"dataviews": {"cats": {"accept": ["Admin-0 capital"]}}})),
    )
    .await;
    assert_ne!(filtered, token);
    let capitals = scalar(
        &app,
        "select count(*) from places where featurecla = 'Admin-0 capital'",
    )
    .await;
    let fbase = format!("/api/v1/map/{filtered}");
    assert_eq!(
        get(format!("{fbase}/dataview/total")).await["result"],
        capitals
    );
    assert_eq!(get(format!("{fbase}/dataview/cats")).await["count"], all);
    let own = get(format!("{fbase}/dataview/cats?own_filter=1")).await;
    assert_eq!(
        own["categories"],
        serde_json::json!([{"category": "Admin-0 capital", "value": capitals, "agg": false}])
    );
    let tile = app.get(&format!("{fbase}/0/0/0/0.mvt")).await;
    assert_eq!(tile.status, 200, "{}", tile.text());
    assert_eq!(
        i64::try_from(decode(&tile.body).unwrap().layers[0].features.len()).unwrap(),
        capitals
    );
    let range = dataview_map(
        &app,
        Some(serde_json::json!({"dataviews": {"pops": {"min": 1000000, "max": 5000000}}})),
    )
    .await;
    assert_eq!(
        get(format!("/api/v1/map/{range}/dataview/total")).await["result"],
        scalar(
            &app,
            "select count(*) from places where pop_max >= 1000000 and pop_max < 5000000"
        )
        .await
    );
    // A filter's values are data, never SQL.
    let hostile = dataview_map(
        &app,
        Some(serde_json::json!({"dataviews": {"cats": {"accept": ["x') or true or ('"]}}})),
    )
    .await;
    assert_eq!(
        get(format!("/api/v1/map/{hostile}/dataview/total")).await["result"],
        0
    );

    // A feature's attributes, as the layer lists them.
    let (gid, name, pop): (i32, String, i64) =
        sqlx::query_as("select gid, name, pop_max::int8 from places order by gid limit 1")
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    let attrs = get(format!("{base}/0/attributes/{gid}")).await;
    assert_eq!(attrs, serde_json::json!({"name": name, "pop_max": pop}));
    assert_eq!(
        app.get(&format!("{base}/0/attributes/-1")).await.status,
        404
    );
    assert_eq!(app.get(&format!("{base}/dataview/nope")).await.status, 404);
    assert_eq!(
        app.get(&format!("{base}/dataview/cats?bbox=1,2"))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn a_histogram_of_dates_bins_by_the_calendar() {
    let app = app().await;
    let config = serde_json::json!({
        "layers": [{"options": {"source": {"id": "d"}}}],
        "analyses": [{"id": "d", "type": "source", "params": {"query":
            "select gid as cartodb_id, date '2020-01-15' + (gid % 400) as founded, ST_Transform(geom, 3857) as the_geom_webmercator from places"}}],
        "dataviews": {"when": {"type": "histogram", "source": {"id": "d"},
                               "options": {"column": "founded", "aggregation": "month"}}}
    });
    let r = app.post_json("/api/v1/map", &config).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["layergroupid"].as_str().unwrap().to_owned();
    let r = app
        .get(&format!(
            "/api/v1/map/{token}/dataview/when?aggregation=month"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json();
    assert_eq!(h["aggregation"], "month");
    // 2020-01-01 00:00 UTC.
    assert_eq!(h["timestamp_start"].as_f64(), Some(1_577_836_800.0));
    let expected: Vec<(i64, i64)> = sqlx::query_as(
        "select ((extract(year from m) - 2020) * 12 + extract(month from m) - 1)::int8, count(*)
         from (select date_trunc('month', date '2020-01-15' + (gid % 400)) m from places) x
         group by 1 order by 1",
    )
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    let got: Vec<(i64, i64)> = h["bins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["bin"].as_i64().unwrap(), b["freq"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        h["bins_count"].as_i64(),
        expected.last().map(|(b, _)| b + 1)
    );
    let auto = app
        .get(&format!(
            "/api/v1/map/{token}/dataview/when?aggregation=auto"
        ))
        .await
        .json();
    // About eight months of dates: binned by month.
    assert_eq!(auto["aggregation"], "month", "{auto}");
}

#[tokio::test]
async fn circle_and_polygon_filters_narrow_dataviews_as_postgis_does() {
    let app = app().await;
    let token = dataview_map(&app, None).await;
    let total = |query: String| {
        let app = &app;
        let token = token.clone();
        async move {
            let r = app
                .get(&format!("/api/v1/map/{token}/dataview/total?{query}"))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["result"].as_i64().unwrap()
        }
    };
    // 1 000 km around Paris.
    let circle = serde_json::json!({"lng": 2.35, "lat": 48.85, "radius": 1_000_000});
    let near = scalar(
        &app,
        "select count(*) from places where ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint(2.35, 48.85), 4326)::geography, 1000000)",
    )
    .await;
    assert!(near > 0);
    assert_eq!(
        total(format!("circle={}", encode(&circle.to_string()))).await,
        near
    );
    // A triangle over Africa.
    let polygon = serde_json::json!({"type": "Polygon", "coordinates": [[[-20, 35], [50, 35], [15, -35], [-20, 35]]]});
    let inside = scalar(
        &app,
        "select count(*) from places where ST_Intersects(geom, ST_SetSRID(ST_GeomFromText('POLYGON((-20 35,50 35,15 -35,-20 35))'), 4326))",
    )
    .await;
    assert!(inside > 0);
    assert_eq!(
        total(format!("polygon={}", encode(&polygon.to_string()))).await,
        inside
    );
    let r = app
        .get(&format!(
            "/api/v1/map/{token}/dataview/total?polygon=%7B%22type%22%3A%22Point%22%7D"
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn a_layer_of_a_cartodbfied_table_is_just_select_star() {
    let app = app().await;
    geostack::sql::cartodbfy(app.db.pool(), "public.places")
        .await
        .unwrap();
    let config = serde_json::json!({"layers": [{"type": "cartodb", "options": {
        "sql": "select * from places", "cartocss": "#places { marker-width: 4; }",
        "cartocss_version": "2.1.1", "interactivity": ["cartodb_id"]}}]});
    let r = app.post_json("/api/v1/map", &config).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["layergroupid"].as_str().unwrap().to_owned();
    let tile = app.get(&format!("/api/v1/map/{token}/0/0/0.mvt")).await;
    assert_eq!(tile.status, 200, "{}", tile.text());
    let features = decode(&tile.body).unwrap().layers[0].features.len();
    assert_eq!(
        i64::try_from(features).unwrap(),
        scalar(&app, "select count(*) from places").await
    );
}

#[tokio::test]
async fn a_write_through_the_sql_api_drops_its_tables_cached_tiles() {
    let app = app().await;
    let tile = format!("/tiles/notes/0/0/0.mvt?api_key={}", app.regular);
    let before = app.get(&tile).await;
    assert_eq!(before.status, 204, "{}", before.text());
    // Kept: asked again, the same empty tile.
    assert_eq!(app.get(&tile).await.header("etag"), before.header("etag"));
    let insert = format!(
        "/api/v2/sql?q={}&api_key={}",
        encode(
            "insert into notes (note, geom) values ('new', ST_SetSRID(ST_MakePoint(1, 1), 4326))"
        ),
        app.regular
    );
    assert_eq!(app.get(&insert).await.status, 200);
    let after = app.get(&tile).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_ne!(after.header("etag"), before.header("etag"));
    assert_eq!(decode(&after.body).unwrap().layers[0].features.len(), 1);
    // A read changes nothing: the tile stays cached.
    let read = format!(
        "/api/v2/sql?q={}&api_key={}",
        encode("select count(*) from notes"),
        app.regular
    );
    assert_eq!(app.get(&read).await.status, 200);
    assert_eq!(app.get(&tile).await.header("etag"), after.header("etag"));

    // A map's tiles too: they are kept under the tables their layers read.
    let map_tile = notes_map_tile(&app).await;
    let first = app.get(&map_tile).await;
    assert_eq!(decode(&first.body).unwrap().layers[0].features.len(), 1);
    assert_eq!(
        app.get(&map_tile).await.header("etag"),
        first.header("etag")
    );
    assert_eq!(app.get(&insert).await.status, 200);
    let second = app.get(&map_tile).await;
    assert_ne!(second.header("etag"), first.header("etag"));
    assert_eq!(decode(&second.body).unwrap().layers[0].features.len(), 2);
}

#[tokio::test]
async fn table_sources_are_shaped_by_their_path_and_seen_once_granted() {
    let app = app().await;
    let role = app.regular_role.name().to_owned();
    let keyed = |path: &str| format!("{path}?api_key={}", app.regular);
    sqlx::raw_sql(
        "create table shaped (gid int, name text, geom geometry(Point, 4326),
                              geom3857 geometry(Point, 3857));
         insert into shaped
           select n, 'p' || n, ST_SetSRID(ST_MakePoint(n * 10, n * 5), 4326),
                  ST_Transform(ST_SetSRID(ST_MakePoint(-n * 10, -n * 5), 4326), 3857)
           from generate_series(1, 3) n;
         create view shaped_view as select gid as cartodb_id, name, geom from shaped;",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    // Not granted yet: not there; granted, there within a second.
    let r = app.get(&keyed("/tiles/shaped/0/0/0.mvt")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant select on shaped, shaped_view to \"{role}\""
    )))
    .execute(app.db.pool())
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let first = app.get(&keyed("/tiles/shaped/0/0/0.mvt")).await;
    assert_eq!(first.status, 200, "{}", first.text());

    // Its other geometry column, chosen by name (its points mirror the first column's: west
    // and south of 0/0 instead of east and north); the table has no key, so no ids.
    let points = |body: &[u8]| {
        let tile = decode(body).unwrap();
        let layer = &tile.layers[0];
        let points: Vec<(Option<u64>, [i32; 2])> = layer
            .features
            .iter()
            .map(|f| match &f.geometry {
                TileGeometry::Points(p) => (f.id, p[0]),
                other => panic!("not a point: {other:?}"),
            })
            .collect();
        (layer.name.clone(), points)
    };
    let (_, east) = points(&first.body);
    assert!(
        east.iter().all(|(_, [x, y])| *x > 2048 && *y < 2048),
        "{east:?}"
    );
    let other = app.get(&keyed("/tiles/shaped.geom3857/0/0/0.mvt")).await;
    assert_eq!(other.status, 200, "{}", other.text());
    let (name, west) = points(&other.body);
    assert_eq!(name, "shaped");
    assert_eq!(west.len(), 3);
    assert!(
        west.iter().all(|(_, [x, y])| *x < 2048 && *y > 2048),
        "{west:?}"
    );
    assert!(west.iter().all(|(id, _)| id.is_none()));
    let tilejson = app.get(&keyed("/tiles/shaped.geom3857")).await.json();
    assert_eq!(
        tilejson["tiles"][0].as_str().unwrap(),
        format!(
            "http://{}/tiles/public.shaped.geom3857/{{z}}/{{x}}/{{y}}.mvt?api_key={}",
            app.addr, app.regular
        )
    );
    assert_eq!(
        app.get(&keyed("/tiles/shaped.nothing/0/0/0.mvt"))
            .await
            .status,
        404
    );

    // A view: ids from its cartodb_id column.
    let view = app.get(&keyed("/tiles/shaped_view/0/0/0.mvt")).await;
    assert_eq!(view.status, 200, "{}", view.text());
    let mut ids: Vec<u64> = points(&view.body)
        .1
        .into_iter()
        .map(|(id, _)| id.unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);

    // Two sources, one tile: a layer each, as each alone; TileJSON lists both with their own
    // fields.
    let both = app.get("/tiles/countries,places/0/0/0.mvt").await;
    assert_eq!(both.status, 200, "{}", both.text());
    let both = decode(&both.body).unwrap();
    let names: Vec<&str> = both.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["countries", "places"]);
    for (i, table) in ["countries", "places"].into_iter().enumerate() {
        let alone = decode(&app.get(&format!("/tiles/{table}/0/0/0.mvt")).await.body).unwrap();
        assert_eq!(
            both.layers[i].features.len(),
            alone.layers[0].features.len()
        );
    }
    let tilejson = app.get("/tiles/countries,places").await.json();
    let layers = tilejson["vector_layers"]
        .as_array()
        .unwrap_or_else(|| panic!("{tilejson}"));
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0]["fields"]["iso"], "String");
    assert_eq!(layers[1]["fields"]["pop_max"], "Number");
    assert!(layers[0]["fields"].get("pop_max").is_none());
    // A source the caller may not read spoils the whole tile; one layer name twice is refused.
    assert_eq!(
        app.get("/tiles/countries,notes/0/0/0.mvt").await.status,
        404
    );
    assert_eq!(
        app.get("/tiles/countries,public.countries/0/0/0.mvt")
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn without_a_tile_cache_every_tile_is_rendered_afresh() {
    let app = app_with(|c| c.tile_cache(0, std::time::Duration::from_secs(300))).await;
    let tile = format!("/tiles/notes/0/0/0.mvt?api_key={}", app.regular);
    assert_eq!(app.get(&tile).await.status, 204);
    // Written straight into PostgreSQL (no API write to drop a cached tile): seen at once.
    sqlx::raw_sql(
        "insert into notes (note, geom) values ('x', ST_SetSRID(ST_MakePoint(1, 1), 4326))",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    let after = app.get(&tile).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(decode(&after.body).unwrap().layers[0].features.len(), 1);
}

#[tokio::test]
async fn table_tiles_are_served_at_the_configured_zooms_only() {
    assert!(ServerConfig::default().tile_zooms(5, 4).is_err());
    assert!(ServerConfig::default().tile_zooms(0, 31).is_err());
    let app = app_with(|c| c.tile_zooms(1, 6).unwrap()).await;
    let tilejson = app.get("/tiles/countries").await.json();
    assert_eq!(
        (&tilejson["minzoom"], &tilejson["maxzoom"]),
        (&1.into(), &6.into())
    );
    assert_eq!(
        (
            &tilejson["vector_layers"][0]["minzoom"],
            &tilejson["vector_layers"][0]["maxzoom"]
        ),
        (&1.into(), &6.into())
    );
    // Europe has countries at every zoom; outside 1 to 6 its tiles are empty.
    for (z, x, y, status) in [
        (0, 0, 0, 204),
        (1, 1, 0, 200),
        (6, 33, 21, 200),
        (7, 66, 42, 204),
    ] {
        let got = app.get(&format!("/tiles/countries/{z}/{x}/{y}.mvt")).await;
        assert_eq!(got.status, status, "{z}/{x}/{y}: {}", got.text());
    }
}

#[tokio::test]
async fn writes_straight_into_postgresql_and_batch_writes_drop_cached_tiles() {
    let app = app().await;
    let tile = format!("/tiles/notes/0/0/0.mvt?api_key={}", app.regular);
    let map_tile = notes_map_tile(&app).await;
    let features = |body: &[u8]| {
        if body.is_empty() {
            0
        } else {
            decode(body).unwrap().layers[0].features.len()
        }
    };
    // Both kept, empty.
    for path in [&tile, &map_tile] {
        let first = app.get(path).await;
        assert_eq!(first.status, 204, "{}", first.text());
        assert_eq!(app.get(path).await.header("etag"), first.header("etag"));
    }
    // A client of its own writes: both tiles show it within a second.
    sqlx::raw_sql(
        "insert into notes (note, geom) values ('direct', ST_SetSRID(ST_MakePoint(3, 3), 4326))",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    let started = std::time::Instant::now();
    for path in [&tile, &map_tile] {
        support::until(
            "the write seen",
            std::time::Duration::from_secs(1),
            async || {
                let r = app.get(path).await;
                (features(&r.body) == 1).then_some(())
            },
        )
        .await;
    }
    eprintln!("a direct write seen after {:?}", started.elapsed());
    // A batch query's write too.
    let r = app
        .post_form(
            &format!("/api/v2/sql/job?api_key={}", app.regular),
            &[(
                "query",
                "insert into notes (note, geom) values ('batch', ST_SetSRID(ST_MakePoint(4, 4), 4326))",
            )],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    support::until(
        "the batch write seen",
        std::time::Duration::from_secs(20),
        async || {
            let r = app.get(&tile).await;
            (features(&r.body) == 2).then_some(())
        },
    )
    .await;
    // A rolled-back write changes nothing: the tile stays as kept.
    let kept = app.get(&tile).await;
    sqlx::raw_sql(
        "begin; insert into notes (note, geom) values ('no', ST_SetSRID(ST_MakePoint(5, 5), 4326)); rollback;",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.get(&tile).await.header("etag"), kept.header("etag"));
    assert_eq!(features(&kept.body), 2);
}

#[tokio::test]
async fn a_table_tile_carries_the_attributes_its_request_chose() {
    let app = app().await;
    let attributes = |body: &[u8]| {
        let tile = decode(body).unwrap();
        let mut names: Vec<String> = tile.layers[0]
            .features
            .iter()
            .flat_map(|f| f.attributes.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let all = app.get("/tiles/places/0/0/0.mvt").await;
    assert!(
        attributes(&all.body).len() > 2,
        "{:?}",
        attributes(&all.body)
    );
    let chosen = app.get("/tiles/places/0/0/0.mvt?fields=pop_max,name").await;
    assert_eq!(chosen.status, 200, "{}", chosen.text());
    assert_eq!(attributes(&chosen.body), ["name", "pop_max"]);
    // Each its own tile: the full one is still whole.
    let again = app.get("/tiles/places/0/0/0.mvt").await;
    assert_eq!(again.header("etag"), all.header("etag"));
    let none = app.get("/tiles/places/0/0/0.mvt?fields=").await;
    assert!(attributes(&none.body).is_empty());
    assert_eq!(
        decode(&none.body).unwrap().layers[0].features.len(),
        decode(&all.body).unwrap().layers[0].features.len()
    );
    // Across a composite: each layer keeps those it has.
    let both = app
        .get("/tiles/countries,places/0/0/0.mvt?fields=name,iso")
        .await;
    let both = decode(&both.body).unwrap();
    let keys = |i: usize| {
        let mut k: Vec<String> = both.layers[i]
            .features
            .iter()
            .flat_map(|f| f.attributes.keys().cloned())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    assert_eq!(keys(0), ["iso", "name"]);
    assert_eq!(keys(1), ["name"]);
    // TileJSON says so and passes the choice on to its tiles.
    let tilejson = app.get("/tiles/places?fields=name").await.json();
    assert_eq!(
        tilejson["vector_layers"][0]["fields"],
        serde_json::json!({"name": "String"})
    );
    assert!(
        tilejson["tiles"][0]
            .as_str()
            .unwrap()
            .ends_with("/tiles/public.places/{z}/{x}/{y}.mvt?fields=name"),
        "{tilejson}"
    );
    let unknown = app.get("/tiles/places/0/0/0.mvt?fields=secret").await;
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.json()["error"][0]
            .as_str()
            .unwrap()
            .contains("secret")
    );
}

#[tokio::test]
async fn last_modified_follows_the_table_s_last_change() {
    let app = app().await;
    let tile = format!("/tiles/notes/0/0/0.mvt?api_key={}", app.regular);
    let first = app.get(&tile).await;
    let modified = first.header("last-modified").unwrap().to_owned();
    assert!(modified.ends_with(" GMT"), "{modified}");
    // Validated by date alone: not modified since.
    let same = app
        .get_with(&tile, &[("if-modified-since", modified.as_str())])
        .await;
    assert_eq!(same.status, 304, "{}", same.text());
    assert!(same.body.is_empty());
    // Another table's change leaves it as it was.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sqlx::raw_sql("update countries set name = name")
        .execute(app.db.pool())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let other = app.get(&tile).await;
    assert_eq!(other.header("last-modified"), Some(modified.as_str()));
    // Its own table's change moves it on, and the old date no longer validates.
    sqlx::raw_sql("insert into notes (note) values ('later')")
        .execute(app.db.pool())
        .await
        .unwrap();
    let later = support::until(
        "a later date",
        std::time::Duration::from_secs(2),
        async || {
            let r = app.get(&tile).await;
            (r.header("last-modified") != Some(modified.as_str())).then_some(r)
        },
    )
    .await;
    let stale = app
        .get_with(&tile, &[("if-modified-since", modified.as_str())])
        .await;
    assert_ne!(stale.status, 304);
    let fresh = later.header("last-modified").unwrap();
    let again = app.get_with(&tile, &[("if-modified-since", fresh)]).await;
    assert_eq!(again.status, 304);
}

/// Tile 0/0/0 of a map of `notes` made with the regular key, its path.
async fn notes_map_tile(app: &App) -> String {
    let config = serde_json::json!({"layers": [{"options": {
        "sql": "select id, ST_Transform(geom, 3857) as the_geom_webmercator from notes"}}]});
    let r = app
        .post_json(&format!("/api/v1/map?api_key={}", app.regular), &config)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["layergroupid"].as_str().unwrap().to_owned();
    format!("/api/v1/map/{token}/0/0/0.mvt?api_key={}", app.regular)
}

/// A square PNG's side and its pixels (RGBA, rows top down).
fn png_pixels(bytes: &[u8]) -> (u32, Vec<u8>) {
    let (width, height, pixels) = png_image(bytes);
    assert_eq!(width, height);
    (width, pixels)
}

/// A PNG's width, height and pixels (RGBA, rows top down).
fn png_image(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgba);
    (info.width, info.height, pixels)
}

/// `lon`/`lat` as a fraction of the Web Mercator world, from its top left corner.
fn world(lon: f64, lat: f64) -> [f64; 2] {
    let phi = lat.to_radians();
    [
        (lon + 180.0) / 360.0,
        (1.0 - (std::f64::consts::FRAC_PI_4 + phi / 2.0).tan().ln() / std::f64::consts::PI) / 2.0,
    ]
}

/// A JPEG's width and height, from its frame header.
fn jpeg_size(bytes: &[u8]) -> Option<(u16, u16)> {
    assert_eq!(&bytes[..2], &[0xff, 0xd8], "a JPEG starts with SOI");
    let mut at = 2;
    while at + 9 < bytes.len() {
        assert_eq!(bytes[at], 0xff, "a marker at {at}");
        let marker = bytes[at + 1];
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if (0xc0..=0xc2).contains(&marker) {
            let h = u16::from_be_bytes([bytes[at + 5], bytes[at + 6]]);
            let w = u16::from_be_bytes([bytes[at + 7], bytes[at + 8]]);
            return Some((w, h));
        }
        at += 2 + len;
    }
    None
}

#[tokio::test]
async fn static_maps_draw_every_layer_by_centre_and_by_box() {
    let app = app_with(|c| c.static_map_limit(1000)).await;
    let config = serde_json::json!({"version": "1.3.0", "layers": [
        {"type": "cartodb", "options": {
            "sql": "select gid, name, ST_Transform(geom, 3857) as the_geom_webmercator from countries",
            "cartocss": "#countries { polygon-fill: #ff0000; [name = 'Brazil'] { polygon-fill: #0000ff; } }",
            "cartocss_version": "2.1.1"}},
        {"type": "cartodb", "options": {
            "sql": "select 1 as cartodb_id, ST_Transform(ST_SetSRID(ST_MakePoint(-30, -30), 4326), 3857) as the_geom_webmercator",
            "cartocss": "#points { marker-width: 20; marker-fill: #00ff00; marker-line-width: 0; marker-allow-overlap: true; }",
            "cartocss_version": "2.1.1"}}]});
    let r = app.post_json("/api/v1/map", &config).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["layergroupid"].as_str().unwrap().to_owned();

    // By centre: zoom 2 (a world of 1024 pixels) around (0, 0), 600 × 300.
    let path = format!("/api/v1/map/static/center/{token}/2/0/0/600/300.png");
    let r = app.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    let (width, height, pixels) = png_image(&r.body);
    assert_eq!((width, height), (600, 300));
    let at = |lon: f64, lat: f64| {
        let ([x, y], [cx, cy]) = (world(lon, lat), world(0.0, 0.0));
        let x = (300.0 + (x - cx) * 1024.0) as usize;
        let y = (150.0 + (y - cy) * 1024.0) as usize;
        let i = (y * 600 + x) * 4;
        <[u8; 4]>::try_from(&pixels[i..i + 4]).unwrap()
    };
    assert_eq!(at(20.0, 7.0), [255, 0, 0, 255], "Central Africa");
    assert_eq!(at(-50.0, -10.0), [0, 0, 255, 255], "Brazil");
    assert_eq!(
        at(-30.0, -30.0),
        [0, 255, 0, 255],
        "the second layer's marker"
    );
    assert_eq!(at(-20.0, 0.0)[3], 0, "the Atlantic");
    let again = app.get(&path).await;
    assert_eq!(
        (again.body.as_slice(), again.header("etag")),
        (r.body.as_slice(), r.header("etag")),
        "cached"
    );

    // The same as JPEG, over white.
    let r = app
        .get(&format!(
            "/api/v1/map/static/center/{token}/2/0/0/600/300.jpg"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(jpeg_size(&r.body), Some((600, 300)));

    // By box: South America, whole and centred in 400 × 400, at the zoom it fits.
    let (w, s, e, n) = (-80.0, -40.0, -30.0, 10.0);
    let r = app
        .get(&format!(
            "/api/v1/map/static/bbox/{token}/{w},{s},{e},{n}/400/400.png"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (width, height, pixels) = png_image(&r.body);
    assert_eq!((width, height), (400, 400));
    let ([x0, y1], [x1, y0]) = (world(w, s), world(e, n));
    let per_pixel = ((x1 - x0) / 400.0).max((y1 - y0) / 400.0);
    let at = |lon: f64, lat: f64| {
        let [x, y] = world(lon, lat);
        let x = (200.0 + (x - (x0 + x1) / 2.0) / per_pixel) as usize;
        let y = (200.0 + (y - (y0 + y1) / 2.0) / per_pixel) as usize;
        let i = (y * 400 + x) * 4;
        <[u8; 4]>::try_from(&pixels[i..i + 4]).unwrap()
    };
    assert_eq!(at(-50.0, -10.0), [0, 0, 255, 255], "Brazil");
    assert_eq!(at(-65.0, -35.0), [255, 0, 0, 255], "Argentina");
    assert_eq!(at(-40.0, -30.0)[3], 0, "the Atlantic");

    // Bad sizes, places and formats: 400 in CARTO's shape.
    for bad in [
        format!("static/center/{token}/2/0/0/1001/300.png"),
        format!("static/center/{token}/2/0/0/0/300.png"),
        format!("static/center/{token}/2/0/0/600/300.gif"),
        format!("static/center/{token}/31/0/0/600/300.png"),
        format!("static/center/{token}/2/89/0/600/300.png"),
        format!("static/center/{token}/2/x/0/600/300.png"),
        format!("static/bbox/{token}/-80,-40,-30/400/400.png"),
        format!("static/bbox/{token}/-30,-40,-80,10/400/400.png"),
    ] {
        let r = app.get(&format!("/api/v1/map/{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"][0].is_string(), "{bad}: {}", r.text());
    }
    assert_eq!(
        app.get("/api/v1/map/static/center/nosuchmap/2/0/0/600/300.png")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn raster_tiles_draw_each_layer_s_cartocss() {
    let app = app().await;
    let style = "#layer { polygon-fill: #ff0000; polygon-gamma: 0.5;
        [name = 'Brazil'] { polygon-fill: #0000ff; } }";
    let config = serde_json::json!({"version": "1.3.0", "layers": [{"type": "mapnik", "options": {
        "sql": "select gid, name, ST_Transform(geom, 3857) as the_geom_webmercator from countries",
        "cartocss": style, "cartocss_version": "3.0.12", "interactivity": ["name"],
        "attributes": {"id": "gid", "columns": ["name"]}}}]});
    let r = app.post_json("/api/v1/map", &config).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let token = doc["layergroupid"].as_str().unwrap().to_owned();
    assert_eq!(
        doc["metadata"]["layers"][0]["meta"]["warnings"],
        serde_json::json!(["polygon-gamma is not drawn by this renderer (ignored)"])
    );
    assert_eq!(
        doc["metadata"]["url"]["raster"]["urlTemplate"],
        format!(
            "http://{}/api/v1/map/{token}/{{z}}/{{x}}/{{y}}.png",
            app.addr
        )
    );

    // Where (lon, lat) falls on the z0 image of `side` pixels: its colour.
    let at = |side: u32, pixels: &[u8], lon: f64, lat: f64| {
        let [x, y] = z0(lon, lat);
        let (x, y) = (
            (f64::from(x) * f64::from(side) / 4096.0) as usize,
            (f64::from(y) * f64::from(side) / 4096.0) as usize,
        );
        let i = (y * side as usize + x) * 4;
        <[u8; 4]>::try_from(&pixels[i..i + 4]).unwrap()
    };
    for (path, side) in [
        (format!("/api/v1/map/{token}/0/0/0.png"), 256),
        (format!("/api/v1/map/{token}/0/0/0/0@2x.png"), 512),
    ] {
        let r = app.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("image/png"));
        let (got, pixels) = png_pixels(&r.body);
        assert_eq!(got, side);
        // The Central African Republic and Siberia are red, Brazil blue (its own rule), the
        // oceans clear. (Pixels on a border between two countries are partly covered by each,
        // as in Mapnik: the points are inside.)
        assert_eq!(at(side, &pixels, 20.0, 7.0), [255, 0, 0, 255], "{path}");
        assert_eq!(at(side, &pixels, 100.0, 62.0), [255, 0, 0, 255], "{path}");
        assert_eq!(at(side, &pixels, -50.0, -10.0), [0, 0, 255, 255], "{path}");
        assert_eq!(at(side, &pixels, -140.0, 0.0)[3], 0, "{path}");
        assert_eq!(at(side, &pixels, -30.0, -30.0)[3], 0, "{path}");
        // Cached: the same image under the same ETag.
        let again = app.get(&path).await;
        assert_eq!(again.body, r.body);
        assert_eq!(again.header("etag"), r.header("etag"));
    }
    // The layer's UTFGrid: which country each 4-pixel cell shows, its interactivity the data,
    // its id the key the attributes endpoint answers for.
    let r = app
        .get(&format!("/api/v1/map/{token}/0/0/0/0.grid.json"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let grid = r.json();
    let rows = grid["grid"].as_array().unwrap();
    assert_eq!(rows.len(), 64);
    let cell = |lon: f64, lat: f64| {
        let [x, y] = z0(lon, lat);
        let row: Vec<char> = rows[(y / 64) as usize].as_str().unwrap().chars().collect();
        assert_eq!(row.len(), 64);
        let mut code = row[(x / 64) as usize] as usize;
        if code >= 93 {
            code -= 1;
        }
        if code >= 35 {
            code -= 1;
        }
        grid["keys"][code - 32].as_str().unwrap().to_owned()
    };
    let brazil = cell(-50.0, -10.0);
    assert_eq!(
        grid["data"][&brazil],
        serde_json::json!({"name": "Brazil"}),
        "{grid}"
    );
    let gid: i32 = sqlx::query_scalar("select gid from countries where name = 'Brazil'")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(brazil, gid.to_string());
    let attributes = app
        .get(&format!("/api/v1/map/{token}/0/attributes/{brazil}"))
        .await
        .json();
    assert_eq!(attributes, serde_json::json!({"name": "Brazil"}));
    assert_eq!(cell(-140.0, 0.0), "");
    assert_eq!(grid["keys"][0], "");
    // A grid is of one layer.
    assert_eq!(
        app.get(&format!("/api/v1/map/{token}/0/0/0.grid.json"))
            .await
            .status,
        400
    );

    // Out of range and an unknown extension stay errors.
    assert_eq!(
        app.get(&format!("/api/v1/map/{token}/1/2/0.png"))
            .await
            .status,
        400
    );
    assert_eq!(
        app.get(&format!("/api/v1/map/{token}/0/0/0.gif"))
            .await
            .status,
        400
    );

    // A style that does not parse, or reads a column the SQL lacks, is refused when the map
    // is made, in Windshaft's shape.
    for (cartocss, message) in [
        (
            "#layer {\n  polygon-fil: red;\n}",
            "invalid CartoCSS: 2:3 unrecognized property polygon-fil",
        ),
        (
            "#layer [pop_est > 1e6] { polygon-fill: red; }",
            "column \"pop_est\" does not exist in the layer's SQL",
        ),
    ] {
        let mut bad = config.clone();
        bad["layers"][0]["options"]["cartocss"] = cartocss.into();
        let r = app.post_json("/api/v1/map", &bad).await;
        assert_eq!(r.status, 400, "{}", r.text());
        let got = r.json();
        let text = got["errors"][0].as_str().unwrap();
        assert!(text.contains(message), "{got}");
        assert_eq!(got["errors_with_context"][0]["layer"]["index"], 0, "{got}");
    }
}
