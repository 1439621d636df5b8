//! Reading keys as CARTO writes them.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager};

use crate::record::external_id;
use crate::{
    Api, ApiKey, DbRole, Grants, KeyId, KeyKind, KeySource, Result, Secret, Token, TokenFormat,
    UserName,
};

/// Reads API keys from a CARTO Redis, exactly as CARTO writes them, so a service can
/// authenticate an existing CARTO installation's users.
///
/// - key `api_keys:<user>:<token>`, a hash with `user`, `type` (`master`, `default`,
///   `regular`), `database_role`, `database_password`, `grants_sql` and `grants_maps` (`"true"`
///   or absent). A hash counts as a key only when `type`, `user`, `database_role` and
///   `database_password` are all present (and `user` names the user asked for).
/// - user `rails:users:<user>`, a hash whose `database_name` and `database_host` say where the
///   user's SQL runs.
///
/// The token is part of the key name here (CARTO stores no digest), and table privileges live
/// in PostgreSQL grants of the key's role ([`crate::TableGrants::ByDatabaseRole`]). CARTO keeps
/// these hashes in Redis database 5 by default: connect with `redis://host:6379/5`. CARTO does
/// not announce changes, so a verifier's cache keeps CARTO keys at most its TTL.
///
/// ```no_run
/// # async fn demo() -> geoauth::Result<()> {
/// use geoauth::{CartoKeys, KeySource, Token, TokenFormat, UserName};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379/5")?;
/// let keys = CartoKeys::new(redis::aio::ConnectionManager::new(client).await?);
/// let token = Token::parse("default_public", TokenFormat::CartoCompatible)?;
/// let key = keys.lookup(&UserName::new("alice")?, &token).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CartoKeys<C = ConnectionManager> {
    conn: C,
}

impl<C> CartoKeys<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A reader on `conn`.
    pub fn new(conn: C) -> Self {
        Self { conn }
    }
}

#[async_trait]
impl<C> KeySource for CartoKeys<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn lookup(&self, user: &UserName, token: &Token) -> Result<Option<ApiKey>> {
        let key_name = format!("api_keys:{user}:{}", token.expose());
        // The key and its user's record in one round trip.
        let (fields, (database, host)): (
            HashMap<String, String>,
            (Option<String>, Option<String>),
        ) = redis::pipe()
            .cmd("HGETALL")
            .arg(&key_name)
            .cmd("HMGET")
            .arg(format!("rails:users:{user}"))
            .arg("database_name")
            .arg("database_host")
            .query_async(&mut self.conn.clone())
            .await?;
        let Some(mut key) = parse(user, token, &fields) else {
            return Ok(None);
        };
        key.database = database;
        key.database_host = host;
        Ok(Some(key))
    }

    /// Finds the key by scanning `user`'s CARTO key names (`SCAN … MATCH api_keys:<user>:*`),
    /// since CARTO indexes keys by token alone: a walk over the key space of the database,
    /// meant for occasional lookups (a batch query starting), not for every request.
    async fn get(&self, user: &UserName, id: &KeyId) -> Result<Option<ApiKey>> {
        let prefix = format!("api_keys:{user}:");
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        loop {
            let (next, names): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for name in &names {
                let Some(token) = name
                    .strip_prefix(&prefix)
                    .and_then(|t| Token::parse(t, TokenFormat::CartoCompatible).ok())
                else {
                    continue;
                };
                if carto_id(&token) == *id {
                    return self.lookup(user, &token).await;
                }
            }
            if next == 0 {
                return Ok(None);
            }
            cursor = next;
        }
    }

    fn invalidation_channel(&self) -> Option<String> {
        None
    }
}

/// A CARTO key's id: a short digest of its token, which is safe to show (CARTO keys have no
/// id of their own).
fn carto_id(token: &Token) -> KeyId {
    external_id(&format!("carto_{}", &token.digest().to_hex()[..16]))
}

/// A key from CARTO's hash fields; `None` when a required field is missing, the type is
/// unknown or the hash names another user.
fn parse(user: &UserName, token: &Token, fields: &HashMap<String, String>) -> Option<ApiKey> {
    let kind = KeyKind::parse(fields.get("type")?)?;
    if fields.get("user")? != user.as_str() {
        return None;
    }
    let role = fields.get("database_role")?;
    let password = fields.get("database_password")?;
    let granted = |field: &str| fields.get(field).is_some_and(|v| v == "true");
    let mut grants = Grants::new().tables_by_database_role();
    if granted("grants_sql") {
        grants = grants.api(Api::Sql);
    }
    if granted("grants_maps") {
        grants = grants.api(Api::Maps);
    }
    Some(ApiKey {
        id: carto_id(token),
        user: user.clone(),
        kind,
        name: kind.as_str().to_owned(),
        grants,
        db_role: DbRole::new(role.as_str(), Secret::new(password.as_str())),
        created: UNIX_EPOCH,
        expires: None,
        last_used: None,
        metadata: serde_json::Map::new(),
        database: None,
        database_host: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_complete_carto_hash_is_a_key_with_its_grants() {
        let user = UserName::new("alice").unwrap();
        let token = Token::parse("abc123", TokenFormat::CartoCompatible).unwrap();
        let key = parse(
            &user,
            &token,
            &fields(&[
                ("user", "alice"),
                ("type", "regular"),
                ("database_role", "alice_role"),
                ("database_password", "pw"),
                ("grants_sql", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(key.kind, KeyKind::Regular);
        assert!(key.grants.allows_api(Api::Sql));
        assert!(!key.grants.allows_api(Api::Maps));
        assert_eq!(key.db_role.name(), "alice_role");
        assert_eq!(key.db_role.password().expose(), "pw");
        assert!(key.id.as_str().starts_with("carto_"));
        assert!(!key.id.as_str().contains("abc123"));
    }

    #[test]
    fn a_hash_missing_a_required_field_is_no_key() {
        let user = UserName::new("alice").unwrap();
        let token = Token::parse("abc123", TokenFormat::CartoCompatible).unwrap();
        let full = [
            ("user", "alice"),
            ("type", "default"),
            ("database_role", "publicuser"),
            ("database_password", "pw"),
        ];
        assert!(parse(&user, &token, &fields(&full)).is_some());
        for skip in 0..full.len() {
            let partial: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            assert!(
                parse(&user, &token, &fields(&partial)).is_none(),
                "without {}",
                full[skip].0
            );
        }
        let other_user = [("user", "bob"), full[1], full[2], full[3]];
        assert!(parse(&user, &token, &fields(&other_user)).is_none());
        let odd_type = [full[0], ("type", "superuser"), full[2], full[3]];
        assert!(parse(&user, &token, &fields(&odd_type)).is_none());
    }
}
