//! Dataviews (CARTO.js's widgets) computed by PostgreSQL over their source's rows, in the
//! sandbox, as the caller: categories, histograms and formulas, narrowed by the map's bounding
//! box, a circle or a polygon and by the other dataviews' filters.

use std::ops::ControlFlow;

use sqlpass::Session;
use sqlx::{AssertSqlSafe, PgPool, Row as _};

use crate::mapconfig::quote_literal;
use crate::{DataviewKind, Error, MapConfig, Result};

/// The most categories an aggregation answers (the rest are summed up as `Other`).
const MAX_CATEGORIES: u32 = 1000;
/// The most bins a histogram answers.
const MAX_BINS: u32 = 1000;
/// The longest polygon filter, in bytes of GeoJSON.
const MAX_POLYGON: usize = 256 << 10;

/// What a dataview request asks beyond its config: Windshaft's query parameters, as CARTO.js
/// sends them.
///
/// ```
/// let q = geostack_tiles::DataviewQuery::from_params([
///     ("bbox", "-10,35,20,60"), ("own_filter", "1"), ("bins", "5"),
/// ]).unwrap();
/// assert_eq!(q.bbox, Some([-10.0, 35.0, 20.0, 60.0]));
/// assert!(q.own_filter);
/// assert!(geostack_tiles::DataviewQuery::from_params([("bbox", "1,2,3")]).is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DataviewQuery {
    /// `bbox=west,south,east,north` in degrees: rows whose `the_geom_webmercator` meets it.
    pub bbox: Option<[f64; 4]>,
    /// `circle={"lng":…,"lat":…,"radius":metres}`: rows within the distance.
    pub circle: Option<[f64; 3]>,
    /// `polygon=<GeoJSON (Multi)Polygon in EPSG:4326>`: rows that meet it.
    pub polygon: Option<String>,
    /// `own_filter=1`: the dataview's own filter applies too.
    pub own_filter: bool,
    /// `categories=n`: an aggregation's categories before the rest is `Other` (default 6).
    pub categories: Option<u32>,
    /// `bins=n`: a numeric histogram's bins (its config's, else 10).
    pub bins: Option<u32>,
    /// `start`, `end`: a numeric histogram's range (else its column's).
    pub start: Option<f64>,
    /// See `start`.
    pub end: Option<f64>,
    /// `aggregation=minute|hour|day|week|month|quarter|year|auto`: a date histogram's bins.
    pub aggregation: Option<String>,
    /// `offset=seconds`: added to dates before they are binned (the viewer's time zone).
    pub offset: Option<i64>,
    /// `q=…` of `/search`: an aggregation's categories containing the text.
    pub search: Option<String>,
}

