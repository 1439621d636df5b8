//! PostGIS tables as tile sources: discovered from `geometry_columns`, filtered by the
//! database with an index-friendly bounding box, everything else done here.

use geo_traits::to_geo::ToGeoGeometry;
use geo_types::Geometry;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row as _};

use crate::project::project_4326;
use crate::sql_layers::SourceReader;
use crate::{Error, LayerBuilder, Result, Value};
use sqlpass::Session;

/// The kind of an attribute column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttributeKind {
    /// text, varchar, char
    Text,
    /// int2, int4, int8
    Int,
    /// float4, float8, numeric (as double)
    Float,
    /// bool
    Bool,
}

/// A table with a geometry column, as [`discover`] finds it.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSource {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// The geometry column.
    pub geometry_column: String,
    /// Its SRID.
    pub srid: i32,
    /// Its type (`MULTIPOLYGON`, `GEOMETRY`…).
    pub geometry_type: String,
    /// A one-column integer primary key, used as feature id.
    pub id_column: Option<String>,
    /// The other columns tiles can carry.
    pub attributes: Vec<(String, AttributeKind)>,
}

/// The columns a table without a one-column integer primary key (a view, say) takes its
/// feature ids from, the first found first: CARTO's `cartodb_id`, then `id`.
pub const DEFAULT_ID_COLUMNS: [&str; 2] = ["cartodb_id", "id"];

/// Every table and view with a geometry column that the pool's role may read; feature ids from
/// each one's primary key, else from the first of [`DEFAULT_ID_COLUMNS`] it has.
///
/// # Errors
///
/// [`Error::Database`] when the query fails.
pub async fn discover(pool: &PgPool) -> Result<Vec<TableSource>> {
    discover_with_ids(pool, &DEFAULT_ID_COLUMNS).await
}

/// [`discover`], the feature ids of a table without a one-column integer primary key taken
/// from the first integer column it has among `id_columns`.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> geostack_tiles::Result<()> {
/// let tables = geostack_tiles::discover_with_ids(&pool, &["gid", "cartodb_id"]).await?;
/// for t in &tables {
///     println!("{} ids from {:?}", t.name(), t.id_column);
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Database`] when the query fails.
pub async fn discover_with_ids(
    pool: &PgPool,
    id_columns: &[impl AsRef<str>],
) -> Result<Vec<TableSource>> {
    let id_columns: Vec<&str> = id_columns.iter().map(AsRef::as_ref).collect();
    // In a transaction: behind pgbouncer in transaction mode, the statement's parse and its
    // execution then reach the same server connection.
    let mut tx = pool.begin().await.map_err(Error::Database)?;
    let rows: Vec<PgRow> = sqlx::query(include_str!("sql/discover.sql"))
        .bind(id_columns)
        .persistent(false)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::Database)?;
    tx.commit().await.map_err(Error::Database)?;
    let mut out = Vec::new();
    for row in rows {
        let get = |name: &str| row.try_get::<String, _>(name).map_err(Error::Database);
        let id_column: Option<String> = row.try_get("id_column").map_err(Error::Database)?;
        let columns: Vec<String> = row.try_get("columns").map_err(Error::Database)?;
        let types: Vec<String> = row.try_get("column_types").map_err(Error::Database)?;
        let attributes = columns
            .into_iter()
            .zip(types)
            .filter(|(name, _)| Some(name) != id_column.as_ref())
            .filter_map(|(name, ty)| {
                let kind = match ty.as_str() {
                    "text" | "character varying" | "character" => AttributeKind::Text,
                    "smallint" | "integer" | "bigint" => AttributeKind::Int,
                    "real" | "double precision" | "numeric" => AttributeKind::Float,
                    "boolean" => AttributeKind::Bool,
                    _ => return None,
                };
                Some((name, kind))
            })
            .collect();
        out.push(TableSource {
            schema: get("schema")?,
            table: get("table")?,
            geometry_column: get("geometry_column")?,
            srid: row.try_get("srid").map_err(Error::Database)?,
            geometry_type: get("geometry_type")?,
            id_column,
            attributes,
        });
    }
    Ok(out)
}

/// The tile `coord` of several tables: a layer each, named after its table and filled by
/// [`TableSource::fill`], in order, encoded with `options`.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> geostack_tiles::Result<()> {
/// use geostack_tiles::{TileCoord, TileOptions, discover, tables_tile};
///
/// let tables = discover(&pool).await?;
/// let coord = TileCoord::new_checked(0, 0, 0).expect("a tile");
/// let bytes = tables_tile(&tables, &pool, &Default::default(), coord, &TileOptions::default()).await?;
/// # let _ = bytes; Ok(()) }
/// ```
///
/// # Errors
///
/// As [`TableSource::fill`].
pub async fn tables_tile(
    tables: &[TableSource],
    pool: &PgPool,
    sandbox: &sqlpass::Options,
    coord: crate::TileCoord,
    options: &crate::TileOptions,
) -> Result<Vec<u8>> {
    let mut tile = crate::TileBuilder::new(coord, options);
    for table in tables {
        let mut layer = tile.layer(&table.table);
        table.fill(pool, sandbox, &mut layer).await?;
        layer.finish()?;
    }
    tile.into_bytes()
}

