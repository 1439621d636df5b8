//! Named maps, as Windshaft's templates: a map config with typed placeholders that the user's
//! master key stores (`/api/v1/map/named`: create, list, get, update, delete), and that anyone
//! its `auth` admits instantiates with values for the placeholders (`POST …/named/{name}`, or
//! `GET …/named/{name}/jsonp` with JSONP). The instance's SQL runs as the master key that
//! stored the template, as CARTO's named maps do: a template shows what its author chose,
//! and a value can never become SQL.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use geoauth::{Api, ApiKey, KeyKind, KeySource as _, Principal, UserName};
use geostack_tiles::MapConfig;
use serde::{Deserialize, Serialize};

use super::gate::{ApiRequest, Params, respond};
use super::maps::{MapsApi, jsonp_callback, windshaft_answer};
use super::{Error, RedisConnection, Result};

/// The most named maps a user keeps.
const MAX_TEMPLATES: usize = 1_000;

/// A template as Windshaft takes it.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct Template {
    #[serde(default = "default_version")]
    version: String,
    name: String,
    #[serde(default)]
    auth: TemplateAuth,
    #[serde(default)]
    placeholders: BTreeMap<String, Placeholder>,
    layergroup: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    view: Option<serde_json::Value>,
}

fn default_version() -> String {
    "0.0.1".into()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct TemplateAuth {
    method: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    valid_tokens: Vec<String>,
}

impl Default for TemplateAuth {
    fn default() -> Self {
        Self {
            method: "open".into(),
            valid_tokens: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct Placeholder {
    #[serde(rename = "type")]
    kind: String,
    default: serde_json::Value,
}

/// What is stored: the template and the key whose role its instances run as.
#[derive(Deserialize, Serialize)]
struct Stored {
    template: Template,
    owner: String,
}

/// The members of a layergroup whose strings are SQL.
const SQL_MEMBERS: [&str; 3] = ["sql", "sql_wrap", "query"];

impl Template {
    /// Reads and checks a template: its name, auth, placeholders, and its layergroup filled
    /// with the defaults (a valid map config, each `sql_literal` placeholder inside a string
    /// literal of its SQL).
    fn parse(body: &[u8]) -> Result<Self> {
        let template: Self = serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("invalid template: {e}")))?;
        let bad = |reason: String| Error::BadRequest(format!("invalid template: {reason}"));
        if !template.version.starts_with("0.0.") {
            return Err(bad(format!("unsupported version {}", template.version)));
        }
        let valid_name = !template.name.is_empty()
            && template.name.len() <= 128
            && template
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !valid_name {
            return Err(bad("a name has 1 to 128 letters, digits, _ or -".into()));
        }
        match (
            template.auth.method.as_str(),
            template.auth.valid_tokens.len(),
        ) {
            ("open", _) => {}
            ("token", 1..=100)
                if template
                    .auth
                    .valid_tokens
                    .iter()
                    .all(|t| !t.is_empty() && t.len() <= 256) => {}
            ("token", _) => return Err(bad("auth token needs 1 to 100 valid_tokens".into())),
            (other, _) => return Err(bad(format!("auth method {other}: expected open or token"))),
        }
        for (name, placeholder) in &template.placeholders {
            if !is_identifier(name) {
                return Err(bad(format!("placeholder {name:?} is not a plain name")));
            }
            escape(&placeholder.kind, &placeholder.default)
                .map_err(|e| bad(format!("placeholder {name}: default: {e}")))?;
        }
        check_placeholders(&template.layergroup, &template.placeholders, false)?;
        template.fill(&serde_json::Map::new())?;
        Ok(template)
    }

    /// The layergroup with every placeholder replaced by its escaped value (`values`' or the
    /// default), as a map config.
    fn fill(&self, values: &serde_json::Map<String, serde_json::Value>) -> Result<String> {
        let mut escaped = BTreeMap::new();
        for (name, placeholder) in &self.placeholders {
            let value = values.get(name).unwrap_or(&placeholder.default);
            let text = escape(&placeholder.kind, value).map_err(|e| {
                Error::BadRequest(format!("invalid value for placeholder {name}: {e}"))
            })?;
            escaped.insert(name.clone(), text);
        }
        let filled = substitute(&self.layergroup, &escaped)?;
        let json = filled.to_string();
        MapConfig::parse(&json)?;
        Ok(json)
    }

    fn admits(&self, auth_token: Option<&str>) -> bool {
        match self.auth.method.as_str() {
            "open" => true,
            _ => auth_token.is_some_and(|t| self.auth.valid_tokens.iter().any(|v| v == t)),
        }
    }
}

/// A placeholder's value as it may stand in the layergroup's text:
/// - `sql_literal`: text with `'` doubled, inside the template's own quotes (no backslash,
///   no NUL: nothing can close the literal);
/// - `sql_ident`: a plain identifier (letters, digits, `_`);
/// - `number`: a finite number;
/// - `css_color`: `#` and 3, 4, 6 or 8 hex digits, or a colour name.
fn escape(kind: &str, value: &serde_json::Value) -> std::result::Result<String, String> {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return Err("expected a string or a number".into()),
    };
    match kind {
        "sql_literal" => {
            if text.contains(['\\', '\0']) {
                return Err("a literal may not hold a backslash or a NUL".into());
            }
            Ok(text.replace('\'', "''"))
        }
        "sql_ident" if is_identifier(&text) => Ok(text),
        "sql_ident" => Err("expected a plain identifier".into()),
        "number" => {
            let n: f64 = text
                .trim()
                .parse()
                .map_err(|_| "expected a number".to_owned())?;
            if !n.is_finite() {
                return Err("expected a finite number".into());
            }
            Ok(if n.fract() == 0.0 && n.abs() < 1e15 {
                format!("{}", n as i64)
            } else {
                format!("{n:?}")
            })
        }
        "css_color" => {
            let hex = text.strip_prefix('#').is_some_and(|h| {
                matches!(h.len(), 3 | 4 | 6 | 8) && h.bytes().all(|b| b.is_ascii_hexdigit())
            });
            let name =
                (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphabetic());
            if hex || name {
                Ok(text)
            } else {
                Err("expected #rgb, #rrggbb or a colour name".into())
            }
        }
        other => Err(format!(
            "unknown type {other}: expected sql_literal, sql_ident, number or css_color"
        )),
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// The placeholders (`<%= name %>`) of `text`: each name and its byte range.
fn placeholders_in(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("<%=").map(|i| from + i) {
        let Some(close) = text[open..].find("%>").map(|i| open + i) else {
            break;
        };
        out.push((text[open + 3..close].trim().to_owned(), open..close + 2));
        from = close + 2;
    }
    out
}

/// Checks every placeholder of `value` (under a member named `sql_member` when `in_sql`) names
/// a declared one, and that each `sql_literal` one in SQL stands inside a string literal.
fn check_placeholders(
    value: &serde_json::Value,
    declared: &BTreeMap<String, Placeholder>,
    in_sql: bool,
) -> Result<()> {
    match value {
        serde_json::Value::String(text) => {
            let found = placeholders_in(text);
            for (name, _) in &found {
                if !declared.contains_key(name) {
                    return Err(Error::BadRequest(format!(
                        "invalid template: placeholder {name} is not declared"
                    )));
                }
            }
            if in_sql {
                // The SQL with every placeholder a neutral value, and where each literal one
                // went.
                let mut sql = String::new();
                let mut literals = Vec::new();
                let mut last = 0;
                for (name, range) in &found {
                    sql.push_str(&text[last..range.start]);
                    match declared[name].kind.as_str() {
                        "sql_literal" => {
                            literals.push((name, sql.len()));
                            sql.push('x');
                        }
                        "number" => sql.push('0'),
                        _ => sql.push('x'),
                    }
                    last = range.end;
                }
                sql.push_str(&text[last..]);
                for (name, at) in literals {
                    if !sqlpass::in_string_literal(&sql, at) {
                        return Err(Error::BadRequest(format!(
                            "invalid template: sql_literal placeholder {name} must stand inside '…'"
                        )));
                    }
                }
            }
            Ok(())
        }
        serde_json::Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_placeholders(v, declared, in_sql)),
        serde_json::Value::Object(members) => members.iter().try_for_each(|(k, v)| {
            check_placeholders(v, declared, SQL_MEMBERS.contains(&k.as_str()))
        }),
        _ => Ok(()),
    }
}

/// `value` with the placeholders of its strings replaced by `escaped` values.
fn substitute(
    value: &serde_json::Value,
    escaped: &BTreeMap<String, String>,
) -> Result<serde_json::Value> {
    Ok(match value {
        serde_json::Value::String(text) => {
            let mut out = String::with_capacity(text.len());
            let mut last = 0;
            for (name, range) in placeholders_in(text) {
                let value = escaped.get(&name).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "invalid template: placeholder {name} is not declared"
                    ))
                })?;
                out.push_str(&text[last..range.start]);
                out.push_str(value);
                last = range.end;
            }
            out.push_str(&text[last..]);
            serde_json::Value::String(out)
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| substitute(v, escaped))
                .collect::<Result<_>>()?,
        ),
        serde_json::Value::Object(members) => serde_json::Value::Object(
            members
                .iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, escaped)?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

