//! A standalone batch-query worker: runs the SQL API's queued batch queries (the same queue
//! and handler the server runs in process), until Ctrl-C.
//!
//! Configuration from the environment: `DATABASE_URL`, `REDIS_URL` (as the server) and
//! `GEOSTACK_BATCH_WORKERS`, queries run at once (default 4).

use geostack::server::{Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let workers: usize = std::env::var("GEOSTACK_BATCH_WORKERS")
        .unwrap_or_else(|_| "4".into())
        .parse()?;
    let client = redis::Client::open(redis_url)?;
    let redis = redis::aio::ConnectionManager::new(client.clone()).await?;
    let server = Server::new(
        redis,
        client.clone(),
        database_url.parse()?,
        ServerConfig::default(),
    )
    .await;
    tracing::info!(
        queue = geostack::server::BATCH_QUEUE,
        workers,
        "batch worker running"
    );
    server
        .batch_worker(client, workers)
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
