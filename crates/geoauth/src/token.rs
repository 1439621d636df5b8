//! API key tokens: generation, parsing without a lookup, and the digest that is stored.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Error, Result};

/// The prefix of every token this crate issues.
pub(crate) const NATIVE_PREFIX: &str = "gsk_";
/// Random base62 characters in a token: 32 × log2(62) ≈ 190 bits.
const RANDOM_CHARS: usize = 32;
/// Base62 characters of the checksum (62^6 > 2^32).
const CHECKSUM_CHARS: usize = 6;
const NATIVE_LEN: usize = NATIVE_PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS;
/// The token of every user's public key, as in CARTO: not a secret, it names the key that
/// anonymous requests use.
pub const DEFAULT_PUBLIC_TOKEN: &str = "default_public";
/// The longest token accepted in any format; longer input is refused before anything else.
pub const MAX_TOKEN_LEN: usize = 128;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Which tokens a verifier accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenFormat {
    /// Only tokens this crate issues: `gsk_`, 32 random base62 characters and a 6-character
    /// checksum. A mistyped token fails the checksum and is refused without a Redis call.
    #[default]
    Native,
    /// Also the tokens CARTO issues (and `default_public`): 1 to 128 of `A-Z a-z 0-9 - _`.
    /// Tokens that carry the native prefix must still pass the checksum.
    CartoCompatible,
}

/// A token as presented by a caller or returned once at creation. `Debug` and `Display` never
/// show it.
///
/// ```
/// use geoauth::{Token, TokenFormat};
///
/// let token = Token::generate().unwrap();
/// assert!(token.expose().starts_with("gsk_"));
/// assert_eq!(format!("{token:?}"), "Token([redacted])");
///
/// // A single changed character fails the checksum: refused with no lookup.
/// let mut typo = token.expose().to_owned();
/// let last = if typo.ends_with('0') { "1" } else { "0" };
/// typo.replace_range(typo.len() - 1.., last);
/// assert!(Token::parse(&typo, TokenFormat::Native).is_err());
/// assert_eq!(Token::parse(token.expose(), TokenFormat::Native).unwrap(), token);
/// ```
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// The token of a user's `default_public` key.
    pub fn default_public() -> Self {
        Self(DEFAULT_PUBLIC_TOKEN.to_owned())
    }

    /// A new random native token.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] when the operating system's random source fails.
    pub fn generate() -> Result<Self> {
        Ok(Self(checksummed(NATIVE_PREFIX)?))
    }

    /// Parses a token presented by a caller, checking length, characters and (native tokens)
    /// the checksum. No I/O.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedToken`] saying what is wrong, never echoing the input.
    pub fn parse(input: &str, format: TokenFormat) -> Result<Self> {
        let malformed = |reason| Error::MalformedToken { reason };
        if input.is_empty() {
            return Err(malformed("empty"));
        }
        if input.len() > MAX_TOKEN_LEN {
            return Err(malformed("too long"));
        }
        if !input
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return Err(malformed("unexpected characters"));
        }
        if input.starts_with(NATIVE_PREFIX) {
            if !has_valid_checksum(input, NATIVE_PREFIX) {
                return Err(malformed("bad checksum or length"));
            }
        } else if format == TokenFormat::Native && input != DEFAULT_PUBLIC_TOKEN {
            return Err(malformed("missing the gsk_ prefix"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The token itself: show it to its owner once, at creation; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest under which the key is stored.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }
}

impl PartialEq for Token {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// The SHA-256 digest of a token or session id: what Redis stores instead of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub(crate) fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex characters.
    pub(crate) fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not a secret, but a short form is all a reader needs.
        write!(f, "TokenDigest({}…)", &self.to_hex()[..12])
    }
}

