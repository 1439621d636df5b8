//! Where a verifier finds keys.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{ApiKey, KeyId, Result, Token, UserName};

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

    /// The key `id` of `user` (for work queued under a key and run later, such as a batch
    /// query, which keeps the key's id and never its token). The default finds nothing: a
    /// source that cannot look keys up by id answers `None`.
    ///
    /// # Errors
    ///
    /// As [`KeySource::lookup`].
    async fn get(&self, _user: &UserName, _id: &KeyId) -> Result<Option<ApiKey>> {
        Ok(None)
    }

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

/// A shared source is a source: a server may hold `Arc<dyn KeySource>` and pick the layout at
/// start.
#[async_trait]
impl<S: KeySource + ?Sized> KeySource for Arc<S> {
    async fn lookup(&self, user: &UserName, token: &Token) -> Result<Option<ApiKey>> {
        (**self).lookup(user, token).await
    }

    async fn get(&self, user: &UserName, id: &KeyId) -> Result<Option<ApiKey>> {
        (**self).get(user, id).await
    }

    async fn touch(&self, user: &UserName, key: &ApiKey, token: &Token) -> Result<()> {
        (**self).touch(user, key, token).await
    }

    fn invalidation_channel(&self) -> Option<String> {
        (**self).invalidation_channel()
    }
}
