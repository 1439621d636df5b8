//! Reading vector tiles back, and checking them against the MVT 2.1 specification.

use std::collections::{BTreeMap, HashSet};

use crate::pipeline::{TilePoint, area2};
use crate::{Error, Result};

/// A decoded tile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodedTile {
    /// Its layers, in order.
    pub layers: Vec<DecodedLayer>,
}

impl DecodedTile {
    /// The layer called `name`.
    pub fn layer(&self, name: &str) -> Option<&DecodedLayer> {
        self.layers.iter().find(|l| l.name == name)
    }
}

/// A decoded layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodedLayer {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Its extent.
    pub extent: u32,
    /// Its features.
    pub features: Vec<DecodedFeature>,
}

/// A decoded feature: geometry in tile space, attributes by key.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedFeature {
    /// Its id, if any.
    pub id: Option<u64>,
    /// Its geometry.
    pub geometry: crate::TileGeometry,
    /// Its attributes.
    pub attributes: BTreeMap<String, DecodedValue>,
}

/// A decoded attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum DecodedValue {
    /// string_value
    String(String),
    /// float_value
    Float(f32),
    /// double_value
    Double(f64),
    /// int_value
    Int(i64),
    /// uint_value
    Uint(u64),
    /// sint_value
    Sint(i64),
    /// bool_value
    Bool(bool),
}

/// Decodes a tile and checks it: version 2, geometry command counts, rings of at least three
/// points without a repeated closing vertex, each polygon an exterior ring (positive area in
/// tile space) followed by interior rings (negative), rings valid as MVT 2.1 §4.3.4.4 asks (no
/// repeated point, no spike, no ring crossing or touching itself, no two rings of a feature
/// crossing or sharing a stretch of boundary), tags in pairs that index existing keys and
/// values, unique feature ids within a layer.
///
/// ```
/// let decoded = geostack_tiles::decode(&[]).unwrap();
/// assert!(decoded.layers.is_empty());
/// assert!(geostack_tiles::decode(&[0x1a, 0x05, 0x01]).is_err());
/// ```
///
/// # Errors
///
/// [`Error::InvalidTile`] saying what is wrong.
pub fn decode(bytes: &[u8]) -> Result<DecodedTile> {
    let mut tile = DecodedTile::default();
    let mut r = Reader::new(bytes);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (3, 2) => tile.layers.push(layer(r.bytes()?)?),
            _ => r.skip(wire)?,
        }
    }
    Ok(tile)
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidTile(msg.into())
}

fn layer(bytes: &[u8]) -> Result<DecodedLayer> {
    let mut r = Reader::new(bytes);
    let (mut keys, mut values, mut raw_features) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = DecodedLayer {
        extent: 4096,
        version: 1,
        ..Default::default()
    };
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (15, 0) => out.version = u32::try_from(r.varint()?).map_err(|_| bad("version"))?,
            (1, 2) => out.name = string(r.bytes()?)?,
            (2, 2) => raw_features.push(r.bytes()?),
            (3, 2) => keys.push(string(r.bytes()?)?),
            (4, 2) => values.push(value(r.bytes()?)?),
            (5, 0) => out.extent = u32::try_from(r.varint()?).map_err(|_| bad("extent"))?,
            _ => r.skip(wire)?,
        }
    }
    if out.version != 2 {
        return Err(bad(format!(
            "layer {} has version {}, not 2",
            out.name, out.version
        )));
    }
    let mut ids = HashSet::new();
    for raw in raw_features {
        let f = feature(raw, &keys, &values)?;
        if let Some(id) = f.id
            && !ids.insert(id)
        {
            return Err(bad(format!("layer {} repeats feature id {id}", out.name)));
        }
        out.features.push(f);
    }
    Ok(out)
}

fn feature(bytes: &[u8], keys: &[String], values: &[DecodedValue]) -> Result<DecodedFeature> {
    let mut r = Reader::new(bytes);
    let (mut id, mut tags, mut kind, mut geometry) = (None, Vec::new(), 0, Vec::new());
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 0) => id = Some(r.varint()?),
            (2, 2) => tags = packed(r.bytes()?)?,
            (3, 0) => kind = r.varint()?,
            (4, 2) => geometry = packed(r.bytes()?)?,
            _ => r.skip(wire)?,
        }
    }
    if tags.len() % 2 != 0 {
        return Err(bad("odd number of tags"));
    }
    let mut attributes = BTreeMap::new();
    for pair in tags.chunks(2) {
        let key = keys
            .get(pair[0] as usize)
            .ok_or_else(|| bad("tag key index out of range"))?;
        let value = values
            .get(pair[1] as usize)
            .ok_or_else(|| bad("tag value index out of range"))?;
        attributes.insert(key.clone(), value.clone());
    }
    Ok(DecodedFeature {
        id,
        geometry: commands(kind, &geometry)?,
        attributes,
    })
}

