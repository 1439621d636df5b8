//! `geojson`: a FeatureCollection; `geojsonseq`: RFC 8142 text sequences of Features.

use super::{Column, Encoder, Summary, geometry_column, push_error_member, push_json_value};
use crate::geom;
use crate::value::Value;
use crate::write::push_str;

fn push_feature(
    out: &mut Vec<u8>,
    columns: &[Column],
    values: &[Value<'_>],
    geometry: Option<usize>,
    dp: u8,
) {
    out.extend_from_slice(b"{\"type\":\"Feature\",\"geometry\":");
    match geometry.and_then(|i| values.get(i)) {
        Some(Value::Geometry(ewkb)) => push_geometry(out, ewkb, dp),
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"properties\":{");
    let mut first = true;
    for (i, (c, v)) in columns.iter().zip(values).enumerate() {
        if c.skip || Some(i) == geometry {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        push_str(out, &c.name);
        out.push(b':');
        match v {
            // Other geometry columns stay geometries, as GeoJSON objects.
            Value::Geometry(ewkb) => push_geometry(out, ewkb, dp),
            v => push_json_value(out, v),
        }
    }
    out.extend_from_slice(b"}}");
}

/// A GeoJSON geometry, or `null` for EMPTY (and for bytes that are not WKB).
fn push_geometry(out: &mut Vec<u8>, ewkb: &[u8], dp: u8) {
    match geom::decode(ewkb) {
        Ok(Some(g)) => geom::push_geojson(out, &g, dp),
        _ => out.extend_from_slice(b"null"),
    }
}

/// `{"type":"FeatureCollection","features":[…]}`, with `"error":[…]` when the stream ended
/// early (a foreign member, which GeoJSON readers ignore).
pub(crate) struct Collection {
    dp: u8,
    geometry: Option<usize>,
}

impl Collection {
    pub(crate) fn new(dp: u8) -> Self {
        Self { dp, geometry: None }
    }
}

impl Encoder for Collection {
    fn begin(&mut self, out: &mut Vec<u8>, columns: &[Column]) {
        self.geometry = geometry_column(columns);
        out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":[");
    }

    fn row(&mut self, out: &mut Vec<u8>, columns: &[Column], values: &[Value<'_>], first: bool) {
        if !first {
            out.push(b',');
        }
        push_feature(out, columns, values, self.geometry, self.dp);
    }

    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        _columns: &[Column],
        _summary: &Summary<'_>,
        error: Option<&str>,
    ) {
        out.push(b']');
        if let Some(error) = error {
            out.push(b',');
            push_error_member(out, error);
        }
        out.push(b'}');
    }
}

/// Each feature as `RS <feature> LF`; an early end adds `RS {"error":[…]} LF`.
pub(crate) struct Sequence {
    dp: u8,
    geometry: Option<usize>,
}

impl Sequence {
    pub(crate) fn new(dp: u8) -> Self {
        Self { dp, geometry: None }
    }
}

impl Encoder for Sequence {
    fn begin(&mut self, _out: &mut Vec<u8>, columns: &[Column]) {
        self.geometry = geometry_column(columns);
    }

    fn row(&mut self, out: &mut Vec<u8>, columns: &[Column], values: &[Value<'_>], _first: bool) {
        out.push(0x1e);
        push_feature(out, columns, values, self.geometry, self.dp);
        out.push(b'\n');
    }

    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        _columns: &[Column],
        _summary: &Summary<'_>,
        error: Option<&str>,
    ) {
        if let Some(error) = error {
            out.extend_from_slice(b"\x1e{");
            push_error_member(out, error);
            out.extend_from_slice(b"}\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Format;
    use crate::format::tests::{col, render};
    use crate::value::{Kind, Value};

    fn point(x: f64, y: f64) -> Vec<u8> {
        let mut ewkb = vec![1u8];
        ewkb.extend(0x2000_0001u32.to_le_bytes());
        ewkb.extend(4326u32.to_le_bytes());
        ewkb.extend(x.to_le_bytes());
        ewkb.extend(y.to_le_bytes());
        ewkb
    }

    #[test]
    fn features_take_the_geometry_column_and_keep_the_rest_as_properties() {
        let (a, b) = (point(1.123_456_789, 2.0), point(3.0, 4.0));
        let columns = [
            col("name", "text", Some(Kind::Text)),
            col("other", "geometry", Some(Kind::Geometry)),
            col("the_geom", "geometry", Some(Kind::Geometry)),
        ];
        let rows = vec![vec![
            Value::Text("x".into()),
            Value::Geometry(&b),
            Value::Geometry(&a),
        ]];
        let doc = render(Format::GeoJson, &columns, &rows, None);
        assert_eq!(
            doc,
            concat!(
                r#"{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Point","coordinates":[1.123457,2]},"#,
                r#""properties":{"name":"x","other":{"type":"Point","coordinates":[3,4]}}}]}"#
            )
        );
        let seq = render(Format::GeoJsonSeq, &columns, &rows, Some("late"));
        let records: Vec<&str> = seq.split('\x1e').filter(|r| !r.is_empty()).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1], "{\"error\":[\"late\"]}\n");
        let feature: serde_json::Value = serde_json::from_str(records[0].trim_end()).unwrap();
        assert_eq!(
            feature["geometry"]["coordinates"],
            serde_json::json!([1.123457, 2])
        );
    }

    #[test]
    fn rows_without_geometry_are_features_with_null_geometry() {
        let columns = [col("n", "int4", Some(Kind::Int4))];
        let doc = render(
            Format::GeoJson,
            &columns,
            &[vec![Value::Int(7)]],
            Some("boom"),
        );
        assert_eq!(
            doc,
            r#"{"type":"FeatureCollection","features":[{"type":"Feature","geometry":null,"properties":{"n":7}}],"error":["boom"]}"#
        );
    }
}
