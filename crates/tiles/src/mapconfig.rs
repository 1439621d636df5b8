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
    dataviews: Vec<Dataview>,
    analyses: Vec<(String, String)>,
    filters: Vec<Filter>,
    buffer: Option<u32>,
    token: String,
}

/// A dataview's filter (`filters.dataviews.<id>` of a config): the rows of its source it
/// keeps, as a predicate over the source's columns, built here from checked identifiers and
/// quoted literals only.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Filter {
    /// The dataview it belongs to.
    pub(crate) dataview: String,
    /// The analysis node it filters.
    pub(crate) source: String,
    /// The predicate.
    pub(crate) predicate: String,
}

/// What a layer of a [`MapConfig`] draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerKind {
    /// Rows of its SQL (`mapnik`, `cartodb`, `mvt`): in the tiles.
    Data,
    /// A background colour or image (`plain`): drawn by the client.
    Plain,
    /// Tiles of another server (`http`): drawn by the client.
    Http,
}

impl LayerKind {
    /// The type Windshaft reports for it (`mapnik` for every data layer).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "mapnik",
            Self::Plain => "plain",
            Self::Http => "http",
        }
    }
}

/// One layer of a [`MapConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct MapLayer {
    name: String,
    kind: LayerKind,
    sql: String,
    geom_column: String,
    id_column: Option<String>,
    columns: Vec<String>,
    interactivity: Vec<String>,
    cartocss: Option<String>,
    cartocss_version: Option<String>,
    source: Option<String>,
    /// A plain or http layer's options, as given (the client draws them).
    client_options: serde_json::Value,
    minzoom: u8,
    maxzoom: u8,
    /// Its `cartocss`, parsed.
    #[cfg(feature = "raster")]
    style: ParsedStyle,
}

/// A layer's parsed style; equal whenever the `cartocss` it came from is (which the layer
/// compares).
#[cfg(feature = "raster")]
#[derive(Clone, Debug, Default)]
struct ParsedStyle(Option<std::sync::Arc<crate::Style>>);

#[cfg(feature = "raster")]
impl PartialEq for ParsedStyle {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a dataview computes over its source ([`Dataview`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataviewKind {
    /// Categories of a column with a count or an aggregate of another column.
    Aggregation,
    /// Bins of a numeric or date column.
    Histogram,
    /// One aggregate (count, sum, avg, min, max) of a column.
    Formula,
}

impl DataviewKind {
    /// Its name in a map config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aggregation => "aggregation",
            Self::Histogram => "histogram",
            Self::Formula => "formula",
        }
    }
}

/// A dataview of a [`MapConfig`] (CARTO.js's widgets): a figure computed over the rows of an
/// analysis node, named by its id.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataview {
    id: String,
    kind: DataviewKind,
    source: String,
    sql: String,
    options: serde_json::Map<String, serde_json::Value>,
}

impl Dataview {
    /// Its id in the config.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What it computes.
    pub fn kind(&self) -> DataviewKind {
        self.kind
    }

