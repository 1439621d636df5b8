//! `GET /health` (the process answers) and `GET /ready` (PostgreSQL and Redis answer too), for
//! load balancers and orchestrators.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::RedisConnection;

/// `GET /health` (200 while the process serves) and `GET /ready` (200 when PostgreSQL and
/// Redis answer within two seconds each, 503 otherwise), for load balancers and orchestrators.
///
/// ```no_run
/// # async fn demo(sandbox: geostack::server::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client).await?;
/// let health = geostack::server::Health::new(conn, sandbox.admin().clone());
/// let app = axum::Router::new().merge(health.router());
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Health<C = redis::aio::ConnectionManager> {
    redis: C,
    postgres: sqlx::PgPool,
}

impl<C: RedisConnection> Health<C> {
    /// Checks `redis` and `postgres` when asked whether the server is ready.
    pub fn new(redis: C, postgres: sqlx::PgPool) -> Self {
        Self { redis, postgres }
    }

    /// Its two routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready::<C>))
            .with_state(self.clone())
    }
}

/// 200 while the process serves.
async fn health() -> Json<serde_json::Value> {
    Json(json!({ "ok": true }))
}

/// 200 when PostgreSQL and Redis answer within two seconds each, 503 otherwise; says which did
/// not (never why: driver text stays in the logs).
async fn ready<C: RedisConnection>(
    State(health): State<Health<C>>,
) -> (StatusCode, Json<serde_json::Value>) {
    let limit = std::time::Duration::from_secs(2);
    let pg = tokio::time::timeout(
        limit,
        sqlx::query_scalar::<_, i32>("select 1")
            .persistent(false)
            .fetch_one(&health.postgres),
    )
    .await;
    let postgres = matches!(pg, Ok(Ok(1)));
    if !postgres {
        tracing::warn!("ready: PostgreSQL did not answer");
    }
    let mut conn = health.redis.clone();
    let pong =
        tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut conn)).await;
    let redis = matches!(pong, Ok(Ok(_)));
    if !redis {
        tracing::warn!("ready: Redis did not answer");
    }
    let status = if postgres && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "postgres": postgres, "redis": redis })),
    )
}
