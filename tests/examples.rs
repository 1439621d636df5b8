//! The examples a server author starts from, run as built and spoken to over TCP.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use geostack::auth::{Api, DbRole, Grants, KeyPrefix, KeyStore, NewKey, Secret, UserName};
use geostack::sql::PublicRole;
use geostack_testkit::{TestDb, TestRedis};
use support::{encode, request_to};

/// An example built beside this test (`target/<profile>/examples/<name>`), started with `env`
/// on a free port; killed when dropped.
struct Example {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Example {
    async fn start(name: &str, env: &[(&str, String)]) -> Self {
        let dir = std::env::current_exe().unwrap();
        let bin = dir
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples")
            .join(name);
        assert!(bin.is_file(), "{} is not built", bin.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("GEOSTACK_ADDR", addr.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name} never listened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, addr }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn compose_serves_its_own_route_and_the_sql_api_behind_geoauth() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "create table places (id int, name text); insert into places values (1, 'Lagos');",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let role = db.create_role().await;
    PublicRole::new(role.name(), role.password(), "public")
        .tables(["places"])
        .provision(db.pool(), &[])
        .await
        .unwrap();
    let redis = TestRedis::new().await;
    let keys = KeyStore::with_prefix(redis.connection(), KeyPrefix::new(redis.prefix()).unwrap());
    let user = UserName::new("composer").unwrap();
    let db_role = || DbRole::new(role.name(), Secret::new(role.password()));
    let grants = Grants::new().api(Api::Sql).tables_by_database_role();
    let (_, token) = keys
        .create(&user, NewKey::regular("sql", db_role()).grants(grants))
        .await
        .unwrap();
    let maps_only = Grants::new().api(Api::Maps).tables_by_database_role();
    let (_, maps) = keys
        .create(&user, NewKey::regular("maps", db_role()).grants(maps_only))
        .await
        .unwrap();
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let example = Example::start(
        "compose",
        &[
            ("DATABASE_URL", db.url()),
            ("REDIS_URL", redis_url),
            ("GEOAUTH_PREFIX", redis.prefix().to_owned()),
            ("COMPOSE_USER", "composer".to_owned()),
        ],
    )
    .await;
    let get = |path: String| async move { request_to(example.addr, "GET", &path, &[], b"").await };

    let r = get("/hello".into()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "a route of my own"));
    let q = encode("select name from places");
    let r = get(format!("/api/v2/sql?q={q}&api_key={}", token.expose())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rows"], serde_json::json!([{"name": "Lagos"}]));
    assert!(
        r.header("x-cache-channel")
            .is_some_and(|c| c.ends_with(":public.places"))
    );
    let r = get(format!(
        "/api/v2/sql?q={q}&format=csv&api_key={}",
        token.expose()
    ))
    .await;
    assert_eq!(r.text(), "name\r\nLagos\r\n");
    // Refusals: no key (the user has no default_public key), a key without the SQL API, SQL
    // the role may not run.
    assert_eq!(get(format!("/api/v2/sql?q={q}")).await.status, 401);
    assert_eq!(
        get(format!("/api/v2/sql?q={q}&api_key={}", maps.expose()))
            .await
            .status,
        403
    );
    let r = get(format!(
        "/api/v2/sql?q={}&api_key={}",
        encode("drop table places"),
        token.expose()
    ))
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"][0].is_string(), "{}", r.text());
}

#[tokio::test]
async fn tiles_only_serves_one_table_s_tiles_without_redis_or_keys() {
    let db = TestDb::new().await;
    geostack_testkit::natural_earth::load_countries(db.pool(), "countries").await;
    let example = Example::start(
        "tiles_only",
        &[
            ("DATABASE_URL", db.url()),
            ("TILES_TABLE", "countries".to_owned()),
        ],
    )
    .await;
    let r = request_to(example.addr, "GET", "/0/0/0", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tile = geostack::tiles::decode(&r.body).unwrap();
    let layer = tile.layers.iter().find(|l| l.name == "countries").unwrap();
    assert_eq!(layer.features.len(), 177);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.mapbox-vector-tile")
    );
    // Asked again with its ETag: 304 and no body.
    let etag = r.header("etag").unwrap().to_owned();
    let r = request_to(
        example.addr,
        "GET",
        "/0/0/0.mvt",
        &[("if-none-match", &etag)],
        b"",
    )
    .await;
    assert_eq!(r.status, 304, "{}", r.text());
    assert!(r.body.is_empty());
    // A tile with no feature: 204 (the middle of the Pacific).
    let r = request_to(example.addr, "GET", "/8/5/120", &[], b"").await;
    assert_eq!(r.status, 204, "{}", r.text());
    // Outside the pyramid: the tiles crate's own error, in CARTO's shape.
    let r = request_to(example.addr, "GET", "/1/5/0", &[], b"").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"][0]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{}",
        r.text()
    );
}
