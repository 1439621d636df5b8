//! The map page in a real browser: headless Chromium, driven over the DevTools protocol, loads
//! `/` from a server of the test's own and waits until MapLibre has drawn every tile; the
//! screenshot's pixels show land where the countries are, sea where they are not, and Tokyo's
//! dot. Then a query typed into the SQL box and run shows its rows.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::time::Duration;

use support::app;
use support::cdp::Browser;

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
/// The page's colours (see src/server/index.html).
const LAND: [u8; 3] = [0xe0, 0x7a, 0x1f];
const SEA: [u8; 3] = [0xcf, 0xe3, 0xf3];
const PLACE: [u8; 3] = [0x3d, 0x1a, 0x78];

/// The screen pixel of `lon`/`lat` with the map centred on 0/0 at zoom 1 (a 1024-pixel world).
fn pixel(lon: f64, lat: f64) -> (u32, u32) {
    let world = 512.0 * 2.0;
    let x = (lon + 180.0) / 360.0 * world;
    let phi = lat.to_radians();
    let y = (1.0 - (std::f64::consts::FRAC_PI_4 + phi / 2.0).tan().ln() / std::f64::consts::PI)
        / 2.0
        * world;
    (
        x.round() as u32,
        (y - (world - f64::from(HEIGHT)) / 2.0).round() as u32,
    )
}

fn near(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 16)
}

struct Rgb {
    width: usize,
    channels: usize,
    data: Vec<u8>,
}

impl Rgb {
    fn decode(png_bytes: &[u8]) -> Self {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut data = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut data).unwrap();
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        Self {
            width: info.width as usize,
            channels: info.color_type.samples(),
            data,
        }
    }

    fn at(&self, (x, y): (u32, u32)) -> [u8; 3] {
        let i = (y as usize * self.width + x as usize) * self.channels;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_draws_the_data_where_it_is_and_the_sql_box_shows_rows() {
    let app = app().await;
    let base = format!("http://{}/", app.addr);

    // Interior points of the largest countries, and points of open sea, from the data itself.
    let land: Vec<(String, f64, f64)> = sqlx::query_as(
        "select name, ST_X(p), ST_Y(p) from (
           select name, ST_PointOnSurface(ST_Buffer(geom, -2)) as p from countries
           where name in ('Russia', 'Brazil', 'Australia', 'Algeria', 'Canada', 'China', 'Kazakhstan')) s",
    )
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    assert_eq!(land.len(), 7);
    let sea = [
        (-140.0, 0.0),
        (-30.0, -30.0),
        (80.0, -30.0),
        (-40.0, 30.0),
        (160.0, 25.0),
    ];
    for (lon, lat) in sea {
        let (far,): (bool,) = sqlx::query_as(
            "select not exists (select 1 from countries
                                where ST_DWithin(geom, ST_SetSRID(ST_MakePoint($1, $2), 4326), 3))",
        )
        .bind(lon)
        .bind(lat)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
        assert!(far, "{lon} {lat} is not open sea");
    }

    let (shot, rows, status) = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(WIDTH, HEIGHT);
        browser.navigate(&format!("{base}?lon=0&lat=0&zoom=1"));
        // MapLibre's idle: every tile requested is loaded and drawn.
        browser.wait_for(
            "document.body?.dataset.mapIdle === 'yes'",
            Duration::from_secs(30),
        );
        let shot = browser.screenshot();
        // The SQL box, as a person uses it: type, click Run.
        let q = "select name, pop_max from places order by pop_max desc limit 3";
        browser.eval(&format!(
            "document.getElementById('q').value = {}; document.getElementById('run').click(); true",
            serde_json::json!(q)
        ));
        browser.wait_for(
            "document.body?.dataset.sqlDone === 'yes'",
            Duration::from_secs(30),
        );
        let rows = browser.eval("document.getElementById('result').innerHTML");
        let status = browser.eval("document.getElementById('status').textContent");
        (shot, rows, status)
    })
    .await
    .unwrap();

    let image = Rgb::decode(&shot);
    for (name, lon, lat) in &land {
        let p = pixel(*lon, *lat);
        assert!(
            near(image.at(p), LAND),
            "{name} at {p:?} is {:?}, not land",
            image.at(p)
        );
    }
    for (lon, lat) in sea {
        let p = pixel(lon, lat);
        assert!(
            near(image.at(p), SEA),
            "{lon} {lat} at {p:?} is {:?}, not sea",
            image.at(p)
        );
    }
    let tokyo = pixel(139.749462, 35.686963);
    assert!(
        near(image.at(tokyo), PLACE),
        "Tokyo at {tokyo:?} is {:?}",
        image.at(tokyo)
    );

    assert_eq!(
        rows,
        serde_json::json!(
            "<tr><th>name</th><th>pop_max</th></tr><tr><td>Tokyo</td><td>35676000</td></tr>\
             <tr><td>New York</td><td>19040000</td></tr><tr><td>Mexico City</td><td>19028000</td></tr>"
        )
    );
    assert!(
        status.as_str().unwrap().starts_with("3 rows in "),
        "{status}"
    );
}
