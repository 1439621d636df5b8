//! Geometry values: EWKB from PostGIS → geo-types (through `wkb`) → GeoJSON or WKT text.

use geo_traits::to_geo::ToGeoGeometry;
use geo_types::{Coord, Geometry, LineString, Polygon};

use crate::write::push_number;

/// What an EWKB header says: the geometry type, whether it has Z and M, and its SRID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: u32,
    pub(crate) z: bool,
    pub(crate) m: bool,
    pub(crate) srid: i32,
}

impl Header {
    /// Reads the header of an (E)WKB value; `None` when it is too short.
    pub(crate) fn read(ewkb: &[u8]) -> Option<Self> {
        let (&order, rest) = ewkb.split_first()?;
        let word = |b: &[u8]| -> Option<u32> {
            let b: [u8; 4] = b.get(..4)?.try_into().ok()?;
            Some(if order == 1 {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            })
        };
        let raw = word(rest)?;
        let srid = if raw & 0x2000_0000 != 0 {
            word(&rest[4..])? as i32
        } else {
            0
        };
        // ISO WKB says Z and M by adding 1000/2000/3000 to the type; EWKB by flag bits.
        let iso = raw & 0x0fff_ffff;
        Some(Self {
            kind: iso % 1000,
            z: raw & 0x8000_0000 != 0 || matches!(iso / 1000, 1 | 3),
            m: raw & 0x4000_0000 != 0 || matches!(iso / 1000, 2 | 3),
            srid,
        })
    }

    /// The coordinate dimension: 2, 3 or 4.
    pub(crate) fn dims(&self) -> u8 {
        2 + u8::from(self.z) + u8::from(self.m)
    }

    /// The type's name as CARTO reports it in `fields` (`ST_Point` style without the prefix).
    pub(crate) fn type_name(&self) -> &'static str {
        match self.kind {
            1 => "Point",
            2 => "LineString",
            3 => "Polygon",
            4 => "MultiPoint",
            5 => "MultiLineString",
            6 => "MultiPolygon",
            7 => "GeometryCollection",
            _ => "Unknown",
        }
    }
}

/// Decodes EWKB into geo-types (2D: Z and M are dropped). `None` for EMPTY geometries; an
/// error for bytes that are not WKB.
pub(crate) fn decode(ewkb: &[u8]) -> Result<Option<Geometry<f64>>, String> {
    let wkb = wkb::reader::read_wkb(ewkb).map_err(|e| e.to_string())?;
    Ok(wkb.try_to_geometry())
}

/// Appends `g` as a GeoJSON geometry object, coordinates rounded to `dp` decimals.
pub(crate) fn push_geojson(out: &mut Vec<u8>, g: &Geometry<f64>, dp: u8) {
    match g {
        Geometry::Point(p) => typed(out, "Point", |o| push_coord(o, p.0, dp)),
        Geometry::Line(l) => typed(out, "LineString", |o| push_coords(o, &[l.start, l.end], dp)),
        Geometry::LineString(l) => typed(out, "LineString", |o| push_coords(o, &l.0, dp)),
        Geometry::Polygon(p) => typed(out, "Polygon", |o| push_polygon(o, p, dp)),
        Geometry::MultiPoint(mp) => typed(out, "MultiPoint", |o| {
            push_list(o, &mp.0, |o, p| push_coord(o, p.0, dp));
        }),
        Geometry::MultiLineString(ml) => typed(out, "MultiLineString", |o| {
            push_list(o, &ml.0, |o, l| push_coords(o, &l.0, dp));
        }),
        Geometry::MultiPolygon(mp) => typed(out, "MultiPolygon", |o| {
            push_list(o, &mp.0, |o, p| push_polygon(o, p, dp));
        }),
        Geometry::Rect(r) => push_geojson(out, &Geometry::Polygon(r.to_polygon()), dp),
        Geometry::Triangle(t) => push_geojson(out, &Geometry::Polygon(t.to_polygon()), dp),
        Geometry::GeometryCollection(gc) => {
            out.extend_from_slice(b"{\"type\":\"GeometryCollection\",\"geometries\":");
            push_list(out, &gc.0, |o, g| push_geojson(o, g, dp));
            out.push(b'}');
        }
    }
}

/// `{"type":"<name>","coordinates":<body>}`.
fn typed(out: &mut Vec<u8>, name: &str, body: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",\"coordinates\":");
    body(out);
    out.push(b'}');
}

fn push_list<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.push(b']');
}

fn push_coord(out: &mut Vec<u8>, c: Coord<f64>, dp: u8) {
    out.push(b'[');
    push_rounded(out, c.x, dp);
    out.push(b',');
    push_rounded(out, c.y, dp);
    out.push(b']');
}

fn push_coords(out: &mut Vec<u8>, cs: &[Coord<f64>], dp: u8) {
    push_list(out, cs, |o, c| push_coord(o, *c, dp));
}

fn push_polygon(out: &mut Vec<u8>, p: &Polygon<f64>, dp: u8) {
    out.push(b'[');
    push_coords(out, &p.exterior().0, dp);
    for ring in p.interiors() {
        out.push(b',');
        push_coords(out, &ring.0, dp);
    }
    out.push(b']');
}

/// `v` with at most `dp` decimals, trailing zeros trimmed (as `ST_AsGeoJSON` writes it).
pub(crate) fn push_rounded(out: &mut Vec<u8>, v: f64, dp: u8) {
    if !v.is_finite() {
        // Not representable in GeoJSON; PostGIS refuses such coordinates too.
        out.extend_from_slice(b"null");
        return;
    }
    // Fast path: the shortest text of `v` already has no more than `dp` decimals (most stored
    // coordinates), so no rounding is needed.
    let mut buf = zmij::Buffer::new();
    let short = buf.format_finite(v);
    if !short.contains('e') {
        let decimals = short.split_once('.').map_or(0, |(_, f)| f.len());
        if decimals <= usize::from(dp) {
            let trimmed = short.strip_suffix(".0").unwrap_or(short);
            push_number(out, if trimmed == "-0" { "0" } else { trimmed });
            return;
        }
    }
    let s = format!("{:.*}", usize::from(dp), v);
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    let s = if s == "-0" { "0" } else { s };
    push_number(out, s);
}

