//! `csv`: RFC 4180, a header line, CRLF line ends.

use super::{Column, Encoder, Summary, push_json_value};
use crate::CsvGeometry;
use crate::geom;
use crate::value::Value;
use crate::write::{push_float, push_int, push_lower_hex, push_upper_hex};

/// RFC 4180 with a header. NULL is an empty unquoted field and the empty string `""`, as
/// PostgreSQL's `COPY … CSV` writes them. Geometry as WKT or hex EWKB; arrays and JSON as JSON
/// text. A stream that ends early gets a last record `#error,<message>`.
pub(crate) struct Csv {
    dp: u8,
    geometry: CsvGeometry,
    scratch: Vec<u8>,
}

impl Csv {
    pub(crate) fn new(dp: u8, geometry: CsvGeometry) -> Self {
        Self {
            dp,
            geometry,
            scratch: Vec::new(),
        }
    }
}

impl Encoder for Csv {
    fn begin(&mut self, out: &mut Vec<u8>, columns: &[Column]) {
        let mut first = true;
        for c in columns.iter().filter(|c| !c.skip) {
            if !first {
                out.push(b',');
            }
            first = false;
            push_field(out, c.name.as_bytes(), false);
        }
        out.extend_from_slice(b"\r\n");
    }

    fn row(&mut self, out: &mut Vec<u8>, columns: &[Column], values: &[Value<'_>], _first: bool) {
        let mut first = true;
        for (_, v) in columns.iter().zip(values).filter(|(c, _)| !c.skip) {
            if !first {
                out.push(b',');
            }
            first = false;
            match v {
                Value::Null => {}
                Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                Value::Int(i) => push_int(out, *i),
                Value::Float(f) if f.is_finite() => push_float(out, *f),
                Value::Float(f) => out.extend_from_slice(if f.is_nan() {
                    b"NaN".as_slice()
                } else if *f > 0.0 {
                    b"Infinity"
                } else {
                    b"-Infinity"
                }),
                Value::Numeric(raw) => crate::value::push_numeric(out, raw),
                Value::Text(s) => push_field(out, s.as_bytes(), true),
                Value::Json(j) => push_field(out, j.as_bytes(), true),
                Value::Bytes(b) => {
                    out.extend_from_slice(b"\\x");
                    push_lower_hex(out, b);
                }
                Value::Geometry(ewkb) => match self.geometry {
                    CsvGeometry::HexEwkb => push_upper_hex(out, ewkb),
                    CsvGeometry::Wkt => {
                        self.scratch.clear();
                        if let Ok(Some(g)) = geom::decode(ewkb) {
                            geom::push_wkt(&mut self.scratch, &g, self.dp);
                        }
                        push_field(out, &self.scratch, false);
                    }
                },
                Value::Array(_) => {
                    self.scratch.clear();
                    push_json_value(&mut self.scratch, v);
                    push_field(out, &self.scratch, true);
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        _columns: &[Column],
        _summary: &Summary<'_>,
        error: Option<&str>,
    ) {
        if let Some(error) = error {
            out.extend_from_slice(b"#error,");
            push_field(out, error.as_bytes(), true);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A field, quoted when it must be (separators, quotes, line breaks, edge spaces) or when it is
/// an empty string that must not read as NULL.
fn push_field(out: &mut Vec<u8>, field: &[u8], quote_empty: bool) {
    let needs = (field.is_empty() && quote_empty)
        || field.first() == Some(&b' ')
        || field.last() == Some(&b' ')
        || field
            .iter()
            .any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for &b in field {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use crate::Format;
    use crate::format::tests::{col, render};
    use crate::value::{Kind, Value};

    #[test]
    fn fields_are_quoted_only_when_needed_and_null_differs_from_empty() {
        let columns = [
            col("a,b", "text", Some(Kind::Text)),
            col("n", "float8", Some(Kind::Float8)),
            col("j", "jsonb", Some(Kind::Jsonb)),
        ];
        let rows = vec![
            vec![
                Value::Text("say \"hi\"\nthere".into()),
                Value::Float(f64::NAN),
                Value::Json(r#"{"k":[1,2]}"#),
            ],
            vec![Value::Text("".into()), Value::Null, Value::Null],
            vec![
                Value::Text("plain".into()),
                Value::Float(0.5),
                Value::Json("1"),
            ],
        ];
        let doc = render(
            Format::Csv,
            &columns,
            &rows,
            Some("row limit of 3 exceeded"),
        );
        assert_eq!(
            doc,
            concat!(
                "\"a,b\",n,j\r\n",
                "\"say \"\"hi\"\"\nthere\",NaN,\"{\"\"k\"\":[1,2]}\"\r\n",
                "\"\",,\r\n",
                "plain,0.5,1\r\n",
                "#error,row limit of 3 exceeded\r\n"
            )
        );
    }
}
