//! Verification: credentials → principal, with a cache whose invalidations arrive through Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::layout::parse_invalidation;
use crate::{Credentials, Error, KeySource, Principal, Result, Token, TokenFormat, UserName};

/// How a [`Verifier`] behaves. Every setter's doc gives its default.
///
/// ```
/// use std::time::Duration;
///
/// let config = geoauth::VerifierConfig::default()
///     .cache_ttl(Duration::from_secs(30))
///     .cache_capacity(50_000);
/// ```
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    token_format: TokenFormat,
    cache_capacity: usize,
    cache_ttl: Duration,
    negative_ttl: Duration,
    touch_interval: Duration,
    heartbeat: Duration,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            token_format: TokenFormat::Native,
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(2),
            touch_interval: Duration::from_secs(60),
            heartbeat: Duration::from_secs(1),
        }
    }
}

impl VerifierConfig {
    /// Which tokens requests may carry. Default [`TokenFormat::Native`].
    pub fn token_format(mut self, format: TokenFormat) -> Self {
        self.token_format = format;
        self
    }

    /// The most keys cached at once; 0 turns the cache off. Default 10 000.
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// How long a key stays cached. Invalidations end it sooner. Default 60 s.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long "no such key" stays cached. Default 2 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The least time between two writes of a key's last-used time. Default 60 s.
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.touch_interval = interval;
        self
    }

    /// How often the invalidation subscription is checked with a PING; a missed answer drops
    /// the cache until the subscription is back. Default 1 s.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }
}