impl<C: RedisConnection> MapsApi<C> {
    /// The Redis hash of `user`'s named maps (a user's keys share a cluster slot).
    fn named_key(&self, user: &UserName) -> String {
        format!("{}named:{{{}}}", self.inner.prefix, user.as_str())
    }

    async fn load_template(&self, user: &UserName, name: &str) -> Result<Stored> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.named_key(user))
            .arg(name)
            .query_async(&mut self.inner.redis.clone())
            .await?;
        let json = json.ok_or_else(|| Error::NotFound(format!("no named map {name}")))?;
        serde_json::from_str(&json)
            .map_err(|_| Error::Internal(format!("the stored named map {name} is unreadable")))
    }

    /// The caller of a template route that must be the user's master key.
    async fn master(&self, req: &ApiRequest, body: &[u8]) -> Result<super::gate::Caller> {
        let params = Params::with_body_key(req.query.as_deref(), body)?;
        let caller = self
            .inner
            .gate
            .authenticate(&req.path, &req.headers, &params, Api::Maps, req.peer)
            .await?;
        if caller.principal.kind() != KeyKind::Master {
            return Err(Error::Forbidden(
                "named maps are managed with the master key".into(),
            ));
        }
        Ok(caller)
    }

    /// Checks the template as its owner would run it, then stores it.
    async fn save_template(
        &self,
        principal: &Principal,
        template: Template,
        create: bool,
    ) -> Result<()> {
        let user = principal.user();
        let config = MapConfig::parse(&template.fill(&serde_json::Map::new())?)?;
        let pool = self.inner.sandbox.pool_of(principal)?;
        config.check(&pool, &self.inner.sandbox.options()).await?;
        let key = self.named_key(user);
        let mut redis = self.inner.redis.clone();
        let (exists, count): (bool, usize) = redis::pipe()
            .hexists(&key, &template.name)
            .hlen(&key)
            .query_async(&mut redis)
            .await?;
        match (create, exists) {
            (true, true) => {
                return Err(Error::BadRequest(format!(
                    "a named map {} exists: update it with PUT",
                    template.name
                )));
            }
            (false, false) => {
                return Err(Error::NotFound(format!("no named map {}", template.name)));
            }
            (true, false) if count >= MAX_TEMPLATES => {
                return Err(Error::TooLarge(format!(
                    "a user keeps at most {MAX_TEMPLATES} named maps"
                )));
            }
            _ => {}
        }
        let stored = Stored {
            owner: principal.key_id().as_str().to_owned(),
            template,
        };
        let json = serde_json::to_string(&stored)
            .map_err(|_| Error::Internal("the template could not be written".into()))?;
        if json.len() > self.inner.config_limit {
            return Err(Error::TooLarge(format!(
                "the template is larger than the limit of {} bytes",
                self.inner.config_limit
            )));
        }
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(&stored.template.name)
            .arg(json)
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    /// The key a named map's instances run as, when it still exists.
    async fn owner(&self, user: &UserName, id: &str) -> Result<ApiKey> {
        let id = id
            .parse()
            .map_err(|_| Error::Internal("a stored named map names no key".into()))?;
        self.inner
            .gate
            .verifier()
            .source()
            .get(user, &id)
            .await?
            .ok_or_else(|| Error::Forbidden("the key that made this named map is gone".into()))
    }
}

