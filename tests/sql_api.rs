//! The SQL API end to end, over real TCP: every format, the options, the headers CARTO's
//! clients rely on, and POST bodies.

mod support;

use support::{app, encode};

fn sql(q: &str, extra: &str) -> String {
    format!("/api/v2/sql?q={}{extra}", encode(q))
}

const TOP3: &str = "select gid, name, pop_max, geom from places order by pop_max desc limit 3";

#[tokio::test]
async fn json_is_carto_s_envelope_with_cache_headers() {
    let app = app().await;
    let r = app.get(&sql(TOP3, "&skipfields=geom")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let mut doc = r.json();
    assert!(doc["time"].as_f64().unwrap() >= 0.0);
    doc.as_object_mut().unwrap().remove("time");
    assert_eq!(
        doc,
        serde_json::json!({
            "rows": [
                {"gid": 234, "name": "Tokyo", "pop_max": 35676000},
                {"gid": 219, "name": "New York", "pop_max": 19040000},
                {"gid": 225, "name": "Mexico City", "pop_max": 19028000}
            ],
            "fields": {
                "gid": {"type": "number", "pgtype": "int4"},
                "name": {"type": "string", "pgtype": "text"},
                "pop_max": {"type": "number", "pgtype": "int8"}
            },
            "total_rows": 3
        })
    );
    let channel = r.header("x-cache-channel").unwrap();
    assert_eq!(channel, format!("{}:public.places", app.db.name()));
    assert!(r.header("surrogate-key").unwrap().starts_with("t:"));
    assert_eq!(
        r.header("cache-control"),
        Some("public, no-cache, max-age=31536000, must-revalidate")
    );
    assert_eq!(r.header("vary"), Some("Authorization"));
    assert_eq!(r.header("carto-rate-limit-limit"), Some("40"));
    assert_eq!(r.header("ratelimit-remaining"), Some("39"));
}

#[tokio::test]
async fn geojson_csv_ndjson_and_geojsonseq() {
    let app = app().await;
    let r = app.get(&sql(TOP3, "&format=geojson&dp=2")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/geo+json; charset=utf-8")
    );
    let doc = r.json();
    assert_eq!(doc["type"], "FeatureCollection");
    assert_eq!(
        doc["features"][0],
        serde_json::json!({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [139.75, 35.69]},
            "properties": {"gid": 234, "name": "Tokyo", "pop_max": 35676000}
        })
    );
    assert_eq!(doc["features"].as_array().unwrap().len(), 3);

    let r = app.get(&sql(TOP3, "&format=csv&filename=top&dp=3")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"top.csv\"")
    );
    assert_eq!(
        r.text(),
        "gid,name,pop_max,geom\r\n234,Tokyo,35676000,POINT(139.749 35.687)\r\n\
         219,New York,19040000,POINT(-73.982 40.752)\r\n\
         225,Mexico City,19028000,POINT(-99.133 19.444)\r\n"
    );

    let r = app
        .get(&sql(TOP3, "&format=ndjson&skipfields=geom,pop_max"))
        .await;
    assert_eq!(
        r.text(),
        "{\"gid\":234,\"name\":\"Tokyo\"}\n{\"gid\":219,\"name\":\"New York\"}\n{\"gid\":225,\"name\":\"Mexico City\"}\n"
    );

    let r = app
        .get(&sql(TOP3, "&format=geojsonseq&dp=0&skipfields=pop_max,gid"))
        .await;
    let records: Vec<&str> = r
        .text()
        .leak()
        .split('\u{1e}')
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(records[1].trim_end()).unwrap(),
        serde_json::json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [-74, 41]}, "properties": {"name": "New York"}})
    );
}

