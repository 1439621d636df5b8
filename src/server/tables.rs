//! Table tiles, as Martin serves them: `/tiles/{table}/{z}/{x}/{y}.mvt` for every table with a
//! geometry column the caller's role may read, and `/tiles/{table}` as TileJSON.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use geoauth::{Api, Principal};
use geostack_tiles::{AttributeKind, TableSource, TileKey, discover};

use super::gate::{ApiRequest, Gate, respond};
use super::maps::user_path;
use super::tile::{coord, tilejson_with_fields, with_key};
use super::{Error, RedisConnection, Result, Sandbox, Tiles};

/// How long a role's list of tables is kept before it is looked up again.
const TABLES_TTL: Duration = Duration::from_secs(60);

/// A role's readable tables and when they were looked up.
type Discovered = (Instant, Arc<Vec<TableSource>>);

/// Tiles of the tables a caller may read, as Martin serves them:
/// `GET /tiles/{table}/{z}/{x}/{y}.mvt` and `GET /tiles/{table}` (TileJSON), also under
/// `/user/{user}`. The caller's role must be able to read the table, and a key that lists its
/// tables must list it.
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

    /// The table `name` (`table` or `schema.table`) among those the caller's role may read.
    async fn table(&self, principal: &Principal, name: &str) -> Result<TableSource> {
        let role = principal.db_role().name().to_owned();
        let cached = {
            let tables = self
                .inner
                .tables
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tables
                .get(&role)
                .filter(|(at, _)| at.elapsed() < TABLES_TTL)
                .map(|(_, t)| Arc::clone(t))
        };
        let tables = match cached {
            Some(t) => t,
            None => {
                let found = Arc::new(discover(&self.inner.sandbox.pool_of(principal)?).await?);
                self.inner
                    .tables
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(role, (Instant::now(), Arc::clone(&found)));
                found
            }
        };
        tables
            .iter()
            .find(|t| t.name() == name || (t.schema == "public" && t.table == name))
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no table {name} with a geometry column")))
    }
}

/// The table's name without the tile path's extension.
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
            let source = api.table(&caller.principal, table_name(&req.path)).await?;
            // The key's grants as well as its role's: a key that lists its tables reads no
            // other, whatever its role could.
            let table: geoauth::TableName = source
                .name()
                .parse()
                .map_err(|_| Error::NotFound(format!("no table {}", source.name())))?;
            caller
                .principal
                .authorize_table(&table, geoauth::Privilege::Select)?;
            let pool = inner.sandbox.pool_of(&caller.principal)?;
            let key = TileKey::new(
                format!(
                    "table:{}:{}",
                    source.name(),
                    caller.principal.db_role().name()
                ),
                coord,
            );
            let options = inner.tiles.options().clone();
            let sandbox = inner.sandbox.options();
            inner
                .tiles
                .tile(
                    &inner.gate,
                    &caller,
                    &req.headers,
                    key,
                    vec![source.name()],
                    || async move { source.tile(&pool, &sandbox, coord, &options).await },
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
            let source = api.table(&caller.principal, table_name(&req.path)).await?;
            let url = with_key(
                format!(
                    "{}{}/tiles/{}/{{z}}/{{x}}/{{y}}.mvt",
                    api.inner.gate.origin(&req),
                    user_path(&req.path),
                    source.name()
                ),
                req.query.as_deref(),
            );
            let layers = [(source.table.clone(), 0, 22)];
            // The attributes its tiles carry, typed.
            let fields = source
                .attributes
                .iter()
                .map(|(name, kind)| {
                    let kind = match kind {
                        AttributeKind::Text => "String",
                        AttributeKind::Bool => "Boolean",
                        _ => "Number",
                    };
                    (name.clone(), serde_json::Value::from(kind))
                })
                .collect();
            // Where the data is, from the table's statistics (the world before it is analyzed).
            let pool = api.inner.sandbox.pool_of(&caller.principal)?;
            let bounds = source.bounds(&pool).await?;
            let json = tilejson_with_fields(&source.name(), vec![url], &layers, &fields, bounds);
            Ok::<_, Error>(Json(json).into_response())
        }
        .await,
    )
}
