//! `geostack`: the operator's command. It serves CARTO's HTTP APIs (SQL, Batch, Maps) over
//! PostgreSQL/PostGIS and Redis, runs batch workers, and manages users and their API keys, each
//! key with a PostgreSQL login role of its own holding exactly the key's table grants.
//!
//! Configuration comes from a TOML file (`--config`, see `geostack.example.toml`) and
//! `GEOSTACK_…` environment variables over it.

mod config;

/// mimalloc, not the system's allocator: a server's requests allocate and free small buffers
/// on every runtime thread, where glibc's arenas contend on their locks (a cached tile's
/// requests spent a third of their handler time in malloc and free, some of it waiting on
/// those locks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use geostack::auth::{Api, ApiKey, Grants, KeyId, KeyKind, Privilege, TableName, UserName};
use geostack::server::{GuardedListener, KeyRequest, Peer, Server};

use config::{Config, LogFormat};

/// geostack: CARTO's SQL, Batch and Maps APIs over PostgreSQL/PostGIS and Redis.
///
/// Every subcommand reads the configuration file given with --config (TOML; see
/// geostack.example.toml) and the GEOSTACK_… environment variables over it (for example
/// GEOSTACK_LISTEN=0.0.0.0:8080 or GEOSTACK_SQL__STATEMENT_TIMEOUT_SECS=5); DATABASE_URL and
/// REDIS_URL name the two services.
#[derive(Parser)]
#[command(name = "geostack", version, propagate_version = true)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the HTTP APIs until SIGTERM or Ctrl-C, then lets requests in flight finish
    /// (shutdown_grace_secs) and stops.
    ///
    /// Installs sqlpass in the database at start (a superuser's admin URL also gets the plan
    /// cache's DDL generation) and runs batch_workers batch queries at once in process.
    Serve,
    /// Runs batch queries from the queue until SIGTERM or Ctrl-C, handing back the ones it has
    /// not finished.
    Worker {
        /// Batch queries run at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Users: each has a default_public key that anonymous requests use.
    #[command(subcommand)]
    User(UserCommand),
    /// A user's API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Tables, as CARTO's APIs and clients expect them.
    #[command(subcommand)]
    Tables(TablesCommand),
}

