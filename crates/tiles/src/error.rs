//! The crate's one error type.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in geostack-tiles.
///
/// ```
/// let err = geostack_tiles::TileCoord::new_checked(3, 8, 0).unwrap_err();
/// assert_eq!(err.to_string(), "tile 3/8/0 is out of range: x and y must be below 8");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tile coordinate outside the pyramid.
    #[error("tile {z}/{x}/{y} is out of range: {reason}")]
    TileOutOfRange {
        /// Zoom.
        z: u8,
        /// Column.
        x: u32,
        /// Row.
        y: u32,
        /// Why.
        reason: String,
    },
    /// An option has a value it cannot take.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A map config that cannot be used; `layer` is the index of the offending layer, if one.
    #[error("invalid map config{}: {reason}", layer.map(|i| format!(" (layer {i})")).unwrap_or_default())]
    InvalidMapConfig {
        /// The layer at fault.
        layer: Option<usize>,
        /// Why.
        reason: String,
    },
    /// The `mvt` encoder refused a geometry or layer.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The database refused or could not be asked.
    #[cfg(feature = "postgis")]
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// The sandbox refused or failed the layer's SQL (a refused statement, a timeout, a
    /// permission, the database unavailable); [`sqlpass::Error::status`] classifies it.
    #[cfg(feature = "postgis")]
    #[error(transparent)]
    Sql(#[from] sqlpass::Error),
    /// A layer read more than [`crate::TileOptions::source_limits`] allow.
    #[error("{0}")]
    Limit(String),
    /// The cache's Redis could not be asked or refused.
    #[cfg(feature = "redis")]
    #[error("tile cache unavailable")]
    Cache(#[source] redis::RedisError),
    /// An identical request rendering the same tile at the same time failed; its error.
    #[error("a concurrent request for this tile failed: {0}")]
    Coalesced(String),
    /// Bytes that are not a valid vector tile (from [`crate::decode`]).
    #[error("not a valid vector tile: {0}")]
    InvalidTile(String),
}