/// Appends `g` as WKT, coordinates rounded to `dp` decimals.
pub(crate) fn push_wkt(out: &mut Vec<u8>, g: &Geometry<f64>, dp: u8) {
    fn coords(out: &mut Vec<u8>, cs: &[Coord<f64>], dp: u8) {
        out.push(b'(');
        for (i, c) in cs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_rounded(out, c.x, dp);
            out.push(b' ');
            push_rounded(out, c.y, dp);
        }
        out.push(b')');
    }
    fn rings(out: &mut Vec<u8>, p: &Polygon<f64>, dp: u8) {
        if p.exterior().0.is_empty() {
            out.extend_from_slice(b"EMPTY");
            return;
        }
        out.push(b'(');
        coords(out, &p.exterior().0, dp);
        for r in p.interiors() {
            out.push(b',');
            coords(out, &r.0, dp);
        }
        out.push(b')');
    }
    fn many<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
        if items.is_empty() {
            out.extend_from_slice(b"EMPTY");
            return;
        }
        out.push(b'(');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(out, item);
        }
        out.push(b')');
    }
    let line = |out: &mut Vec<u8>, l: &LineString<f64>| {
        if l.0.is_empty() {
            out.extend_from_slice(b"EMPTY");
        } else {
            coords(out, &l.0, dp);
        }
    };
    match g {
        Geometry::Point(p) => {
            out.extend_from_slice(b"POINT");
            coords(out, &[p.0], dp);
        }
        Geometry::Line(l) => {
            out.extend_from_slice(b"LINESTRING");
            coords(out, &[l.start, l.end], dp);
        }
        Geometry::LineString(l) => {
            out.extend_from_slice(b"LINESTRING");
            line(out, l);
        }
        Geometry::Polygon(p) => {
            out.extend_from_slice(b"POLYGON");
            rings(out, p, dp);
        }
        Geometry::MultiPoint(mp) => {
            out.extend_from_slice(b"MULTIPOINT");
            many(out, &mp.0, |o, p| coords(o, &[p.0], dp));
        }
        Geometry::MultiLineString(ml) => {
            out.extend_from_slice(b"MULTILINESTRING");
            many(out, &ml.0, |o, l| line(o, l));
        }
        Geometry::MultiPolygon(mp) => {
            out.extend_from_slice(b"MULTIPOLYGON");
            many(out, &mp.0, |o, p| rings(o, p, dp));
        }
        Geometry::GeometryCollection(gc) => {
            out.extend_from_slice(b"GEOMETRYCOLLECTION");
            many(out, &gc.0, |o, g| push_wkt(o, g, dp));
        }
        Geometry::Rect(r) => push_wkt(out, &Geometry::Polygon(r.to_polygon()), dp),
        Geometry::Triangle(t) => push_wkt(out, &Geometry::Polygon(t.to_polygon()), dp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ewkb_headers_give_type_dims_and_srid() {
        // SRID=4326;POINT(1 2), little endian.
        let mut ewkb = vec![1u8];
        ewkb.extend(0x2000_0001u32.to_le_bytes());
        ewkb.extend(4326u32.to_le_bytes());
        ewkb.extend(1f64.to_le_bytes());
        ewkb.extend(2f64.to_le_bytes());
        let h = Header::read(&ewkb).unwrap();
        assert_eq!((h.type_name(), h.dims(), h.srid), ("Point", 2, 4326));
        let g = decode(&ewkb).unwrap().unwrap();
        assert_eq!(
            text(|o| push_geojson(o, &g, 6)),
            r#"{"type":"Point","coordinates":[1,2]}"#
        );
        assert_eq!(text(|o| push_wkt(o, &g, 6)), "POINT(1 2)");
        assert_eq!(
            text(|o| crate::write::push_upper_hex(o, &ewkb[..5])),
            "0101000020"
        );
        assert!(Header::read(&[1, 2]).is_none());
    }

    #[test]
    fn rounding_matches_fixed_decimals_on_both_paths() {
        let cases = [
            (1.0, 6, "1"),
            (-0.0, 6, "0"),
            (0.1, 6, "0.1"),
            (8.541694, 6, "8.541694"),
            (8.5416945, 6, "8.541695"),
            (123456789.0, 2, "123456789"),
            (1e-7, 6, "0"),
            (-1e-7, 6, "0"),
            (1e22, 6, "10000000000000000000000"),
            (2.5, 0, "2"),
            (-179.99999999, 4, "-180"),
        ];
        for (v, dp, want) in cases {
            let mut out = Vec::new();
            push_rounded(&mut out, v, dp);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{v} at {dp}");
        }
    }

    #[test]
    fn coordinates_are_rounded_and_trimmed() {
        let ring = LineString::from(vec![(0.123_456_789, -0.000_000_1), (1.5, 0.0), (1.0, 2.0)]);
        let g = Geometry::Polygon(Polygon::new(ring, vec![]));
        assert_eq!(
            text(|o| push_geojson(o, &g, 3)),
            r#"{"type":"Polygon","coordinates":[[[0.123,0],[1.5,0],[1,2],[0.123,0]]]}"#
        );
        assert_eq!(
            text(|o| push_wkt(o, &g, 1)),
            "POLYGON((0.1 0,1.5 0,1 2,0.1 0))"
        );
    }
}
