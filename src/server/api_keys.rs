//! CARTO's Auth API, `/api/v3/api_keys`: a user's keys listed, shown, made, given a new token
//! and deleted, each regular key with a login role of its own holding exactly its grants.
//!
//! As CARTO's: the master key may do everything; any other key may list and show itself only;
//! a request without credentials is refused (401). Keys are named by their `name`, unique per
//! user. Unlike CARTO, tokens are stored only as digests, so a key's token is shown when it is
//! made or regenerated and `null` afterwards (the well-known `default_public` excepted).

use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use geoauth::{ApiKey, Grants, KeyKind, Principal, Token, UserName};
use serde_json::{Value, json};

use super::gate::{ApiRequest, Params, respond};
use super::{AuthApi, Error, KeyRequest, RedisConnection, Result};

impl<C: RedisConnection> AuthApi<C> {
    /// The Auth API's routes, with and without a trailing slash, also under `/user/{user}`.
    pub fn router(&self) -> Router {
        let mut routes = super::with_slash("/api/v3/api_keys", get(list::<C>).post(create::<C>));
        routes.extend(super::with_slash(
            "/api/v3/api_keys/{name}",
            get(show::<C>).delete(delete::<C>),
        ));
        routes.extend(super::with_slash(
            "/api/v3/api_keys/{name}/token/regenerate",
            post(regenerate::<C>),
        ));
        routes.extend(super::with_slash("/api/v3/me", get(me::<C>)));
        super::mount(routes, self.clone())
    }
}

/// The most keys one page lists.
const MAX_PER_PAGE: usize = 1000;

/// The longest key name taken.
const MAX_NAME_LEN: usize = 255;

/// `GET /api/v3/api_keys`: the caller's keys (the master key sees them all), paged as CARTO
/// pages: `page`, `per_page` (default 20), `order` (`updated_at`, `name` or `type`),
/// `order_direction` (`desc` by default).
async fn list<C: RedisConnection>(State(server): State<AuthApi<C>>, req: ApiRequest) -> Response {
    respond(list_keys(&server, &req).await)
}

async fn list_keys<C: RedisConnection>(server: &AuthApi<C>, req: &ApiRequest) -> Result<Response> {
    let params = Params::new(req.query.as_deref(), &HeaderMap::new(), &[])?;
    let principal = server.keys_caller(req, &params).await?;
    let page = number(&params, "page", 1, usize::MAX)?;
    let per_page = number(&params, "per_page", 20, MAX_PER_PAGE)?;
    let order = match params.get("order").unwrap_or("updated_at") {
        o @ ("updated_at" | "name" | "type") => o,
        _ => {
            return Err(Error::BadRequest(
                "order: expected updated_at, name or type".into(),
            ));
        }
    };
    let descending = match params.get("order_direction").unwrap_or("desc") {
        "desc" => true,
        "asc" => false,
        _ => {
            return Err(Error::BadRequest(
                "order_direction: expected asc or desc".into(),
            ));
        }
    };
    let user = principal.user().clone();
    let mut keys = server.key_store().list(&user).await?;
    if principal.kind() != KeyKind::Master {
        keys.retain(|k| k.id == *principal.key_id());
    }
    keys.sort_by(|a, b| {
        let by = match order {
            "name" => a.name.cmp(&b.name),
            "type" => carto_type(a.kind).cmp(carto_type(b.kind)),
            _ => a.created.cmp(&b.created),
        };
        let by = by.then_with(|| a.name.cmp(&b.name));
        if descending { by.reverse() } else { by }
    });
    let total = keys.len();
    let base = base_url(&server.inner.gate, req, &user);
    let result: Vec<Value> = keys
        .iter()
        .skip(page.saturating_sub(1).saturating_mul(per_page))
        .take(per_page)
        .map(|k| {
            let mut v = present(k, None);
            v["_links"] = json!({ "self": format!("{base}/{}", encode(&k.name)) });
            v
        })
        .collect();
    let direction = if descending { "desc" } else { "asc" };
    let link = |page: usize| {
        json!({ "href": format!(
            "{base}?page={page}&per_page={per_page}&order={order}&order_direction={direction}"
        ) })
    };
    let last = total.div_ceil(per_page).max(1);
    let mut links = json!({ "first": link(1), "last": link(last) });
    if page > 1 {
        links["prev"] = link(page - 1);
    }
    if page < last {
        links["next"] = link(page + 1);
    }
    Ok(reply(
        StatusCode::OK,
        &json!({ "total": total, "count": result.len(), "result": result, "_links": links }),
    ))
}

