//! Hand-made cases, encoded and decoded back: exact geometry in tile coordinates, and every
//! tile passes the spec check of `decode`.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::collections::BTreeMap;

use geo_types::{Coord, Geometry, LineString, MultiPoint, Point, Polygon};
use geostack_tiles::{
    DecodedValue, TileBuilder, TileCoord, TileGeometry, TileOptions, TilePoint, Value, decode,
};

/// The EPSG:3857 point at tile-space `(x, y)` of `tile` (extent 4096).
fn m(tile: TileCoord, x: f64, y: f64) -> Coord<f64> {
    let b = tile.bounds_3857();
    let s = (b.max_x - b.min_x) / 4096.0;
    Coord {
        x: b.min_x + x * s,
        y: b.max_y - y * s,
    }
}

fn ring(tile: TileCoord, pts: &[(f64, f64)]) -> LineString<f64> {
    let mut c: Vec<Coord<f64>> = pts.iter().map(|&(x, y)| m(tile, x, y)).collect();
    c.push(c[0]);
    LineString::new(c)
}

/// Encodes one feature and decodes the tile (checking it); `None` when the tile is empty.
fn one(tile: TileCoord, g: &Geometry<f64>) -> Option<TileGeometry> {
    let mut builder = TileBuilder::new(tile, &TileOptions::default());
    let mut layer = builder.layer("l");
    layer.add_geometry(g, None, &[]).unwrap();
    layer.finish().unwrap();
    let decoded = decode(&builder.into_bytes().unwrap()).unwrap();
    decoded
        .layers
        .first()
        .map(|l| normalize(l.features[0].geometry.clone()))
}

/// Rings start at their smallest point, so that expectations need not know where the
/// algorithm starts them.
fn normalize(g: TileGeometry) -> TileGeometry {
    let rotate = |r: Vec<TilePoint>| {
        let i = (0..r.len()).min_by_key(|&i| r[i]).unwrap();
        let mut r2 = r[i..].to_vec();
        r2.extend_from_slice(&r[..i]);
        r2
    };
    match g {
        TileGeometry::Polygons(ps) => TileGeometry::Polygons(
            ps.into_iter()
                .map(|rings| rings.into_iter().map(rotate).collect())
                .collect(),
        ),
        other => other,
    }
}

fn tile(z: u8, x: u32, y: u32) -> TileCoord {
    TileCoord::new_checked(z, x, y).unwrap()
}

#[test]
fn a_square_crossing_the_tile_edge_is_cut_at_the_buffer() {
    let t = tile(2, 1, 1);
    let square = Polygon::new(
        ring(
            t,
            &[
                (-200.0, -200.0),
                (1000.0, -200.0),
                (1000.0, 1000.0),
                (-200.0, 1000.0),
            ],
        ),
        vec![],
    );
    assert_eq!(
        one(t, &square.into()),
        Some(TileGeometry::Polygons(vec![vec![vec![
            [-64, -64],
            [1000, -64],
            [1000, 1000],
            [-64, 1000]
        ]]]))
    );
}

#[test]
fn a_polygon_with_a_hole_keeps_it_wound_the_other_way() {
    let t = tile(5, 10, 12);
    // Given with the "wrong" winding on both rings: the encoder orients them.
    let outer = ring(
        t,
        &[
            (100.0, 100.0),
            (100.0, 900.0),
            (900.0, 900.0),
            (900.0, 100.0),
        ],
    );
    let hole = ring(
        t,
        &[
            (300.0, 300.0),
            (500.0, 300.0),
            (500.0, 500.0),
            (300.0, 500.0),
        ],
    );
    assert_eq!(
        one(t, &Polygon::new(outer, vec![hole]).into()),
        Some(TileGeometry::Polygons(vec![vec![
            vec![[100, 100], [900, 100], [900, 900], [100, 900]],
            vec![[300, 300], [300, 500], [500, 500], [500, 300]],
        ]]))
    );
}

#[test]
fn a_line_crossing_the_tile_twice_becomes_two_parts() {
    let t = tile(3, 4, 2);
    let u = LineString::new(vec![
        m(t, -500.0, 1000.0),
        m(t, 5000.0, 1000.0),
        m(t, 5000.0, 3000.0),
        m(t, -500.0, 3000.0),
    ]);
    assert_eq!(
        one(t, &u.into()),
        Some(TileGeometry::Lines(vec![
            vec![[-64, 1000], [4160, 1000]],
            vec![[4160, 3000], [-64, 3000]]
        ]))
    );
}