impl<C: RedisConnection> MapsApi<C> {
    /// The key an instance of `template` runs as, when the template's auth admits the request
    /// (its `auth_token` parameter).
    pub(super) async fn instance_owner(
        &self,
        user: &UserName,
        template: &str,
        req: &ApiRequest,
    ) -> Result<ApiKey> {
        let stored = self.load_template(user, template).await?;
        let params = Params::new(req.query.as_deref(), &axum::http::HeaderMap::new(), &[])?;
        if !stored.template.admits(params.get("auth_token")) {
            return Err(Error::Forbidden(format!(
                "named map {template} needs a valid auth_token"
            )));
        }
        self.owner(user, &stored.owner).await
    }

    /// The routes of named maps.
    pub(super) fn named_routes(&self) -> Vec<(String, axum::routing::MethodRouter<Self>)> {
        use axum::routing::get;
        let mut routes = super::with_slash("/api/v1/map/named", get(list::<C>).post(create::<C>));
        routes.extend(super::with_slash(
            "/api/v1/map/named/{name}",
            get(show::<C>)
                .put(update::<C>)
                .delete(delete::<C>)
                .post(instantiate::<C>),
        ));
        routes.push((
            "/api/v1/map/named/{name}/jsonp".to_owned(),
            get(instantiate_jsonp::<C>),
        ));
        routes
    }
}

fn name_of(req: &ApiRequest) -> &str {
    req.path.get("name").map(String::as_str).unwrap_or_default()
}

/// `POST /api/v1/map/named`: stores a new template (master key).
async fn create<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    respond(store(&api, &req, &body, None).await)
}

