//! The jobs dashboard end to end: who may open it, its JSON API acting on the batch queue, its
//! Server-Sent Events, and the page itself in headless Chromium (counts change while jobs run,
//! an action from the page takes effect).
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::time::Duration;

use geostack::auth::{Grants, UserName};
use geostack::jobs::JobState;
use geostack::server::KeyRequest;
use support::cdp::Browser;
use support::{App, app_with, until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server with alice as its one operator.
async fn operated() -> App {
    app_with(|c| c.operators(["alice"])).await
}

#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn master_of(app: &App, user: &str) -> String {
    let (_, token) = app
        .server
        .auth()
        .create_key(
            &UserName::new(user).unwrap(),
            KeyRequest::Master,
            Grants::new(),
        )
        .await
        .unwrap();
    token.expose().to_owned()
}

/// Queues `sql` as a batch query with alice's regular key; its id.
#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn batch(app: &App, sql: &str) -> String {
    let reply = app
        .post_form(
            &format!("/api/v2/sql/job?api_key={}", app.regular),
            &[("query", sql)],
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["job_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn only_an_operator_s_master_key_opens_the_dashboard() {
    let app = operated().await;
    let alice = master_of(&app, "alice").await;
    let bob = master_of(&app, "bob").await;
    let refusals = [
        ("/api/v1/jobs".to_owned(), 401),
        (format!("/api/v1/jobs?api_key={}", app.regular), 403),
        // bob's key is not one of alice's.
        (format!("/api/v1/jobs?api_key={bob}"), 401),
        (format!("/user/bob/api/v1/jobs?api_key={bob}"), 403),
        (
            format!("/user/bob/api/v1/jobs/batch-sql/pause?api_key={bob}"),
            403,
        ),
    ];
    for (path, status) in refusals {
        let method = if path.contains("pause") {
            "POST"
        } else {
            "GET"
        };
        let reply = app.request(method, &path, &[], b"").await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
        assert!(reply.json()["error"][0].is_string(), "{path}");
    }
    let queue = app.server.batch().queue();
    assert!(!queue.is_paused().await.unwrap(), "bob's refused pause");

    let reply = app.get(&format!("/api/v1/jobs?api_key={alice}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let overview = reply.json();
    assert_eq!(overview["queues"][0]["name"], "batch-sql");
    assert_eq!(overview["queues"][0]["counts"]["waiting"], 0);
    assert_eq!(
        overview["queues"][0]["completed_per_minute"]
            .as_array()
            .unwrap()
            .len(),
        60
    );
    // The key in a header, as the page sends it.
    let reply = app
        .get_with("/api/v1/jobs/nope", &[("x-api-key", alice.as_str())])
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"][0], "no queue \"nope\"");

    // Without operators, nobody.
    let closed = app_with(|c| c).await;
    let alice = master_of(&closed, "alice").await;
    let reply = closed.get(&format!("/api/v1/jobs?api_key={alice}")).await;
    assert_eq!(reply.status, 403);
}

#[tokio::test]
async fn the_api_shows_workers_and_jobs_and_acts_on_them() {
    let app = operated().await;
    let key = master_of(&app, "alice").await;
    let at = |path: &str| format!("/api/v1/jobs/batch-sql{path}?api_key={key}");

    // The batch worker in process, as it registered.
    let queue = until(
        "the worker registered",
        Duration::from_secs(10),
        async || {
            let q = app.get(&at("")).await.json();
            (q["workers"].as_array().unwrap().len() == 1).then_some(q)
        },
    )
    .await;
    let worker = &queue["workers"][0];
    assert_eq!(worker["pid"], std::process::id());
    assert!(!worker["host"].as_str().unwrap().is_empty());
    assert!(worker["heartbeat"].as_u64().unwrap() >= worker["started"].as_u64().unwrap());

    // A failing query dies; its detail shows its payload and error.
    let dead = batch(&app, "select 1/0").await;
    until("the query died", Duration::from_secs(20), async || {
        let j = app.get(&at(&format!("/jobs/{dead}"))).await.json();
        (j["state"] == "dead").then_some(())
    })
    .await;
    let job = app.get(&at(&format!("/jobs/{dead}"))).await.json();
    assert_eq!(job["payload"]["query"], "select 1/0");
    assert_eq!(job["tenant"], "alice");
    assert_eq!(job["attempts"], 1);
    assert!(
        job["error"].as_str().unwrap().contains("division by zero"),
        "{job}"
    );
    assert!(job["logs"].is_array());
    let listed = app.get(&format!("{}&state=dead", at("/jobs"))).await.json();
    assert_eq!(listed["jobs"][0]["id"], dead.as_str());
    let reply = app.get(&format!("{}&state=lost", at("/jobs"))).await;
    assert_eq!(reply.status, 400);

    // Paused, the queue keeps a new query waiting; retried, the dead one waits too.
    let paused = app.request("POST", &at("/pause"), &[], b"").await.json();
    assert_eq!(paused["paused"], true);
    let waiting = batch(&app, "select 1").await;
    let retried = app
        .request("POST", &at(&format!("/jobs/{dead}/retry")), &[], b"")
        .await
        .json();
    assert_eq!(retried["state"], "waiting");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed = app
        .get(&format!("{}&state=waiting", at("/jobs")))
        .await
        .json();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids.contains(&waiting.as_str()) && ids.contains(&dead.as_str()));

    // Cancelled while paused, it never runs; the other dies again once resumed, and a
    // re-drive sends it back.
    let cancelled = app
        .request("POST", &at(&format!("/jobs/{waiting}/cancel")), &[], b"")
        .await
        .json();
    assert_eq!(cancelled["state"], "cancelled");
    let resumed = app.request("POST", &at("/resume"), &[], b"").await.json();
    assert_eq!(resumed["paused"], false);
    until("dead again", Duration::from_secs(20), async || {
        let q = app.get(&at("")).await.json();
        (q["counts"]["dead"] == 1).then_some(())
    })
    .await;
    let status = app.server.batch().queue();
    let waiting_id = geostack::jobs::JobId::new(waiting.as_str()).unwrap();
    assert_eq!(
        status.status(&waiting_id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    let redriven = app.request("POST", &at("/redrive"), &[], b"").await.json();
    assert_eq!(redriven["redriven"], 1);
    until("dead once more", Duration::from_secs(20), async || {
        let j = app.get(&at(&format!("/jobs/{dead}"))).await.json();
        (j["state"] == "dead").then_some(())
    })
    .await;

    // Removed, it is gone; unknown actions and jobs are 404s in CARTO's shape.
    let removed = app
        .request("POST", &at(&format!("/jobs/{dead}/remove")), &[], b"")
        .await;
    assert_eq!(removed.status, 200);
    assert_eq!(app.get(&at(&format!("/jobs/{dead}"))).await.status, 404);
    for (method, path) in [
        ("POST", at(&format!("/jobs/{waiting}/explode"))),
        ("POST", at("/explode")),
        ("GET", at("/jobs/no-such-job")),
    ] {
        let reply = app.request(method, &path, &[], b"").await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.json()["error"][0].is_string());
    }
    let completed = app.get(&at("")).await.json();
    assert_eq!(completed["dead_per_minute"].as_array().unwrap().len(), 60);
    let dead_total: u64 = completed["dead_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(dead_total, 3, "{completed}");
}

/// An open event stream: its events' names and data as they come.
struct Events {
    stream: tokio::net::TcpStream,
    text: String,
}

impl Events {
    #[expect(clippy::unwrap_used, reason = "a test helper")]
    async fn open(app: &App, path: &str) -> Self {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\r\n",
            app.addr
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut events = Self {
            stream,
            text: String::new(),
        };
        events.read_until(|t| t.contains("\r\n\r\n")).await;
        assert!(events.text.starts_with("HTTP/1.1 200"), "{}", events.text);
        assert!(events.text.contains("text/event-stream"), "{}", events.text);
        events
    }

    async fn read_until(&mut self, done: impl Fn(&str) -> bool) {
        let mut buf = [0; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(&self.text) {
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("not within 20 s; read so far:\n{}", self.text))
                .unwrap();
            assert!(n > 0, "the stream ended:\n{}", self.text);
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// The data of every `counts` event read so far.
    fn counts(&self) -> Vec<serde_json::Value> {
        Self::data(&self.text, "counts")
    }

    /// The data of every event `name` in `text`.
    fn data(text: &str, name: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.strip_prefix("event: ") == Some(name)
                && let Some(data) = lines.next().and_then(|l| l.strip_prefix("data: "))
                && let Ok(value) = serde_json::from_str(data)
            {
                out.push(value);
            }
        }
        out
    }
}

#[tokio::test]
async fn the_event_stream_follows_the_queue_as_jobs_run() {
    let app = operated().await;
    let key = master_of(&app, "alice").await;
    let mut events = Events::open(
        &app,
        &format!("/api/v1/jobs/batch-sql/events?api_key={key}"),
    )
    .await;
    events.read_until(|t| t.contains("event: counts")).await;
    let first = events.counts();
    assert_eq!(first[0]["counts"]["completed"], 0, "{}", events.text);
    let ids = [batch(&app, "select 1").await, batch(&app, "select 2").await];
    // Each job's events, then counts that show them done.
    let done = |t: &str| {
        let ended = Events::data(t, "job")
            .into_iter()
            .filter(|e| e["kind"] == "completed")
            .count();
        let counted = Events::data(t, "counts")
            .last()
            .is_some_and(|c| c["counts"]["completed"] == 2);
        ended == 2 && counted
    };
    events.read_until(done).await;
    let jobs = Events::data(&events.text, "job");
    for id in &ids {
        let kinds: Vec<&str> = jobs
            .iter()
            .filter(|e| e["job"] == id.as_str())
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["added", "active", "completed"], "{}", events.text);
    }
    let last = events.counts().pop().unwrap();
    assert_eq!(last["counts"]["completed"], 2, "{}", events.text);
    assert_eq!(last["counts"]["waiting"], 0);

    // Refused without the key, in CARTO's shape.
    let reply = app.get("/api/v1/jobs/batch-sql/events").await;
    assert_eq!(reply.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_jobs_running_live_and_its_buttons_act() {
    let mut app = operated().await;
    let key = master_of(&app, "alice").await;
    let page = format!("http://{}/jobs?api_key={key}", app.addr);
    let mut browser = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(1200, 900);
        browser.navigate(&page);
        browser.wait_for(
            "document.getElementById('live')?.textContent.startsWith('live')",
            Duration::from_secs(20),
        );
        browser
    })
    .await
    .unwrap();
    let count = |state: &str| {
        format!(
            "Number(document.querySelector('[data-queue=\"batch-sql\"] [data-count=\"{state}\"]').textContent)"
        )
    };
    assert_eq!(browser.eval(&count("completed")), serde_json::json!(0));

    // Jobs run: the page's completed count follows without a reload.
    for n in 0..3 {
        batch(&app, &format!("select {n}")).await;
    }
    let completed = count("completed");
    let browser_ = tokio::task::spawn_blocking(move || {
        browser.wait_for(&format!("{completed} === 3"), Duration::from_secs(20));
        browser
    })
    .await
    .unwrap();
    browser = browser_;

    // Pause from the page: the queue is paused, and a new query stays waiting on the page.
    let pause = "document.querySelector('[data-queue=\"batch-sql\"] button[data-action=\"pause\"]').click(); true";
    browser.eval(pause);
    let queue = app.server.batch().queue().clone();
    until(
        "paused from the page",
        Duration::from_secs(10),
        async || queue.is_paused().await.unwrap().then_some(()),
    )
    .await;
    let id = batch(&app, "select 42").await;
    let waiting = count("waiting");
    let paused = "document.querySelector('[data-queue=\"batch-sql\"] [data-paused]').textContent === 'paused'";
    let browser_ = tokio::task::spawn_blocking(move || {
        browser.wait_for(&format!("{waiting} === 1 && {paused}"), Duration::from_secs(20));
        // The job in the waiting list, opened, cancelled from its detail.
        browser.wait_for(
            &format!("!!document.querySelector('tr[data-job=\"{id}\"]')"),
            Duration::from_secs(20),
        );
        browser.eval(&format!(
            "document.querySelector('tr[data-job=\"{id}\"]').click(); true"
        ));
        browser.wait_for(
            "!!document.querySelector('#detail-actions button[data-job-action=\"cancel\"]')",
            Duration::from_secs(20),
        );
        browser.eval(
            "document.querySelector('#detail-actions button[data-job-action=\"cancel\"]').click(); true",
        );
        browser.wait_for(
            "document.querySelector('#detail-fields [data-field=\"state\"] td')?.textContent === 'cancelled'",
            Duration::from_secs(20),
        );
        (browser, id)
    })
    .await
    .unwrap();
    let (_browser, id) = browser_;
    let id = geostack::jobs::JobId::new(id).unwrap();
    assert_eq!(
        queue.status(&id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    app.stop_batch_worker();
}