/// `GET /api/v3/me`: who the key belongs to, in the shape of CARTO's answer that clients read
/// (`user_data.id`, `user_data.username`, `user_data.base_url`; cartoframes reads the id). Any
/// key of the user; a request without credentials is refused (401).
async fn me<C: RedisConnection>(State(server): State<AuthApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let params = Params::new(req.query.as_deref(), &HeaderMap::new(), &[])?;
            let gate = &server.inner.gate;
            let principal = gate.principal(&req.path, &req.headers, &params).await?;
            if principal.is_anonymous() {
                return Err(Error::Unauthorized(
                    "/api/v3/me needs an API key (api_key, or Basic or Bearer authorization)"
                        .into(),
                ));
            }
            let config = gate.config();
            let (quota, anonymous) = (config.sql_quota, config.anonymous_sql_quota);
            let caller = gate
                .rate(principal, &req.headers, req.peer, "auth", quota, anonymous)
                .await?;
            let user = caller.principal.user();
            let base = base_url(gate, &req, user);
            let base = base.trim_end_matches("/api/v3/api_keys");
            let mut response = reply(
                StatusCode::OK,
                &json!({
                    "user_data": {
                        "id": user.as_str(),
                        "username": user.as_str(),
                        "base_url": base,
                    },
                    "api_key": { "type": carto_type(caller.principal.kind()) },
                    "config": {},
                }),
            );
            caller.rate.write_headers(response.headers_mut());
            Ok(response)
        }
        .await,
    )
}

/// `POST /api/v3/api_keys` with `{"name": …, "grants": [...]}` (CARTO's JSON grants): a
/// regular key whose role holds exactly the listed table privileges. 201 with the key and its
/// token. Master key only.
async fn create<C: RedisConnection>(
    State(server): State<AuthApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    respond(create_key(&server, &req, &body).await)
}

async fn create_key<C: RedisConnection>(
    server: &AuthApi<C>,
    req: &ApiRequest,
    body: &[u8],
) -> Result<Response> {
    let params = Params::new(req.query.as_deref(), &req.headers, body)?;
    let principal = server.keys_caller(req, &params).await?;
    require_master(&principal)?;
    let (name, grants) = definition(&req.headers, &params, body)?;
    let user = principal.user().clone();
    if find(server, &user, &name).await?.is_some() {
        return Err(Error::Unprocessable(format!(
            "Validation failed: Name has already been taken ({name})"
        )));
    }
    let (key, token) = server
        .create_key(&user, KeyRequest::Regular(name), grants)
        .await?;
    Ok(reply(StatusCode::CREATED, &present(&key, Some(&token))))
}

/// `GET /api/v3/api_keys/{name}`: one key (another key than the caller's needs the master key).
async fn show<C: RedisConnection>(State(server): State<AuthApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let (_, key) = server.named_key(&req, &[]).await?;
            Ok(reply(StatusCode::OK, &present(&key, None)))
        }
        .await,
    )
}

/// `POST /api/v3/api_keys/{name}/token/regenerate`: a new token, the old one refused at once.
/// Master key only; the default_public key's token cannot change.
async fn regenerate<C: RedisConnection>(
    State(server): State<AuthApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    respond(
        async {
            let (principal, key) = server.named_key(&req, &body).await?;
            require_master(&principal)?;
            if key.kind == KeyKind::DefaultPublic {
                return Err(Error::Forbidden(
                    "the default_public key's token is fixed".into(),
                ));
            }
            let token = server
                .regenerate_key(principal.user(), &key.id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("API key not found: {}", key.name)))?;
            Ok(reply(StatusCode::OK, &present(&key, Some(&token))))
        }
        .await,
    )
}

/// `DELETE /api/v3/api_keys/{name}`: the key is refused from now on and its role dropped.
/// Master key only; the master and default_public keys cannot be deleted.
async fn delete<C: RedisConnection>(
    State(server): State<AuthApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    respond(
        async {
            let (principal, key) = server.named_key(&req, &body).await?;
            require_master(&principal)?;
            if key.kind != KeyKind::Regular {
                return Err(Error::Forbidden(format!(
                    "the {} key cannot be deleted",
                    key.kind
                )));
            }
            server.revoke_key(principal.user(), &key.id).await?;
            Ok(reply(StatusCode::OK, &present(&key, None)))
        }
        .await,
    )
}

impl<C: RedisConnection> AuthApi<C> {
    /// The verified key of an Auth API request, counted against its rate (the SQL API's
    /// quota, in a bucket of its own). A request without credentials is refused: the public
    /// key has no keys to manage.
    async fn keys_caller(&self, req: &ApiRequest, params: &Params) -> Result<Principal> {
        self.native_keys()?;
        let gate = &self.inner.gate;
        let principal = gate.principal(&req.path, &req.headers, params).await?;
        if principal.is_anonymous() {
            return Err(Error::Unauthorized(
                "the Auth API needs an API key (api_key, or Basic or Bearer authorization)".into(),
            ));
        }
        let config = gate.config();
        let (quota, anonymous) = (config.sql_quota, config.anonymous_sql_quota);
        let caller = gate
            .rate(principal, &req.headers, req.peer, "auth", quota, anonymous)
            .await?;
        Ok(caller.principal)
    }

