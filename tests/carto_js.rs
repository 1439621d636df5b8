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

/// A page whose map fills 512 × 512 pixels with the world at zoom 1: the countries drawn by
/// their CartoCSS, a click's feature data kept.
fn countries_page(clients: &str, server: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head>
<link rel="stylesheet" href="file://{clients}/leaflet/dist/leaflet.css">
<script src="file://{clients}/leaflet/dist/leaflet.js"></script>
<script src="file://{clients}/carto.js/carto.js"></script>
<style>body {{ margin: 0; background: #fff; }} .leaflet-container {{ background: #fff; }}</style>
</head><body>
<div id="map" style="width: 512px; height: 512px"></div>
<script>
window.result = {{ errors: [] }};
const map = L.map('map', {{ zoomControl: false, attributionControl: false, fadeAnimation: false }}).setView([0, 0], 1);
const client = new carto.Client({{ apiKey: 'default_public', username: 'alice', serverUrl: '{server}/user/{{username}}' }});
const source = new carto.source.SQL('select gid as cartodb_id, name, ST_Transform(geom, 3857) as the_geom_webmercator from countries');
const style = new carto.style.CartoCSS('#layer {{ polygon-fill: #ff0000; [name = "Brazil"] {{ polygon-fill: #0000ff; }} }}');
const layer = new carto.layer.Layer(source, style, {{ featureClickColumns: ['name'] }});
layer.on('featureClicked', e => {{ window.result.clicked = e.data; }});
client.on('error', e => window.result.errors.push(e && e.message || String(e)));
client.addLayer(layer)
  .then(() => {{
    const leaflet = client.getLeafletLayer();
    leaflet.on('load', () => {{ window.result.loaded = true; }});
    leaflet.addTo(map);
  }})
  .catch(e => window.result.errors.push('setup: ' + (e && e.message || String(e))));
</script>
</body></html>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carto_js_draws_the_cartocss_map_and_a_click_shows_the_feature() {
    let clients = std::env::var("GEOSTACK_CLIENTS_JS").expect(
        "GEOSTACK_CLIENTS_JS: run through scripts/test, or eval \"$(GEOSTACK_JS=1 scripts/services)\"",
    );
    let app = app().await;
    // Interior points of large countries and points of open sea, from the data itself.
    let land: Vec<(String, f64, f64)> = sqlx::query_as(
        "select name, ST_X(p), ST_Y(p) from (
           select name, ST_PointOnSurface(ST_Buffer(geom, -2)) as p from countries
           where name in ('Russia', 'Brazil', 'Australia', 'Algeria', 'Canada', 'China')) s",
    )
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    assert_eq!(land.len(), 6);
    let sea = [(-140.0, 0.0), (-30.0, -30.0), (80.0, -30.0), (-40.0, 30.0)];
    // Where (lon, lat) shows on the 512-pixel world.
    let pixel = |lon: f64, lat: f64| {
        let x = (lon + 180.0) / 360.0 * 512.0;
        let phi: f64 = lat.to_radians();
        let y = (1.0 - (std::f64::consts::FRAC_PI_4 + phi / 2.0).tan().ln() / std::f64::consts::PI)
            / 2.0
            * 512.0;
        (x, y)
    };
    let html = std::env::temp_dir().join(format!("geostack-carto-js-map-{}.html", app.db.name()));
    std::fs::write(
        &html,
        countries_page(&clients, &format!("http://{}", app.addr)),
    )
    .unwrap();
    let url = format!("file://{}", html.display());
    let brazil = land
        .iter()
        .find(|(n, ..)| n == "Brazil")
        .map(|(_, x, y)| pixel(*x, *y))
        .unwrap();
    let (shot, result) = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(512, 512);
        browser.navigate(&url);
        browser.wait_for(
            "!!(window.result && (window.result.loaded || window.result.errors.length))",
            Duration::from_secs(30),
        );
        let shot = browser.screenshot();
        // The grid is fetched on the first interaction; click until the feature shows.
        for _ in 0..50 {
            browser.click(brazil.0, brazil.1);
            if browser.eval("!!window.result.clicked") == serde_json::json!(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (shot, browser.eval("JSON.stringify(window.result)"))
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&html);
    let got: serde_json::Value = serde_json::from_str(result.as_str().unwrap()).unwrap();
    assert_eq!(got["errors"], serde_json::json!([]), "{got}");
    // CARTO.js asks for cartodb_id besides the columns it was given.
    let gid: i32 = sqlx::query_scalar("select gid from countries where name = 'Brazil'")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(
        got["clicked"],
        serde_json::json!({"cartodb_id": gid, "name": "Brazil"}),
        "{got}"
    );

    let decoder = png::Decoder::new(std::io::Cursor::new(shot));
    let mut reader = decoder.read_info().unwrap();
    let mut data = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut data).unwrap();
    let channels = info.color_type.samples();
    let at = |(x, y): (f64, f64)| {
        let i = (y as usize * info.width as usize + x as usize) * channels;
        [data[i], data[i + 1], data[i + 2]]
    };
    // CARTO.js shows its tile layer at opacity 0.99 over the white page: a channel of 0
    // shows as 3.
    let near = |got: [u8; 3], want: [u8; 3]| got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 3);
    for (name, lon, lat) in &land {
        let want = if name == "Brazil" {
            [0, 0, 255]
        } else {
            [255, 0, 0]
        };
        let got = at(pixel(*lon, *lat));
        assert!(near(got, want), "{name}: {got:?}");
    }
    for (lon, lat) in sea {
        assert_eq!(at(pixel(lon, lat)), [255, 255, 255], "sea at {lon} {lat}");
    }
}
