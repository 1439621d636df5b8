//! Mapnik as the reference for raster tiles: styles written twice, as CartoCSS for our renderer
//! and as the Mapnik XML carto would make of them, and a Mapnik process (`tests/mapnik/render.py`
//! on Debian's python3-mapnik) that renders tiles from the same PostGIS table.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::allow_attributes,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "shared by a test and a benchmark, each using a different part"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// One style, both ways.
pub struct Reference {
    pub name: &'static str,
    /// The layer's SQL; `{table}` is the countries table.
    pub sql: &'static str,
    pub cartocss: &'static str,
    /// The `<Style>`'s rules in Mapnik XML.
    pub rules: &'static str,
    /// Whether pixels are compared one by one; not for dashes, whose phase depends on where
    /// each renderer starts a clipped ring, nor for dense labels, where two whose boxes all
    /// but touch may be kept by one renderer and dropped by the other.
    pub by_pixel: bool,
}

const COUNTRIES: &str =
    "select gid, iso, name, ST_Transform(geom, 3857) as the_geom_webmercator from {table}";
const POINTS: &str = "select gid, name, ST_Transform(ST_PointOnSurface(geom), 3857) as the_geom_webmercator from {table}";

const LABELS: &str = "select gid, name, ST_Transform(ST_PointOnSurface(geom), 3857) as the_geom_webmercator from {table} order by gid";

/// The styles compared: fills and outlines, attribute filters (a comparison and a regular
/// expression, the later rule winning), dashed translucent lines with joins, markers, and
/// labels (haloed point labels kept apart; bold, upper-cased, wrapped and displaced ones). Both
/// renderers set the labels in the fonts the tiles crate bundles.
pub const STYLES: &[Reference] = &[
    Reference {
        name: "fill_outline",
        sql: COUNTRIES,
        cartocss: "#countries { polygon-fill: #3388ff; line-color: #1a1a1a; line-width: 1; }",
        rules: r##"<Rule><PolygonSymbolizer fill="#3388ff"/><LineSymbolizer stroke="#1a1a1a" stroke-width="1"/></Rule>"##,
        by_pixel: true,
    },
    Reference {
        name: "filters",
        sql: COUNTRIES,
        cartocss: "#countries { polygon-fill: #cccccc;
            [name =~ 'B.*'] { polygon-fill: #e31a1c; }
            [iso = 'BRA'] { polygon-fill: #33a02c; } }",
        rules: r##"
            <Rule><Filter>([iso] = 'BRA')</Filter><PolygonSymbolizer fill="#33a02c"/></Rule>
            <Rule><Filter>([name].match('B.*')) and not (([iso] = 'BRA'))</Filter><PolygonSymbolizer fill="#e31a1c"/></Rule>
            <Rule><Filter>not (([name].match('B.*'))) and not (([iso] = 'BRA'))</Filter><PolygonSymbolizer fill="#cccccc"/></Rule>"##,
        by_pixel: true,
    },
    Reference {
        name: "dashed_lines",
        sql: COUNTRIES,
        cartocss: "#countries { line-color: #ff7f00; line-width: 2.5; line-opacity: 0.7;
            line-dasharray: 6, 3; line-join: round; }",
        rules: r##"<Rule><LineSymbolizer stroke="#ff7f00" stroke-width="2.5" stroke-opacity="0.7" stroke-dasharray="6, 3" stroke-linejoin="round"/></Rule>"##,
        by_pixel: false,
    },
    Reference {
        name: "markers",
        sql: POINTS,
        cartocss: "#points { marker-width: 8; marker-fill: #6a3d9a; marker-line-color: #ffffff;
            marker-line-width: 1; marker-allow-overlap: true; }",
        rules: r##"<Rule><MarkersSymbolizer width="8" height="8" fill="#6a3d9a" stroke="#ffffff" stroke-width="1" allow-overlap="true" placement="point"/></Rule>"##,
        by_pixel: true,
    },
    Reference {
        name: "labels",
        sql: LABELS,
        cartocss: "#points { text-name: [name]; text-face-name: 'DejaVu Sans Book'; text-size: 10;
            text-fill: #333333; text-halo-fill: #ffffff; text-halo-radius: 1.5; }",
        rules: r##"<Rule><TextSymbolizer face-name="DejaVu Sans Book" size="10" fill="#333333" halo-fill="#ffffff" halo-radius="1.5" placement="point">[name]</TextSymbolizer></Rule>"##,
        by_pixel: true,
    },
    Reference {
        name: "label_layout",
        sql: LABELS,
        cartocss: "#points { text-name: [name]; text-face-name: 'DejaVu Sans Bold'; text-size: 10;
            text-wrap-width: 50; text-transform: uppercase; text-dy: 6; text-line-spacing: 1;
            text-fill: #1f78b4; text-halo-radius: 1; }",
        rules: r##"<Rule><TextSymbolizer face-name="DejaVu Sans Bold" size="10" wrap-width="50" text-transform="uppercase" dy="6" line-spacing="1" fill="#1f78b4" halo-radius="1" placement="point">[name]</TextSymbolizer></Rule>"##,
        by_pixel: false,
    },
];

