//! The composed server (feature `server`): the crates behind one axum [`Router`], speaking the
//! HTTP API CARTO's users know.
//!
//! | route | what |
//! |---|---|
//! | `GET\|POST /api/v2/sql` | SQL API: `q`, `format`, `api_key`, `filename`, `skipfields`, `dp`, `rows_per_page`, `page` |
//! | `POST /api/v2/sql/job`, `GET\|DELETE /api/v2/sql/job/{id}` | batch queries, run by a [`jobs`](geostack_jobs) worker |
//! | `POST /api/v1/map` | a layergroup config → its token and TileJSON |
//! | `GET /api/v1/map/{token}[/{layers}]/{z}/{x}/{y}.mvt`, `…/{token}/tilejson.json` | its tiles |
//! | `GET\|POST /api/v3/api_keys`, `GET\|DELETE /api/v3/api_keys/{name}`, `POST …/{name}/token/regenerate` | CARTO's Auth API: keys listed, made, shown, deleted, given a new token (the master key manages them all) |
//! | `GET /tiles/{table}/{z}/{x}/{y}.mvt`, `/tiles/{table}.json` | tiles of a table the caller may read |
//! | `GET /` | a MapLibre page of the tables and a SQL box (feature `page`) |
//! | `GET /health`, `GET /ready` | the process answers; PostgreSQL and Redis answer too (503 otherwise) |
//!
//! Every API route also answers under `/user/{user}/…`; otherwise the user comes from the host
//! name (`<user>.<host suffix>`) or is the configured default. Requests carry a key as CARTO's
//! do (`api_key`, Basic, Bearer, `X-Api-Key`); without one they use the user's
//! `default_public` key. Refusals answer CARTO's `{"error":["…"]}` with 400, 401, 403, 404,
//! 429 (with `RateLimit-*`, `Carto-Rate-Limit-*` and `Retry-After`) or 503.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use geostack::server::{Server, ServerConfig};
//!
//! let client = redis::Client::open("redis://127.0.0.1:6379")?;
//! let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
//! let pg: sqlx::postgres::PgConnectOptions = "postgres://127.0.0.1/test".parse()?;
//! let server = Server::new(conn, client, pg, ServerConfig::default().default_user("demo")).await;
//! let worker = tokio::spawn(server.batch_worker(2).run(std::future::pending()));
//! let listener = geostack::server::GuardedListener::bind("127.0.0.1:8080").await?;
//! let app = server.router().into_make_service_with_connect_info::<geostack::server::Peer>();
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

mod api_keys;
mod batch;
mod config;
mod conn;
mod edge;
mod error;
mod fair;
mod health;
mod keys;
mod maps;
mod metrics;
#[cfg(feature = "page")]
mod page;
mod request;
mod sql;
mod tables;
mod tile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::routing::get;
use geoauth::{CartoKeys, KeySource, KeyStore, RateLimiter, TokenFormat, Verifier, VerifierConfig};
use geostack_jobs::{Queue, QueueName, Worker, WorkerConfig};
use geostack_tiles::{MemoryTileCache, SingleFlight, TableSource};
use redis::aio::ConnectionManager;
use sqlpass::PoolRegistry;

pub use batch::{BatchHandler, BatchQuery};
pub use config::{KeyLayout, ServerConfig};
pub use conn::{GuardedListener, GuardedStream, Peer};
pub use error::{Error, Result};
pub use keys::KeyRequest;

/// `options` limited to the tables `key` lists, when it lists them (a master key, or one whose
/// tables are left to its database role, is bounded by the role alone).
pub(crate) fn with_key_tables(
    options: sqlpass::Options,
    key: &geoauth::ApiKey,
) -> sqlpass::Options {
    match key.grants.tables() {
        geoauth::TableGrants::Listed(tables) if key.kind != geoauth::KeyKind::Master => {
            options.allowed_tables(tables.keys().map(ToString::to_string))
        }
        _ => options,
    }
}

/// `listener` with `TCP_NODELAY` on every accepted connection: a streamed response's small
/// writes then leave at once instead of waiting on Nagle's algorithm and the client's delayed
/// ACK (about 40 ms per request on a kept-alive connection).
///
/// ```no_run
/// # async fn demo(router: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// axum::serve(geostack::server::nodelay(listener), router).await
/// # }
/// ```
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(set_nodelay as fn(&mut tokio::net::TcpStream))
}

fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!(error = %e, "could not set TCP_NODELAY");
    }
}

/// A role's readable tables and when they were looked up.
type Discovered = (Instant, Arc<Vec<TableSource>>);

/// The name of the batch-query queue.
pub const BATCH_QUEUE: &str = "batch-sql";

