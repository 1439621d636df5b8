//! Web and app sessions in Redis.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionLike, ConnectionManager};

use crate::record::{from_millis, millis};
use crate::scripts::{
    SESSION_CREATE, SESSION_LOAD, SESSION_REVOKE, SESSION_REVOKE_ALL, SESSION_ROTATE,
};
use crate::token::{checksummed, ct_eq, has_valid_checksum};
use crate::{Error, KeyPrefix, Result, TokenDigest, UserName};

const SESSION_PREFIX: &str = "gss_";

/// The channel a session was issued on; it is accepted only there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Channel {
    /// A browser, with the id in a cookie.
    Web,
    /// An application, with the id in a request header.
    App,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::App => "app",
        }
    }
}

/// A session id: `gss_`, 32 random base62 characters (≈190 bits) and a checksum. Only its
/// SHA-256 is stored. `Debug` and `Display` never show it.
///
/// ```
/// let err = geoauth::SessionId::parse("gss_forged").unwrap_err();
/// assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
/// ```
#[derive(Clone)]
pub struct SessionId(String);

impl SessionId {
    /// Parses an id presented by a client; a forged or mistyped one fails the checksum without
    /// a Redis call.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSession`].
    pub fn parse(input: &str) -> Result<Self> {
        if has_valid_checksum(input, SESSION_PREFIX) {
            Ok(Self(input.to_owned()))
        } else {
            Err(Error::InvalidSession)
        }
    }

    /// The id, to put in the cookie or hand to the app; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }

    fn generate() -> Result<Self> {
        Ok(Self(checksummed(SESSION_PREFIX)?))
    }
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for SessionId {}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

/// A live session.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Session {
    /// Its owner.
    pub user: UserName,
    /// The channel it was issued on.
    pub channel: Channel,
    /// When it began.
    pub created: SystemTime,
    /// When it ends whatever the activity.
    pub absolute_expiry: SystemTime,
    /// What the service keeps in it (the privilege level, a key id…).
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// Idle and absolute lifetimes of sessions. Every setter's doc gives its default.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    idle: Duration,
    absolute: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 60 * 60),
        }
    }
}

impl SessionConfig {
    /// A session unused this long ends. Default 30 minutes.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// A session ends this long after it began, however active. Default 12 hours.
    pub fn absolute(mut self, absolute: Duration) -> Self {
        self.absolute = absolute;
        self
    }
}

/// Sessions in Redis: `<prefix>{<user>}:session:<sha256 of id>`, listed per user for
/// revoke-all. Each call is one script (one round trip).
///
/// ```no_run
/// # async fn demo() -> geoauth::Result<()> {
/// use geoauth::{Channel, SessionConfig, SessionStore, UserName};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let sessions = SessionStore::new(redis::aio::ConnectionManager::new(client).await?, SessionConfig::default());
/// let alice = UserName::new("alice")?;
/// let id = sessions.create(&alice, Channel::Web, serde_json::Map::new()).await?;
/// let session = sessions.load(&alice, &id, Channel::Web).await?;
/// // After a login or a privilege change, a new id; the old one is dead at once.
/// let id = sessions.rotate(&alice, &id, Channel::Web, None).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SessionStore<C = ConnectionManager> {
    conn: C,
    prefix: KeyPrefix,
    config: SessionConfig,
}

