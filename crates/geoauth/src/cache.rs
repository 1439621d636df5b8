//! The verifier's in-process cache: bounded, with a TTL, and an epoch that keeps a lookup that
//! raced an invalidation from caching what it read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{ApiKey, TokenDigest, UserName};

/// A cached answer: the key, or `None` for "no such key" (kept for the shorter negative TTL).
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) key: Option<Arc<ApiKey>>,
    at: Instant,
}

pub(crate) struct Cache {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
    negative_ttl: Duration,
}

struct Inner {
    entries: HashMap<(UserName, TokenDigest), Cached>,
    epoch: u64,
}

impl Cache {
    pub(crate) fn new(capacity: usize, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                epoch: 0,
            }),
            capacity,
            ttl,
            negative_ttl,
        }
    }

    /// A fresh answer, if one is cached.
    pub(crate) fn get(
        &self,
        user: &UserName,
        digest: &TokenDigest,
        now: Instant,
    ) -> Option<Cached> {
        let inner = self.lock();
        let hit = inner.entries.get(&(user.clone(), *digest))?;
        let ttl = if hit.key.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        (now.duration_since(hit.at) < ttl).then(|| hit.clone())
    }

    /// The epoch to pass to [`Cache::put`] after a lookup started now.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Caches an answer read by a lookup that started at `epoch`, unless an invalidation came
    /// in meanwhile (the answer may be stale then).
    pub(crate) fn put(
        &self,
        user: &UserName,
        digest: &TokenDigest,
        key: Option<Arc<ApiKey>>,
        epoch: u64,
        now: Instant,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if inner.entries.len() >= self.capacity {
            let (ttl, negative_ttl) = (self.ttl, self.negative_ttl);
            inner.entries.retain(|_, c| {
                let ttl = if c.key.is_some() { ttl } else { negative_ttl };
                now.duration_since(c.at) < ttl
            });
            // Still full of live entries: drop an arbitrary half rather than scan for the
            // oldest on every insert.
            if inner.entries.len() >= self.capacity {
                let mut n = 0;
                inner.entries.retain(|_, _| {
                    n += 1;
                    n % 2 == 0
                });
            }
        }
        inner
            .entries
            .insert((user.clone(), *digest), Cached { key, at: now });
    }

    /// Forgets one key, or (`None`) every key of the user.
    pub(crate) fn invalidate(&self, user: &UserName, digest: Option<&TokenDigest>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        match digest {
            Some(d) => {
                inner.entries.remove(&(user.clone(), *d));
            }
            None => inner.entries.retain(|(u, _), _| u != user),
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.entries.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters to a cache: keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Token;

    fn user() -> UserName {
        UserName::new("alice").unwrap()
    }

    #[test]
    fn entries_expire_and_negatives_expire_sooner() {
        let cache = Cache::new(10, Duration::from_secs(10), Duration::from_secs(1));
        let t0 = Instant::now();
        let (a, b) = (
            Token::generate().unwrap().digest(),
            Token::generate().unwrap().digest(),
        );
        let key = Arc::new(crate::record::tests_support::sample_key());
        cache.put(&user(), &a, Some(key), cache.epoch(), t0);
        cache.put(&user(), &b, None, cache.epoch(), t0);
        let later = t0 + Duration::from_secs(2);
        assert!(cache.get(&user(), &a, later).is_some());
        assert!(cache.get(&user(), &b, later).is_none());
        assert!(
            cache
                .get(&user(), &a, t0 + Duration::from_secs(11))
                .is_none()
        );
    }

    #[test]
    fn a_lookup_that_raced_an_invalidation_is_not_cached() {
        let cache = Cache::new(10, Duration::from_secs(10), Duration::from_secs(1));
        let d = Token::generate().unwrap().digest();
        let epoch = cache.epoch();
        cache.invalidate(&user(), Some(&d));
        cache.put(&user(), &d, None, epoch, Instant::now());
        assert!(cache.get(&user(), &d, Instant::now()).is_none());
    }

    #[test]
    fn the_size_stays_bounded() {
        let cache = Cache::new(100, Duration::from_secs(10), Duration::from_secs(10));
        let now = Instant::now();
        for _ in 0..1000 {
            let d = Token::generate().unwrap().digest();
            cache.put(&user(), &d, None, cache.epoch(), now);
            assert!(cache.len() <= 100);
        }
    }

    #[test]
    fn invalidating_a_user_drops_only_that_user() {
        let cache = Cache::new(10, Duration::from_secs(10), Duration::from_secs(10));
        let bob = UserName::new("bob").unwrap();
        let d = Token::generate().unwrap().digest();
        let now = Instant::now();
        cache.put(&user(), &d, None, cache.epoch(), now);
        cache.put(&bob, &d, None, cache.epoch(), now);
        cache.invalidate(&user(), None);
        assert!(cache.get(&user(), &d, now).is_none());
        assert!(cache.get(&bob, &d, now).is_some());
    }
}
