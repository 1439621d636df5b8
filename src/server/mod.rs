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
//! | `GET /tiles/{source}/{z}/{x}/{y}.mvt`, `/tiles/{source}` | tiles of tables and views the caller may read ([`TablesApi`]: a geometry column chosen, several sources in one tile) |
//! | `GET /jobs`, `/api/v1/jobs/…` | the jobs dashboard and its JSON API, live by Server-Sent Events, for the operators' master keys ([`JobsDashboard`]) |
//! | `GET /` | a MapLibre page of the tables and a SQL box (feature `page`) |
//! | `GET /health`, `GET /ready` | the process answers; PostgreSQL and Redis answer too (503 otherwise) |
//!
//! Every API route also answers under `/user/{user}/…`; otherwise the user comes from the host
//! name (`<user>.<host suffix>`) or is the configured default. Requests carry a key as CARTO's
//! do (`api_key`, Basic, Bearer, `X-Api-Key`); without one they use the user's
//! `default_public` key. Refusals answer CARTO's `{"error":["…"]}` with 400, 401, 403, 404,
//! 429 (with `RateLimit-*`, `Carto-Rate-Limit-*` and `Retry-After`) or 503.
//!
//! [`Server`] composes them all. Each API is also a router of its own, to mount beside one's
//! own routes: [`SqlApi`], [`BatchApi`], [`MapsApi`], [`TablesApi`], [`AuthApi`],
//! [`JobsDashboard`], [`Health`] and [`page`], built from the pieces they share — the [`Gate`]
//! every request passes (user, key, rate, fair share), the [`Sandbox`] every caller's SQL runs
//! in and the [`Tiles`] cache — and wrapped, if one likes, in the same [`edge`]. Every piece is
//! generic over its Redis connection ([`RedisConnection`]): a `ConnectionManager` for one
//! Redis, a cluster connection for a Redis Cluster.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use geostack::server::{Server, ServerConfig};
//!
//! let client = redis::Client::open("redis://127.0.0.1:6379")?;
//! let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
//! let pg: sqlx::postgres::PgConnectOptions = "postgres://127.0.0.1/test".parse()?;
//! let server = Server::new(conn, client.clone(), pg, ServerConfig::default().default_user("demo")).await;
//! let worker = tokio::spawn(server.batch().worker(client, 2).run(std::future::pending()));
//! let listener = geostack::server::GuardedListener::bind("127.0.0.1:8080").await?;
//! let app = server.router().into_make_service_with_connect_info::<geostack::server::Peer>();
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

mod api_keys;
mod batch;
mod batch_sql;
mod config;
mod conn;
mod copy;
mod dashboard;
mod edge;
mod error;
mod fair;
mod gate;
mod health;
mod keys;
mod maps;
mod metrics;
mod named;
#[cfg(feature = "page")]
mod page;
mod purge;
mod sandbox;
mod sql;
mod tables;
mod tile;

use std::sync::Arc;

use axum::Router;
use axum::routing::MethodRouter;
use geoauth::{CartoKeys, KeySource, KeyStore, RateLimiter, TokenFormat, Verifier, VerifierConfig};
use geostack_jobs::{Connector, Queue, QueueName, Worker};
use redis::aio::ConnectionManager;

pub use batch::{BatchApi, BatchHandler, BatchQuery};
pub use batch_sql::{BatchSql, Fallback, MAX_STATEMENTS, Step};
pub use config::{KeyLayout, ServerConfig};
pub use conn::{GuardedListener, GuardedStream, Peer};
pub use dashboard::JobsDashboard;
pub use edge::edge;
pub use error::{Error, Result};
pub use fair::Admission;
pub use gate::{ApiRequest, Caller, Gate, Params, peer_of};
pub use health::Health;
pub use keys::{AuthApi, KeyRequest};
pub use maps::MapsApi;
#[cfg(feature = "page")]
pub use page::page;
pub use purge::Purge;
pub use sandbox::Sandbox;
pub use sql::SqlApi;
pub use tables::TablesApi;
pub use tile::{Tiles, tile_response};

/// A Redis connection the server's pieces share: [`ConnectionManager`] for one Redis,
/// `redis::cluster_async::ClusterConnection` for a Redis Cluster. Every such connection is one.
///
/// ```
/// fn shared<C: geostack::server::RedisConnection>() {}
/// shared::<redis::aio::ConnectionManager>();
/// shared::<redis::aio::MultiplexedConnection>();
/// ```
pub trait RedisConnection: redis::aio::ConnectionLike + Clone + Send + Sync + 'static {}

impl<T: redis::aio::ConnectionLike + Clone + Send + Sync + 'static> RedisConnection for T {}

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

