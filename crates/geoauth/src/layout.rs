//! Names of the native layout's Redis keys. Every key of one user shares the hash tag
//! `{<user>}`, so a user's keys live in one Redis Cluster slot and one script may touch them.

use crate::{Error, Result, TokenDigest, UserName};

/// The prefix all of geoauth's Redis keys start with (default `geoauth:`).
///
/// ```
/// let prefix = geoauth::KeyPrefix::new("myapp:auth:").unwrap();
/// assert_eq!(prefix.as_str(), "myapp:auth:");
/// assert!(geoauth::KeyPrefix::new("bad{tag}").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// A prefix of at most 64 printable ASCII characters without `{`, `}` or spaces (a brace
    /// would change the key's hash tag).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] otherwise.
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        let ok = prefix.len() <= 64
            && prefix
                .bytes()
                .all(|c| c.is_ascii_graphic() && c != b'{' && c != b'}');
        if ok {
            Ok(Self(prefix))
        } else {
            Err(Error::invalid(
                "key prefix",
                "expected at most 64 printable characters without braces",
            ))
        }
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A native key record: `<prefix>{<user>}:key:<sha256 hex>`.
    pub(crate) fn key_record(&self, user: &UserName, digest: &TokenDigest) -> String {
        format!("{}{{{user}}}:key:{}", self.0, digest.to_hex())
    }

    /// A user's index of key ids: `<prefix>{<user>}:ids`.
    pub(crate) fn key_ids(&self, user: &UserName) -> String {
        format!("{}{{{user}}}:ids", self.0)
    }

    /// A session record: `<prefix>{<user>}:session:<sha256 hex>`.
    pub(crate) fn session(&self, user: &UserName, digest: &TokenDigest) -> String {
        format!("{}{{{user}}}:session:{}", self.0, digest.to_hex())
    }

    /// A user's set of session digests: `<prefix>{<user>}:sessions`.
    pub(crate) fn sessions(&self, user: &UserName) -> String {
        format!("{}{{{user}}}:sessions", self.0)
    }

    /// A rate-limit cell: `<prefix>{<user>}:rate:<group>:<subject>`.
    pub(crate) fn rate(&self, user: &UserName, group: &str, subject: &str) -> String {
        format!("{}{{{user}}}:rate:{group}:{subject}", self.0)
    }

    /// The pub/sub channel that carries cache invalidations: `<prefix>invalidate`.
    pub(crate) fn channel(&self) -> String {
        format!("{}invalidate", self.0)
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self("geoauth:".to_owned())
    }
}

/// An invalidation message: `<user> <digest hex>`, or `<user> *` for all of a user's keys.
pub(crate) fn invalidation(user: &UserName, digest: Option<&TokenDigest>) -> String {
    match digest {
        Some(d) => format!("{user} {}", d.to_hex()),
        None => format!("{user} *"),
    }
}

/// Parses an invalidation message; `None` for the digest means every key of the user.
pub(crate) fn parse_invalidation(msg: &str) -> Option<(UserName, Option<TokenDigest>)> {
    let (user, rest) = msg.split_once(' ')?;
    let user = UserName::new(user).ok()?;
    if rest == "*" {
        Some((user, None))
    } else {
        Some((user, Some(TokenDigest::from_hex(rest)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Token, TokenFormat};

    #[test]
    fn one_users_keys_share_a_hash_tag() {
        let p = KeyPrefix::default();
        let user = UserName::new("alice").unwrap();
        let digest = Token::parse("default_public", TokenFormat::Native)
            .unwrap()
            .digest();
        assert_eq!(
            p.key_record(&user, &digest),
            format!("geoauth:{{alice}}:key:{}", digest.to_hex())
        );
        assert_eq!(p.key_ids(&user), "geoauth:{alice}:ids");
        assert_eq!(p.sessions(&user), "geoauth:{alice}:sessions");
        assert_eq!(
            p.rate(&user, "sql", "key_x"),
            "geoauth:{alice}:rate:sql:key_x"
        );
        let keys = [
            p.key_record(&user, &digest),
            p.key_ids(&user),
            p.session(&user, &digest),
            p.sessions(&user),
            p.rate(&user, "maps", "key_y"),
        ];
        for key in keys {
            assert_eq!(hash_tag(&key), "alice", "{key}");
        }
    }

    /// The part of a key Redis Cluster hashes: the content of the first non-empty `{…}`.
    fn hash_tag(key: &str) -> &str {
        let Some(open) = key.find('{') else {
            return key;
        };
        match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        }
    }

    #[test]
    fn invalidations_round_trip() {
        let user = UserName::new("bob").unwrap();
        let digest = Token::generate().unwrap().digest();
        let msg = invalidation(&user, Some(&digest));
        assert_eq!(parse_invalidation(&msg), Some((user.clone(), Some(digest))));
        assert_eq!(
            parse_invalidation(&invalidation(&user, None)),
            Some((user, None))
        );
        assert_eq!(parse_invalidation("garbage"), None);
        assert_eq!(parse_invalidation("bob nothex"), None);
    }
}
