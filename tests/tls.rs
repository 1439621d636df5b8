//! TLS to both services, against real TLS servers the test starts: a PostgreSQL cluster with
//! `ssl = on` that refuses plain connections, and a redis-server with a TLS port only, each
//! with a certificate from an authority made for the test. The library's server, and the
//! `geostack` command from its configuration file, serve the SQL API over them.
mod support;

use std::time::{Duration, Instant};

use geostack::auth::{Api, Grants, Privilege, UserName};
use geostack::server::{KeyRequest, Server, ServerConfig};
use geostack_testkit::{TlsPostgres, TlsRedis};

/// `GET path` on `addr`, the status and the body as JSON (null when it is not JSON).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let reply = support::request_to(addr, "GET", path, &[], b"").await;
    let json = serde_json::from_slice(&reply.body).unwrap_or_default();
    (reply.status, json)
}

#[tokio::test]
async fn the_server_reaches_postgres_and_redis_over_verified_tls() {
    let pg = TlsPostgres::start().await;
    let redis = TlsRedis::start();

    // The cluster takes TLS only.
    let plain = sqlx::PgPool::connect(&pg.plain_url("postgres")).await;
    assert!(plain.is_err(), "a connection without TLS was accepted");
    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql(
        "create table places (id int primary key, name text);
         insert into places values (1, 'Zürich'), (2, 'Lagos');",
    )
    .execute(&admin)
    .await
    .unwrap();

    // Redis over TLS, checked against the test authority.
    let client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(redis.ca_pem()),
        },
    )
    .unwrap();
    let conn = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    // With the system's roots alone, the test authority's certificate is refused.
    let untrusted = redis::Client::open(redis.url()).unwrap();
    assert!(untrusted.get_multiplexed_async_connection().await.is_err());

    let options: sqlx::postgres::PgConnectOptions = pg.url("postgres").parse().unwrap();
    let server = Server::new(
        conn,
        client,
        options,
        ServerConfig::default()
            .default_user("alice")
            .role_prefix("gs_test_role_tls_")
            .sql_limits(
                5,
                geostack::sql::DEFAULT_BYTE_LIMIT,
                geostack::sql::DEFAULT_VALUE_LIMIT,
            ),
    )
    .await;
    let alice = UserName::new("alice").unwrap();
    let grants = Grants::new()
        .api(Api::Sql)
        .table("public.places".parse().unwrap(), [Privilege::Select]);
    let (key, token) = server
        .auth()
        .create_key(&alice, KeyRequest::Regular("tls".into()), grants)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server
        .router()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let (status, body) = get(
        addr,
        &format!(
            "/api/v2/sql?q=select%20count(*)%20as%20n%20from%20places&api_key={}",
            token.expose()
        ),
    )
    .await;
    assert_eq!(
        (status, body["rows"][0]["n"].as_i64()),
        (200, Some(2)),
        "{body}"
    );
    // The key's role reached PostgreSQL over TLS (its pooled connection is still open).
    let ssl: Vec<(bool,)> = sqlx::query_as(
        "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) where a.usename = $1",
    )
    .bind(key.db_role.name())
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!ssl.is_empty() && ssl.iter().all(|(on,)| *on), "{ssl:?}");
    // A statement cut at its row limit ends at once: its connection, still receiving rows over
    // TLS, is dropped rather than shut down politely (which waited ten seconds).
    let started = Instant::now();
    let (status, body) = get(
        addr,
        &format!(
            "/api/v2/sql?q={}&api_key={}",
            "select%20a.g%20from%20generate_series(1,100000)%20a(g),%20generate_series(1,100000)%20b(g)",
            token.expose()
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["error"],
        serde_json::json!(["row limit of 5 exceeded"]),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (status, _) = get(addr, "/ready").await;
    assert_eq!(status, 200);
    serving.abort();

    // The command, from its configuration file: database_url with sslmode=verify-full and
    // sslrootcert, redis_url rediss:// with redis_ca_file.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::env::temp_dir().join(format!("gs_test_tls_{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = {:?}\nredis_url = {:?}\n\
             redis_ca_file = {:?}\nbatch_workers = 0\nrole_prefix = \"gs_test_role_tls_\"\n",
            pg.url("postgres"),
            redis.url(),
            redis.ca_file().display().to_string(),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_geostack"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let mut ready = None;
    while started.elapsed() < Duration::from_secs(20) {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            ready = Some(get(addr, "/ready").await);
            if ready.as_ref().is_some_and(|(s, _)| *s == 200) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&config);
    assert_eq!(
        ready.map(|(s, _)| s),
        Some(200),
        "geostack serve never became ready over TLS"
    );
}