impl DataviewQuery {
    /// Reads Windshaft's parameters; others (`api_key`, `callback`…) are left alone.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the parameter that cannot be read.
    pub fn from_params<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut q = Self::default();
        let bad = |name: &'static str, reason: &str| Error::InvalidOption {
            name,
            reason: reason.to_owned(),
        };
        let number = |name: &'static str, v: &str| -> Result<f64> {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| bad(name, "expected a number"))
        };
        let count = |name: &'static str, v: &str, max: u32| -> Result<u32> {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| bad(name, &format!("expected a whole number from 1 to {max}")))
        };
        for (name, value) in params {
            match name {
                "bbox" => {
                    let parts: Vec<f64> = value
                        .split(',')
                        .map(|p| number("bbox", p))
                        .collect::<Result<_>>()?;
                    let [w, s, e, n] = parts[..] else {
                        return Err(bad("bbox", "expected west,south,east,north"));
                    };
                    q.bbox = Some([w, s, e, n]);
                }
                "circle" => {
                    let v: serde_json::Value = serde_json::from_str(value)
                        .map_err(|_| bad("circle", "expected {\"lng\",\"lat\",\"radius\"}"))?;
                    let get = |k: &str| v[k].as_f64().filter(|n| n.is_finite());
                    match (get("lng"), get("lat"), get("radius")) {
                        (Some(lng), Some(lat), Some(r)) if r >= 0.0 => {
                            q.circle = Some([lng, lat, r]);
                        }
                        _ => return Err(bad("circle", "expected {\"lng\",\"lat\",\"radius\"}")),
                    }
                }
                "polygon" => {
                    if value.len() > MAX_POLYGON {
                        return Err(bad("polygon", "larger than 256 KiB"));
                    }
                    let v: serde_json::Value = serde_json::from_str(value)
                        .map_err(|_| bad("polygon", "expected a GeoJSON polygon"))?;
                    if !matches!(v["type"].as_str(), Some("Polygon" | "MultiPolygon")) {
                        return Err(bad("polygon", "expected a GeoJSON polygon"));
                    }
                    q.polygon = Some(v.to_string());
                }
                "own_filter" => q.own_filter = matches!(value, "1" | "true"),
                "categories" => q.categories = Some(count("categories", value, MAX_CATEGORIES)?),
                "bins" => q.bins = Some(count("bins", value, MAX_BINS)?),
                "start" => q.start = Some(number("start", value)?),
                "end" => q.end = Some(number("end", value)?),
                "aggregation" => {
                    if !DATE_BINS.contains(&value) && value != "auto" {
                        return Err(bad(
                            "aggregation",
                            "expected minute, hour, day, week, month, quarter, year or auto",
                        ));
                    }
                    q.aggregation = Some(value.to_owned());
                }
                "offset" => {
                    q.offset = Some(
                        value
                            .trim()
                            .parse::<i64>()
                            .ok()
                            .filter(|o| o.abs() <= 86_400)
                            .ok_or_else(|| bad("offset", "expected seconds within a day"))?,
                    );
                }
                "q" => q.search = Some(value.to_owned()),
                _ => {}
            }
        }
        Ok(q)
    }

    /// The predicates of the spatial filters, over `the_geom_webmercator`.
    fn spatial(&self) -> Result<Vec<String>> {
        let g = "_s.\"the_geom_webmercator\"";
        let mut out = Vec::new();
        if let Some([w, s, e, n]) = self.bbox {
            // Clamped to web mercator's latitudes, as a map's bounds may pass them.
            let (s, n) = (s.clamp(-85.0511, 85.0511), n.clamp(-85.0511, 85.0511));
            out.push(format!(
                "{g} && ST_Transform(ST_MakeEnvelope({w:?}, {s:?}, {e:?}, {n:?}, 4326), 3857)"
            ));
        }
        if let Some([lng, lat, r]) = self.circle {
            out.push(format!(
                "ST_DWithin(ST_Transform({g}, 4326)::geography, \
                 ST_SetSRID(ST_MakePoint({lng:?}, {lat:?}), 4326)::geography, {r:?})"
            ));
        }
        if let Some(polygon) = &self.polygon {
            let literal = quote_literal(polygon).map_err(|reason| Error::InvalidOption {
                name: "polygon",
                reason,
            })?;
            out.push(format!(
                "ST_Intersects({g}, ST_Transform(ST_SetSRID(ST_GeomFromGeoJSON({literal}), 4326), 3857))"
            ));
        }
        Ok(out)
    }
}

/// The date bins a histogram of dates may have.
const DATE_BINS: [&str; 7] = ["minute", "hour", "day", "week", "month", "quarter", "year"];