    /// The analysis node it reads.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The SQL of its source (checked as one statement).
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Its options as given (`column`, `aggregation`, `aggregationColumn`, `bins`,
    /// `operation`…); the column names among them are plain identifiers.
    pub fn options(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.options
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    version: Option<String>,
    layers: Vec<RawLayer>,
    #[serde(default)]
    analyses: Vec<RawAnalysis>,
    #[serde(default)]
    dataviews: std::collections::BTreeMap<String, RawDataview>,
    #[serde(default)]
    buffersize: Option<RawBuffer>,
    #[serde(default)]
    filters: Option<RawFilters>,
}

#[derive(Deserialize)]
struct RawFilters {
    #[serde(default)]
    dataviews: std::collections::BTreeMap<String, RawFilter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(default)]
    accept: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    reject: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawBuffer {
    All(u32),
    ByFormat(std::collections::BTreeMap<String, u32>),
}

#[derive(Deserialize)]
struct RawAnalysis {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct RawDataview {
    #[serde(rename = "type")]
    kind: String,
    source: RawSource,
    #[serde(default)]
    options: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct RawSource {
    id: String,
}

#[derive(Deserialize)]
struct RawLayer {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    options: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RawOptions {
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    source: Option<RawSource>,
    #[serde(default)]
    sql_wrap: Option<String>,
    #[serde(default)]
    geom_column: Option<String>,
    #[serde(default)]
    minzoom: Option<u8>,
    #[serde(default)]
    maxzoom: Option<u8>,
    #[serde(default)]
    attributes: Option<RawAttributes>,
    #[serde(default)]
    interactivity: Option<RawInteractivity>,
    #[serde(default)]
    cartocss: Option<String>,
    #[serde(default)]
    cartocss_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawInteractivity {
    List(Vec<String>),
    Text(String),
}

#[derive(Deserialize)]
struct RawAttributes {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    columns: Vec<String>,
}

/// CARTO.js's placeholder for the layer's SQL in `sql_wrap`.
const SQL_PLACEHOLDER: &str = "<%= sql %>";

impl MapConfig {
    /// Parses and validates a map config: Windshaft's layergroup, and CARTO.js v4's form of it
    /// (layers whose `options.source.id` names a `source` node of `analyses`, `dataviews`,
    /// `buffersize`, `plain` and `http` layers, `cartocss`, `interactivity`, `sql_wrap`).
    ///
    /// ```
    /// let config = geostack_tiles::MapConfig::parse(r##"{
    ///     "buffersize": {"mvt": 0},
    ///     "layers": [{"id": "L1", "type": "mapnik",
    ///                 "options": {"cartocss": "#l{}", "source": {"id": "a0"}}}],
    ///     "analyses": [{"id": "a0", "type": "source", "params": {"query": "select * from places"}}],
    ///     "dataviews": {"by_name": {"type": "aggregation", "source": {"id": "a0"},
    ///                               "options": {"column": "name", "aggregation": "count"}}}
    /// }"##).unwrap();
    /// assert_eq!(config.layers()[0].sql(), "select * from places");
    /// assert_eq!(config.dataviews()[0].id(), "by_name");
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMapConfig`] for JSON that is not a layergroup, no layers or more than
    /// [`MAX_LAYERS`], an unsupported layer, analysis or dataview type, a data layer without
    /// SQL or source, a source that names no analysis, zooms out of range or reversed, column
    /// names that are not plain identifiers, or two layers with one name.
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
        // Analysis nodes: only sources (a query) are computed here.
        let mut analyses = Vec::with_capacity(raw.analyses.len());
        for a in raw.analyses {
            if a.kind != "source" {
                return Err(invalid(
                    None,
                    format!(
                        "analysis {}: unsupported analysis type {} (only source nodes)",
                        a.id, a.kind
                    ),
                ));
            }
            let query = a
                .params
                .get("query")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| invalid(None, format!("analysis {}: no query", a.id)))?;
            let query =
                checked_sql(query).map_err(|e| invalid(None, format!("analysis {}: {e}", a.id)))?;
            if analyses
                .iter()
                .any(|(id, _): &(String, String)| *id == a.id)
            {
                return Err(invalid(None, format!("analysis {} is defined twice", a.id)));
            }
            analyses.push((a.id, query));
        }
        let source_sql = |id: &str| {
            analyses
                .iter()
                .find(|(a, _)| a == id)
                .map(|(_, sql)| sql.clone())
        };
        let mut layers = Vec::with_capacity(raw.layers.len());
        for (i, l) in raw.layers.into_iter().enumerate() {
            let bad = |reason: &str| invalid(Some(i), reason.to_owned());
            let kind = match l.kind.as_deref() {
                None | Some("mapnik" | "cartodb" | "mvt") => LayerKind::Data,
                Some("plain") => LayerKind::Plain,
                Some("http") => LayerKind::Http,
                Some(other) => return Err(bad(&format!("unsupported layer type {other}"))),
            };
            let name = l.id.clone().unwrap_or_else(|| format!("layer{i}"));
            if name.is_empty() || name.len() > 64 {
                return Err(bad("a layer id must have 1 to 64 characters"));
            }
            if layers.iter().any(|other: &MapLayer| other.name == name) {
                return Err(bad(&format!("layer id {name} is used twice")));
            }
            if kind != LayerKind::Data {
                layers.push(MapLayer {
                    name,
                    kind,
                    sql: String::new(),
                    geom_column: String::new(),
                    id_column: None,
                    columns: Vec::new(),
                    interactivity: Vec::new(),
                    #[cfg(feature = "raster")]
                    style: ParsedStyle::default(),
                    cartocss: None,
                    cartocss_version: None,
                    source: None,
                    client_options: serde_json::Value::Object(l.options),
                    minzoom: 0,
                    maxzoom: MAX_ZOOM,
                });
                continue;
            }
            let options: RawOptions = serde_json::from_value(serde_json::Value::Object(l.options))
                .map_err(|e| bad(&format!("invalid options: {e}")))?;
            let source = options.source.map(|s| s.id);
            let sql = match (&options.sql, &source) {
                (Some(sql), _) if sql.trim().is_empty() => return Err(bad("empty sql")),
                (Some(sql), _) => sql.clone(),
                (None, Some(id)) => {
                    source_sql(id).ok_or_else(|| bad(&format!("no analysis {id}")))?
                }
                (None, None) => return Err(bad("a layer needs sql or a source")),
            };
            let sql = match options.sql_wrap.as_deref() {
                Some(wrap) if wrap.contains(SQL_PLACEHOLDER) => wrap.replace(SQL_PLACEHOLDER, &sql),
                Some(_) => return Err(bad("sql_wrap has no <%= sql %>")),
                None => sql,
            };
            // Checked on its own before anything wraps it: one complete statement whose
            // parentheses close in order, so the tile's wrapper stays outermost.
            let sql = checked_sql(&sql).map_err(|e| bad(&e))?;
            let minzoom = options.minzoom.unwrap_or(0);
            let maxzoom = options.maxzoom.unwrap_or(MAX_ZOOM);
            if maxzoom > MAX_ZOOM || minzoom > maxzoom {
                return Err(bad("expected 0 <= minzoom <= maxzoom <= 30"));
            }
            let geom_column = options
                .geom_column
                .unwrap_or_else(|| "the_geom_webmercator".into());
            let attributes = options.attributes.unwrap_or(RawAttributes {
                id: None,
                columns: Vec::new(),
            });
            let interactivity: Vec<String> = match options.interactivity {
                None => Vec::new(),
                Some(RawInteractivity::List(list)) => list,
                Some(RawInteractivity::Text(text)) => text
                    .split(',')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty())
                    .collect(),
            };
            for name in std::iter::once(&geom_column)
                .chain(&attributes.columns)
                .chain(&attributes.id)
                .chain(&interactivity)
            {
                if !is_identifier(name) {
                    return Err(bad(&format!("{name:?} is not a plain column name")));
                }
            }
            layers.push(MapLayer {
                name,
                kind,
                sql,
                geom_column,
                id_column: attributes.id,
                columns: attributes.columns,
                interactivity,
                #[cfg(feature = "raster")]
                style: ParsedStyle(match &options.cartocss {
                    Some(text) => Some(std::sync::Arc::new(
                        crate::Style::parse(text).map_err(|e| bad(&e.to_string()))?,
                    )),
                    None => None,
                }),
                cartocss: options.cartocss,
                cartocss_version: options.cartocss_version,
                source,
                client_options: serde_json::Value::Null,
                minzoom,
                maxzoom,
            });
        }
        let mut dataviews = Vec::with_capacity(raw.dataviews.len());
        for (id, d) in raw.dataviews {
            let bad = |reason: String| invalid(None, format!("dataview {id}: {reason}"));
            let kind = match d.kind.as_str() {
                "aggregation" => DataviewKind::Aggregation,
                "histogram" => DataviewKind::Histogram,
                "formula" => DataviewKind::Formula,
                other => return Err(bad(format!("unsupported dataview type {other}"))),
            };
            let sql = source_sql(&d.source.id)
                .ok_or_else(|| bad(format!("no analysis {}", d.source.id)))?;
            for name in ["column", "aggregationColumn"] {
                match d.options.get(name) {
                    None | Some(serde_json::Value::Null) => {}
                    Some(serde_json::Value::String(c)) if is_identifier(c) => {}
                    Some(other) => {
                        return Err(bad(format!("{name} {other} is not a plain column name")));
                    }
                }
            }
            dataviews.push(Dataview {
                id,
                kind,
                source: d.source.id,
                sql,
                options: d.options,
            });
        }
        let mut filters = Vec::new();
        for (id, f) in raw.filters.map(|f| f.dataviews).unwrap_or_default() {
            let bad = |reason: String| invalid(None, format!("filter of dataview {id}: {reason}"));
            let dataview = dataviews
                .iter()
                .find(|d| d.id == id)
                .ok_or_else(|| bad("no such dataview".into()))?;
            let predicate = filter_predicate(dataview, &f).map_err(bad)?;
            if let Some(predicate) = predicate {
                filters.push(Filter {
                    dataview: id.clone(),
                    source: dataview.source.clone(),
                    predicate,
                });
            }
        }
        // A layer shows the rows its source's filters keep.
        for layer in &mut layers {
            let Some(source) = &layer.source else {
                continue;
            };
            let predicates: Vec<&str> = filters
                .iter()
                .filter(|f| f.source == *source)
                .map(|f| f.predicate.as_str())
                .collect();
            if !predicates.is_empty() {
                layer.sql = format!(
                    "SELECT * FROM (\n{}\n) AS _filtered WHERE {}",
                    layer.sql,
                    predicates.join(" AND ")
                );
            }
        }
        let buffer = match raw.buffersize {
            None => None,
            Some(RawBuffer::All(n)) => Some(n),
            Some(RawBuffer::ByFormat(by)) => by.get("mvt").copied(),
        };
        let token = token_of(&layers, &dataviews, &filters, buffer);
        Ok(Self {
            layers,
            dataviews,
            analyses,
            filters,
            buffer,
            token,
        })
    }

    /// The layers, in drawing order.
    pub fn layers(&self) -> &[MapLayer] {
        &self.layers
    }

    /// The dataviews, by id.
    pub fn dataviews(&self) -> &[Dataview] {
        &self.dataviews
    }

    /// The dataview `id`.
    pub fn dataview(&self, id: &str) -> Option<&Dataview> {
        self.dataviews.iter().find(|d| d.id == id)
    }

    /// The analysis nodes (their id and query), in the order given.
    pub fn analyses(&self) -> &[(String, String)] {
        &self.analyses
    }

    /// The predicates of the filters on `source` (its dataviews'), but `except`'s own: what a
    /// dataview of that source computes over (its own filter too when it asks).
    pub(crate) fn filters_of(&self, source: &str, except: Option<&str>) -> Vec<&str> {
        self.filters
            .iter()
            .filter(|f| f.source == source && Some(f.dataview.as_str()) != except)
            .map(|f| f.predicate.as_str())
            .collect()
    }

    /// The tile buffer asked for (`buffersize`, its `mvt` member), in tile units.
    pub fn buffer(&self) -> Option<u32> {
        self.buffer
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
            if layer.kind != LayerKind::Data {
                return Err(invalid(format!(
                    "layer {i} is a {} layer: its tiles are drawn by the client",
                    layer.kind.as_str()
                )));
            }
            if indexes[..n].contains(&i) {
                return Err(invalid(format!("layer {i} chosen twice")));
            }
            layers.push(layer.clone());
        }
        Ok(Self {
            layers,
            dataviews: self.dataviews.clone(),
            analyses: self.analyses.clone(),
            filters: self.filters.clone(),
            buffer: self.buffer,
            token: self.token.clone(),
        })
    }
}

impl MapLayer {
    /// The layer's name in the tile.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it draws.
    pub fn kind(&self) -> LayerKind {
        self.kind
    }

    /// Whether its rows are in the tiles (a data layer).
    pub fn is_data(&self) -> bool {
        self.kind == LayerKind::Data
    }

    /// Its `cartocss`, parsed when the config was (a config whose CartoCSS does not parse is
    /// refused); `None` without one.
    #[cfg(feature = "raster")]
    pub fn style(&self) -> Option<&crate::Style> {
        self.style.0.as_deref()
    }

    #[cfg(feature = "raster")]
    pub(crate) fn shared_style(&self) -> Option<std::sync::Arc<crate::Style>> {
        self.style.0.clone()
    }

    /// The columns a raster tile of it reads: its attributes, its interactivity and what its
    /// style's filters and values name.
    #[cfg(feature = "raster")]
    pub(crate) fn raster_columns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let style = self.style().map(crate::Style::fields).unwrap_or_default();
        for c in self.columns.iter().chain(&self.interactivity).chain(style) {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    /// The columns its interactivity (UTFGrid, CARTO.js's feature events) names.
    pub fn interactivity(&self) -> &[String] {
        &self.interactivity
    }

    /// Its CartoCSS, as given.
    pub fn cartocss(&self) -> Option<&str> {
        self.cartocss.as_deref()
    }

    /// Its CartoCSS version, as given.
    pub fn cartocss_version(&self) -> Option<&str> {
        self.cartocss_version.as_deref()
    }

    /// The analysis node it reads, when it names one.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// A plain or http layer's options, as given (`color`, `urlTemplate`…); `null` for data
    /// layers.
    pub fn client_options(&self) -> &serde_json::Value {
        &self.client_options
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

fn token_of(
    layers: &[MapLayer],
    dataviews: &[Dataview],
    filters: &[Filter],
    buffer: Option<u32>,
) -> String {
    let normalized = serde_json::json!([
        layers
            .iter()
            .map(|l| serde_json::json!([
                l.name,
                l.kind.as_str(),
                l.sql,
                l.geom_column,
                l.id_column,
                l.columns,
                l.interactivity,
                l.cartocss,
                l.cartocss_version,
                sorted(&l.client_options),
                l.minzoom,
                l.maxzoom
            ]))
            .collect::<Vec<_>>(),
        dataviews
            .iter()
            .map(|d| serde_json::json!([
                d.id,
                d.kind.as_str(),
                d.sql,
                sorted(&serde_json::Value::Object(d.options.clone()))
            ]))
            .collect::<Vec<_>>(),
        filters
            .iter()
            .map(|f| serde_json::json!([f.dataview, f.predicate]))
            .collect::<Vec<_>>(),
        buffer,
    ]);
    let digest = Sha256::digest(normalized.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The predicate a dataview's filter stands for: categories accepted or rejected (an
/// aggregation's), or a range `[min, max)` (a histogram's). `None` keeps every row.
fn filter_predicate(
    dataview: &Dataview,
    f: &RawFilter,
) -> std::result::Result<Option<String>, String> {
    let column = dataview
        .options
        .get("column")
        .and_then(serde_json::Value::as_str)
        .ok_or("its dataview has no column")?;
    let c = format!("\"{column}\"");
    let mut parts = Vec::new();
    match dataview.kind {
        DataviewKind::Aggregation => {
            if f.min.is_some() || f.max.is_some() {
                return Err("an aggregation is filtered by accept or reject".into());
            }
            let list = |values: &[serde_json::Value]| -> std::result::Result<String, String> {
                values
                    .iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => quote_literal(s),
                        serde_json::Value::Number(n) => quote_literal(&n.to_string()),
                        serde_json::Value::Bool(b) => quote_literal(&b.to_string()),
                        _ => Err("categories are strings or numbers".into()),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(|l| l.join(", "))
            };
            if let Some(accept) = &f.accept {
                parts.push(if accept.is_empty() {
                    "false".to_owned()
                } else {
                    format!("{c}::text IN ({})", list(accept)?)
                });
            }
            if let Some(reject) = &f.reject
                && !reject.is_empty()
            {
                parts.push(format!(
                    "({c} IS NULL OR {c}::text NOT IN ({}))",
                    list(reject)?
                ));
            }
        }
        DataviewKind::Histogram => {
            if f.accept.is_some() || f.reject.is_some() {
                return Err("a histogram is filtered by min and max".into());
            }
            for (bound, op) in [(f.min, ">="), (f.max, "<")] {
                if let Some(v) = bound {
                    if !v.is_finite() {
                        return Err("min and max are finite numbers".into());
                    }
                    parts.push(format!("{c}::float8 {op} {v:?}::float8"));
                }
            }
        }
        DataviewKind::Formula => return Err("a formula takes no filter".into()),
    }
    Ok((!parts.is_empty()).then(|| format!("({})", parts.join(" AND "))))
}

/// `text` as an SQL string literal, for a session with `standard_conforming_strings` on (the
/// sandbox sets it): quotes doubled, backslashes literal; a NUL refused.
pub(crate) fn quote_literal(text: &str) -> std::result::Result<String, String> {
    if text.contains('\0') {
        return Err("a value contains a NUL character".into());
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

/// `value` with every object's members in name order, whatever order they came in.
fn sorted(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Array(
                members
                    .into_iter()
                    .map(|(k, v)| serde_json::json!([k, sorted(v)]))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(sorted).collect())
        }
        other => other.clone(),
    }
}

/// `sql` checked as one statement on its own (with the `postgis` feature, by sqlpass), as
/// it will stand in a wrapper.
fn checked_sql(sql: &str) -> std::result::Result<String, String> {
    #[cfg(feature = "postgis")]
    {
        sqlpass::Statement::new(sql)
            .map(|s| s.as_str().to_owned())
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "postgis"))]
    {
        Ok(sql.to_owned())
    }
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
            r##"{ "layers": [ { "options": { "maxzoom": 5, "sql": "select 1", "minzoom": 1, "unknown": "#x{}" }, "id": "a", "type": "mapnik" } ], "version": "1.3.0", "extra": true }"##,
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
    fn carto_js_configs_resolve_layer_and_dataview_sources_from_analyses() {
        let v4 = r##"{
            "buffersize": {"mvt": 0},
            "layers": [
                {"id": "bg", "type": "plain", "options": {"color": "#fff"}},
                {"id": "L1", "type": "mapnik", "options": {
                    "cartocss": "#l { marker-width: 4; }", "cartocss_version": "3.0.12",
                    "source": {"id": "a0"}, "interactivity": ["cartodb_id", "name"]}},
                {"id": "L2", "type": "cartodb", "options": {
                    "source": {"id": "a0"}, "interactivity": "cartodb_id, pop",
                    "sql_wrap": "select * from (<%= sql %>) w where pop > 0"}},
                {"id": "osm", "type": "http", "options": {"urlTemplate": "https://tile/{z}/{x}/{y}.png"}}
            ],
            "analyses": [{"id": "a0", "type": "source", "params": {"query": "select * from places"}}],
            "dataviews": {
                "cats": {"type": "aggregation", "source": {"id": "a0"},
                         "options": {"column": "name", "aggregation": "count", "aggregationColumn": null}},
                "pops": {"type": "histogram", "source": {"id": "a0"}, "options": {"column": "pop", "bins": 10}}
            }
        }"##;
        let c = MapConfig::parse(v4).unwrap();
        let kinds: Vec<_> = c.layers().iter().map(|l| l.kind().as_str()).collect();
        assert_eq!(kinds, ["plain", "mapnik", "mapnik", "http"]);
        assert_eq!(c.layers()[1].sql(), "select * from places");
        assert_eq!(c.layers()[1].interactivity(), ["cartodb_id", "name"]);
        assert_eq!(c.layers()[1].cartocss(), Some("#l { marker-width: 4; }"));
        assert_eq!(
            c.layers()[2].sql(),
            "select * from (select * from places) w where pop > 0"
        );
        assert_eq!(c.layers()[2].interactivity(), ["cartodb_id", "pop"]);
        assert_eq!(c.layers()[0].client_options()["color"], "#fff");
        assert_eq!(c.buffer(), Some(0));
        let ids: Vec<_> = c.dataviews().iter().map(Dataview::id).collect();
        assert_eq!(ids, ["cats", "pops"]);
        assert_eq!(c.dataview("pops").unwrap().kind(), DataviewKind::Histogram);
        assert_eq!(c.dataview("cats").unwrap().sql(), "select * from places");
        // Tiles are of data layers only.
        assert!(c.select(&[1, 2]).is_ok());
        assert!(c.select(&[0]).is_err());
        // The same config in another member order has the same token; another style not.
        let reordered = v4.replace(
            r#""id": "L1", "type": "mapnik""#,
            r#""type": "mapnik", "id": "L1""#,
        );
        assert_eq!(MapConfig::parse(&reordered).unwrap().token(), c.token());
        let restyled = v4.replace("marker-width: 4", "marker-width: 5");
        assert_ne!(MapConfig::parse(&restyled).unwrap().token(), c.token());
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
            (
                r#"{"layers":[{"options":{"source":{"id":"nope"}}}]}"#,
                Some(0),
                "no analysis nope",
            ),
            (
                r#"{"layers":[{"options":{}}]}"#,
                Some(0),
                "needs sql or a source",
            ),
            (
                r#"{"layers":[{"options":{"sql":"x"}}],"analyses":[{"id":"b","type":"buffer","params":{}}]}"#,
                None,
                "unsupported analysis type buffer",
            ),
            (
                r#"{"layers":[{"options":{"sql":"x"}}],"analyses":[{"id":"a","type":"source","params":{"query":"x"}}],"dataviews":{"d":{"type":"list","source":{"id":"a"}}}}"#,
                None,
                "unsupported dataview type list",
            ),
            (
                r#"{"layers":[{"options":{"sql":"x"}}],"analyses":[{"id":"a","type":"source","params":{"query":"x"}}],"dataviews":{"d":{"type":"formula","source":{"id":"a"},"options":{"column":"a;b"}}}}"#,
                None,
                "not a plain column name",
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
