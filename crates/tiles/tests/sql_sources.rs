//! Map-config layers and SQL-function sources on real PostGIS, read-only, as a public role.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::time::Duration;

use geostack_testkit::TestDb;
use geostack_tiles::{
    DecodedValue, Error, FunctionSource, MapConfig, TileCoord, TileOptions, decode,
};

const CONFIG: &str = r#"{
  "version": "1.3.0",
  "layers": [
    {"type": "mapnik", "id": "countries", "options": {
      "sql": "select gid, name, gid * 1000 as pop, gid % 2 = 0 as even, ST_Transform(geom, 3857) as the_geom_webmercator from countries",
      "attributes": {"id": "gid", "columns": ["name", "pop", "even"]}}},
    {"type": "mapnik", "id": "centres", "options": {
      "sql": "select gid, ST_Transform(ST_PointOnSurface(geom), 3857) as the_geom_webmercator from countries",
      "minzoom": 2,
      "attributes": {"id": "gid"}}}
  ]
}"#;

async fn setup() -> (TestDb, geostack_testkit::TestRole, sqlx::PgPool) {
    let db = TestDb::new().await;
    geostack_testkit::natural_earth::load_countries(db.pool(), "countries").await;
    let role = db.create_role().await;
    let grant = format!(
        "grant select on countries to \"{}\"; create sequence s; grant usage on sequence s to \"{0}\"",
        role.name()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(grant))
        .execute(db.pool())
        .await
        .unwrap();
    let pool = role.pool(2).await;
    (db, role, pool)
}

