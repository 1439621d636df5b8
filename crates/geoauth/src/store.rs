//! The native key store: records under a digest of the token, in Redis.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager};

use crate::layout::invalidation;
use crate::record::{self, from_millis, millis};
use crate::scripts::{CREATE_KEY, EXPIRE_KEY, REGENERATE_KEY, REVOKE_KEY, TOUCH_KEY};
use crate::{
    Api, ApiKey, DbRole, Error, Grants, KeyId, KeyKind, KeyPrefix, KeySource, Result, Token,
    TokenDigest, UserName,
};

/// What to create: see [`KeyStore::create`].
///
/// ```
/// use geoauth::{Api, DbRole, Grants, NewKey, Privilege, Secret};
///
/// let key = NewKey::regular("dashboard", DbRole::new("alice_dash", Secret::new("pw")))
///     .grants(Grants::new().api(Api::Sql).table("public.places".parse().unwrap(), [Privilege::Select]));
/// ```
#[derive(Clone, Debug)]
pub struct NewKey {
    kind: KeyKind,
    name: String,
    grants: Grants,
    db_role: DbRole,
    expires: Option<SystemTime>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

impl NewKey {
    /// A regular key: no grants until [`NewKey::grants`] gives some.
    pub fn regular(name: impl Into<String>, db_role: DbRole) -> Self {
        Self::new(KeyKind::Regular, name.into(), Grants::new(), db_role)
    }

    /// The owner's master key: every API; tables are left to its (owner) database role.
    pub fn master(db_role: DbRole) -> Self {
        let grants = Grants::new()
            .api(Api::Sql)
            .api(Api::Maps)
            .tables_by_database_role();
        Self::new(KeyKind::Master, "Master".into(), grants, db_role)
    }

    /// The user's public key (token `default_public`, one per user: creating it again replaces
    /// it): both APIs, and the tables [`NewKey::grants`] lists.
    pub fn default_public(db_role: DbRole) -> Self {
        let grants = Grants::new().api(Api::Sql).api(Api::Maps);
        Self::new(
            KeyKind::DefaultPublic,
            "Default public".into(),
            grants,
            db_role,
        )
    }

    fn new(kind: KeyKind, name: String, grants: Grants, db_role: DbRole) -> Self {
        Self {
            kind,
            name,
            grants,
            db_role,
            expires: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// What the key grants (replacing the kind's default; regular keys default to nothing).
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// When the key stops working (default: never).
    pub fn expires(mut self, at: SystemTime) -> Self {
        self.expires = Some(at);
        self
    }

    /// Free-form metadata (default: empty).
    pub fn metadata(mut self, metadata: serde_json::Map<String, serde_json::Value>) -> Self {
        self.metadata = metadata;
        self
    }
}

/// API keys in Redis, native layout: each record is a hash under the SHA-256 of its token
/// (`<prefix>{<user>}:key:<hex>`), indexed by id (`<prefix>{<user>}:ids`). Every change is one
/// Lua script that also publishes an invalidation for the verifiers' caches.
///
/// Generic over the connection: a [`ConnectionManager`] (the default) or a Redis Cluster
/// connection; all of one user's keys share a hash slot.
///
/// ```no_run
/// # async fn demo() -> geoauth::Result<()> {
/// use geoauth::{DbRole, KeyStore, NewKey, Secret, UserName};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let store = KeyStore::new(redis::aio::ConnectionManager::new(client).await?);
/// let alice = UserName::new("alice")?;
/// let (key, token) = store
///     .create(&alice, NewKey::master(DbRole::new("alice", Secret::new("pw"))))
///     .await?;
/// // Show `token.expose()` to its owner now: only its digest is stored.
/// assert_eq!(store.get(&alice, &key.id).await?.unwrap().id, key.id);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KeyStore<C = ConnectionManager> {
    conn: C,
    prefix: KeyPrefix,
}

impl<C> KeyStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store on `conn` under the default prefix `geoauth:`.
    pub fn new(conn: C) -> Self {
        Self::with_prefix(conn, KeyPrefix::default())
    }

    /// A store on `conn` under `prefix`.
    pub fn with_prefix(conn: C, prefix: KeyPrefix) -> Self {
        Self { conn, prefix }
    }

    /// The prefix.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    /// Creates a key and returns it with its token. The token is not stored (only its digest)
    /// and cannot be read again: hand it to its owner now.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn create(&self, user: &UserName, new: NewKey) -> Result<(ApiKey, Token)> {
        let token = match new.kind {
            KeyKind::DefaultPublic => Token::default_public(),
            _ => Token::generate()?,
        };
        let key = ApiKey {
            id: KeyId::generate()?,
            user: user.clone(),
            kind: new.kind,
            name: new.name,
            grants: new.grants,
            db_role: new.db_role,
            // Stored with millisecond precision: return what a read gives back.
            created: from_millis(millis(SystemTime::now())),
            expires: new.expires.map(|t| from_millis(millis(t))),
            last_used: None,
            metadata: new.metadata,
            database: None,
            database_host: None,
        };
        let digest = token.digest();
        let mut script = CREATE_KEY.prepare_invoke();
        script
            .key(self.prefix.key_record(user, &digest))
            .key(self.prefix.key_ids(user))
            .arg(key.id.as_str())
            .arg(digest.to_hex())
            .arg(key.expires.map_or(0, millis))
            .arg(self.prefix.channel())
            .arg(invalidation(user, Some(&digest)));
        for (field, value) in record::encode(&key) {
            script.arg(field).arg(value);
        }
        let _: i64 = script.invoke_async(&mut self.conn.clone()).await?;
        Ok((key, token))
    }

