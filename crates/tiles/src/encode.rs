//! Features → a Mapbox Vector Tile, written by [`crate::wire`].

use std::collections::HashSet;

use foldhash::fast::RandomState;
use geo_traits::to_geo::ToGeoGeometry;
use geo_types::Geometry;

use crate::pipeline::{Frame, Prepared, TileGeometry, prepare};
use crate::wire::LayerWriter;
use crate::{Error, Result, TileCoord, TileOptions};

/// An attribute value. `Null` is omitted from the feature, as MVT has no null.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value<'a> {
    /// A string.
    String(&'a str),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A double.
    Double(f64),
    /// A boolean.
    Bool(bool),
    /// No value: the attribute is left out.
    Null,
}

/// What happened to the features offered to a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Encoded.
    pub added: u64,
    /// Not near the tile.
    pub outside: u64,
    /// Near the tile, but nothing survived clipping and quantization.
    pub degenerate: u64,
    /// EMPTY geometries.
    pub empty: u64,
    /// Bytes that are not WKB, or geometry collections.
    pub invalid: u64,
    /// Ids given twice: the feature kept, its id dropped.
    pub duplicate_ids: u64,
    /// Left out because the layer had reached its feature cap.
    pub capped: u64,
}

/// Builds one tile, layer by layer.
///
/// ```
/// use geostack_tiles::{TileBuilder, TileCoord, TileOptions, Value};
///
/// let coord = TileCoord::new_checked(0, 0, 0).unwrap();
/// let mut tile = TileBuilder::new(coord, &TileOptions::default());
/// let mut layer = tile.layer("places");
/// let point = geo_types::Geometry::Point(geo_types::Point::new(0.0, 0.0)); // EPSG:3857
/// layer.add_geometry(&point, Some(1), &[("name", Value::String("origin"))]).unwrap();
/// let stats = layer.finish().unwrap();
/// assert_eq!(stats.added, 1);
/// let bytes = tile.into_bytes().unwrap();
/// let decoded = geostack_tiles::decode(&bytes).unwrap();
/// assert_eq!(decoded.layers[0].features[0].id, Some(1));
/// ```
pub struct TileBuilder {
    coord: TileCoord,
    options: TileOptions,
    /// The finished layers' messages.
    bytes: Vec<u8>,
    names: Vec<String>,
}

impl TileBuilder {
    /// An empty tile.
    pub fn new(coord: TileCoord, options: &TileOptions) -> Self {
        Self {
            coord,
            options: options.clone(),
            bytes: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Starts a layer; it joins the tile when [`LayerBuilder::finish`] is called and has
    /// features.
    pub fn layer(&mut self, name: &str) -> LayerBuilder<'_> {
        let layer = LayerWriter::new(name, self.options.extent);
        LayerBuilder {
            max_features: self.options.max_features,
            frame: Frame::new(self.coord, &self.options),
            tile: self,
            layer,
            ids: HashSet::default(),
            stats: LayerStats::default(),
        }
    }

    /// The tile's box grown by the buffer, in EPSG:3857 metres.
    pub fn buffered_bounds(&self) -> crate::Bounds {
        Frame::new(self.coord, &self.options).buffered
    }

    /// The number of layers with features.
    pub fn layers(&self) -> usize {
        self.names.len()
    }

    /// The tile's encoded size so far, in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The encoded tile (empty when no layer has features).
    ///
    /// # Errors
    ///
    /// None today: the signature leaves room for an encoder that can fail.
    pub fn into_bytes(self) -> Result<Vec<u8>> {
        Ok(self.bytes)
    }
}

/// Builds one layer of a [`TileBuilder`].
pub struct LayerBuilder<'t> {
    max_features: Option<usize>,
    tile: &'t mut TileBuilder,
    layer: LayerWriter,
    frame: Frame,
    ids: HashSet<u64, RandomState>,
    stats: LayerStats,
}

impl LayerBuilder<'_> {
    /// The options of its tile.
    pub fn tile_options(&self) -> &TileOptions {
        &self.tile.options
    }

    /// Its tile.
    pub fn coord(&self) -> TileCoord {
        self.tile.coord
    }

    /// Adds a feature whose geometry is (E)WKB in EPSG:3857. Invalid and EMPTY input is
    /// skipped and counted, never a panic.
    ///
    /// # Errors
    ///
    /// None today (a geometry with nothing left to draw is counted as degenerate); the
    /// signature leaves room for an encoder that refuses.
    pub fn add_wkb(
        &mut self,
        wkb: &[u8],
        id: Option<u64>,
        attributes: &[(&str, Value<'_>)],
    ) -> Result<()> {
        match wkb::reader::read_wkb(wkb) {
            Ok(g) => match g.try_to_geometry() {
                Some(g) => self.add_geometry(&g, id, attributes),
                None => {
                    self.stats.empty += 1;
                    Ok(())
                }
            },
            Err(_) => {
                self.stats.invalid += 1;
                Ok(())
            }
        }
    }

    /// Adds a feature whose geometry is in EPSG:3857 metres.
    ///
    /// # Errors
    ///
    /// None today (a geometry with nothing left to draw is counted as degenerate); the
    /// signature leaves room for an encoder that refuses.
    pub fn add_geometry(
        &mut self,
        geometry: &Geometry<f64>,
        id: Option<u64>,
        attributes: &[(&str, Value<'_>)],
    ) -> Result<()> {
        match prepare(geometry, &self.frame) {
            Ok(g) => self.add_tile_geometry(&g, id, attributes),
            Err(Prepared::Outside) => {
                self.stats.outside += 1;
                Ok(())
            }
            Err(Prepared::Degenerate) => {
                self.stats.degenerate += 1;
                Ok(())
            }
            Err(Prepared::Unsupported) => {
                self.stats.invalid += 1;
                Ok(())
            }
        }
    }

    /// Adds a feature already in tile space.
    ///
    /// # Errors
    ///
    /// None today (a geometry with nothing left to draw is counted as degenerate); the
    /// signature leaves room for an encoder that refuses.
    pub fn add_tile_geometry(
        &mut self,
        geometry: &TileGeometry,
        id: Option<u64>,
        attributes: &[(&str, Value<'_>)],
    ) -> Result<()> {
        if self
            .max_features
            .is_some_and(|max| self.stats.added >= max as u64)
        {
            self.stats.capped += 1;
            return Ok(());
        }
        let fresh = id.filter(|id| !self.ids.contains(id));
        if !self.layer.add(geometry, fresh, attributes) {
            self.stats.degenerate += 1;
            return Ok(());
        }
        if let Some(id) = id {
            if fresh.is_some() {
                self.ids.insert(id);
            } else {
                self.stats.duplicate_ids += 1;
            }
        }
        self.stats.added += 1;
        Ok(())
    }

    /// The tile's box grown by the buffer, in EPSG:3857 metres: what a source must return the
    /// features of.
    pub fn buffered_bounds(&self) -> crate::Bounds {
        self.frame.buffered
    }

    /// What happened so far.
    pub fn stats(&self) -> LayerStats {
        self.stats
    }

    /// Adds the layer to the tile when it has features, and returns its stats.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the tile refuses the layer (a duplicate name).
    pub fn finish(self) -> Result<LayerStats> {
        if self.stats.added > 0 {
            let name = self.layer.name();
            if self.tile.names.iter().any(|n| n == name) {
                return Err(Error::Encode(format!("a second layer named {name:?}")));
            }
            self.tile.names.push(name.to_owned());
            self.layer.write_to(&mut self.tile.bytes);
        }
        Ok(self.stats)
    }
}
