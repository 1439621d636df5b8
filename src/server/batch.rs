//! Batch queries (`/api/v2/sql/job`), as CARTO's Batch API: queued, run by a worker through
//! sqlpass as the key's role, polled and cancelled by id.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use geoauth::{Api, KeyId, KeySource, UserName};
use geostack_jobs::{
    Connector, Handler, Job, JobContext, JobError, JobId, JobOptions, JobState, JobStatus, Queue,
    Worker, WorkerConfig,
};
use serde::{Deserialize, Serialize};
use sqlpass::{Access, Options};

use super::batch_sql::MAX_STATEMENTS;
use super::gate::{ApiRequest, Gate, Params, respond};
use super::{BatchSql, Error, RedisConnection, Result, Sandbox};

/// CARTO's Batch API: `POST /api/v2/sql/job` queues a query, `GET|DELETE
/// /api/v2/sql/job/{id}` polls and cancels it (with or without a trailing slash, also under
/// `/user/{user}`). A worker ([`BatchApi::worker`]) runs the queue's queries in the sandbox as
/// the key's role, with the settings' batch timeout.
///
/// ```no_run
/// # async fn demo(gate: geostack::server::Gate, sandbox: geostack::server::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
/// use geostack::jobs::{Queue, QueueName};
/// use geostack::server::BatchApi;
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
/// let batch = BatchApi::new(gate, sandbox, Queue::new(conn, QueueName::new("batch-sql")?));
/// let worker = tokio::spawn(batch.worker(client, 2).run(std::future::pending()));
/// let app = axum::Router::new().merge(batch.router());
/// # let _ = (app, worker); Ok(()) }
/// ```
#[derive(Clone)]
pub struct BatchApi<C = redis::aio::ConnectionManager> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    gate: Gate<C>,
    sandbox: Sandbox,
    queue: Queue<C>,
}

impl<C: RedisConnection> BatchApi<C> {
    /// The batch queries of callers passing `gate`, queued on `queue` and run in `sandbox`.
    pub fn new(gate: Gate<C>, sandbox: Sandbox, queue: Queue<C>) -> Self {
        Self {
            inner: Arc::new(Inner {
                gate,
                sandbox,
                queue,
            }),
        }
    }

    /// Its routes, also under `/user/{user}`.
    pub fn router(&self) -> Router {
        let mut routes = super::with_slash("/api/v2/sql/job", post(create::<C>).get(list::<C>));
        routes.extend(super::with_slash(
            "/api/v2/sql/job/{id}",
            get(status::<C>).delete(cancel::<C>).put(update::<C>),
        ));
        super::mount(routes, self.clone())
    }

    /// The queue.
    pub fn queue(&self) -> &Queue<C> {
        &self.inner.queue
    }

    /// The Redis key of `user`'s jobs, newest last (in the queue's slot).
    fn jobs_of(&self, user: &UserName) -> String {
        format!("{}by-user:{}", self.inner.queue.key_prefix(), user.as_str())
    }

    /// Adds job `id` to its user's list (the newest [`LISTED_JOBS`] kept, for 30 days).
    async fn index(&self, user: &UserName, id: &JobId) -> Result<()> {
        let key = self.jobs_of(user);
        // Microseconds: two jobs of one user queued in the same millisecond keep their order.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let () = redis::pipe()
            .zadd(&key, id.as_str(), now)
            .ignore()
            .zremrangebyrank(&key, 0, -(LISTED_JOBS as isize) - 1)
            .ignore()
            .pexpire(&key, 30 * 24 * 3600 * 1000)
            .ignore()
            .query_async(&mut self.inner.queue.conn())
            .await?;
        Ok(())
    }

