//! The end-to-end harness: a server of the test's own on a free port, on a database of its
//! own (the Natural Earth countries and places, and a `notes` table) and a Redis key prefix of
//! its own, with user `alice`'s keys and a batch worker in process; and a small HTTP/1.1 client
//! that speaks to it over real TCP.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::allow_attributes,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a module shared by test files, each using a different part"
)]

pub mod cdp;
pub mod mapnik;

use std::time::Duration;

use geostack::auth::{
    Api, DbRole, Grants, KeyPrefix, KeyStore, NewKey, Privilege, Secret, UserName,
};
use geostack::server::{Server, ServerConfig};
use geostack::sql::PublicRole;
use geostack_testkit::{TestDb, TestPgBouncer, TestRedis, TestRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct App {
    pub addr: std::net::SocketAddr,
    pub db: TestDb,
    pub redis: TestRedis,
    pub public_role: TestRole,
    pub regular_role: TestRole,
    /// alice's regular key: reads everything public, writes `notes`, both APIs.
    pub regular: String,
    /// alice's key for the SQL API only.
    pub sql_only: String,
    /// bob's regular key (bob has no public key).
    pub bob: String,
    /// The server behind `addr`, for what the tests do through its API.
    pub server: Server,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The pgbouncer the server connects through, and the admin role it logs in as.
    _pgbouncer: Option<(TestPgBouncer, TestRole)>,
}

impl App {
    /// Stops the batch worker in process: batch queries queued from now on stay pending.
    pub fn stop_batch_worker(&mut self) {
        if let Some(worker) = self.tasks.get(1) {
            worker.abort();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The server with the default configuration for alice (the default user).
pub async fn app() -> App {
    app_with(|c| c).await
}

/// The server, its configuration changed by `configure`; connected through a pgbouncer in
/// transaction mode when `GEOSTACK_VIA_PGBOUNCER=1` (`scripts/test` runs the SQL API, tiles
/// and batch suites once more so).
pub async fn app_with(configure: impl FnOnce(ServerConfig) -> ServerConfig) -> App {
    let via = std::env::var("GEOSTACK_VIA_PGBOUNCER").is_ok_and(|v| v == "1");
    app_on(configure, via).await
}

/// The server with the default configuration, connecting to PostgreSQL (its admin pool and
/// every key role's pool) through a pgbouncer in transaction mode.
pub async fn app_behind_pgbouncer() -> App {
    app_on(|c| c, true).await
}

async fn app_on(configure: impl FnOnce(ServerConfig) -> ServerConfig, pgbouncer: bool) -> App {
    let db = TestDb::new().await;
    geostack_testkit::natural_earth::load_countries(db.pool(), "countries").await;
    geostack_testkit::natural_earth::load_places(db.pool(), "places").await;
    sqlx::raw_sql(
        "create table notes (id serial primary key, note text, geom geometry(Point, 4326));
         create table secrets (id int, secret text);
         insert into secrets values (1, 'hidden');",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let public_role = db.create_role().await;
    PublicRole::new(public_role.name(), public_role.password(), "public")
        .tables(["countries", "places"])
        .provision(db.pool(), &[])
        .await
        .unwrap();
    let regular_role = db.create_role().await;
    PublicRole::new(regular_role.name(), regular_role.password(), "public")
        .tables(["countries", "places", "notes"])
        .provision(db.pool(), &[])
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant insert, update, delete on notes to \"{0}\"; grant usage on sequence notes_id_seq to \"{0}\"",
        regular_role.name()
    )))
    .execute(db.pool())
    .await
    .unwrap();

    let redis = TestRedis::new().await;
    let prefix = KeyPrefix::new(redis.prefix()).unwrap();
    let keys = KeyStore::with_prefix(redis.connection(), prefix.clone());
    let alice = UserName::new("alice").unwrap();
    let role = |r: &TestRole| DbRole::new(r.name(), Secret::new(r.password()));
    // The public key lists the tables it reads: a key's grants bound it as well as its role.
    let public = Grants::new()
        .api(Api::Sql)
        .api(Api::Maps)
        .table("public.countries".parse().unwrap(), [Privilege::Select])
        .table("public.places".parse().unwrap(), [Privilege::Select]);
    keys.create(
        &alice,
        NewKey::default_public(role(&public_role)).grants(public),
    )
    .await
    .unwrap();
    let both = Grants::new()
        .api(Api::Sql)
        .api(Api::Maps)
        .tables_by_database_role();
    let (_, regular) = keys
        .create(
            &alice,
            NewKey::regular("app", role(&regular_role)).grants(both.clone()),
        )
        .await
        .unwrap();
    let (_, sql_only) = keys
        .create(
            &alice,
            NewKey::regular("sql", role(&public_role))
                .grants(Grants::new().api(Api::Sql).tables_by_database_role()),
        )
        .await
        .unwrap();
    let (_, bob) = keys
        .create(
            &UserName::new("bob").unwrap(),
            NewKey::regular("bob", role(&regular_role)).grants(both),
        )
        .await
        .unwrap();

    let config = configure(
        ServerConfig::default()
            .default_user("alice")
            .key_prefix(prefix)
            .redis_prefix(redis.prefix())
            // Roles the keys get are dropped by the test runner's clean-up if a test dies.
            .role_prefix("gs_test_role_key_"),
    );
    // Behind pgbouncer, every role logs in with its password: the admin is a superuser role
    // of the test's own.
    let (pg, pgbouncer) = if pgbouncer {
        let admin = db.create_role().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter role \"{}\" superuser",
            admin.name()
        )))
        .execute(db.pool())
        .await
        .unwrap();
        let bouncer = TestPgBouncer::start(admin.name(), admin.password()).await;
        let pg = bouncer
            .connect_options()
            .username(admin.name())
            .password(admin.password())
            .database(db.name());
        (pg, Some((bouncer, admin)))
    } else {
        (db.connect_options(), None)
    };
    let server = Server::new(redis.connection(), redis.client().clone(), pg, config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = server.router();
    let server = server.clone();
    let serve = tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<geostack::server::Peer>();
        let _ = axum::serve(geostack::server::GuardedListener::new(listener), app).await;
    });
    // Table changes heard on the database's own address (LISTEN needs a session), from before
    // the test's first write.
    let changes = tokio::spawn(server.follow_table_changes(db.connect_options()));
    until("the server listens for table changes", Duration::from_secs(10), async || {
        let (listening,): (bool,) = sqlx::query_as(
            "select exists (select from pg_stat_activity
                            where datname = current_database() and query like 'LISTEN%sqlpass_table_change%')",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        listening.then_some(())
    })
    .await;
    let worker = server.batch_worker(redis.client().clone(), 2);
    let work = tokio::spawn(async move {
        let _ = worker
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    App {
        addr,
        db,
        redis,
        public_role,
        regular_role,
        regular: regular.expose().to_owned(),
        sql_only: sql_only.expose().to_owned(),
        bob: bob.expose().to_owned(),
        server,
        stop: Some(stop),
        tasks: vec![serve, work, changes],
        _pgbouncer: pgbouncer,
    }
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl App {
    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"").await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers, b"").await
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        let body = form_encode(form);
        self.request(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
        .await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// One request on a connection of its own (`Connection: close`), read to its end.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        request_to(self.addr, method, path, headers, body).await
    }
}

/// One request to the server at `addr` on a connection of its own (`Connection: close`), read
/// to its end.
pub async fn request_to(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let has_host = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has_host {
        head.push_str(&format!("host: {addr}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the server answered within 30 s")
        .unwrap();
    parse(&raw)
}

pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Waits until `check` holds, polling every 50 ms, for at most `limit`.
pub async fn until<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `script` (under `tests/clients/`) with the venv's Python that `scripts/services` makes
/// (`GEOSTACK_CLIENTS_PYTHON`) and `env`, and parses the one JSON object it prints; its
/// standard error is the failure's message.
pub async fn python_client(script: &str, env: &[(&str, String)]) -> serde_json::Value {
    let python = std::env::var("GEOSTACK_CLIENTS_PYTHON").expect(
        "GEOSTACK_CLIENTS_PYTHON: run through scripts/test, or eval \"$(GEOSTACK_PYTHON=1 scripts/services)\"",
    );
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(path)
            .envs(env)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
