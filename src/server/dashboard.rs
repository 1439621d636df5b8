//! The jobs dashboard ([`JobsDashboard`]): what Bull Board, Sidekiq Web and Flower show, for
//! the server's queues.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use geoauth::{Api, KeyKind};
use geostack_jobs::{JobId, JobState, JobStatus, Metric, Queue};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::gate::{ApiRequest, Gate, Params, respond};
use super::{Error, RedisConnection, Result};

const PAGE: &str = include_str!("dashboard.html");

/// How many jobs one page of a listing holds at most.
const MAX_PAGE: usize = 100;
/// How many lines of a job's log its detail shows (the newest kept are at most 1000).
const LOG_LINES: usize = 1000;
/// How often a queue's event stream is read while someone watches it.
const POLL: Duration = Duration::from_millis(250);

/// The jobs dashboard over some queues, as Bull Board, Sidekiq Web and Flower show theirs. The
/// composed [`Server`](super::Server) mounts it over the batch queue; one's own server may mount
/// it over its own queues.
///
/// `GET /jobs` is the page; everything it shows and does is a JSON API, for the operator's own
/// tools as well:
///
/// | route | what |
/// |---|---|
/// | `GET /api/v1/jobs` | every queue: counts by state, paused, live workers' count, completed and dead per minute over the last hour |
/// | `GET /api/v1/jobs/{queue}` | the same for one queue, with its `workers` (id, host, pid, start, last heartbeat) |
/// | `GET /api/v1/jobs/{queue}/jobs?state=…&start=…&count=…` | a page of its jobs in a state (at most 100) |
/// | `GET /api/v1/jobs/{queue}/jobs/{id}` | one job: payload, attempts, stalls, error, result, progress and its log |
/// | `POST /api/v1/jobs/{queue}/jobs/{id}/{retry\|remove\|promote\|cancel}` | acts on one job |
/// | `POST /api/v1/jobs/{queue}/{pause\|resume\|redrive}` | acts on the queue (redrive: every dead job runs again) |
/// | `GET /api/v1/jobs/{queue}/events` | Server-Sent Events: `counts` (the queue's counts, paused and workers) at once and after every change, at most four times a second, and `job` (each event of its stream) |
///
/// The queues hold every tenant's jobs and the actions change whole queues, so only the master
/// key of a user named in [`ServerConfig::operators`](super::ServerConfig::operators) opens the
/// dashboard; any other key is refused (403), a request without a key too (401). Tenants follow
/// their own batch queries through the Batch API.
///
/// ```no_run
/// # async fn demo(gate: geostack::server::Gate) -> Result<(), Box<dyn std::error::Error>> {
/// use geostack::jobs::{Queue, QueueName};
/// use geostack::server::JobsDashboard;
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client).await?;
/// let imports = Queue::new(conn, QueueName::new("imports")?);
/// let app = axum::Router::new().merge(JobsDashboard::new(gate, [imports]).router());
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone)]
pub struct JobsDashboard<C = redis::aio::ConnectionManager> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    gate: Gate<C>,
    queues: Vec<Queue<C>>,
    /// Each watched queue's feed: one reader of its event stream, whatever the viewers.
    feeds: Mutex<HashMap<String, broadcast::Sender<Frame>>>,
}