#[test]
fn a_ring_that_collapses_at_low_zoom_is_dropped_and_shown_when_zoomed_in() {
    // A 100 m square near Zürich.
    let (x, y) = geostack_tiles::to_web_mercator(8.54, 47.37);
    let square: Geometry<f64> = Polygon::new(
        LineString::from(vec![
            (x, y),
            (x + 100.0, y),
            (x + 100.0, y + 100.0),
            (x, y + 100.0),
            (x, y),
        ]),
        vec![],
    )
    .into();
    let low = tile(0, 0, 0);
    let mut builder = TileBuilder::new(low, &TileOptions::default());
    let mut layer = builder.layer("l");
    layer.add_geometry(&square, None, &[]).unwrap();
    let stats = layer.finish().unwrap();
    assert_eq!((stats.added, stats.degenerate), (0, 1));
    assert!(builder.into_bytes().unwrap().is_empty());

    // At z16 (a tile is ~611 m) it is ~670 units wide.
    let n = 1u32 << 16;
    let tx = ((x + geostack_tiles::WEB_MERCATOR_HALF) / (2.0 * geostack_tiles::WEB_MERCATOR_HALF)
        * f64::from(n)) as u32;
    let ty = ((geostack_tiles::WEB_MERCATOR_HALF - y) / (2.0 * geostack_tiles::WEB_MERCATOR_HALF)
        * f64::from(n)) as u32;
    let Some(TileGeometry::Polygons(ps)) = one(tile(16, tx, ty), &square) else {
        panic!("the square is missing at z16");
    };
    let r = &ps[0][0];
    let width = r.iter().map(|p| p[0]).max().unwrap() - r.iter().map(|p| p[0]).min().unwrap();
    assert!((669..=671).contains(&width), "{width}");
}

#[test]
fn tiles_beside_the_antimeridian_do_not_wrap() {
    // A box from 179°E to 180°E, 1° high at the equator.
    let (x0, y0) = geostack_tiles::to_web_mercator(179.0, 0.0);
    let (x1, y1) = geostack_tiles::to_web_mercator(180.0, 1.0);
    let g: Geometry<f64> = Polygon::new(
        LineString::from(vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]),
        vec![],
    )
    .into();
    // z2: the east tile holds it, against its right edge; the west tile has nothing.
    let east = one(tile(2, 3, 1), &g);
    let expect_x0 = ((x0 - geostack_tiles::WEB_MERCATOR_HALF / 2.0)
        / (geostack_tiles::WEB_MERCATOR_HALF / 2.0)
        * 4096.0)
        .round() as i32;
    let expect_y1 = ((geostack_tiles::WEB_MERCATOR_HALF / 2.0 - y1)
        / (geostack_tiles::WEB_MERCATOR_HALF / 2.0)
        * 4096.0)
        .round() as i32;
    assert_eq!(
        east,
        Some(TileGeometry::Polygons(vec![vec![vec![
            [expect_x0, expect_y1],
            [4096, expect_y1],
            [4096, 4096],
            [expect_x0, 4096]
        ]]]))
    );
    assert_eq!(one(tile(2, 0, 1), &g), None);
}

#[test]
fn points_are_kept_in_the_buffer_and_deduplicated_on_the_grid() {
    let t = tile(4, 8, 5);
    let mp = MultiPoint::new(vec![
        Point(m(t, 10.2, 20.4)),
        Point(m(t, 9.8, 19.6)),
        Point(m(t, -50.0, 4100.0)),
        Point(m(t, -70.0, 100.0)),
    ]);
    assert_eq!(
        one(t, &mp.into()),
        Some(TileGeometry::Points(vec![[10, 20], [-50, 4100]]))
    );
}

