//! PostgreSQL binary values → [`Value`]: the types a user meets, decoded exactly.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How a column's values are decoded: by the type's OID, with PostGIS types (whose OIDs vary
/// per database) recognised by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Json,
    Jsonb,
    Uuid,
    Bytea,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    Geometry,
    Geography,
    /// An array; its elements say their own type.
    Array,
}

/// OIDs of the PostGIS types in the database at hand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PostgisOids {
    pub(crate) geometry: Option<u32>,
    pub(crate) geography: Option<u32>,
}

impl Kind {
    /// The kind for a type OID; `None` for types decoded as text by a cast in the query.
    pub(crate) fn of(oid: u32, postgis: PostgisOids) -> Option<Self> {
        let kind = match oid {
            16 => Self::Bool,
            21 => Self::Int2,
            23 => Self::Int4,
            20 => Self::Int8,
            26 => Self::Oid,
            700 => Self::Float4,
            701 => Self::Float8,
            1700 => Self::Numeric,
            // text, varchar, bpchar, name, "char", unknown, xml
            25 | 1043 | 1042 | 19 | 18 | 705 | 142 => Self::Text,
            114 => Self::Json,
            3802 => Self::Jsonb,
            2950 => Self::Uuid,
            17 => Self::Bytea,
            1082 => Self::Date,
            1083 => Self::Time,
            1114 => Self::Timestamp,
            1184 => Self::Timestamptz,
            1186 => Self::Interval,
            // Arrays of the types above.
            1000 | 1005 | 1007 | 1016 | 1028 | 1021 | 1022 | 1231 | 1009 | 1015 | 1014 | 1003
            | 1002 | 199 | 3807 | 2951 | 1001 | 1182 | 1183 | 1115 | 1185 | 1187 => Self::Array,
            _ if Some(oid) == postgis.geometry => Self::Geometry,
            _ if Some(oid) == postgis.geography => Self::Geography,
            _ => return None,
        };
        Some(kind)
    }
}

