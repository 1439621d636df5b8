#![doc = include_str!("../README.md")]

mod aggregate;
mod cache;
#[cfg(feature = "redis")]
mod cache_redis;
#[cfg(feature = "raster")]
mod cartocss;
mod coord;
#[cfg(feature = "raster")]
mod coverage;
#[cfg(feature = "postgis")]
mod dataview;
mod decode;
mod encode;
mod error;
mod mapconfig;
mod memory;
mod options;
mod pipeline;
#[cfg(feature = "postgis")]
mod postgis;
mod project;
#[cfg(feature = "raster")]
mod raster;
#[cfg(feature = "axum")]
mod response;
#[cfg(feature = "postgis")]
mod sql_layers;
#[cfg(feature = "raster")]
mod text;
mod validity;
mod wire;

pub use aggregate::{Aggregate, AggregationOptions, PointAggregator};
pub use cache::{CachedTile, MemoryTileCache, SingleFlight, TileCache, TileKey};
#[cfg(feature = "redis")]
pub use cache_redis::RedisTileCache;
#[cfg(feature = "raster")]
pub use cartocss::{Attributes, Color, SUPPORTED as CARTOCSS_SUPPORTED, Style};
pub use coord::{Bounds, MAX_ZOOM, TileCoord, WEB_MERCATOR_HALF, to_lon_lat, to_web_mercator};
#[cfg(feature = "postgis")]
pub use dataview::DataviewQuery;
pub use decode::{DecodedFeature, DecodedLayer, DecodedTile, DecodedValue, decode};
pub use encode::{LayerBuilder, LayerStats, TileBuilder, Value};
pub use error::{Error, Result};
pub use mapconfig::{Dataview, DataviewKind, LayerKind, MAX_LAYERS, MapConfig, MapLayer};
pub use memory::{AttributeValue, MemoryFeature, MemorySource};
pub use options::{DEFAULT_SOURCE_BYTES, DEFAULT_SOURCE_ROWS, TileOptions};
pub use pipeline::{TileGeometry, TilePoint, tile_geometry};
#[cfg(feature = "postgis")]
pub use postgis::{
    AttributeKind, DEFAULT_ID_COLUMNS, TableSource, discover, discover_with_ids, tables_tile,
};
#[cfg(feature = "raster")]
pub use raster::{Canvas, ImageFormat};
#[cfg(all(feature = "axum", feature = "postgis"))]
pub use response::TableTiles;
#[cfg(feature = "axum")]
pub use response::{MVT_CONTENT_TYPE, TileResponse};
#[cfg(feature = "postgis")]
pub use sql_layers::{Degradation, FunctionSource, RenderedTile};
