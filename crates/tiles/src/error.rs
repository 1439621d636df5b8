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
    /// A tile coordinate that is not a number (`z`, `x` or `y`, named).
    #[error("invalid tile coordinate {0}")]
    InvalidCoordinate(&'static str),
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
    /// A layer of a map config failed when it was checked ([`crate::MapConfig::check`]): the
    /// layer's index and why.
    #[error("layer {index}: {source}")]
    Layer {
        /// The index of the layer in the config.
        index: usize,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A tile could not be made: two layers of one name, a drawing stopped, attributes that
    /// cannot be read.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// A CartoCSS stylesheet that cannot be read: where (`line:column`) and why.
    #[error("invalid CartoCSS: {0}")]
    Style(String),
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

impl Error {
    /// The HTTP status this error answers: 400 for what the request got wrong (a coordinate,
    /// an option, a map config, a layer over its limits, SQL the database refused), 403 for a
    /// permission or a read-only violation, 429 for a timeout, 503 when the database or the
    /// cache could not be asked; a sandbox error keeps [`sqlpass::Error::status`].
    ///
    /// ```
    /// let e = geostack_tiles::TileCoord::new_checked(1, 5, 0).unwrap_err();
    /// assert_eq!(e.status(), 400);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            Self::TileOutOfRange { .. }
            | Self::InvalidCoordinate(_)
            | Self::InvalidOption { .. }
            | Self::InvalidMapConfig { .. }
            | Self::Style(_)
            | Self::Limit(_) => 400,
            #[cfg(feature = "postgis")]
            Self::Database(sqlx::Error::Database(db)) => match db.code().as_deref() {
                Some("42501" | "25006") => 403,
                Some("57014") => 429,
                _ => 400,
            },
            #[cfg(feature = "postgis")]
            Self::Database(_) => 503,
            #[cfg(feature = "postgis")]
            Self::Sql(e) => e.status(),
            #[cfg(feature = "redis")]
            Self::Cache(_) => 503,
            Self::Coalesced(_) => 503,
            Self::Layer { source, .. } => source.status(),
            Self::Encode(_) | Self::InvalidTile(_) => 500,
        }
    }

    /// The message a client may see: the error, and for a database refusal PostgreSQL's own
    /// words (never the driver's).
    pub fn client_message(&self) -> String {
        match self {
            #[cfg(feature = "postgis")]
            Self::Database(sqlx::Error::Database(db)) => db.message().to_owned(),
            Self::Layer { source, .. } => source.client_message(),
            other => other.to_string(),
        }
    }

    /// The index of the map config's layer at fault, when the error is a layer's.
    pub fn layer(&self) -> Option<usize> {
        match self {
            Self::InvalidMapConfig { layer, .. } => *layer,
            Self::Layer { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// [`Error::status`] with CARTO's body, `{"error": ["…"]}` ([`Error::client_message`]), and
/// `Retry-After` when the sandbox says waiting helps.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        let status = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": [self.client_message()] }).to_string();
        let mut response = axum_core::response::Response::new(axum_core::body::Body::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        #[cfg(feature = "postgis")]
        if let Self::Sql(e) = &self
            && let Some(after) = e.retry_after()
        {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response
    }
}
