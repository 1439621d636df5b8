//! The example server: composes the geostack crates into one HTTP service.
//!
//! Configuration from the environment:
//! - `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`)
//! - `GEOSTACK_ADDR`, the address to listen on (default `127.0.0.1:8080`)
//!
//! `GET /health` answers 200 with the PostGIS and Redis versions when both services answer,
//! 503 naming the one that does not otherwise.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};

#[derive(Clone)]
struct App {
    pg: PgPool,
    redis: redis::aio::ConnectionManager,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let database_url = env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let addr: SocketAddr = env_or("GEOSTACK_ADDR", "127.0.0.1:8080").parse()?;

    let pg = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&database_url)
        .await?;
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(redis_url)?).await?;
    let app = Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .with_state(App { pg, redis });

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(url = %format!("http://{}/", listener.local_addr()?), "geostack example server listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn index() -> Json<Value> {
    Json(json!({
        "name": "geostack",
        "version": env!("CARGO_PKG_VERSION"),
        "endpoints": ["/health"],
    }))
}

async fn health(State(mut app): State<App>) -> (StatusCode, Json<Value>) {
    let postgis = sqlx::query_scalar::<_, String>("select postgis_lib_version()")
        .fetch_one(&app.pg)
        .await;
    let redis = redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(&mut app.redis)
        .await
        .map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("unknown")
                .to_owned()
        });
    let status = if postgis.is_ok() && redis.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let show = |r: Result<String, String>| match r {
        Ok(v) => json!({ "ok": true, "version": v }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    (
        status,
        Json(json!({
            "postgis": show(postgis.map_err(|e| e.to_string())),
            "redis": show(redis.map_err(|e| e.to_string())),
        })),
    )
}