/// One Server-Sent Event: its name and its JSON.
type Frame = (&'static str, Arc<str>);

impl<C: RedisConnection> JobsDashboard<C> {
    /// The dashboard of `queues`, for the operators `gate`'s settings name.
    pub fn new(gate: Gate<C>, queues: impl IntoIterator<Item = Queue<C>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                gate,
                queues: queues.into_iter().collect(),
                feeds: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Its routes, also under `/user/{user}`.
    pub fn router(&self) -> Router {
        let routes = vec![
            ("/jobs".to_owned(), get(page)),
            ("/api/v1/jobs".to_owned(), get(overview::<C>)),
            ("/api/v1/jobs/{queue}".to_owned(), get(queue_detail::<C>)),
            ("/api/v1/jobs/{queue}/jobs".to_owned(), get(list::<C>)),
            ("/api/v1/jobs/{queue}/jobs/{id}".to_owned(), get(job::<C>)),
            (
                "/api/v1/jobs/{queue}/jobs/{id}/{action}".to_owned(),
                post(job_action::<C>),
            ),
            ("/api/v1/jobs/{queue}/events".to_owned(), get(events::<C>)),
            (
                "/api/v1/jobs/{queue}/{action}".to_owned(),
                post(queue_action::<C>),
            ),
        ];
        super::mount(routes, self.clone())
    }

    /// Lets the request through when its key is an operator's master key, within its rate.
    async fn operator(&self, req: &ApiRequest) -> Result<()> {
        let params = Params::new(req.query.as_deref(), &req.headers, &[])?;
        let gate = &self.inner.gate;
        let principal = gate.principal(&req.path, &req.headers, &params).await?;
        if principal.is_anonymous() {
            return Err(Error::Unauthorized(
                "the jobs dashboard needs an operator's master key".into(),
            ));
        }
        let operator = gate
            .config()
            .operators
            .iter()
            .any(|u| u == principal.user().as_str());
        if principal.kind() != KeyKind::Master || !operator {
            return Err(Error::Forbidden(
                "the jobs dashboard is open to the operators' master keys only".into(),
            ));
        }
        principal.authorize(Api::Sql)?;
        let config = gate.config();
        gate.rate(
            principal,
            &req.headers,
            req.peer,
            "sql",
            config.sql_quota,
            config.anonymous_sql_quota,
        )
        .await?;
        Ok(())
    }

    /// The queue the path names, for an operator's request ([`JobsDashboard::operator`]).
    async fn operated_queue(&self, req: &ApiRequest) -> Result<&Queue<C>> {
        self.operator(req).await?;
        self.queue(req)
    }

    /// The queue the path names.
    fn queue(&self, req: &ApiRequest) -> Result<&Queue<C>> {
        let name = req
            .path
            .get("queue")
            .map(String::as_str)
            .unwrap_or_default();
        self.inner
            .queues
            .iter()
            .find(|q| q.name().as_str() == name)
            .ok_or_else(|| Error::NotFound(format!("no queue {name:?}")))
    }

    /// A queue's counts, whether it is paused and how many workers are live: what a `counts`
    /// event carries.
    async fn counts(queue: &Queue<C>) -> Result<Value> {
        Ok(json!({
            "name": queue.name().as_str(),
            "counts": queue.counts().await?,
            "paused": queue.is_paused().await?,
            "worker_count": queue.workers().await?.len(),
        }))
    }

    /// [`JobsDashboard::counts`] with the completed and dead jobs of each of the last 60
    /// minutes (the current one last).
    async fn summary(queue: &Queue<C>) -> Result<Value> {
        let mut summary = Self::counts(queue).await?;
        summary["completed_per_minute"] = json!(queue.metrics(Metric::Completed, 60).await?);
        summary["dead_per_minute"] = json!(queue.metrics(Metric::Dead, 60).await?);
        Ok(summary)
    }

    /// The feed of `queue`'s events, started for the first viewer and ended after the last.
    fn feed(&self, queue: &Queue<C>) -> broadcast::Receiver<Frame> {
        let mut feeds = self
            .inner
            .feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = queue.name().as_str().to_owned();
        if let Some(feed) = feeds.get(&name) {
            return feed.subscribe();
        }
        let (feed, viewer) = broadcast::channel(256);
        feeds.insert(name.clone(), feed.clone());
        let dashboard = self.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            if let Err(e) = follow(&queue, &feed).await {
                tracing::warn!(error = %e, queue = %name, "jobs dashboard: the feed stopped");
            }
            dashboard
                .inner
                .feeds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&name);
        });
        viewer
    }
}

/// Reads `queue`'s event stream while `feed` has viewers: each event as a `job` frame, and
/// after any of them the queue's counts (at most one `counts` frame per [`POLL`]).
async fn follow<C: RedisConnection>(
    queue: &Queue<C>,
    feed: &broadcast::Sender<Frame>,
) -> Result<()> {
    let mut after = queue.newest_event().await?;
    let mut changed = false;
    let mut counted = Instant::now();
    loop {
        if feed.receiver_count() == 0 {
            return Ok(());
        }
        let events = queue.events(after.as_deref(), 100).await?;
        if let Some(last) = events.last() {
            after = Some(last.id.clone());
            changed = true;
        }
        for event in &events {
            let _ = feed.send(("job", json!(event).to_string().into()));
        }
        if changed && counted.elapsed() >= POLL {
            let counts = JobsDashboard::counts(queue).await?;
            let _ = feed.send(("counts", counts.to_string().into()));
            counted = Instant::now();
            changed = false;
        }
        // A full page means more are waiting: read on at once.
        if events.len() < 100 {
            tokio::time::sleep(POLL).await;
        }
    }
}

