//! `svg`: each row's geometry (`the_geom`, else the first geometry column) as an SVG shape —
//! lines and polygons as paths, points as circles —, y flipped (SVG's y grows downwards). The
//! shapes stream into a group; the view box, known only at the end, is set by a last element
//! that shows the group.

use geo_types::{Coord, Geometry, Polygon};

use super::{Column, Encoder, Summary, geometry_column, push_xml_text, row_geometry};
use crate::geom;
use crate::value::Value;

/// An SVG document; a stream that ends early gets a `desc` with the error.
pub(crate) struct Svg {
    dp: u8,
    geometry: Option<usize>,
    /// min x, min y, max x, max y of what was drawn (y as stored).
    extent: Option<[f64; 4]>,
}

impl Svg {
    pub(crate) fn new(dp: u8) -> Self {
        Self {
            dp,
            geometry: None,
            extent: None,
        }
    }

    fn grow(&mut self, c: Coord<f64>) {
        if !(c.x.is_finite() && c.y.is_finite()) {
            return;
        }
        let e = self.extent.get_or_insert([c.x, c.y, c.x, c.y]);
        e[0] = e[0].min(c.x);
        e[1] = e[1].min(c.y);
        e[2] = e[2].max(c.x);
        e[3] = e[3].max(c.y);
    }

    fn shape(&mut self, out: &mut Vec<u8>, g: &Geometry<f64>) {
        let dp = self.dp;
        match g {
            Geometry::Point(p) => {
                self.grow(p.0);
                out.extend_from_slice(b"<circle cx=\"");
                geom::push_rounded(out, p.x(), dp);
                out.extend_from_slice(b"\" cy=\"");
                geom::push_rounded(out, -p.y(), dp);
                out.extend_from_slice(b"\" r=\"1\"/>");
            }
            Geometry::Line(l) => self.path(out, &[&[l.start, l.end]], false),
            Geometry::LineString(l) => self.path(out, &[&l.0], false),
            Geometry::Polygon(p) => self.polygon(out, p),
            Geometry::Rect(r) => self.polygon(out, &r.to_polygon()),
            Geometry::Triangle(t) => self.polygon(out, &t.to_polygon()),
            Geometry::MultiPoint(mp) => {
                for p in &mp.0 {
                    self.shape(out, &Geometry::Point(*p));
                }
            }
            Geometry::MultiLineString(ml) => {
                let lines: Vec<&[Coord<f64>]> = ml.0.iter().map(|l| l.0.as_slice()).collect();
                self.path(out, &lines, false);
            }
            Geometry::MultiPolygon(mp) => {
                let rings: Vec<&[Coord<f64>]> =
                    mp.0.iter()
                        .flat_map(|p| std::iter::once(p.exterior()).chain(p.interiors()))
                        .map(|r| r.0.as_slice())
                        .collect();
                self.path(out, &rings, true);
            }
            Geometry::GeometryCollection(gc) => {
                for g in &gc.0 {
                    self.shape(out, g);
                }
            }
        }
    }

    fn polygon(&mut self, out: &mut Vec<u8>, p: &Polygon<f64>) {
        let rings: Vec<&[Coord<f64>]> = std::iter::once(p.exterior())
            .chain(p.interiors())
            .map(|r| r.0.as_slice())
            .collect();
        self.path(out, &rings, true);
    }

    /// One path of several parts; `closed` parts end with `Z` and are filled (even-odd).
    fn path(&mut self, out: &mut Vec<u8>, parts: &[&[Coord<f64>]], closed: bool) {
        out.extend_from_slice(b"<path d=\"");
        for part in parts {
            for (i, c) in part.iter().enumerate() {
                self.grow(*c);
                out.extend_from_slice(if i == 0 { b"M " } else { b" L " });
                geom::push_rounded(out, c.x, self.dp);
                out.push(b' ');
                geom::push_rounded(out, -c.y, self.dp);
            }
            if closed && !part.is_empty() {
                out.extend_from_slice(b" Z ");
            }
        }
        if closed {
            out.extend_from_slice(b"\" fill-rule=\"evenodd\"/>");
        } else {
            out.extend_from_slice(b"\" fill=\"none\"/>");
        }
    }
}

impl Encoder for Svg {
    fn begin(&mut self, out: &mut Vec<u8>, columns: &[Column]) {
        self.geometry = geometry_column(columns);
        out.extend_from_slice(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
              <svg xmlns=\"http://www.w3.org/2000/svg\" xmlns:xlink=\"http://www.w3.org/1999/xlink\" version=\"1.1\">\
              <defs><g id=\"cartodb_query\" stroke=\"#000\" stroke-width=\"1\" fill=\"#888\" vector-effect=\"non-scaling-stroke\">\n",
        );
    }

    fn row(&mut self, out: &mut Vec<u8>, _columns: &[Column], values: &[Value<'_>], _first: bool) {
        if let Some(g) = row_geometry(values, self.geometry) {
            self.shape(out, &g);
            out.push(b'\n');
        }
    }

    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        _columns: &[Column],
        _summary: &Summary<'_>,
        error: Option<&str>,
    ) {
        out.extend_from_slice(b"</g></defs>");
        if let Some(error) = error {
            out.extend_from_slice(b"<desc>error: ");
            push_xml_text(out, error.as_bytes());
            out.extend_from_slice(b"</desc>");
        }
        let [x0, y0, x1, y1] = self.extent.unwrap_or([0.0, 0.0, 1.0, 1.0]);
        out.extend_from_slice(b"<svg viewBox=\"");
        for (i, v) in [x0, -y1, (x1 - x0).max(1e-9), (y1 - y0).max(1e-9)]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                out.push(b' ');
            }
            geom::push_rounded(out, v, self.dp.max(6));
        }
        out.extend_from_slice(
            b"\" width=\"100%\" height=\"100%\" preserveAspectRatio=\"xMidYMid meet\">\
              <use xlink:href=\"#cartodb_query\"/></svg></svg>\n",
        );
    }
}