#[tokio::test]
async fn pages_and_post_bodies_as_form_or_json() {
    let app = app().await;
    let q = "select name from places order by pop_max desc";
    let r = app.get(&sql(q, "&rows_per_page=2&page=1")).await;
    let names: Vec<String> = r.json()["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["Mexico City", "Mumbai"]);

    let r = app
        .post_form(
            "/api/v2/sql",
            &[("q", "select 1 + 1 as two"), ("format", "csv")],
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "two\r\n2\r\n"));
    let r = app
        .post_json(
            "/api/v2/sql",
            &serde_json::json!({"q": "select count(*) as n from countries", "api_key": app.regular}),
        )
        .await;
    assert_eq!(r.json()["rows"], serde_json::json!([{"n": 177}]));
    // A keyed answer is kept by no cache.
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn writes_need_a_key_that_may_write_and_commit() {
    let app = app().await;
    let insert = "insert into notes (note) values ('hello') returning id, note";
    let r = app.get(&sql(insert, "")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": ["permission denied for table notes"]})
    );
    let r = app
        .get(&sql(insert, &format!("&api_key={}", app.regular)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["rows"],
        serde_json::json!([{"id": 1, "note": "hello"}])
    );
    let (n,): (i64,) = sqlx::query_as("select count(*) from notes")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn refused_queries_answer_carto_s_error_shape() {
    let app = app().await;
    let cases = [
        (
            sql("select * from secrets", ""),
            403,
            "permission denied for table secrets",
        ),
        (sql("selec 1", ""), 400, "syntax error at or near \"selec\""),
        (
            sql("select 1; select 2", ""),
            400,
            "invalid statement: only one statement is allowed",
        ),
        (
            "/api/v2/sql".to_owned(),
            400,
            "You must indicate a sql query",
        ),
        (
            sql("select 1", "&format=xml"),
            400,
            "invalid option format: expected json, geojson, csv, ndjson, geojsonseq, topojson, kml or svg",
        ),
        (
            sql("select 1", "&format=shp"),
            400,
            "invalid option format: shp files are not served: ask for geojson or csv, or use copyto",
        ),
    ];
    for (path, status, message) in cases {
        let r = app.get(&path).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({ "error": [message] }),
            "{path}"
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
}

#[tokio::test]
async fn other_origins_may_call_the_api() {
    let app = app().await;
    let preflight = app
        .request(
            "OPTIONS",
            "/api/v2/sql",
            &[
                ("origin", "https://maps.example.org"),
                ("access-control-request-method", "POST"),
            ],
            b"",
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert!(
        preflight
            .header("access-control-allow-headers")
            .unwrap()
            .contains("Authorization")
    );
    let r = app.get(&sql("select 1", "")).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("X-Cache-Channel")
    );
}

#[tokio::test]
async fn the_configured_limits_bound_every_request() {
    let app = support::app_with(|c| c.sql_limits(5, 1 << 20, 64)).await;
    let r = app
        .get(&sql("select g from generate_series(1, 10) g", ""))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["error"],
        serde_json::json!(["row limit of 5 exceeded"])
    );
    let r = app.get(&sql("select repeat('x', 100) as wide", "")).await;
    assert_eq!(
        r.json()["error"],
        serde_json::json!([
            "a value of column wide is larger than the value-size limit of 64 bytes"
        ]),
        "{}",
        r.text()
    );
    let r = app
        .get(&sql("select g from generate_series(1, 5) g", ""))
        .await;
    assert_eq!(r.json()["total_rows"], 5, "{}", r.text());
}

#[tokio::test]
async fn topojson_kml_and_svg_are_served_with_their_types_and_filenames() {
    let app = app().await;
    for (format, content_type, start) in [
        (
            "topojson",
            "application/json; charset=utf-8",
            "{\"type\":\"Topology\"",
        ),
        (
            "kml",
            "application/vnd.google-earth.kml+xml; charset=utf-8",
            "<?xml",
        ),
        ("svg", "image/svg+xml; charset=utf-8", "<?xml"),
    ] {
        let r = app
            .get(&sql(
                "select name, geom from places order by gid limit 3",
                &format!("&format={format}&filename=top"),
            ))
            .await;
        assert_eq!(r.status, 200, "{format}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(content_type));
        assert_eq!(
            r.header("content-disposition"),
            Some(format!("attachment; filename=\"top.{format}\"").as_str())
        );
        assert!(r.text().starts_with(start), "{format}: {}", r.text());
    }
}
