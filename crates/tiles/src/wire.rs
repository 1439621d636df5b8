//! The Mapbox Vector Tile wire format (`vector_tile.proto`, MVT 2.1) written straight into
//! bytes as features arrive: each feature's message appended to its layer's buffer, keys and
//! values interned in maps with a fast hasher and written once: a tag costs one look-up, and
//! only a string value the layer has not seen yet is allocated.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::Value;
use crate::pipeline::{TileGeometry, TilePoint};

/// A protocol buffers field key: the field number and its wire type.
const fn key(field: u64, wire: u64) -> u64 {
    (field << 3) | wire
}

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const BYTES: u64 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// A length-delimited field.
fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, key(field, BYTES));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A length-delimited field whose bytes `write` appends: written after a one-byte length,
/// moved along in the rare case that needs more.
fn message(out: &mut Vec<u8>, field: u64, write: impl FnOnce(&mut Vec<u8>)) {
    varint(out, key(field, BYTES));
    let at = out.len();
    out.push(0);
    write(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(4);
        varint(&mut prefix, len as u64);
        out.splice(at..=at, prefix);
    }
}

/// A packed repeated `uint32` field; nothing when empty.
fn packed_field(out: &mut Vec<u8>, field: u64, values: &[u32]) {
    if values.is_empty() {
        return;
    }
    message(out, field, |out| {
        for v in values {
            varint(out, u64::from(*v));
        }
    });
}

/// A value that is not a string, as the map of values tells them apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Scalar {
    Int(i64),
    Uint(u64),
    /// The double's bits: `0.0` and `-0.0` are two values, every NaN its own bits.
    Double(u64),
    Bool(bool),
}

/// One layer being written.
pub(crate) struct LayerWriter {
    name: String,
    extent: u32,
    features: Vec<u8>,
    keys: Vec<u8>,
    key_index: HashMap<Box<str>, u32, RandomState>,
    values: Vec<u8>,
    strings: HashMap<Box<str>, u32, RandomState>,
    scalars: HashMap<Scalar, u32, RandomState>,
    tags: Vec<u32>,
    geometry: Vec<u32>,
    /// A part's points without repeats.
    run: Vec<TilePoint>,
}

