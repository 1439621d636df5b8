//! The example server: the geostack crates composed into one HTTP service — CARTO's SQL and
//! Batch APIs, Windshaft-style maps, table tiles and a MapLibre page — with a batch worker in
//! the same process.
//!
//! Configuration from the environment:
//! - `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`): an admin connection to
//!   the database served; callers' SQL runs on connections that log in as their keys' roles
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`)
//! - `GEOSTACK_ADDR`, the address to listen on (default `127.0.0.1:8080`)
//! - `GEOSTACK_DEMO_USER`: when set, the demo: the Natural Earth countries and populated places
//!   are loaded when missing, the user gets a `default_public` key and a regular key (made anew
//!   at each start, printed at start), and requests without a user are that user's
//! - `GEOSTACK_BATCH_WORKERS`, batch queries run at once in process (default 2; 0 leaves them
//!   to `examples/worker.rs`)
//!
//! `GET /health` and `GET /ready` are the router's own.

use std::net::SocketAddr;
use std::time::Duration;

use geostack::auth::{Api, DbRole, Grants, KeyStore, NewKey, Privilege, Secret, UserName};
use geostack::server::{Server, ServerConfig};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let database_url = env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let addr: SocketAddr = env_or("GEOSTACK_ADDR", "127.0.0.1:8080").parse()?;
    let workers: usize = env_or("GEOSTACK_BATCH_WORKERS", "2").parse()?;
    let demo_user = std::env::var("GEOSTACK_DEMO_USER").ok();

    let pg_options: PgConnectOptions = database_url.parse()?;
    let admin = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(pg_options.clone())
        .await?;
    let client = redis::Client::open(redis_url)?;
    let redis = redis::aio::ConnectionManager::new(client.clone()).await?;

    let mut config = ServerConfig::default();
    let mut demo = None;
    if let Some(user) = &demo_user {
        config = config.default_user(user.as_str());
        demo = Some(provision_demo(&admin, KeyStore::new(redis.clone()), user).await?);
    }
    let server = Server::new(redis.clone(), client, pg_options, config).await;
    let worker = (workers > 0).then(|| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(server.batch_worker(workers).run(async {
            let _ = stopped.await;
        }));
        (stop, run)
    });

    let app = server.router();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let url = format!("http://{}/", listener.local_addr()?);
    match &demo {
        // The demo's own keys, printed on purpose so that a person can try them.
        Some(d) => tracing::info!(
            %url,
            user = %d.user,
            default_public = "default_public",
            regular_key = %d.regular,
            data = %d.data,
            "geostack demo listening"
        ),
        None => tracing::info!(%url, "geostack server listening"),
    }
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

/// What the demo made.
struct Demo {
    user: String,
    regular: String,
    data: String,
}

/// The demo's data, roles and keys: `countries` and `places` loaded when missing; `demo_public`
/// reads them; `demo_regular` also writes `notes`; the user's keys are made anew.
async fn provision_demo(
    admin: &PgPool,
    keys: KeyStore,
    user: &str,
) -> Result<Demo, Box<dyn std::error::Error>> {
    let exists = |table: &'static str| async move {
        sqlx::query_scalar::<_, bool>("select to_regclass($1) is not null")
            .bind(table)
            .fetch_one(admin)
            .await
    };
    if !exists("public.countries").await? {
        geostack_testkit::natural_earth::load_countries(admin, "countries").await;
    }
    if !exists("public.places").await? {
        geostack_testkit::natural_earth::load_places(admin, "places").await;
    }
    sqlx::raw_sql(
        "create table if not exists notes (id serial primary key, note text,
                                           geom geometry(Point, 4326))",
    )
    .execute(admin)
    .await?;
    let public_password = random_password()?;
    let regular_password = random_password()?;
    let tables = ["countries", "places"];
    geostack::sql::PublicRole::new("demo_public", public_password.as_str(), "public")
        .tables(tables)
        .provision(admin, &[])
        .await?;
    geostack::sql::PublicRole::new("demo_regular", regular_password.as_str(), "public")
        .tables(tables.into_iter().chain(["notes"]))
        .provision(admin, &[])
        .await?;
    sqlx::raw_sql(
        "grant insert, update, delete on notes to demo_regular;
         grant usage on sequence notes_id_seq to demo_regular;",
    )
    .execute(admin)
    .await?;

    let name = UserName::new(user)?;
    for key in keys.list(&name).await? {
        keys.revoke(&name, &key.id).await?;
    }
    keys.create(
        &name,
        NewKey::default_public(DbRole::new("demo_public", Secret::new(public_password))).grants(
            Grants::new()
                .api(Api::Sql)
                .api(Api::Maps)
                .table("public.countries".parse()?, [Privilege::Select])
                .table("public.places".parse()?, [Privilege::Select]),
        ),
    )
    .await?;
    let grants = Grants::new()
        .api(Api::Sql)
        .api(Api::Maps)
        .tables_by_database_role();
    let (_, token) = keys
        .create(
            &name,
            NewKey::regular(
                "demo",
                DbRole::new("demo_regular", Secret::new(regular_password)),
            )
            .grants(grants),
        )
        .await?;
    let (countries, places): (i64, i64) =
        sqlx::query_as("select (select count(*) from countries), (select count(*) from places)")
            .fetch_one(admin)
            .await?;
    Ok(Demo {
        user: user.to_owned(),
        regular: token.expose().to_owned(),
        data: format!("countries ({countries}), places ({places})"),
    })
}

/// 32 hex characters from the operating system's random source.
fn random_password() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
