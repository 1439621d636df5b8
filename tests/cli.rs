//! The `geostack` command end to end, against real PostgreSQL and Redis: keys made, listed,
//! regenerated and revoked with their roles checked in PostgreSQL; a configuration error that
//! names its setting; `serve` answering with a key it made, and draining a request in flight on
//! SIGTERM.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use geostack_testkit::{TestDb, TestRedis};

const BIN: &str = env!("CARGO_BIN_EXE_geostack");

/// A database with `places` and `secrets`, a Redis prefix, and a configuration file for both.
struct Setup {
    db: TestDb,
    _redis: TestRedis,
    config: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

async fn setup(extra: &str) -> Setup {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "create table places (id int primary key, name text);
         insert into places values (1, 'Zürich'), (2, 'Lagos');
         create table secrets (id int, secret text);",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let redis = TestRedis::new().await;
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let config = std::env::temp_dir().join(format!("{}.toml", db.name()));
    std::fs::write(
        &config,
        format!(
            "database_url = {:?}\nredis_url = {redis_url:?}\nkey_prefix = {:?}\nredis_prefix = {:?}\n\
             role_prefix = \"gs_test_role_cli_\"\n{extra}",
            db.url(),
            redis.prefix(),
            redis.prefix()
        ),
    )
    .unwrap();
    Setup {
        db,
        _redis: redis,
        config,
    }
}

/// The command on `setup`'s configuration file alone (the services' variables of the test's
/// environment, which would override it, left out).
fn command(setup: &Setup) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(&setup.config)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    command
}

fn geostack(setup: &Setup, args: &[&str]) -> Output {
    command(setup).args(args).output().unwrap()
}

