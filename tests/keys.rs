//! Keys with roles of their own, end to end: a key reads exactly the tables it grants, through
//! the SQL API and the table tiles, whatever other keys' roles could; revoking it drops its role.
mod support;

use geostack::auth::{Api, Grants, Privilege, UserName};
use geostack::server::KeyRequest;
use support::{app, encode};

#[tokio::test]
async fn a_key_reads_only_the_tables_it_grants_and_its_role_holds_exactly_them() {
    let app = app().await;
    let alice = UserName::new("alice").unwrap();
    let grants = Grants::new()
        .api(Api::Sql)
        .api(Api::Maps)
        .table("public.countries".parse().unwrap(), [Privilege::Select]);
    let (key, token) = app
        .server
        .auth()
        .create_key(&alice, KeyRequest::Regular("countries only".into()), grants)
        .await
        .unwrap();
    let role = key.db_role.name().to_owned();
    assert!(role.starts_with("gs_test_role_key_"), "{role}");

    // In PostgreSQL: a login role with SELECT on countries and no other table privilege.
    let grants: Vec<(String, String)> = sqlx::query_as(
        "select table_name::text, privilege_type::text from information_schema.role_table_grants
         where grantee = $1 order by 1, 2",
    )
    .bind(&role)
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    assert_eq!(grants, [("countries".to_owned(), "SELECT".to_owned())]);
    let (login, signal): (bool, bool) = sqlx::query_as(
        "select rolcanlogin, has_function_privilege($1, 'pg_terminate_backend(integer, bigint)', 'execute')
         from pg_roles where rolname = $1",
    )
    .bind(&role)
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    assert_eq!((login, signal), (true, false));

    let token = token.expose().to_owned();
    let sql = |q: &str| format!("/api/v2/sql?q={}&api_key={token}", encode(q));
    let r = app.get(&sql("select count(*) as n from countries")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rows"], serde_json::json!([{"n": 177}]));
    // places: the regular key's role may read it, this key's may not.
    for q in [
        "select count(*) from places",
        "select c.name from countries c join places p on p.adm0name = c.name",
    ] {
        let r = app.get(&sql(q)).await;
        assert_eq!(r.status, 403, "{q}: {}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({"error": ["permission denied for table places"]}),
            "{q}"
        );
    }
    let r = app
        .get(&format!("/tiles/places/0/0/0.mvt?api_key={token}"))
        .await;
    assert!(matches!(r.status, 403 | 404), "{}: {}", r.status, r.text());
    let r = app
        .get(&format!("/tiles/countries/0/0/0.mvt?api_key={token}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Revoked: the token is refused and the role is gone.
    assert!(app.server.auth().revoke_key(&alice, &key.id).await.unwrap());
    let r = app.get(&sql("select 1")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let (left,): (i64,) = sqlx::query_as("select count(*) from pg_roles where rolname = $1")
        .bind(&role)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_plan_is_checked_against_the_key_s_grants_too() {
    let app = app().await;
    let alice = UserName::new("alice").unwrap();
    let grants = Grants::new()
        .api(Api::Sql)
        .table("public.countries".parse().unwrap(), [Privilege::Select]);
    let (key, token) = app
        .server
        .auth()
        .create_key(&alice, KeyRequest::Regular("narrow".into()), grants)
        .await
        .unwrap();
    // Its role is given more than the key lists (by hand, say): the key still reads only
    // what it grants.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant select on places to \"{}\"",
        key.db_role.name()
    )))
    .execute(app.db.pool())
    .await
    .unwrap();
    let r = app
        .get(&format!(
            "/api/v2/sql?q={}&api_key={}",
            encode("select count(*) from places"),
            token.expose()
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": ["permission denied for table public.places: the key does not grant it"]})
    );
    app.server.auth().revoke_key(&alice, &key.id).await.unwrap();
}
