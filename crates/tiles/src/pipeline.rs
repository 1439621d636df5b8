//! EPSG:3857 geometry → integer tile geometry: transform, clip, simplify, quantize, and for
//! polygons a validity repair on the grid. No I/O.

use geo_types::{Coord, Geometry, LineString, Polygon};
use i_overlay::core::fill_rule::FillRule;
use i_overlay::core::overlay::IntOverlayOptions;
use i_overlay::core::simplify::Simplify;
use i_overlay::i_float::int::point::IntPoint;

use crate::{Bounds, TileCoord, TileOptions};

/// A point in tile space: integer units, `x` to the east, `y` down, the tile at
/// `0..extent`.
pub type TilePoint = [i32; 2];

/// A geometry in tile space, ready to encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TileGeometry {
    /// One or more points.
    Points(Vec<TilePoint>),
    /// One or more lines of at least two distinct points.
    Lines(Vec<Vec<TilePoint>>),
    /// One or more polygons: each a list of rings, the exterior first (positive area by the
    /// surveyor's formula in tile space, which shows clockwise with `y` down), then interiors
    /// (negative). Rings are not closed: the last point is not the first repeated.
    Polygons(Vec<Vec<Vec<TilePoint>>>),
}

/// The mapping of one tile's EPSG:3857 box onto its tile space, with the clip box.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub(crate) bounds: Bounds,
    /// The tile box plus the buffer, in metres: for the quick reject.
    pub(crate) buffered: Bounds,
    scale: f64,
    lo: f64,
    hi: f64,
    tolerance: f64,
    /// For drawing an image rather than a vector tile: polygons are not rebuilt valid (the
    /// even–odd rule fills what the repair would keep), and lines are thinned by distance
    /// alone (no Douglas–Peucker: the rasterizer costs less than the search).
    drawing: bool,
}

impl Frame {
    pub(crate) fn new(coord: TileCoord, options: &TileOptions) -> Self {
        Self::square(coord.bounds_3857(), options)
    }

    /// The frame of a square box (EPSG:3857) mapped onto `options`' extent.
    pub(crate) fn square(bounds: Bounds, options: &TileOptions) -> Self {
        let extent = f64::from(options.extent);
        let scale = extent / (bounds.max_x - bounds.min_x);
        let buffer = f64::from(options.buffer);
        Self {
            bounds,
            buffered: bounds.expand(buffer / scale),
            scale,
            lo: -buffer,
            hi: extent + buffer,
            tolerance: options.tolerance,
            drawing: false,
        }
    }

    /// This frame for drawing an image by the even–odd rule: polygons left as clipped,
    /// thinned and snapped, unrepaired.
    pub(crate) fn for_drawing(self) -> Self {
        Self {
            drawing: true,
            ..self
        }
    }

    /// `line` simplified: by Douglas–Peucker for a vector tile, by distance for an image.
    fn simplify(&self, line: &[Coord<f64>]) -> Vec<Coord<f64>> {
        if self.drawing && self.tolerance > 0.0 && line.len() >= 3 {
            remove_close(line, self.tolerance)
        } else {
            simplify(line, self.tolerance)
        }
    }

    /// `c` (EPSG:3857) in tile units.
    pub(crate) fn project(&self, c: Coord<f64>) -> Coord<f64> {
        Coord {
            x: (c.x - self.bounds.min_x) * self.scale,
            y: (self.bounds.max_y - c.y) * self.scale,
        }
    }

    fn inside(&self, c: Coord<f64>) -> bool {
        c.x >= self.lo && c.x <= self.hi && c.y >= self.lo && c.y <= self.hi
    }
}

/// What became of a geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// Nothing of it is near the tile.
    Outside,
    /// It reached the tile but nothing of it survived quantization (a sliver, a collapsed ring).
    Degenerate,
    /// A type a feature cannot carry (a geometry collection).
    Unsupported,
}

/// `g` (EPSG:3857 metres) in the tile space of `coord`: clipped, simplified, quantized,
/// cleaned and oriented, ready for [`crate::LayerBuilder::add_tile_geometry`]; `None` when
/// nothing of it remains in the tile.
///
/// ```
/// use geostack_tiles::{TileCoord, TileGeometry, TileOptions, tile_geometry};
///
/// let origin: geo_types::Geometry<f64> = geo_types::Point::new(0.0, 0.0).into();
/// let tile = TileCoord::new_checked(1, 1, 1).unwrap();
/// assert_eq!(
///     tile_geometry(&origin, tile, &TileOptions::default()),
///     Some(TileGeometry::Points(vec![[0, 0]]))
/// );
/// ```
pub fn tile_geometry(
    g: &Geometry<f64>,
    coord: TileCoord,
    options: &TileOptions,
) -> Option<TileGeometry> {
    prepare(g, &Frame::new(coord, options)).ok()
}

