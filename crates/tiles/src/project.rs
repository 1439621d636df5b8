//! Coordinates of geo-types geometries: projecting EPSG:4326 to EPSG:3857 in place, visiting.

use geo_types::{Coord, Geometry, LineString, Polygon};

use crate::to_web_mercator;

/// EPSG:4326 degrees → EPSG:3857 metres, in place (rectangles and triangles become polygons).
pub(crate) fn project_4326(g: &mut Geometry<f64>) {
    fn c(c: &mut Coord<f64>) {
        let (x, y) = to_web_mercator(c.x, c.y);
        *c = Coord { x, y };
    }
    fn line(l: &mut LineString<f64>) {
        l.0.iter_mut().for_each(c);
    }
    fn poly(p: &mut Polygon<f64>) {
        p.exterior_mut(line);
        p.interiors_mut(|rs| rs.iter_mut().for_each(line));
    }
    match g {
        Geometry::Point(p) => c(&mut p.0),
        Geometry::MultiPoint(mp) => mp.0.iter_mut().for_each(|p| c(&mut p.0)),
        Geometry::Line(l) => {
            c(&mut l.start);
            c(&mut l.end);
        }
        Geometry::LineString(l) => line(l),
        Geometry::MultiLineString(ml) => ml.0.iter_mut().for_each(line),
        Geometry::Polygon(p) => poly(p),
        Geometry::MultiPolygon(mp) => mp.0.iter_mut().for_each(poly),
        Geometry::Rect(r) => {
            let mut p = r.to_polygon();
            poly(&mut p);
            *g = Geometry::Polygon(p);
        }
        Geometry::Triangle(t) => {
            let mut p = t.to_polygon();
            poly(&mut p);
            *g = Geometry::Polygon(p);
        }
        Geometry::GeometryCollection(gc) => gc.0.iter_mut().for_each(project_4326),
    }
}

/// The bounding box of every coordinate of `g` (exterior rings for polygons), or `None` for a
/// geometry without coordinates.
pub(crate) fn bounds(g: &Geometry<f64>) -> Option<crate::Bounds> {
    let mut b: Option<crate::Bounds> = None;
    for_each_coord(g, &mut |c: Coord<f64>| {
        let e = b.get_or_insert(crate::Bounds {
            min_x: c.x,
            min_y: c.y,
            max_x: c.x,
            max_y: c.y,
        });
        e.min_x = e.min_x.min(c.x);
        e.min_y = e.min_y.min(c.y);
        e.max_x = e.max_x.max(c.x);
        e.max_y = e.max_y.max(c.y);
    });
    b
}

/// Calls `f` with every coordinate of `g`.
pub(crate) fn for_each_coord(g: &Geometry<f64>, f: &mut dyn FnMut(Coord<f64>)) {
    let line = |l: &LineString<f64>, f: &mut dyn FnMut(Coord<f64>)| l.0.iter().for_each(|c| f(*c));
    match g {
        Geometry::Point(p) => f(p.0),
        Geometry::MultiPoint(mp) => mp.0.iter().for_each(|p| f(p.0)),
        Geometry::Line(l) => {
            f(l.start);
            f(l.end);
        }
        Geometry::LineString(l) => line(l, f),
        Geometry::MultiLineString(ml) => ml.0.iter().for_each(|l| line(l, f)),
        Geometry::Polygon(p) => line(p.exterior(), f),
        Geometry::MultiPolygon(mp) => mp.0.iter().for_each(|p| line(p.exterior(), f)),
        Geometry::Rect(r) => line(r.to_polygon().exterior(), f),
        Geometry::Triangle(t) => line(t.to_polygon().exterior(), f),
        Geometry::GeometryCollection(gc) => gc.0.iter().for_each(|g| for_each_coord(g, f)),
    }
}