impl TableSource {
    /// The table's extent in degrees, `[west, south, east, north]`, from its planner
    /// statistics (`ST_EstimatedExtent`: read at once, slightly padded, as fresh as the last
    /// `ANALYZE`), within Web Mercator's latitudes; `None` before the table was analyzed or for
    /// a geometry column of unknown SRID.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn bounds(&self, pool: &PgPool) -> Result<Option<[f64; 4]>> {
        if self.srid <= 0 {
            return Ok(None);
        }
        // West, south, east, north; all NULL without statistics.
        type Extent = (Option<f64>, Option<f64>, Option<f64>, Option<f64>);
        // In a transaction, as discover's query.
        let mut tx = pool.begin().await.map_err(Error::Database)?;
        let row: Extent = sqlx::query_as(
            "SELECT ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b) FROM (SELECT \
             ST_Transform(ST_SetSRID(ST_EstimatedExtent($1, $2, $3)::geometry, $4), 4326) AS b) s",
        )
        .bind(&self.schema)
        .bind(&self.table)
        .bind(&self.geometry_column)
        .bind(self.srid)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::Database)?;
        tx.commit().await.map_err(Error::Database)?;
        let (Some(west), Some(south), Some(east), Some(north)) = row else {
            return Ok(None);
        };
        let lat = |v: f64| v.clamp(-85.0511, 85.0511);
        let lon = |v: f64| v.clamp(-180.0, 180.0);
        Ok(Some([lon(west), lat(south), lon(east), lat(north)]))
    }

    /// `schema.table`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The query for one tile over the buffered tile box in EPSG:3857: `$1..$4`, or `b`
    /// written as literals (for a query sent in one simple-protocol message with its
    /// transaction's start); at most one row more than the source row limit, values over the
    /// source byte limit left out and flagged in the last column.
    fn query(&self, options: &crate::TileOptions, b: Option<&crate::Bounds>) -> String {
        let max = options.source_bytes;
        let guarded = |column: &str, value: String| {
            format!("CASE WHEN pg_column_size({column}) > {max} THEN NULL ELSE {value} END")
        };
        let g = ident(&self.geometry_column);
        // 4326 and 3857 are projected here; other systems by PostGIS.
        let geom = match self.srid {
            4326 | 3857 => format!("ST_AsBinary({g})"),
            _ => format!("ST_AsBinary(ST_Transform({g}, 3857))"),
        };
        let tile_box = match b {
            // Rust prints an f64 as the shortest decimal that reads back as the same number.
            Some(b) => format!(
                "ST_MakeEnvelope({}::float8, {}::float8, {}::float8, {}::float8, 3857)",
                b.min_x, b.min_y, b.max_x, b.max_y
            ),
            None => "ST_MakeEnvelope($1, $2, $3, $4, 3857)".to_owned(),
        };
        let envelope = match self.srid {
            3857 => tile_box,
            srid => format!("ST_Transform({tile_box}, {srid})"),
        };
        let mut select = vec![guarded(&g, geom)];
        select.push(match &self.id_column {
            Some(id) => format!("{}::int8", ident(id)),
            None => "null::int8".to_owned(),
        });
        let mut sizes = vec![format!("pg_column_size({g}) > {max}")];
        for (name, kind) in &self.attributes {
            let cast = match kind {
                AttributeKind::Text => "text",
                AttributeKind::Int => "int8",
                AttributeKind::Float => "float8",
                AttributeKind::Bool => "bool",
            };
            let column = ident(name);
            if *kind == AttributeKind::Text {
                select.push(guarded(&column, format!("{column}::{cast}")));
                sizes.push(format!("pg_column_size({column}) > {max}"));
            } else {
                select.push(format!("{column}::{cast}"));
            }
        }
        select.push(format!("coalesce({}, false)", sizes.join(" OR ")));
        format!(
            "SELECT {} FROM {}.{} WHERE {g} && {envelope} LIMIT {}",
            select.join(", "),
            ident(&self.schema),
            ident(&self.table),
            options.source_rows.saturating_add(1)
        )
    }

    /// The tile `coord` of this table alone: one layer named after the table, filled by
    /// [`TableSource::fill`], encoded with `options`.
    ///
    /// # Errors
    ///
    /// As [`TableSource::fill`].
    pub async fn tile(
        &self,
        pool: &PgPool,
        sandbox: &sqlpass::Options,
        coord: crate::TileCoord,
        options: &crate::TileOptions,
    ) -> Result<Vec<u8>> {
        tables_tile(std::slice::from_ref(self), pool, sandbox, coord, options).await
    }

    /// Adds this table's features near `coord` to `layer`, read in a read-only
    /// [`sqlpass::Session`] on `pool` with `sandbox`'s timeouts, deadline and canceller, bounded
    /// by the tile's [`crate::TileOptions::source_limits`]. Ids come from the key column when
    /// non-negative; attributes keep their names; NULLs are left out.
    ///
    /// # Errors
    ///
    /// [`Error::Sql`] when the query fails, [`Error::Limit`] over the source limits,
    /// [`Error::Encode`] from the encoder.
    #[tracing::instrument(name = "tile", skip_all, fields(table = %self.table))]
    pub async fn fill(
        &self,
        pool: &PgPool,
        sandbox: &sqlpass::Options,
        layer: &mut LayerBuilder<'_>,
    ) -> Result<()> {
        // Clamped to the Web Mercator square: beyond x = ±180°, PROJ wraps the box to the other
        // side of the world and the filter would select the wrong hemisphere.
        let h = crate::WEB_MERCATOR_HALF;
        let b = layer.buffered_bounds();
        let b = crate::Bounds {
            min_x: b.min_x.max(-h),
            min_y: b.min_y.max(-h),
            max_x: b.max_x.min(h),
            max_y: b.max_y.min(h),
        };
        let options = layer.tile_options().clone();
        let sandbox = sandbox.clone().access(sqlpass::Access::ReadOnly);
        let name = self.name();
        let mut reader = SourceReader::new(&name, &options);
        let (session, read) = if layer.coord().z() >= options.one_trip_zoom {
            // The transaction's start and the query in one round trip.
            let sql = self.query(&options, Some(&b));
            Session::begin_reading(pool, &sandbox, &sql, |row| {
                reader.take(&row, |row| self.add_row(row, layer))
            })
            .await?
        } else {
            let sql = self.query(&options, None);
            let query = || {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(b.min_x)
                    .bind(b.min_y)
                    .bind(b.max_x)
                    .bind(b.max_y)
            };
            let mut session = Session::begin(pool, &sandbox).await?;
            let mut read = session
                .for_each_row(query(), |row| {
                    reader.take(&row, |row| self.add_row(row, layer))
                })
                .await;
            // The unnamed statement replaced before its first row (sqlx's type look-up, or a
            // pooler's server connection that lacks it): begun again once, as the SQL API does.
            if matches!(&read, Err(e) if e.sqlstate() == Some("26000")) {
                session.restart().await?;
                read = session
                    .for_each_row(query(), |row| {
                        reader.take(&row, |row| self.add_row(row, layer))
                    })
                    .await;
            }
            (session, read)
        };
        // The rows read, the tile goes on while the session's rollback and check run.
        session.end_in_background();
        read?;
        reader.finish()
    }

    fn add_row(&self, row: &PgRow, layer: &mut LayerBuilder<'_>) -> Result<()> {
        let db = Error::Database;
        // Borrowed from the row where the wire format allows: binary rows (the extended
        // protocol) hold the WKB as it is, text rows (a one-round-trip read) as hex.
        let raw = row.try_get_raw(0).map_err(db)?;
        if sqlx::ValueRef::is_null(&raw) {
            return Ok(());
        }
        let unhexed: Vec<u8>;
        let wkb: &[u8] = match raw.format() {
            sqlx::postgres::PgValueFormat::Binary => raw
                .as_bytes()
                .map_err(|e| Error::Database(sqlx::Error::Decode(e)))?,
            sqlx::postgres::PgValueFormat::Text => {
                unhexed = row.try_get(0).map_err(db)?;
                &unhexed
            }
        };
        let id: Option<i64> = row.try_get(1).map_err(db)?;
        let id = id.and_then(|i| u64::try_from(i).ok());
        let attributes = self
            .attributes
            .iter()
            .enumerate()
            .map(|(i, (name, kind))| Ok((name.as_str(), read_attribute(row, i + 2, *kind)?)))
            .collect::<Result<Vec<_>>>()?;
        // Lon/lat is projected here; EPSG:3857 (from the table or PostGIS) goes in as it is,
        // and what does not decode is counted by add_wkb.
        if self.srid == 4326
            && let Some(mut g) = decode_wkb(wkb)
        {
            project_4326(&mut g);
            return layer.add_geometry(&g, id, &attributes);
        }
        layer.add_wkb(wkb, id, &attributes)
    }
}

fn read_attribute(row: &PgRow, col: usize, kind: AttributeKind) -> Result<Value<'_>> {
    let db = Error::Database;
    let value = match kind {
        AttributeKind::Text => row
            .try_get::<Option<&str>, _>(col)
            .map_err(db)?
            .map(Value::String),
        AttributeKind::Int => row
            .try_get::<Option<i64>, _>(col)
            .map_err(db)?
            .map(Value::Int),
        AttributeKind::Float => row
            .try_get::<Option<f64>, _>(col)
            .map_err(db)?
            .map(Value::Double),
        AttributeKind::Bool => row
            .try_get::<Option<bool>, _>(col)
            .map_err(db)?
            .map(Value::Bool),
    };
    Ok(value.unwrap_or(Value::Null))
}

fn decode_wkb(wkb: &[u8]) -> Option<Geometry<f64>> {
    wkb::reader::read_wkb(wkb).ok()?.try_to_geometry()
}

/// A double-quoted identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