/// The state behind the router: key verification, rate limits, one pool per database role,
/// the batch queue, the tile cache. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Verifier<Arc<dyn KeySource>>,
    /// Where keys are read: the native store, or CARTO's layout.
    source: Arc<dyn KeySource>,
    /// The native store, where this server makes and revokes keys.
    keys: KeyStore,
    limiter: RateLimiter,
    registry: Arc<PoolRegistry>,
    redis: ConnectionManager,
    client: redis::Client,
    batch: Queue,
    cache: MemoryTileCache,
    flights: SingleFlight,
    /// Per database role: the tables it may read, found when first asked.
    tables: Mutex<HashMap<String, Discovered>>,
    /// The base options' user: provisions keys' roles, and cancels callers' queries cut short
    /// (it holds `pg_signal_backend`; caller roles may not signal backends).
    admin: sqlx::PgPool,
    /// Statement descriptions kept between runs, when sqlpass is installed.
    plans: Option<sqlpass::Plans>,
    /// Requests running per caller.
    inflight: fair::Inflight,
    config: ServerConfig,
}

impl Server {
    /// A server on `conn` (and `client`, for the key invalidations and the batch worker's
    /// blocking connection) whose SQL runs on PostgreSQL at `pg` — host, port and database;
    /// each caller logs in as its key's role.
    pub async fn new(
        conn: ConnectionManager,
        client: redis::Client,
        pg: sqlx::postgres::PgConnectOptions,
        config: ServerConfig,
    ) -> Self {
        let keys = KeyStore::with_prefix(conn.clone(), config.key_prefix.clone());
        let (source, format): (Arc<dyn KeySource>, _) = match config.key_layout {
            KeyLayout::Native => (Arc::new(keys.clone()), TokenFormat::Native),
            KeyLayout::Carto { db } => {
                let info = client.get_connection_info().clone();
                let settings = info.redis_settings().clone().set_db(db);
                let carto = redis::Client::open(info.set_redis_settings(settings))
                    .and_then(|c| {
                        ConnectionManager::new_lazy_with_config(
                            c,
                            redis::aio::ConnectionManagerConfig::new(),
                        )
                    })
                    // The server's own client with another database number, and the default
                    // manager settings: neither can be refused.
                    .unwrap_or_else(|_| unreachable_carto());
                (
                    Arc::new(CartoKeys::new(carto)),
                    TokenFormat::CartoCompatible,
                )
            }
        };
        let verifier = Verifier::with_cache(
            Arc::clone(&source),
            client.clone(),
            VerifierConfig::default().token_format(format),
        )
        .await;
        let limiter = RateLimiter::with_prefix(conn.clone(), config.key_prefix.clone());
        let batch = Queue::with_prefix(
            conn.clone(),
            // A constant, valid name.
            QueueName::new(BATCH_QUEUE).unwrap_or_else(|_| unreachable_name()),
            &config.redis_prefix,
        );
        let cache = MemoryTileCache::new(config.tile_cache_capacity, config.tile_cache_ttl);
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_lazy_with(pg.clone());
        // Statement descriptions are kept between runs when the database has sqlpass's DDL
        // generation; a server that may not install it describes every statement.
        let plans = match sqlpass::install(&admin).await {
            Ok(()) => Some(sqlpass::Plans::default()),
            Err(e) => {
                tracing::warn!(error = %e, "sqlpass could not be installed: no plan cache");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                verifier,
                source,
                keys,
                limiter,
                registry: Arc::new(PoolRegistry::new(pg, config.pools.clone())),
                redis: conn,
                client,
                batch,
                cache,
                flights: SingleFlight::default(),
                tables: Mutex::new(HashMap::new()),
                admin,
                plans,
                inflight: fair::Inflight::default(),
                config,
            }),
        }
    }

    /// The routes, with this server as their state.
    pub fn router(&self) -> Router {
        // CARTO's clients may add a trailing slash to these.
        let mut api = Router::new();
        for slash in ["", "/"] {
            api = api
                .route(&format!("/api/v2/sql{slash}"), get(sql::sql).post(sql::sql))
                .route(
                    &format!("/api/v2/sql/job{slash}"),
                    axum::routing::post(batch::create),
                )
                .route(
                    &format!("/api/v2/sql/job/{{id}}{slash}"),
                    get(batch::get).delete(batch::cancel),
                )
                .route(
                    &format!("/api/v1/map{slash}"),
                    axum::routing::post(maps::create),
                )
                .route(
                    &format!("/api/v3/api_keys{slash}"),
                    get(api_keys::list).post(api_keys::create),
                )
                .route(
                    &format!("/api/v3/api_keys/{{name}}{slash}"),
                    get(api_keys::show).delete(api_keys::delete),
                )
                .route(
                    &format!("/api/v3/api_keys/{{name}}/token/regenerate{slash}"),
                    axum::routing::post(api_keys::regenerate),
                );
        }
        let api = api
            .route("/api/v1/map/{token}/tilejson.json", get(maps::tilejson))
            .route("/api/v1/map/{token}/{z}/{x}/{y}", get(maps::tile))
            .route("/api/v1/map/{token}/{layers}/{z}/{x}/{y}", get(maps::tile))
            .route("/tiles/{table}", get(tables::tilejson))
            .route("/tiles/{table}/{z}/{x}/{y}", get(tables::tile));
        let root = Router::new()
            .route("/health", get(health::health))
            .route("/ready", get(health::ready));
        // The map page and MapLibre's files (about 800 KB) only when asked for.
        #[cfg(feature = "page")]
        let root = root
            .route("/", get(page::index))
            .route("/assets/{file}", get(page::asset));
        root.merge(api.clone())
            .nest("/user/{user}", api)
            .fallback(edge::not_found)
            .method_not_allowed_fallback(edge::method_not_allowed)
            .layer(axum::extract::DefaultBodyLimit::max(
                self.inner.config.body_limit,
            ))
            .layer(axum::middleware::from_fn(edge::carto_errors))
            .layer(axum::middleware::from_fn(cors))
            .layer(axum::middleware::from_fn(trace))
            .with_state(self.clone())
    }

    /// A worker for the batch queue, running `concurrency` queries at once.
    pub fn batch_worker(&self, concurrency: usize) -> Worker {
        Worker::new(
            self.inner.batch.clone(),
            self.inner.client.clone(),
            WorkerConfig::default().concurrency(concurrency),
        )
        .handle::<BatchQuery, _>(self.batch_handler())
    }

    /// The handler of batch queries, for a worker of its own (see `examples/worker.rs`).
    pub fn batch_handler(&self) -> BatchHandler {
        BatchHandler::new(
            Arc::clone(&self.inner.source),
            Arc::clone(&self.inner.registry),
            self.sandbox()
                .statement_timeout(self.inner.config.batch_timeout)
                .deadline(self.inner.config.batch_timeout + std::time::Duration::from_secs(5))
                .affected_tables(false),
        )
    }

    /// The sandbox's options for `key`'s SQL: [`Server::sandbox`] with, for a key that lists
    /// its tables, those tables as the only ones its statements may touch.
    pub(crate) fn sandbox_for(&self, key: &geoauth::ApiKey) -> sqlpass::Options {
        with_key_tables(self.sandbox(), key)
    }

    /// The sandbox's options for a caller's SQL, from the settings: timeouts, limits and the
    /// canceller. The SQL API, tiles and batch queries all start from these.
    pub(crate) fn sandbox(&self) -> sqlpass::Options {
        let config = &self.inner.config;
        let options = sqlpass::Options::default()
            .statement_timeout(config.statement_timeout)
            .deadline(config.deadline)
            .row_limit(config.row_limit)
            .byte_limit(config.byte_limit)
            .value_limit(config.value_limit)
            .canceller(self.inner.admin.clone());
        match &self.inner.plans {
            Some(plans) => options.plans(plans.clone()),
            None => options,
        }
    }

    /// The batch queue.
    pub fn batch_queue(&self) -> &Queue {
        &self.inner.batch
    }
}