#[test]
fn invalid_and_empty_input_is_counted_not_fatal() {
    let t = tile(0, 0, 0);
    let mut builder = TileBuilder::new(t, &TileOptions::default());
    let mut layer = builder.layer("l");
    layer.add_wkb(b"not wkb at all", None, &[]).unwrap();
    layer.add_wkb(&[1, 1, 0, 0], None, &[]).unwrap();
    // POINT EMPTY: NaN coordinates.
    let mut empty = vec![1u8, 1, 0, 0, 0];
    empty.extend(f64::NAN.to_le_bytes());
    empty.extend(f64::NAN.to_le_bytes());
    layer.add_wkb(&empty, None, &[]).unwrap();
    // POLYGON EMPTY.
    layer
        .add_wkb(&[1, 3, 0, 0, 0, 0, 0, 0, 0], None, &[])
        .unwrap();
    let stats = layer.finish().unwrap();
    assert_eq!(stats.added, 0);
    assert_eq!(
        stats.invalid + stats.empty + stats.degenerate,
        4,
        "{stats:?}"
    );
    assert!(builder.into_bytes().unwrap().is_empty());
}

#[test]
fn attributes_are_typed_nulls_omitted_and_ids_unique() {
    let t = tile(0, 0, 0);
    let mut builder = TileBuilder::new(t, &TileOptions::default());
    let mut layer = builder.layer("places");
    let p: Geometry<f64> = Point::new(0.0, 0.0).into();
    let attrs = [
        ("name", Value::String("origin")),
        ("pop", Value::Int(-5)),
        ("rank", Value::Uint(7)),
        ("score", Value::Double(0.25)),
        ("capital", Value::Bool(true)),
        ("note", Value::Null),
    ];
    layer.add_geometry(&p, Some(42), &attrs).unwrap();
    layer.add_geometry(&p, Some(42), &[]).unwrap();
    let stats = layer.finish().unwrap();
    assert_eq!((stats.added, stats.duplicate_ids), (2, 1));
    let decoded = decode(&builder.into_bytes().unwrap()).unwrap();
    let l = decoded.layer("places").unwrap();
    assert_eq!((l.version, l.extent), (2, 4096));
    assert_eq!(l.features[0].id, Some(42));
    assert_eq!(l.features[1].id, None);
    let want: BTreeMap<String, DecodedValue> = [
        ("name", DecodedValue::String("origin".into())),
        ("pop", DecodedValue::Sint(-5)),
        ("rank", DecodedValue::Uint(7)),
        ("score", DecodedValue::Double(0.25)),
        ("capital", DecodedValue::Bool(true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(l.features[0].attributes, want);
    assert_eq!(
        l.features[0].geometry,
        TileGeometry::Points(vec![[2048, 2048]])
    );
}

#[test]
fn the_spec_check_refuses_broken_tiles() {
    // A layer with version 1.
    let layer = [0x78, 0x01, 0x0a, 0x01, b'l'];
    let mut tile = vec![0x1a, layer.len() as u8];
    tile.extend(layer);
    assert!(decode(&tile).unwrap_err().to_string().contains("version 1"));
    // A polygon ring that repeats its closing vertex: MoveTo(0,0) LineTo(10,0)(0,10)(0,0) ClosePath.
    let geometry = [9u8, 0, 0, 26, 20, 0, 19, 20, 0, 19, 15];
    let mut feature = vec![0x18, 3, 0x22, geometry.len() as u8];
    feature.extend(geometry);
    let mut layer = vec![0x78, 2, 0x0a, 1, b'l', 0x12, feature.len() as u8];
    layer.extend(feature);
    let mut tile = vec![0x1a, layer.len() as u8];
    tile.extend(layer);
    let err = decode(&tile).unwrap_err().to_string();
    assert!(err.contains("repeats its closing vertex"), "{err}");
}

#[test]
fn a_layer_stops_at_its_feature_cap_and_counts_the_rest() {
    let t = tile(0, 0, 0);
    let options = TileOptions::default().max_features(2);
    let mut builder = TileBuilder::new(t, &options);
    let mut layer = builder.layer("l");
    for i in 0..5 {
        let p: Geometry<f64> = Point::new(f64::from(i) * 1e5, 0.0).into();
        layer.add_geometry(&p, Some(i as u64), &[]).unwrap();
    }
    let stats = layer.finish().unwrap();
    assert_eq!((stats.added, stats.capped), (2, 3));
    let decoded = decode(&builder.into_bytes().unwrap()).unwrap();
    let ids: Vec<Option<u64>> = decoded.layers[0].features.iter().map(|f| f.id).collect();
    assert_eq!(ids, vec![Some(0), Some(1)]);
}

#[test]
fn clusters_sit_on_an_absolute_grid_and_are_never_duplicated_across_tiles() {
    use geostack_tiles::{Aggregate, AggregationOptions, PointAggregator};

    // A dense lattice of points over four z3 tiles (2×2 around 3/3/3), with a "pop" of 1 each,
    // every tile offered every point (as a buffered fetch would, and more).
    let corner = tile(3, 3, 3).bounds_3857();
    let size = tile(3, 3, 3).size_3857();
    let mut points = Vec::new();
    for i in 0..200 {
        for j in 0..200 {
            let x = corner.min_x + (f64::from(i) + 0.5) * size * 2.0 / 200.0;
            let y = corner.max_y - (f64::from(j) + 0.5) * size * 2.0 / 200.0;
            points.push(Coord { x, y });
        }
    }
    let options = AggregationOptions::default()
        .cell(256)
        .aggregate("pop", Aggregate::Sum)
        .aggregate("pop", Aggregate::Max);
    let mut total = 0u64;
    let mut clusters = 0;
    for (x, y) in [(3, 3), (4, 3), (3, 4), (4, 4)] {
        let t = tile(3, x, y);
        let mut agg = PointAggregator::new(t, &TileOptions::default(), &options).unwrap();
        for p in &points {
            agg.add(*p, &[Some(1.0), Some(1.0)]);
        }
        let mut builder = TileBuilder::new(t, &TileOptions::default());
        let mut layer = builder.layer("clusters");
        clusters += agg.write(&mut layer).unwrap();
        layer.finish().unwrap();
        let decoded = decode(&builder.into_bytes().unwrap()).unwrap();
        for f in &decoded.layers[0].features {
            let Some(DecodedValue::Uint(count)) = f.attributes.get("count") else {
                panic!("{f:?}")
            };
            assert_eq!(
                f.attributes.get("pop_sum"),
                Some(&DecodedValue::Double(*count as f64))
            );
            assert_eq!(
                f.attributes.get("pop_max"),
                Some(&DecodedValue::Double(1.0))
            );
            // The cluster sits in the tile, not in its buffer.
            let TileGeometry::Points(ps) = &f.geometry else {
                panic!()
            };
            assert!(
                ps.iter()
                    .all(|[x, y]| (0..4096).contains(x) && (0..4096).contains(y)),
                "{ps:?}"
            );
            total += count;
        }
    }
    assert_eq!(total, 40_000, "every point in exactly one cluster");
    assert_eq!(
        clusters,
        4 * 16 * 16,
        "a 4096 tile holds 16×16 cells of 256"
    );

    // At or under the threshold the points stay points.
    let t = tile(3, 3, 3);
    let few = AggregationOptions::default().threshold(10);
    let mut agg = PointAggregator::new(t, &TileOptions::default(), &few).unwrap();
    for p in points.iter().take(5) {
        agg.add(*p, &[]);
    }
    let mut builder = TileBuilder::new(t, &TileOptions::default());
    let mut layer = builder.layer("l");
    assert_eq!(agg.write(&mut layer).unwrap(), 5);
    assert!(
        PointAggregator::new(
            t,
            &TileOptions::default(),
            &AggregationOptions::default().cell(100)
        )
        .is_err()
    );
}

/// Twice the area of a tile geometry's polygons (exteriors positive, holes negative).
fn area2(g: &TileGeometry) -> i64 {
    let TileGeometry::Polygons(ps) = g else {
        return 0;
    };
    ps.iter()
        .flatten()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let ([x0, y0], [x1, y1]) = (r[i], r[(i + 1) % r.len()]);
                    i64::from(x0) * i64::from(y1) - i64::from(x1) * i64::from(y0)
                })
                .sum::<i64>()
        })
        .sum()
}

