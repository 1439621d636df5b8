//! Map-config layers and SQL functions as tile sources, run on the caller's pool in sqlpass's
//! sandbox, read-only.

use std::ops::ControlFlow;

use sqlpass::Session;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row as _};

use crate::mapconfig::is_identifier;
use crate::{
    Error, LayerStats, MapConfig, MapLayer, Result, TileBuilder, TileCoord, TileOptions, Value,
};

/// A tile rendered from a map config.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedTile {
    /// The encoded tile; empty when no layer has features (answer 204).
    pub bytes: Vec<u8>,
    /// What each visible layer did, by name.
    pub layers: Vec<(String, LayerStats)>,
    /// How the tile was degraded to fit [`TileOptions::max_bytes`], if it was.
    pub degraded: Option<Degradation>,
}

/// What was done to fit a tile into its byte budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Degradation {
    /// The simplification tolerance finally used, in tile units.
    pub tolerance: f64,
    /// Features kept per layer, when features had to be dropped.
    pub kept_per_layer: Option<usize>,
    /// Whether the tile fits now (it may not, when even one feature per layer is too much).
    pub fits: bool,
}

/// A feature fetched once, encoded as often as the budget needs.
struct Fetched {
    wkb: Vec<u8>,
    id: Option<u64>,
    values: Vec<Option<serde_json::Value>>,
}

impl RenderedTile {
    /// Whether the tile has no features.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl MapConfig {
    /// Renders the layers visible at `coord`'s zoom, in order, on `pool` (a pool that logged in
    /// as the caller's role) in one read-only [`sqlpass::Session`] with `sandbox`'s timeouts,
    /// deadline and canceller, always rolled back. Each layer's SQL — checked as one statement
    /// on its own when the config was parsed — is wrapped as a subquery (one statement,
    /// extended protocol) and filtered by the buffered tile box on its geometry column, which
    /// must be in EPSG:3857; its rows stream in, bounded by [`TileOptions::source_limits`].
    /// Attributes keep their JSON types (numbers, strings, booleans; nulls left out).
    ///
    /// # Errors
    ///
    /// [`Error::Sql`] when a layer's SQL fails (a syntax error, a write refused by the
    /// read-only transaction, the statement timeout), [`Error::Limit`] over the source limits.
    #[tracing::instrument(
        name = "tile",
        skip_all,
        fields(z = coord.z(), x = coord.x(), y = coord.y(), layers = self.layers().len())
    )]
    pub async fn render(
        &self,
        pool: &PgPool,
        coord: TileCoord,
        options: &TileOptions,
        sandbox: &sqlpass::Options,
    ) -> Result<RenderedTile> {
        let sandbox = sandbox.clone().access(sqlpass::Access::ReadOnly);
        let mut session = Session::begin(pool, &sandbox).await?;
        let visible: Vec<&MapLayer> = self
            .layers()
            .iter()
            .filter(|l| l.is_data() && l.visible_at(coord.z()))
            .collect();
        let frame = TileBuilder::new(coord, options);
        let mut fetched = Vec::with_capacity(visible.len());
        let bounds = frame.buffered_bounds();
        for layer in &visible {
            match fetch_retrying(&mut session, layer, layer.columns(), &bounds, options).await {
                Ok(rows) => fetched.push(rows),
                Err(e) => {
                    let _ = session.end().await;
                    return Err(e);
                }
            }
        }
        // Nothing of the caller's outlives the tile: rolled back and checked while the tile
        // is encoded.
        session.end_in_background();
        encode_within_budget(coord, options, &visible, &fetched)
    }
}

