//! Table tiles, as Martin serves them: `/tiles/{source}/{z}/{x}/{y}.mvt` for every table and
//! view with a geometry column the caller's role may read, and `/tiles/{source}` as TileJSON. A
//! source is `table` or `schema.table`, with `.column` to choose another geometry column than
//! the first; several joined by commas make one tile with a layer each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use geoauth::{Api, Principal};
use geostack_tiles::{AttributeKind, TableSource, TileBuilder, TileKey, discover_with_ids};

use super::gate::{ApiRequest, Gate, respond};
use super::maps::user_path;
use super::tile::{coord, tilejson_with_fields, with_key};
use super::{Error, RedisConnection, Result, Sandbox, Tiles};

/// How long a role's list of tables is kept before it is looked up again.
const TABLES_TTL: Duration = Duration::from_secs(60);
/// A table the list lacks is looked up again at once, at most this often per role: a grant
/// made a moment ago is seen, and unknown names cannot make every request a lookup.
const TABLES_RECHECK: Duration = Duration::from_secs(1);
/// The most sources one composite tile joins.
const MAX_SOURCES: usize = 16;

/// A role's readable tables and when they were looked up.
type Discovered = (Instant, Arc<Vec<Arc<Known>>>);

/// A table source the role may read, with the names each tile request would otherwise work
/// out again.
struct Known {
    source: Arc<TableSource>,
    /// `schema.table`.
    name: String,
    /// `schema.table.column`: which source a cached tile is of.
    id: String,
    /// The table as keys' grants name it (`None`: a name grants cannot name, never served).
    table: Option<geoauth::TableName>,
}

impl Known {
    fn new(source: TableSource) -> Self {
        let name = source.name();
        Self {
            id: format!("{name}.{}", source.geometry_column),
            table: name.parse().ok(),
            name,
            source: Arc::new(source),
        }
    }

    /// Its name in a URL: `schema.table`, and `.column` when one was `chosen`.
    fn canonical(&self, chosen: bool) -> String {
        if chosen {
            self.id.clone()
        } else {
            self.name.clone()
        }
    }
}

/// Tiles of the tables and views a caller may read, as Martin serves them:
/// `GET /tiles/{source}/{z}/{x}/{y}.mvt` and `GET /tiles/{source}` (TileJSON), also under
/// `/user/{user}`. A source is `table` or `schema.table` (its first geometry column), or either
/// with `.column` (that geometry column: `places.geom3857`); `a,b` joins sources into one tile
/// with a layer each, named after their tables (at most 16). `fields=name,pop_max` chooses the
/// attributes the features carry (empty: none; by default every column of a type tiles carry). Feature ids come from the primary
/// key, else from [`ServerConfig::tile_id_columns`](super::ServerConfig::tile_id_columns). The
/// caller's role must be able to read each table, and a key that lists its tables must list it.
/// A table the caller was granted a moment ago is found at once.
///
/// ```no_run
/// # fn demo(gate: geostack::server::Gate, sandbox: geostack::server::Sandbox) {
/// use geostack::server::{ServerConfig, TablesApi, Tiles};
///
/// let tiles = Tiles::new(&ServerConfig::default());
/// let app = axum::Router::new().merge(TablesApi::new(gate, sandbox, tiles).router());
/// # let _ = app; }
/// ```
#[derive(Clone)]
pub struct TablesApi<C = redis::aio::ConnectionManager> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    gate: Gate<C>,
    sandbox: Sandbox,
    tiles: Tiles,
    /// Per database role: the tables it may read, found when first asked.
    tables: Mutex<HashMap<String, Discovered>>,
}