#[derive(Subcommand)]
enum TablesCommand {
    /// Makes TABLE a CARTO table in place, as CARTO's CDB_CartodbfyTable does: a cartodb_id
    /// key, the_geom in EPSG:4326 (the table's one geometry column renamed when it has no
    /// the_geom), the_geom_webmercator kept in step by a trigger, spatial indexes. Idempotent;
    /// runs as the administrative role. Prints the table's columns as JSON.
    Cartodbfy {
        /// The table, as SQL names it: places, or public."My places".
        table: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Makes (or makes anew) USER's two standing keys, each with a login role of its own: the
    /// default_public key, reading the given tables, and the master key, holding every
    /// privilege on the tables of schema public and the right to create tables there (the key
    /// that may call the Auth API and run several statements and DDL). A master key made
    /// before keeps its role and the tables it made, and gets a new token. Prints both as
    /// JSON, the master key with its token: the only time it is shown.
    Create {
        /// The user.
        user: String,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// Revokes every key of USER and drops their roles; the tables the master key made stay,
    /// owned by the administrative role.
    Delete {
        /// The user.
        user: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Makes a regular key for USER with its own login role holding exactly its grants.
    /// Prints the key as JSON, with its token: the only time the token is shown.
    Create {
        /// The user.
        user: String,
        /// The key's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// Lists USER's keys as JSON (never their tokens).
    List {
        /// The user.
        user: String,
    },
    /// Shows one key of USER as JSON.
    Show {
        /// The user.
        user: String,
        /// The key's id (key_…).
        id: String,
    },
    /// Gives a key a new token; the old one stops working at once. Prints the new token.
    Regenerate {
        /// The user.
        user: String,
        /// The key's id (key_…).
        id: String,
    },
    /// Revokes a key and drops its role.
    Revoke {
        /// The user.
        user: String,
        /// The key's id (key_…).
        id: String,
    },
}

/// What a key grants: as flags, or as CARTO's JSON.
#[derive(Args)]
struct GrantArgs {
    /// An API the key may call: sql, maps (repeat; default both).
    #[arg(long = "api", value_name = "API")]
    apis: Vec<String>,
    /// A table and its privileges, SCHEMA.TABLE[:select,insert,update,delete] (repeat; the
    /// privileges default to select).
    #[arg(long = "table", value_name = "TABLE[:PRIVILEGES]")]
    tables: Vec<String>,
    /// The grants in CARTO's JSON: [{"type":"apis","apis":["sql"]},{"type":"database",
    /// "tables":[{"schema":"public","name":"t","permissions":["select"]}]}]. Instead of
    /// --api and --table.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["apis", "tables"])]
    grants: Option<String>,
}

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("geostack: {e}");
            return ExitCode::from(2);
        }
    };
    logs(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("geostack: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geostack: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error, as text (coloured only on a terminal) or JSON.
fn logs(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command, config: Config) -> Result<(), Failure> {
    if matches!(command, Command::User(_) | Command::Keys(_))
        && config.key_layout == config::Layout::Carto
    {
        return Err("key_layout is \"carto\": CARTO manages these users' keys".into());
    }
    let (server, client) = server(&config).await?;
    match command {
        Command::Serve => serve(server, client, &config).await,
        Command::Worker { concurrency } => {
            server
                .batch_worker(client, concurrency)
                .run(shutdown())
                .await?;
            Ok(())
        }
        Command::User(UserCommand::Create { user, grants }) => {
            let user = UserName::new(user)?;
            let (public, public_token) = server
                .auth()
                .create_key(&user, KeyRequest::DefaultPublic, grants.parse()?)
                .await?;
            // One master key a user: an earlier one keeps its role (which owns the tables it
            // made) and gets a new token.
            let earlier = server
                .auth()
                .key_store()
                .list(&user)
                .await?
                .into_iter()
                .find(|k| k.kind == KeyKind::Master);
            let (master, master_token) = match earlier {
                Some(key) => {
                    let token = server
                        .auth()
                        .regenerate_key(&user, &key.id)
                        .await?
                        .ok_or_else(|| format!("{user}'s master key went away meanwhile"))?;
                    (key, token)
                }
                None => {
                    server
                        .auth()
                        .create_key(&user, KeyRequest::Master, Grants::new())
                        .await?
                }
            };
            println!(
                "{}",
                serde_json::json!({
                    "user": user.as_str(),
                    "default_public": key_json(&public, Some(public_token.expose())),
                    "master": key_json(&master, Some(master_token.expose())),
                })
            );
            Ok(())
        }
        Command::User(UserCommand::Delete { user }) => {
            let user = UserName::new(user)?;
            let keys = server.auth().key_store().list(&user).await?;
            for key in &keys {
                server.auth().revoke_key(&user, &key.id).await?;
            }
            println!(
                "{}",
                serde_json::json!({ "user": user.as_str(), "revoked": keys.len() })
            );
            Ok(())
        }
        Command::Keys(command) => keys(&server, command).await,
        Command::Tables(TablesCommand::Cartodbfy { table }) => {
            let admin = server.sandbox().admin();
            geostack::sql::cartodbfy(admin, &table).await?;
            let columns: Vec<(String, String)> = sqlx::query_as(
                "select attname::text, format_type(atttypid, atttypmod) from pg_attribute
                 where attrelid = $1::text::regclass and attnum > 0 and not attisdropped
                 order by attnum",
            )
            .bind(&table)
            .fetch_all(admin)
            .await
            .map_err(|_| format!("the columns of {table} could not be read"))?;
            let columns: serde_json::Map<_, _> = columns
                .into_iter()
                .map(|(name, ty)| (name, serde_json::Value::String(ty)))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "table": table, "columns": columns })
            );
            Ok(())
        }
    }
}

async fn keys(server: &Server, command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Create { user, name, grants } => {
            let user = UserName::new(user)?;
            let (key, token) = server
                .auth()
                .create_key(&user, KeyRequest::Regular(name), grants.parse()?)
                .await?;
            print_key(&key, Some(token.expose()));
        }
        KeysCommand::List { user } => {
            let user = UserName::new(user)?;
            let keys: Vec<_> = server
                .auth()
                .key_store()
                .list(&user)
                .await?
                .iter()
                .map(|k| key_json(k, None))
                .collect();
            println!("{}", serde_json::Value::Array(keys));
        }
        KeysCommand::Show { user, id } => {
            let (user, id) = (UserName::new(user)?, id.parse::<KeyId>()?);
            let key = server
                .auth()
                .key_store()
                .get(&user, &id)
                .await?
                .ok_or_else(|| format!("{user} has no key {id}"))?;
            print_key(&key, None);
        }
        KeysCommand::Regenerate { user, id } => {
            let (user, id) = (UserName::new(user)?, id.parse::<KeyId>()?);
            let token = server
                .auth()
                .regenerate_key(&user, &id)
                .await?
                .ok_or_else(|| format!("{user} has no key {id}"))?;
            println!(
                "{}",
                serde_json::json!({ "id": id.as_str(), "token": token.expose() })
            );
        }
        KeysCommand::Revoke { user, id } => {
            let (user, id) = (UserName::new(user)?, id.parse::<KeyId>()?);
            if !server.auth().revoke_key(&user, &id).await? {
                return Err(format!("{user} has no key {id}").into());
            }
            println!(
                "{}",
                serde_json::json!({ "id": id.as_str(), "revoked": true })
            );
        }
    }
    Ok(())
}

fn print_key(key: &ApiKey, token: Option<&str>) {
    println!("{}", key_json(key, token));
}