impl MapConfig {
    /// Computes dataview `id` as Windshaft answers it, on `pool` (a pool that logged in as the
    /// caller's role) in one read-only [`sqlpass::Session`] with `sandbox`'s limits: over its
    /// source's rows that the query's spatial filters and the map's other dataview filters
    /// keep (its own too with `own_filter`).
    ///
    /// - aggregation: `{type, aggregation, count, nulls, min, max, categoriesCount,
    ///   categories: [{category, value, agg}]}`, the top categories by value and the rest as
    ///   `Other` (`agg: true`); with `search`, the categories containing the text.
    /// - histogram of numbers: `{type, bins_count, bins_start, bin_width, nulls, avg, bins:
    ///   [{bin, min, max, avg, freq}]}` (empty bins left out); of dates: `{type, aggregation,
    ///   offset, timestamp_start, bins_count, nulls, bins: [{bin, timestamp, min, max, avg,
    ///   freq}]}` in epoch seconds.
    /// - formula: `{type, operation, result, nulls}`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMapConfig`] for no such dataview, [`Error::InvalidOption`] for what the
    /// query asks that the dataview cannot do, [`Error::Sql`] when the database refuses.
    pub async fn dataview_data(
        &self,
        id: &str,
        query: &DataviewQuery,
        pool: &PgPool,
        sandbox: &sqlpass::Options,
    ) -> Result<serde_json::Value> {
        let dataview = self.dataview(id).ok_or_else(|| Error::InvalidMapConfig {
            layer: None,
            reason: format!("no dataview {id}"),
        })?;
        let except = (!query.own_filter).then_some(id);
        let mut conditions = query.spatial()?;
        // The filters name the source's columns unqualified: only `_s` is in their scope.
        conditions.extend(
            self.filters_of(dataview.source(), except)
                .into_iter()
                .map(str::to_owned),
        );
        let source = format!(
            "SELECT _s.* FROM (\n{}\n) AS _s WHERE {}",
            dataview.sql(),
            if conditions.is_empty() {
                "true".to_owned()
            } else {
                conditions.join(" AND ")
            }
        );
        let sandbox = sandbox.clone().access(sqlpass::Access::ReadOnly);
        let mut session = Session::begin(pool, &sandbox).await?;
        let computed = async {
            let options = dataview.options();
            let text = |name: &str| options.get(name).and_then(serde_json::Value::as_str);
            let sql = match dataview.kind() {
                DataviewKind::Aggregation => {
                    let column = text("column").ok_or_else(|| missing("column"))?;
                    aggregation_sql(
                        &source,
                        column,
                        text("aggregation"),
                        text("aggregationColumn"),
                        query,
                    )?
                }
                DataviewKind::Formula => formula_sql(&source, text("column"), text("operation"))?,
                DataviewKind::Histogram => {
                    let column = text("column").ok_or_else(|| missing("column"))?;
                    let columns =
                        crate::sql_layers::describe_columns(&mut session, &source).await?;
                    let ty = columns
                        .iter()
                        .find(|(name, _)| name == column)
                        .map(|(_, ty)| ty.to_ascii_lowercase())
                        .unwrap_or_default();
                    if matches!(ty.as_str(), "date" | "timestamp" | "timestamptz") {
                        date_histogram_sql(&source, column, query)?
                    } else {
                        let bins = query
                            .bins
                            .or_else(|| {
                                options
                                    .get("bins")
                                    .and_then(serde_json::Value::as_u64)
                                    .and_then(|b| u32::try_from(b).ok())
                            })
                            .unwrap_or(10)
                            .clamp(1, MAX_BINS);
                        histogram_sql(&source, column, bins, query)
                    }
                }
            };
            one_json(&mut session, sql).await
        }
        .await;
        let ended = session.end().await;
        let value = computed?;
        ended?;
        Ok(value)
    }
}

fn missing(option: &'static str) -> Error {
    Error::InvalidOption {
        name: option,
        reason: "the dataview's options lack it".into(),
    }
}

/// The aggregate of `operation` over `column` (`count` needs none).
fn aggregate(operation: &str, column: Option<&str>) -> Result<String> {
    match (operation, column) {
        ("count", _) => Ok("count(*)".into()),
        ("sum" | "avg" | "min" | "max", Some(c)) => Ok(format!("{operation}(_s.\"{c}\")")),
        ("sum" | "avg" | "min" | "max", None) => Err(missing("aggregationColumn")),
        (other, _) => Err(Error::InvalidOption {
            name: "aggregation",
            reason: format!("{other} is not count, sum, avg, min or max"),
        }),
    }
}

