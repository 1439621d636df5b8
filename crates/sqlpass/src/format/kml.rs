//! `kml`: a KML 2.2 document, one `Placemark` a row — its geometry (`the_geom`, else the first
//! geometry column) in KML's own elements, the other columns as `ExtendedData`. Coordinates are
//! written as they are stored: KML readers expect EPSG:4326.

use geo_types::{Coord, Geometry, Polygon};

use super::{
    Column, Encoder, Summary, geometry_column, push_text_value, push_xml_text, row_geometry,
};
use crate::geom;
use crate::value::Value;

/// A KML document; a stream that ends early gets a last `Folder` named `error`.
pub(crate) struct Kml {
    dp: u8,
    geometry: Option<usize>,
    scratch: Vec<u8>,
}

impl Kml {
    pub(crate) fn new(dp: u8) -> Self {
        Self {
            dp,
            geometry: None,
            scratch: Vec::new(),
        }
    }
}

impl Encoder for Kml {
    fn begin(&mut self, out: &mut Vec<u8>, columns: &[Column]) {
        self.geometry = geometry_column(columns);
        out.extend_from_slice(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
              <kml xmlns=\"http://www.opengis.net/kml/2.2\"><Document><Folder><name>cartodb_query</name>\n",
        );
    }

    fn row(&mut self, out: &mut Vec<u8>, columns: &[Column], values: &[Value<'_>], _first: bool) {
        out.extend_from_slice(b"<Placemark><ExtendedData>");
        for (i, (c, v)) in columns.iter().zip(values).enumerate() {
            if c.skip || Some(i) == self.geometry || matches!(v, Value::Null) {
                continue;
            }
            out.extend_from_slice(b"<Data name=\"");
            push_xml_text(out, c.name.as_bytes());
            out.extend_from_slice(b"\"><value>");
            self.scratch.clear();
            push_text_value(&mut self.scratch, v, self.dp);
            push_xml_text(out, &self.scratch);
            out.extend_from_slice(b"</value></Data>");
        }
        out.extend_from_slice(b"</ExtendedData>");
        if let Some(g) = row_geometry(values, self.geometry) {
            push_kml(out, &g, self.dp);
        }
        out.extend_from_slice(b"</Placemark>\n");
    }

    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        _columns: &[Column],
        _summary: &Summary<'_>,
        error: Option<&str>,
    ) {
        out.extend_from_slice(b"</Folder>");
        if let Some(error) = error {
            out.extend_from_slice(b"<Folder><name>error</name><description>");
            push_xml_text(out, error.as_bytes());
            out.extend_from_slice(b"</description></Folder>");
        }
        out.extend_from_slice(b"</Document></kml>\n");
    }
}

/// A geometry as KML.
fn push_kml(out: &mut Vec<u8>, g: &Geometry<f64>, dp: u8) {
    match g {
        Geometry::Point(p) => element(out, "Point", |o| coordinates(o, &[p.0], dp)),
        Geometry::Line(l) => element(out, "LineString", |o| coordinates(o, &[l.start, l.end], dp)),
        Geometry::LineString(l) => element(out, "LineString", |o| coordinates(o, &l.0, dp)),
        Geometry::Polygon(p) => polygon(out, p, dp),
        Geometry::Rect(r) => polygon(out, &r.to_polygon(), dp),
        Geometry::Triangle(t) => polygon(out, &t.to_polygon(), dp),
        Geometry::MultiPoint(mp) => element(out, "MultiGeometry", |o| {
            for p in &mp.0 {
                push_kml(o, &Geometry::Point(*p), dp);
            }
        }),
        Geometry::MultiLineString(ml) => element(out, "MultiGeometry", |o| {
            for l in &ml.0 {
                element(o, "LineString", |o| coordinates(o, &l.0, dp));
            }
        }),
        Geometry::MultiPolygon(mp) => element(out, "MultiGeometry", |o| {
            for p in &mp.0 {
                polygon(o, p, dp);
            }
        }),
        Geometry::GeometryCollection(gc) => element(out, "MultiGeometry", |o| {
            for g in &gc.0 {
                push_kml(o, g, dp);
            }
        }),
    }
}

fn element(out: &mut Vec<u8>, name: &str, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    body(out);
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

fn polygon(out: &mut Vec<u8>, p: &Polygon<f64>, dp: u8) {
    element(out, "Polygon", |o| {
        element(o, "outerBoundaryIs", |o| ring(o, &p.exterior().0, dp));
        for inner in p.interiors() {
            element(o, "innerBoundaryIs", |o| ring(o, &inner.0, dp));
        }
    });
}

fn ring(out: &mut Vec<u8>, cs: &[Coord<f64>], dp: u8) {
    element(out, "LinearRing", |o| coordinates(o, cs, dp));
}

/// `<coordinates>x,y x,y …</coordinates>`.
fn coordinates(out: &mut Vec<u8>, cs: &[Coord<f64>], dp: u8) {
    element(out, "coordinates", |o| {
        for (i, c) in cs.iter().enumerate() {
            if i > 0 {
                o.push(b' ');
            }
            geom::push_rounded(o, c.x, dp);
            o.push(b',');
            geom::push_rounded(o, c.y, dp);
        }
    });
}
