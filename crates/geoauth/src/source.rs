//! Where a verifier finds keys.

use async_trait::async_trait;

use crate::{ApiKey, Result, Token, UserName};

/// A place keys are read from: the native [`crate::KeyStore`] or CARTO's layout
/// ([`crate::CartoKeys`]). A verifier asks it once per uncached verification.
#[async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The key `token` of `user`, or `None` when there is none (unknown or revoked). One Redis
    /// round trip.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`] when Redis cannot be asked; [`crate::Error::Corrupt`] when
    /// the stored record cannot be read.
    async fn lookup(&self, user: &UserName, token: &Token) -> Result<Option<ApiKey>>;

    /// Records that a key was used (the verifier throttles the calls). The default does
    /// nothing.
    ///
    /// # Errors
    ///
    /// As [`KeySource::lookup`].
    async fn touch(&self, _user: &UserName, _key: &ApiKey, _token: &Token) -> Result<()> {
        Ok(())
    }

    /// The pub/sub channel on which this source announces changed keys, if it does.
    fn invalidation_channel(&self) -> Option<String>;
}