fn aggregation_sql(
    source: &str,
    column: &str,
    aggregation: Option<&str>,
    aggregation_column: Option<&str>,
    query: &DataviewQuery,
) -> Result<String> {
    let operation = aggregation.unwrap_or("count");
    let agg = aggregate(operation, aggregation_column)?;
    let c = format!("_s.\"{column}\"");
    let limit = query.categories.unwrap_or(6);
    let categories = match &query.search {
        Some(text) => {
            let escaped = text
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let pattern = quote_literal(&format!("%{escaped}%"))
                .map_err(|reason| Error::InvalidOption { name: "q", reason })?;
            format!(
                "coalesce((SELECT jsonb_agg(jsonb_build_object('category', category, 'value', value, 'agg', false) ORDER BY n) \
                 FROM _ranked WHERE category ILIKE {pattern} ESCAPE '\\' AND n <= {MAX_CATEGORIES}), '[]'::jsonb)"
            )
        }
        None => format!(
            "coalesce((SELECT jsonb_agg(jsonb_build_object('category', category, 'value', value, 'agg', false) ORDER BY n) \
             FROM _ranked WHERE n <= {limit}), '[]'::jsonb) \
             || coalesce((SELECT jsonb_agg(jsonb_build_object('category', 'Other', 'value', value, 'agg', true)) FROM _other), '[]'::jsonb)"
        ),
    };
    Ok(format!(
        "WITH _src AS MATERIALIZED ({source}), \
         _c AS (SELECT {c}::text AS category, {agg} AS value FROM _src AS _s WHERE {c} IS NOT NULL GROUP BY 1), \
         _ranked AS (SELECT category, value, row_number() OVER (ORDER BY value DESC NULLS LAST, category) AS n FROM _c), \
         _other AS (SELECT {agg} AS value FROM _src AS _s \
                    WHERE {c} IS NOT NULL AND {c}::text NOT IN (SELECT category FROM _ranked WHERE n <= {limit}) \
                    HAVING count(*) > 0) \
         SELECT jsonb_build_object( \
           'type', 'aggregation', 'aggregation', {op}, \
           'count', (SELECT count(*) FROM _src), \
           'nulls', (SELECT count(*) FROM _src AS _s WHERE {c} IS NULL), \
           'categoriesCount', (SELECT count(*) FROM _c), \
           'min', (SELECT min(value) FROM _c), 'max', (SELECT max(value) FROM _c), \
           'categories', {categories})::text",
        op = quote_literal(operation).map_err(|reason| Error::InvalidOption {
            name: "aggregation",
            reason
        })?,
    ))
}

fn formula_sql(source: &str, column: Option<&str>, operation: Option<&str>) -> Result<String> {
    let operation = operation.unwrap_or("count");
    let agg = aggregate(operation, column)?;
    let nulls = column.map_or("0".to_owned(), |c| {
        format!("count(*) FILTER (WHERE _s.\"{c}\" IS NULL)")
    });
    Ok(format!(
        "SELECT jsonb_build_object('type', 'formula', 'operation', {op}, 'result', {agg}, 'nulls', {nulls})::text \
         FROM ({source}) AS _s",
        op = quote_literal(operation).map_err(|reason| Error::InvalidOption {
            name: "operation",
            reason
        })?,
    ))
}

fn histogram_sql(source: &str, column: &str, bins: u32, query: &DataviewQuery) -> String {
    let bound = |b: Option<f64>| b.map_or("NULL".to_owned(), |v| format!("{v:?}"));
    let (start, end) = (bound(query.start), bound(query.end));
    format!(
        "WITH _v AS MATERIALIZED (SELECT _s.\"{column}\"::float8 AS v FROM ({source}) AS _s), \
         _r AS (SELECT coalesce({start}::float8, min(v)) AS lo, coalesce({end}::float8, max(v)) AS hi, \
                       avg(v) AS avg, count(*) FILTER (WHERE v IS NULL) AS nulls FROM _v), \
         _b AS (SELECT CASE WHEN _r.hi = _r.lo THEN 0 \
                            ELSE least(greatest(floor((v - _r.lo) / (_r.hi - _r.lo) * {bins})::int, 0), {bins} - 1) END AS bin, v \
                FROM _v, _r WHERE v IS NOT NULL AND v >= _r.lo AND v <= _r.hi), \
         _g AS (SELECT bin, min(v) AS mn, max(v) AS mx, avg(v) AS a, count(*) AS freq FROM _b GROUP BY bin) \
         SELECT jsonb_build_object( \
           'type', 'histogram', 'bins_count', {bins}, 'bins_start', _r.lo, \
           'bin_width', CASE WHEN _r.hi = _r.lo THEN 0 ELSE (_r.hi - _r.lo) / {bins} END, \
           'nulls', _r.nulls, 'avg', _r.avg, \
           'bins', coalesce((SELECT jsonb_agg(jsonb_build_object('bin', bin, 'min', mn, 'max', mx, 'avg', a, 'freq', freq) ORDER BY bin) FROM _g), '[]'::jsonb))::text \
         FROM _r"
    )
}

