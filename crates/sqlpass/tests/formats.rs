//! Every format, every type a user meets, through real PostgreSQL with PostGIS.

mod common;

use common::{env, json, text};
use serde_json::json;
use sqlpass::{CsvGeometry, Format, Options};

#[tokio::test]
async fn json_is_carto_envelope_with_exact_values_and_geometry_fields() {
    let env = env().await;
    let doc = json(
        &env.pool,
        "select id, name, pop, score, geom from places order by id",
    )
    .await;
    assert_eq!(
        doc,
        json!({
            "rows": [
                {"id": 1, "name": "Zürich", "pop": 421878, "score": 0.5,
                 "geom": "0101000020E6100000FCE07CEA58152140CFA44DD53DB04740"},
                {"id": 2, "name": "a \"quoted\", name", "pop": null, "score": -1.25,
                 "geom": "0101000020E610000052B81E85EB51C0BFE6E786A6ECC04940"},
                {"id": 3, "name": null, "pop": 9223372036854775807_i64, "score": "NaN", "geom": null}
            ],
            "fields": {
                "id": {"type": "number", "pgtype": "int4"},
                "name": {"type": "string", "pgtype": "text"},
                "pop": {"type": "number", "pgtype": "int8"},
                "score": {"type": "number", "pgtype": "float8"},
                "geom": {"type": "geometry", "wkbtype": "Point", "dims": 2, "srid": 4326}
            },
            "total_rows": 3
        })
    );
    // The geometry text is PostGIS's own.
    let (hex,): (String,) = sqlx::query_as("select geom::text from places where id = 1")
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(hex, "0101000020E6100000FCE07CEA58152140CFA44DD53DB04740");
}

const ALL_TYPES: &str = "select
    true as b, 7::int2 as i2, -8::int4 as i4, 9223372036854775807::int8 as i8,
    1.5::float4 as f4, 'Infinity'::float8 as f8,
    12345678901234567890.000123::numeric as n, 'NaN'::numeric as nn, -0.0005::numeric as small,
    'text é'::text as t, 'v'::varchar(3) as vc, 'c'::char(2) as ch,
    '{\"k\": [1, 2]}'::json as j, '{\"k\": [1, 2]}'::jsonb as jb,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u, '\\x01ff'::bytea as by,
    '2024-02-29'::date as d, '12:34:56.5'::time as tm,
    '2024-02-29 12:34:56'::timestamp as ts, '2024-02-29 12:34:56+02'::timestamptz as tz,
    '1 year 2 mons 3 days 04:05:06'::interval as iv,
    array[1, null, 3]::int4[] as ai, array['x', 'y,z']::text[] as at,
    '192.168.0.1/24'::inet as inet,
    ST_GeogFromText('SRID=4326;POINT(1 2)') as geog,
    null::text as nothing";

#[tokio::test]
async fn every_type_has_a_defined_json_encoding() {
    let env = env().await;
    let doc = json(&env.pool, ALL_TYPES).await;
    assert_eq!(
        doc["rows"][0],
        json!({
            "b": true, "i2": 7, "i4": -8, "i8": 9223372036854775807_i64,
            "f4": 1.5, "f8": "Infinity",
            "n": 12345678901234567890.000123_f64, "nn": "NaN", "small": -0.0005,
            "t": "text é", "vc": "v", "ch": "c ",
            "j": {"k": [1, 2]}, "jb": {"k": [1, 2]},
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "by": "\\x01ff",
            "d": "2024-02-29", "tm": "12:34:56.5",
            "ts": "2024-02-29T12:34:56", "tz": "2024-02-29T10:34:56Z",
            "iv": "P1Y2M3DT4H5M6S",
            "ai": [1, null, 3], "at": ["x", "y,z"],
            "inet": "192.168.0.1/24",
            "geog": "0101000020E6100000000000000000F03F0000000000000040",
            "nothing": null
        })
    );
    // Exact digits: the numeric and the int8 are written as PostgreSQL has them.
    let raw = text(&env.pool, ALL_TYPES, Options::default()).await;
    assert!(raw.contains("\"n\":12345678901234567890.000123,"), "{raw}");
    assert!(raw.contains("\"i8\":9223372036854775807,"), "{raw}");
    assert_eq!(
        doc["fields"]["inet"],
        json!({"type": "string", "pgtype": "inet"})
    );
    assert_eq!(
        doc["fields"]["ai"],
        json!({"type": "number[]", "pgtype": "_int4"})
    );
    assert_eq!(
        doc["fields"]["geog"],
        json!({"type": "geography", "wkbtype": "Point", "dims": 2, "srid": 4326})
    );
}

