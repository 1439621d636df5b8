//! Vector tiles of one PostGIS table (`TILES_TABLE`) at `/{z}/{x}/{y}`: no Redis, no keys.
use axum::{Router, extract::Request, routing::get};
use geostack::tiles::TableTiles;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name, default: &str| std::env::var(name).unwrap_or(default.into());
    let pool = sqlx::PgPool::connect(&env("DATABASE_URL", "postgres://127.0.0.1/test")).await?;
    let table = env("TILES_TABLE", "countries");
    let found = geostack::tiles::discover(&pool)
        .await?
        .into_iter()
        .find(|t| t.table == table);
    let tiles = TableTiles::new(pool, found.ok_or("no such table with a geometry column")?);
    // The tile, its ETag (304 when asked again with it), 204 when empty, errors as JSON.
    let tile = move |request: Request| async move {
        tiles.answer(request.uri().path(), request.headers()).await
    };
    let app = Router::new().route("/{z}/{x}/{y}", get(tile));
    let listener = tokio::net::TcpListener::bind(env("GEOSTACK_ADDR", "127.0.0.1:8080")).await?;
    Ok(axum::serve(listener, app).await?)
}