fn date_histogram_sql(source: &str, column: &str, query: &DataviewQuery) -> Result<String> {
    let offset = query.offset.unwrap_or(0);
    let t = format!("(_s.\"{column}\"::timestamptz + {offset} * interval '1 second')");
    // `auto`: the coarsest bin that still gives a few of them over the column's range.
    let chosen = match query.aggregation.as_deref() {
        Some(a) if a != "auto" => quote_literal(a).map_err(|reason| Error::InvalidOption {
            name: "aggregation",
            reason,
        })?,
        _ => "(SELECT CASE WHEN span > interval '3 years' THEN 'year' \
                           WHEN span > interval '1 year' THEN 'quarter' \
                           WHEN span > interval '3 months' THEN 'month' \
                           WHEN span > interval '3 weeks' THEN 'week' \
                           WHEN span > interval '3 days' THEN 'day' \
                           WHEN span > interval '3 hours' THEN 'hour' ELSE 'minute' END \
               FROM (SELECT coalesce(max(t) - min(t), interval '0') AS span FROM _t) AS _span)"
            .to_owned(),
    };
    // A bin's index counts whole bins from the first: months (and quarters, years) by the
    // calendar, the others by their length.
    let index = "CASE _a.agg \
                   WHEN 'year' THEN (extract(year FROM b) - extract(year FROM _r.lo))::int \
                   WHEN 'quarter' THEN ((extract(year FROM b) - extract(year FROM _r.lo)) * 4 \
                                        + (extract(quarter FROM b) - extract(quarter FROM _r.lo)))::int \
                   WHEN 'month' THEN ((extract(year FROM b) - extract(year FROM _r.lo)) * 12 \
                                      + (extract(month FROM b) - extract(month FROM _r.lo)))::int \
                   ELSE (extract(epoch FROM b - _r.lo) / extract(epoch FROM ('1 ' || _a.agg)::interval))::int END";
    Ok(format!(
        "WITH _t AS MATERIALIZED (SELECT {t} AS t FROM ({source}) AS _s), \
         _a AS (SELECT {chosen}::text AS agg), \
         _d AS (SELECT date_trunc(_a.agg, t, 'UTC') AS b, t FROM _t, _a WHERE t IS NOT NULL), \
         _r AS (SELECT min(b) AS lo, max(b) AS hi FROM _d), \
         _g AS (SELECT {index} AS bin, b, min(t) AS mn, max(t) AS mx, avg(extract(epoch FROM t)) AS a, count(*) AS freq \
                FROM _d, _r, _a GROUP BY b, _r.lo, _a.agg) \
         SELECT jsonb_build_object( \
           'type', 'histogram', 'aggregation', _a.agg, 'offset', {offset}, \
           'timestamp_start', extract(epoch FROM _r.lo), \
           'bins_count', coalesce((SELECT max(bin) + 1 FROM _g), 0), \
           'nulls', (SELECT count(*) FROM _t WHERE t IS NULL), \
           'bins', coalesce((SELECT jsonb_agg(jsonb_build_object('bin', bin, 'timestamp', extract(epoch FROM b), \
                                   'min', extract(epoch FROM mn), 'max', extract(epoch FROM mx), 'avg', a, 'freq', freq) ORDER BY bin) \
                             FROM _g), '[]'::jsonb))::text \
         FROM _r, _a"
    ))
}

/// Runs `sql` (one row, one text column of JSON) and parses its value.
async fn one_json(session: &mut Session, sql: String) -> Result<serde_json::Value> {
    let mut text: Option<String> = None;
    let mut failed = None;
    session
        .for_each_row(sqlx::query(AssertSqlSafe(sql)), |row| {
            match row.try_get::<String, _>(0) {
                Ok(t) => text = Some(t),
                Err(e) => failed = Some(e),
            }
            ControlFlow::Continue(())
        })
        .await?;
    if let Some(e) = failed {
        return Err(Error::Database(e));
    }
    let text = text.ok_or_else(|| Error::Encode("the dataview's query gave no row".into()))?;
    serde_json::from_str(&text).map_err(|e| Error::Encode(format!("the dataview's JSON: {e}")))
}
