//! Map-config layers and SQL functions as tile sources, run on the caller's pool in a
//! read-only transaction with a statement timeout.

use std::time::Duration;

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
    /// as the caller's role) inside one `BEGIN READ ONLY` transaction with `statement_timeout`,
    /// always rolled back. Each layer's SQL is wrapped as a subquery (one statement, extended
    /// protocol) and filtered by the buffered tile box on its geometry column, which must be in
    /// EPSG:3857. Attributes keep their JSON types (numbers, strings, booleans; nulls left out).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when a layer's SQL fails (a syntax error, a write refused by the
    /// read-only transaction, the statement timeout).
    pub async fn render(
        &self,
        pool: &PgPool,
        coord: TileCoord,
        options: &TileOptions,
        statement_timeout: Duration,
    ) -> Result<RenderedTile> {
        let mut conn = begin_read_only(pool, statement_timeout).await?;
        let result = async {
            let visible: Vec<&MapLayer> = self
                .layers()
                .iter()
                .filter(|l| l.visible_at(coord.z()))
                .collect();
            let frame = TileBuilder::new(coord, options);
            let mut fetched = Vec::with_capacity(visible.len());
            for layer in &visible {
                fetched.push(fetch_layer(&mut conn, layer, &frame.buffered_bounds()).await?);
            }
            encode_within_budget(coord, options, &visible, &fetched)
        }
        .await;
        // Nothing of the caller's outlives the tile.
        end_read_only(conn).await;
        result
    }
}

async fn fetch_layer(
    conn: &mut sqlx::PgConnection,
    layer: &MapLayer,
    b: &crate::Bounds,
) -> Result<Vec<Fetched>> {
    let q = |c: &str| format!("q.\"{c}\"");
    let mut select = vec![format!("ST_AsBinary({})", q(layer.geom_column()))];
    select.push(
        layer
            .id_column()
            .map_or("null::int8".into(), |id| format!("{}::int8", q(id))),
    );
    select.extend(
        layer
            .columns()
            .iter()
            .map(|c| format!("to_jsonb({})::text", q(c))),
    );
    let sql = format!(
        "SELECT {} FROM (\n{}\n) AS q WHERE {} && ST_MakeEnvelope($1, $2, $3, $4, 3857)",
        select.join(", "),
        layer.sql(),
        q(layer.geom_column())
    );
    let rows: Vec<PgRow> = sqlx::query(AssertSqlSafe(sql))
        .persistent(false)
        .bind(b.min_x)
        .bind(b.min_y)
        .bind(b.max_x)
        .bind(b.max_y)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::Database)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let wkb: Option<Vec<u8>> = row.try_get(0).map_err(Error::Database)?;
        let id: Option<i64> = row.try_get(1).map_err(Error::Database)?;
        let Some(wkb) = wkb else { continue };
        let values = (0..layer.columns().len())
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
    }
    Ok(out)
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

    /// The tile `coord` with `params`, read-only and within `statement_timeout`; empty when the
    /// function returns NULL or no bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the function fails.
    pub async fn tile(
        &self,
        pool: &PgPool,
        coord: TileCoord,
        params: &serde_json::Value,
        statement_timeout: Duration,
    ) -> Result<Vec<u8>> {
        let mut conn = begin_read_only(pool, statement_timeout).await?;
        let sql = format!(
            "SELECT \"{}\".\"{}\"($1::int, $2::int, $3::int, $4::text::jsonb)",
            self.schema, self.name
        );
        let result = sqlx::query_as::<_, (Option<Vec<u8>>,)>(AssertSqlSafe(sql))
            .persistent(false)
            .bind(i32::from(coord.z()))
            .bind(coord.x() as i32)
            .bind(coord.y() as i32)
            .bind(params.to_string())
            .fetch_one(&mut *conn)
            .await
            .map(|(bytes,)| bytes.unwrap_or_default())
            .map_err(Error::Database);
        end_read_only(conn).await;
        result
    }
}

type Conn = sqlx::pool::PoolConnection<sqlx::Postgres>;

/// A connection of `pool` inside `BEGIN READ ONLY` with `statement_timeout` set for the
/// transaction only. A connection whose set-up fails is closed rather than reused.
async fn begin_read_only(pool: &PgPool, statement_timeout: Duration) -> Result<Conn> {
    let mut conn = pool.acquire().await.map_err(Error::Database)?;
    let begun = async {
        sqlx::raw_sql("BEGIN READ ONLY").execute(&mut *conn).await?;
        sqlx::query("select set_config('statement_timeout', $1, true)")
            .bind(format!("{}ms", statement_timeout.as_millis().max(1)))
            .execute(&mut *conn)
            .await
    }
    .await;
    match begun {
        Ok(_) => Ok(conn),
        Err(e) => {
            conn.close_on_drop();
            Err(Error::Database(e))
        }
    }
}

/// Ends what [`begin_read_only`] began: ROLLBACK, or the connection is closed when that fails.
async fn end_read_only(mut conn: Conn) {
    if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
        conn.close_on_drop();
    }
}