impl LayerWriter {
    pub(crate) fn new(name: &str, extent: u32) -> Self {
        Self {
            name: name.to_owned(),
            extent,
            features: Vec::new(),
            keys: Vec::new(),
            key_index: HashMap::default(),
            values: Vec::new(),
            strings: HashMap::default(),
            scalars: HashMap::default(),
            tags: Vec::new(),
            geometry: Vec::new(),
            run: Vec::new(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Writes a feature; `false` (and nothing written) when the geometry has nothing left to
    /// draw once repeated points are dropped.
    pub(crate) fn add(
        &mut self,
        geometry: &TileGeometry,
        id: Option<u64>,
        attributes: &[(&str, Value<'_>)],
    ) -> bool {
        self.geometry.clear();
        let kind = commands(geometry, &mut self.geometry, &mut self.run);
        if self.geometry.is_empty() {
            return false;
        }
        self.tags.clear();
        for (name, value) in attributes {
            // MVT has no null: the attribute is left out.
            let Some(v) = self.value(value) else {
                continue;
            };
            let k = self.key(name);
            self.tags.extend([k, v]);
        }
        let (tags, geometry) = (&self.tags, &self.geometry);
        message(&mut self.features, 2, |f| {
            if let Some(id) = id {
                varint(f, key(1, VARINT));
                varint(f, id);
            }
            packed_field(f, 2, tags);
            varint(f, key(3, VARINT));
            varint(f, kind);
            packed_field(f, 4, geometry);
        });
        true
    }

    fn key(&mut self, name: &str) -> u32 {
        if let Some(i) = self.key_index.get(name) {
            return *i;
        }
        let i = self.key_index.len() as u32;
        self.key_index.insert(name.into(), i);
        bytes_field(&mut self.keys, 3, name.as_bytes());
        i
    }

    /// The index of `value` in the layer's values, added when new; `None` for null.
    fn value(&mut self, value: &Value<'_>) -> Option<u32> {
        let scalar = match *value {
            Value::String(s) => {
                if let Some(i) = self.strings.get(s) {
                    return Some(*i);
                }
                let i = self.next_value(|m| bytes_field(m, 1, s.as_bytes()));
                self.strings.insert(s.into(), i);
                return Some(i);
            }
            Value::Int(v) => Scalar::Int(v),
            Value::Uint(v) => Scalar::Uint(v),
            Value::Double(v) => Scalar::Double(v.to_bits()),
            Value::Bool(v) => Scalar::Bool(v),
            Value::Null => return None,
        };
        if let Some(i) = self.scalars.get(&scalar) {
            return Some(*i);
        }
        let i = self.next_value(|m| match scalar {
            Scalar::Int(v) => {
                varint(m, key(6, VARINT));
                varint(m, zigzag(v));
            }
            Scalar::Uint(v) => {
                varint(m, key(5, VARINT));
                varint(m, v);
            }
            Scalar::Double(bits) => {
                varint(m, key(3, FIXED64));
                m.extend_from_slice(&bits.to_le_bytes());
            }
            Scalar::Bool(v) => {
                varint(m, key(7, VARINT));
                varint(m, u64::from(v));
            }
        });
        self.scalars.insert(scalar, i);
        Some(i)
    }

    /// Appends a value message that `write` fills, returning its index (the values so far:
    /// the caller interns it after).
    fn next_value(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> u32 {
        message(&mut self.values, 4, write);
        (self.strings.len() + self.scalars.len()) as u32
    }

    /// The layer's message, as the tile's field 3.
    pub(crate) fn write_to(&self, tile: &mut Vec<u8>) {
        let mut head = Vec::with_capacity(self.name.len() + 8);
        bytes_field(&mut head, 1, self.name.as_bytes());
        let mut tail = Vec::with_capacity(16);
        varint(&mut tail, key(5, VARINT));
        varint(&mut tail, u64::from(self.extent));
        varint(&mut tail, key(15, VARINT));
        varint(&mut tail, 2);
        let parts = [&head, &self.features, &self.keys, &self.values, &tail];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        varint(tile, key(3, BYTES));
        varint(tile, len as u64);
        tile.reserve(len);
        for part in parts {
            tile.extend_from_slice(part);
        }
    }
}

/// The command integer of `id` (1 MoveTo, 2 LineTo, 7 ClosePath) repeated `count` times.
fn command(id: u32, count: usize) -> u32 {
    ((count as u32) << 3) | id
}

/// The geometry's commands (MVT 2.1 §4.3) into `out`, and its `GeomType`: each part's
/// consecutive repeated points dropped, lines of fewer than two points and rings of fewer than
/// three left out; the cursor carries over from one part to the next.
fn commands(g: &TileGeometry, out: &mut Vec<u32>, run: &mut Vec<TilePoint>) -> u64 {
    let mut cursor: TilePoint = [0, 0];
    let moves = |out: &mut Vec<u32>, points: &[TilePoint], cursor: &mut TilePoint| {
        for p in points {
            out.push(zigzag(i64::from(p[0]) - i64::from(cursor[0])) as u32);
            out.push(zigzag(i64::from(p[1]) - i64::from(cursor[1])) as u32);
            *cursor = *p;
        }
    };
    let distinct = |run: &mut Vec<TilePoint>, points: &[TilePoint]| {
        run.clear();
        run.extend_from_slice(points);
        run.dedup();
    };
    // A MoveTo to the first point, a LineTo through the others.
    let path = |out: &mut Vec<u32>, run: &[TilePoint], cursor: &mut TilePoint| {
        out.push(command(1, 1));
        moves(out, &run[..1], cursor);
        out.push(command(2, run.len() - 1));
        moves(out, &run[1..], cursor);
    };
    match g {
        TileGeometry::Points(points) => {
            distinct(run, points);
            if !run.is_empty() {
                out.push(command(1, run.len()));
                moves(out, run, &mut cursor);
            }
            1
        }
        TileGeometry::Lines(lines) => {
            for line in lines {
                distinct(run, line);
                if run.len() >= 2 {
                    path(out, run, &mut cursor);
                }
            }
            2
        }
        TileGeometry::Polygons(polygons) => {
            for ring in polygons.iter().flatten() {
                distinct(run, ring);
                // Open rings: a last point equal to the first closes it again.
                if run.len() > 1 && run.first() == run.last() {
                    run.pop();
                }
                if run.len() >= 3 {
                    path(out, run, &mut cursor);
                    out.push(command(7, 1));
                }
            }
            3
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_take_a_byte_for_each_seven_bits() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            let bits = 64 - (v | 1).leading_zeros() as usize;
            assert_eq!(out.len(), bits.div_ceil(7), "{v}");
        }
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }

    #[test]
    fn a_long_packed_field_moves_its_values_behind_a_longer_length() {
        let values: Vec<u32> = (0..100).map(|i| i * 1000).collect();
        let mut out = Vec::new();
        packed_field(&mut out, 4, &values);
        let mut body = Vec::new();
        for v in &values {
            varint(&mut body, u64::from(*v));
        }
        let mut expected = vec![0x22];
        varint(&mut expected, body.len() as u64);
        expected.extend(body);
        assert!(expected.len() > 0x80 + 2);
        assert_eq!(out, expected);
    }

    #[test]
    fn zigzag_interleaves_signs() {
        let z: Vec<u64> = [0, -1, 1, -2, 2, i64::MIN]
            .into_iter()
            .map(zigzag)
            .collect();
        assert_eq!(z, [0, 1, 2, 3, 4, u64::MAX]);
    }

    #[test]
    fn a_square_is_move_line_close_with_deltas() {
        let square = TileGeometry::Polygons(vec![vec![vec![[3, 6], [8, 12], [20, 34]]]]);
        let mut out = Vec::new();
        assert_eq!(commands(&square, &mut out, &mut Vec::new()), 3);
        // The example ring of the specification, §4.3.5.3.
        assert_eq!(out, [9, 6, 12, 18, 10, 12, 24, 44, 15]);
    }

    #[test]
    fn repeated_points_and_collapsed_parts_are_left_out() {
        let mut out = Vec::new();
        let line = TileGeometry::Lines(vec![vec![[1, 1], [1, 1]], vec![[2, 2], [2, 2], [5, 2]]]);
        commands(&line, &mut out, &mut Vec::new());
        // Only the second line: MoveTo (2,2), LineTo (5,2).
        assert_eq!(out, [9, 4, 4, 10, 6, 0]);
        out.clear();
        let ring = TileGeometry::Polygons(vec![vec![vec![[0, 0], [4, 0], [0, 0]]]]);
        commands(&ring, &mut out, &mut Vec::new());
        assert!(out.is_empty());
    }

    #[test]
    fn values_are_interned_by_kind_and_bits() {
        let mut layer = LayerWriter::new("l", 4096);
        let p = TileGeometry::Points(vec![[1, 1]]);
        let attributes = [
            ("a", Value::String("x")),
            ("b", Value::Int(1)),
            ("c", Value::Uint(1)),
            ("d", Value::Double(0.0)),
            ("e", Value::Double(-0.0)),
            ("f", Value::Null),
        ];
        assert!(layer.add(&p, Some(7), &attributes));
        assert!(layer.add(&p, None, &attributes));
        assert_eq!(
            (
                layer.key_index.len(),
                layer.strings.len() + layer.scalars.len()
            ),
            (5, 5)
        );
        assert_eq!(layer.tags, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    }
}
