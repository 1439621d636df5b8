//! geoauth and the SQL API inside your own axum app, beside a route of your own.
use axum::extract::{Query, State};
use axum::{Router, http::request::Parts, response::IntoResponse, routing::get};
use geostack::auth::{Api, AuthLayer, KeyPrefix, KeyStore, Principal, UserName, Verifier};
use geostack::sql::{Options, PoolRegistry};
use std::sync::Arc;

/// `GET /api/v2/sql?q=…&format=…`: the caller's SQL, run as its key's role.
async fn sql(
    pools: State<Arc<PoolRegistry>>,
    who: Principal,
    q: Query<Vec<(String, String)>>,
) -> impl IntoResponse {
    let text = q
        .iter()
        .find(|(k, _)| k == "q")
        .map_or("", |(_, v)| v.as_str());
    let options = Options::from_params(q.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let pool = pools.pool(who.db_role().name(), who.db_role().password().expose())?;
    geostack::sql::run(&pool, text, options).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name, default: &str| std::env::var(name).unwrap_or(default.into());
    let redis = redis::Client::open(env("REDIS_URL", "redis://127.0.0.1:6379"))?;
    let conn = redis::aio::ConnectionManager::new(redis.clone()).await?;
    let keys = KeyStore::with_prefix(conn, KeyPrefix::new(env("GEOAUTH_PREFIX", "geoauth:"))?);
    let verifier = Verifier::with_cache(keys, redis, Default::default()).await;
    let user = UserName::new(env("COMPOSE_USER", "demo"))?;
    let auth = AuthLayer::new(verifier, move |_: &Parts| Ok(user.clone())).require(Api::Sql);
    let database = env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test").parse()?;
    let app = Router::new()
        .route("/api/v2/sql", get(sql))
        .layer(auth)
        .with_state(Arc::new(PoolRegistry::new(database, Default::default())))
        .route("/hello", get(|| async { "a route of my own" }));
    let listener = tokio::net::TcpListener::bind(env("GEOSTACK_ADDR", "127.0.0.1:8080")).await?;
    Ok(axum::serve(listener, app).await?)
}
