//! Proves the test harness against the real services: a PostGIS geometry through sqlx and wkb,
//! a Redis round trip under a private prefix, and a private redis-server that is killed and
//! restarted.

use std::time::{Duration, Instant};

use geo_traits::to_geo::ToGeoGeometry;
use geo_types::{Geometry, LineString, Polygon};
use geostack_testkit::{RedisServer, TestDb, TestRedis};
use redis::AsyncCommands;

#[tokio::test]
async fn postgis_geometry_decodes_through_wkb_into_geo_types() {
    let db = TestDb::new().await;
    let (wkb_bytes, srid): (Vec<u8>, i32) = sqlx::query_as(
        "select ST_AsEWKB(g), ST_SRID(g)
         from (select ST_GeomFromText('POLYGON((0 0, 4 0, 4 3, 0 0), (1 0.5, 3 0.5, 3 1.5, 1 0.5))', 4326) as g) s",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(srid, 4326);

    let decoded: Geometry<f64> = wkb::reader::read_wkb(&wkb_bytes)
        .unwrap()
        .try_to_geometry()
        .unwrap();
    let expected = Polygon::new(
        LineString::from(vec![(0., 0.), (4., 0.), (4., 3.), (0., 0.)]),
        vec![LineString::from(vec![
            (1., 0.5),
            (3., 0.5),
            (3., 1.5),
            (1., 0.5),
        ])],
    );
    assert_eq!(decoded, Geometry::Polygon(expected));
}

#[tokio::test]
async fn each_test_gets_its_own_database_dropped_afterwards() {
    let first = TestDb::new().await;
    let second = TestDb::new().await;
    assert_ne!(first.name(), second.name());

    // A table made in one is not in the other.
    sqlx::query("create table only_here (g geometry(Point, 3857))")
        .execute(first.pool())
        .await
        .unwrap();
    sqlx::query("insert into only_here values (ST_SetSRID(ST_MakePoint(1, 2), 3857))")
        .execute(first.pool())
        .await
        .unwrap();
    let (in_second,): (Option<String>,) = sqlx::query_as("select to_regclass('only_here')::text")
        .fetch_one(second.pool())
        .await
        .unwrap();
    assert_eq!(in_second, None);
    let (in_first,): (Option<String>,) = sqlx::query_as("select to_regclass('only_here')::text")
        .fetch_one(first.pool())
        .await
        .unwrap();
    assert_eq!(in_first.as_deref(), Some("only_here"));

    // Dropping the value drops the database, even with the pool's connections still open.
    let name = first.name().to_owned();
    drop(first);
    let (exists,): (bool,) =
        sqlx::query_as("select exists(select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(second.pool())
            .await
            .unwrap();
    assert!(!exists, "{name} outlived its TestDb");
}

#[tokio::test]
async fn unreachable_postgres_fails_naming_the_provisioning_command() {
    // Port 1 on loopback: nothing listens there.
    let err =
        match TestDb::create("postgres://postgres@127.0.0.1:1/test", "geostack_template").await {
            Ok(_) => panic!("a database was created on a closed port"),
            Err(e) => e.to_string(),
        };
    assert!(err.contains("PostgreSQL"), "{err}");
    assert!(err.contains("scripts/services"), "{err}");
}

#[tokio::test]
async fn unreachable_redis_fails_naming_the_provisioning_command() {
    let err = match TestRedis::connect("redis://127.0.0.1:1").await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("Redis"), "{err}");
    assert!(err.contains("scripts/services"), "{err}");
}

#[tokio::test]
async fn redis_round_trip_under_a_private_prefix_cleaned_afterwards() {
    let redis = TestRedis::new().await;
    let other = TestRedis::new().await;
    assert_ne!(redis.prefix(), other.prefix());

    let mut conn = redis.connection();
    let key = redis.key("greeting");
    assert!(key.starts_with(redis.prefix()));
    let () = conn.set(&key, "hello").await.unwrap();
    let () = conn.hset(redis.key("hash"), "field", 42).await.unwrap();
    let got: String = conn.get(&key).await.unwrap();
    assert_eq!(got, "hello");

    let prefix = redis.prefix().to_owned();
    drop(redis);
    let mut probe = other.connection();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut probe)
        .await
        .unwrap();
    assert_eq!(left, Vec::<String>::new(), "keys outlived their TestRedis");
}

#[tokio::test]
async fn killed_redis_gives_a_typed_error_and_the_connection_recovers() {
    let mut server = RedisServer::start_persistent();
    let client = redis::Client::open(server.url()).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100));
    let mut conn = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let () = conn.set("kept", "yes").await.unwrap();

    server.kill();
    assert!(!server.is_running());
    let err = conn.get::<_, String>("kept").await.unwrap_err();
    assert!(
        err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal(),
        "a killed server gave an error that is not a connection error: {err:?}"
    );
    assert!(
        !err.is_timeout(),
        "a refused connection was reported as a timeout: {err:?}"
    );

    // The same manager reconnects once the server is back, and the AOF kept the write.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let value = loop {
        match conn.get::<_, String>("kept").await {
            Ok(v) => break v,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal(),
                    "{e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no reconnect within 5 s: {e:?}"),
        }
    };
    assert_eq!(value, "yes");
}

#[tokio::test]
async fn a_local_cluster_of_three_masters_serves_every_slot() {
    let cluster = geostack_testkit::RedisCluster::start();
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    // Keys in different slots reach different masters; one hash tag keeps keys together.
    for i in 0..50 {
        let () = conn.set(format!("k{i}"), i).await.unwrap();
    }
    let total: i64 = {
        let mut sum = 0;
        for i in 0..50 {
            let v: i64 = conn.get(format!("k{i}")).await.unwrap();
            sum += v;
        }
        sum
    };
    assert_eq!(total, (0..50).sum::<i64>());
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("{user}:a", 1)
        .incr("{user}:b", 2)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((a, b), (1, 2));
    let masters: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(masters.lines().filter(|l| l.contains("master")).count(), 3);
}
