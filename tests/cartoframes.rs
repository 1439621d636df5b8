//! cartoframes 1.2.5 from PyPI (installed by `scripts/services` in a venv) against the server
//! over TCP, with the user's master key: `to_carto` makes a table (`/api/v3/me`, `EXPLAIN`,
//! `BEGIN; CREATE TABLE …; COMMIT;`, copyfrom, `CDB_CartodbfyTable` through the Batch API),
//! replaces its rows, and `read_carto` reads it back through copyto. What cartoframes got is
//! compared with the database.

mod support;

use geostack::auth::{Grants, UserName};
use geostack::server::KeyRequest;
use support::{app, python_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartoframes_uploads_a_geodataframe_and_reads_it_back() {
    let app = app().await;
    let alice = UserName::new("alice").unwrap();
    let (key, token) = app
        .server
        .auth()
        .create_key(&alice, KeyRequest::Master, Grants::new())
        .await
        .unwrap();
    let got = python_client(
        "cartoframes_roundtrip.py",
        &[
            (
                "GEOSTACK_BASE_URL",
                format!("http://{}/user/alice/", app.addr),
            ),
            ("GEOSTACK_API_KEY", token.expose().to_owned()),
        ],
    )
    .await;

    // The table cartoframes named, made by the master key's role and cartodbfied.
    assert_eq!(got["table"], "uploaded_places");
    let (owner, the_geom, mercator, primary): (String, String, String, String) = sqlx::query_as(
        "select tableowner::text,
                format_type((select atttypid from pg_attribute where attrelid = 'uploaded_places'::regclass and attname = 'the_geom'),
                            (select atttypmod from pg_attribute where attrelid = 'uploaded_places'::regclass and attname = 'the_geom')),
                (select count(*) filter (where the_geom_webmercator is not null)::text from uploaded_places),
                (select string_agg(a.attname, ',') from pg_index i join pg_attribute a
                 on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
                 where i.indrelid = 'uploaded_places'::regclass and i.indisprimary)
         from pg_tables where tablename = 'uploaded_places'",
    )
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    assert_eq!(owner, key.db_role.name());
    assert_eq!(the_geom, "geometry(Geometry,4326)");
    assert_eq!(primary, "cartodb_id");
    // Replaced by the two rows under a million: both have their mercator geometry.
    assert_eq!(mercator, "2");

    // What read_carto gave, first upload: every row and column as the database has them.
    let rows: Vec<(String, i64, f64, f64, f64, i64)> = sqlx::query_as(
        "select name, pop, score, ST_X(the_geom), ST_Y(the_geom), cartodb_id from uploaded_places order by name",
    )
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    assert_eq!(
        got["columns"],
        serde_json::json!(["cartodb_id", "name", "pop", "score", "the_geom"])
    );
    assert_eq!(
        got["crs"].as_str().map(str::to_ascii_uppercase).as_deref(),
        Some("EPSG:4326")
    );
    let first: Vec<&str> = got["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(first, ["Lisbon", "Quito", "Zürich"]);
    let replaced = got["replaced"].as_array().unwrap();
    assert_eq!(replaced.len(), rows.len());
    for (r, (name, pop, score, x, y, id)) in replaced.iter().zip(&rows) {
        assert_eq!(r["name"], name.as_str());
        assert_eq!(r["pop"], *pop);
        assert_eq!(r["score"], *score);
        assert_eq!(r["point"], serde_json::json!([x, y]));
        assert_eq!(r["cartodb_id"], *id);
    }
    assert_eq!(got["query"], serde_json::json!(["Lisbon"]));
}
