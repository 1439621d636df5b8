//! What a caller may ask for, with CARTO's parameter names.

use std::time::Duration;

use crate::{Error, Result};

/// An output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// CARTO's envelope: `{"rows":[…],"time":s,"fields":{…},"total_rows":N}`.
    #[default]
    Json,
    /// A GeoJSON FeatureCollection.
    GeoJson,
    /// RFC 4180 CSV with a header.
    Csv,
    /// One JSON object per line.
    Ndjson,
    /// RFC 8142 GeoJSON text sequence, one Feature per record.
    GeoJsonSeq,
    /// A TopoJSON Topology: one object, `cartodb_query`, a geometry a row; every line and
    /// ring an arc of its own, unquantized.
    TopoJson,
    /// A KML 2.2 document: a Placemark a row, the other columns as ExtendedData.
    Kml,
    /// An SVG document: each row's geometry as a shape, y flipped, the view box fitted.
    Svg,
}

impl Format {
    /// Parses CARTO's `format` parameter (`json`, `geojson`, `csv`, `ndjson`, `geojsonseq`,
    /// `topojson`, `kml`, `svg`); `shp`, `gpkg` and `spatialite` are refused with a message
    /// that says so.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for other values.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "json" => Self::Json,
            "geojson" => Self::GeoJson,
            "csv" => Self::Csv,
            "ndjson" => Self::Ndjson,
            "geojsonseq" => Self::GeoJsonSeq,
            "topojson" => Self::TopoJson,
            "kml" => Self::Kml,
            "svg" => Self::Svg,
            // Files of several parts, written by GDAL in CARTO: not made here.
            "shp" | "gpkg" | "spatialite" => {
                return Err(Error::InvalidOption {
                    name: "format",
                    reason: format!(
                        "{s} files are not served: ask for geojson or csv, or use copyto"
                    ),
                });
            }
            _ => {
                return Err(Error::InvalidOption {
                    name: "format",
                    reason: "expected json, geojson, csv, ndjson, geojsonseq, topojson, kml or svg"
                        .into(),
                });
            }
        })
    }

    /// The `Content-Type` of the output.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json; charset=utf-8",
            Self::GeoJson => "application/geo+json; charset=utf-8",
            Self::Csv => "text/csv; charset=utf-8; header=present",
            Self::Ndjson => "application/x-ndjson; charset=utf-8",
            Self::GeoJsonSeq => "application/geo+json-seq; charset=utf-8",
            Self::TopoJson => "application/json; charset=utf-8",
            Self::Kml => "application/vnd.google-earth.kml+xml; charset=utf-8",
            Self::Svg => "image/svg+xml; charset=utf-8",
        }
    }

    /// The file extension for `filename`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::GeoJson => "geojson",
            Self::Csv => "csv",
            Self::Ndjson => "ndjson",
            Self::GeoJsonSeq => "geojsons",
            Self::TopoJson => "topojson",
            Self::Kml => "kml",
            Self::Svg => "svg",
        }
    }
}

/// How geometry is written in CSV.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsvGeometry {
    /// Well-known text, rounded to `dp` decimals.
    #[default]
    Wkt,
    /// Hex EWKB, as PostGIS prints geometry.
    HexEwkb,
}

/// Whether the caller may write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// `BEGIN READ ONLY`, always rolled back: PostgreSQL itself refuses every write.
    #[default]
    ReadOnly,
    /// A plain transaction, committed only when the statement succeeds (keys that grant
    /// writes). The role's own privileges still bound it.
    ReadWrite,
}

/// Options of one run. Every setter's doc gives its default.
///
/// ```
/// use std::time::Duration;
/// use sqlpass::{Format, Options};
///
/// let options = Options::default()
///     .format(Format::GeoJson)
///     .statement_timeout(Duration::from_secs(5))
///     .row_limit(100_000);
/// let from_carto = Options::from_params([("format", "csv"), ("skipfields", "the_geom_webmercator")]).unwrap();
/// assert_eq!(from_carto.output_format(), Format::Csv);
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) format: Format,
    pub(crate) access: Access,
    pub(crate) statement_timeout: Duration,
    pub(crate) lock_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) deadline: Duration,
    pub(crate) row_limit: Option<u64>,
    pub(crate) byte_limit: Option<u64>,
    pub(crate) batch_rows: u32,
    pub(crate) chunk_bytes: usize,
    pub(crate) dp: u8,
    pub(crate) skipfields: Vec<String>,
    pub(crate) filename: Option<String>,
    pub(crate) page: Option<(u64, u64)>,
    pub(crate) csv_geometry: CsvGeometry,
    pub(crate) affected_tables: bool,
    pub(crate) jit: bool,
    pub(crate) value_limit: Option<u64>,
    pub(crate) canceller: Option<sqlx::PgPool>,
    pub(crate) allowed_tables: Option<Vec<String>>,
    pub(crate) plans: Option<crate::Plans>,
    pub(crate) script: bool,
}

