//! Raster tiles checked against Mapnik: each style of `support::mapnik::STYLES`, drawn by the
//! server from its CartoCSS and by Mapnik (Debian's python3-mapnik, started by the test) from the
//! equivalent Mapnik XML over the same table, tile by tile, compared over white.
//!
//! Tolerance, for every tile: at most 2% of its 8 × 8 blocks have mean colours with a channel
//! more than 16 apart; for styles without dashes also at most 1% of its pixels with a channel
//! more than 48 apart (anti-aliased edges land a pixel apart) and a mean difference under 2 of
//! 255. Dashes are compared by block only: where a dash starts depends on where each renderer
//! starts a clipped ring; so are dense labels: of two labels whose boxes all but touch, one
//! renderer may keep one that the other drops (their glyph metrics differ below a pixel).
mod support;

use support::app;
use support::mapnik::{Mapnik, STYLES, Source, TILES, difference};

#[tokio::test]
async fn raster_tiles_match_mapnik_within_the_stated_tolerance() {
    let app = app().await;
    let source = Source::new(&app.db.url(), "countries");
    let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mapnik");
    let mut failures = Vec::new();
    for style in STYLES {
        let config = serde_json::json!({"version": "1.3.0", "layers": [{"type": "mapnik", "options": {
            "sql": style.sql.replace("{table}", "countries"),
            "cartocss": style.cartocss, "cartocss_version": "2.1.1"}}]});
        let r = app.post_json("/api/v1/map", &config).await;
        assert_eq!(r.status, 200, "{}: {}", style.name, r.text());
        let doc = r.json();
        assert_eq!(
            doc["metadata"]["layers"][0]["meta"]["warnings"],
            serde_json::json!([]),
            "{}: every property is drawn",
            style.name
        );
        let token = doc["layergroupid"].as_str().unwrap().to_owned();
        let mut mapnik = Mapnik::start(style, &source);
        for &(z, x, y) in TILES {
            let ours = app
                .get(&format!("/api/v1/map/{token}/{z}/{x}/{y}.png"))
                .await;
            assert_eq!(ours.status, 200, "{}: {}", style.name, ours.text());
            let theirs = mapnik.render(z, x, y);
            let d = difference(&ours.body, &theirs);
            let line = format!(
                "{} {z}/{x}/{y}: {:.2}% of pixels differ, mean difference {:.2}, {:.2}% of blocks differ",
                style.name,
                d.differing * 100.0,
                d.mean,
                d.blocks * 100.0
            );
            println!("{line}");
            let by_pixel = d.differing > 0.01 || d.mean > 2.0;
            if d.blocks > 0.02 || (style.by_pixel && by_pixel) {
                std::fs::create_dir_all(&keep).unwrap();
                let stem = format!("{}-{z}-{x}-{y}", style.name);
                std::fs::write(keep.join(format!("{stem}-ours.png")), &ours.body).unwrap();
                std::fs::write(keep.join(format!("{stem}-mapnik.png")), &theirs).unwrap();
                failures.push(line);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "beyond the tolerance (both images kept in {}):\n{}",
        keep.display(),
        failures.join("\n")
    );
}