fn polygon(t: TileCoord, pts: &[(f64, f64)]) -> Geometry<f64> {
    Polygon::new(ring(t, pts), vec![]).into()
}

#[test]
fn a_bowtie_becomes_two_triangles_touching_at_their_tips() {
    let t = tile(6, 20, 30);
    let bowtie = polygon(
        t,
        &[
            (100.0, 100.0),
            (900.0, 900.0),
            (900.0, 100.0),
            (100.0, 900.0),
        ],
    );
    let g = one(t, &bowtie).unwrap();
    let TileGeometry::Polygons(ps) = &g else {
        panic!("{g:?}")
    };
    assert_eq!(ps.len(), 2, "{g:?}");
    assert!(ps.iter().all(|p| p.len() == 1 && p[0].len() == 3), "{g:?}");
    assert!(ps.iter().all(|p| p[0].contains(&[500, 500])), "{g:?}");
    assert_eq!(area2(&g), 2 * 2 * 160_000);
}

#[test]
fn a_ring_touching_itself_comes_out_as_a_polygon_with_a_hole() {
    let t = tile(6, 20, 30);
    // The ring passes twice through (500, 900), enclosing a triangle that is outside the
    // polygon by the even–odd rule.
    let g = one(
        t,
        &polygon(
            t,
            &[
                (100.0, 100.0),
                (900.0, 100.0),
                (900.0, 900.0),
                (500.0, 900.0),
                (300.0, 500.0),
                (700.0, 500.0),
                (500.0, 900.0),
                (100.0, 900.0),
            ],
        ),
    )
    .unwrap();
    assert_eq!(area2(&g), 2 * (640_000 - 80_000), "{g:?}");
}

