//! The composed server on a Redis Cluster: keys, rate limits, stored maps, the Auth API and the
//! batch queue all on a cluster connection, spoken to over TCP.

mod support;

use std::sync::Arc;
use std::time::Duration;

use geostack::auth::{
    Api, Grants, KeySource, KeyStore, Privilege, UserName, Verifier, VerifierConfig,
};
use geostack::server::{GuardedListener, KeyRequest, Peer, Server, ServerConfig};
use geostack_testkit::{RedisCluster, TestDb};
use support::{encode, request_to, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_runs_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let db = TestDb::new().await;
    geostack_testkit::natural_earth::load_countries(db.pool(), "countries").await;
    sqlx::raw_sql("create table tally (n int); insert into tally values (0)")
        .execute(db.pool())
        .await
        .unwrap();

    let cluster_client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let conn = cluster_client.get_async_connection().await.unwrap();
    // Announcements reach every node of a cluster: one node's client hears them.
    let node = redis::Client::open(cluster.urls()[0].as_str()).unwrap();
    let keys: Arc<dyn KeySource> = Arc::new(KeyStore::new(conn.clone()));
    let verifier = Verifier::with_cache(keys, node, VerifierConfig::default()).await;
    let config = ServerConfig::default()
        .default_user("alice")
        .role_prefix("gs_test_role_key_");
    let server = Server::with_verifier(conn, verifier, db.connect_options(), config).await;

    let alice = UserName::new("alice").unwrap();
    let public = Grants::new()
        .api(Api::Sql)
        .api(Api::Maps)
        .table("public.countries".parse().unwrap(), [Privilege::Select]);
    server
        .auth()
        .create_key(&alice, KeyRequest::DefaultPublic, public)
        .await
        .unwrap();
    let (_, master) = server
        .auth()
        .create_key(&alice, KeyRequest::Master, Grants::new())
        .await
        .unwrap();
    let master = master.expose().to_owned();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server
        .router()
        .into_make_service_with_connect_info::<Peer>();
    let serve = tokio::spawn(async move {
        let _ = axum::serve(GuardedListener::new(listener), app).await;
    });
    let worker = tokio::spawn(
        server
            .batch_worker(cluster_client.clone(), 1)
            .run(std::future::pending()),
    );
    let get = |path: String| async move { request_to(addr, "GET", &path, &[], b"").await };

    // Anonymous SQL: the default_public key read from the cluster, its rate counted there.
    let r = get(format!(
        "/api/v2/sql?q={}",
        encode("select count(*) as n from countries")
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rows"][0]["n"], 177);
    assert!(r.header("ratelimit-remaining").is_some());
    let r = get("/api/v2/sql?q=select+1&api_key=nope".into()).await;
    assert_eq!(r.status, 401, "{}", r.text());

    // The Auth API lists the two keys made above.
    let r = get(format!("/api/v3/api_keys?api_key={master}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["total"], 2);

    // A map config stored beside the user's index (one slot), then a tile of it.
    let map = serde_json::json!({"layers": [{"type": "mapnik", "id": "c", "options": {
        "sql": "select gid, ST_Transform(geom, 3857) as the_geom_webmercator from countries"}}]});
    let r = request_to(
        addr,
        "POST",
        "/api/v1/map",
        &[("content-type", "application/json")],
        map.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["layergroupid"].as_str().unwrap().to_owned();
    let r = get(format!("/api/v1/map/{token}/0/0/0.mvt")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.body.is_empty());

    // A batch query queued and run by a worker on the cluster.
    let body = support::form_encode(&[
        ("query", "update tally set n = n + 1"),
        ("api_key", &master),
    ]);
    let r = request_to(
        addr,
        "POST",
        "/api/v2/sql/job",
        &[("content-type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["job_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v2/sql/job/{id}?api_key={master}");
    until(
        "the batch query is done",
        Duration::from_secs(20),
        async || {
            let job = get(path.clone()).await.json();
            let status = job["status"].clone();
            assert_ne!(status, "failed", "{job}");
            (status == "done").then_some(())
        },
    )
    .await;
    let r = get(format!(
        "/api/v2/sql?q={}&api_key={master}",
        encode("select n from tally")
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rows"][0]["n"], 1);

    let r = get("/ready".into()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serve.abort();
    worker.abort();
}
