//! Writing text by hand, fast: JSON strings escaped per RFC 8259, numbers as given, bytes as
//! hex. A leaf: the formats and the geometry writers build on it.

/// Appends `s` as a JSON string.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&LOWER_HEX[usize::from(b)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The bytes a JSON string cannot hold as they are: quote, backslash and controls.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends a number already in JSON syntax.
pub(crate) fn push_number(out: &mut Vec<u8>, n: &str) {
    out.extend_from_slice(n.as_bytes());
}

/// Appends an integer.
pub(crate) fn push_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a float: the shortest text that reads back the same (exponent form for very large
/// and small magnitudes); `NaN`, `Infinity` and
/// `-Infinity` as strings, since JSON numbers cannot say them.
pub(crate) fn push_float(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else {
        out.extend_from_slice(zmij::Buffer::new().format_finite(f).as_bytes());
    }
}

/// Lowercase hex, as PostgreSQL prints bytea.
pub(crate) fn push_lower_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    push_hex_pairs(out, bytes, &LOWER_HEX);
}

/// Uppercase hex, as PostGIS prints EWKB.
pub(crate) fn push_upper_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    push_hex_pairs(out, bytes, &UPPER_HEX);
}

/// The two hex digits of every byte, lower case.
static LOWER_HEX: [[u8; 2]; 256] = hex_pairs(b"0123456789abcdef");
/// The two hex digits of every byte, upper case.
static UPPER_HEX: [[u8; 2]; 256] = hex_pairs(b"0123456789ABCDEF");

const fn hex_pairs(digits: &[u8; 16]) -> [[u8; 2]; 256] {
    let mut table = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = [digits[b >> 4], digits[b & 15]];
        b += 1;
    }
    table
}

/// The pair of `pairs` for each byte, written in place (no capacity check per byte).
fn push_hex_pairs(out: &mut Vec<u8>, bytes: &[u8], pairs: &[[u8; 2]; 256]) {
    let start = out.len();
    out.resize(start + bytes.len() * 2, 0);
    for (pair, &b) in out[start..].chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&pairs[usize::from(b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        let mut out = Vec::new();
        push_str(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn bytes_are_written_as_hex_in_either_case() {
        let mut out = Vec::new();
        push_lower_hex(&mut out, &[0x00, 0xde, 0xAD, 0x7f]);
        push_upper_hex(&mut out, &[0xbe, 0xef]);
        assert_eq!(out, b"00dead7fBEEF");
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(s(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(s("line\nnext\u{1}é"), "\"line\\nnext\\u0001é\"");
        let parsed: String = serde_json::from_str(&s("\u{0}\u{1f}\"}{,")).unwrap();
        assert_eq!(parsed, "\u{0}\u{1f}\"}{,");
    }

    #[test]
    fn floats_round_trip_and_non_finite_are_strings() {
        for f in [0.1, -2.5e-300, 1e21, 123456789.125, f64::MAX] {
            let mut out = Vec::new();
            push_float(&mut out, f);
            let back: f64 = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, f);
        }
        // Exponent form for large magnitudes, with its sign, as PostgreSQL writes it.
        let mut out = Vec::new();
        push_float(&mut out, 1e21);
        assert_eq!(out, b"1e+21");
        let mut out = Vec::new();
        push_float(&mut out, f64::NEG_INFINITY);
        assert_eq!(out, b"\"-Infinity\"");
    }
}