#[cfg(feature = "raster")]
impl MapConfig {
    /// Renders the data layers visible at `coord`'s zoom that have a style, in order, as a PNG
    /// of `256 × scale` pixels ([`crate::Canvas`]), reading them as [`MapConfig::render`]
    /// does (one read-only session, the same limits) with the columns their styles and
    /// interactivity name. A tile with nothing on it is a transparent image. The drawing runs
    /// on the blocking pool, so tiles draw on every core.
    ///
    /// # Errors
    ///
    /// As [`MapConfig::render`]; [`Error::InvalidOption`] for a scale other than 1 to 4.
    #[tracing::instrument(
        name = "raster_tile",
        skip_all,
        fields(z = coord.z(), x = coord.x(), y = coord.y(), scale)
    )]
    pub async fn render_png(
        &self,
        pool: &PgPool,
        coord: TileCoord,
        scale: u8,
        options: &TileOptions,
        sandbox: &sqlpass::Options,
    ) -> Result<Vec<u8>> {
        let canvas = crate::Canvas::new(coord, scale)?;
        self.render_image(pool, canvas, crate::ImageFormat::Png, options, sandbox)
            .await
    }

    /// Renders the data layers visible at `canvas`'s zoom that have a style onto `canvas`, in
    /// order, as `format`: a static map, by centre ([`crate::Canvas::centred`]) or by box
    /// ([`crate::Canvas::fitted`]). Read and drawn as [`MapConfig::render_png`] does.
    ///
    /// # Errors
    ///
    /// As [`MapConfig::render`].
    #[tracing::instrument(name = "static_map", skip_all, fields(zoom = canvas.zoom()))]
    pub async fn render_image(
        &self,
        pool: &PgPool,
        canvas: crate::Canvas,
        format: crate::ImageFormat,
        options: &TileOptions,
        sandbox: &sqlpass::Options,
    ) -> Result<Vec<u8>> {
        let layers = self
            .fetch_styled(
                pool,
                canvas.zoom(),
                canvas.source_bounds(),
                options,
                sandbox,
            )
            .await?;
        tokio::task::spawn_blocking(move || draw_layers(canvas, &layers, format))
            .await
            .map_err(|e| Error::Encode(format!("drawing stopped: {e}")))?
    }

    /// The UTFGrid (1.3, `grid.json`) of the config's only layer at `coord`: 64 × 64 cells of
    /// 4 pixels, each naming the feature drawn on top at its centre as its raster tile draws
    /// it; `keys` are the features' ids (the layer's `attributes.id`, or their order in the
    /// tile) and `data` holds each drawn feature's interactivity columns. Read as
    /// [`MapConfig::render_png`] reads.
    ///
    /// # Errors
    ///
    /// As [`MapConfig::render`]; [`Error::InvalidMapConfig`] unless the config has exactly one
    /// layer and it has interactivity.
    #[tracing::instrument(
        name = "grid_tile",
        skip_all,
        fields(z = coord.z(), x = coord.x(), y = coord.y())
    )]
    pub async fn render_grid(
        &self,
        pool: &PgPool,
        coord: TileCoord,
        options: &TileOptions,
        sandbox: &sqlpass::Options,
    ) -> Result<serde_json::Value> {
        let [layer] = self.layers() else {
            return Err(Error::InvalidMapConfig {
                layer: None,
                reason: "a grid is of one layer".into(),
            });
        };
        if layer.interactivity().is_empty() {
            return Err(Error::InvalidMapConfig {
                layer: None,
                reason: format!("layer {} has no interactivity", layer.name()),
            });
        }
        let interactivity = layer.interactivity().to_vec();
        let canvas = crate::Canvas::for_grid(coord)?;
        let layers = self
            .fetch_styled(pool, coord.z(), canvas.source_bounds(), options, sandbox)
            .await?;
        tokio::task::spawn_blocking(move || grid_json(canvas, &layers, &interactivity))
            .await
            .map_err(|e| Error::Encode(format!("drawing stopped: {e}")))
    }

    /// The data layers visible at `zoom` that have a style, with the columns they draw with
    /// and their rows in `bounds`, read in one read-only session.
    async fn fetch_styled(
        &self,
        pool: &PgPool,
        zoom: u8,
        bounds: crate::Bounds,
        options: &TileOptions,
        sandbox: &sqlpass::Options,
    ) -> Result<Vec<StyledRows>> {
        let mut layers = Vec::new();
        for layer in self.layers() {
            if let (true, Some(style)) = (
                layer.is_data() && layer.visible_at(zoom),
                layer.shared_style(),
            ) {
                layers.push((layer, style, layer.raster_columns()));
            }
        }
        let mut out = Vec::with_capacity(layers.len());
        if layers.is_empty() {
            return Ok(out);
        }
        let sandbox = sandbox.clone().access(sqlpass::Access::ReadOnly);
        let mut session = Session::begin(pool, &sandbox).await?;
        for (layer, style, columns) in layers {
            match fetch_retrying(&mut session, layer, &columns, &bounds, options).await {
                Ok(rows) => out.push((style, columns, rows)),
                Err(e) => {
                    let _ = session.end().await;
                    return Err(e);
                }
            }
        }
        session.end_in_background();
        Ok(out)
    }
}