/// The default row limit of [`Options`].
pub const DEFAULT_ROW_LIMIT: u64 = 10_000_000;
/// The default byte limit of [`Options`]: 1 GiB.
pub const DEFAULT_BYTE_LIMIT: u64 = 1 << 30;
/// The default value-size limit of [`Options`]: 16 MiB.
pub const DEFAULT_VALUE_LIMIT: u64 = 16 << 20;

impl Default for Options {
    fn default() -> Self {
        Self {
            format: Format::Json,
            access: Access::ReadOnly,
            statement_timeout: Duration::from_secs(15),
            lock_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
            row_limit: Some(DEFAULT_ROW_LIMIT),
            byte_limit: Some(DEFAULT_BYTE_LIMIT),
            batch_rows: 10_000,
            chunk_bytes: 64 * 1024,
            dp: 6,
            skipfields: Vec::new(),
            filename: None,
            page: None,
            csv_geometry: CsvGeometry::Wkt,
            affected_tables: true,
            jit: false,
            value_limit: Some(DEFAULT_VALUE_LIMIT),
            canceller: None,
            allowed_tables: None,
            plans: None,
            script: false,
        }
    }
}

impl Options {
    /// Options from CARTO's parameters: `format`, `dp`, `skipfields`, `filename`,
    /// `rows_per_page` and `page` (0-based). Other names are ignored (`q`, `api_key`, …).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a value out of range.
    pub fn from_params<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        Self::default().params(params)
    }

    /// These options with CARTO's parameters applied, as [`Options::from_params`] reads them:
    /// a server sets its limits first, then the request's parameters.
    ///
    /// ```
    /// let options = sqlpass::Options::default()
    ///     .row_limit(1000)
    ///     .params([("format", "geojson")])
    ///     .unwrap();
    /// assert_eq!(options.output_format(), sqlpass::Format::GeoJson);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a value out of range.
    pub fn params<'a>(self, params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut options = self;
        let mut rows_per_page = None;
        let mut page = None;
        let number = |name: &'static str, v: &str| -> Result<u64> {
            v.parse().map_err(|_| Error::InvalidOption {
                name,
                reason: "expected a non-negative integer".into(),
            })
        };
        for (name, value) in params {
            match name {
                "format" => options.format = Format::parse(value)?,
                "dp" => {
                    let dp = number("dp", value)?;
                    options = options.dp(u8::try_from(dp).unwrap_or(u8::MAX))?;
                }
                "skipfields" => {
                    options.skipfields = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                }
                "filename" if !value.is_empty() => options.filename = Some(value.to_owned()),
                "rows_per_page" => rows_per_page = Some(number("rows_per_page", value)?),
                "page" => page = Some(number("page", value)?),
                _ => {}
            }
        }
        if let Some(per_page) = rows_per_page {
            options.page = Some((per_page, page.unwrap_or(0)));
        }
        Ok(options)
    }

    /// The output format. Default [`Format::Json`].
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The format asked for.
    pub fn output_format(&self) -> Format {
        self.format
    }

    /// Read-only or read-write. Default [`Access::ReadOnly`].
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// PostgreSQL's `statement_timeout` for the query. Default 15 s.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// PostgreSQL's `lock_timeout`. Default 2 s.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// PostgreSQL's `idle_in_transaction_session_timeout`: ends the transaction when the
    /// stream stalls this long between batches. Default 10 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The wall-clock limit of the whole request, including a slow reader of the stream.
    /// Default 60 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The most rows written; more end the stream with an error in the format. `None` for no
    /// limit. Default 10 000 000 ([`DEFAULT_ROW_LIMIT`]).
    pub fn row_limit(mut self, rows: impl Into<Option<u64>>) -> Self {
        self.row_limit = rows.into();
        self
    }

    /// The most bytes written (whole rows); more end the stream with an error in the format.
    /// A writer's output is held in memory until it commits, so this also bounds that memory.
    /// `None` for no limit. Default 1 GiB ([`DEFAULT_BYTE_LIMIT`]).
    pub fn byte_limit(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.byte_limit = bytes.into();
        self
    }

    /// The largest value a row may carry, in bytes, checked by PostgreSQL before the value is
    /// sent (so the client never holds more): `octet_length` for text, `bytea` and values cast
    /// to text, `pg_column_size` (the stored, possibly compressed, size) for other variable-size
    /// types. A larger value ends the stream with an error in the format naming its column.
    /// `None` for no limit. Default 16 MiB ([`DEFAULT_VALUE_LIMIT`]).
    pub fn value_limit(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.value_limit = bytes.into();
        self
    }

    /// The only tables (`schema.table`) the statement may read or write: checked against the
    /// tables of its plan before it runs, as a second line behind the role's own grants (a
    /// key's grants, say). The tables are found whatever [`Options::affected_tables`] says.
    /// Default none: the role alone decides.
    ///
    /// ```
    /// let options = sqlpass::Options::default().allowed_tables(["public.counties"]);
    /// # let _ = options;
    /// ```
    pub fn allowed_tables(mut self, tables: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.allowed_tables = Some(tables.into_iter().map(Into::into).collect());
        self
    }

    /// The pool that cancels a query cut short (a dropped body, the deadline): its role needs
    /// `pg_signal_backend` and `EXECUTE` on `pg_cancel_backend`, which caller roles provisioned
    /// by [`PublicRole`](crate::PublicRole) do not have. Default none: the caller's own pool
    /// tries, which works only for roles that may still signal their own backends.
    pub fn canceller(mut self, pool: sqlx::PgPool) -> Self {
        self.canceller = Some(pool);
        self
    }

    /// A cache of statement descriptions shared between runs ([`Plans`](crate::Plans)): a
    /// reader's statement seen before in the same DDL generation is not described again.
    /// Needs [`install`](crate::install) in the database. Default none: every run describes
    /// its statement.
    pub fn plans(mut self, plans: crate::Plans) -> Self {
        self.plans = Some(plans);
        self
    }

    /// Lets the text hold several statements, run in order in one transaction, as CARTO runs a
    /// master key's (`BEGIN; CREATE TABLE …; COMMIT;`): see [`Script`](crate::Script). The
    /// answer is the last statement's. The timeouts are set again before each statement, so no
    /// statement lifts them for the next; the deadline covers the whole text. Default off:
    /// exactly one statement.
    ///
    /// ```
    /// let master = sqlpass::Options::default()
    ///     .access(sqlpass::Access::ReadWrite)
    ///     .script(true);
    /// # let _ = master;
    /// ```
    pub fn script(mut self, on: bool) -> Self {
        self.script = on;
        self
    }

    /// The wall-clock deadline of a run ([`Options::deadline`]).
    pub fn total_deadline(&self) -> Duration {
        self.deadline
    }

    /// The byte limit of a run's output or a copy's input ([`Options::byte_limit`]), if any.
    ///
    /// ```
    /// let options = sqlpass::Options::default().byte_limit(1 << 20);
    /// assert_eq!(options.bytes_allowed(), Some(1 << 20));
    /// ```
    pub fn bytes_allowed(&self) -> Option<u64> {
        self.byte_limit
    }

    /// Rows per `FETCH` from the cursor (rows stream as they come either way; this sets how
    /// often a round trip interrupts them). Default 10 000.
    pub fn batch_rows(mut self, rows: u32) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// Decimal places of geometry coordinates in GeoJSON and WKT. Default 6.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] above 15.
    pub fn dp(mut self, dp: u8) -> Result<Self> {
        if dp > 15 {
            return Err(Error::InvalidOption {
                name: "dp",
                reason: "expected 0 to 15".into(),
            });
        }
        self.dp = dp;
        Ok(self)
    }

    /// Columns left out of the output. Default none.
    pub fn skipfields(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.skipfields = names.into_iter().map(Into::into).collect();
        self
    }

    /// Offer the output as a download named `<filename>.<extension>`. Default none.
    pub fn filename(mut self, name: impl Into<String>) -> Self {
        self.filename = Some(name.into());
        self
    }

    /// Only page `page` (0-based) of `rows_per_page` rows. Default all rows.
    pub fn page(mut self, rows_per_page: u64, page: u64) -> Self {
        self.page = Some((rows_per_page, page));
        self
    }

    /// How CSV writes geometry. Default [`CsvGeometry::Wkt`].
    pub fn csv_geometry(mut self, geometry: CsvGeometry) -> Self {
        self.csv_geometry = geometry;
        self
    }

    /// Whether PostgreSQL may JIT-compile the query. Default false: compiling costs tens of
    /// milliseconds per plan (even for the `EXPLAIN` behind the cache tags), which an
    /// interactive API pays on every request.
    pub fn jit(mut self, on: bool) -> Self {
        self.jit = on;
        self
    }

    /// Whether to find the tables the query reads (for cache tags), with one `EXPLAIN`.
    /// Default true.
    pub fn affected_tables(mut self, on: bool) -> Self {
        self.affected_tables = on;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carto_params_set_options_and_bad_values_are_refused() {
        let o = Options::from_params([
            ("q", "select 1"),
            ("format", "GeoJSON"),
            ("dp", "3"),
            ("skipfields", "a, b,,c"),
            ("filename", "export"),
            ("rows_per_page", "10"),
            ("page", "2"),
        ])
        .unwrap();
        assert_eq!(o.format, Format::GeoJson);
        assert_eq!(o.dp, 3);
        assert_eq!(o.skipfields, ["a", "b", "c"]);
        assert_eq!(o.filename.as_deref(), Some("export"));
        assert_eq!(o.page, Some((10, 2)));
        for bad in [
            [("format", "xml")],
            [("dp", "16")],
            [("dp", "-1")],
            [("page", "x")],
        ] {
            assert!(Options::from_params(bad).is_err(), "{bad:?}");
        }
    }
}