    /// The caller and the key its path names, which it may see: its own, or any of its
    /// user's with the master key.
    async fn named_key(&self, req: &ApiRequest, body: &[u8]) -> Result<(Principal, ApiKey)> {
        let params = Params::new(req.query.as_deref(), &req.headers, body)?;
        let principal = self.keys_caller(req, &params).await?;
        let name = req.path.get("name").map(String::as_str).unwrap_or_default();
        let not_found = || Error::NotFound(format!("API key not found: {name}"));
        let key = find(self, principal.user(), name)
            .await?
            .ok_or_else(not_found)?;
        if principal.kind() != KeyKind::Master && key.id != *principal.key_id() {
            return Err(not_found());
        }
        Ok((principal, key))
    }
}

/// `user`'s key named `name`.
async fn find<C: RedisConnection>(
    server: &AuthApi<C>,
    user: &UserName,
    name: &str,
) -> Result<Option<ApiKey>> {
    let keys = server.key_store().list(user).await?;
    Ok(keys.into_iter().find(|k| k.name == name))
}

fn require_master(principal: &Principal) -> Result<()> {
    if principal.kind() == KeyKind::Master {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "only the master key may create, regenerate or delete API keys".into(),
        ))
    }
}

/// A new key's name and grants, from a JSON body (`grants` an array) or form parameters
/// (`grants` as JSON text).
fn definition(headers: &HeaderMap, params: &Params, body: &[u8]) -> Result<(String, Grants)> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let grants: Value = if is_json {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("the body is not JSON: {e}")))?;
        value.get("grants").cloned().unwrap_or(Value::Null)
    } else {
        match params.get("grants") {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Error::Unprocessable(format!("grants: not JSON: {e}")))?,
            None => Value::Null,
        }
    };
    let name = params
        .get("name")
        .ok_or_else(|| Error::Unprocessable("Validation failed: Name can't be blank".into()))?;
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Error::Unprocessable(format!(
            "Validation failed: Name must be at most {MAX_NAME_LEN} bytes of printable text"
        )));
    }
    if grants.is_null() {
        return Err(Error::Unprocessable(
            "Validation failed: Grants can't be blank".into(),
        ));
    }
    let grants = Grants::from_carto_json(&grants)
        .map_err(|e| Error::Unprocessable(format!("Validation failed: {e}")))?;
    if grants.apis().next().is_none() {
        return Err(Error::Unprocessable(
            "Validation failed: grants: a key needs at least one api (sql or maps)".into(),
        ));
    }
    Ok((name.to_owned(), grants))
}

/// A positive number parameter, `default` when absent.
fn number(params: &Params, name: &str, default: usize, max: usize) -> Result<usize> {
    match params.get(name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| Error::BadRequest(format!("{name}: expected a number from 1 to {max}"))),
    }
}

/// CARTO's name of a key kind.
fn carto_type(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::DefaultPublic => "default",
        other => other.as_str(),
    }
}

/// A key as CARTO's Auth API shows it: never its role or the role's password; its token when
/// it was just made (or is the well-known public one).
fn present(key: &ApiKey, token: Option<&Token>) -> Value {
    let token = match (token, key.kind) {
        (Some(t), _) => Value::from(t.expose()),
        (None, KeyKind::DefaultPublic) => Value::from(geoauth::DEFAULT_PUBLIC_TOKEN),
        (None, _) => Value::Null,
    };
    let created = timestamp(key.created);
    json!({
        "name": key.name,
        "user": { "username": key.user.as_str() },
        "type": carto_type(key.kind),
        "token": token,
        "grants": key.grants.to_carto_json(),
        "created_at": created,
        "updated_at": created,
    })
}

/// A time as CARTO's presenters print it: `2026-12-03 09:03:08 UTC`.
fn timestamp(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// The collection's URL as the client reached it (its `/user/{user}` form when it used it).
fn base_url<C: RedisConnection>(
    gate: &super::Gate<C>,
    req: &ApiRequest,
    user: &UserName,
) -> String {
    let prefix = if req.path.contains_key("user") {
        format!("/user/{user}")
    } else {
        String::new()
    };
    format!("{}{prefix}/api/v3/api_keys", gate.origin(req))
}

/// `s` percent-encoded for a path segment.
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}
