//! `topojson`: a Topology whose object `cartodb_query` is a GeometryCollection, one geometry a
//! row (`the_geom`, else the first geometry column) with the other columns as its properties.
//! Every line and ring is an arc of its own (no arcs shared between features), in the
//! coordinates as stored, without quantization. The geometries stream; the arcs are kept until
//! the end, where the Topology lists them, up to a bound beyond which the document ends early.

use geo_types::{Coord, Geometry, Polygon};

use super::{
    Column, Encoder, Summary, geometry_column, push_error_member, push_json_value, row_geometry,
};
use crate::geom;
use crate::value::Value;
use crate::write::push_str;

/// The most bytes of arcs kept for the end of the document.
const MAX_ARCS: usize = 64 << 20;

pub(crate) struct TopoJson {
    dp: u8,
    geometry: Option<usize>,
    /// The arcs written so far, comma-separated.
    arcs: Vec<u8>,
    count: usize,
    /// Set once the arcs outgrew [`MAX_ARCS`]: later rows have no geometry.
    full: bool,
}

impl TopoJson {
    pub(crate) fn new(dp: u8) -> Self {
        Self {
            dp,
            geometry: None,
            arcs: Vec::new(),
            count: 0,
            full: false,
        }
    }

    /// Adds an arc and writes its index.
    fn arc(&mut self, out: &mut Vec<u8>, cs: &[Coord<f64>]) {
        if self.count > 0 {
            self.arcs.push(b',');
        }
        self.arcs.push(b'[');
        for (i, c) in cs.iter().enumerate() {
            if i > 0 {
                self.arcs.push(b',');
            }
            self.arcs.push(b'[');
            geom::push_rounded(&mut self.arcs, c.x, self.dp);
            self.arcs.push(b',');
            geom::push_rounded(&mut self.arcs, c.y, self.dp);
            self.arcs.push(b']');
        }
        self.arcs.push(b']');
        crate::write::push_int(out, i64::try_from(self.count).unwrap_or(i64::MAX));
        self.count += 1;
    }

    fn rings(&mut self, out: &mut Vec<u8>, p: &Polygon<f64>) {
        out.push(b'[');
        for (i, ring) in std::iter::once(p.exterior())
            .chain(p.interiors())
            .enumerate()
        {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            self.arc(out, &ring.0);
            out.push(b']');
        }
        out.push(b']');
    }

    /// The geometry object's members but `properties`: `"type":…,"arcs"|"coordinates":…`.
    fn members(&mut self, out: &mut Vec<u8>, g: &Geometry<f64>) {
        let dp = self.dp;
        let point = |out: &mut Vec<u8>, c: Coord<f64>| {
            out.push(b'[');
            geom::push_rounded(out, c.x, dp);
            out.push(b',');
            geom::push_rounded(out, c.y, dp);
            out.push(b']');
        };
        match g {
            Geometry::Point(p) => {
                out.extend_from_slice(b"\"type\":\"Point\",\"coordinates\":");
                point(out, p.0);
            }
            Geometry::MultiPoint(mp) => {
                out.extend_from_slice(b"\"type\":\"MultiPoint\",\"coordinates\":[");
                for (i, p) in mp.0.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    point(out, p.0);
                }
                out.push(b']');
            }
            Geometry::Line(l) => {
                out.extend_from_slice(b"\"type\":\"LineString\",\"arcs\":[");
                self.arc(out, &[l.start, l.end]);
                out.push(b']');
            }
            Geometry::LineString(l) => {
                out.extend_from_slice(b"\"type\":\"LineString\",\"arcs\":[");
                self.arc(out, &l.0);
                out.push(b']');
            }
            Geometry::MultiLineString(ml) => {
                out.extend_from_slice(b"\"type\":\"MultiLineString\",\"arcs\":[");
                for (i, l) in ml.0.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    self.arc(out, &l.0);
                    out.push(b']');
                }
                out.push(b']');
            }
            Geometry::Polygon(p) => {
                out.extend_from_slice(b"\"type\":\"Polygon\",\"arcs\":");
                self.rings(out, p);
            }
            Geometry::Rect(r) => self.members(out, &Geometry::Polygon(r.to_polygon())),
            Geometry::Triangle(t) => self.members(out, &Geometry::Polygon(t.to_polygon())),
            Geometry::MultiPolygon(mp) => {
                out.extend_from_slice(b"\"type\":\"MultiPolygon\",\"arcs\":[");
                for (i, p) in mp.0.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.rings(out, p);
                }
                out.push(b']');
            }
            Geometry::GeometryCollection(gc) => {
                out.extend_from_slice(b"\"type\":\"GeometryCollection\",\"geometries\":[");
                for (i, g) in gc.0.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'{');
                    self.members(out, g);
                    out.push(b'}');
                }
                out.push(b']');
            }
        }
    }
}

impl Encoder for TopoJson {
    fn begin(&mut self, out: &mut Vec<u8>, columns: &[Column]) {
        self.geometry = geometry_column(columns);
        out.extend_from_slice(
            b"{\"type\":\"Topology\",\"objects\":{\"cartodb_query\":{\"type\":\"GeometryCollection\",\"geometries\":[",
        );
    }

    fn row(&mut self, out: &mut Vec<u8>, columns: &[Column], values: &[Value<'_>], first: bool) {
        if !first {
            out.push(b',');
        }
        out.push(b'{');
        let decoded = if self.full {
            None
        } else {
            row_geometry(values, self.geometry)
        };
        match decoded {
            Some(g) => self.members(out, &g),
            None => out.extend_from_slice(b"\"type\":null"),
        }
        self.full = self.arcs.len() > MAX_ARCS;
        out.extend_from_slice(b",\"properties\":{");
        let mut first = true;
        for (i, (c, v)) in columns.iter().zip(values).enumerate() {
            if c.skip || Some(i) == self.geometry {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            push_str(out, &c.name);
            out.push(b':');
            push_json_value(out, v);
        }
        out.extend_from_slice(b"}}");
    }

    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        _columns: &[Column],
        _summary: &Summary<'_>,
        error: Option<&str>,
    ) {
        out.extend_from_slice(b"]}},\"arcs\":[");
        out.append(&mut self.arcs);
        out.push(b']');
        let full = self.full.then_some(
            "the topology's arcs are larger than 64 MiB: later rows have no geometry; ask for geojson",
        );
        if let Some(error) = error.or(full) {
            out.push(b',');
            push_error_member(out, error);
        }
        out.push(b'}');
    }
}
