//! Tile options.

use crate::{Error, Result};

/// Extent, buffer and simplification of encoded tiles. Every setter's doc gives its default.
///
/// ```
/// let options = geostack_tiles::TileOptions::default().buffer(128).unwrap();
/// assert_eq!((options.extent_units(), options.buffer_units()), (4096, 128));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TileOptions {
    pub(crate) extent: u32,
    pub(crate) buffer: u32,
    pub(crate) tolerance: f64,
    pub(crate) max_features: Option<usize>,
    pub(crate) max_bytes: Option<usize>,
    pub(crate) source_rows: u64,
    pub(crate) source_bytes: u64,
    pub(crate) one_trip_zoom: u8,
}

/// The default of [`TileOptions::source_limits`]: rows a layer may read for one tile.
pub const DEFAULT_SOURCE_ROWS: u64 = 200_000;
/// The default of [`TileOptions::source_limits`]: bytes a layer may read for one tile (64 MiB).
pub const DEFAULT_SOURCE_BYTES: u64 = 64 << 20;

impl Default for TileOptions {
    fn default() -> Self {
        Self {
            extent: 4096,
            buffer: 64,
            tolerance: 0.5,
            max_features: None,
            max_bytes: None,
            source_rows: DEFAULT_SOURCE_ROWS,
            source_bytes: DEFAULT_SOURCE_BYTES,
            one_trip_zoom: 8,
        }
    }
}

impl TileOptions {
    /// The most rows and bytes (geometry and attributes) one layer of a PostGIS source (a
    /// table, a map-config layer, a SQL function's tile) may read for one tile. The database
    /// stops at `rows + 1`, and the value-size check runs there too, so memory stays bounded
    /// whatever the layer's SQL returns; over either, the tile fails with [`Error::Limit`].
    /// Default 200 000 rows and 64 MiB ([`DEFAULT_SOURCE_ROWS`], [`DEFAULT_SOURCE_BYTES`]).
    pub fn source_limits(mut self, rows: u64, bytes: u64) -> Self {
        self.source_rows = rows.max(1);
        self.source_bytes = bytes.max(1);
        self
    }

    /// From which zoom a table source's tile is read in one round trip
    /// ([`sqlpass::Session::begin_reading`]: the transaction's start and the query in one
    /// simple-protocol message, rows in text format) rather than three (the start, then the
    /// query parsed and run in the extended protocol, rows in binary). One round trip saves
    /// about 0.15 ms a tile; text rows cost a few tens of nanoseconds more each (`bytea` as
    /// hex), which outweighs that from a few thousand rows on: the many rows of low-zoom tiles
    /// stay binary. Default 8 (`u8::MAX`: never).
    pub fn one_round_trip_from(mut self, zoom: u8) -> Self {
        self.one_trip_zoom = zoom;
        self
    }

    /// The tile's size in its own integer units. Default 4096.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] outside `1..=65536`.
    pub fn extent(mut self, extent: u32) -> Result<Self> {
        if !(1..=65_536).contains(&extent) {
            return Err(Error::InvalidOption {
                name: "extent",
                reason: "expected 1 to 65536".into(),
            });
        }
        self.extent = extent;
        Ok(self)
    }

    /// How far beyond the tile edge geometry is kept, in tile units (so that lines and
    /// polygon outlines render across tile seams). Default 64.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] above the extent.
    pub fn buffer(mut self, buffer: u32) -> Result<Self> {
        if buffer > self.extent {
            return Err(Error::InvalidOption {
                name: "buffer",
                reason: "expected at most the extent".into(),
            });
        }
        self.buffer = buffer;
        Ok(self)
    }

    /// The Douglas–Peucker tolerance, in tile units: vertices closer than this to the line
    /// of their neighbours go. At the default extent one unit is 1/16 of a pixel of a 256-pixel
    /// tile. Default 0.5 (half a unit: less than the rounding to the grid moves a vertex);
    /// 0 turns simplification off.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a negative or non-finite tolerance.
    pub fn tolerance(mut self, tolerance: f64) -> Result<Self> {
        if !tolerance.is_finite() || tolerance < 0.0 {
            return Err(Error::InvalidOption {
                name: "tolerance",
                reason: "expected a finite number, at least 0".into(),
            });
        }
        self.tolerance = tolerance;
        Ok(self)
    }

    /// The most features a layer takes; later ones are counted in [`crate::LayerStats::capped`]
    /// and left out. Default: no cap.
    pub fn max_features(mut self, n: usize) -> Self {
        self.max_features = Some(n);
        self
    }

    /// A budget for the encoded tile, in bytes. Map-config tiles over it are degraded in this
    /// order until they fit: simplification 4 times stronger, then 16 times (from the tolerance,
    /// or from half a unit when simplification is off), then only the first
    /// features of each layer (halving their number each time, in the order the layer's SQL
    /// returns them). [`crate::RenderedTile::degraded`] says what was done. Default: no budget.
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// The extent.
    pub fn extent_units(&self) -> u32 {
        self.extent
    }

    /// The buffer.
    pub fn buffer_units(&self) -> u32 {
        self.buffer
    }
}
