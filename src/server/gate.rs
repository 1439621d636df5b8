//! What every API request passes: its parameters (query string and body), its user, its
//! credentials, its grant, its rate and its share of the running requests.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use geoauth::{
    Api, Credentials, KeySource, Principal, RateDecision, RateLimiter, RateSubject, UserName,
    Verifier,
};

use super::fair::{Admission, Inflight};
use super::{Error, RedisConnection, Result, ServerConfig};

/// A request's parameters: the query string, then a form or JSON body (later ones do not
/// replace earlier ones of the same name), as CARTO's APIs read them.
///
/// ```
/// use axum::http::{HeaderMap, HeaderValue, header};
/// use geostack::server::Params;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
/// let params = Params::new(Some("q=select+1"), &headers, br#"{"q": "ignored", "format": "csv"}"#)?;
/// assert_eq!(params.get("q"), Some("select 1"));
/// assert_eq!(params.get("format"), Some("csv"));
/// # Ok::<(), geostack::server::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The parameters of `query` (the raw query string) and `body` (JSON when `headers` say
    /// so, else a form).
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] when a JSON body is not a JSON object.
    pub fn new(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Self> {
        let mut pairs: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if !body.is_empty() {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if json {
                let value: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|e| Error::BadRequest(format!("the body is not JSON: {e}")))?;
                let serde_json::Value::Object(map) = value else {
                    return Err(Error::BadRequest("the body must be a JSON object".into()));
                };
                for (name, value) in map {
                    let text = match value {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Null => continue,
                        other => other.to_string(),
                    };
                    pairs.push((name, text));
                }
            } else {
                pairs.extend(form_urlencoded::parse(body).into_owned());
            }
        }
        Ok(Self(pairs))
    }

    /// The parameters of `query` (the raw query string), and the key a JSON `body` that is
    /// not itself parameters (a map config, a template) carries in its `api_key` member, as
    /// carto-python sends it; the body's other members are left alone.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] as [`Params::new`].
    pub fn with_body_key(query: Option<&str>, body: &[u8]) -> Result<Self> {
        let mut params = Self::new(query, &HeaderMap::new(), &[])?;
        if let Ok(serde_json::Value::Object(members)) = serde_json::from_slice(body)
            && let Some(serde_json::Value::String(key)) = members.get("api_key")
        {
            params.push("api_key", key.clone());
        }
        Ok(params)
    }

    /// Adds a parameter after the others (one a route finds elsewhere: a JSON body's member).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The first value of `name`, if not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The parameters as one query string, for [`Credentials::from_headers_and_query`].
    fn encoded(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (n, v) in &self.0 {
            out.append_pair(n, v);
        }
        out.finish()
    }
}

/// What an API handler starts from (an extractor): the path's parameters (`user` among them
/// under `/user/{user}/…`), the raw query string, the headers and the client's address.
///
/// ```no_run
/// use geoauth::Api;
/// use geostack::server::{ApiRequest, Gate, Result};
///
/// // GET /user/{user}/hello: who is calling, with the SQL API's quota counted.
/// async fn hello(gate: Gate, req: ApiRequest) -> Result<String> {
///     let caller = gate.caller(&req, Api::Sql).await?;
///     Ok(format!("hello, key {} of {}", caller.principal.key_id(), caller.principal.user()))
/// }
/// ```
#[derive(Debug)]
pub struct ApiRequest {
    /// The path's parameters.
    pub path: HashMap<String, String>,
    /// The raw query string.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The TCP peer, when the server was started with connect info.
    pub peer: Option<std::net::SocketAddr>,
}

/// The TCP peer of a request served with connect info (`into_make_service_with_connect_info`
/// with [`Peer`](super::Peer) or [`SocketAddr`](std::net::SocketAddr)).
///
/// ```
/// let mut extensions = axum::http::Extensions::new();
/// assert_eq!(geostack::server::peer_of(&extensions), None);
/// let addr: std::net::SocketAddr = "203.0.113.5:4000".parse().unwrap();
/// extensions.insert(axum::extract::ConnectInfo(addr));
/// assert_eq!(geostack::server::peer_of(&extensions), Some(addr));
/// ```
pub fn peer_of(extensions: &axum::http::Extensions) -> Option<std::net::SocketAddr> {
    use axum::extract::ConnectInfo;
    match extensions.get::<ConnectInfo<super::Peer>>() {
        Some(peer) => Some(peer.0.addr()),
        None => extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ApiRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(path) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            path,
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            peer: peer_of(&parts.extensions),
        })
    }
}