/// Geometry commands → tile geometry, checking counts and rings.
fn commands(kind: u64, cmds: &[u64]) -> Result<crate::TileGeometry> {
    let (mut x, mut y) = (0i64, 0i64);
    let mut i = 0;
    let mut parts: Vec<Vec<TilePoint>> = Vec::new();
    let mut closed = Vec::new();
    while i < cmds.len() {
        let (id, count) = (cmds[i] & 7, (cmds[i] >> 3) as usize);
        i += 1;
        match id {
            1 | 2 => {
                if count == 0 {
                    return Err(bad("command with a count of 0"));
                }
                if id == 1 && kind != 1 && count != 1 {
                    return Err(bad("MoveTo with a count other than 1 in a line or polygon"));
                }
                if id == 2 && parts.is_empty() {
                    return Err(bad("LineTo before MoveTo"));
                }
                if i + 2 * count > cmds.len() {
                    return Err(bad("command parameters cut short"));
                }
                for _ in 0..count {
                    let zz = |v: u64| ((v >> 1) as i64) ^ -((v & 1) as i64);
                    x += zz(cmds[i]);
                    y += zz(cmds[i + 1]);
                    i += 2;
                    let p = [
                        i32::try_from(x).map_err(|_| bad("x"))?,
                        i32::try_from(y).map_err(|_| bad("y"))?,
                    ];
                    if id == 1 && (kind != 1 || parts.is_empty()) {
                        parts.push(vec![p]);
                        closed.push(false);
                    } else if let Some(part) = parts.last_mut() {
                        part.push(p);
                    }
                }
            }
            7 => {
                if count != 1 || kind != 3 {
                    return Err(bad(
                        "ClosePath outside a polygon or with a count other than 1",
                    ));
                }
                match closed.last_mut() {
                    Some(c) => *c = true,
                    None => return Err(bad("ClosePath before MoveTo")),
                }
            }
            _ => return Err(bad(format!("unknown command {id}"))),
        }
    }
    match kind {
        1 => Ok(crate::TileGeometry::Points(
            parts.into_iter().flatten().collect(),
        )),
        2 => {
            if parts.iter().any(|p| p.len() < 2) {
                return Err(bad("a line with fewer than 2 points"));
            }
            Ok(crate::TileGeometry::Lines(parts))
        }
        3 => {
            let mut polygons: Vec<Vec<Vec<TilePoint>>> = Vec::new();
            for (ring, closed) in parts.into_iter().zip(closed) {
                if !closed {
                    return Err(bad("a ring without ClosePath"));
                }
                if ring.len() < 3 {
                    return Err(bad("a ring with fewer than 3 points"));
                }
                if ring.first() == ring.last() {
                    return Err(bad("a ring repeats its closing vertex"));
                }
                let area = area2(&ring);
                if area > 0 {
                    polygons.push(vec![ring]);
                } else if area < 0 {
                    match polygons.last_mut() {
                        Some(p) => p.push(ring),
                        None => return Err(bad("a polygon starts with an interior ring")),
                    }
                } else {
                    return Err(bad("a ring with zero area"));
                }
            }
            crate::validity::check(&polygons).map_err(bad)?;
            Ok(crate::TileGeometry::Polygons(polygons))
        }
        _ => Err(bad(format!("unknown geometry type {kind}"))),
    }
}

fn value(bytes: &[u8]) -> Result<DecodedValue> {
    let mut r = Reader::new(bytes);
    let mut out = None;
    while let Some((field, wire)) = r.key()? {
        out = Some(match (field, wire) {
            (1, 2) => DecodedValue::String(string(r.bytes()?)?),
            (2, 5) => DecodedValue::Float(f32::from_le_bytes(r.fixed::<4>()?)),
            (3, 1) => DecodedValue::Double(f64::from_le_bytes(r.fixed::<8>()?)),
            (4, 0) => DecodedValue::Int(r.varint()? as i64),
            (5, 0) => DecodedValue::Uint(r.varint()?),
            (6, 0) => {
                let v = r.varint()?;
                DecodedValue::Sint(((v >> 1) as i64) ^ -((v & 1) as i64))
            }
            (7, 0) => DecodedValue::Bool(r.varint()? != 0),
            _ => {
                r.skip(wire)?;
                continue;
            }
        });
    }
    out.ok_or_else(|| bad("a value without a value"))
}

fn string(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("a string that is not UTF-8"))
}

fn packed(b: &[u8]) -> Result<Vec<u64>> {
    let mut r = Reader::new(b);
    let mut out = Vec::new();
    while !r.done() {
        out.push(r.varint()?);
    }
    Ok(out)
}

/// A protobuf reader: just what vector tiles use.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b }
    }

    fn done(&self) -> bool {
        self.b.is_empty()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .b
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn key(&mut self) -> Result<Option<(u64, u64)>> {
        if self.done() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some((k >> 3, k & 7)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(bad("truncated field"));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| bad("length"))?;
        self.take(n)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn skip(&mut self, wire: u64) -> Result<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => Err(bad(format!("unsupported wire type {wire}"))),
        }
    }
}