    /// The handler of batch queries, for a worker of one's own (see `examples/worker.rs`):
    /// the sandbox's options with the settings' batch timeout as statement timeout, five
    /// seconds more as deadline.
    pub fn handler(&self) -> BatchHandler {
        let sandbox = &self.inner.sandbox;
        let timeout = sandbox.config().batch_timeout;
        BatchHandler::new(
            Arc::clone(self.inner.gate.verifier().source()),
            sandbox.clone(),
            sandbox
                .options()
                .statement_timeout(timeout)
                .deadline(timeout + Duration::from_secs(5))
                .affected_tables(false),
        )
    }

    /// A worker for the queue, running `concurrency` queries at once; `connector` (a
    /// [`redis::Client`], or a cluster client) opens its blocking connections.
    pub fn worker<K: Connector>(&self, connector: K, concurrency: usize) -> Worker<C, K> {
        Worker::new(
            self.inner.queue.clone(),
            connector,
            WorkerConfig::default().concurrency(concurrency),
        )
        .handle::<BatchQuery, _>(self.handler())
    }
}

/// A batch query as queued: whose, under which key, and the SQL. The key's database role is
/// looked up when the query runs, so a key revoked meanwhile runs nothing.
///
/// ```
/// let job = geostack::server::BatchQuery {
///     user: "alice".into(),
///     key_id: "k1".into(),
///     query: geostack::server::BatchSql::One("update places set pop = pop + 1".into()),
///     write: true,
/// };
/// assert_eq!(<geostack::server::BatchQuery as geostack::jobs::Job>::NAME, "batch-sql");
/// # let _ = job;
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchQuery {
    /// The user.
    pub user: String,
    /// The id of the key that queued it.
    pub key_id: String,
    /// The SQL: one statement, a list, or a list with fallbacks.
    pub query: BatchSql,
    /// Whether the key may write (its SQL then runs outside a read-only transaction).
    pub write: bool,
}

impl Job for BatchQuery {
    const NAME: &'static str = "batch-sql";
}

/// Runs [`BatchQuery`] jobs: each statement through sqlpass as the key's role, in order, the
/// rows read and dropped. The result of one statement is `{"total_rows": N, "time": seconds}`;
/// of a list, `{"query": …}` with each statement's status as CARTO shows it (also reported as
/// progress after each statement).
pub struct BatchHandler {
    keys: Arc<dyn KeySource>,
    sandbox: Sandbox,
    options: Options,
}

impl BatchHandler {
    /// Runs each query as the role of its key, read from `keys`, in `sandbox` with `options`
    /// (further limited to the tables the key lists).
    pub fn new(keys: Arc<dyn KeySource>, sandbox: Sandbox, options: Options) -> Self {
        Self {
            keys,
            sandbox,
            options,
        }
    }
}

#[async_trait::async_trait]
impl Handler<BatchQuery> for BatchHandler {
    async fn handle(
        &self,
        job: BatchQuery,
        ctx: JobContext,
    ) -> Result<serde_json::Value, JobError> {
        let fatal = |e: &dyn std::fmt::Display| JobError::fatal(e.to_string());
        let user = UserName::new(job.user.as_str()).map_err(|e| fatal(&e))?;
        let id: KeyId = job.key_id.parse().map_err(|e| fatal(&e))?;
        let key = match self.keys.get(&user, &id).await {
            Ok(Some(key)) => key,
            Ok(None) => return Err(JobError::fatal("the key that queued this query is gone")),
            Err(e) if e.is_unavailable() => return Err(JobError::retry(e.to_string())),
            Err(e) => return Err(fatal(&e)),
        };
        let role = &key.db_role;
        let pool = self
            .sandbox
            .registry()
            .pool(role.name(), role.password().expose())
            .map_err(|e| JobError::retry(e.to_string()))?;
        // The same sandbox and statement policy as the SQL API's, with the batch timeout.
        let options = Sandbox::limit_to_key(self.options.clone(), &key).access(if job.write {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        });
        let started = std::time::Instant::now();
        let rows = std::sync::atomic::AtomicU64::new(0);
        let run = |sql: String| {
            let (pool, options, rows) = (&pool, options.clone(), &rows);
            async move {
                let n = run_statement(pool, &sql, options).await?;
                rows.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Ok(n)
            }
        };
        let report = |state: serde_json::Value| {
            let ctx = &ctx;
            async move {
                let _ = ctx.progress(serde_json::json!({ "query": state })).await;
            }
        };
        let executed = job.query.execute(ctx.id().as_str(), run, report).await;
        let mut result = match &job.query {
            BatchSql::One(_) => serde_json::json!({
                "total_rows": rows.load(std::sync::atomic::Ordering::Relaxed),
                "time": started.elapsed().as_secs_f64(),
            }),
            _ => serde_json::json!({ "query": executed.state }),
        };
        if let Some(status) = executed.fallback_status {
            result["fallback_status"] = status.into();
        }
        match executed.failure {
            None => Ok(result),
            Some(failure) => {
                // What ran before the failure stays visible with the failure.
                let _ = ctx.progress(result).await;
                Err(JobError::fatal(failure))
            }
        }
    }
}

