//! Validated user names.

use std::fmt;

use crate::{Error, Result};

/// The longest user name accepted.
const MAX_LEN: usize = 63;

/// A user name: 1 to 63 characters of lowercase ASCII letters, digits, `-` and `_`, starting
/// with a letter or digit (CARTO's user names fit). It is safe inside a Redis key and its hash
/// tag.
///
/// ```
/// use geoauth::UserName;
///
/// let user = UserName::new("alice-1").unwrap();
/// assert_eq!(user.as_str(), "alice-1");
/// assert!(UserName::new("Alice").is_err());
/// assert!(UserName::new("a{b}").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

impl UserName {
    /// Validates a user name.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when it is empty, too long, or has other characters.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_LEN
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
            && name
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if valid {
            Ok(Self(name))
        } else {
            Err(Error::invalid(
                "user name",
                "expected 1 to 63 of a-z 0-9 - _, starting with a letter or digit",
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for UserName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::UserName;

    #[test]
    fn accepts_carto_style_names_and_refuses_the_rest() {
        for ok in ["a", "alice", "bob-2", "team_x", "0day"] {
            assert!(UserName::new(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a b",
            "a:b",
            "a{b",
            "a}b",
            "é",
            long.as_str(),
        ] {
            assert!(UserName::new(bad).is_err(), "{bad:?}");
        }
    }
}
