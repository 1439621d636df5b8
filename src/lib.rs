//! geostack: the core of a CARTO-style geospatial platform, as embeddable crates.
//!
//! This facade re-exports the member crates behind features (all on by default):
//!
//! | feature | crate | what it does |
//! |---|---|---|
//! | `auth` | [`auth`] (geoauth) | API keys with grants mapped to PostgreSQL roles, sessions, rate limits, in Redis |
//! | `sql` | [`sql`] (sqlpass) | untrusted SQL to PostgreSQL/PostGIS, safely, streamed as JSON, GeoJSON, CSV |
//! | `tiles` | [`tiles`] (geostack-tiles) | Mapbox Vector Tiles from PostGIS and from memory |
//! | `jobs` | [`jobs`] (geostack-jobs) | a Redis job queue with reliable workers |
//! | `server` | [`server`] | the four composed into CARTO's HTTP API, as one axum router |
//!
//! A service that needs only some of them depends on those crates directly, or on this one
//! with `default-features = false` and the features it wants.

#[cfg(feature = "auth")]
#[doc(inline)]
pub use geoauth as auth;
#[cfg(feature = "jobs")]
#[doc(inline)]
pub use geostack_jobs as jobs;
#[cfg(feature = "tiles")]
#[doc(inline)]
pub use geostack_tiles as tiles;
#[cfg(feature = "sql")]
#[doc(inline)]
pub use sqlpass as sql;

#[cfg(feature = "server")]
pub mod server;
