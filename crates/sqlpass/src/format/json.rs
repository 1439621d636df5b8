//! `json`: CARTO's envelope; `ndjson`: one JSON object per line.

use super::{Column, Encoder, Summary, push_error_member, push_json_value};
use crate::value::{Kind, Value};
use crate::write::{push_float, push_int, push_str};

/// `{"rows":[…],"time":s,"fields":{…},"total_rows":N}`, with `"error":[…]` when the stream
/// ended early.
#[derive(Default)]
pub(crate) struct Envelope {
    keys: Keys,
}

impl Encoder for Envelope {
    fn begin(&mut self, out: &mut Vec<u8>, columns: &[Column]) {
        self.keys = Keys::new(columns);
        out.extend_from_slice(b"{\"rows\":[");
    }

    fn row(&mut self, out: &mut Vec<u8>, _columns: &[Column], values: &[Value<'_>], first: bool) {
        if !first {
            out.push(b',');
        }
        self.keys.push_object(out, values);
    }

    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        columns: &[Column],
        summary: &Summary<'_>,
        error: Option<&str>,
    ) {
        out.extend_from_slice(b"],\"time\":");
        push_float(out, summary.elapsed.as_secs_f64());
        out.extend_from_slice(b",\"fields\":{");
        let mut first = true;
        for (i, c) in columns.iter().enumerate().filter(|(_, c)| !c.skip) {
            if !first {
                out.push(b',');
            }
            first = false;
            push_str(out, &c.name);
            out.extend_from_slice(b":{\"type\":");
            push_str(out, carto_type(c));
            if c.is_geometry() {
                let h = summary.geometry.get(i).copied().flatten();
                out.extend_from_slice(b",\"wkbtype\":");
                push_str(out, h.map_or("Unknown", |h| h.type_name()));
                out.extend_from_slice(b",\"dims\":");
                push_int(out, h.map_or(2, |h| h.dims().into()));
                out.extend_from_slice(b",\"srid\":");
                push_int(out, h.map_or(0, |h| h.srid.into()));
            } else {
                out.extend_from_slice(b",\"pgtype\":");
                push_str(out, &c.pgtype);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"},\"total_rows\":");
        push_int(out, i64::try_from(summary.rows).unwrap_or(i64::MAX));
        if let Some(error) = error {
            out.push(b',');
            push_error_member(out, error);
        }
        out.push(b'}');
    }
}

/// One object per row and line; an early end adds a last line `{"error":[…]}`.
#[derive(Default)]
pub(crate) struct Lines {
    keys: Keys,
}

impl Encoder for Lines {
    fn begin(&mut self, _out: &mut Vec<u8>, columns: &[Column]) {
        self.keys = Keys::new(columns);
    }

    fn row(&mut self, out: &mut Vec<u8>, _columns: &[Column], values: &[Value<'_>], _first: bool) {
        self.keys.push_object(out, values);
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
            out.push(b'{');
            push_error_member(out, error);
            out.extend_from_slice(b"}\n");
        }
    }
}

/// The object keys of the output columns, escaped once: `"name":` (and `,"name":` after the
/// first), with the index of the value each one takes.
#[derive(Default)]
pub(crate) struct Keys(Vec<(usize, Vec<u8>)>);

impl Keys {
    pub(crate) fn new(columns: &[Column]) -> Self {
        let mut keys = Vec::new();
        for (i, c) in columns.iter().enumerate().filter(|(_, c)| !c.skip) {
            let mut key = Vec::with_capacity(c.name.len() + 4);
            if !keys.is_empty() {
                key.push(b',');
            }
            push_str(&mut key, &c.name);
            key.push(b':');
            keys.push((i, key));
        }
        Self(keys)
    }

    /// `{"a":1,"b":2}` for the row's values.
    pub(crate) fn push_object(&self, out: &mut Vec<u8>, values: &[Value<'_>]) {
        out.push(b'{');
        for (i, key) in &self.0 {
            out.extend_from_slice(key);
            push_json_value(out, &values[*i]);
        }
        out.push(b'}');
    }
}

/// CARTO's name for a column's type in `fields`.
fn carto_type(c: &Column) -> &'static str {
    let base = |k: Kind| match k {
        Kind::Bool => "boolean",
        Kind::Int2
        | Kind::Int4
        | Kind::Int8
        | Kind::Oid
        | Kind::Float4
        | Kind::Float8
        | Kind::Numeric => "number",
        Kind::Date | Kind::Timestamp | Kind::Timestamptz => "date",
        Kind::Geometry => "geometry",
        Kind::Geography => "geography",
        Kind::Json | Kind::Jsonb => "json",
        _ => "string",
    };
    match c.kind {
        Some(Kind::Array) => match c.pgtype.trim_start_matches('_') {
            "int2" | "int4" | "int8" | "float4" | "float8" | "numeric" | "oid" => "number[]",
            "bool" => "boolean[]",
            "date" | "timestamp" | "timestamptz" => "date[]",
            "json" | "jsonb" => "json[]",
            _ => "string[]",
        },
        Some(k) => base(k),
        None => "string",
    }
}

#[cfg(test)]
mod tests {
    use crate::Format;
    use crate::format::tests::{col, render};
    use crate::value::{Kind, Value};

    #[test]
    fn the_envelope_is_carto_shaped_and_names_are_escaped() {
        let columns = [
            col("id", "int4", Some(Kind::Int4)),
            col("na\"me", "text", Some(Kind::Text)),
            col("g", "geometry", Some(Kind::Geometry)),
            col("tags", "_text", Some(Kind::Array)),
        ];
        let rows = vec![
            vec![
                Value::Int(1),
                Value::Text("a".into()),
                Value::Null,
                Value::Array(vec![]),
            ],
            vec![Value::Int(2), Value::Null, Value::Null, Value::Null],
        ];
        let doc = render(Format::Json, &columns, &rows, None);
        assert_eq!(
            doc,
            concat!(
                r#"{"rows":[{"id":1,"na\"me":"a","g":null,"tags":[]},{"id":2,"na\"me":null,"g":null,"tags":null}],"#,
                r#""time":1.5,"fields":{"id":{"type":"number","pgtype":"int4"},"na\"me":{"type":"string","pgtype":"text"},"#,
                r#""g":{"type":"geometry","wkbtype":"Unknown","dims":2,"srid":0},"tags":{"type":"string[]","pgtype":"_text"}},"#,
                r#""total_rows":2}"#
            )
        );
        let with_error = render(
            Format::Json,
            &columns[..1],
            &rows[..0],
            Some("row limit of 0 exceeded"),
        );
        let parsed: serde_json::Value = serde_json::from_str(&with_error).unwrap();
        assert_eq!(parsed["error"][0], "row limit of 0 exceeded");
        assert_eq!(parsed["rows"], serde_json::json!([]));
    }

    #[test]
    fn ndjson_is_one_object_per_line_and_an_error_line() {
        let columns = [col("n", "int8", Some(Kind::Int8))];
        let rows = vec![vec![Value::Int(1)], vec![Value::Int(2)]];
        let doc = render(Format::Ndjson, &columns, &rows, Some("stop"));
        assert_eq!(doc, "{\"n\":1}\n{\"n\":2}\n{\"error\":[\"stop\"]}\n");
    }
}