#[test]
fn repeated_points_and_spikes_go() {
    let t = tile(6, 20, 30);
    let g = one(
        t,
        &polygon(
            t,
            &[
                (100.0, 100.0),
                (100.0, 100.0),
                (900.0, 100.0),
                (900.0, 500.0),
                (1500.0, 500.0),
                (900.0, 500.0),
                (900.0, 900.0),
                (100.0, 900.0),
                (100.0, 900.2),
            ],
        ),
    );
    assert_eq!(
        g,
        Some(TileGeometry::Polygons(vec![vec![vec![
            [100, 100],
            [900, 100],
            [900, 900],
            [100, 900]
        ]]]))
    );
}

#[test]
fn rings_that_collapse_on_the_grid_go_and_small_islands_stay() {
    let t = tile(0, 0, 0);
    // A sliver 0.3 units high collapses onto one row of the grid: nothing is left.
    let sliver = polygon(
        t,
        &[
            (100.2, 100.1),
            (900.2, 100.2),
            (900.2, 100.4),
            (100.2, 100.3),
        ],
    );
    assert_eq!(one(t, &sliver), None);
    // An island under a unit and a half across, drawn with 16 vertices: simplification at
    // half a unit would leave a line of it, snapping alone leaves a unit or less of area.
    let island: Vec<(f64, f64)> = (0..16)
        .map(|i| {
            let a = f64::from(i) * std::f64::consts::TAU / 16.0;
            (2000.4 + 0.7 * a.cos(), 1000.6 + 0.7 * a.sin())
        })
        .collect();
    let g = one(t, &polygon(t, &island)).expect("the island is kept");
    assert!(area2(&g) > 0, "{g:?}");
}

/// A deterministic pseudo-random sequence (a 64-bit LCG), enough for shapes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn random_tangles_come_out_valid_at_every_scale() {
    // Rings of random points (crossing themselves everywhere), random stars and polygons with
    // random holes, from a few units to many tiles across, each through clipping,
    // simplification and snapping: `decode` checks every ring of every tile.
    let mut rng = Lcg(7);
    let t = tile(8, 130, 90);
    let mut kept = 0;
    for case in 0..400 {
        let scale = [3.0, 20.0, 300.0, 5000.0][case % 4];
        let (cx, cy) = (-500.0 + 5000.0 * rng.next(), -500.0 + 5000.0 * rng.next());
        let n = 3 + (rng.next() * 40.0) as usize;
        let star = case % 3 == 0;
        let mut pts: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                if star {
                    let a = i as f64 * std::f64::consts::TAU / n as f64;
                    let r = scale * (0.2 + rng.next());
                    (cx + r * a.cos(), cy + r * a.sin())
                } else {
                    (
                        cx + scale * (rng.next() - 0.5),
                        cy + scale * (rng.next() - 0.5),
                    )
                }
            })
            .collect();
        if case % 5 == 0 {
            pts.push(pts[0]);
            pts.push(pts[1]);
        }
        let holes = (0..case % 3)
            .map(|_| {
                let (hx, hy) = (
                    cx + scale * (rng.next() - 0.5),
                    cy + scale * (rng.next() - 0.5),
                );
                let s = scale * 0.2 * rng.next();
                ring(t, &[(hx, hy), (hx + s, hy), (hx + s, hy + s), (hx, hy + s)])
            })
            .collect();
        let g: Geometry<f64> = Polygon::new(ring(t, &pts), holes).into();
        kept += usize::from(one(t, &g).is_some());
    }
    assert!(kept > 300, "only {kept} of 400 shapes reached the tile");
}