/// `path` and `path/`: CARTO's clients may add a trailing slash.
fn with_slash<S>(path: &str, method: MethodRouter<S>) -> Vec<(String, MethodRouter<S>)>
where
    S: Clone + Send + Sync + 'static,
{
    vec![
        (path.to_owned(), method.clone()),
        (format!("{path}/"), method),
    ]
}

/// `routes` at their paths and again under `/user/{user}`, each also with a trailing slash (as
/// CARTO's clients send some), with `state`.
fn mount<S>(routes: Vec<(String, MethodRouter<S>)>, state: S) -> Router
where
    S: Clone + Send + Sync + 'static,
{
    let given: std::collections::HashSet<String> =
        routes.iter().map(|(path, _)| path.clone()).collect();
    let mut router = Router::new();
    for (path, method) in routes {
        let slashed = format!("{path}/");
        let mut paths = vec![path.clone()];
        if !path.ends_with('/') && !given.contains(&slashed) {
            paths.push(slashed);
        }
        for path in paths {
            router = router
                .route(&format!("/user/{{user}}{path}"), method.clone())
                .route(&path, method.clone());
        }
    }
    router.with_state(state)
}

/// The name of the batch-query queue.
pub const BATCH_QUEUE: &str = "batch-sql";

/// How many rate-limited subjects (keys, anonymous client addresses) a server decides in
/// process; the least used beyond are decided in Redis again.
const RATE_SUBJECTS: u64 = 100_000;

/// Every API of the composed server, on one Redis connection (`C`) and one PostgreSQL: SQL,
/// Batch, Maps, table tiles, Auth, the jobs dashboard, health and (feature `page`) the map
/// page, sharing one [`Gate`], one [`Sandbox`] and one [`Tiles`] cache. Cheap to clone.
#[derive(Clone)]
pub struct Server<C = ConnectionManager> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    gate: Gate<C>,
    sandbox: Sandbox,
    tiles: Tiles,
    sql: SqlApi<C>,
    batch: BatchApi<C>,
    maps: MapsApi<C>,
    tables: TablesApi<C>,
    auth: AuthApi<C>,
    dashboard: JobsDashboard<C>,
    health: Health<C>,
    config: ServerConfig,
}

impl Server<ConnectionManager> {
    /// A server on one Redis: `conn` for its commands, `client` for the key verifier's
    /// invalidations; its SQL runs on PostgreSQL at `pg` — host, port, database and the
    /// administrative user; each caller logs in as its key's role. Keys are read as
    /// [`ServerConfig::key_layout`] says.
    pub async fn new(
        conn: ConnectionManager,
        client: redis::Client,
        pg: sqlx::postgres::PgConnectOptions,
        config: ServerConfig,
    ) -> Self {
        let (source, format): (Arc<dyn KeySource>, _) = match config.key_layout {
            KeyLayout::Native => (
                Arc::new(KeyStore::with_prefix(
                    conn.clone(),
                    config.key_prefix.clone(),
                )),
                TokenFormat::Native,
            ),
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
            source,
            client,
            VerifierConfig::default().token_format(format),
        )
        .await;
        Self::with_verifier(conn, verifier, pg, config).await
    }
}

impl<C: RedisConnection> Server<C> {
    /// A server on `conn` (any [`RedisConnection`]: a Redis Cluster's too) whose keys are
    /// verified by `verifier`; its SQL runs on PostgreSQL at `pg`. The Auth API manages keys
    /// in the native store on `conn` under the configured key prefix.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use geoauth::{KeySource, KeyStore, Verifier, VerifierConfig};
    /// use geostack::server::{Server, ServerConfig};
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let conn = client.get_multiplexed_async_connection().await?;
    /// let keys: Arc<dyn KeySource> = Arc::new(KeyStore::new(conn.clone()));
    /// let verifier = Verifier::with_cache(keys, client, VerifierConfig::default()).await;
    /// let pg: sqlx::postgres::PgConnectOptions = "postgres://127.0.0.1/test".parse()?;
    /// let server = Server::with_verifier(conn, verifier, pg, ServerConfig::default()).await;
    /// # let _ = server; Ok(()) }
    /// ```
    pub async fn with_verifier(
        conn: C,
        verifier: Verifier<Arc<dyn KeySource>>,
        pg: sqlx::postgres::PgConnectOptions,
        config: ServerConfig,
    ) -> Self {
        let mut limiter = RateLimiter::with_prefix(conn.clone(), config.key_prefix.clone());
        if !config.rate_sync.is_zero() {
            limiter = limiter.deciding_locally(config.rate_sync, RATE_SUBJECTS);
        }
        let gate = Gate::new(verifier, limiter, config.clone());
        let sandbox = Sandbox::new(pg, config.clone()).await;
        let tiles = Tiles::new(&config);
        let queue = Queue::with_prefix(
            conn.clone(),
            // A constant, valid name.
            QueueName::new(BATCH_QUEUE).unwrap_or_else(|_| unreachable_name()),
            &config.redis_prefix,
        );
        let keys = KeyStore::with_prefix(conn.clone(), config.key_prefix.clone());
        Self {
            inner: Arc::new(Inner {
                sql: SqlApi::new(gate.clone(), sandbox.clone()).invalidating(tiles.clone()),
                dashboard: JobsDashboard::new(gate.clone(), [queue.clone()]),
                batch: BatchApi::new(gate.clone(), sandbox.clone(), queue),
                maps: MapsApi::new(
                    gate.clone(),
                    sandbox.clone(),
                    tiles.clone(),
                    conn.clone(),
                    &config,
                ),
                tables: TablesApi::new(gate.clone(), sandbox.clone(), tiles.clone()),
                auth: AuthApi::new(gate.clone(), sandbox.clone(), keys, &config),
                health: Health::new(conn, sandbox.admin().clone()),
                gate,
                sandbox,
                tiles,
                config,
            }),
        }
    }