/// Runs one statement to its end (its rows read and dropped): the rows, or why it failed.
async fn run_statement(
    pool: &sqlx::PgPool,
    sql: &str,
    options: Options,
) -> std::result::Result<u64, String> {
    let mut body = sqlpass::run(pool, sql, options)
        .await
        .map_err(|e| e.to_string())?
        .body;
    while let Some(chunk) = body.next().await {
        chunk.map_err(|e| e.to_string())?;
    }
    let outcome = body
        .outcome()
        .ok_or_else(|| "the query ended without an outcome".to_owned())?;
    match &outcome.error {
        Some(e) => Err(e.clone()),
        None => Ok(outcome.rows),
    }
}

async fn create<C: RedisConnection>(
    State(api): State<BatchApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    let inner = &*api.inner;
    respond(
        async {
            let params = Params::new(req.query.as_deref(), &req.headers, &body)?;
            let caller = inner
                .gate
                .authenticate(&req.path, &req.headers, &params, Api::Sql, req.peer)
                .await?;
            if caller.principal.is_anonymous() {
                return Err(Error::Unauthorized("batch queries need an api key".into()));
            }
            let sql = api.checked_sql(&req.headers, &params, &body)?;
            let principal = &caller.principal;
            let job = BatchQuery {
                user: principal.user().as_str().to_owned(),
                key_id: principal.key_id().as_str().to_owned(),
                query: sql,
                write: principal.may_write(),
            };
            let queue = &inner.queue;
            let options = JobOptions::default()
                .attempts(1)
                .tenant(principal.user().as_str());
            // A query that may write is run at most once: one interrupted after its COMMIT
            // must not commit again. It fails as interrupted instead; a read runs again.
            let options = if job.write {
                options.at_most_once()
            } else {
                options
            };
            let id = queue.enqueue(&job, options).await?;
            api.index(principal.user(), &id).await?;
            let status = queue.status(&id).await?;
            let mut response = (
                StatusCode::CREATED,
                Json(describe(&id, &job, status.as_ref())),
            )
                .into_response();
            caller.rate.write_headers(response.headers_mut());
            Ok(response)
        }
        .await,
    )
}

/// How many of a user's latest jobs `GET /api/v2/sql/job` lists.
const LISTED_JOBS: usize = 1000;

/// `GET /api/v2/sql/job`: the caller's user's latest jobs, newest first, as each is described.
async fn list<C: RedisConnection>(State(api): State<BatchApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = api.inner.gate.caller(&req, Api::Sql).await?;
            if caller.principal.is_anonymous() {
                return Err(Error::Unauthorized("batch queries need an api key".into()));
            }
            let user = caller.principal.user();
            let ids: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(api.jobs_of(user))
                .arg(0)
                .arg(LISTED_JOBS - 1)
                .query_async(&mut api.queue().conn())
                .await?;
            let mut jobs = Vec::with_capacity(ids.len());
            for raw in ids {
                let Ok(id) = JobId::new(raw) else { continue };
                // Jobs removed since (retention) are left out.
                let Some(status) = api.queue().status(&id).await? else {
                    continue;
                };
                let job: Option<BatchQuery> = status
                    .payload
                    .clone()
                    .and_then(|p| serde_json::from_value(p).ok());
                if let Some(job) = job.filter(|j| j.user == user.as_str()) {
                    jobs.push(describe(&id, &job, Some(&status)));
                }
            }
            let mut response = Json(jobs).into_response();
            caller.rate.write_headers(response.headers_mut());
            Ok(response)
        }
        .await,
    )
}

