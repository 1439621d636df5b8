//! Credentials from an HTTP request, in CARTO's order of precedence.

use base64::Engine;
use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::token::ct_eq;
use crate::{Error, Result, Token, TokenFormat, UserName};

/// Where a request's key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// `Authorization: Basic base64(user:token)`.
    Basic,
    /// The `api_key` query parameter.
    ApiKeyParam,
    /// The `map_key` query parameter.
    MapKeyParam,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The `X-Api-Key` header.
    XApiKey,
    /// None: the user's `default_public` key applies.
    None,
}

/// The credentials a request carries, parsed and checked without any I/O.
///
/// Precedence, as in CARTO's SQL and Maps APIs: `Authorization: Basic` (whose user must be the
/// request's user), then `api_key`, then `map_key` in the query string; then
/// `Authorization: Bearer` and `X-Api-Key`. The first one present wins, even when it is
/// malformed (a bad credential is never silently replaced by a weaker one). An empty
/// parameter counts as absent.
///
/// ```
/// use geoauth::{CredentialSource, Credentials, TokenFormat, UserName};
///
/// let req = http::Request::get("/api/v2/sql?q=select+1&api_key=default_public")
///     .body(())
///     .unwrap();
/// let (parts, ()) = req.into_parts();
/// let alice = UserName::new("alice").unwrap();
/// let creds = Credentials::from_request(&parts, &alice, TokenFormat::Native).unwrap();
/// assert_eq!(creds.source(), CredentialSource::ApiKeyParam);
/// ```
#[derive(Clone, Debug)]
pub struct Credentials {
    token: Option<Token>,
    source: CredentialSource,
}

impl Credentials {
    /// No credentials: the `default_public` key applies.
    pub fn none() -> Self {
        Self {
            token: None,
            source: CredentialSource::None,
        }
    }

    /// A token from somewhere else (a form body, a session).
    pub fn token(token: Token, source: CredentialSource) -> Self {
        Self {
            token: Some(token),
            source,
        }
    }

    /// The credentials of a request to `user`'s data.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedToken`] or [`Error::MalformedCredentials`] (401) for credentials that
    /// cannot be right; [`Error::UserMismatch`] (403) when Basic credentials name another user.
    pub fn from_request(
        parts: &http::request::Parts,
        user: &UserName,
        format: TokenFormat,
    ) -> Result<Self> {
        Self::from_headers_and_query(&parts.headers, parts.uri.query(), user, format)
    }

    /// As [`Credentials::from_request`], from the headers and the raw query string.
    ///
    /// # Errors
    ///
    /// As [`Credentials::from_request`].
    pub fn from_headers_and_query(
        headers: &HeaderMap,
        query: Option<&str>,
        user: &UserName,
        format: TokenFormat,
    ) -> Result<Self> {
        let authorization = match headers.get(AUTHORIZATION) {
            Some(v) => Some(v.to_str().map_err(|_| Error::MalformedCredentials {
                reason: "authorization header is not ASCII",
            })?),
            None => None,
        };
        let (scheme, rest) = authorization
            .map(|a| a.split_once(' ').unwrap_or((a, "")))
            .unwrap_or_default();

        if scheme.eq_ignore_ascii_case("basic") {
            let token = basic_token(rest.trim(), user)?;
            return Self::parsed(&token, CredentialSource::Basic, format);
        }
        if let Some(query) = query {
            let (mut api_key, mut map_key) = (None, None);
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                match &*name {
                    "api_key" if api_key.is_none() && !value.is_empty() => api_key = Some(value),
                    "map_key" if map_key.is_none() && !value.is_empty() => map_key = Some(value),
                    _ => {}
                }
            }
            if let Some(token) = api_key {
                return Self::parsed(&token, CredentialSource::ApiKeyParam, format);
            }
            if let Some(token) = map_key {
                return Self::parsed(&token, CredentialSource::MapKeyParam, format);
            }
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return Self::parsed(rest.trim(), CredentialSource::Bearer, format);
        }
        if authorization.is_some() {
            return Err(Error::MalformedCredentials {
                reason: "unsupported authorization scheme",
            });
        }
        if let Some(value) = headers.get("x-api-key") {
            let value = value.to_str().map_err(|_| Error::MalformedToken {
                reason: "unexpected characters",
            })?;
            return Self::parsed(value.trim(), CredentialSource::XApiKey, format);
        }
        Ok(Self::none())
    }

    fn parsed(token: &str, source: CredentialSource, format: TokenFormat) -> Result<Self> {
        Ok(Self::token(Token::parse(token, format)?, source))
    }

    /// The token, if any.
    pub fn token_ref(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// Where it came from.
    pub fn source(&self) -> CredentialSource {
        self.source
    }
}