impl<C> SessionStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Sessions on `conn` under the default prefix `geoauth:`.
    pub fn new(conn: C, config: SessionConfig) -> Self {
        Self::with_prefix(conn, KeyPrefix::default(), config)
    }

    /// Sessions on `conn` under `prefix`.
    pub fn with_prefix(conn: C, prefix: KeyPrefix, config: SessionConfig) -> Self {
        Self {
            conn,
            prefix,
            config,
        }
    }

    /// Starts a session for `user` on `channel`.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn create(
        &self,
        user: &UserName,
        channel: Channel,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<SessionId> {
        let id = SessionId::generate()?;
        let digest = id.digest();
        let now = SystemTime::now();
        let absolute = now + self.config.absolute;
        let mut script = SESSION_CREATE.prepare_invoke();
        script
            .key(self.prefix.session(user, &digest))
            .key(self.prefix.sessions(user))
            .arg(digest.to_hex())
            .arg(ms(self.config.idle))
            .arg(millis(absolute))
            .arg(millis(now));
        let data = serde_json::Value::Object(data).to_string();
        let created = millis(now).to_string();
        let absolute = millis(absolute).to_string();
        for (field, value) in [
            ("user", user.as_str()),
            ("channel", channel.as_str()),
            ("created", &created),
            ("absolute", &absolute),
            ("last_seen", &created),
            ("data", &data),
        ] {
            script.arg(field).arg(value);
        }
        let _: i64 = script.invoke_async(&mut self.conn.clone()).await?;
        Ok(id)
    }

    /// The session `id` of `user`, presented on `channel`; extends its idle expiry.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSession`] when it is unknown, expired, revoked or presented on another
    /// channel; [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn load(&self, user: &UserName, id: &SessionId, channel: Channel) -> Result<Session> {
        let key = self.prefix.session(user, &id.digest());
        let reply: redis::Value = SESSION_LOAD
            .key(&key)
            .arg(channel.as_str())
            .arg(ms(self.config.idle))
            .arg(millis(SystemTime::now()))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let fields = match reply {
            redis::Value::Array(items) => items,
            _ => return Err(Error::InvalidSession),
        };
        let fields: Vec<String> = fields
            .into_iter()
            .skip(1)
            .map(|v| redis::from_redis_value(v).map_err(|_| Error::corrupt(&key, "not text")))
            .collect::<Result<_>>()?;
        let map: HashMap<&str, &str> = fields
            .chunks_exact(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect();
        decode_session(&map, channel).ok_or_else(|| Error::corrupt(key, "session fields"))
    }

    /// Gives the session a new id and returns it; the old id is dead at once. Call it on login
    /// and on every privilege change; `data`, when given, replaces the session's data.
    ///
    /// # Errors
    ///
    /// As [`SessionStore::load`].
    pub async fn rotate(
        &self,
        user: &UserName,
        id: &SessionId,
        channel: Channel,
        data: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<SessionId> {
        let new = SessionId::generate()?;
        let (old_digest, new_digest) = (id.digest(), new.digest());
        let done: i64 = SESSION_ROTATE
            .key(self.prefix.session(user, &old_digest))
            .key(self.prefix.session(user, &new_digest))
            .key(self.prefix.sessions(user))
            .arg(old_digest.to_hex())
            .arg(new_digest.to_hex())
            .arg(channel.as_str())
            .arg(ms(self.config.idle))
            .arg(millis(SystemTime::now()))
            .arg(data.map_or_else(String::new, |d| serde_json::Value::Object(d).to_string()))
            .invoke_async(&mut self.conn.clone())
            .await?;
        if done == 1 {
            Ok(new)
        } else {
            Err(Error::InvalidSession)
        }
    }

    /// Ends session `id`. Returns whether it was live.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn revoke(&self, user: &UserName, id: &SessionId) -> Result<bool> {
        let digest = id.digest();
        let n: i64 = SESSION_REVOKE
            .key(self.prefix.session(user, &digest))
            .key(self.prefix.sessions(user))
            .arg(digest.to_hex())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Ends every session of `user` (logout everywhere, a password change).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be asked.
    pub async fn revoke_all(&self, user: &UserName) -> Result<()> {
        const BATCH: isize = 256;
        loop {
            let digests: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.prefix.sessions(user))
                .arg(0)
                .arg(BATCH - 1)
                .query_async(&mut self.conn.clone())
                .await?;
            if digests.is_empty() {
                return Ok(());
            }
            let mut script = SESSION_REVOKE_ALL.prepare_invoke();
            script.key(self.prefix.sessions(user));
            for hex in &digests {
                let digest = TokenDigest::from_hex(hex).ok_or_else(|| {
                    Error::corrupt(self.prefix.sessions(user), "a digest is not hex")
                })?;
                script.key(self.prefix.session(user, &digest)).arg(hex);
            }
            let left: i64 = script.invoke_async(&mut self.conn.clone()).await?;
            if left == 0 {
                return Ok(());
            }
        }
    }
}

fn decode_session(fields: &HashMap<&str, &str>, channel: Channel) -> Option<Session> {
    let time = |name| fields.get(name)?.parse::<u64>().ok().map(from_millis);
    let data = match serde_json::from_str(fields.get("data")?).ok()? {
        serde_json::Value::Object(map) => map,
        _ => return None,
    };
    Some(Session {
        user: UserName::new(*fields.get("user")?).ok()?,
        channel,
        created: time("created")?,
        absolute_expiry: time("absolute")?,
        data,
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checksummed_and_redacted() {
        let id = SessionId::generate().unwrap();
        assert_eq!(id.expose().len(), 42);
        assert_eq!(SessionId::parse(id.expose()).unwrap(), id);
        assert_eq!(format!("{id:?}"), "SessionId([redacted])");
        let mut forged = id.expose().to_owned();
        forged.replace_range(10..11, if &forged[10..11] == "x" { "y" } else { "x" });
        assert!(matches!(
            SessionId::parse(&forged),
            Err(Error::InvalidSession)
        ));
        // A key token is not a session id.
        let token = crate::Token::generate().unwrap();
        assert!(SessionId::parse(token.expose()).is_err());
    }
}