    /// Every API's routes behind the [`edge`].
    pub fn router(&self) -> Router {
        let inner = &*self.inner;
        let router = Router::new()
            .merge(inner.health.router())
            .merge(inner.sql.router())
            .merge(inner.batch.router())
            .merge(inner.maps.router())
            .merge(inner.tables.router())
            .merge(inner.auth.router())
            .merge(inner.dashboard.router());
        // The map page and MapLibre's files (about 800 KB) only when asked for.
        #[cfg(feature = "page")]
        let router = router.merge(page());
        edge(router, &inner.config)
    }

    /// The gate the APIs share.
    pub fn gate(&self) -> &Gate<C> {
        &self.inner.gate
    }

    /// The sandbox the APIs share.
    pub fn sandbox(&self) -> &Sandbox {
        &self.inner.sandbox
    }

    /// The tiles the maps and table APIs share.
    pub fn tiles(&self) -> &Tiles {
        &self.inner.tiles
    }

    /// The SQL API.
    pub fn sql(&self) -> &SqlApi<C> {
        &self.inner.sql
    }

    /// The Batch API, its queue and its workers.
    pub fn batch(&self) -> &BatchApi<C> {
        &self.inner.batch
    }

    /// The Maps API.
    pub fn maps(&self) -> &MapsApi<C> {
        &self.inner.maps
    }

    /// The table tiles.
    pub fn tables(&self) -> &TablesApi<C> {
        &self.inner.tables
    }

    /// The Auth API, and keys made and revoked by a program.
    pub fn auth(&self) -> &AuthApi<C> {
        &self.inner.auth
    }

    /// Follows the committed changes of the database's tables, whoever makes them (the APIs,
    /// batch jobs, `COPY`, a client writing straight into PostgreSQL), and drops the tiles made
    /// from a changed table — the table's own and those of map layers reading it. `pg` is the
    /// database's own address (LISTEN needs a session: not pgbouncer's transaction mode).
    /// Tables are tracked when the server's administrative role is a superuser (every table),
    /// or by `CDB_CartodbfyTable` (`geostack tables cartodbfy`). Runs until dropped; after a
    /// lost connection, every tile is dropped (changes may have gone unheard meanwhile).
    ///
    /// ```no_run
    /// # async fn demo(server: geostack::server::Server) {
    /// let pg: sqlx::postgres::PgConnectOptions = "postgres://127.0.0.1/test".parse().unwrap();
    /// tokio::spawn(server.follow_table_changes(pg));
    /// # }
    /// ```
    pub fn follow_table_changes(
        &self,
        pg: sqlx::postgres::PgConnectOptions,
    ) -> impl Future<Output = ()> + Send + 'static {
        let tiles = self.inner.tiles.clone();
        async move {
            loop {
                match sqlpass::TableChanges::listen(&pg).await {
                    Ok(mut changes) => {
                        // Anything may have changed while nobody listened.
                        tiles.invalidate_all();
                        loop {
                            match changes.next().await {
                                Ok(sqlpass::TableChange::Changed(table)) => {
                                    let _ = tiles.invalidate_table(&table).await;
                                }
                                Ok(_) => tiles.invalidate_all(),
                                Err(e) => {
                                    tracing::warn!(error = %e, "table changes: not listening");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "table changes: cannot listen"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }

    /// The jobs dashboard over the batch queue.
    pub fn dashboard(&self) -> &JobsDashboard<C> {
        &self.inner.dashboard
    }

    /// A worker for the batch queue: [`BatchApi::worker`].
    pub fn batch_worker<K: Connector>(&self, connector: K, concurrency: usize) -> Worker<C, K> {
        self.inner.batch.worker(connector, concurrency)
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