#[tokio::test]
async fn dates_and_timestamps_span_postgresql_s_whole_range() {
    // PostgreSQL's dates reach 5874897 AD and 4713 BC, its timestamps 294276 AD: beyond the
    // ±9999 years of date libraries (jiff), which is why these are decoded here. Each is the
    // literal PostgreSQL read, written as ISO 8601 with the sign of an expanded year.
    let env = env().await;
    let sql = "select '5874897-12-31'::date as last_day, '4713-01-01 BC'::date as first_day,
        '0001-01-01 BC'::date as year_zero, '294276-12-31 23:59:59.999999'::timestamp as last_ts,
        '10000-01-01 00:00:00+00'::timestamptz as far_tz, 'infinity'::date as inf,
        '-infinity'::timestamp as ninf";
    let doc = json(&env.pool, sql).await;
    assert_eq!(
        doc["rows"][0],
        json!({
            "last_day": "+5874897-12-31", "first_day": "-4712-01-01", "year_zero": "0000-01-01",
            "last_ts": "+294276-12-31T23:59:59.999999", "far_tz": "+10000-01-01T00:00:00Z",
            "inf": "infinity", "ninf": "-infinity"
        })
    );
}

#[tokio::test]
async fn csv_is_rfc_4180_with_nulls_empty_and_hostile_names() {
    let env = env().await;
    let sql = "select id, name as \"na,me\", pop, score, geom from places order by id";
    let csv = text(&env.pool, sql, Options::default().format(Format::Csv)).await;
    assert_eq!(
        csv,
        concat!(
            "id,\"na,me\",pop,score,geom\r\n",
            "1,Zürich,421878,0.5,POINT(8.541694 47.376887)\r\n",
            "2,\"a \"\"quoted\"\", name\",,-1.25,POINT(-0.1275 51.507222)\r\n",
            "3,,9223372036854775807,NaN,\r\n"
        )
    );
    let hex = text(
        &env.pool,
        "select geom, ''::text as empty from places where id = 1",
        Options::default()
            .format(Format::Csv)
            .csv_geometry(CsvGeometry::HexEwkb),
    )
    .await;
    assert_eq!(
        hex,
        "geom,empty\r\n0101000020E6100000FCE07CEA58152140CFA44DD53DB04740,\"\"\r\n"
    );
}

#[tokio::test]
async fn geojson_features_use_the_geometry_column_and_dp() {
    let env = env().await;
    let sql = "select id, name, geom from places where id < 3 order by id";
    let doc = text(
        &env.pool,
        sql,
        Options::default().format(Format::GeoJson).dp(2).unwrap(),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        v,
        json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [8.54, 47.38]},
             "properties": {"id": 1, "name": "Zürich"}},
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [-0.13, 51.51]},
             "properties": {"id": 2, "name": "a \"quoted\", name"}}
        ]})
    );
    // The same rows as a GeoJSON text sequence and as NDJSON.
    let seq = text(
        &env.pool,
        sql,
        Options::default().format(Format::GeoJsonSeq),
    )
    .await;
    let features: Vec<serde_json::Value> = seq
        .split('\u{1e}')
        .filter(|r| !r.is_empty())
        .map(|r| serde_json::from_str(r.trim_end_matches('\n')).unwrap())
        .collect();
    assert_eq!(features.len(), 2);
    assert_eq!(
        features[0]["geometry"]["coordinates"],
        json!([8.541694, 47.376887])
    );
    let nd = text(
        &env.pool,
        "select id, name from places order by id",
        Options::default().format(Format::Ndjson),
    )
    .await;
    assert_eq!(
        nd,
        "{\"id\":1,\"name\":\"Zürich\"}\n{\"id\":2,\"name\":\"a \\\"quoted\\\", name\"}\n{\"id\":3,\"name\":null}\n"
    );
}

#[tokio::test]
async fn skipfields_pages_and_filename() {
    let env = env().await;
    let options = Options::from_params([
        ("skipfields", "geom,score"),
        ("rows_per_page", "1"),
        ("page", "1"),
        ("filename", "my places"),
    ])
    .unwrap();
    let response = sqlpass::run(
        &env.pool,
        "select id, name, score, geom from places order by id",
        options,
    )
    .await
    .unwrap();
    assert_eq!(
        response.meta.content_disposition.as_deref(),
        Some("attachment; filename=\"my places.json\"")
    );
    assert_eq!(
        response.meta.content_type,
        "application/json; charset=utf-8"
    );
    let mut v: serde_json::Value = serde_json::from_str(&common::body(response).await).unwrap();
    v.as_object_mut().unwrap().remove("time");
    assert_eq!(
        v,
        json!({
            "rows": [{"id": 2, "name": "a \"quoted\", name"}],
            "fields": {"id": {"type": "number", "pgtype": "int4"}, "name": {"type": "string", "pgtype": "text"}},
            "total_rows": 1
        })
    );
}