impl<C: RedisConnection> TablesApi<C> {
    /// The table tiles of callers passing `gate`, read in `sandbox`, kept in `tiles`.
    pub fn new(gate: Gate<C>, sandbox: Sandbox, tiles: Tiles) -> Self {
        Self {
            inner: Arc::new(Inner {
                gate,
                sandbox,
                tiles,
                tables: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Its routes, also under `/user/{user}`.
    pub fn router(&self) -> Router {
        super::mount(
            vec![
                ("/tiles/{table}".to_owned(), get(tilejson::<C>)),
                ("/tiles/{table}/{z}/{x}/{y}".to_owned(), get(tile::<C>)),
            ],
            self.clone(),
        )
    }

    /// The sources `names` (comma-separated) among the tables the caller's role may read, each
    /// also allowed by the caller's key, and whether a geometry column was chosen.
    async fn sources(&self, principal: &Principal, names: &str) -> Result<Vec<(Arc<Known>, bool)>> {
        if names.split(',').nth(MAX_SOURCES).is_some() {
            return Err(Error::BadRequest(format!(
                "at most {MAX_SOURCES} sources in one tile"
            )));
        }
        let role = principal.db_role().name();
        let mut tables = self.discovered(principal, role, false).await?;
        let mut sources: Vec<(Arc<Known>, bool)> = Vec::with_capacity(1);
        for name in names.split(',') {
            let mut found = find(&tables.1, name);
            // Not there: granted since the list was made, perhaps.
            if found.is_none() && tables.0.elapsed() >= TABLES_RECHECK {
                tables = self.discovered(principal, role, true).await?;
                found = find(&tables.1, name);
            }
            let (known, chosen) = found.ok_or_else(|| {
                Error::NotFound(format!("no table {name} with a geometry column"))
            })?;
            // The key's grants as well as its role's: a key that lists its tables reads no
            // other, whatever its role could.
            let table = known
                .table
                .as_ref()
                .ok_or_else(|| Error::NotFound(format!("no table {}", known.name)))?;
            principal.authorize_table(table, geoauth::Privilege::Select)?;
            if sources
                .iter()
                .any(|(s, _)| s.source.table == known.source.table)
            {
                return Err(Error::BadRequest(format!(
                    "two layers of one tile would be named {}",
                    known.source.table
                )));
            }
            sources.push((Arc::clone(known), chosen));
        }
        Ok(sources)
    }

    /// The tables `role` may read: as last looked up (within [`TABLES_TTL`]), or afresh.
    async fn discovered(
        &self,
        principal: &Principal,
        role: &str,
        fresh: bool,
    ) -> Result<Discovered> {
        if !fresh {
            let tables = self
                .inner
                .tables
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, found)) = tables.get(role).filter(|(at, _)| at.elapsed() < TABLES_TTL)
            {
                return Ok((*at, Arc::clone(found)));
            }
        }
        let ids = &self.inner.gate.config().tile_id_columns;
        let pool = self.inner.sandbox.pool_of(principal)?;
        // Boxed: seldom run, and large.
        let found = Box::pin(discover_with_ids(&pool, ids)).await?;
        let found = Arc::new(found.into_iter().map(|s| Arc::new(Known::new(s))).collect());
        let at = Instant::now();
        self.inner
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(role.to_owned(), (at, Arc::clone(&found)));
        Ok((at, found))
    }
}

/// The source `name` among `tables`: `schema.table` or a `public` table's name (its first
/// geometry column), else either followed by `.column` (then `true`).
fn find<'a>(tables: &'a [Arc<Known>], name: &str) -> Option<(&'a Arc<Known>, bool)> {
    // `schema.table`, or `table` alone in `public`; compared in place (this runs on every
    // tile request, for every table the role reads).
    let is = |k: &Known, table: &str| {
        let t = &*k.source;
        table
            .strip_prefix(t.schema.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| rest == t.table)
            || (t.schema == "public" && t.table == table)
    };
    match tables.iter().find(|t| is(t, name)) {
        Some(t) => Some((t, false)),
        None => {
            let (table, column) = name.rsplit_once('.')?;
            tables
                .iter()
                .find(|t| is(t, table) && t.source.geometry_column == column)
                .map(|t| (t, true))
        }
    }
}

/// The attributes the request chose (`fields=name,pop_max`; empty: none), sorted, or `None`
/// when it chose none; `sources` keep only those. A name none of them carries is refused.
fn choose_fields(sources: &mut [Arc<TableSource>], query: Option<&str>) -> Result<Option<String>> {
    // Most requests choose nothing: their query is not parsed (a name spelled with `%` is).
    let chooses = |q: &&str| q.contains("fields") || q.contains('%');
    let Some(asked) = query.filter(chooses).and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "fields")
            .map(|(_, v)| v.into_owned())
    }) else {
        return Ok(None);
    };
    let mut names: Vec<&str> = asked.split(',').filter(|n| !n.is_empty()).collect();
    names.sort_unstable();
    names.dedup();
    for name in &names {
        if !sources
            .iter()
            .any(|s| s.attributes.iter().any(|(a, _)| a == name))
        {
            return Err(Error::BadRequest(format!(
                "fields: no attribute {name:?} in these tiles"
            )));
        }
    }
    for source in sources.iter_mut() {
        Arc::make_mut(source)
            .attributes
            .retain(|(a, _)| names.contains(&a.as_str()));
    }
    Ok(Some(names.join(",")))
}

/// The sources' names in the tile path, without the extension.
fn table_name(path: &HashMap<String, String>) -> &str {
    let raw = path.get("table").map(String::as_str).unwrap_or_default();
    raw.strip_suffix(".json").unwrap_or(raw)
}

