//! The map page in a real browser: headless Chromium loads `/` from a server of the test's
//! own, draws the vector tiles with MapLibre, and the screenshot's pixels show land where the
//! countries are, sea where they are not, and Tokyo's dot; the SQL box shows a query's rows.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::app;

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
/// The page's colours (see src/server/index.html).
const LAND: [u8; 3] = [0xe0, 0x7a, 0x1f];
const SEA: [u8; 3] = [0xcf, 0xe3, 0xf3];
const PLACE: [u8; 3] = [0x3d, 0x1a, 0x78];

fn chromium() -> String {
    std::env::var("GEOSTACK_CHROMIUM")
        .ok()
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            panic!("no Chromium: run `GEOSTACK_BROWSER=1 scripts/services` (scripts/test does)")
        })
}

/// Runs headless Chromium on `url` with `mode` (`--screenshot=…` or `--dump-dom`), waiting up
/// to 20 s of virtual time for the page to settle; returns stdout.
fn chromium_run(url: &str, mode: &str, profile: &std::path::Path) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--window-size={WIDTH},{HEIGHT}"),
            "--virtual-time-budget=20000",
            mode,
            url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("geostack-browser-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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
            "select not exists (select 1 from countries where ST_DWithin(geom, ST_SetSRID(ST_MakePoint($1, $2), 4326), 3))",
        )
        .bind(lon)
        .bind(lat)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
        assert!(far, "{lon} {lat} is not open sea");
    }

    let dir = scratch("map");
    let shot = dir.join("map.png");
    let url = format!("{base}?lon=0&lat=0&zoom=1");
    let mode = format!("--screenshot={}", shot.display());
    let profile = dir.join("profile");
    tokio::task::spawn_blocking(move || chromium_run(&url, &mode, &profile))
        .await
        .unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
    let channels = info.color_type.samples();
    let at = |(x, y): (u32, u32)| {
        let i = (y as usize * info.width as usize + x as usize) * channels;
        [buf[i], buf[i + 1], buf[i + 2]]
    };
    for (name, lon, lat) in &land {
        let p = pixel(*lon, *lat);
        assert!(
            near(at(p), LAND),
            "{name} at {p:?} is {:?}, not land",
            at(p)
        );
    }
    for (lon, lat) in sea {
        let p = pixel(lon, lat);
        assert!(
            near(at(p), SEA),
            "{lon} {lat} at {p:?} is {:?}, not sea",
            at(p)
        );
    }
    let tokyo = pixel(139.749462, 35.686963);
    assert!(
        near(at(tokyo), PLACE),
        "Tokyo at {tokyo:?} is {:?}",
        at(tokyo)
    );

    // The SQL box: the page runs `q` through the SQL API as a click on Run would.
    let q = "select name, pop_max from places order by pop_max desc limit 3";
    let url = format!("{base}?q={}", support::encode(q));
    let profile = scratch("sql").join("profile");
    let dom = tokio::task::spawn_blocking(move || chromium_run(&url, "--dump-dom", &profile))
        .await
        .unwrap();
    assert!(
        dom.contains(
            "<tr><th>name</th><th>pop_max</th></tr><tr><td>Tokyo</td><td>35676000</td></tr>\
             <tr><td>New York</td><td>19040000</td></tr><tr><td>Mexico City</td><td>19028000</td></tr>"
        ),
        "{dom}"
    );
    assert!(dom.contains(">3 rows in "), "{dom}");
    let _ = std::fs::remove_dir_all(dir);
}
