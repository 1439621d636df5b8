//! Output formats: each writes a header, one row at a time, and an end that may carry an error.

mod csv;
mod geojson;
mod json;
mod kml;
mod svg;
mod topojson;

use std::time::Duration;

use crate::geom::Header;
use crate::value::{Kind, Value};
use crate::{CsvGeometry, Format};

/// A result column as the encoders see it.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// PostgreSQL's name for the type (`int4`, `geometry`, `_text`).
    pub(crate) pgtype: String,
    /// How values are decoded; `None` for columns the query casts to text.
    pub(crate) kind: Option<Kind>,
    /// Left out of the output (`skipfields`).
    pub(crate) skip: bool,
}

impl Column {
    pub(crate) fn is_geometry(&self) -> bool {
        matches!(self.kind, Some(Kind::Geometry | Kind::Geography))
    }
}

/// What the end of a document reports.
pub(crate) struct Summary<'a> {
    pub(crate) elapsed: Duration,
    pub(crate) rows: u64,
    /// Per column, the first geometry header seen (for `fields`).
    pub(crate) geometry: &'a [Option<Header>],
}

/// An encoder of one format.
pub(crate) trait Encoder: Send {
    /// Everything before the first row.
    fn begin(&mut self, out: &mut Vec<u8>, columns: &[Column]);
    /// One row; `first` is true for the first.
    fn row(&mut self, out: &mut Vec<u8>, columns: &[Column], values: &[Value<'_>], first: bool);
    /// Everything after the last row, with the error that ended the stream early, if any.
    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        columns: &[Column],
        summary: &Summary<'_>,
        error: Option<&str>,
    );
}

/// The encoder for `format`.
pub(crate) fn encoder(format: Format, dp: u8, csv_geometry: CsvGeometry) -> Box<dyn Encoder> {
    match format {
        Format::Json => Box::<json::Envelope>::default(),
        Format::Ndjson => Box::<json::Lines>::default(),
        Format::GeoJson => Box::new(geojson::Collection::new(dp)),
        Format::GeoJsonSeq => Box::new(geojson::Sequence::new(dp)),
        Format::Csv => Box::new(csv::Csv::new(dp, csv_geometry)),
        Format::TopoJson => Box::new(topojson::TopoJson::new(dp)),
        Format::Kml => Box::new(kml::Kml::new(dp)),
        Format::Svg => Box::new(svg::Svg::new(dp)),
    }
}

/// The column that becomes each feature's geometry: `the_geom` when it is one (CARTO's name),
/// else the first geometry column.
pub(crate) fn geometry_column(columns: &[Column]) -> Option<usize> {
    columns
        .iter()
        .position(|c| c.is_geometry() && c.name == "the_geom")
        .or_else(|| columns.iter().position(Column::is_geometry))
}

/// The geometry in column `column` of a row, decoded: `None` without such a column, for NULL,
/// for EMPTY and for bytes that are not WKB.
pub(crate) fn row_geometry(
    values: &[Value<'_>],
    column: Option<usize>,
) -> Option<geo_types::Geometry<f64>> {
    match column.and_then(|i| values.get(i)) {
        Some(Value::Geometry(ewkb)) => crate::geom::decode(ewkb).ok().flatten(),
        _ => None,
    }
}

/// A value as plain text: text as it is, geometry as WKT, the rest as JSON text.
pub(crate) fn push_text_value(out: &mut Vec<u8>, v: &Value<'_>, dp: u8) {
    match v {
        Value::Text(s) => out.extend_from_slice(s.as_bytes()),
        Value::Json(j) => out.extend_from_slice(j.as_bytes()),
        Value::Geometry(ewkb) => {
            if let Ok(Some(g)) = crate::geom::decode(ewkb) {
                crate::geom::push_wkt(out, &g, dp);
            }
        }
        other => push_json_value(out, other),
    }
}

/// UTF-8 text as XML character data or an attribute value: markup characters escaped, and the
/// control characters XML 1.0 does not allow left out.
pub(crate) fn push_xml_text(out: &mut Vec<u8>, text: &[u8]) {
    for &b in text {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&apos;"),
            b'\t' | b'\n' | b'\r' => out.push(b),
            0..=0x1f => {}
            _ => out.push(b),
        }
    }
}

/// Writes a value as JSON (geometry as hex EWKB, as PostGIS prints it; bytea as `\x` hex).
pub(crate) fn push_json_value(out: &mut Vec<u8>, v: &Value<'_>) {
    use crate::write::{push_float, push_int, push_lower_hex, push_str, push_upper_hex};
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => push_int(out, *i),
        Value::Float(f) => push_float(out, *f),
        Value::Numeric(raw) => match crate::value::numeric_special(raw) {
            Some(special) => push_str(out, special),
            None => crate::value::push_numeric(out, raw),
        },
        Value::Text(s) => push_str(out, s),
        Value::Json(j) => out.extend_from_slice(j.as_bytes()),
        Value::Bytes(b) => {
            out.extend_from_slice(b"\"\\\\x");
            push_lower_hex(out, b);
            out.push(b'"');
        }
        Value::Geometry(ewkb) => {
            out.push(b'"');
            push_upper_hex(out, ewkb);
            out.push(b'"');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json_value(out, item);
            }
            out.push(b']');
        }
    }
}

/// `{"error":["…"]}`'s inner part: `"error":["…"]`.
pub(crate) fn push_error_member(out: &mut Vec<u8>, error: &str) {
    out.extend_from_slice(b"\"error\":[");
    crate::write::push_str(out, error);
    out.push(b']');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A document written by `format` for these columns and rows.
    pub(crate) fn render(
        format: Format,
        columns: &[Column],
        rows: &[Vec<Value<'_>>],
        error: Option<&str>,
    ) -> String {
        let mut enc = encoder(format, 6, CsvGeometry::Wkt);
        let mut out = Vec::new();
        enc.begin(&mut out, columns);
        for (i, row) in rows.iter().enumerate() {
            enc.row(&mut out, columns, row, i == 0);
        }
        let geometry = vec![None; columns.len()];
        let summary = Summary {
            elapsed: Duration::from_millis(1500),
            rows: rows.len() as u64,
            geometry: &geometry,
        };
        enc.finish(&mut out, columns, &summary, error);
        String::from_utf8(out).unwrap()
    }

    pub(crate) fn col(name: &str, pgtype: &str, kind: Option<Kind>) -> Column {
        Column {
            name: name.into(),
            pgtype: pgtype.into(),
            kind,
            skip: false,
        }
    }

    #[test]
    fn json_values_are_exact_and_valid() {
        let mut out = Vec::new();
        let values = [
            Value::Int(i64::MAX),
            Value::Numeric(&[
                0, 7, 0, 4, 0, 0, 0, 6, 4, 210, 22, 46, 35, 52, 13, 128, 30, 210, 0, 1, 8, 252,
            ]),
            Value::Numeric(&[0, 0, 0, 0, 0xC0, 0, 0, 0]),
            Value::Numeric(&[0, 0, 0, 0, 0xF0, 0, 0, 0]),
            Value::Float(f64::INFINITY),
            Value::Bytes(&[0xde, 0xad]),
            Value::Array(vec![Value::Null, Value::Text("x".into())]),
        ];
        out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_value(&mut out, v);
        }
        out.push(b']');
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"[9223372036854775807,12345678901234567890.000123,"NaN","-Infinity","Infinity","\\xdead",[null,"x"]]"#
        );
        let _: serde_json::Value = serde_json::from_str(&text).unwrap();
    }
}