/// A decoded value, borrowing from the row where it can.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A numeric in PostgreSQL's binary form, already checked; written exactly by
    /// [`push_numeric`].
    Numeric(&'a [u8]),
    /// Text, and values shown as text: uuid, date and time types, intervals.
    Text(Cow<'a, str>),
    /// JSON text, as stored.
    Json(&'a str),
    Bytes(&'a [u8]),
    /// EWKB of a geometry or geography.
    Geometry(&'a [u8]),
    Array(Vec<Value<'a>>),
}

/// Why a value could not be decoded (the server sent bytes that do not fit the type).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadValue(pub(crate) &'static str);

type Decoded<'a> = Result<Value<'a>, BadValue>;

/// Decodes the binary form `bytes` of a value of `kind`.
pub(crate) fn decode(kind: Kind, bytes: &[u8], postgis: PostgisOids) -> Decoded<'_> {
    let fixed = |n: usize| -> Result<&[u8], BadValue> {
        if bytes.len() == n {
            Ok(bytes)
        } else {
            Err(BadValue("wrong length"))
        }
    };
    Ok(match kind {
        Kind::Bool => Value::Bool(fixed(1)?[0] != 0),
        Kind::Int2 => Value::Int(i16::from_be_bytes(arr(fixed(2)?)).into()),
        Kind::Int4 => Value::Int(i32::from_be_bytes(arr(fixed(4)?)).into()),
        Kind::Oid => Value::Int(u32::from_be_bytes(arr(fixed(4)?)).into()),
        Kind::Int8 => Value::Int(i64::from_be_bytes(arr(fixed(8)?))),
        Kind::Float4 => Value::Float(f32::from_be_bytes(arr(fixed(4)?)).into()),
        Kind::Float8 => Value::Float(f64::from_be_bytes(arr(fixed(8)?))),
        Kind::Numeric => {
            check_numeric(bytes)?;
            Value::Numeric(bytes)
        }
        Kind::Text => Value::Text(Cow::Borrowed(utf8(bytes)?)),
        Kind::Json => Value::Json(utf8(bytes)?),
        Kind::Jsonb => match bytes.split_first() {
            Some((1, rest)) => Value::Json(utf8(rest)?),
            _ => return Err(BadValue("unknown jsonb version")),
        },
        Kind::Uuid => Value::Text(Cow::Owned(uuid(fixed(16)?))),
        Kind::Bytea => Value::Bytes(bytes),
        Kind::Date => Value::Text(Cow::Owned(date(i32::from_be_bytes(arr(fixed(4)?))))),
        Kind::Time => Value::Text(Cow::Owned(time(i64::from_be_bytes(arr(fixed(8)?))))),
        Kind::Timestamp => Value::Text(Cow::Owned(timestamp(
            i64::from_be_bytes(arr(fixed(8)?)),
            "",
        ))),
        Kind::Timestamptz => Value::Text(Cow::Owned(timestamp(
            i64::from_be_bytes(arr(fixed(8)?)),
            "Z",
        ))),
        Kind::Interval => Value::Text(Cow::Owned(interval(fixed(16)?))),
        Kind::Geometry | Kind::Geography => Value::Geometry(bytes),
        Kind::Array => array(bytes, postgis)?,
    })
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&b[..N]);
    out
}

fn utf8(b: &[u8]) -> Result<&str, BadValue> {
    std::str::from_utf8(b).map_err(|_| BadValue("not UTF-8"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadValue> {
        if self.0.len() < n {
            return Err(BadValue("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, BadValue> {
        Ok(i16::from_be_bytes(arr(self.take(2)?)))
    }
    fn i32(&mut self) -> Result<i32, BadValue> {
        Ok(i32::from_be_bytes(arr(self.take(4)?)))
    }
    fn u16(&mut self) -> Result<u16, BadValue> {
        Ok(u16::from_be_bytes(arr(self.take(2)?)))
    }
}

/// The special values of numeric, by their sign word.
pub(crate) fn numeric_special(raw: &[u8]) -> Option<&'static str> {
    match raw.get(4..6) {
        Some([0xC0, 0x00]) => Some("NaN"),
        Some([0xD0, 0x00]) => Some("Infinity"),
        Some([0xF0, 0x00]) => Some("-Infinity"),
        _ => None,
    }
}

/// numeric: ndigits, weight, sign, dscale, then base-10000 digits. Checks the form once, so
/// that writing it later cannot fail.
fn check_numeric(bytes: &[u8]) -> Result<(), BadValue> {
    let mut r = Reader(bytes);
    let ndigits = usize::try_from(r.i16()?).map_err(|_| BadValue("numeric digit count"))?;
    let _weight = r.i16()?;
    let sign = r.u16()?;
    let _dscale = usize::try_from(r.i16()?).map_err(|_| BadValue("numeric scale"))?;
    if !matches!(sign, 0x0000 | 0x4000 | 0xC000 | 0xD000 | 0xF000) {
        return Err(BadValue("numeric sign"));
    }
    if r.0.len() != 2 * ndigits {
        return Err(BadValue("numeric digits"));
    }
    for _ in 0..ndigits {
        if !(0..10_000).contains(&r.i16()?) {
            return Err(BadValue("numeric digit"));
        }
    }
    Ok(())
}

/// Appends a checked numeric exactly: its decimal digits, or `NaN`/`Infinity`/`-Infinity`.
pub(crate) fn push_numeric(out: &mut Vec<u8>, raw: &[u8]) {
    if let Some(special) = numeric_special(raw) {
        out.extend_from_slice(special.as_bytes());
        return;
    }
    let word = |i: usize| i16::from_be_bytes([raw[2 * i], raw[2 * i + 1]]);
    let (ndigits, weight, sign, dscale) = (
        word(0) as i32,
        i32::from(word(1)),
        word(2),
        word(3) as usize,
    );
    let digit = |i: i32| -> u16 {
        if (0..ndigits).contains(&i) {
            word(4 + i as usize) as u16
        } else {
            0
        }
    };
    if sign as u16 == 0x4000 {
        out.push(b'-');
    }
    // Integer part: groups 0..=weight, the first without leading zeros.
    if weight < 0 {
        out.push(b'0');
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(digit(0)).as_bytes());
        for i in 1..=weight {
            push_group(out, digit(i));
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let start = out.len();
        let mut i = weight + 1;
        while out.len() - start < dscale {
            push_group(out, digit(i));
            i += 1;
        }
        out.truncate(start + dscale);
    }
}

/// Four decimal digits, zero-padded.
fn push_group(out: &mut Vec<u8>, g: u16) {
    out.extend_from_slice(&[
        b'0' + (g / 1000) as u8,
        b'0' + (g / 100 % 10) as u8,
        b'0' + (g / 10 % 10) as u8,
        b'0' + (g % 10) as u8,
    ]);
}

fn uuid(b: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// Days since 2000-01-01 → `YYYY-MM-DD` (proleptic Gregorian; `BC` years as negative ISO years).
fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        _ => {
            let (y, m, d) = civil(i64::from(days) + 10_957);
            format_ymd(y, m, d)
        }
    }
}

fn format_ymd(y: i64, m: u32, d: u32) -> String {
    if (0..=9999).contains(&y) {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{y:+05}-{m:02}-{d:02}")
    }
}

/// Days since 1970-01-01 → (year, month, day), after Howard Hinnant's `civil_from_days`.
///
/// Written here rather than taken from a date library: PostgreSQL's dates run from 4713 BC to
/// 5874897 AD and its timestamps to 294276 AD, while jiff (the date library of the rest of
/// the workspace) stops at ±9999; a value outside that must still be written, not refused.
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Microseconds since midnight → `HH:MM:SS[.ffffff]`.
fn time(us: i64) -> String {
    let mut s = String::with_capacity(15);
    push_clock(&mut s, us);
    s
}

fn push_clock(s: &mut String, us: i64) {
    let (secs, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let _ = write!(
        s,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
}

/// Microseconds since 2000-01-01 00:00 → ISO 8601 (`zone` is `Z` for timestamptz, in UTC).
fn timestamp(us: i64, zone: &str) -> String {
    match us {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => {
            let days = us.div_euclid(86_400_000_000);
            let (y, m, d) = civil(days + 10_957);
            let mut s = format_ymd(y, m, d);
            s.push('T');
            push_clock(&mut s, us.rem_euclid(86_400_000_000));
            s.push_str(zone);
            s
        }
    }
}

/// microseconds, days, months → an ISO 8601 duration (`P1Y2M3DT4H5M6.5S`; `PT0S` when zero).
fn interval(b: &[u8]) -> String {
    let us = i64::from_be_bytes(arr(&b[0..8]));
    let days = i32::from_be_bytes(arr(&b[8..12]));
    let months = i32::from_be_bytes(arr(&b[12..16]));
    let mut s = String::from("P");
    let (years, months) = (months / 12, months % 12);
    for (n, unit) in [(years, 'Y'), (months, 'M'), (days, 'D')] {
        if n != 0 {
            let _ = write!(s, "{n}{unit}");
        }
    }
    if us != 0 {
        s.push('T');
        let (h, rest) = (us / 3_600_000_000, us % 3_600_000_000);
        let (m, rest) = (rest / 60_000_000, rest % 60_000_000);
        if h != 0 {
            let _ = write!(s, "{h}H");
        }
        if m != 0 {
            let _ = write!(s, "{m}M");
        }
        if rest != 0 {
            let (sec, frac) = (rest / 1_000_000, (rest % 1_000_000).abs());
            if sec == 0 && rest < 0 {
                s.push('-');
            }
            let _ = write!(s, "{sec}");
            if frac != 0 {
                let f = format!("{frac:06}");
                s.push('.');
                s.push_str(f.trim_end_matches('0'));
            }
            s.push('S');
        }
    }
    if s == "P" {
        s.push_str("T0S");
    }
    s
}

/// The binary array format: dimensions, a null flag, the element OID, per-dimension sizes and
/// lower bounds, then the elements. Multi-dimensional arrays nest.
fn array(bytes: &[u8], postgis: PostgisOids) -> Decoded<'_> {
    let mut r = Reader(bytes);
    let ndim = usize::try_from(r.i32()?).map_err(|_| BadValue("array dimensions"))?;
    let _has_null = r.i32()?;
    let elem_oid = u32::from_be_bytes(arr(r.take(4)?));
    if ndim == 0 {
        return Ok(Value::Array(Vec::new()));
    }
    if ndim > 6 {
        return Err(BadValue("array dimensions"));
    }
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        dims.push(usize::try_from(r.i32()?).map_err(|_| BadValue("array size"))?);
        let _lower_bound = r.i32()?;
    }
    let kind = Kind::of(elem_oid, postgis).ok_or(BadValue("array element type"))?;
    let total: usize = dims.iter().product();
    let mut flat = Vec::with_capacity(total.min(bytes.len() / 4));
    for _ in 0..total {
        let len = r.i32()?;
        if len < 0 {
            flat.push(Value::Null);
        } else {
            let raw = r.take(usize::try_from(len).map_err(|_| BadValue("array element"))?)?;
            flat.push(decode(kind, raw, postgis)?);
        }
    }
    Ok(nest(flat, &dims))
}

fn nest<'a>(flat: Vec<Value<'a>>, dims: &[usize]) -> Value<'a> {
    match dims {
        [] | [_] => Value::Array(flat),
        [_, inner @ ..] => {
            let chunk: usize = inner.iter().product();
            let mut rows = Vec::new();
            let mut it = flat.into_iter();
            loop {
                let part: Vec<_> = it.by_ref().take(chunk.max(1)).collect();
                if part.is_empty() {
                    break;
                }
                rows.push(nest(part, inner));
            }
            Value::Array(rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [ndigits, weight] {
            b.extend(v.to_be_bytes());
        }
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    fn numeric(raw: &[u8]) -> Result<String, BadValue> {
        check_numeric(raw)?;
        let mut out = Vec::new();
        push_numeric(&mut out, raw);
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn numerics_are_exact() {
        // 12345678901234567890.000123 = [1234, 5678, 9012, 3456, 7890, 0001, 2300] weight 4
        let b = num(7, 4, 0, 6, &[1234, 5678, 9012, 3456, 7890, 1, 2300]);
        assert_eq!(numeric(&b).unwrap(), "12345678901234567890.000123");
        assert_eq!(numeric(&num(1, -1, 0x4000, 4, &[5])).unwrap(), "-0.0005");
        assert_eq!(numeric(&num(0, 0, 0, 2, &[])).unwrap(), "0.00");
        assert_eq!(numeric(&num(1, 1, 0, 0, &[7])).unwrap(), "70000");
        assert_eq!(numeric(&num(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert_eq!(numeric(&num(0, 0, 0xF000, 0, &[])).unwrap(), "-Infinity");
        assert!(numeric(&num(2, 0, 0, 0, &[1])).is_err());
    }

    #[test]
    fn dates_and_times_are_iso_8601() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-10_957), "1970-01-01");
        assert_eq!(date(8_825), "2024-02-29");
        assert_eq!(date(i32::MAX), "infinity");
        assert_eq!(time(45_296_500_000), "12:34:56.5");
        assert_eq!(timestamp(0, "Z"), "2000-01-01T00:00:00Z");
        assert_eq!(timestamp(-1, ""), "1999-12-31T23:59:59.999999");
        assert_eq!(timestamp(i64::MIN, "Z"), "-infinity");
    }

    #[test]
    fn intervals_are_iso_durations() {
        let iv = |us: i64, days: i32, months: i32| {
            let mut b = us.to_be_bytes().to_vec();
            b.extend(days.to_be_bytes());
            b.extend(months.to_be_bytes());
            interval(&b)
        };
        assert_eq!(iv(0, 0, 0), "PT0S");
        assert_eq!(iv(3_723_500_000, 2, 14), "P1Y2M2DT1H2M3.5S");
        assert_eq!(iv(-500_000, 0, 0), "PT-0.5S");
    }

    #[test]
    fn uuids_are_hyphenated() {
        let b: Vec<u8> = (0..16).collect();
        assert_eq!(uuid(&b), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn arrays_nest_and_keep_nulls() {
        // int4[][] {{1,NULL},{3,4}}
        let mut b = Vec::new();
        for v in [2i32, 1] {
            b.extend(v.to_be_bytes());
        }
        b.extend(23u32.to_be_bytes());
        for v in [2i32, 1, 2, 1] {
            b.extend(v.to_be_bytes());
        }
        for v in [Some(1i32), None, Some(3), Some(4)] {
            match v {
                Some(v) => {
                    b.extend(4i32.to_be_bytes());
                    b.extend(v.to_be_bytes());
                }
                None => b.extend((-1i32).to_be_bytes()),
            }
        }
        assert_eq!(
            array(&b, PostgisOids::default()).unwrap(),
            Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Null]),
                Value::Array(vec![Value::Int(3), Value::Int(4)]),
            ])
        );
    }

    #[test]
    fn wrong_lengths_are_errors_not_panics() {
        let p = PostgisOids::default();
        assert!(decode(Kind::Int4, &[0, 1], p).is_err());
        assert!(decode(Kind::Interval, &[0; 15], p).is_err());
        assert!(decode(Kind::Array, &[0, 0, 0, 1], p).is_err());
        assert!(decode(Kind::Jsonb, &[2, b'1'], p).is_err());
        assert!(decode(Kind::Text, &[0xff], p).is_err());
    }
}
