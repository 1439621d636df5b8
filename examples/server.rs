//! The example server: the geostack crates composed into one HTTP service — CARTO's SQL and
//! Batch APIs, Windshaft-style maps, table tiles and a MapLibre page — with a batch worker in
//! the same process, in a few lines of one's own axum program (the `geostack` command is the
//! operator's way to run it: `geostack serve`).
//!
//! Configuration from the environment:
//! - `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`): an admin connection to
//!   the database served; callers' SQL runs on connections that log in as their keys' roles
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`)
//! - `GEOSTACK_ADDR`, the address to listen on (default `127.0.0.1:8080`)
//! - `GEOSTACK_DEFAULT_USER`: the user of requests that name none
//! - `GEOSTACK_BATCH_WORKERS`, batch queries run at once in process (default 2; 0 leaves them
//!   to `examples/worker.rs`)
//!
//! `GET /health` and `GET /ready` are the router's own.

use std::net::SocketAddr;

use geostack::server::{Server, ServerConfig};
use sqlx::postgres::PgConnectOptions;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let database_url = env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let addr: SocketAddr = env_or("GEOSTACK_ADDR", "127.0.0.1:8080").parse()?;
    let workers: usize = env_or("GEOSTACK_BATCH_WORKERS", "2").parse()?;
    let default_user = std::env::var("GEOSTACK_DEFAULT_USER").ok();

    let pg_options: PgConnectOptions = database_url.parse()?;
    let client = redis::Client::open(redis_url)?;
    let redis = redis::aio::ConnectionManager::new(client.clone()).await?;
    let mut config = ServerConfig::default();
    if let Some(user) = &default_user {
        config = config.default_user(user.as_str());
    }
    let server = Server::new(redis.clone(), client.clone(), pg_options, config).await;
    let worker = (workers > 0).then(|| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(server.batch_worker(client, workers).run(async {
            let _ = stopped.await;
        }));
        (stop, run)
    });

    let app = server.router();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tracing::info!(%url, "geostack server listening");
    // Connect info: anonymous callers are rate-limited per client address, and a response
    // whose client stops reading is cut at its deadline.
    let app = app.into_make_service_with_connect_info::<geostack::server::Peer>();
    axum::serve(geostack::server::GuardedListener::new(listener), app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    if let Some((stop, run)) = worker {
        let _ = stop.send(());
        let _ = run.await;
    }
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
