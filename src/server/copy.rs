//! CARTO's copy endpoints: `GET|POST /api/v2/sql/copyto` streams `COPY … TO STDOUT` and
//! `POST /api/v2/sql/copyfrom` feeds the request body (gzip or not) to `COPY … FROM STDIN`,
//! both through sqlpass's sandbox as the caller's role.

use std::io::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt as _};
use geoauth::Api;
use sqlpass::{Access, CopyStatement};

use super::gate::{ApiRequest, Params, respond};
use super::{Error, RedisConnection, Result, SqlApi};

/// How much of a compressed upload is inflated at a time: bounds the memory one chunk of a
/// hostile archive can take before the byte limit is checked.
const INFLATE_SLICE: usize = 8 << 10;

pub(super) async fn copyto<C: RedisConnection>(
    State(api): State<SqlApi<C>>,
    req: ApiRequest,
    body: Bytes,
) -> Response {
    respond(copy_out(&api, &req, &body).await)
}

async fn copy_out<C: RedisConnection>(
    api: &SqlApi<C>,
    req: &ApiRequest,
    body: &[u8],
) -> Result<Response> {
    let params = Params::new(req.query.as_deref(), &req.headers, body)?;
    let (gate, sandbox) = (api.gate(), api.sandbox());
    let caller = gate
        .authenticate(&req.path, &req.headers, &params, Api::Sql, req.peer)
        .await?;
    let sql = params
        .get("q")
        .ok_or_else(|| Error::BadRequest("You must indicate a COPY … TO STDOUT query".into()))?;
    sandbox.check_query_size(sql)?;
    let copy = CopyStatement::new(sql)?;
    let mut options = sandbox.options_for(caller.principal.key());
    if let Some(name) = params.get("filename") {
        options = options.filename(name);
    }
    let admission = gate.admit(&caller)?;
    let pool = sandbox.pool_of(&caller.principal)?;
    let response = match sqlpass::copy_to(&pool, &copy, options).await {
        Ok(r) => r,
        Err(e) => {
            let mut refused = Error::from(e).into_response();
            caller.rate.write_headers(refused.headers_mut());
            return Ok(refused);
        }
    };
    let mut out = Response::new(Body::from_stream(super::fair::Admitted {
        body: response.body,
        _admission: admission,
        _armed: None,
        bytes: 0,
    }));
    *out.headers_mut() = response.meta.headers();
    let h = out.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    caller.rate.write_headers(h);
    Ok(out)
}

pub(super) async fn copyfrom<C: RedisConnection>(
    State(api): State<SqlApi<C>>,
    req: ApiRequest,
    body: Body,
) -> Response {
    respond(copy_in(&api, &req, body).await)
}

async fn copy_in<C: RedisConnection>(
    api: &SqlApi<C>,
    req: &ApiRequest,
    body: Body,
) -> Result<Response> {
    // The body is the data: the statement and the key come in the query string or headers.
    let params = Params::new(req.query.as_deref(), &HeaderMap::new(), &[])?;
    let (gate, sandbox) = (api.gate(), api.sandbox());
    let caller = gate
        .authenticate(&req.path, &req.headers, &params, Api::Sql, req.peer)
        .await?;
    if !caller.principal.may_write() {
        return Err(Error::Forbidden(
            "copyfrom writes a table: it needs a key that may write".into(),
        ));
    }
    let sql = params
        .get("q")
        .ok_or_else(|| Error::BadRequest("You must indicate a COPY … FROM STDIN query".into()))?;
    sandbox.check_query_size(sql)?;
    let copy = CopyStatement::new(sql)?;
    let options = sandbox
        .options_for(caller.principal.key())
        .access(Access::ReadWrite);
    let limit = options.bytes_allowed().unwrap_or(u64::MAX);
    let _admission = gate.admit(&caller)?;
    let pool = sandbox.pool_of(&caller.principal)?;
    let started = std::time::Instant::now();
    let encoding = req
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("identity");
    let data = body.into_data_stream();
    let rows = match encoding {
        "gzip" | "x-gzip" => sqlpass::copy_from(&pool, &copy, gunzip(data, limit), options).await,
        "identity" | "" => sqlpass::copy_from(&pool, &copy, data, options).await,
        other => {
            return Err(Error::UnsupportedMediaType(format!(
                "Content-Encoding {other} is not taken: send gzip or nothing"
            )));
        }
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let mut refused = Error::from(e).into_response();
            caller.rate.write_headers(refused.headers_mut());
            return Ok(refused);
        }
    };
    let mut response = (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "time": started.elapsed().as_secs_f64(),
            "total_rows": rows,
        })),
    )
        .into_response();
    caller.rate.write_headers(response.headers_mut());
    Ok(response)
}

/// `body` inflated from gzip as it arrives, failing past `limit` bytes inflated.
fn gunzip<S>(body: S, limit: u64) -> impl Stream<Item = std::result::Result<Bytes, String>> + Send
where
    S: Stream<Item = std::result::Result<Bytes, axum::Error>> + Unpin + Send,
{
    let decoder = flate2::write::GzDecoder::new(Vec::new());
    futures_util::stream::unfold(Some((body, decoder, 0_u64)), move |state| async move {
        let (mut body, mut decoder, mut total) = state?;
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    for slice in chunk.chunks(INFLATE_SLICE) {
                        if decoder.write_all(slice).is_err() {
                            return Some((Err("the gzip body is damaged".to_owned()), None));
                        }
                        if total + decoder.get_ref().len() as u64 > limit {
                            return Some((
                                Err(format!("the upload inflates beyond {limit} bytes")),
                                None,
                            ));
                        }
                    }
                    let out = std::mem::take(decoder.get_mut());
                    total += out.len() as u64;
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some((body, decoder, total))));
                    }
                }
                Some(Err(e)) => return Some((Err(format!("the upload failed: {e}")), None)),
                None => {
                    if decoder.try_finish().is_err() {
                        return Some((Err("the gzip body is cut short".to_owned()), None));
                    }
                    let out = std::mem::take(decoder.get_mut());
                    return (!out.is_empty()).then(|| (Ok(Bytes::from(out)), None));
                }
            }
        }
    })
}