/// Constant-time equality of two byte strings (the length is not hidden).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// `prefix` + random base62 + a base62 checksum of both.
pub(crate) fn checksummed(prefix: &str) -> Result<String> {
    let mut s = String::with_capacity(prefix.len() + RANDOM_CHARS + CHECKSUM_CHARS);
    s.push_str(prefix);
    s.push_str(&random_base62(RANDOM_CHARS)?);
    let sum = checksum(&s);
    s.push_str(&sum);
    Ok(s)
}

/// Whether `s` is `prefix` + 32 base62 + the right checksum.
pub(crate) fn has_valid_checksum(s: &str, prefix: &str) -> bool {
    if s.len() != NATIVE_LEN - NATIVE_PREFIX.len() + prefix.len() || !s.starts_with(prefix) {
        return false;
    }
    let (body, sum) = s.split_at(s.len() - CHECKSUM_CHARS);
    body[prefix.len()..]
        .bytes()
        .all(|c| c.is_ascii_alphanumeric())
        && ct_eq(checksum(body).as_bytes(), sum.as_bytes())
}

/// `n` characters of base62 from the operating system's random source, unbiased (bytes of
/// 248 and above are rejected: 248 = 4 × 62).
pub(crate) fn random_base62(n: usize) -> Result<String> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|_| Error::Random)?;
        for &b in &buf {
            if b < 248 && out.len() < n {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// The first 32 bits of SHA-256 of `body`, as 6 base62 characters.
fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let mut n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let mut out = [b'0'; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&c| char::from(c)).collect()
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_documented_shape_and_differ() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 42);
        assert!(a.expose().starts_with("gsk_"));
        assert!(a.expose()[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn every_single_character_typo_is_caught_by_the_checksum() {
        let token = Token::generate().unwrap();
        let s = token.expose();
        for i in 4..s.len() {
            let mut typo = s.as_bytes().to_vec();
            typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(typo).unwrap();
            let err = Token::parse(&typo, TokenFormat::CartoCompatible).unwrap_err();
            assert!(matches!(err, Error::MalformedToken { .. }), "position {i}");
        }
    }

    #[test]
    fn malformed_input_is_refused_with_a_reason_and_without_echo() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let cases = [
            ("", "empty"),
            (long.as_str(), "too long"),
            ("has space", "unexpected characters"),
            ("abc%00", "unexpected characters"),
            ("gsk_short", "bad checksum or length"),
            ("carto_token", "missing the gsk_ prefix"),
        ];
        for (input, reason) in cases {
            let err = Token::parse(input, TokenFormat::Native).unwrap_err();
            assert!(
                matches!(err, Error::MalformedToken { reason: r } if r == reason),
                "{input:?}: {err}"
            );
            if !input.is_empty() {
                assert!(!err.to_string().contains(input), "{err} echoes the input");
            }
        }
    }

    #[test]
    fn carto_tokens_are_accepted_only_in_the_compatible_format() {
        assert!(Token::parse("default_public", TokenFormat::Native).is_ok());
        for t in ["3c2d1e0f-aa", "AbC_123", "default_public2"] {
            assert!(Token::parse(t, TokenFormat::CartoCompatible).is_ok(), "{t}");
            assert!(Token::parse(t, TokenFormat::Native).is_err(), "{t}");
        }
    }

    #[test]
    fn digests_are_sha256_in_hex_and_round_trip() {
        let token = Token::parse("default_public", TokenFormat::CartoCompatible).unwrap();
        let hex = token.digest().to_hex();
        // sha256("default_public"), computed independently with `sha256sum`.
        assert_eq!(
            hex,
            "ce0e7c0e4562d9276c8398719bd3d66fe0e6071f082491426cb91572cd8b2a11"
        );
        assert_eq!(TokenDigest::from_hex(&hex), Some(token.digest()));
        assert_eq!(TokenDigest::from_hex("zz"), None);
    }

    #[test]
    fn unbiased_base62_uses_the_whole_alphabet() {
        let s = random_base62(4000).unwrap();
        assert_eq!(s.len(), 4000);
        for c in BASE62 {
            assert!(s.as_bytes().contains(c), "{} never drawn", char::from(*c));
        }
    }
}