#[tokio::test]
async fn layers_are_drawn_by_zoom_with_typed_attributes() {
    let (_db, _role, pool) = setup().await;
    let config = MapConfig::parse(CONFIG).unwrap();
    let options = TileOptions::default();
    let timeout = sandbox(Duration::from_secs(10));

    let z0 = config
        .render(
            &pool,
            TileCoord::new_checked(0, 0, 0).unwrap(),
            &options,
            &timeout,
        )
        .await
        .unwrap();
    assert_eq!(
        z0.layers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["countries"]
    );
    let tile = decode(&z0.bytes).unwrap();
    assert_eq!(tile.layers.len(), 1);
    let countries = tile.layer("countries").unwrap();
    assert_eq!(countries.features.len(), 177);
    let fiji = countries
        .features
        .iter()
        .find(|f| f.attributes.get("name") == Some(&DecodedValue::String("Fiji".into())))
        .unwrap();
    assert_eq!(fiji.id, Some(1));
    assert_eq!(fiji.attributes.get("pop"), Some(&DecodedValue::Sint(1000)));
    assert_eq!(
        fiji.attributes.get("even"),
        Some(&DecodedValue::Bool(false))
    );

    let z2 = config
        .render(
            &pool,
            TileCoord::new_checked(2, 2, 1).unwrap(),
            &options,
            &timeout,
        )
        .await
        .unwrap();
    let tile = decode(&z2.bytes).unwrap();
    assert_eq!(
        tile.layers
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["countries", "centres"]
    );
    let centres = tile.layer("centres").unwrap();
    assert!(
        centres
            .features
            .iter()
            .all(|f| matches!(f.geometry, geostack_tiles::TileGeometry::Points(_)))
    );
    assert_eq!(centres.features.len() as u64, z2.layers[1].1.added);
    // An empty tile is marked as such (for 204).
    let empty_sql = CONFIG
        .replace("from countries\",", "from countries where false\",")
        .replace(
            "from countries\",\n      \"minzoom\"",
            "from countries where false\",\n      \"minzoom\"",
        );
    let empty = MapConfig::parse(&empty_sql).unwrap();
    let none = empty
        .render(
            &pool,
            TileCoord::new_checked(0, 0, 0).unwrap(),
            &options,
            &timeout,
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn layer_sql_runs_read_only_within_its_timeout() {
    let (_db, _role, pool) = setup().await;
    let coord = TileCoord::new_checked(0, 0, 0).unwrap();
    let options = TileOptions::default();
    let layer = |sql: &str| {
        MapConfig::parse(&format!(
            r#"{{"layers":[{{"id":"l","options":{{"sql":"{sql}","attributes":{{"id":"gid"}}}}}}]}}"#
        ))
        .unwrap()
    };
    // A write through a function: refused by the read-only transaction.
    let writes = layer(
        "select nextval('s') as gid, ST_Transform(geom, 3857) as the_geom_webmercator from countries",
    );
    let err = writes
        .render(&pool, coord, &options, &sandbox(Duration::from_secs(10)))
        .await
        .unwrap_err();
    let Error::Sql(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((e.sqlstate(), e.status()), (Some("25006"), 403), "{e}");
    // A slow layer: the statement timeout ends it.
    let slow = layer(
        "select gid, ST_Transform(geom, 3857) as the_geom_webmercator from countries, (select count(*) from generate_series(1, 100000000000)) s",
    );
    let started = std::time::Instant::now();
    let err = slow
        .render(&pool, coord, &options, &sandbox(Duration::from_millis(300)))
        .await
        .unwrap_err();
    let Error::Sql(e) = &err else {
        panic!("{err:?}")
    };
    assert!(matches!(e, sqlpass::Error::StatementTimeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Two statements cannot hide in a layer, nor can a layer close the tile's wrapper: both
    // are refused when the config is parsed, before any SQL runs.
    for (sql, reason) in [
        (
            "select 1 as gid, null::geometry as the_geom_webmercator) x; delete from countries; select (1",
            "invalid statement: a parenthesis is closed that was not opened",
        ),
        (
            "select gid, geom as the_geom_webmercator from countries; delete from countries",
            "invalid statement: only one statement is allowed",
        ),
        (
            "select * from countries) AS q UNION ALL SELECT gid, geom FROM countries --",
            "invalid statement: a parenthesis is closed that was not opened",
        ),
        ("select * from countries /* ) AS q WHERE true -- */", ""),
    ] {
        let config = format!(r#"{{"layers":[{{"id":"l","options":{{"sql":"{sql}"}}}}]}}"#);
        match MapConfig::parse(&config) {
            Err(Error::InvalidMapConfig { reason: r, .. }) => assert_eq!(r, reason, "{sql}"),
            Err(e) => panic!("{sql}: {e}"),
            // A comment hides nothing from the wrapper: it ends inside the layer's text.
            Ok(_) => assert!(reason.is_empty(), "{sql}"),
        }
    }
    // The pool is still usable afterwards, and nothing was written.
    let ok = layer("select gid, ST_Transform(geom, 3857) as the_geom_webmercator from countries");
    assert_eq!(
        ok.render(&pool, coord, &options, &sandbox(Duration::from_secs(10)))
            .await
            .unwrap()
            .layers[0]
            .1
            .added,
        177
    );
}

#[tokio::test]
async fn a_sql_function_makes_whole_tiles() {
    let (db, role, pool) = setup().await;
    let function = format!(
        "create function public.countries_named(z int, x int, y int, params jsonb) returns bytea
         language sql stable as $$
           select ST_AsMVT(q, 'countries', 4096, 'geom', 'gid') from (
             select gid, name, ST_AsMVTGeom(ST_Transform(geom, 3857), ST_TileEnvelope(z, x, y), 4096, 64, true) as geom
             from countries where name like params->>'prefix' || '%'
           ) q where geom is not null
         $$;
         grant execute on function public.countries_named(int, int, int, jsonb) to \"{}\"",
        role.name()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(function))
        .execute(db.pool())
        .await
        .unwrap();
    let source = FunctionSource::new("public.countries_named").unwrap();
    let bytes = source
        .tile(
            &pool,
            TileCoord::new_checked(0, 0, 0).unwrap(),
            &serde_json::json!({"prefix": "Ma"}),
            &TileOptions::default(),
            &sandbox(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let tile = decode(&bytes).unwrap();
    let mut names: Vec<String> = tile.layers[0]
        .features
        .iter()
        .map(|f| match f.attributes.get("name") {
            Some(DecodedValue::String(s)) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Macedonia",
            "Madagascar",
            "Malawi",
            "Malaysia",
            "Mali",
            "Mauritania"
        ]
    );
    let none = source
        .tile(
            &pool,
            TileCoord::new_checked(0, 0, 0).unwrap(),
            &serde_json::json!({"prefix": "Zz"}),
            &TileOptions::default(),
            &sandbox(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn a_tile_over_its_byte_budget_is_degraded_in_the_documented_order() {
    let (_db, _role, pool) = setup().await;
    let config = MapConfig::parse(CONFIG).unwrap();
    let coord = TileCoord::new_checked(0, 0, 0).unwrap();
    let timeout = sandbox(Duration::from_secs(10));
    let full = config
        .render(&pool, coord, &TileOptions::default(), &timeout)
        .await
        .unwrap();
    assert_eq!(full.degraded, None);
    let size = full.bytes.len();

    // A little under the full size: stronger simplification alone makes it fit.
    let options = TileOptions::default().max_bytes(size * 9 / 10);
    let tile = config
        .render(&pool, coord, &options, &timeout)
        .await
        .unwrap();
    let d = tile.degraded.unwrap();
    assert!(d.fits && d.kept_per_layer.is_none(), "{d:?}");
    assert!(d.tolerance == 2.0 || d.tolerance == 8.0, "{d:?}");
    assert!(tile.bytes.len() <= size * 9 / 10);
    assert_eq!(
        decode(&tile.bytes).unwrap().layers[0].features.len(),
        177,
        "no feature dropped"
    );

    // Far under: features are dropped too, the first ones kept.
    let options = TileOptions::default().max_bytes(3000);
    let tile = config
        .render(&pool, coord, &options, &timeout)
        .await
        .unwrap();
    let d = tile.degraded.unwrap();
    assert!(d.fits && d.tolerance == 8.0, "{d:?}");
    let kept = d.kept_per_layer.unwrap();
    assert!(
        tile.bytes.len() <= 3000 && kept < 177,
        "{d:?} {}",
        tile.bytes.len()
    );
    let features = &decode(&tile.bytes).unwrap().layers[0].features;
    assert!(features.len() <= kept);

    // Impossible: one feature per layer is still too big; said so.
    let options = TileOptions::default().max_bytes(10);
    let tile = config
        .render(&pool, coord, &options, &timeout)
        .await
        .unwrap();
    let d = tile.degraded.unwrap();
    assert_eq!((d.fits, d.kept_per_layer), (false, Some(1)));
}

/// The sandbox's options with a statement timeout.
fn sandbox(timeout: Duration) -> sqlpass::Options {
    sqlpass::Options::default().statement_timeout(timeout)
}
