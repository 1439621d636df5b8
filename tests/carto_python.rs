//! CARTO's Python client, carto-python 1.11.3 from PyPI (installed by `scripts/services` in a
//! venv), against the server over TCP: the SQL API in JSON, CSV and GeoJSON, copyfrom and copyto
//! round trips, and batch jobs of several statements and with fallbacks. What the client got is
//! compared with the database.

mod support;

use support::{app, python_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carto_python_s_sql_and_copy_clients_work_unchanged() {
    let app = app().await;
    let got = python_client(
        "carto_python.py",
        &[
            (
                "GEOSTACK_BASE_URL",
                format!("http://{}/user/alice/", app.addr),
            ),
            ("GEOSTACK_API_KEY", app.regular.clone()),
        ],
    )
    .await;

    let names: Vec<String> = sqlx::query_scalar("select name from countries order by name limit 3")
        .fetch_all(app.db.pool())
        .await
        .unwrap();
    let rows: Vec<&str> = got["json"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(rows, names);
    assert_eq!(got["json_get"][0]["n"], 177);
    let two: Vec<(String, i32)> =
        sqlx::query_as("select name, gid from countries order by name limit 2")
            .fetch_all(app.db.pool())
            .await
            .unwrap();
    let csv = format!(
        "name,gid\r\n{},{}\r\n{},{}\r\n",
        two[0].0, two[0].1, two[1].0, two[1].1
    );
    assert_eq!(got["csv"], csv.as_str());
    assert_eq!(got["geojson"]["type"], "FeatureCollection");
    assert_eq!(got["geojson"]["names"][0], names[0].as_str());
    for t in got["geojson"]["geometry_types"].as_array().unwrap() {
        assert!(
            matches!(t.as_str(), Some("Polygon" | "MultiPolygon")),
            "{t}"
        );
    }

    assert_eq!(got["copyfrom_gzip"], 2);
    assert_eq!(got["copyfrom_plain"], 2);
    assert_eq!(
        got["copyto"],
        "note\nalpha\nbeta\ngamma\n\"delta, quoted\"\n"
    );
    assert_eq!(
        got["batch_many"],
        serde_json::json!({"status": "done", "statuses": ["done", "done"]})
    );
    assert_eq!(
        got["batch_fallback"],
        serde_json::json!({
            "status": "failed",
            "query_status": "failed",
            "failed_reason": "division by zero",
            "fallback_status": "done",
            "job_fallback_status": "skipped"
        })
    );
    assert_eq!(got["cancel_done"], "done");
    let refused = got["update_done"].as_str().unwrap();
    assert!(refused.contains("only pending ones"), "{refused}");
    let notes: Vec<String> = sqlx::query_scalar("select note from notes order by id")
        .fetch_all(app.db.pool())
        .await
        .unwrap();
    assert_eq!(
        notes,
        [
            "alpha",
            "beta",
            "gamma",
            "delta, quoted",
            "from a list!",
            "failed: division by zero"
        ]
    );
    let refused = got["copyto_file"].as_str().unwrap();
    assert!(
        refused.contains("400") && refused.contains("STDOUT"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carto_python_s_map_clients_instantiate_anonymous_and_named_maps() {
    let app = app().await;
    sqlx::raw_sql(
        "insert into notes (note, geom) values ('a note', ST_SetSRID(ST_MakePoint(1, 1), 4326)),
                                               ('another', ST_SetSRID(ST_MakePoint(2, 2), 4326)),
                                               ('zzz', ST_SetSRID(ST_MakePoint(3, 3), 4326))",
    )
    .execute(app.db.pool())
    .await
    .unwrap();
    let alice = geostack::auth::UserName::new("alice").unwrap();
    let (_, master) = app
        .server
        .auth()
        .create_key(
            &alice,
            geostack::server::KeyRequest::Master,
            geostack::auth::Grants::new(),
        )
        .await
        .unwrap();
    let got = python_client(
        "carto_python_maps.py",
        &[
            (
                "GEOSTACK_BASE_URL",
                format!("http://{}/user/alice/", app.addr),
            ),
            ("GEOSTACK_API_KEY", app.regular.clone()),
            ("GEOSTACK_MASTER_KEY", master.expose().to_owned()),
        ],
    )
    .await;
    assert_eq!(got["anonymous"].as_str().unwrap().len(), 32, "{got}");
    let tile = |name: &str| {
        let v = &got[name];
        (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
    };
    let (status, bytes) = tile("anonymous_tile");
    assert!(status == 200 && bytes > 0, "{got}");
    assert_eq!(got["template_id"], "python_notes");
    assert!(
        got["named"].as_str().unwrap().starts_with("python_notes@"),
        "{got}"
    );
    let (status, bytes) = tile("named_tile");
    assert!(status == 200 && bytes > 0, "{got}");
    assert_eq!(got["listed"], serde_json::json!(["python_notes"]));
    assert_eq!(got["fetched_auth"], "open");
    assert_eq!(got["after_delete"], serde_json::json!([]));
}