/// `g` (EPSG:3857) in the tile of `frame`.
pub(crate) fn prepare(g: &Geometry<f64>, frame: &Frame) -> Result<TileGeometry, Prepared> {
    let Some(bbox) = crate::project::bounds(g) else {
        return Err(Prepared::Degenerate);
    };
    if !bbox.intersects(&frame.buffered) {
        return Err(Prepared::Outside);
    }
    // Entirely inside the buffered tile: no clipping needed.
    let contained = bbox.min_x >= frame.buffered.min_x
        && bbox.max_x <= frame.buffered.max_x
        && bbox.min_y >= frame.buffered.min_y
        && bbox.max_y <= frame.buffered.max_y;
    let out = match g {
        Geometry::Point(p) => points(std::iter::once(p.0), frame),
        Geometry::MultiPoint(mp) => points(mp.0.iter().map(|p| p.0), frame),
        Geometry::Line(l) => lines(
            std::iter::once(&LineString::new(vec![l.start, l.end])),
            frame,
            contained,
        ),
        Geometry::LineString(l) => lines(std::iter::once(l), frame, contained),
        Geometry::MultiLineString(ml) => lines(ml.0.iter(), frame, contained),
        Geometry::Polygon(p) => polygons(std::iter::once(p), frame, contained),
        Geometry::MultiPolygon(mp) => polygons(mp.0.iter(), frame, contained),
        Geometry::Rect(r) => polygons(std::iter::once(&r.to_polygon()), frame, contained),
        Geometry::Triangle(t) => polygons(std::iter::once(&t.to_polygon()), frame, contained),
        Geometry::GeometryCollection(_) => return Err(Prepared::Unsupported),
    };
    out.ok_or(Prepared::Degenerate)
}

fn points(coords: impl Iterator<Item = Coord<f64>>, frame: &Frame) -> Option<TileGeometry> {
    let mut out: Vec<TilePoint> = Vec::new();
    for c in coords {
        let t = frame.project(c);
        if frame.inside(t) {
            let p = quantize(t);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    (!out.is_empty()).then_some(TileGeometry::Points(out))
}

fn lines<'a>(
    ls: impl Iterator<Item = &'a LineString<f64>>,
    frame: &Frame,
    contained: bool,
) -> Option<TileGeometry> {
    let mut out = Vec::new();
    for l in ls {
        let t: Vec<Coord<f64>> = l.0.iter().map(|c| frame.project(*c)).collect();
        let parts = if contained {
            vec![t]
        } else {
            clip_line(&t, frame.lo, frame.hi)
        };
        for part in parts {
            let part = frame.simplify(&part);
            let q = dedupe(part.iter().map(|c| quantize(*c)));
            if q.len() >= 2 {
                out.push(q);
            }
        }
    }
    (!out.is_empty()).then_some(TileGeometry::Lines(out))
}

/// A feature's polygons: every ring clipped, simplified and snapped on its own, then the whole
/// feature rebuilt from its rings' outlines by the even–odd rule on the integer grid, which is
/// what makes the result valid whatever the steps before did (a simplified edge crossing
/// another, a spike, a ring collapsing or folding when snapped, a bowtie in the input): a point
/// is inside when it is inside an odd number of rings, as PostGIS's `ST_MakeValid` decides it.
/// Rings come out without self-intersection or self-tangency, holes touching their exterior at
/// most at a point (OGC simple features), exteriors positive and holes negative.
fn polygons<'a>(
    ps: impl Iterator<Item = &'a Polygon<f64>>,
    frame: &Frame,
    contained: bool,
) -> Option<TileGeometry> {
    if frame.drawing {
        let out: Vec<Vec<Vec<TilePoint>>> = ps
            .filter_map(|p| {
                let exterior = ring(p.exterior(), frame, contained)?;
                Some(
                    std::iter::once(exterior)
                        .chain(
                            p.interiors()
                                .iter()
                                .filter_map(|r| ring(r, frame, contained)),
                        )
                        .collect(),
                )
            })
            .collect();
        return (!out.is_empty()).then_some(TileGeometry::Polygons(out));
    }
    let mut rings: Vec<Vec<IntPoint>> = Vec::new();
    for p in ps {
        rings.extend(
            std::iter::once(p.exterior())
                .chain(p.interiors())
                .filter_map(|r| ring(r, frame, contained))
                .map(|r| r.into_iter().map(|[x, y]| IntPoint::new(x, y)).collect()),
        );
    }
    if rings.is_empty() {
        return None;
    }
    let options = IntOverlayOptions {
        ogc: true,
        ..IntOverlayOptions::default()
    };
    let shapes = rings.simplify(FillRule::EvenOdd, options);
    let out: Vec<Vec<Vec<TilePoint>>> = shapes
        .into_iter()
        .filter_map(|shape| {
            let mut shape: Vec<Vec<TilePoint>> = shape
                .into_iter()
                .map(|c| c.into_iter().map(|p| [p.x, p.y]).collect())
                .collect();
            let exterior = area2(shape.first()?);
            if exterior < 0 {
                shape.iter_mut().for_each(|r| r.reverse());
            }
            (exterior != 0).then_some(shape)
        })
        .collect();
    // Every tile the tests make is checked as `decode` checks it.
    debug_assert_eq!(crate::validity::check(&out), Ok(()), "{out:?}");
    (!out.is_empty()).then_some(TileGeometry::Polygons(out))
}