#[tokio::test]
async fn affected_tables_become_cache_tags() {
    let env = env().await;
    let response = sqlpass::run(
        &env.pool,
        "select p.id from places p join places q on q.id = p.id",
        Options::default(),
    )
    .await
    .unwrap();
    assert_eq!(response.meta.tables, ["public.places"]);
    assert_eq!(
        response.meta.cache_channel.as_deref(),
        Some(format!("{}:public.places", env.db.name()).as_str())
    );
    assert_eq!(response.meta.surrogate_keys.len(), 1);
    let _ = common::body(response).await;
    let none = sqlpass::run(&env.pool, "select 1", Options::default())
        .await
        .unwrap();
    assert!(none.meta.tables.is_empty() && none.meta.cache_channel.is_none());
}

#[tokio::test]
async fn every_type_has_a_defined_encoding_in_every_other_format() {
    let env = env().await;
    let csv = text(&env.pool, ALL_TYPES, Options::default().format(Format::Csv)).await;
    let mut lines = csv.split("\r\n");
    assert_eq!(
        lines.next().unwrap(),
        "b,i2,i4,i8,f4,f8,n,nn,small,t,vc,ch,j,jb,u,by,d,tm,ts,tz,iv,ai,at,inet,geog,nothing"
    );
    assert_eq!(
        lines.next().unwrap(),
        concat!(
            "true,7,-8,9223372036854775807,1.5,Infinity,12345678901234567890.000123,NaN,-0.0005,",
            "text é,v,\"c \",\"{\"\"k\"\": [1, 2]}\",\"{\"\"k\"\": [1, 2]}\",",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,\\x01ff,2024-02-29,12:34:56.5,",
            "2024-02-29T12:34:56,2024-02-29T10:34:56Z,P1Y2M3DT4H5M6S,",
            "\"[1,null,3]\",\"[\"\"x\"\",\"\"y,z\"\"]\",192.168.0.1/24,POINT(1 2),"
        )
    );
    assert_eq!(lines.next(), Some(""));

    // NDJSON carries the same values as the JSON envelope's row.
    let nd = text(
        &env.pool,
        ALL_TYPES,
        Options::default().format(Format::Ndjson),
    )
    .await;
    let row: serde_json::Value = serde_json::from_str(nd.trim_end()).unwrap();
    let envelope = json(&env.pool, ALL_TYPES).await;
    assert_eq!(row, envelope["rows"][0]);

    // GeoJSON: the geography is the geometry; the rest are the same properties.
    for format in [Format::GeoJson, Format::GeoJsonSeq] {
        let doc = text(&env.pool, ALL_TYPES, Options::default().format(format)).await;
        let feature: serde_json::Value = match format {
            Format::GeoJson => {
                serde_json::from_str::<serde_json::Value>(&doc).unwrap()["features"][0].clone()
            }
            _ => serde_json::from_str(doc.trim_start_matches('\u{1e}').trim_end()).unwrap(),
        };
        assert_eq!(
            feature["geometry"],
            json!({"type": "Point", "coordinates": [1, 2]})
        );
        let mut expected = envelope["rows"][0].clone();
        expected.as_object_mut().unwrap().remove("geog");
        assert_eq!(feature["properties"], expected);
    }
}

#[tokio::test]
async fn hostile_column_names_are_escaped_in_every_format() {
    let env = env().await;
    let sql = r#"select 1 as "a""b,c
d", 2 as "}]\x""#;
    let json_doc = text(&env.pool, sql, Options::default()).await;
    let v: serde_json::Value = serde_json::from_str(&json_doc).unwrap();
    assert_eq!(v["rows"][0], json!({"a\"b,c\nd": 1, "}]\\x": 2}));
    for format in [Format::GeoJson, Format::Ndjson] {
        let doc = text(&env.pool, sql, Options::default().format(format)).await;
        let v: serde_json::Value = serde_json::from_str(doc.trim_end()).unwrap();
        let props = if format == Format::GeoJson {
            &v["features"][0]["properties"]
        } else {
            &v
        };
        assert_eq!(props, &json!({"a\"b,c\nd": 1, "}]\\x": 2}));
    }
    let csv = text(&env.pool, sql, Options::default().format(Format::Csv)).await;
    assert_eq!(csv, "\"a\"\"b,c\nd\",}]\\x\r\n1,2\r\n");
    let topo = text(&env.pool, sql, Options::default().format(Format::TopoJson)).await;
    let v: serde_json::Value = serde_json::from_str(&topo).unwrap();
    assert_eq!(
        v["objects"]["cartodb_query"]["geometries"][0]["properties"],
        json!({"a\"b,c\nd": 1, "}]\\x": 2})
    );
    let kml = text(&env.pool, sql, Options::default().format(Format::Kml)).await;
    assert!(
        kml.contains("<Data name=\"a&quot;b,c\nd\"><value>1</value></Data><Data name=\"}]\\x\"><value>2</value></Data>"),
        "{kml}"
    );
}