/// The command's standard output as JSON, after checking that it succeeded.
fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn privilege(setup: &Setup, role: &str, table: &str, privilege: &str) -> bool {
    sqlx::query_scalar("select has_table_privilege($1, $2, $3)")
        .bind(role)
        .bind(table)
        .bind(privilege)
        .fetch_one(setup.db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_are_made_listed_regenerated_and_revoked_with_their_roles() {
    let setup = setup("").await;
    let made = json(&geostack(
        &setup,
        &[
            "keys",
            "create",
            "alice",
            "--name",
            "app",
            "--api",
            "sql",
            "--table",
            "places:select,insert",
        ],
    ));
    let (id, token, role) = (
        made["id"].as_str().unwrap().to_owned(),
        made["token"].as_str().unwrap().to_owned(),
        made["role"].as_str().unwrap().to_owned(),
    );
    assert_eq!(made["apis"], serde_json::json!(["sql"]));
    assert_eq!(
        made["tables"],
        serde_json::json!([{"schema": "public", "name": "places", "permissions": ["select", "insert"]}])
    );
    assert!(role.starts_with("gs_test_role_cli_"), "{role}");
    // The role holds exactly the key's grants.
    assert!(privilege(&setup, &role, "places", "select").await);
    assert!(privilege(&setup, &role, "places", "insert").await);
    assert!(!privilege(&setup, &role, "places", "delete").await);
    assert!(!privilege(&setup, &role, "secrets", "select").await);

    // CARTO's JSON grants make the same kind of key.
    let carto = json(&geostack(
        &setup,
        &[
            "keys",
            "create",
            "alice",
            "--name",
            "reader",
            "--grants",
            r#"[{"type":"apis","apis":["sql","maps"]},{"type":"database","tables":[{"schema":"public","name":"secrets","permissions":["select"]}]}]"#,
        ],
    ));
    let reader_role = carto["role"].as_str().unwrap().to_owned();
    assert!(privilege(&setup, &reader_role, "secrets", "select").await);
    assert!(!privilege(&setup, &reader_role, "places", "select").await);

    // Listed without tokens.
    let listed = json(&geostack(&setup, &["keys", "list", "alice"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.get("token").is_none()));
    assert_eq!(
        json(&geostack(&setup, &["keys", "show", "alice", &id]))["name"],
        "app"
    );

    // A new token, not the old one.
    let again = json(&geostack(&setup, &["keys", "regenerate", "alice", &id]));
    assert_ne!(again["token"].as_str().unwrap(), token);

    // Revoked: the key and its role are gone.
    json(&geostack(&setup, &["keys", "revoke", "alice", &id]));
    let roles: i64 = sqlx::query_scalar("select count(*) from pg_roles where rolname = $1")
        .bind(&role)
        .fetch_one(setup.db.pool())
        .await
        .unwrap();
    assert_eq!(roles, 0);
    let shown = geostack(&setup, &["keys", "show", "alice", &id]);
    assert!(!shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stderr).contains("has no key"));

    // Deleting the user revokes the rest.
    let deleted = json(&geostack(&setup, &["user", "delete", "alice"]));
    assert_eq!(deleted["revoked"], 1);
    assert_eq!(
        json(&geostack(&setup, &["keys", "list", "alice"])),
        serde_json::json!([])
    );
}

#[tokio::test]
async fn a_bad_setting_is_named_and_nothing_starts() {
    let setup = setup("[sql]\nstatement_timeout_secs = \"soon\"\n").await;
    let out = geostack(&setup, &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sql.statement_timeout_secs"), "{stderr}");
    // The environment overrides the file, and is checked the same way.
    let out = command(&setup)
        .arg("serve")
        .env("GEOSTACK_SQL__STATEMENT_TIMEOUT_SECS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sql.statement_timeout_secs: must be at least 1"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_answers_with_its_keys_and_drains_a_request_in_flight_on_sigterm() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let setup = setup(&format!(
        "listen = \"127.0.0.1:{port}\"\ndefault_user = \"alice\"\nbatch_workers = 0\nshutdown_grace_secs = 20\n"
    ))
    .await;
    let user = json(&geostack(
        &setup,
        &["user", "create", "alice", "--table", "places"],
    ));
    assert_eq!(user["default_public"]["type"], "default_public");
    let master = user["master"]["token"].as_str().unwrap().to_owned();
    // The master key's role holds every privilege on the user's tables.
    let master_role = user["master"]["role"].as_str().unwrap().to_owned();
    assert!(privilege(&setup, &master_role, "secrets", "delete").await);
    let child = command(&setup)
        .arg("serve")
        .env("GEOSTACK_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new();
    let started = Instant::now();
    while client.get(&format!("{base}/ready")).await.map(|r| r.0) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = client
        .get(&format!(
            "{base}/api/v2/sql?q=select%20count(*)%20as%20n%20from%20places"
        ))
        .await
        .unwrap();
    assert_eq!(
        (status, body["rows"][0]["n"].as_i64()),
        (200, Some(2)),
        "{body}"
    );
    // The master key the command made manages keys through the Auth API.
    let (status, keys) = client
        .get(&format!("{base}/api/v3/api_keys?api_key={master}"))
        .await
        .unwrap();
    assert_eq!((status, keys["total"].as_u64()), (200, Some(2)), "{keys}");
    // The metrics count that request, by its route's template, and read the gauges.
    let metrics = client.text(&format!("{base}/metrics")).await.unwrap();
    let sql_ok = metrics.lines().find(|l| {
        l.starts_with("geostack_http_requests_total{")
            && l.contains("route=\"/api/v2/sql\"")
            && l.contains("status=\"200\"")
    });
    assert_eq!(
        sql_ok.and_then(|l| l.rsplit(' ').next()),
        Some("1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "geostack_http_request_duration_seconds_bucket{route=\"/api/v2/sql\",le=\"0.005\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("geostack_sql_rows_total 1"), "{metrics}");
    assert!(
        metrics.contains("geostack_batch_jobs{state=\"waiting\"} 0"),
        "{metrics}"
    );
    // This serve runs no batch worker (batch_workers = 0); the queue is not paused.
    assert!(metrics.contains("geostack_batch_workers 0"), "{metrics}");
    assert!(metrics.contains("geostack_batch_paused 0"), "{metrics}");
    assert!(
        metrics.contains("geostack_batch_jobs_last_minute{outcome=\"dead\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("geostack_pool_connections{"), "{metrics}");
    // A request of about two seconds, then SIGTERM while it runs.
    let slow = tokio::spawn({
        let client = client.clone();
        let url = format!(
            "{base}/api/v2/sql?q=select%20count(*)%20as%20n%20from%20generate_series(1,%2040000000)"
        );
        async move { client.get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, body) = slow
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(
        (status, body["rows"][0]["n"].as_i64()),
        (200, Some(40_000_000)),
        "{body}"
    );
    let exited = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        exited.status.success(),
        "{}",
        String::from_utf8_lossy(&exited.stderr)
    );
    let logs = String::from_utf8_lossy(&exited.stderr);
    assert!(logs.contains("draining"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "ANSI codes in logs: {logs}");
}

/// A small HTTP/1.1 client: one request per connection, the JSON body.
#[derive(Clone)]
struct Client;

impl Client {
    fn new() -> Self {
        Self
    }

    async fn get(&self, url: &str) -> Option<(u16, serde_json::Value)> {
        let (status, body) = self.fetch(url).await?;
        Some((
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    async fn text(&self, url: &str) -> Option<String> {
        self.fetch(url).await.map(|(_, body)| body)
    }

    async fn fetch(&self, url: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_once('/')?;
        let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
        let request = format!("GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Some((status, body))
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[tokio::test]
async fn a_user_made_again_keeps_its_master_s_tables_and_cartodbfy_makes_carto_tables() {
    let setup = setup("").await;
    let first = json(&geostack(&setup, &["user", "create", "alice"]));
    let role = first["master"]["role"].as_str().unwrap().to_owned();
    // A table the master key's role made (as its SQL would).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "set role {role}; create table mine (id int); insert into mine values (7); reset role;"
    )))
    .execute(setup.db.pool())
    .await
    .unwrap();
    let again = json(&geostack(&setup, &["user", "create", "alice"]));
    assert_eq!(again["master"]["role"], role.as_str());
    assert_ne!(again["master"]["token"], first["master"]["token"]);
    let owner = |setup: &Setup| {
        let pool = setup.db.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "select tableowner::text from pg_tables where tablename = 'mine'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(owner(&setup).await, role);
    // Deleting the user keeps its data, handed to the administrative role.
    json(&geostack(&setup, &["user", "delete", "alice"]));
    let admin: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(setup.db.pool())
        .await
        .unwrap();
    assert_eq!(owner(&setup).await, admin);

    sqlx::raw_sql(
        "alter table places add column geom geometry(Point, 4326);
         update places set geom = ST_SetSRID(ST_MakePoint(id, id), 4326);",
    )
    .execute(setup.db.pool())
    .await
    .unwrap();
    let made = json(&geostack(&setup, &["tables", "cartodbfy", "places"]));
    assert_eq!(
        made["columns"],
        serde_json::json!({
            "id": "integer",
            "name": "text",
            "the_geom": "geometry(Point,4326)",
            "cartodb_id": "bigint",
            "the_geom_webmercator": "geometry(Geometry,3857)",
        })
    );
    let (ids, mercator): (i64, i64) = sqlx::query_as(
        "select count(distinct cartodb_id), count(the_geom_webmercator) from places",
    )
    .fetch_one(setup.db.pool())
    .await
    .unwrap();
    assert_eq!((ids, mercator), (2, 2));
    let missing = geostack(&setup, &["tables", "cartodbfy", "nowhere"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("\"nowhere\" does not exist"), "{stderr}");
}