/// The handler's response, or its error's.
pub(crate) fn respond(result: Result<Response>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// An authenticated request: who, and the rate decision for its response headers.
///
/// ```no_run
/// # async fn demo(gate: geostack::server::Gate, req: geostack::server::ApiRequest) -> geostack::server::Result<()> {
/// let caller = gate.caller(&req, geoauth::Api::Maps).await?;
/// let mut response = axum::response::Response::new(axum::body::Body::empty());
/// caller.rate.write_headers(response.headers_mut()); // RateLimit-*, Carto-Rate-Limit-*
/// let _running = gate.admit(&caller)?; // its share of running requests, held while answering
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Caller {
    /// The verified key.
    pub principal: Principal,
    /// The rate decision, whose headers every answer carries.
    pub rate: RateDecision,
    /// Who the caller is for fair share: its key, or for anonymous callers the user and the
    /// client's address.
    pub id: String,
}

/// The gate every API request passes: the user it is for, its verified key, the key's rate and
/// the caller's share of the requests running. One gate is shared by the APIs of a server, so
/// that a caller's share counts across them. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use geoauth::{KeySource, KeyStore, RateLimiter, Verifier, VerifierConfig};
/// use geostack::server::{Gate, ServerConfig};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
/// let keys: Arc<dyn KeySource> = Arc::new(KeyStore::new(conn.clone()));
/// let verifier = Verifier::with_cache(keys, client, VerifierConfig::default()).await;
/// let gate = Gate::new(verifier, RateLimiter::new(conn), ServerConfig::default());
/// # let _ = gate; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Gate<C = redis::aio::ConnectionManager> {
    inner: Arc<GateInner<C>>,
}

struct GateInner<C> {
    verifier: Verifier<Arc<dyn KeySource>>,
    limiter: RateLimiter<C>,
    /// Requests running per caller.
    inflight: Inflight,
    config: ServerConfig,
}

impl<C: RedisConnection> Gate<C> {
    /// `<scheme>://<host>` of `req` as its client reached it: forwarded scheme and host are
    /// believed from the trusted proxies only ([`ServerConfig::trusted_proxies`]).
    pub(crate) fn origin(&self, req: &ApiRequest) -> String {
        super::tile::origin(req.peer, &req.headers, &self.inner.config.trusted_proxies)
    }