/// A ring in tile space: clipped, simplified, snapped to the grid, without repeated points or
/// the closing point; `None` when it has no area left. A ring that simplification collapses is
/// snapped again without it, so that a small island still shows as the few units it covers (as
/// `ST_AsMVTGeom`, which snaps without simplifying, keeps it).
fn ring(r: &LineString<f64>, frame: &Frame, contained: bool) -> Option<Vec<TilePoint>> {
    let mut t: Vec<Coord<f64>> = r.0.iter().map(|c| frame.project(*c)).collect();
    if t.len() > 1 && t.first() != t.last() {
        t.push(t[0]);
    }
    if !contained {
        // A first, generous cut keeps the work proportional to the tile, not to the geometry;
        // its margin keeps it out of reach of the final cut on the grid below.
        let margin = 4.0 * frame.tolerance + 2.0;
        t = clip_ring(
            &t[..t.len().saturating_sub(1)],
            frame.lo - margin,
            frame.hi + margin,
        );
        if t.len() < 3 {
            return None;
        }
        t.push(t[0]);
    }
    let simplified = snapped(&frame.simplify(&t), frame, contained);
    match simplified {
        Some(q) if area2(&q) != 0 => Some(q),
        // Collapsed, or a figure eight whose lobes cancel (the repair splits those).
        _ if frame.tolerance > 0.0 => snapped(&t, frame, contained),
        _ => simplified,
    }
}

/// A closed ring snapped to the grid and cut at the buffer; `None` when fewer than 3 points
/// remain. Its signed area may be 0 (a line, or a bowtie): the repair decides what is left.
fn snapped(ring: &[Coord<f64>], frame: &Frame, contained: bool) -> Option<Vec<TilePoint>> {
    let mut q: Vec<Coord<f64>> = dedupe(ring.iter().map(|c| quantize(*c)))
        .into_iter()
        .map(|[x, y]| Coord {
            x: f64::from(x),
            y: f64::from(y),
        })
        .collect();
    if q.len() > 1 && q.first() == q.last() {
        q.pop();
    }
    if !contained {
        q = clip_ring(&q, frame.lo, frame.hi);
    }
    let mut q = dedupe(q.iter().map(|c| quantize(*c)));
    while q.len() > 1 && q.first() == q.last() {
        q.pop();
    }
    (q.len() >= 3).then_some(q)
}

/// Twice the signed area by the surveyor's formula, in tile space (positive: clockwise with
/// `y` down, an MVT exterior ring).
pub(crate) fn area2(ring: &[TilePoint]) -> i64 {
    let n = ring.len();
    (0..n)
        .map(|i| {
            let ([x0, y0], [x1, y1]) = (ring[i], ring[(i + 1) % n]);
            i64::from(x0) * i64::from(y1) - i64::from(x1) * i64::from(y0)
        })
        .sum()
}

fn quantize(c: Coord<f64>) -> TilePoint {
    // Tile-space values are bounded by the clip box (or, when contained, by the buffered tile).
    [c.x.round() as i32, c.y.round() as i32]
}

