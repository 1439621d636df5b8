//! The demo's data, loaded into the database at `DATABASE_URL` when missing: the vendored
//! Natural Earth countries and populated places (`data/natural-earth`), and an empty `notes`
//! table that the demo's regular key may write. `scripts/demo` runs it before
//! `geostack serve`.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&url)
        .await?;
    let exists = |table: &'static str| {
        sqlx::query_scalar::<_, bool>("select to_regclass($1) is not null")
            .bind(table)
            .fetch_one(&admin)
    };
    if !exists("public.countries").await? {
        geostack_testkit::natural_earth::load_countries(&admin, "countries").await;
    }
    if !exists("public.places").await? {
        geostack_testkit::natural_earth::load_places(&admin, "places").await;
    }
    sqlx::raw_sql(
        "create table if not exists notes (id serial primary key, note text,
                                           geom geometry(Point, 4326))",
    )
    .execute(&admin)
    .await?;
    let (countries, places): (i64, i64) =
        sqlx::query_as("select (select count(*) from countries), (select count(*) from places)")
            .fetch_one(&admin)
            .await?;
    println!("demo data: countries ({countries}), places ({places}), notes");
    Ok(())
}