    /// A gate verifying keys with `verifier`, counting rates with `limiter`, with `config`'s
    /// users (default user, host suffix), quotas, trusted proxies and shares.
    pub fn new(
        verifier: Verifier<Arc<dyn KeySource>>,
        limiter: RateLimiter<C>,
        config: ServerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(GateInner {
                verifier,
                limiter,
                inflight: Inflight::default(),
                config,
            }),
        }
    }

    /// The verifier, and through it the source of keys.
    pub fn verifier(&self) -> &Verifier<Arc<dyn KeySource>> {
        &self.inner.verifier
    }

    /// The settings the gate was made with.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The user a request is for: `/user/<name>/…` in the path, else `<name>.<host suffix>`,
    /// else the configured default user.
    pub fn user_of(&self, path: &HashMap<String, String>, headers: &HeaderMap) -> Result<UserName> {
        if let Some(user) = path.get("user") {
            return Ok(UserName::new(user.as_str())?);
        }
        let config = &self.inner.config;
        if let Some(suffix) = &config.host_suffix {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h));
            if let Some(name) = host
                .and_then(|h| h.strip_suffix(suffix.as_str()))
                .and_then(|h| h.strip_suffix('.'))
                .filter(|n| !n.is_empty() && !n.contains('.'))
            {
                return Ok(UserName::new(name)?);
            }
        }
        match &config.default_user {
            Some(user) => Ok(UserName::new(user.as_str())?),
            None => Err(Error::NotFound(
                "no user: use /user/<name>/… or the user's host name".into(),
            )),
        }
    }

    /// Verifies the request's credentials (a request without any uses the user's
    /// `default_public` key), requires `api` and checks the key's rate for `group`.
    pub async fn authenticate(
        &self,
        path: &HashMap<String, String>,
        headers: &HeaderMap,
        params: &Params,
        api: Api,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Caller> {
        let query = params.encoded();
        self.authenticate_query(path, headers, Some(&query), api, peer)
            .await
    }

    /// [`Gate::authenticate`] with the credentials in a raw query string.
    async fn authenticate_query(
        &self,
        path: &HashMap<String, String>,
        headers: &HeaderMap,
        query: Option<&str>,
        api: Api,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Caller> {
        let principal = self.principal_query(path, headers, query).await?;
        principal.authorize(api)?;
        let config = &self.inner.config;
        let (group, quota, anonymous_quota) = match api {
            Api::Sql => ("sql", config.sql_quota, config.anonymous_sql_quota),
            _ => ("maps", config.maps_quota, config.anonymous_maps_quota),
        };
        self.rate(principal, headers, peer, group, quota, anonymous_quota)
            .await
    }

    /// The key the request's credentials name (a request without any uses the user's
    /// `default_public` key), verified.
    pub async fn principal(
        &self,
        path: &HashMap<String, String>,
        headers: &HeaderMap,
        params: &Params,
    ) -> Result<Principal> {
        let query = params.encoded();
        self.principal_query(path, headers, Some(&query)).await
    }

    /// [`Gate::principal`] with the credentials in a raw query string.
    async fn principal_query(
        &self,
        path: &HashMap<String, String>,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Principal> {
        let inner = &self.inner;
        let user = self.user_of(path, headers)?;
        let credentials = Credentials::from_headers_and_query(
            headers,
            query,
            &user,
            inner.verifier.token_format(),
        )?;
        Ok(inner.verifier.verify(&user, &credentials).await?)
    }

    /// Counts the request against `principal`'s rate for `group` and refuses it (429) when
    /// over `quota`; an anonymous caller has `quota` per client address, and all of them
    /// together `anonymous_quota`.
    pub async fn rate(
        &self,
        principal: Principal,
        headers: &HeaderMap,
        peer: Option<std::net::SocketAddr>,
        group: &'static str,
        quota: geoauth::Quota,
        anonymous_quota: geoauth::Quota,
    ) -> Result<Caller> {
        let inner = &self.inner;
        let client = super::fair::client_addr(peer, headers, &inner.config.trusted_proxies);
        // Anonymous callers share the user's public key: each client address has the key's
        // quota, and all of them together a larger one.
        let (rate, id) = match client.filter(|_| principal.is_anonymous()) {
            Some(addr) => {
                let total = inner
                    .limiter
                    .check(&RateSubject::key(&principal, group)?, anonymous_quota)
                    .await?;
                let own = inner
                    .limiter
                    .check(&RateSubject::client(&principal, group, addr)?, quota)
                    .await?;
                let rate = if total.allowed { own } else { total };
                (
                    rate,
                    format!("{}:anonymous:{addr}", principal.user().as_str()),
                )
            }
            None => {
                let rate = inner
                    .limiter
                    .check(&RateSubject::key(&principal, group)?, quota)
                    .await?;
                (
                    rate,
                    format!("{}:key:{}", principal.user().as_str(), principal.key_id()),
                )
            }
        };
        if !rate.allowed {
            super::metrics::refused("rate");
            let mut limits = HeaderMap::new();
            rate.write_headers(&mut limits);
            return Err(Error::RateLimited {
                message: format!(
                    "You are over platform's limits: {group} requests, at most {} at once; retry later",
                    rate.limit
                ),
                headers: limits,
            });
        }
        Ok(Caller {
            principal,
            rate,
            id,
        })
    }

    /// Admits one more running request of `caller`, or refuses it (429) when the caller has
    /// its share running already: one caller cannot hold a role's whole pool.
    pub fn admit(&self, caller: &Caller) -> Result<Admission> {
        let max = self.inner.config.max_running_per_caller;
        self.admit_as(caller, caller.id.clone(), max, "running")
    }

    /// Admits one more tile render of `caller`, or refuses it (429) when it has
    /// `max_renders_per_caller` running.
    pub fn admit_renders(&self, caller: &Caller) -> Result<Admission> {
        let max = self.inner.config.max_renders_per_caller;
        self.admit_as(caller, format!("{}\ttiles", caller.id), max, "renders")
    }

    fn admit_as(
        &self,
        caller: &Caller,
        id: String,
        max: u32,
        reason: &'static str,
    ) -> Result<Admission> {
        self.inner
            .inflight
            .admit(id, max)
            .ok_or_else(|| {
                super::metrics::refused(reason);
                let mut headers = HeaderMap::new();
                caller.rate.write_headers(&mut headers);
                headers.insert(header::RETRY_AFTER, axum::http::HeaderValue::from(1));
                Error::RateLimited {
                    message: format!(
                        "You are over platform's limits: at most {max} requests running at once; retry later"
                    ),
                    headers,
                }
            })
    }

    /// The verified caller of `req`, whose credentials are in its query string or headers.
    pub async fn caller(&self, req: &ApiRequest, api: Api) -> Result<Caller> {
        self.authenticate_query(&req.path, &req.headers, req.query.as_deref(), api, req.peer)
            .await
    }
}
