//! `GET /health` (the process answers) and `GET /ready` (PostgreSQL and Redis answer too), for
//! load balancers and orchestrators.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use super::Server;

/// 200 while the process serves.
pub(super) async fn health() -> Json<serde_json::Value> {
    Json(json!({ "ok": true }))
}

/// 200 when PostgreSQL and Redis answer within two seconds each, 503 otherwise; says which did
/// not (never why: driver text stays in the logs).
pub(super) async fn ready(State(server): State<Server>) -> (StatusCode, Json<serde_json::Value>) {
    let limit = std::time::Duration::from_secs(2);
    let pg = tokio::time::timeout(
        limit,
        sqlx::query_scalar::<_, i32>("select 1")
            .persistent(false)
            .fetch_one(&server.inner.admin),
    )
    .await;
    let postgres = matches!(pg, Ok(Ok(1)));
    if !postgres {
        tracing::warn!("ready: PostgreSQL did not answer");
    }
    let mut conn = server.inner.redis.clone();
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