/// `PUT /api/v1/map/named/{name}`: replaces a template (master key).
async fn update<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    respond(store(&api, &req, &body, Some(name_of(&req))).await)
}

/// Stores the template in `body`: a new one, or (`replacing`) the one of that name.
async fn store<C: RedisConnection>(
    api: &MapsApi<C>,
    req: &ApiRequest,
    body: &[u8],
    replacing: Option<&str>,
) -> Result<Response> {
    let caller = api.master(req, body).await?;
    let template = Template::parse(body)?;
    if let Some(name) = replacing
        && template.name != name
    {
        return Err(Error::BadRequest(format!(
            "the template is named {}, not {name}",
            template.name
        )));
    }
    let name = template.name.clone();
    api.save_template(&caller.principal, template, replacing.is_none())
        .await?;
    Ok(Json(serde_json::json!({ "template_id": name })).into_response())
}

/// `GET /api/v1/map/named`: the user's template names (master key).
async fn list<C: RedisConnection>(State(api): State<MapsApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = api.master(&req, &[]).await?;
            let mut names: Vec<String> = redis::cmd("HKEYS")
                .arg(api.named_key(caller.principal.user()))
                .query_async(&mut api.inner.redis.clone())
                .await?;
            names.sort();
            Ok(Json(serde_json::json!({ "template_ids": names })).into_response())
        }
        .await,
    )
}

/// `GET /api/v1/map/named/{name}`: one template (master key).
async fn show<C: RedisConnection>(State(api): State<MapsApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = api.master(&req, &[]).await?;
            let stored = api
                .load_template(caller.principal.user(), name_of(&req))
                .await?;
            Ok(Json(serde_json::json!({ "template": stored.template })).into_response())
        }
        .await,
    )
}

/// `DELETE /api/v1/map/named/{name}`: drops a template (master key); its instances stop.
async fn delete<C: RedisConnection>(State(api): State<MapsApi<C>>, req: ApiRequest) -> Response {
    respond(
        async {
            let caller = api.master(&req, &[]).await?;
            let name = name_of(&req);
            let removed: i64 = redis::cmd("HDEL")
                .arg(api.named_key(caller.principal.user()))
                .arg(name)
                .query_async(&mut api.inner.redis.clone())
                .await?;
            if removed == 0 {
                return Err(Error::NotFound(format!("no named map {name}")));
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// `POST /api/v1/map/named/{name}`: an instance, the body giving the placeholders' values.
async fn instantiate<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    let values = if body.is_empty() {
        Ok(serde_json::Map::new())
    } else {
        match serde_json::from_slice(&body) {
            Ok(serde_json::Value::Object(values)) => Ok(values),
            _ => Err(Error::BadRequest(
                "the placeholders' values are a JSON object".into(),
            )),
        }
    };
    instance(&api, &req, values, None).await
}

/// `GET /api/v1/map/named/{name}/jsonp?config=…&callback=…`: the same, for CARTO.js.
async fn instantiate_jsonp<C: RedisConnection>(
    State(api): State<MapsApi<C>>,
    req: ApiRequest,
) -> Response {
    let params = Params::new(req.query.as_deref(), &axum::http::HeaderMap::new(), &[]);
    let callback = params
        .as_ref()
        .ok()
        .and_then(|p| p.get("callback"))
        .map(jsonp_callback)
        .transpose();
    let callback = match callback {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let values = params.and_then(|p| match p.get("config") {
        None => Ok(serde_json::Map::new()),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(values)) => Ok(values),
            _ => Err(Error::BadRequest(
                "config: the placeholders' values are a JSON object".into(),
            )),
        },
    });
    instance(&api, &req, values, callback.as_deref()).await
}

async fn instance<C: RedisConnection>(
    api: &MapsApi<C>,
    req: &ApiRequest,
    values: Result<serde_json::Map<String, serde_json::Value>>,
    callback: Option<&str>,
) -> Response {
    let mut json = String::new();
    let answer = async {
        let values = values?;
        let mut params = Params::new(req.query.as_deref(), &axum::http::HeaderMap::new(), &[])?;
        if let Some(serde_json::Value::String(key)) = values.get("api_key") {
            params.push("api_key", key.clone());
        }
        let name = name_of(req);
        let user = api.inner.gate.user_of(&req.path, &req.headers)?;
        let stored = api.load_template(&user, name).await?;
        if !stored.template.admits(params.get("auth_token")) {
            return Err(Error::Forbidden(format!(
                "named map {name} needs a valid auth_token"
            )));
        }
        let owner = api.owner(&user, &stored.owner).await?;
        json = stored.template.fill(&values)?;
        api.instantiate(req, &json, &params, Some((name, &owner)))
            .await
    }
    .await;
    windshaft_answer(answer, &json, callback).await
}