/// A layer's style, the columns read for it and its rows.
#[cfg(feature = "raster")]
type StyledRows = (std::sync::Arc<crate::Style>, Vec<String>, Vec<Fetched>);

/// A fetched row's attributes, by column name.
#[cfg(feature = "raster")]
struct RowAttributes<'a> {
    columns: &'a [String],
    values: &'a [Option<serde_json::Value>],
}

#[cfg(feature = "raster")]
impl crate::Attributes for RowAttributes<'_> {
    fn attribute(&self, name: &str) -> Option<&serde_json::Value> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.values.get(i)?.as_ref()
    }
}

#[cfg(feature = "raster")]
fn draw_layers(
    mut canvas: crate::Canvas,
    layers: &[StyledRows],
    format: crate::ImageFormat,
) -> Result<Vec<u8>> {
    if let Some(background) = layers.iter().find_map(|(style, ..)| style.background()) {
        canvas.fill(background);
    }
    draw_rows(&mut canvas, layers);
    canvas.encode(format)
}

/// Draws each layer's rows with its style.
#[cfg(feature = "raster")]
fn draw_rows(canvas: &mut crate::Canvas, layers: &[StyledRows]) {
    for (style, columns, rows) in layers {
        let features: Vec<(geo_types::Geometry<f64>, RowAttributes<'_>)> = rows
            .iter()
            .filter_map(|row| {
                use geo_traits::to_geo::ToGeoGeometry as _;
                let g = wkb::reader::read_wkb(&row.wkb).ok()?.try_to_geometry()?;
                Some((
                    g,
                    RowAttributes {
                        columns,
                        values: &row.values,
                    },
                ))
            })
            .collect();
        canvas.draw(style, features.iter().map(|(g, a)| (g, a)));
    }
}

/// The UTFGrid of one layer's rows (see [`MapConfig::render_grid`]).
#[cfg(feature = "raster")]
fn grid_json(
    mut canvas: crate::Canvas,
    layers: &[StyledRows],
    interactivity: &[String],
) -> serde_json::Value {
    draw_rows(&mut canvas, layers);
    let cells = canvas.utf_grid(4);
    let rows: Vec<&Fetched> = layers.iter().flat_map(|(_, _, rows)| rows).collect();
    let columns = layers
        .first()
        .map(|(_, c, _)| c.as_slice())
        .unwrap_or_default();
    // Keys in the order the features first show, row by row; "" for no feature.
    let mut keys: Vec<String> = vec![String::new()];
    let mut index_of: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    let mut data = serde_json::Map::new();
    let grid: Vec<String> = cells
        .iter()
        .map(|row| {
            row.iter()
                .map(|&feature| {
                    let index = match feature {
                        0 => 0,
                        f => *index_of.entry(f).or_insert_with(|| {
                            let at = (f - 1) as usize;
                            let key = rows
                                .get(at)
                                .and_then(|r| r.id)
                                .map_or_else(|| f.to_string(), |id| id.to_string());
                            let attributes = RowAttributes {
                                columns,
                                values: rows
                                    .get(at)
                                    .map(|r| r.values.as_slice())
                                    .unwrap_or_default(),
                            };
                            let mut fields = serde_json::Map::new();
                            for name in interactivity {
                                let value = crate::Attributes::attribute(&attributes, name)
                                    .cloned()
                                    .unwrap_or(serde_json::Value::Null);
                                fields.insert(name.clone(), value);
                            }
                            data.insert(key.clone(), serde_json::Value::Object(fields));
                            keys.push(key);
                            keys.len() - 1
                        }),
                    };
                    utf_char(index)
                })
                .collect()
        })
        .collect();
    serde_json::json!({ "grid": grid, "keys": keys, "data": data })
}

/// UTFGrid's character for key `index`: 32 up, skipping `"` and `\\`.
#[cfg(feature = "raster")]
fn utf_char(index: usize) -> char {
    let mut code = index as u32 + 32;
    if code >= 34 {
        code += 1;
    }
    if code >= 92 {
        code += 1;
    }
    char::from_u32(code).unwrap_or(' ')
}

impl MapConfig {
    /// Checks the config against the database as its caller (on `pool`, a pool that logged in
    /// as the caller's role, in one read-only [`sqlpass::Session`] with `sandbox`'s limits,
    /// always rolled back), as Windshaft does when a map is instantiated: each data layer's SQL
    /// is described (never run) and must have the geometry, id, attribute and interactivity
    /// columns the layer names; each dataview's source must have the columns its options name.
    /// Returns the tables the data layers read (`schema.table`, sorted, from their plans with
    /// [`sqlpass::install`]'s function; none without it): what a tile of the map is tagged
    /// with, to be dropped when one of them changes.
    ///
    /// # Errors
    ///
    /// [`Error::Layer`] with the layer's index and the database's refusal (a syntax error, a
    /// permission) or a missing column; [`Error::InvalidMapConfig`] for a dataview's missing
    /// column; [`Error::Sql`] when the sandbox could not begin.
    pub async fn check(&self, pool: &PgPool, sandbox: &sqlpass::Options) -> Result<Vec<String>> {
        let sandbox = sandbox.clone().access(sqlpass::Access::ReadOnly);
        let mut session = Session::begin(pool, &sandbox).await?;
        let checked = self.check_in(&mut session).await;
        // Nothing of the caller's outlives the check.
        let ended = session.end().await;
        let tables = checked?;
        ended?;
        Ok(tables)
    }

    async fn check_in(&self, session: &mut Session) -> Result<Vec<String>> {
        let mut tables = std::collections::BTreeSet::new();
        for (index, layer) in self.layers().iter().enumerate() {
            if !layer.is_data() {
                continue;
            }
            let at = |source: Error| Error::Layer {
                index,
                source: Box::new(source),
            };
            let columns = describe(session, layer.sql()).await.map_err(at)?;
            let wanted = std::iter::once(layer.geom_column())
                .chain(layer.id_column())
                .chain(layer.columns().iter().map(String::as_str))
                .chain(layer.interactivity().iter().map(String::as_str));
            #[cfg(feature = "raster")]
            let wanted = wanted.chain(
                layer
                    .style()
                    .map(crate::Style::fields)
                    .unwrap_or_default()
                    .iter()
                    .map(String::as_str),
            );
            for column in wanted {
                if !columns.iter().any(|c| c == column) {
                    return Err(at(Error::InvalidMapConfig {
                        layer: Some(index),
                        reason: format!("column \"{column}\" does not exist in the layer's SQL"),
                    }));
                }
            }
            tables.extend(tables_of(session, layer.sql()).await.map_err(at)?);
        }
        for dataview in self.dataviews() {
            let columns = describe(session, dataview.sql()).await?;
            for name in ["column", "aggregationColumn"] {
                let Some(column) = dataview.options().get(name).and_then(|v| v.as_str()) else {
                    continue;
                };
                if !columns.iter().any(|c| c == column) {
                    return Err(Error::InvalidMapConfig {
                        layer: None,
                        reason: format!(
                            "dataview {}: column \"{column}\" does not exist in its source",
                            dataview.id()
                        ),
                    });
                }
            }
        }
        Ok(tables.into_iter().collect())
    }
}

/// The tables `sql` (one checked statement) reads, from its plan, inside PostgreSQL
/// (`sqlpass.query_tables`, when it is installed: none otherwise).
async fn tables_of(session: &mut Session, sql: &str) -> Result<Vec<String>> {
    let installed = "SELECT to_regprocedure('sqlpass.query_tables(text)') IS NOT NULL";
    let mut has = false;
    session
        .for_each_row(sqlx::query(installed), |row| {
            has = row.try_get::<bool, _>(0).unwrap_or(false);
            ControlFlow::Continue(())
        })
        .await?;
    if !has {
        return Ok(Vec::new());
    }
    let query = sqlx::query("SELECT sqlpass.query_tables($1)").bind(sql.to_owned());
    let mut tables = Vec::new();
    let mut failed = None;
    session
        .for_each_row(query, |row| {
            match row.try_get::<Vec<String>, _>(0) {
                Ok(found) => tables = found,
                Err(e) => failed = Some(e),
            }
            ControlFlow::Continue(())
        })
        .await?;
    match failed {
        Some(e) => Err(Error::Database(e)),
        None => Ok(tables),
    }
}

impl MapConfig {
    /// The attributes of feature `id` of layer `index` (its `attributes.columns`, found by its
    /// `attributes.id` column, `cartodb_id` by default), as Windshaft's
    /// `/{token}/{layer}/attributes/{id}` answers them: one JSON object, or `None` when no
    /// row has that id. Read as the caller on `pool`, in the sandbox.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMapConfig`] for no such data layer, one without attributes, or several
    /// rows with the id; [`Error::Sql`] when the database refuses.
    pub async fn attributes(
        &self,
        index: usize,
        id: i64,
        pool: &PgPool,
        sandbox: &sqlpass::Options,
    ) -> Result<Option<serde_json::Value>> {
        let invalid = |reason: String| Error::InvalidMapConfig {
            layer: Some(index),
            reason,
        };
        let layer = self
            .layers()
            .get(index)
            .filter(|l| l.is_data())
            .ok_or_else(|| invalid(format!("no data layer {index}")))?;
        if layer.columns().is_empty() {
            return Err(invalid(format!("layer {index} has no attributes")));
        }
        let id_column = layer.id_column().unwrap_or("cartodb_id");
        let columns: Vec<String> = layer
            .columns()
            .iter()
            .map(|c| format!("_q.\"{c}\""))
            .collect();
        let sql = format!(
            "SELECT to_jsonb(_a)::text FROM (SELECT {} FROM (\n{}\n) AS _q WHERE _q.\"{id_column}\" = {id}) AS _a LIMIT 2",
            columns.join(", "),
            layer.sql()
        );
        let sandbox = sandbox.clone().access(sqlpass::Access::ReadOnly);
        let mut session = Session::begin(pool, &sandbox).await?;
        let mut found: Vec<String> = Vec::new();
        let mut failed = None;
        let read = session
            .for_each_row(sqlx::query(AssertSqlSafe(sql)), |row| {
                match row.try_get::<String, _>(0) {
                    Ok(text) => found.push(text),
                    Err(e) => failed = Some(e),
                }
                ControlFlow::Continue(())
            })
            .await;
        let ended = session.end().await;
        read?;
        ended?;
        if let Some(e) = failed {
            return Err(Error::Database(e));
        }
        match found.as_slice() {
            [] => Ok(None),
            [one] => serde_json::from_str(one)
                .map(Some)
                .map_err(|e| Error::Encode(format!("the attributes' JSON: {e}"))),
            _ => Err(invalid(format!("several features have {id_column} {id}"))),
        }
    }
}

/// The result columns of `sql` (one checked statement), found without running it: under
/// `LIMIT 0` beside a one-row relation, whose one row of NULLs has the statement's columns.
async fn describe(session: &mut Session, sql: &str) -> Result<Vec<String>> {
    Ok(describe_columns(session, sql)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// The result columns of `sql` and their types' names, as [`describe`] finds them.
pub(crate) async fn describe_columns(
    session: &mut Session,
    sql: &str,
) -> Result<Vec<(String, String)>> {
    let describe = format!(
        "SELECT _q.* FROM (VALUES (1)) AS _one(_) LEFT JOIN \
         (SELECT * FROM (\n{sql}\n) AS _i LIMIT 0) AS _q ON true"
    );
    match describe_once(session, &describe).await {
        // A type sqlx had not met (PostGIS's) replaced the statement: known the second time.
        Err(e) if e.sqlstate() == Some("26000") => {
            session.restart().await?;
            Ok(describe_once(session, &describe).await?)
        }
        described => Ok(described?),
    }
}

async fn describe_once(
    session: &mut Session,
    describe: &str,
) -> sqlpass::Result<Vec<(String, String)>> {
    use sqlx::{Column as _, TypeInfo as _};
    let mut columns = Vec::new();
    session
        .for_each_row(sqlx::query(AssertSqlSafe(describe.to_owned())), |row| {
            columns = row
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
                .collect();
            ControlFlow::Continue(())
        })
        .await?;
    Ok(columns)
}

/// [`fetch_layer`], begun again once when the unnamed statement was replaced before its first
/// row (sqlx's type look-up, or a pooler's server connection that lacks it), as the SQL API
/// does.
async fn fetch_retrying(
    session: &mut Session,
    layer: &MapLayer,
    columns: &[String],
    b: &crate::Bounds,
    options: &TileOptions,
) -> Result<Vec<Fetched>> {
    let rows = fetch_layer(session, layer, columns, b, options).await;
    if matches!(&rows, Err(Error::Sql(e)) if e.sqlstate() == Some("26000")) {
        session.restart().await?;
        return fetch_layer(session, layer, columns, b, options).await;
    }
    rows
}

/// The rows of `layer` in `b`: geometry, id and `columns`.
async fn fetch_layer(
    session: &mut Session,
    layer: &MapLayer,
    columns: &[String],
    b: &crate::Bounds,
    options: &TileOptions,
) -> Result<Vec<Fetched>> {
    let q = |c: &str| format!("q.\"{c}\"");
    let max = options.source_bytes;
    // Values over the byte limit are not sent: NULL in their place, and the last column says
    // so (the database measures them; the client never holds them).
    let guarded = |size: &str, value: String| {
        format!("CASE WHEN pg_column_size({size}) > {max} THEN NULL ELSE {value} END")
    };
    // The layer's SQL is inlined into this query, so each mention of one of its columns
    // computes that column's expression again (an `ST_Transform` four times a row): the
    // columns read more than once are taken once each, behind a barrier (`OFFSET 0`), as x.g
    // and x.c0, x.c1, …; the box test stays on the layer's own column, where an index serves.
    let g = q(layer.geom_column());
    let once: Vec<String> = std::iter::once(format!("{g} AS g"))
        .chain(
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{} AS c{i}", q(c))),
        )
        .collect();
    let mut select = vec![guarded("x.g", "ST_AsBinary(x.g)".into())];
    select.push(
        layer
            .id_column()
            .map_or("null::int8".into(), |id| format!("{}::int8", q(id))),
    );
    select.extend(
        (0..columns.len()).map(|i| guarded(&format!("x.c{i}"), format!("to_jsonb(x.c{i})::text"))),
    );
    let sizes: Vec<String> = std::iter::once("x.g".to_owned())
        .chain((0..columns.len()).map(|i| format!("x.c{i}")))
        .map(|c| format!("pg_column_size({c}) > {max}"))
        .collect();
    select.push(format!("coalesce({}, false)", sizes.join(" OR ")));
    let sql = format!(
        "SELECT {} FROM (\n{}\n) AS q CROSS JOIN LATERAL (SELECT {} OFFSET 0) AS x \
         WHERE {g} && ST_MakeEnvelope($1, $2, $3, $4, 3857) LIMIT {}",
        select.join(", "),
        layer.sql(),
        once.join(", "),
        options.source_rows.saturating_add(1)
    );
    let query = sqlx::query(AssertSqlSafe(sql))
        .bind(b.min_x)
        .bind(b.min_y)
        .bind(b.max_x)
        .bind(b.max_y);
    let mut reader = SourceReader::new(layer.name(), options);
    let mut out = Vec::new();
    session
        .for_each_row(query, |row| {
            reader.take(&row, |row| {
                let wkb: Option<Vec<u8>> = row.try_get(0).map_err(Error::Database)?;
                let id: Option<i64> = row.try_get(1).map_err(Error::Database)?;
                let Some(wkb) = wkb else { return Ok(()) };
                let values = (0..columns.len())
                    .map(|i| {
                        let text: Option<String> = row.try_get(i + 2).map_err(Error::Database)?;
                        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
                    })
                    .collect::<Result<_>>()?;
                out.push(Fetched {
                    wkb,
                    id: id.and_then(|i| u64::try_from(i).ok()),
                    values,
                });
                Ok(())
            })
        })
        .await?;
    reader.finish()?;
    Ok(out)
}

/// Counts what a layer reads against [`TileOptions::source_limits`] and keeps the first
/// error of the row handler, which stops the reading.
pub(crate) struct SourceReader<'a> {
    layer: &'a str,
    rows: u64,
    bytes: u64,
    max_rows: u64,
    max_bytes: u64,
    error: Option<Error>,
}

impl<'a> SourceReader<'a> {
    pub(crate) fn new(layer: &'a str, options: &TileOptions) -> Self {
        Self {
            layer,
            rows: 0,
            bytes: 0,
            max_rows: options.source_rows,
            max_bytes: options.source_bytes,
            error: None,
        }
    }

    /// Hands `row` to `f` unless a limit is passed; breaks on a limit or an error of `f`.
    pub(crate) fn take(
        &mut self,
        row: &PgRow,
        f: impl FnOnce(&PgRow) -> Result<()>,
    ) -> ControlFlow<()> {
        self.rows += 1;
        self.bytes += (0..row.len())
            .filter_map(|i| row.try_get_raw(i).ok())
            .map(|v| {
                let len = v.as_bytes().map_or(0, |b| b.len() as u64);
                // `bytea` in text format is `\x` and two hex digits a byte: counted as bytes.
                let hex = v.format() == sqlx::postgres::PgValueFormat::Text
                    && sqlx::ValueRef::type_info(&v).oid() == Some(sqlx::postgres::types::Oid(17));
                if hex { len.saturating_sub(2) / 2 } else { len }
            })
            .sum::<u64>();
        let too_large = row
            .try_get::<Option<bool>, _>(row.len().saturating_sub(1))
            .ok()
            .flatten()
            == Some(true);
        let over = if too_large {
            Some(format!("a value of more than {} bytes", self.max_bytes))
        } else if self.rows > self.max_rows {
            Some(format!("more than {} rows", self.max_rows))
        } else if self.bytes > self.max_bytes {
            Some(format!("more than {} bytes", self.max_bytes))
        } else {
            None
        };
        let result = match over {
            Some(what) => Err(Error::Limit(format!(
                "layer {} reads {what} for this tile, over the source limits",
                self.layer
            ))),
            None => f(row),
        };
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    /// The error that stopped the reading, if any.
    pub(crate) fn finish(self) -> Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

/// Encodes the fetched layers; over the byte budget, degrades as [`TileOptions::max_bytes`]
/// documents.
fn encode_within_budget(
    coord: TileCoord,
    options: &TileOptions,
    layers: &[&MapLayer],
    fetched: &[Vec<Fetched>],
) -> Result<RenderedTile> {
    let first = encode(coord, options, layers, fetched, None)?;
    let Some(budget) = options.max_bytes else {
        return Ok(first);
    };
    if first.bytes.len() <= budget {
        return Ok(first);
    }
    // From the tolerance asked for, or half a unit when simplification was off.
    let base = if options.tolerance > 0.0 {
        options.tolerance
    } else {
        0.5
    };
    for factor in [4.0, 16.0] {
        let tolerance = base * factor;
        let stronger = options.clone().tolerance(tolerance)?;
        let mut tile = encode(coord, &stronger, layers, fetched, None)?;
        if tile.bytes.len() <= budget {
            tile.degraded = Some(Degradation {
                tolerance,
                kept_per_layer: None,
                fits: true,
            });
            return Ok(tile);
        }
    }
    let tolerance = base * 16.0;
    let strongest = options.clone().tolerance(tolerance)?;
    let mut keep = fetched.iter().map(Vec::len).max().unwrap_or(0) / 2;
    loop {
        let mut tile = encode(coord, &strongest, layers, fetched, Some(keep))?;
        let fits = tile.bytes.len() <= budget;
        if fits || keep <= 1 {
            tile.degraded = Some(Degradation {
                tolerance,
                kept_per_layer: Some(keep),
                fits,
            });
            return Ok(tile);
        }
        keep /= 2;
    }
}

fn encode(
    coord: TileCoord,
    options: &TileOptions,
    layers: &[&MapLayer],
    fetched: &[Vec<Fetched>],
    keep: Option<usize>,
) -> Result<RenderedTile> {
    let mut builder = TileBuilder::new(coord, options);
    let mut stats = Vec::with_capacity(layers.len());
    for (layer, features) in layers.iter().zip(fetched) {
        let mut lb = builder.layer(layer.name());
        for f in features.iter().take(keep.unwrap_or(usize::MAX)) {
            let texts: Vec<Option<String>> = f
                .values
                .iter()
                .map(|v| match v {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(v @ (serde_json::Value::Array(_) | serde_json::Value::Object(_))) => {
                        Some(v.to_string())
                    }
                    _ => None,
                })
                .collect();
            let attributes: Vec<(&str, Value<'_>)> = layer
                .columns()
                .iter()
                .zip(f.values.iter().zip(&texts))
                .map(|(name, (v, text))| (name.as_str(), json_value(v.as_ref(), text.as_deref())))
                .collect();
            lb.add_wkb(&f.wkb, f.id, &attributes)?;
        }
        stats.push((layer.name().to_owned(), lb.finish()?));
    }
    Ok(RenderedTile {
        bytes: builder.into_bytes()?,
        layers: stats,
        degraded: None,
    })
}

/// A JSON attribute as a tile value: strings (and arrays, objects as their JSON text),
/// integers, doubles, booleans; null is left out.
fn json_value<'a>(v: Option<&serde_json::Value>, text: Option<&'a str>) -> Value<'a> {
    match (v, text) {
        (_, Some(t)) => Value::String(t),
        (Some(serde_json::Value::Bool(b)), _) => Value::Bool(*b),
        (Some(serde_json::Value::Number(n)), _) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::Uint(u),
            (None, None, Some(f)) => Value::Double(f),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

/// A SQL function `(z int, x int, y int, params jsonb) → bytea` that makes whole tiles, as
/// Martin's function sources.
///
/// ```
/// assert!(geostack_tiles::FunctionSource::new("public.tiles_for").is_ok());
/// assert!(geostack_tiles::FunctionSource::new("x; drop table t").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionSource {
    schema: String,
    name: String,
}

impl FunctionSource {
    /// The function `schema.name` (or `name`, in `public`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] when the name is not a plain identifier.
    pub fn new(qualified: &str) -> Result<Self> {
        let (schema, name) = qualified.split_once('.').unwrap_or(("public", qualified));
        if !is_identifier(schema) || !is_identifier(name) {
            return Err(Error::InvalidOption {
                name: "function",
                reason: "expected schema.name of plain identifiers".into(),
            });
        }
        Ok(Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The tile `coord` with `params`, in a read-only [`sqlpass::Session`] with `sandbox`'s
    /// limits; empty when the function returns NULL or no bytes. A tile larger than the
    /// source byte limit of [`TileOptions::source_limits`] is refused by the database before it
    /// is sent.
    ///
    /// # Errors
    ///
    /// [`Error::Sql`] when the function fails, [`Error::Limit`] for a tile too large.
    pub async fn tile(
        &self,
        pool: &PgPool,
        coord: TileCoord,
        params: &serde_json::Value,
        options: &TileOptions,
        sandbox: &sqlpass::Options,
    ) -> Result<Vec<u8>> {
        let sandbox = sandbox.clone().access(sqlpass::Access::ReadOnly);
        let mut session = Session::begin(pool, &sandbox).await?;
        let max = options.source_bytes;
        let sql = format!(
            "SELECT octet_length(t) > {max}, CASE WHEN octet_length(t) <= {max} THEN t END \
             FROM (SELECT \"{}\".\"{}\"($1::int, $2::int, $3::int, $4::text::jsonb) AS t OFFSET 0) AS f",
            self.schema, self.name
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(i32::from(coord.z()))
            .bind(coord.x() as i32)
            .bind(coord.y() as i32)
            .bind(params.to_string());
        let mut tile: Result<Vec<u8>> = Ok(Vec::new());
        let read = session
            .for_each_row(query, |row| {
                let over: Option<bool> = row.try_get(0).unwrap_or_default();
                tile = if over == Some(true) {
                    Err(Error::Limit(format!(
                        "function {}.{} made a tile of more than {max} bytes",
                        self.schema, self.name
                    )))
                } else {
                    row.try_get::<Option<Vec<u8>>, _>(1)
                        .map(Option::unwrap_or_default)
                        .map_err(Error::Database)
                };
                ControlFlow::Continue(())
            })
            .await;
        session.end_in_background();
        read?;
        tile
    }
}
