//! Windshaft-style map configs: several SQL layers in one tile, validated, with a stable token.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{Error, MAX_ZOOM, Result};

/// The most layers a map config may have.
pub const MAX_LAYERS: usize = 16;

/// A layergroup as Windshaft takes it:
/// `{"version":"1.3.0","layers":[{"type":"mapnik","id":"…","options":{"sql":"…", …}}]}`.
/// Only what vector tiles need is read; unknown members are ignored, as Windshaft does.
///
/// ```
/// let config = geostack_tiles::MapConfig::parse(r#"{
///     "version": "1.3.0",
///     "layers": [{
///         "type": "mapnik",
///         "id": "places",
///         "options": {
///             "sql": "select * from places",
///             "geom_column": "the_geom_webmercator",
///             "minzoom": 2,
///             "attributes": {"id": "cartodb_id", "columns": ["name", "pop"]}
///         }
///     }]
/// }"#).unwrap();
/// assert_eq!(config.layers()[0].name(), "places");
/// assert_eq!(config.token().len(), 32);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MapConfig {
    layers: Vec<MapLayer>,
    token: String,
}

/// One layer of a [`MapConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct MapLayer {
    name: String,
    sql: String,
    geom_column: String,
    id_column: Option<String>,
    columns: Vec<String>,
    minzoom: u8,
    maxzoom: u8,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    version: Option<String>,
    layers: Vec<RawLayer>,
}

#[derive(Deserialize)]
struct RawLayer {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    options: RawOptions,
}

#[derive(Deserialize)]
struct RawOptions {
    sql: String,
    #[serde(default)]
    geom_column: Option<String>,
    #[serde(default)]
    minzoom: Option<u8>,
    #[serde(default)]
    maxzoom: Option<u8>,
    #[serde(default)]
    attributes: Option<RawAttributes>,
}

#[derive(Deserialize)]
struct RawAttributes {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    columns: Vec<String>,
}

impl MapConfig {
    /// Parses and validates a map config.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMapConfig`] for JSON that is not a layergroup, no layers or more than
    /// [`MAX_LAYERS`], an unsupported layer type, an empty SQL, zooms out of range or reversed,
    /// column names that are not plain identifiers, or two layers with one name.
    pub fn parse(json: &str) -> Result<Self> {
        let invalid =
            |layer: Option<usize>, reason: String| Error::InvalidMapConfig { layer, reason };
        let raw: RawConfig = serde_json::from_str(json)
            .map_err(|e| invalid(None, format!("not a layergroup: {e}")))?;
        if let Some(v) = &raw.version
            && !v.starts_with("1.")
        {
            return Err(invalid(None, format!("unsupported version {v}")));
        }
        if raw.layers.is_empty() || raw.layers.len() > MAX_LAYERS {
            return Err(invalid(None, format!("expected 1 to {MAX_LAYERS} layers")));
        }
        let mut layers = Vec::with_capacity(raw.layers.len());
        for (i, l) in raw.layers.into_iter().enumerate() {
            let bad = |reason: &str| invalid(Some(i), reason.to_owned());
            match l.kind.as_deref() {
                None | Some("mapnik" | "cartodb" | "mvt") => {}
                Some(other) => return Err(bad(&format!("unsupported layer type {other}"))),
            }
            if l.options.sql.trim().is_empty() {
                return Err(bad("empty sql"));
            }
            // Checked on its own before anything wraps it: one complete statement whose
            // parentheses close in order, so the tile's wrapper stays outermost.
            #[cfg(feature = "postgis")]
            let sql = sqlpass::Statement::new(&l.options.sql)
                .map_err(|e| bad(&e.to_string()))?
                .as_str()
                .to_owned();
            #[cfg(not(feature = "postgis"))]
            let sql = l.options.sql;
            let minzoom = l.options.minzoom.unwrap_or(0);
            let maxzoom = l.options.maxzoom.unwrap_or(MAX_ZOOM);
            if maxzoom > MAX_ZOOM || minzoom > maxzoom {
                return Err(bad("expected 0 <= minzoom <= maxzoom <= 30"));
            }
            let geom_column = l
                .options
                .geom_column
                .unwrap_or_else(|| "the_geom_webmercator".into());
            let attributes = l.options.attributes.unwrap_or(RawAttributes {
                id: None,
                columns: Vec::new(),
            });
            for name in std::iter::once(&geom_column)
                .chain(&attributes.columns)
                .chain(&attributes.id)
            {
                if !is_identifier(name) {
                    return Err(bad(&format!("{name:?} is not a plain column name")));
                }
            }
            let name = l.id.unwrap_or_else(|| format!("layer{i}"));
            if name.is_empty() || name.len() > 64 {
                return Err(bad("a layer id must have 1 to 64 characters"));
            }
            if layers.iter().any(|other: &MapLayer| other.name == name) {
                return Err(bad(&format!("layer id {name} is used twice")));
            }
            layers.push(MapLayer {
                name,
                sql,
                geom_column,
                id_column: attributes.id,
                columns: attributes.columns,
                minzoom,
                maxzoom,
            });
        }
        let token = token_of(&layers);
        Ok(Self { layers, token })
    }

    /// The layers, in drawing order.
    pub fn layers(&self) -> &[MapLayer] {
        &self.layers
    }

