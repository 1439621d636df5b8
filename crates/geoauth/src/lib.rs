#![doc = include_str!("../README.md")]

mod cache;
mod carto;
mod carto_grants;
mod credentials;
mod error;
#[cfg(feature = "tower")]
mod layer;
mod layout;
mod model;
mod principal;
mod ratelimit;
mod record;
mod scripts;
mod secret;
mod session;
mod source;
mod store;
mod token;
mod user;
mod verifier;

pub use carto::CartoKeys;
pub use credentials::{CredentialSource, Credentials};
pub use error::{Error, ErrorKind, Result};
#[cfg(feature = "tower")]
pub use layer::{Auth, AuthFuture, AuthLayer, refusal};
pub use layout::KeyPrefix;
pub use model::{Api, ApiKey, DbRole, Grants, KeyId, KeyKind, Privilege, TableGrants, TableName};
pub use principal::Principal;
pub use ratelimit::{Quota, RateDecision, RateLimiter, RateSubject};
pub use secret::Secret;
pub use session::{Channel, Session, SessionConfig, SessionId, SessionStore};
pub use source::KeySource;
pub use store::{KeyStore, NewKey};
pub use token::{DEFAULT_PUBLIC_TOKEN, MAX_TOKEN_LEN, Token, TokenDigest, TokenFormat};
pub use user::UserName;
pub use verifier::{Verifier, VerifierConfig};