async fn page() -> Response {
    let mut response = Html(PAGE).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /api/v1/jobs`.
async fn overview<C: RedisConnection>(
    State(dash): State<JobsDashboard<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            dash.operator(&req).await?;
            let mut queues = Vec::with_capacity(dash.inner.queues.len());
            for queue in &dash.inner.queues {
                queues.push(JobsDashboard::summary(queue).await?);
            }
            Ok(Json(json!({ "queues": queues })).into_response())
        }
        .await,
    )
}

/// `GET /api/v1/jobs/{queue}`.
async fn queue_detail<C: RedisConnection>(
    State(dash): State<JobsDashboard<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            let queue = dash.operated_queue(&req).await?;
            let mut detail = JobsDashboard::summary(queue).await?;
            let workers = queue.workers().await?;
            detail["workers"] = json!(workers);
            Ok(Json(detail).into_response())
        }
        .await,
    )
}

/// `GET /api/v1/jobs/{queue}/jobs?state=…&start=…&count=…`: `state` one of `waiting`,
/// `delayed`, `active`, `completed`, `dead`, `cancelled`; `count` at most [`MAX_PAGE`]
/// (default 20).
async fn list<C: RedisConnection>(
    State(dash): State<JobsDashboard<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            let queue = dash.operated_queue(&req).await?;
            let params = Params::new(req.query.as_deref(), &req.headers, &[])?;
            let name = params.get("state").unwrap_or("waiting");
            let state = JobState::from_name(name).ok_or_else(|| {
                Error::BadRequest(format!(
                    "state: {name:?} is none of waiting, delayed, active, completed, dead, cancelled"
                ))
            })?;
            let number = |name: &str, default: usize| -> Result<usize> {
                params.get(name).map_or(Ok(default), |v| {
                    v.parse()
                        .map_err(|_| Error::BadRequest(format!("{name}: expected a number")))
                })
            };
            let start = number("start", 0)?;
            let count = number("count", 20)?.min(MAX_PAGE);
            let jobs = queue.jobs(state, start, count).await?;
            Ok(Json(json!({ "state": state, "start": start, "jobs": jobs })).into_response())
        }
        .await,
    )
}

/// `GET /api/v1/jobs/{queue}/jobs/{id}`.
async fn job<C: RedisConnection>(
    State(dash): State<JobsDashboard<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            let queue = dash.operated_queue(&req).await?;
            let (id, status) = the_job(queue, &req).await?;
            let mut detail = json!(status);
            detail["logs"] = json!(queue.logs(&id, 0, LOG_LINES).await?);
            Ok(Json(detail).into_response())
        }
        .await,
    )
}

/// `POST /api/v1/jobs/{queue}/jobs/{id}/{action}`: the job's state after the action.
async fn job_action<C: RedisConnection>(
    State(dash): State<JobsDashboard<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            let queue = dash.operated_queue(&req).await?;
            let (id, _) = the_job(queue, &req).await?;
            let action = req.path.get("action").map(String::as_str);
            let state = match action {
                Some("retry") => queue.retry(&id).await?,
                Some("promote") => queue.promote(&id).await?,
                Some("cancel") => queue.cancel(&id).await?,
                Some("remove") => {
                    queue.remove(&id).await?;
                    return Ok(Json(json!({ "id": id.as_str(), "removed": true })).into_response());
                }
                _ => {
                    return Err(Error::NotFound(
                        "no such action: retry, promote, cancel or remove".into(),
                    ));
                }
            };
            Ok(Json(json!({ "id": id.as_str(), "state": state })).into_response())
        }
        .await,
    )
}

/// `POST /api/v1/jobs/{queue}/{action}`: the queue's summary after the action (`redriven`:
/// how many dead jobs were sent back).
async fn queue_action<C: RedisConnection>(
    State(dash): State<JobsDashboard<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            let queue = dash.operated_queue(&req).await?;
            let mut redriven = None;
            match req.path.get("action").map(String::as_str) {
                Some("pause") => queue.pause().await?,
                Some("resume") => queue.resume().await?,
                Some("redrive") => {
                    let dead = queue.counts().await?.dead;
                    redriven = Some(
                        queue
                            .redrive(u32::try_from(dead).unwrap_or(u32::MAX))
                            .await?,
                    );
                }
                _ => {
                    return Err(Error::NotFound(
                        "no such action: pause, resume or redrive".into(),
                    ));
                }
            }
            let mut summary = JobsDashboard::counts(queue).await?;
            if let Some(n) = redriven {
                summary["redriven"] = n.into();
            }
            Ok(Json(summary).into_response())
        }
        .await,
    )
}

/// `GET /api/v1/jobs/{queue}/events`.
async fn events<C: RedisConnection>(
    State(dash): State<JobsDashboard<C>>,
    req: ApiRequest,
) -> Response {
    respond(
        async {
            let queue = dash.operated_queue(&req).await?;
            // Subscribed before the first counts, so that no change between the two is missed.
            let viewer = dash.feed(queue);
            let first = JobsDashboard::counts(queue).await?.to_string();
            let first = futures_util::stream::once(async move {
                Ok::<_, Infallible>(Event::default().event("counts").data(first))
            });
            let rest = futures_util::stream::unfold(viewer, |mut viewer| async move {
                loop {
                    match viewer.recv().await {
                        Ok((name, data)) => {
                            let event = Event::default().event(name).data(&*data);
                            return Some((Ok(event), viewer));
                        }
                        // A viewer that fell behind skips to what is current.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        // The feed stopped (Redis failed): the browser reconnects.
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            let mut response = Sse::new(first.chain(rest))
                .keep_alive(KeepAlive::default())
                .into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        .await,
    )
}

/// The job the path names, and its status (404 when the queue holds no such job).
async fn the_job<C: RedisConnection>(
    queue: &Queue<C>,
    req: &ApiRequest,
) -> Result<(JobId, JobStatus)> {
    let not_found = || Error::NotFound("no such job".into());
    let raw = req.path.get("id").map(String::as_str).unwrap_or_default();
    let id = JobId::new(raw).map_err(|_| not_found())?;
    let status = queue.status(&id).await?.ok_or_else(not_found)?;
    Ok((id, status))
}
