//! Table tiles, as Martin serves them: `/tiles/{table}/{z}/{x}/{y}.mvt` for every table with a
//! geometry column the caller's role may read, and `/tiles/{table}` as TileJSON.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use geoauth::{Api, Principal};
use geostack_tiles::{TableSource, TileKey, discover};

use super::maps::user_path;
use super::request::{ApiRequest, respond};
use super::tile::{coord, origin, tilejson as tilejson_of};
use super::{Error, Result, Server};

/// How long a role's list of tables is kept before it is looked up again.
const TABLES_TTL: Duration = Duration::from_secs(60);

impl Server {
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
                let found = Arc::new(discover(&self.pool_of(principal)?).await?);
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

pub(super) async fn tile(State(server): State<Server>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = server.caller(&req, Api::Maps).await?;
            let coord = coord(&req.path)?;
            let source = server
                .table(&caller.principal, table_name(&req.path))
                .await?;
            // The key's grants as well as its role's: a key that lists its tables reads no
            // other, whatever its role could.
            let table: geoauth::TableName = source
                .name()
                .parse()
                .map_err(|_| Error::NotFound(format!("no table {}", source.name())))?;
            caller
                .principal
                .authorize_table(&table, geoauth::Privilege::Select)?;
            let pool = server.pool_of(&caller.principal)?;
            let key = TileKey::new(
                format!(
                    "table:{}:{}",
                    source.name(),
                    caller.principal.db_role().name()
                ),
                coord,
            );
            let options = server.inner.config.tile_options.clone();
            let sandbox = server.sandbox();
            server
                .tile(
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

pub(super) async fn tilejson(State(server): State<Server>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = server.caller(&req, Api::Maps).await?;
            let source = server
                .table(&caller.principal, table_name(&req.path))
                .await?;
            let url = format!(
                "{}{}/tiles/{}/{{z}}/{{x}}/{{y}}.mvt",
                origin(&req.headers),
                user_path(&req.path),
                source.name()
            );
            let layers = [(source.table.clone(), 0, 22)];
            Ok::<_, Error>(Json(tilejson_of(&source.name(), vec![url], &layers)).into_response())
        }
        .await,
    )
}