#[expect(
    clippy::panic,
    reason = "a Redis client for another database of a valid client's server is valid"
)]
fn unreachable_carto() -> ConnectionManager {
    panic!("the connection to CARTO's key database was refused")
}

#[expect(clippy::panic, reason = "BATCH_QUEUE is a valid queue name")]
fn unreachable_name() -> QueueName {
    panic!("the batch queue's name was refused")
}

/// Cross-origin access, as CARTO's APIs allow it: any origin may call them (credentials travel
/// as keys, not cookies); a preflight `OPTIONS` is answered here with what a request may send.
async fn cors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, Method, StatusCode, header};
    let mut response = if request.method() == Method::OPTIONS {
        let mut preflight = axum::response::Response::new(axum::body::Body::empty());
        *preflight.status_mut() = StatusCode::NO_CONTENT;
        let h = preflight.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, X-Api-Key, If-None-Match"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("3600"),
        );
        preflight
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "ETag, X-Cache-Channel, Surrogate-Key, Retry-After, RateLimit-Limit, RateLimit-Remaining, \
             RateLimit-Reset, Carto-Rate-Limit-Limit, Carto-Rate-Limit-Remaining, Carto-Rate-Limit-Reset",
        ),
    );
    response
}

/// A span per request, and one line when it is answered.
async fn trace(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let span =
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().clone();
    async move {
        let started = Instant::now();
        let response = next.run(request).await;
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        tracing::info!(status, ms = elapsed.as_millis() as u64, "answered");
        metrics::request(route, method.as_str(), status, elapsed.as_secs_f64());
        response
    }
    .instrument(span)
    .await
}
