//! Batch queries end to end: queued over HTTP, run by the in-process worker through sqlpass
//! as the key's role, polled, cancelled.

mod support;

use std::time::Duration;

use support::{App, app, until};

async fn create(app: &App, query: &str) -> serde_json::Value {
    let r = app
        .post_json(
            &format!("/api/v2/sql/job?api_key={}", app.regular),
            &serde_json::json!({ "query": query }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

async fn status(app: &App, id: &str) -> serde_json::Value {
    let r = app
        .get(&format!("/api/v2/sql/job/{id}?api_key={}", app.regular))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn delete(app: &App, id: &str) -> support::Reply {
    app.request(
        "DELETE",
        &format!("/api/v2/sql/job/{id}?api_key={}", app.regular),
        &[],
        b"",
    )
    .await
}

async fn until_status(app: &App, id: &str, want: &str) -> serde_json::Value {
    until(
        &format!("job {id} {want}"),
        Duration::from_secs(20),
        async || {
            let s = status(app, id).await;
            (s["status"] == want).then_some(s)
        },
    )
    .await
}

#[tokio::test]
async fn a_batch_query_runs_as_the_key_s_role_and_reports_done() {
    let app = app().await;
    let job = create(
        &app,
        "insert into notes (note, geom) select name, geom from places where pop_max > 10000000",
    )
    .await;
    // Queued, or already taken by the worker.
    assert!(
        job["status"] == "pending" || job["status"] == "running",
        "{job}"
    );
    assert_eq!(job["user"], "alice");
    let id = job["job_id"].as_str().unwrap();
    let done = until_status(&app, id, "done").await;
    assert_eq!(done["result"]["total_rows"], 17);
    assert!(done["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(done["updated_at"].as_str().unwrap() >= done["created_at"].as_str().unwrap());
    let (n,): (i64,) = sqlx::query_as("select count(*) from notes")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 17);

    let failed = create(&app, "delete from secrets").await;
    let failed = until_status(&app, failed["job_id"].as_str().unwrap(), "failed").await;
    assert_eq!(
        failed["failed_reason"],
        "permission denied for table secrets"
    );
}

#[tokio::test]
async fn a_running_batch_query_is_cancelled_and_stops_on_the_server() {
    let app = app().await;
    let long = "select count(*) from generate_series(1, 100000000000)";
    let job = create(&app, long).await;
    let id = job["job_id"].as_str().unwrap();
    until_status(&app, id, "running").await;
    // The key may write: its statement runs as it is, not through a cursor.
    let running = format!(
        "select count(*) from pg_stat_activity where query like '%{long}%' and state = 'active' and pid <> pg_backend_pid()"
    );
    until(
        "the query active on the server",
        Duration::from_secs(10),
        async || {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(running.clone()))
                .fetch_one(app.db.pool())
                .await
                .unwrap();
            (n == 1).then_some(())
        },
    )
    .await;
    let r = delete(&app, id).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    until_status(&app, id, "cancelled").await;
    until(
        "the query gone from the server",
        Duration::from_secs(5),
        async || {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(running.clone()))
                .fetch_one(app.db.pool())
                .await
                .unwrap();
            (n == 0).then_some(())
        },
    )
    .await;
    // A finished job cannot be cancelled again.
    let r = delete(&app, id).await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            serde_json::json!({"error": ["Cannot set status from cancelled to cancelled"]})
        )
    );
}

#[tokio::test]
async fn batch_queries_need_a_key_and_stay_with_their_user() {
    let app = app().await;
    let r = app
        .post_form("/api/v2/sql/job", &[("query", "select 1")])
        .await;
    assert_eq!(
        (r.status, r.json()),
        (
            401,
            serde_json::json!({"error": ["batch queries need an api key"]})
        )
    );
    let r = app
        .post_form(&format!("/api/v2/sql/job?api_key={}", app.regular), &[])
        .await;
    assert_eq!(r.status, 400);
    let job = create(&app, "select 1").await;
    let id = job["job_id"].as_str().unwrap();
    // bob may not see alice's job, nor may anyone see a job that does not exist.
    let r = app
        .get(&format!(
            "/user/bob/api/v2/sql/job/{id}?api_key={}",
            app.bob
        ))
        .await;
    assert_eq!(
        (r.status, r.json()),
        (404, serde_json::json!({"error": ["no such batch query"]}))
    );
    let r = app
        .get(&format!(
            "/api/v2/sql/job/nothing-here?api_key={}",
            app.regular
        ))
        .await;
    assert_eq!(r.status, 404);
    until_status(&app, id, "done").await;
}

#[tokio::test]
async fn a_user_s_jobs_are_listed_newest_first_and_never_another_user_s() {
    let app = app().await;
    let first = create(&app, "select 1").await;
    let second = create(&app, "select 2").await;
    until_status(&app, first["job_id"].as_str().unwrap(), "done").await;
    until_status(&app, second["job_id"].as_str().unwrap(), "done").await;
    // bob's job is bob's.
    let r = app
        .post_json(
            &format!("/user/bob/api/v2/sql/job?api_key={}", app.bob),
            &serde_json::json!({ "query": "select 3" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app
        .get(&format!("/api/v2/sql/job/?api_key={}", app.regular))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            second["job_id"].as_str().unwrap(),
            first["job_id"].as_str().unwrap()
        ]
    );
    assert_eq!(listed[0]["status"], "done");
    assert_eq!(listed[0]["query"], "select 2");
    // Without a key: refused.
    let r = app.get("/api/v2/sql/job").await;
    assert_eq!(r.status, 401, "{}", r.text());
}

/// `PUT /api/v2/sql/job/{id}` with `body` (JSON), the key given in it as carto-python does.
async fn put(app: &App, id: &str, key: &str, query: serde_json::Value) -> support::Reply {
    let body = serde_json::json!({ "query": query, "api_key": key });
    app.request(
        "PUT",
        &format!("/api/v2/sql/job/{id}"),
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn a_pending_query_takes_new_sql_from_its_own_key_only() {
    let mut app = app().await;
    // A query that has run keeps its SQL.
    let done = create(&app, "select 1").await;
    let done_id = done["job_id"].as_str().unwrap().to_owned();
    until_status(&app, &done_id, "done").await;
    let r = put(&app, &done_id, &app.regular, serde_json::json!("select 2")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": ["Cannot edit a job in status done: only pending ones"]})
    );

    // With no worker, a new query stays pending: its SQL can change, by its own key.
    app.stop_batch_worker();
    let pending = create(&app, "insert into notes (note) values ('first')").await;
    let id = pending["job_id"].as_str().unwrap().to_owned();
    let r = put(
        &app,
        &id,
        &app.regular,
        serde_json::json!(["insert into notes (note) values ('second')", "select 1"]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "pending");
    let shown = status(&app, &id).await;
    assert_eq!(
        shown["query"],
        serde_json::json!([
            {"query": "insert into notes (note) values ('second')", "status": "pending"},
            {"query": "select 1", "status": "pending"}
        ]),
        "{shown}"
    );
    // Another key of the same user may read it but not change what it runs.
    let r = put(
        &app,
        &id,
        &app.sql_only,
        serde_json::json!("delete from notes"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Another user does not see it.
    let body = serde_json::json!({ "query": "select 1", "api_key": app.bob });
    let r = app
        .request(
            "PUT",
            &format!("/user/bob/api/v2/sql/job/{id}"),
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = put(&app, &id, &app.regular, serde_json::json!([])).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn a_write_interrupted_by_its_worker_s_death_fails_and_is_never_run_again() {
    let mut app = app().await;
    // About two seconds of work before the row is written.
    let query = "insert into notes (note) select 'once' from (select count(*) from generate_series(1, 10000000)) s";
    let job = create(&app, query).await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    until_status(&app, &id, "running").await;
    let active = "select count(*) from pg_stat_activity where query like '%''once''%' and state = 'active' and pid <> pg_backend_pid()";
    until(
        "the write active on the server",
        Duration::from_secs(10),
        async || {
            let (n,): (i64,) = sqlx::query_as(active)
                .fetch_one(app.db.pool())
                .await
                .unwrap();
            (n == 1).then_some(())
        },
    )
    .await;
    // The worker dies mid-query, without a word: its task is dropped.
    app.stop_batch_worker();
    // Another worker finds the death by the silence of its heartbeat. The write may have
    // committed just before the death: it is never started again, it fails as interrupted.
    let rescuer = app.server.batch_worker(app.redis.client().clone(), 1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(rescuer.run(async {
        let _ = stopped.await;
    }));
    let failed = until_status(&app, &id, "failed").await;
    assert!(
        failed["failed_reason"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: worker "),
        "{failed}"
    );
    // Given the time a second run would take, none happened.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (n,): (i64,) = sqlx::query_as("select count(*) from notes where note = 'once'")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0, "the interrupted write ran again");
    assert_eq!(status(&app, &id).await["status"], "failed");
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