/// The tiles compared: the world, the Americas, South America, western Europe.
pub const TILES: &[(u8, u32, u32)] = &[(0, 0, 0), (2, 1, 1), (3, 2, 4), (4, 8, 5)];

/// Where Mapnik reads: a PostgreSQL database and its countries table.
pub struct Source {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub table: String,
}

impl Source {
    /// The database of `url` (a `postgres://` URL) and `table` in it.
    pub fn new(url: &str, table: &str) -> Self {
        let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a postgres URL");
        Self {
            host: options.get_host().to_owned(),
            port: options.get_port(),
            user: options.get_username().to_owned(),
            dbname: options.get_database().unwrap_or("postgres").to_owned(),
            table: table.to_owned(),
        }
    }
}

/// A Mapnik renderer of one style, running until dropped.
pub struct Mapnik {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _xml: tempfile_path::TempXml,
}

impl Mapnik {
    /// Mapnik with `style` over `source` (started with `GEOSTACK_MAPNIK_PYTHON`, which
    /// `scripts/services` gives with `GEOSTACK_MAPNIK=1`).
    pub fn start(style: &Reference, source: &Source) -> Self {
        let python = std::env::var("GEOSTACK_MAPNIK_PYTHON").expect(
            "GEOSTACK_MAPNIK_PYTHON: run through scripts/test, or eval \"$(GEOSTACK_MAPNIK=1 scripts/services)\"",
        );
        let sql = style.sql.replace("{table}", &source.table);
        let layer = style.cartocss.trim_start().trim_start_matches('#');
        let layer = &layer[..layer.find([' ', '{']).unwrap_or(layer.len())];
        let xml = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<Map srs="epsg:3857" buffer-size="64">
  <Style name="{layer}">{rules}</Style>
  <Layer name="{layer}" srs="epsg:3857">
    <StyleName>{layer}</StyleName>
    <Datasource>
      <Parameter name="type">postgis</Parameter>
      <Parameter name="host">{host}</Parameter>
      <Parameter name="port">{port}</Parameter>
      <Parameter name="user">{user}</Parameter>
      <Parameter name="dbname">{dbname}</Parameter>
      <Parameter name="table">({sql}) as q</Parameter>
      <Parameter name="geometry_field">the_geom_webmercator</Parameter>
      <Parameter name="srid">3857</Parameter>
      <Parameter name="extent">-20037508.34,-20037508.34,20037508.34,20037508.34</Parameter>
    </Datasource>
  </Layer>
</Map>"#,
            rules = style.rules,
            host = source.host,
            port = source.port,
            user = source.user,
            dbname = source.dbname,
        );
        let xml = tempfile_path::TempXml::new(style.name, &xml);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mapnik/render.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(xml.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start Mapnik's renderer");
        let stdin = child.stdin.take().expect("its stdin");
        let stdout = BufReader::new(child.stdout.take().expect("its stdout"));
        Self {
            child,
            stdin,
            stdout,
            _xml: xml,
        }
    }