/// The token of `base64(user:token)`, checking the user.
fn basic_token(encoded: &str, user: &UserName) -> Result<String> {
    let malformed = |reason| Error::MalformedCredentials { reason };
    if encoded.len() > 4 * (crate::token::MAX_TOKEN_LEN + 64) / 3 + 4 {
        return Err(malformed("basic credentials too long"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| malformed("basic credentials are not base64"))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| malformed("basic credentials are not UTF-8"))?;
    let (name, token) = decoded
        .split_once(':')
        .ok_or(malformed("basic credentials are not user:token"))?;
    if !ct_eq(name.as_bytes(), user.as_str().as_bytes()) {
        return Err(Error::UserMismatch);
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uri: &str, headers: &[(&str, &str)]) -> Result<Credentials> {
        let mut req = http::Request::get(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let user = UserName::new("alice").unwrap();
        Credentials::from_request(&parts, &user, TokenFormat::CartoCompatible)
    }

    fn basic(user_token: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_token)
        )
    }

    #[test]
    fn precedence_is_basic_then_api_key_then_map_key_then_bearer_then_header() {
        let from_basic = basic("alice:from_basic");
        let all = [
            ("authorization", from_basic.as_str()),
            ("x-api-key", "from_header"),
        ];
        let c = creds("/?api_key=from_param&map_key=from_map", &all).unwrap();
        assert_eq!(c.source(), CredentialSource::Basic);
        assert_eq!(c.token_ref().unwrap().expose(), "from_basic");

        let c = creds(
            "/?map_key=from_map&api_key=from_param",
            &[("x-api-key", "h")],
        )
        .unwrap();
        assert_eq!(c.source(), CredentialSource::ApiKeyParam);
        assert_eq!(c.token_ref().unwrap().expose(), "from_param");

        let c = creds("/?map_key=from_map", &[("authorization", "Bearer b")]).unwrap();
        assert_eq!(c.source(), CredentialSource::MapKeyParam);

        let c = creds(
            "/?api_key=",
            &[("authorization", "Bearer tok"), ("x-api-key", "h")],
        )
        .unwrap();
        assert_eq!(c.source(), CredentialSource::Bearer);
        assert_eq!(c.token_ref().unwrap().expose(), "tok");

        let c = creds("/", &[("x-api-key", "hdr")]).unwrap();
        assert_eq!(c.source(), CredentialSource::XApiKey);

        let c = creds("/?q=select%201", &[]).unwrap();
        assert_eq!(c.source(), CredentialSource::None);
        assert!(c.token_ref().is_none());
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let c = creds("/?api_key=ab%5Fcd", &[]).unwrap();
        assert_eq!(c.token_ref().unwrap().expose(), "ab_cd");
    }

    #[test]
    fn basic_for_another_user_is_forbidden() {
        let err = creds("/", &[("authorization", &basic("bob:tok"))]).unwrap_err();
        assert!(matches!(err, Error::UserMismatch));
        assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn malformed_credentials_are_refused_not_skipped() {
        for (uri, headers) in [
            ("/", vec![("authorization", "Basic !!!")]),
            ("/", vec![("authorization", "Basic YWxpY2U=")]), // "alice", no colon
            ("/", vec![("authorization", "Digest x")]),
            ("/?api_key=has%20space", vec![]),
            ("/", vec![("authorization", "Bearer ")]),
        ] {
            let err = creds(uri, &headers).unwrap_err();
            assert_eq!(
                err.status(),
                http::StatusCode::UNAUTHORIZED,
                "{uri} {headers:?}: {err}"
            );
        }
        // A malformed api_key is not replaced by a valid header further down the order.
        let err = creds("/?api_key=bad%21", &[("x-api-key", "good")]).unwrap_err();
        assert!(matches!(err, Error::MalformedToken { .. }));
    }
}
