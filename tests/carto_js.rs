//! CARTO.js 4.2.2 with Leaflet (from npm, unpacked by `scripts/services` with `GEOSTACK_JS=1`)
//! in headless Chromium against the server: a layer and a category and a histogram dataview
//! over one SQL source. The map is instantiated the way CARTO.js does it (its config in a
//! JSONP GET), the dataviews' counts are compared with SQL computed independently, and the
//! tile URLs it then asks for name the map it was given.
mod support;

use std::time::Duration;

use support::app;
use support::cdp::Browser;

const SOURCE: &str = "select gid as cartodb_id, name, featurecla, pop_max, ST_Transform(geom, 3857) as the_geom_webmercator from places";

/// The page: Leaflet, CARTO.js, and a map whose client records what CARTO.js reports.
fn page(clients: &str, server: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head>
<link rel="stylesheet" href="file://{clients}/leaflet/dist/leaflet.css">
<script src="file://{clients}/leaflet/dist/leaflet.js"></script>
<script src="file://{clients}/carto.js/carto.js"></script>
</head><body>
<div id="map" style="width: 512px; height: 512px"></div>
<script>
window.result = {{ errors: [] }};
const map = L.map('map').setView([20, 0], 1);
const client = new carto.Client({{ apiKey: 'default_public', username: 'alice', serverUrl: '{server}/user/{{username}}' }});
const source = new carto.source.SQL({SOURCE:?});
const layer = new carto.layer.Layer(source, new carto.style.CartoCSS('#layer {{ marker-width: 7; marker-fill: #3d1a78; }}'));
const categories = new carto.dataview.Category(source, 'featurecla', {{ limit: 100, operation: carto.operation.COUNT }});
const histogram = new carto.dataview.Histogram(source, 'pop_max', {{ bins: 5 }});
categories.on('dataChanged', d => {{ window.result.categories = d; }});
histogram.on('dataChanged', d => {{ window.result.histogram = d; }});
for (const [name, emitter] of [['client', client], ['categories', categories], ['histogram', histogram]]) {{
  emitter.on('error', e => window.result.errors.push(name + ': ' + (e && e.message || String(e))));
}}
client.addLayer(layer)
  .then(() => client.addDataviews([categories, histogram]))
  .then(() => {{ client.getLeafletLayer().addTo(map); window.result.ready = true; }})
  .catch(e => window.result.errors.push('setup: ' + (e && e.message || String(e))));
</script>
</body></html>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carto_js_instantiates_a_map_and_its_dataviews_count_what_sql_counts() {
    let clients = std::env::var("GEOSTACK_CLIENTS_JS").expect(
        "GEOSTACK_CLIENTS_JS: run through scripts/test, or eval \"$(GEOSTACK_JS=1 scripts/services)\"",
    );
    let app = app().await;
    let html = std::env::temp_dir().join(format!("geostack-carto-js-{}.html", app.db.name()));
    std::fs::write(&html, page(&clients, &format!("http://{}", app.addr))).unwrap();
    let url = format!("file://{}", html.display());
    let result = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(800, 600);
        browser.navigate(&url);
        browser.wait_for(
            "!!(window.result && ((window.result.categories && window.result.histogram) \
               || window.result.errors.length))",
            Duration::from_secs(30),
        );
        // Let Leaflet ask for its tiles.
        browser.wait_for(
            "performance.getEntriesByType('resource').some(e => /\\.png/.test(e.name))",
            Duration::from_secs(10),
        );
        let result = browser.eval("JSON.stringify(window.result)");
        let resources = browser.eval(
            "performance.getEntriesByType('resource').map(e => e.name + ' #' + e.responseStatus)",
        );
        (result, resources)
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&html);
    let (result, resources) = result;
    let got: serde_json::Value = serde_json::from_str(result.as_str().unwrap()).unwrap();
    // Nothing failed, the raster tiles included (CARTO.js reports a failed tile as "Some
    // tiles might not be rendering correctly").
    let errors: Vec<&str> = got["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(errors.is_empty(), "{got} {resources:?}");

    // Every category and its count, as PostgreSQL counts them.
    let expected: Vec<(String, i64)> = sqlx::query_as(
        "select featurecla, count(*) from places where featurecla is not null group by 1 order by 2 desc, 1",
    )
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    let mut categories: Vec<(String, i64)> = got["categories"]["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["value"].as_i64().unwrap(),
            )
        })
        .collect();
    categories.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    assert_eq!(categories, expected, "{got}");
    // Five bins holding every place with a population.
    let bins = got["histogram"]["bins"].as_array().unwrap();
    let freq: i64 = bins.iter().map(|b| b["freq"].as_i64().unwrap_or(0)).sum();
    let with_pop: i64 = sqlx::query_scalar("select count(pop_max) from places")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(freq, with_pop, "{got}");
    assert_eq!(bins.len(), 5, "{got}");

    // It instantiated by JSONP, then asked for the map's raster tiles of layer 0.
    // Each resource's URL (its status follows a " #").
    let resources: Vec<&str> = resources
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().rsplit_once(" #").unwrap().0)
        .collect();
    let base = format!("http://{}/user/alice/api/v1/map", app.addr);
    assert!(
        resources
            .iter()
            .any(|r| r.starts_with(&format!("{base}?")) && r.contains("callback=")),
        "{resources:?}"
    );
    let tiles: Vec<&&str> = resources
        .iter()
        .filter(|r| r.starts_with(&base) && r.contains(".png"))
        .collect();
    assert!(!tiles.is_empty(), "{resources:?}");
    for tile in tiles {
        let rest = tile.strip_prefix(&format!("{base}/")).unwrap();
        let parts: Vec<&str> = rest.split(['/', '?']).collect();
        assert_eq!(parts[0].len(), 32, "{tile}");
        assert_eq!(parts[1], "0", "{tile}");
        assert!(parts[4].ends_with(".png"), "{tile}");
    }
    // The images it asked for are drawn (the page cannot see a cross-origin image's status;
    // asked again here, as the same caller).
    for tile in resources
        .iter()
        .filter(|r| r.starts_with(&base) && r.contains(".png"))
    {
        let path = tile.strip_prefix(&format!("http://{}", app.addr)).unwrap();
        let r = app.get(path).await;
        assert_eq!(r.status, 200, "{tile}");
        assert_eq!(r.header("content-type"), Some("image/png"), "{tile}");
    }
}
