//! Vector tiles of one PostGIS table (`TILES_TABLE`) at `/{z}/{x}/{y}`: no Redis, no keys.
use std::sync::Arc;

use axum::{Router, extract::Path, extract::State, routing::get};
use geostack::tiles::{Error, TableSource, TileCoord};

type Source = State<(sqlx::PgPool, Arc<TableSource>)>;
type Zxy = Path<(u8, u32, u32)>;

async fn tile(State((pool, src)): Source, Path((z, x, y)): Zxy) -> Result<Vec<u8>, Error> {
    let coord = TileCoord::new_checked(z, x, y)?;
    TableSource::tile(&src, &pool, &Default::default(), coord, &Default::default()).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name, default: &str| std::env::var(name).unwrap_or(default.into());
    let pool = sqlx::PgPool::connect(&env("DATABASE_URL", "postgres://127.0.0.1/test")).await?;
    let table = env("TILES_TABLE", "countries");
    let found = geostack::tiles::discover(&pool)
        .await?
        .into_iter()
        .find(|t| t.table == table);
    let source = Arc::new(found.ok_or("no such table with a geometry column")?);
    let app = Router::new()
        .route("/{z}/{x}/{y}", get(tile))
        .with_state((pool, source));
    let listener = tokio::net::TcpListener::bind(env("GEOSTACK_ADDR", "127.0.0.1:8080")).await?;
    Ok(axum::serve(listener, app).await?)
}