async fn status<C: RedisConnection>(State(api): State<BatchApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let (id, job, status, _) = owned_job(&api, &req, &[]).await?;
            Ok::<_, Error>(Json(describe(&id, &job, Some(&status))).into_response())
        }
        .await,
    )
}

async fn cancel<C: RedisConnection>(State(api): State<BatchApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let (id, job, status, _) = owned_job(&api, &req, &[]).await?;
            if matches!(
                status.state,
                JobState::Completed | JobState::Dead | JobState::Cancelled
            ) {
                return Err(Error::BadRequest(format!(
                    "Cannot set status from {} to cancelled",
                    carto_status(status.state)
                )));
            }
            let queue = api.queue();
            queue.cancel(&id).await?;
            let status = queue.status(&id).await?;
            let mut body = describe(&id, &job, status.as_ref());
            // A running query stops at its worker's next lock renewal; CARTO answers "cancelled".
            body["status"] = "cancelled".into();
            Ok(Json(body).into_response())
        }
        .await,
    )
}

/// `PUT /api/v2/sql/job/{id}`: a pending query given new SQL (`query`, as when it was made),
/// by the key that queued it; a query that started keeps its SQL (400).
async fn update<C: RedisConnection>(
    State(api): State<BatchApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    respond(
        async {
            let (id, job, _, caller) = owned_job(&api, &req, &body).await?;
            // It runs as the key that queued it: only that key may change what it runs.
            if caller.principal.key_id().as_str() != job.key_id {
                return Err(Error::Forbidden(
                    "only the key that queued a batch query may change it".into(),
                ));
            }
            let params = Params::new(req.query.as_deref(), &req.headers, &body)?;
            let sql = api.checked_sql(&req.headers, &params, &body)?;
            let updated = BatchQuery { query: sql, ..job };
            let queue = api.queue();
            match queue.update(&id, &updated).await? {
                Some(JobState::Waiting | JobState::Delayed) => {}
                Some(state) => {
                    return Err(Error::BadRequest(format!(
                        "Cannot edit a job in status {}: only pending ones",
                        carto_status(state)
                    )));
                }
                None => return Err(Error::NotFound("no such batch query".into())),
            }
            let status = queue.status(&id).await?;
            let mut response = Json(describe(&id, &updated, status.as_ref())).into_response();
            caller.rate.write_headers(response.headers_mut());
            Ok(response)
        }
        .await,
    )
}

impl<C: RedisConnection> BatchApi<C> {
    /// A job's SQL from the request, within the statement count and the query size limit.
    fn checked_sql(
        &self,
        headers: &axum::http::HeaderMap,
        params: &Params,
        body: &[u8],
    ) -> Result<BatchSql> {
        let sql = batch_sql(headers, params, body)?;
        if !(1..=MAX_STATEMENTS).contains(&sql.statements()) {
            return Err(Error::BadRequest(format!(
                "a batch job holds from 1 to {MAX_STATEMENTS} statements"
            )));
        }
        for text in sql.texts() {
            self.inner.sandbox.check_query_size(text)?;
        }
        Ok(sql)
    }
}