/// A key as JSON: never its role's password; its token only when just made.
fn key_json(key: &ApiKey, token: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": key.id.as_str(),
        "user": key.user.as_str(),
        "type": key.kind.as_str(),
        "name": key.name,
        "apis": key.grants.apis().map(Api::as_str).collect::<Vec<_>>(),
        "tables": match key.grants.tables() {
            geostack::auth::TableGrants::Listed(tables) => tables
                .iter()
                .map(|(t, p)| serde_json::json!({
                    "schema": t.schema(),
                    "name": t.table(),
                    "permissions": p.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        },
        "role": key.db_role.name(),
    });
    if let (Some(token), Some(map)) = (token, v.as_object_mut()) {
        map.insert("token".into(), token.into());
    }
    v
}

impl GrantArgs {
    fn parse(&self) -> Result<Grants, Failure> {
        if let Some(json) = &self.grants {
            return carto_grants(json);
        }
        let mut grants = Grants::new();
        let apis: Vec<&str> = if self.apis.is_empty() {
            vec!["sql", "maps"]
        } else {
            self.apis.iter().map(String::as_str).collect()
        };
        for api in apis {
            grants = grants.api(api.parse::<Api>()?);
        }
        for spec in &self.tables {
            let (table, privileges) = spec.split_once(':').unwrap_or((spec, "select"));
            let privileges = privileges
                .split(',')
                .map(|p| p.trim().parse::<Privilege>())
                .collect::<Result<Vec<_>, _>>()?;
            grants = grants.table(qualified(table).parse::<TableName>()?, privileges);
        }
        Ok(grants)
    }
}

/// `table` with its schema (`public` when it has none).
fn qualified(table: &str) -> String {
    if table.contains('.') {
        table.to_owned()
    } else {
        format!("public.{table}")
    }
}

/// Grants in CARTO's JSON shape.
fn carto_grants(json: &str) -> Result<Grants, Failure> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("--grants is not JSON: {e}"))?;
    Grants::from_carto_json(&value).map_err(|e| format!("--grants: {e}").into())
}

/// The server of `config`, and the Redis client its batch workers open connections with.
async fn server(config: &Config) -> Result<(Server, redis::Client), Failure> {
    let pg: sqlx::postgres::PgConnectOptions = config
        .database_url
        .parse()
        .map_err(|_| "database_url: not a PostgreSQL URL")?;
    let client = match &config.redis_ca_file {
        None => redis::Client::open(config.redis_url.as_str()),
        Some(file) => {
            let pem = std::fs::read(file)
                .map_err(|e| format!("redis_ca_file: cannot read {} ({e})", file.display()))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(config.redis_url.as_str(), certificates)
        }
    }
    .map_err(|e| format!("redis_url: not a Redis URL ({:?})", e.kind()))?;
    let redis = redis::aio::ConnectionManager::new(client.clone())
        .await
        .map_err(|e| format!("redis_url: Redis did not answer ({:?})", e.kind()))?;
    let server = Server::new(redis, client.clone(), pg, config.server()?).await;
    Ok((server, client))
}

async fn serve(server: Server, client: redis::Client, config: &Config) -> Result<(), Failure> {
    let changes: sqlx::postgres::PgConnectOptions = config
        .changes_database_url
        .as_deref()
        .unwrap_or(&config.database_url)
        .parse()
        .map_err(|_| "changes_database_url: not a PostgreSQL URL")?;
    let following = tokio::spawn(server.follow_table_changes(changes));
    let worker = (config.batch_workers > 0).then(|| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(
            server
                .batch_worker(client, config.batch_workers)
                .run(async {
                    let _ = stopped.await;
                }),
        );
        (stop, run)
    });
    let listener = GuardedListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen: cannot bind {} ({e})", config.listen))?;
    tracing::info!(addr = %config.listen, "geostack listening");
    let app = server
        .router()
        .merge(metrics(server.clone())?)
        .into_make_service_with_connect_info::<Peer>();
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown().await;
        let _ = signalled.send(());
    });
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    // In-flight requests get the grace period after the signal; then they are dropped (their
    // queries cancelled by the sandbox).
    let deadline = async {
        let _ = on_signal.await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "stopping: draining requests in flight"
        );
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serving => served?,
        () = deadline => tracing::warn!("requests still in flight at the end of the grace period were cut"),
    }
    if let Some((stop, run)) = worker {
        let _ = stop.send(());
        let _ = run.await;
    }
    following.abort();
    tracing::info!("stopped");
    Ok(())
}

/// `GET /metrics`: the server's metrics in Prometheus's text format (latencies as histograms).
fn metrics(server: Server) -> Result<axum::Router, Failure> {
    let buckets = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
    ];
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&buckets)?
        .install_recorder()?;
    let scrape = move || {
        let (server, handle) = (server.clone(), handle.clone());
        async move {
            if let Err(e) = server.record_gauges().await {
                tracing::warn!(error = %e, "metrics: the gauges could not be read");
            }
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
        }
    };
    Ok(axum::Router::new().route("/metrics", axum::routing::get(scrape)))
}

/// Resolves at SIGTERM or Ctrl-C.
async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
