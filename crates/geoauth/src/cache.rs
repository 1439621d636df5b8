//! The verifier's in-process cache: bounded, with a TTL, and an epoch that keeps a lookup that
//! raced an invalidation from caching what it read.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::{ApiKey, TokenDigest, UserName};

/// A cached answer: the key, or `None` for "no such key" (kept for the shorter negative TTL).
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) key: Option<Arc<ApiKey>>,
    at: Instant,
}

/// Answers by user and token digest in a moka cache (bounded in entries, seldom used ones
/// leaving first), each fresh for the positive or negative TTL from when it was read.
pub(crate) struct Cache {
    entries: moka::sync::Cache<(UserName, TokenDigest), Cached>,
    /// Bumped by every invalidation, which holds it for writing while it runs; an answer is put
    /// while it is held for reading.
    epoch: RwLock<u64>,
    ttl: Duration,
    negative_ttl: Duration,
}

impl Cache {
    pub(crate) fn new(capacity: usize, ttl: Duration, negative_ttl: Duration) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(u64::try_from(capacity).unwrap_or(u64::MAX))
            // Freshness is checked on each read; this only bounds how long a dead entry stays.
            .time_to_live(ttl.max(negative_ttl))
            .support_invalidation_closures()
            .build();
        Self {
            entries,
            epoch: RwLock::new(0),
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
        let hit = self.entries.get(&(user.clone(), *digest))?;
        let ttl = if hit.key.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        (now.saturating_duration_since(hit.at) < ttl).then_some(hit)
    }

    /// The epoch to pass to [`Cache::put`] after a lookup started now.
    pub(crate) fn epoch(&self) -> u64 {
        *self
            .epoch
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let current = self
            .epoch
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == epoch {
            self.entries
                .insert((user.clone(), *digest), Cached { key, at: now });
        }
    }

    /// Forgets one key, or (`None`) every key of the user.
    pub(crate) fn invalidate(&self, user: &UserName, digest: Option<&TokenDigest>) {
        let mut epoch = self
            .epoch
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *epoch += 1;
        match digest {
            Some(d) => self.entries.invalidate(&(user.clone(), *d)),
            None => {
                let user = user.clone();
                // Enabled at build: cannot fail. Matching entries are not answered from now on.
                let _ = self
                    .entries
                    .invalidate_entries_if(move |(u, _), _| *u == user);
            }
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        let mut epoch = self
            .epoch
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *epoch += 1;
        self.entries.invalidate_all();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.run_pending_tasks();
        usize::try_from(self.entries.entry_count()).unwrap_or(usize::MAX)
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
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
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