    /// A stable token naming this config: 32 hex characters of SHA-256 over its normalized form
    /// (what is read, in a fixed order), so the same config always gets the same token whatever
    /// its member order, spacing or ignored members.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The config with only the layers at `indexes` (0-based, in the order given), as
    /// Windshaft's `/:token/:layers/…` URLs choose them; it keeps this config's token.
    ///
    /// ```
    /// let config = geostack_tiles::MapConfig::parse(r#"{"layers": [
    ///     {"id": "a", "options": {"sql": "select 1"}},
    ///     {"id": "b", "options": {"sql": "select 2"}}]}"#).unwrap();
    /// let b = config.select(&[1]).unwrap();
    /// assert_eq!(b.layers()[0].name(), "b");
    /// assert_eq!(b.token(), config.token());
    /// assert!(config.select(&[2]).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMapConfig`] for no index, an index past the last layer, or one given twice.
    pub fn select(&self, indexes: &[usize]) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidMapConfig {
            layer: None,
            reason,
        };
        if indexes.is_empty() {
            return Err(invalid("no layer chosen".into()));
        }
        let mut layers = Vec::with_capacity(indexes.len());
        for (n, &i) in indexes.iter().enumerate() {
            let layer = self.layers.get(i).ok_or_else(|| {
                invalid(format!("no layer {i}: the map has {}", self.layers.len()))
            })?;
            if indexes[..n].contains(&i) {
                return Err(invalid(format!("layer {i} chosen twice")));
            }
            layers.push(layer.clone());
        }
        Ok(Self {
            layers,
            token: self.token.clone(),
        })
    }
}

impl MapLayer {
    /// The layer's name in the tile.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its SQL.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Its geometry column (EPSG:3857), `the_geom_webmercator` by default as in CARTO.
    pub fn geom_column(&self) -> &str {
        &self.geom_column
    }

    /// The column used as feature id.
    pub fn id_column(&self) -> Option<&str> {
        self.id_column.as_deref()
    }

    /// The attribute columns.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The lowest zoom it is drawn at.
    pub fn minzoom(&self) -> u8 {
        self.minzoom
    }

    /// The highest zoom it is drawn at.
    pub fn maxzoom(&self) -> u8 {
        self.maxzoom
    }

    /// Whether it is drawn at zoom `z`.
    pub fn visible_at(&self, z: u8) -> bool {
        (self.minzoom..=self.maxzoom).contains(&z)
    }
}

fn token_of(layers: &[MapLayer]) -> String {
    let normalized = serde_json::json!(
        layers
            .iter()
            .map(|l| serde_json::json!([
                l.name,
                l.sql,
                l.geom_column,
                l.id_column,
                l.columns,
                l.minzoom,
                l.maxzoom
            ]))
            .collect::<Vec<_>>()
    );
    let digest = Sha256::digest(normalized.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"version":"1.3.0","layers":[{"type":"mapnik","id":"a","options":{"sql":"select 1","minzoom":1,"maxzoom":5}}]}"#;

    #[test]
    fn the_token_ignores_member_order_spacing_and_unknown_members() {
        let a = MapConfig::parse(BASE).unwrap();
        let b = MapConfig::parse(
            r##"{ "layers": [ { "options": { "maxzoom": 5, "sql": "select 1", "minzoom": 1, "cartocss": "#x{}" }, "id": "a", "type": "mapnik" } ], "version": "1.3.0" }"##,
        )
        .unwrap();
        assert_eq!(a.token(), b.token());
        let c = MapConfig::parse(&BASE.replace("select 1", "select 2")).unwrap();
        assert_ne!(a.token(), c.token());
        assert!(a.token().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(a.layers()[0].visible_at(5) && !a.layers()[0].visible_at(6));
        assert_eq!(a.layers()[0].geom_column(), "the_geom_webmercator");
    }

    #[test]
    fn invalid_configs_say_which_layer_and_why() {
        let cases = [
            ("not json", None, "not a layergroup"),
            (r#"{"layers":[]}"#, None, "expected 1 to 16 layers"),
            (
                r#"{"version":"2.0.0","layers":[{"options":{"sql":"x"}}]}"#,
                None,
                "unsupported version",
            ),
            (
                r#"{"layers":[{"type":"torque","options":{"sql":"x"}}]}"#,
                Some(0),
                "unsupported layer type",
            ),
            (
                r#"{"layers":[{"options":{"sql":"x"}},{"options":{"sql":"  "}}]}"#,
                Some(1),
                "empty sql",
            ),
            (
                r#"{"layers":[{"options":{"sql":"x","minzoom":9,"maxzoom":3}}]}"#,
                Some(0),
                "minzoom",
            ),
            (
                r#"{"layers":[{"options":{"sql":"x","geom_column":"g; drop"}}]}"#,
                Some(0),
                "not a plain column name",
            ),
            (
                r#"{"layers":[{"options":{"sql":"x","attributes":{"columns":["a\"b"]}}}]}"#,
                Some(0),
                "not a plain column name",
            ),
            (
                r#"{"layers":[{"id":"x","options":{"sql":"a"}},{"id":"x","options":{"sql":"b"}}]}"#,
                Some(1),
                "used twice",
            ),
        ];
        for (json, layer, reason) in cases {
            match MapConfig::parse(json) {
                Err(Error::InvalidMapConfig {
                    layer: l,
                    reason: r,
                }) => {
                    assert_eq!(l, layer, "{json}");
                    assert!(r.contains(reason), "{json}: {r}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }
}