fn dedupe(points: impl Iterator<Item = TilePoint>) -> Vec<TilePoint> {
    let mut out: Vec<TilePoint> = Vec::new();
    for p in points {
        if out.last() != Some(&p) {
            out.push(p);
        }
    }
    out
}

/// Sutherland–Hodgman against the square `lo..=hi`: a ring stays one ring (a convex clip
/// window cannot split it), possibly with edges along the window.
fn clip_ring(ring: &[Coord<f64>], lo: f64, hi: f64) -> Vec<Coord<f64>> {
    #[derive(Clone, Copy)]
    enum Edge {
        Left,
        Right,
        Top,
        Bottom,
    }
    let inside = |c: Coord<f64>, e: Edge| match e {
        Edge::Left => c.x >= lo,
        Edge::Right => c.x <= hi,
        Edge::Top => c.y >= lo,
        Edge::Bottom => c.y <= hi,
    };
    let cross = |a: Coord<f64>, b: Coord<f64>, e: Edge| {
        let (v, a_v, b_v) = match e {
            Edge::Left => (lo, a.x, b.x),
            Edge::Right => (hi, a.x, b.x),
            Edge::Top => (lo, a.y, b.y),
            Edge::Bottom => (hi, a.y, b.y),
        };
        let t = (v - a_v) / (b_v - a_v);
        match e {
            Edge::Left | Edge::Right => Coord {
                x: v,
                y: a.y + t * (b.y - a.y),
            },
            Edge::Top | Edge::Bottom => Coord {
                x: a.x + t * (b.x - a.x),
                y: v,
            },
        }
    };
    let mut out = ring.to_vec();
    for e in [Edge::Left, Edge::Right, Edge::Top, Edge::Bottom] {
        if out.is_empty() {
            break;
        }
        let input = std::mem::take(&mut out);
        let mut prev = input[input.len() - 1];
        for &cur in &input {
            match (inside(prev, e), inside(cur, e)) {
                (true, true) => out.push(cur),
                (true, false) => out.push(cross(prev, cur, e)),
                (false, true) => {
                    out.push(cross(prev, cur, e));
                    out.push(cur);
                }
                (false, false) => {}
            }
            prev = cur;
        }
    }
    out
}