async fn tile<C: RedisConnection>(State(api): State<TablesApi<C>>, req: ApiRequest) -> Response {
    let inner = &*api.inner;
    respond(
        async {
            let caller = inner.gate.caller(&req, Api::Maps).await?;
            let coord = coord(&req.path)?;
            let named = api
                .sources(&caller.principal, table_name(&req.path))
                .await?;
            let mut sources: Vec<Arc<TableSource>> =
                named.iter().map(|(k, _)| Arc::clone(&k.source)).collect();
            let fields = choose_fields(&mut sources, req.query.as_deref())?;
            // Each source with its geometry column: one table's columns are different tiles.
            let mut id = String::with_capacity(64);
            id.push_str("table:");
            for (i, (known, _)) in named.iter().enumerate() {
                if i > 0 {
                    id.push(',');
                }
                id.push_str(&known.id);
            }
            id.push(':');
            id.push_str(caller.principal.db_role().name());
            if let Some(fields) = fields {
                id.push_str(":fields=");
                id.push_str(&fields);
            }
            let key = TileKey::new(id, coord);
            let tags = named.iter().map(|(k, _)| k.name.clone()).collect();
            let served = inner.gate.config().tile_zooms.contains(&coord.z());
            let role = caller.principal.db_role();
            inner
                .tiles
                .tile(
                    &inner.gate,
                    &caller,
                    &req.headers,
                    key,
                    tags,
                    || async move {
                        // The role's pool, looked up only when the tile is made.
                        let pool = inner
                            .sandbox
                            .registry()
                            .pool(role.name(), role.password().expose())?;
                        let sandbox = inner.sandbox.options();
                        let mut tile = TileBuilder::new(coord, inner.tiles.options());
                        for source in sources.iter().filter(|_| served) {
                            let mut layer = tile.layer(&source.table);
                            source.fill(&pool, &sandbox, &mut layer).await?;
                            layer.finish()?;
                        }
                        tile.into_bytes()
                    },
                )
                .await
        }
        .await,
    )
}

async fn tilejson<C: RedisConnection>(
    State(api): State<TablesApi<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            let caller = api.inner.gate.caller(&req, Api::Maps).await?;
            let named = api
                .sources(&caller.principal, table_name(&req.path))
                .await?;
            let names: Vec<String> = named
                .iter()
                .map(|(k, chosen)| k.canonical(*chosen))
                .collect();
            let names = names.join(",");
            let mut sources: Vec<Arc<TableSource>> =
                named.iter().map(|(k, _)| Arc::clone(&k.source)).collect();
            let fields = choose_fields(&mut sources, req.query.as_deref())?;
            let mut url = with_key(
                format!(
                    "{}{}/tiles/{names}/{{z}}/{{x}}/{{y}}.mvt",
                    api.inner.gate.origin(&req),
                    user_path(&req.path),
                ),
                req.query.as_deref(),
            );
            // The tiles it names carry the chosen attributes too.
            if let Some(fields) = fields {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str("fields=");
                url.extend(form_urlencoded::byte_serialize(fields.as_bytes()));
            }
            let zooms = &api.inner.gate.config().tile_zooms;
            let layers: Vec<_> = sources
                .iter()
                .map(|s| (s.table.clone(), *zooms.start(), *zooms.end()))
                .collect();
            // The attributes each layer's features carry, typed.
            let fields: Vec<_> = sources
                .iter()
                .map(|s| {
                    s.attributes
                        .iter()
                        .map(|(name, kind)| {
                            let kind = match kind {
                                AttributeKind::Text => "String",
                                AttributeKind::Bool => "Boolean",
                                _ => "Number",
                            };
                            (name.clone(), serde_json::Value::from(kind))
                        })
                        .collect()
                })
                .collect();
            // Where the data is, from the tables' statistics (the world before they are
            // analyzed): the box around them all.
            let pool = api.inner.sandbox.pool_of(&caller.principal)?;
            let mut bounds: Option<[f64; 4]> = None;
            for source in &sources {
                let Some(b) = source.bounds(&pool).await? else {
                    bounds = None;
                    break;
                };
                bounds = Some(bounds.map_or(b, |a| {
                    [
                        a[0].min(b[0]),
                        a[1].min(b[1]),
                        a[2].max(b[2]),
                        a[3].max(b[3]),
                    ]
                }));
            }
            let json = tilejson_with_fields(&names, vec![url], &layers, &fields, bounds);
            Ok::<_, Error>(Json(json).into_response())
        }
        .await,
    )
}