    /// The tile `z/x/y` as Mapnik renders it (a 256-pixel, 32-bit PNG).
    pub fn render(&mut self, z: u8, x: u32, y: u32) -> Vec<u8> {
        writeln!(self.stdin, "{z} {x} {y}").expect("ask Mapnik");
        self.stdin.flush().expect("ask Mapnik");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("Mapnik's answer");
        let len: usize = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Mapnik answered {line:?} for {z}/{x}/{y}"));
        let mut png = vec![0; len];
        self.stdout.read_exact(&mut png).expect("Mapnik's tile");
        png
    }
}

impl Drop for Mapnik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How two images differ, both composited over white.
#[derive(Debug, Clone, Copy)]
pub struct Difference {
    /// The share of pixels with a channel more than 48 apart.
    pub differing: f64,
    /// The mean absolute difference per channel (0–255).
    pub mean: f64,
    /// The share of 8 × 8 blocks whose mean colours have a channel more than 16 apart: blind
    /// to where along a line a dash starts or which pixel an edge's anti-aliasing lands on,
    /// not to a wrong colour, width or place.
    pub blocks: f64,
}

/// How two PNGs of the same size differ.
pub fn difference(a: &[u8], b: &[u8]) -> Difference {
    let (a, b) = (over_white(a), over_white(b));
    assert_eq!(a.len(), b.len(), "images of different sizes");
    let pixels = a.len() / 3;
    let mut differing = 0usize;
    let mut total = 0u64;
    for (p, q) in a.chunks_exact(3).zip(b.chunks_exact(3)) {
        let d = p
            .iter()
            .zip(q)
            .map(|(x, y)| x.abs_diff(*y))
            .collect::<Vec<_>>();
        if d.iter().any(|v| *v > 48) {
            differing += 1;
        }
        total += d.iter().map(|v| u64::from(*v)).sum::<u64>();
    }
    let side = (pixels as f64).sqrt() as usize;
    assert_eq!(side * side, pixels, "square images");
    let block = |img: &[u8], bx: usize, by: usize| {
        let mut sum = [0u32; 3];
        for y in by * 8..by * 8 + 8 {
            for x in bx * 8..bx * 8 + 8 {
                for (c, s) in sum.iter_mut().enumerate() {
                    *s += u32::from(img[(y * side + x) * 3 + c]);
                }
            }
        }
        sum.map(|s| s / 64)
    };
    let (n, mut far) = (side / 8, 0usize);
    for by in 0..n {
        for bx in 0..n {
            let (p, q) = (block(&a, bx, by), block(&b, bx, by));
            if p.iter().zip(&q).any(|(x, y)| x.abs_diff(*y) > 16) {
                far += 1;
            }
        }
    }
    Difference {
        differing: differing as f64 / pixels as f64,
        mean: total as f64 / (pixels * 3) as f64,
        blocks: far as f64 / (n * n) as f64,
    }
}

/// A PNG's pixels (RGB or RGBA, 8 bits) over white, as RGB.
fn over_white(png_bytes: &[u8]) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("its size")];
    let info = reader.next_frame(&mut pixels).expect("its pixels");
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    match info.color_type {
        png::ColorType::Rgba => pixels
            .chunks_exact(4)
            .flat_map(|p| {
                let a = u32::from(p[3]);
                let c = |v: u8| ((u32::from(v) * a + 255 * (255 - a) + 127) / 255) as u8;
                [c(p[0]), c(p[1]), c(p[2])]
            })
            .collect(),
        png::ColorType::Rgb => pixels,
        other => panic!("an unexpected PNG colour type {other:?}"),
    }
}

mod tempfile_path {
    /// A file in the system's temporary directory, removed when dropped.
    pub struct TempXml(std::path::PathBuf);

    impl TempXml {
        pub fn new(name: &str, text: &str) -> Self {
            static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "geostack-mapnik-{name}-{}-{n}.xml",
                std::process::id()
            ));
            std::fs::write(&path, text).expect("write Mapnik's style");
            Self(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempXml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