    /// The key `id` of `user`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked; [`Error::Corrupt`] for a damaged
    /// record.
    pub async fn get(&self, user: &UserName, id: &KeyId) -> Result<Option<ApiKey>> {
        match self.digest_of(user, id).await? {
            Some(digest) => self.read(user, &digest).await,
            None => Ok(None),
        }
    }

    /// Every key of `user`, ordered by id (one round trip for the index, one for the records).
    ///
    /// # Errors
    ///
    /// As [`KeyStore::get`].
    pub async fn list(&self, user: &UserName) -> Result<Vec<ApiKey>> {
        let ids: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.prefix.key_ids(user))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut digests = Vec::with_capacity(ids.len());
        for (_, hex) in ids {
            let digest = TokenDigest::from_hex(&hex)
                .ok_or_else(|| Error::corrupt(self.prefix.key_ids(user), "a digest is not hex"))?;
            digests.push(digest);
        }
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for digest in &digests {
            pipe.cmd("HGETALL")
                .arg(self.prefix.key_record(user, digest));
        }
        let records: Vec<HashMap<String, String>> =
            pipe.query_async(&mut self.conn.clone()).await?;
        let mut keys = Vec::with_capacity(records.len());
        for (digest, fields) in digests.iter().zip(records) {
            // A record that expired in Redis leaves its id behind until the next change.
            if !fields.is_empty() {
                keys.push(decode(&self.prefix.key_record(user, digest), &fields)?);
            }
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    /// Gives key `id` a new token and returns it. The old token keeps working until
    /// `old_valid_until` (an overlap window for rolling deployments); a time at or before now
    /// ends it at once. Returns `None` when there is no such key.
    ///
    /// # Errors
    ///
    /// As [`KeyStore::get`].
    pub async fn regenerate(
        &self,
        user: &UserName,
        id: &KeyId,
        old_valid_until: SystemTime,
    ) -> Result<Option<Token>> {
        let Some(old) = self.digest_of(user, id).await? else {
            return Ok(None);
        };
        let token = Token::generate()?;
        let new = token.digest();
        let done: i64 = REGENERATE_KEY
            .key(self.prefix.key_record(user, &old))
            .key(self.prefix.key_record(user, &new))
            .key(self.prefix.key_ids(user))
            .arg(id.as_str())
            .arg(old.to_hex())
            .arg(new.to_hex())
            .arg(millis(old_valid_until))
            .arg(millis(SystemTime::now()))
            .arg(self.prefix.channel())
            .arg(invalidation(user, Some(&old)))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((done == 1).then_some(token))
    }

    /// Revokes key `id`: its token is refused from now on, by every verifier. Returns whether
    /// there was such a key.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn revoke(&self, user: &UserName, id: &KeyId) -> Result<bool> {
        let Some(digest) = self.digest_of(user, id).await? else {
            return Ok(false);
        };
        let done: i64 = REVOKE_KEY
            .key(self.prefix.key_record(user, &digest))
            .key(self.prefix.key_ids(user))
            .arg(id.as_str())
            .arg(digest.to_hex())
            .arg(self.prefix.channel())
            .arg(invalidation(user, Some(&digest)))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(done == 1)
    }

    /// Sets when key `id` stops working. Returns whether there was such a key.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn expire(&self, user: &UserName, id: &KeyId, at: SystemTime) -> Result<bool> {
        let Some(digest) = self.digest_of(user, id).await? else {
            return Ok(false);
        };
        let done: i64 = EXPIRE_KEY
            .key(self.prefix.key_record(user, &digest))
            .key(self.prefix.key_ids(user))
            .arg(id.as_str())
            .arg(digest.to_hex())
            .arg(millis(at).max(1))
            .arg(self.prefix.channel())
            .arg(invalidation(user, Some(&digest)))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(done == 1)
    }

    async fn digest_of(&self, user: &UserName, id: &KeyId) -> Result<Option<TokenDigest>> {
        let hex: Option<String> = redis::cmd("HGET")
            .arg(self.prefix.key_ids(user))
            .arg(id.as_str())
            .query_async(&mut self.conn.clone())
            .await?;
        match hex {
            Some(hex) => TokenDigest::from_hex(&hex)
                .map(Some)
                .ok_or_else(|| Error::corrupt(self.prefix.key_ids(user), "a digest is not hex")),
            None => Ok(None),
        }
    }

    async fn read(&self, user: &UserName, digest: &TokenDigest) -> Result<Option<ApiKey>> {
        let key = self.prefix.key_record(user, digest);
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode(&key, &fields).map(Some)
    }
}

fn decode(key: &str, fields: &HashMap<String, String>) -> Result<ApiKey> {
    record::decode(fields).map_err(|reason| Error::corrupt(key, reason))
}

#[async_trait]
impl<C> KeySource for KeyStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn lookup(&self, user: &UserName, token: &Token) -> Result<Option<ApiKey>> {
        let key = self.read(user, &token.digest()).await?;
        // A record read under the user's tag names that user; anything else is damage.
        match key {
            Some(k) if &k.user != user => Err(Error::corrupt(
                self.prefix.key_record(user, &token.digest()),
                "record names another user",
            )),
            other => Ok(other),
        }
    }

    async fn get(&self, user: &UserName, id: &KeyId) -> Result<Option<ApiKey>> {
        KeyStore::get(self, user, id).await
    }

    async fn touch(&self, user: &UserName, _key: &ApiKey, token: &Token) -> Result<()> {
        let _: i64 = TOUCH_KEY
            .key(self.prefix.key_record(user, &token.digest()))
            .arg(millis(SystemTime::now()))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    fn invalidation_channel(&self) -> Option<String> {
        Some(self.prefix.channel())
    }
}
