//! A tower layer that authenticates every request and puts its [`Principal`] in the request's
//! extensions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    Api, Credentials, Error, KeySource, Principal, Quota, RateLimiter, RateSubject, Result,
    UserName, Verifier,
};

/// Wraps a service so that each request is verified first: the principal goes into the
/// request's extensions, and a refused request is answered here with its status (401, 403,
/// 400, 503 with `Retry-After`) and CARTO's error body `{"error":["…"]}`.
///
/// `user_of` says whose data a request is for (from the path, as in `/user/<name>/…`, or from
/// the host name, as CARTO does).
///
/// ```no_run
/// # async fn demo(verifier: geoauth::Verifier<geoauth::KeyStore>) {
/// use geoauth::{AuthLayer, UserName};
///
/// let layer = AuthLayer::new(verifier, |parts: &http::request::Parts| {
///     let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
///     UserName::new(host.and_then(|h| h.split('.').next()).unwrap_or_default())
/// });
/// # }
/// ```
pub struct AuthLayer<S, F> {
    verifier: Verifier<S>,
    user_of: F,
    api: Option<Api>,
    rate: Option<Rate>,
}

/// A layer's rate limit: the limiter, the group (one bucket per key and group) and the quota.
#[derive(Clone)]
struct Rate {
    limiter: RateLimiter,
    group: String,
    quota: Quota,
}

impl<S, F: Clone> Clone for AuthLayer<S, F> {
    fn clone(&self) -> Self {
        Self {
            verifier: self.verifier.clone(),
            user_of: self.user_of.clone(),
            api: self.api,
            rate: self.rate.clone(),
        }
    }
}

impl<S, F> AuthLayer<S, F>
where
    S: KeySource,
    F: Fn(&http::request::Parts) -> Result<UserName> + Clone + Send + Sync + 'static,
{
    /// A layer verifying with `verifier`, for the user `user_of` finds in each request.
    pub fn new(verifier: Verifier<S>, user_of: F) -> Self {
        Self {
            verifier,
            user_of,
            api: None,
            rate: None,
        }
    }

    /// Also refuses (403) keys that do not grant `api`. Default: any API.
    pub fn require(mut self, api: Api) -> Self {
        self.api = Some(api);
        self
    }

    /// Also limits each key's rate: `quota` per key in the bucket `group` (`sql`, `maps`, or a
    /// group of the service's own), checked after the key is verified. A request over it is
    /// answered 429 with `Retry-After`; every answer carries `RateLimit-*` and CARTO's
    /// `Carto-Rate-Limit-*` headers. Default: no limit.
    ///
    /// ```no_run
    /// # async fn demo(verifier: geoauth::Verifier<geoauth::KeyStore>, limiter: geoauth::RateLimiter) {
    /// use std::time::Duration;
    /// use geoauth::{Api, AuthLayer, Quota, UserName};
    ///
    /// let layer = AuthLayer::new(verifier, |_: &http::request::Parts| UserName::new("alice"))
    ///     .require(Api::Sql)
    ///     .rate_limit(limiter, "sql", Quota::new(40, 20, Duration::from_secs(1)).unwrap());
    /// # }
    /// ```
    pub fn rate_limit(
        mut self,
        limiter: RateLimiter,
        group: impl Into<String>,
        quota: Quota,
    ) -> Self {
        self.rate = Some(Rate {
            limiter,
            group: group.into(),
            quota,
        });
        self
    }
}

impl<Inner, S, F: Clone> Layer<Inner> for AuthLayer<S, F> {
    type Service = Auth<Inner, S, F>;

    fn layer(&self, inner: Inner) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
            user_of: self.user_of.clone(),
            api: self.api,
            rate: self.rate.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
pub struct Auth<Inner, S, F> {
    inner: Inner,
    verifier: Verifier<S>,
    user_of: F,
    api: Option<Api>,
    rate: Option<Rate>,
}

impl<Inner: Clone, S, F: Clone> Clone for Auth<Inner, S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            verifier: self.verifier.clone(),
            user_of: self.user_of.clone(),
            api: self.api,
            rate: self.rate.clone(),
        }
    }
}

/// The future of [`Auth`].
pub type AuthFuture<T, E> = Pin<Box<dyn Future<Output = std::result::Result<T, E>> + Send>>;

impl<Inner, S, F, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<Inner, S, F>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send,
    S: KeySource,
    F: Fn(&http::request::Parts) -> Result<UserName> + Clone + Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = Inner::Error;
    type Future = AuthFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let user_of = self.user_of.clone();
        let api = self.api;
        let rate = self.rate.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let checked = authenticate(&verifier, &user_of, &parts)
                .await
                .and_then(|p| api.map_or(Ok(()), |api| p.authorize(api)).map(|()| p));
            let principal = match checked {
                Ok(principal) => principal,
                Err(e) => return Ok(refusal(&e)),
            };
            let decision = match &rate {
                None => None,
                Some(rate) => {
                    let checked = match RateSubject::key(&principal, &rate.group) {
                        Ok(subject) => rate.limiter.check(&subject, rate.quota).await,
                        Err(e) => Err(e),
                    };
                    match checked {
                        Ok(decision) => Some(decision),
                        Err(e) => return Ok(refusal(&e)),
                    }
                }
            };
            if let Some(decision) = decision.filter(|d| !d.allowed) {
                let body = serde_json::json!({
                    "error": [format!(
                        "You are over platform's limits: at most {} requests at once; retry later",
                        decision.limit
                    )]
                })
                .to_string();
                let mut response = Response::new(ResBody::from(body));
                *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                decision.write_headers(response.headers_mut());
                return Ok(response);
            }
            parts.extensions.insert(principal);
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            if let Some(decision) = decision {
                decision.write_headers(response.headers_mut());
            }
            Ok(response)
        })
    }
}

async fn authenticate<S: KeySource, F>(
    verifier: &Verifier<S>,
    user_of: &F,
    parts: &http::request::Parts,
) -> Result<Principal>
where
    F: Fn(&http::request::Parts) -> Result<UserName>,
{
    let user = user_of(parts)?;
    let credentials = Credentials::from_request(parts, &user, verifier.token_format())?;
    verifier.verify(&user, &credentials).await
}

/// The response for a refused request: the error's status and CARTO's error body.
///
/// ```
/// let response: http::Response<String> = geoauth::refusal(&geoauth::Error::UnknownKey);
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.body(), r#"{"error":["unknown api key"]}"#);
/// ```
pub fn refusal<B: From<String>>(error: &Error) -> Response<B> {
    let body = serde_json::json!({ "error": [error.to_string()] }).to_string();
    let mut response = Response::new(B::from(body));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if error.status() == http::StatusCode::UNAUTHORIZED {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"geostack\""),
        );
    }
    if let Some(after) = error.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    response
}

#[cfg(feature = "axum")]
impl<St: Send + Sync> axum_core::extract::FromRequestParts<St> for Principal {
    type Rejection = (http::StatusCode, &'static str);

    /// The principal [`AuthLayer`] put in the request; a 500 when the layer is missing.
    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &St,
    ) -> std::result::Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or((
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "no principal: the route is not behind geoauth's AuthLayer",
        ))
    }
}