/// Verifies credentials against a [`KeySource`]: one Redis round trip uncached, none cached.
///
/// With [`Verifier::with_cache`], answers are cached in process, and the source's changes
/// (revoke, regenerate, expire) arrive on its pub/sub channel and evict the entry in every
/// process at once. While the subscription is down, the cache is bypassed, so a revoked key is
/// never served from a cache that could have missed its invalidation.
///
/// ```no_run
/// # async fn demo(parts: http::request::Parts) -> geoauth::Result<()> {
/// use geoauth::{Api, Credentials, KeyStore, Verifier, VerifierConfig, UserName};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let store = KeyStore::new(redis::aio::ConnectionManager::new(client.clone()).await?);
/// let verifier = Verifier::with_cache(store, client, VerifierConfig::default()).await;
///
/// let user = UserName::new("alice")?;
/// let creds = Credentials::from_request(&parts, &user, verifier.token_format())?;
/// let principal = verifier.verify(&user, &creds).await?;
/// principal.authorize(Api::Sql)?;
/// # Ok(()) }
/// ```
pub struct Verifier<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Verifier<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S> {
    source: Arc<S>,
    config: VerifierConfig,
    cache: Option<Cache>,
    /// Whether cached answers may be served (the invalidation subscription is up, or the
    /// source announces nothing and the TTL alone bounds staleness).
    live: AtomicBool,
    touched: Mutex<HashMap<crate::TokenDigest, Instant>>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl<S> Drop for Inner<S> {
    fn drop(&mut self) {
        if let Some(task) = self
            .listener
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl<S: KeySource> Verifier<S> {
    /// A verifier without a cache: every verification asks the source.
    pub fn new(source: S, config: VerifierConfig) -> Self {
        Self::build(source, config, false)
    }

    /// A verifier with a cache, subscribed through `client` (a connection of its own) to the
    /// source's invalidation channel. Waits up to 2 s for the subscription; until it is up (and
    /// whenever it drops) verifications go to Redis. Must run inside a tokio runtime.
    pub async fn with_cache(source: S, client: redis::Client, config: VerifierConfig) -> Self {
        let channel = source.invalidation_channel();
        let verifier = Self::build(source, config, channel.is_none());
        if let Some(channel) = channel {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let weak = Arc::downgrade(&verifier.inner);
            let heartbeat = verifier.inner.config.heartbeat;
            let task = tokio::spawn(listen(weak, client, channel, heartbeat, ready_tx));
            *verifier
                .inner
                .listener
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
            let _ = tokio::time::timeout(Duration::from_secs(2), ready_rx).await;
        }
        verifier
    }

    fn build(source: S, config: VerifierConfig, live: bool) -> Self {
        let cache = (config.cache_capacity > 0)
            .then(|| Cache::new(config.cache_capacity, config.cache_ttl, config.negative_ttl));
        Self {
            inner: Arc::new(Inner {
                source: Arc::new(source),
                config,
                cache,
                live: AtomicBool::new(live),
                touched: Mutex::new(HashMap::new()),
                listener: Mutex::new(None),
            }),
        }
    }

    /// The token format requests are parsed with.
    pub fn token_format(&self) -> TokenFormat {
        self.inner.config.token_format
    }

    /// Whether cached answers are being served now.
    pub fn is_cache_live(&self) -> bool {
        self.inner.cache.is_some() && self.inner.live.load(Ordering::Acquire)
    }

    /// The source keys are read from.
    pub fn source(&self) -> &S {
        &self.inner.source
    }

    /// Verifies `credentials` for a request to `user`'s data. No credentials means the user's
    /// `default_public` key.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`], [`Error::ExpiredKey`], [`Error::NoPublicKey`] (401);
    /// [`Error::Unavailable`] (503) when Redis cannot be asked.
    pub async fn verify(&self, user: &UserName, credentials: &Credentials) -> Result<Principal> {
        let default_public;
        let (token, anonymous) = match credentials.token_ref() {
            Some(token) => (token, false),
            None => {
                default_public = Token::default_public();
                (&default_public, true)
            }
        };
        let digest = token.digest();
        let now = Instant::now();
        let inner = &*self.inner;
        let cache = inner
            .cache
            .as_ref()
            .filter(|_| inner.live.load(Ordering::Acquire));
        let key = match cache.and_then(|c| c.get(user, &digest, now)) {
            Some(hit) => hit.key,
            None => {
                let epoch = cache.map(Cache::epoch);
                let key = inner.source.lookup(user, token).await?.map(Arc::new);
                if let (Some(cache), Some(epoch)) = (cache, epoch) {
                    cache.put(user, &digest, key.clone(), epoch, now);
                }
                key
            }
        };
        let Some(key) = key else {
            return Err(if anonymous {
                Error::NoPublicKey
            } else {
                Error::UnknownKey
            });
        };
        if key.is_expired_at(SystemTime::now()) {
            return Err(Error::ExpiredKey);
        }
        self.touch(user, &key, token, digest, now);
        Ok(Principal::new(key, anonymous))
    }

    /// Drops every cached key of `user` in this process (for sources that announce nothing).
    pub fn forget_user(&self, user: &UserName) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(user, None);
        }
    }

    /// Writes the key's last-used time in the background, at most once per touch interval per
    /// key in this process.
    fn touch(
        &self,
        user: &UserName,
        key: &Arc<crate::ApiKey>,
        token: &Token,
        digest: crate::TokenDigest,
        now: Instant,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut touched = self
                .inner
                .touched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let interval = self.inner.config.touch_interval;
            if touched
                .get(&digest)
                .is_some_and(|at| now.duration_since(*at) < interval)
            {
                return;
            }
            if touched.len() >= self.inner.config.cache_capacity.max(1024) {
                touched.retain(|_, at| now.duration_since(*at) < interval);
            }
            touched.insert(digest, now);
        }
        let (source, user, key, token) = (
            Arc::clone(&self.inner.source),
            user.clone(),
            Arc::clone(key),
            token.clone(),
        );
        // Best effort: a failed write of last-used must not fail the request.
        runtime.spawn(async move {
            let _ = source.touch(&user, &key, &token).await;
        });
    }
}

/// Keeps the invalidation subscription up while the verifier lives.
async fn listen<S>(
    verifier: Weak<Inner<S>>,
    client: redis::Client,
    channel: String,
    heartbeat: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                if verifier.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        {
            let Some(v) = verifier.upgrade() else { return };
            // Messages may have been missed while unsubscribed: start from nothing.
            if let Some(cache) = &v.cache {
                cache.clear();
            }
            v.live.store(true, Ordering::Release);
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }

        let (mut sink, mut stream) = pubsub.split();
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(v) = verifier.upgrade() else { return };
                    if let (Some(cache), Ok(payload)) = (&v.cache, msg.get_payload::<String>()) {
                        match parse_invalidation(&payload) {
                            Some((user, digest)) => cache.invalidate(&user, digest.as_ref()),
                            // Unreadable: forget everything rather than guess.
                            None => cache.clear(),
                        }
                    }
                }
                _ = tick.tick() => {
                    if verifier.strong_count() == 0 {
                        return;
                    }
                    let ping = tokio::time::timeout(heartbeat, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        let Some(v) = verifier.upgrade() else { return };
        v.live.store(false, Ordering::Release);
        if let Some(cache) = &v.cache {
            cache.clear();
        }
    }
}