/// The job `id` of the request's user, authenticated with a key of that user (given in the
/// query string, the headers or `body`), and its caller.
async fn owned_job<C: RedisConnection>(
    api: &BatchApi<C>,
    req: &ApiRequest,
    body: &[u8],
) -> Result<(JobId, BatchQuery, JobStatus, super::gate::Caller)> {
    let params = Params::new(req.query.as_deref(), &req.headers, body)?;
    let caller = api
        .inner
        .gate
        .authenticate(&req.path, &req.headers, &params, Api::Sql, req.peer)
        .await?;
    if caller.principal.is_anonymous() {
        return Err(Error::Unauthorized("batch queries need an api key".into()));
    }
    let not_found = || Error::NotFound("no such batch query".into());
    let raw = req.path.get("id").map(String::as_str).unwrap_or_default();
    let id = JobId::new(raw).map_err(|_| not_found())?;
    let status = api.queue().status(&id).await?.ok_or_else(not_found)?;
    let job: BatchQuery = status
        .payload
        .clone()
        .and_then(|p| serde_json::from_value(p).ok())
        .ok_or_else(not_found)?;
    if job.user != caller.principal.user().as_str() {
        return Err(not_found());
    }
    Ok((id, job, status, caller))
}

/// The job's SQL: `query` of a JSON body (a string, a list of strings, or a list with
/// fallbacks), else the `query` parameter.
fn batch_sql(headers: &axum::http::HeaderMap, params: &Params, body: &[u8]) -> Result<BatchSql> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let missing = || Error::BadRequest("You must indicate a sql query".into());
    if json && !body.is_empty() {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("the body is not JSON: {e}")))?;
        let query = value.get("query").cloned().ok_or_else(missing)?;
        return serde_json::from_value(query).map_err(|_| {
            Error::BadRequest(
                "query: expected a statement, a list of statements, or {\"query\": [{\"query\", \"onsuccess\", \"onerror\"}], \"onsuccess\", \"onerror\"}".into(),
            )
        });
    }
    Ok(BatchSql::One(
        params.get("query").ok_or_else(missing)?.to_owned(),
    ))
}

/// CARTO's name of a job state.
fn carto_status(state: JobState) -> &'static str {
    match state {
        JobState::Waiting | JobState::Delayed => "pending",
        JobState::Active => "running",
        JobState::Completed => "done",
        JobState::Cancelled => "cancelled",
        _ => "failed",
    }
}

/// A job as CARTO's Batch API describes it.
fn describe(id: &JobId, job: &BatchQuery, status: Option<&JobStatus>) -> serde_json::Value {
    let iso = |t: Option<SystemTime>| t.map(iso8601);
    let state = status.map_or("pending", |s| carto_status(s.state));
    let updated = status.and_then(|s| s.finished.or(s.started).or(s.created));
    // Each statement's status as it last reported, else all pending.
    let reported = status.and_then(|s| {
        [&s.result, &s.progress]
            .into_iter()
            .flatten()
            .find(|v| v.get("query").is_some())
    });
    let query = reported.map_or_else(|| job.query.pending(), |r| r["query"].clone());
    let mut out = serde_json::json!({
        "job_id": id.as_str(),
        "user": job.user,
        "query": query,
        "status": state,
        "created_at": iso(status.and_then(|s| s.created)),
        "updated_at": iso(updated),
    });
    if let Some(s) = status {
        if s.state == JobState::Dead {
            out["failed_reason"] = s.error.clone().into();
        }
        if let Some(result) = &s.result {
            out["result"] = result.clone();
        }
        if let Some(fallback) = reported.and_then(|r| r.get("fallback_status")) {
            out["fallback_status"] = fallback.clone();
        }
    }
    out
}

/// `2026-12-01T17:40:13.123Z`.
fn iso8601(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%S.%3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_print_as_iso_8601_in_utc() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_146_813_123);
        assert_eq!(iso8601(t), "2026-12-01T17:40:13.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn job_states_have_carto_names() {
        assert_eq!(carto_status(JobState::Waiting), "pending");
        assert_eq!(carto_status(JobState::Active), "running");
        assert_eq!(carto_status(JobState::Completed), "done");
        assert_eq!(carto_status(JobState::Dead), "failed");
        assert_eq!(carto_status(JobState::Cancelled), "cancelled");
    }
}