/// Liang–Barsky for each segment: the parts of a line inside the square `lo..=hi`.
fn clip_line(line: &[Coord<f64>], lo: f64, hi: f64) -> Vec<Vec<Coord<f64>>> {
    let mut parts = Vec::new();
    let mut current: Vec<Coord<f64>> = Vec::new();
    for w in line.windows(2) {
        let (a, b) = (w[0], w[1]);
        match clip_segment(a, b, lo, hi) {
            Some((p, q)) => {
                if current.last() != Some(&p) {
                    if !current.is_empty() {
                        parts.push(std::mem::take(&mut current));
                    }
                    current.push(p);
                }
                current.push(q);
                if q != b {
                    parts.push(std::mem::take(&mut current));
                }
            }
            None => {
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

fn clip_segment(
    a: Coord<f64>,
    b: Coord<f64>,
    lo: f64,
    hi: f64,
) -> Option<(Coord<f64>, Coord<f64>)> {
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let (mut t0, mut t1) = (0.0_f64, 1.0_f64);
    for (p, q) in [
        (-dx, a.x - lo),
        (dx, hi - a.x),
        (-dy, a.y - lo),
        (dy, hi - a.y),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    if t0 > t1 {
        return None;
    }
    let at = |t: f64| {
        if t == 0.0 {
            a
        } else if t == 1.0 {
            b
        } else {
            Coord {
                x: a.x + t * dx,
                y: a.y + t * dy,
            }
        }
    };
    Some((at(t0), at(t1)))
}

/// Points within `tolerance` of the previous kept point go (the last point always stays, and
/// takes the place of a kept point too close to it), then Douglas–Peucker with `tolerance`
/// (0: unchanged), iterative; keeps both ends. The same two steps, in the same order, as
/// PostGIS's `ST_AsMVTGeom`.
fn simplify(line: &[Coord<f64>], tolerance: f64) -> Vec<Coord<f64>> {
    if tolerance <= 0.0 || line.len() < 3 {
        return line.to_vec();
    }
    let line = remove_close(line, tolerance);
    if line.len() < 3 {
        return line;
    }
    let tol2 = tolerance * tolerance;
    let mut keep = vec![false; line.len()];
    keep[0] = true;
    keep[line.len() - 1] = true;
    let mut stack = vec![(0, line.len() - 1)];
    while let Some((first, last)) = stack.pop() {
        let (a, b) = (line[first], line[last]);
        let (mut worst, mut worst_d) = (0, 0.0);
        for (i, &c) in line.iter().enumerate().take(last).skip(first + 1) {
            let d = segment_distance2(c, a, b);
            if d > worst_d {
                worst = i;
                worst_d = d;
            }
        }
        if worst_d > tol2 {
            keep[worst] = true;
            stack.push((first, worst));
            stack.push((worst, last));
        }
    }
    line.iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(*c))
        .collect()
}

fn remove_close(line: &[Coord<f64>], tolerance: f64) -> Vec<Coord<f64>> {
    let tol2 = tolerance * tolerance;
    let d2 = |a: Coord<f64>, b: Coord<f64>| (a.x - b.x).powi(2) + (a.y - b.y).powi(2);
    let mut out = vec![line[0]];
    for &c in &line[1..line.len() - 1] {
        if d2(c, out[out.len() - 1]) > tol2 {
            out.push(c);
        }
    }
    let last = line[line.len() - 1];
    if out.len() > 1 && d2(last, out[out.len() - 1]) <= tol2 {
        out.pop();
    }
    out.push(last);
    out
}

fn segment_distance2(c: Coord<f64>, a: Coord<f64>, b: Coord<f64>) -> f64 {
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((c.x - a.x) * dx + (c.y - a.y) * dy) / len2).clamp(0.0, 1.0)
    };
    let (px, py) = (a.x + t * dx - c.x, a.y + t * dy - c.y);
    px * px + py * py
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(x: f64, y: f64) -> Coord<f64> {
        Coord { x, y }
    }

    #[test]
    fn a_ring_is_clipped_to_the_window() {
        let square = [
            c(-10.0, -10.0),
            c(10.0, -10.0),
            c(10.0, 10.0),
            c(-10.0, 10.0),
        ];
        let clipped = clip_ring(&square, 0.0, 100.0);
        let q: Vec<TilePoint> = clipped.iter().map(|c| quantize(*c)).collect();
        assert_eq!(q.len(), 4);
        for corner in [[0, 0], [10, 0], [10, 10], [0, 10]] {
            assert!(q.contains(&corner), "{q:?}");
        }
        assert!(
            clip_ring(
                &[c(200.0, 200.0), c(300.0, 200.0), c(300.0, 300.0)],
                0.0,
                100.0
            )
            .is_empty()
        );
    }

    #[test]
    fn a_line_crossing_the_window_twice_splits_in_two() {
        // In at x=0, out at x=100, back in at x=100, out at x=0: a U through the window.
        let line = [
            c(-50.0, 10.0),
            c(150.0, 10.0),
            c(150.0, 90.0),
            c(-50.0, 90.0),
        ];
        let parts = clip_line(&line, 0.0, 100.0);
        let q: Vec<Vec<TilePoint>> = parts
            .iter()
            .map(|p| p.iter().map(|c| quantize(*c)).collect())
            .collect();
        assert_eq!(q, vec![vec![[0, 10], [100, 10]], vec![[100, 90], [0, 90]]]);
    }

    #[test]
    fn close_points_go_before_douglas_peucker() {
        let line = [
            c(0.0, 0.0),
            c(0.3, 0.0),
            c(0.5, 0.2),
            c(3.0, 0.0),
            c(3.2, 0.1),
        ];
        assert_eq!(
            remove_close(&line, 0.5),
            vec![c(0.0, 0.0), c(0.5, 0.2), c(3.2, 0.1)]
        );
    }

    #[test]
    fn douglas_peucker_drops_only_what_is_within_tolerance() {
        let line = [c(0.0, 0.0), c(5.0, 0.3), c(10.0, 0.0), c(15.0, 5.0)];
        assert_eq!(
            simplify(&line, 0.5),
            vec![c(0.0, 0.0), c(10.0, 0.0), c(15.0, 5.0)]
        );
        assert_eq!(simplify(&line, 0.0), line.to_vec());
        assert_eq!(simplify(&line, 0.2).len(), 4);
    }

    #[test]
    fn rings_are_oriented_exterior_positive() {
        assert!(area2(&[[0, 0], [10, 0], [10, 10]]) > 0);
        assert!(area2(&[[0, 0], [10, 10], [10, 0]]) < 0);
    }
}
