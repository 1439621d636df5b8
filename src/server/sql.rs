//! `GET|POST /api/v2/sql`: CARTO's SQL API over sqlpass.

use std::collections::HashMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use geoauth::Api;
use sqlpass::Access;

use super::gate::{Caller, Gate, Params};
use super::{Error, RedisConnection, Result, Sandbox};

/// CARTO's SQL API, `GET|POST /api/v2/sql` (and under `/user/{user}`): `q`, `format`,
/// `api_key`, `filename`, `skipfields`, `dp`, `rows_per_page`, `page`. Each query runs in the
/// sandbox as the caller's key's role, streamed as it is read.
///
/// ```no_run
/// # async fn demo(gate: geostack::server::Gate, sandbox: geostack::server::Sandbox) {
/// use geostack::server::SqlApi;
///
/// let app = axum::Router::new()
///     .route("/hello", axum::routing::get(|| async { "hello" }))
///     .merge(SqlApi::new(gate, sandbox).router());
/// # let _ = app; }
/// ```
#[derive(Clone)]
pub struct SqlApi<C = redis::aio::ConnectionManager> {
    gate: Gate<C>,
    sandbox: Sandbox,
    /// The tiles a write makes stale, when they are served beside.
    tiles: Option<super::Tiles>,
}

impl<C: RedisConnection> SqlApi<C> {
    /// The SQL API of callers passing `gate`, their queries run in `sandbox`.
    pub fn new(gate: Gate<C>, sandbox: Sandbox) -> Self {
        Self {
            gate,
            sandbox,
            tiles: None,
        }
    }

    /// Drops from `tiles` the cached tiles of the tables a write changes, once it committed
    /// (a table's tiles are kept under its name), so that the next request renders them anew
    /// with a new ETag. [`Server`](super::Server) does.
    pub fn invalidating(mut self, tiles: super::Tiles) -> Self {
        self.tiles = Some(tiles);
        self
    }

    /// Its routes, with and without a trailing slash, also under `/user/{user}`: the SQL API,
    /// `copyto` and `copyfrom`.
    pub fn router(&self) -> Router {
        let mut routes = super::with_slash("/api/v2/sql", get(sql::<C>).post(sql::<C>));
        routes.extend(super::with_slash(
            "/api/v2/sql/copyto",
            get(super::copy::copyto::<C>).post(super::copy::copyto::<C>),
        ));
        routes.extend(super::with_slash(
            "/api/v2/sql/copyfrom",
            axum::routing::post(super::copy::copyfrom::<C>),
        ));
        super::mount(routes, self.clone())
    }

    /// The gate its callers pass.
    pub fn gate(&self) -> &Gate<C> {
        &self.gate
    }

    /// The sandbox its queries run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
}

/// How long after its deadline a response whose client is not reading it is cut: the time the
/// deadline's own error needs to reach a client that keeps up.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) async fn sql<C: RedisConnection>(
    State(api): State<SqlApi<C>>,
    Path(path): Path<HashMap<String, String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Response {
    let peer = super::gate::peer_of(&extensions);
    let cut = extensions
        .get::<axum::extract::ConnectInfo<super::Peer>>()
        .map(|c| c.0.cut.clone());
    run(&api, &path, query.as_deref(), &headers, peer, cut, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run<C: RedisConnection>(
    api: &SqlApi<C>,
    path: &HashMap<String, String>,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
    cut: Option<super::conn::Cut>,
    body: &[u8],
) -> Result<Response> {
    let params = Params::new(query, headers, body)?;
    let caller = api
        .gate
        .authenticate(path, headers, &params, Api::Sql, peer)
        .await?;
    let sql = params
        .get("q")
        .ok_or_else(|| Error::BadRequest("You must indicate a sql query".into()))?;
    api.sandbox.check_query_size(sql)?;
    let write = caller.principal.may_write();
    let options = api
        .sandbox
        .options_for(caller.principal.key())
        .params(params.pairs())?
        .access(if write {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        });
    let admission = api.gate.admit(&caller)?;
    let pool = api.sandbox.pool_of(&caller.principal)?;
    // A client that stops reading loses the connection a second after the deadline.
    let cut_at = std::time::Instant::now() + options.total_deadline() + CUT_GRACE;
    let response = sqlpass::run(&pool, sql, options).await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            let mut refused = Error::from(e).into_response();
            caller.rate.write_headers(refused.headers_mut());
            return Ok(refused);
        }
    };
    // A writer's statement has committed by now: its tables' tiles are stale.
    if let Some(tiles) = &api.tiles
        && write
        && changes_data(sql)
    {
        for table in &response.meta.tables {
            let _ = tiles.invalidate_table(table).await;
        }
    }
    // The caller's place is held until its rows have been sent.
    let mut out = Response::new(Body::from_stream(super::fair::Admitted {
        body: response.body,
        _admission: admission,
        _armed: cut.map(|c| c.arm(cut_at)),
        bytes: 0,
    }));
    *out.status_mut() = StatusCode::OK;
    *out.headers_mut() = response.meta.headers();
    let h = out.headers_mut();
    h.insert(header::CACHE_CONTROL, cache_control(&caller, write));
    h.insert(header::VARY, HeaderValue::from_static("Authorization"));
    caller.rate.write_headers(h);
    Ok(out)
}

/// Whether `sql` may change rows: a statement other than a query (an `INSERT`, a DDL, a
/// writable `WITH`…).
fn changes_data(sql: &str) -> bool {
    sqlpass::Script::new(sql).is_ok_and(|script| {
        script
            .statements()
            .iter()
            .any(|s| !matches!(s.keyword(), "select" | "values" | "table" | "explain"))
    })
}

/// Anonymous reads may be kept by shared caches, which revalidate them (and are told of
/// changes through the cache channel and surrogate keys), as CARTO answers; what a key or a
/// write produced is kept by nobody.
fn cache_control(caller: &Caller, write: bool) -> HeaderValue {
    if caller.principal.is_anonymous() && !write {
        HeaderValue::from_static("public, no-cache, max-age=31536000, must-revalidate")
    } else {
        HeaderValue::from_static("no-store")
    }
}