#[tokio::test]
async fn kml_places_each_row_with_postgis_s_own_geometry_and_escaped_data() {
    let env = env().await;
    let doc = text(
        &env.pool,
        "select id, name, geom from places order by id",
        Options::default().format(Format::Kml),
    )
    .await;
    assert!(doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<kml xmlns=\"http://www.opengis.net/kml/2.2\">"), "{doc}");
    assert!(doc.ends_with("</Folder></Document></kml>\n"), "{doc}");
    let kml: Vec<(Option<String>,)> =
        sqlx::query_as("select ST_AsKML(geom, 6) from places order by id")
            .fetch_all(env.db.pool())
            .await
            .expect("PostGIS's KML");
    let placemarks: Vec<&str> = doc
        .split("<Placemark>")
        .skip(1)
        .map(|p| p.split("</Placemark>").next().unwrap_or_default())
        .collect();
    assert_eq!(placemarks.len(), 3, "{doc}");
    for (placemark, (expected,)) in placemarks.iter().zip(&kml) {
        let geometry = placemark
            .split("</ExtendedData>")
            .nth(1)
            .unwrap_or_default();
        assert_eq!(geometry, expected.as_deref().unwrap_or(""), "{doc}");
    }
    assert!(
        placemarks[1]
            .contains("<Data name=\"name\"><value>a &quot;quoted&quot;, name</value></Data>"),
        "{doc}"
    );
    // NULLs are left out.
    assert!(!placemarks[2].contains("name=\"name\""), "{doc}");
}

#[tokio::test]
async fn svg_draws_each_geometry_y_flipped_in_a_fitted_view_box() {
    let env = env().await;
    let sql = "select 'POLYGON((0 0,4 0,4 2,0 2,0 0),(1 1,2 1,2 1.5,1 1))'::geometry as the_geom \
               union all select 'POINT(5 3)'::geometry";
    let doc = text(&env.pool, sql, Options::default().format(Format::Svg)).await;
    assert!(
        doc.contains("<path d=\"M 0 0 L 4 0 L 4 -2 L 0 -2 L 0 0 Z M 1 -1 L 2 -1 L 2 -1.5 L 1 -1 Z \" fill-rule=\"evenodd\"/>"),
        "{doc}"
    );
    assert!(
        doc.contains("<circle cx=\"5\" cy=\"-3\" r=\"1\"/>"),
        "{doc}"
    );
    // x from 0 to 5, y from 0 to 3: drawn from (0, -3), 5 wide and 3 high.
    assert!(doc.contains("<svg viewBox=\"0 -3 5 3\""), "{doc}");
    assert!(
        doc.ends_with("<use xlink:href=\"#cartodb_query\"/></svg></svg>\n"),
        "{doc}"
    );
}

#[tokio::test]
async fn topojson_is_a_topology_whose_arcs_are_the_rows_lines_and_rings() {
    let env = env().await;
    let sql = "select 1 as n, 'POLYGON((0 0,4 0,4 2,0 0),(1 0.5,2 0.5,2 1,1 0.5))'::geometry as the_geom \
               union all select 2, 'MULTILINESTRING((0 0,1 1),(2 2,3 3))'::geometry \
               union all select 3, 'POINT(5 3)'::geometry \
               union all select 4, null";
    let doc = text(&env.pool, sql, Options::default().format(Format::TopoJson)).await;
    let topo: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
    assert_eq!(topo["type"], "Topology");
    assert_eq!(
        topo["objects"]["cartodb_query"]["geometries"],
        json!([
            {"type": "Polygon", "arcs": [[0], [1]], "properties": {"n": 1}},
            {"type": "MultiLineString", "arcs": [[2], [3]], "properties": {"n": 2}},
            {"type": "Point", "coordinates": [5, 3], "properties": {"n": 3}},
            {"type": null, "properties": {"n": 4}}
        ])
    );
    assert_eq!(
        topo["arcs"],
        json!([
            [[0, 0], [4, 0], [4, 2], [0, 0]],
            [[1, 0.5], [2, 0.5], [2, 1], [1, 0.5]],
            [[0, 0], [1, 1]],
            [[2, 2], [3, 3]]
        ])
    );
}
