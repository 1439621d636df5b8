//! GCRA rate limiting against real Redis, at known times.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use geoauth::{KeyPrefix, Quota, RateLimiter, RateSubject, UserName};
use geostack_testkit::TestRedis;

fn limiter(redis: &TestRedis) -> RateLimiter {
    RateLimiter::with_prefix(redis.connection(), KeyPrefix::new(redis.prefix()).unwrap())
}

/// The continuous-state leaky bucket: a formulation of GCRA independent of the script's
/// virtual scheduling. Each allowed request adds `t` to the bucket, which drains one unit per
/// microsecond and holds `burst * t`.
struct LeakyBucket {
    level: u64,
    last: u64,
    t: u64,
    capacity: u64,
}

impl LeakyBucket {
    fn allow(&mut self, now: u64) -> bool {
        let drained = self.level.saturating_sub(now - self.last);
        self.last = now;
        if drained + self.t > self.capacity {
            self.level = drained;
            false
        } else {
            self.level = drained + self.t;
            true
        }
    }
}

#[tokio::test]
async fn the_allowed_requests_are_exactly_those_gcra_predicts() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let subject = RateSubject::user(&UserName::new("alice").unwrap(), "sql").unwrap();
    // 10 per second, bursts of 5; a request every 20 ms for 3 s (five times the rate), then a
    // pause of 700 ms, then a request every 150 ms (below the rate) for 3 s.
    let quota = Quota::new(5, 10, Duration::from_secs(1)).unwrap();
    let start = 1_700_000_000_000_000_u64; // microseconds since the epoch
    let mut times: Vec<u64> = (0..150).map(|k| start + k * 20_000).collect();
    let resume = start + 150 * 20_000 + 700_000;
    times.extend((0..20).map(|k| resume + k * 150_000));

    let mut model = LeakyBucket {
        level: 0,
        last: start,
        t: 100_000,
        capacity: 5 * 100_000,
    };
    let mut allowed = 0;
    for (i, &now) in times.iter().enumerate() {
        let at = UNIX_EPOCH + Duration::from_micros(now);
        let decision = limiter.check_at(&subject, quota, at).await.unwrap();
        let expected = model.allow(now);
        assert_eq!(
            decision.allowed,
            expected,
            "request {i} at +{} us",
            now - start
        );
        assert_eq!(decision.limit, 5);
        if decision.allowed {
            allowed += 1;
            assert_eq!(decision.retry_after, None);
            // What is left now: whole emission intervals of room in the bucket.
            assert_eq!(
                u64::from(decision.remaining),
                (model.capacity - model.level) / model.t,
                "remaining at request {i}"
            );
        } else {
            let retry = decision.retry_after.unwrap();
            assert_eq!(
                retry.as_micros() as u64,
                model.level + model.t - model.capacity
            );
        }
    }
    // Saturated phase: the bucket drains 20 ms between requests, so 6 pass in the first 100 ms
    // (0, 20, …, 100 ms), then one each at 200, 300, …, 2900 ms: 6 + 28 = 34. The slow phase is
    // under the rate: all 20 pass.
    assert_eq!(allowed, 34 + 20);
}

#[tokio::test]
async fn subjects_are_counted_apart_and_the_server_clock_works() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let alice = UserName::new("alice").unwrap();
    let bob = UserName::new("bob").unwrap();
    // 3 at once, then one an hour.
    let quota = Quota::new(3, 1, Duration::from_secs(3600)).unwrap();
    for user in [&alice, &bob] {
        let subject = RateSubject::user(user, "maps").unwrap();
        for n in (0..3).rev() {
            let d = limiter.check(&subject, quota).await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, n);
        }
        let denied = limiter.check(&subject, quota).await.unwrap();
        assert!(!denied.allowed);
        let retry = denied.retry_after.unwrap();
        assert!(
            retry > Duration::from_secs(3590) && retry <= Duration::from_secs(3600),
            "{retry:?}"
        );
        assert!(
            denied.reset > Duration::from_secs(3 * 3600 - 10),
            "{:?}",
            denied.reset
        );

        let mut headers = http::HeaderMap::new();
        denied.write_headers(&mut headers);
        assert_eq!(headers["ratelimit-limit"], "3");
        assert_eq!(headers["ratelimit-remaining"], "0");
        assert_eq!(headers["carto-rate-limit-remaining"], "0");
        assert_eq!(headers["retry-after"], "3600");
    }
    // Another group of the same user starts full.
    let other = RateSubject::user(&alice, "sql").unwrap();
    assert!(limiter.check(&other, quota).await.unwrap().allowed);
}

#[tokio::test]
async fn the_cell_expires_once_the_bucket_is_empty() {
    let redis = TestRedis::new().await;
    let limiter = limiter(&redis);
    let subject = RateSubject::user(&UserName::new("alice").unwrap(), "sql").unwrap();
    let quota = Quota::new(2, 10, Duration::from_millis(100)).unwrap(); // 10 ms interval
    let now = SystemTime::now();
    limiter.check_at(&subject, quota, now).await.unwrap();
    let mut conn = redis.connection();
    let key = format!("{}{{alice}}:rate:sql:user", redis.prefix());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=10).contains(&ttl), "pttl {ttl}");
}

/// A limiter deciding in process, reconciled with Redis `sync` apart.
fn local(redis: &TestRedis, sync: Duration) -> RateLimiter {
    limiter(redis).deciding_locally(sync, 1000)
}

#[tokio::test]
async fn a_limiter_deciding_locally_allows_what_redis_would_and_counts_it_there_later() {
    let redis = TestRedis::new().await;
    let subject = RateSubject::user(&UserName::new("alice").unwrap(), "maps").unwrap();
    // 5 at once, then one an hour: nothing refills during the test.
    let quota = Quota::new(5, 1, Duration::from_secs(3600)).unwrap();
    let sync = Duration::from_millis(300);
    let fast = local(&redis, sync);
    let mut remaining = Vec::new();
    for _ in 0..8 {
        let d = fast.check(&subject, quota).await.unwrap();
        remaining.push(d.allowed.then_some(d.remaining));
    }
    // Exactly the burst, with the remaining counts Redis would give.
    assert_eq!(
        remaining,
        [
            Some(4),
            Some(3),
            Some(2),
            Some(1),
            Some(0),
            None,
            None,
            None
        ]
    );
    // Only the first went to Redis: a limiter asking Redis sees one request counted.
    let exact = limiter(&redis);
    let other = RateSubject::user(&UserName::new("alice").unwrap(), "maps").unwrap();
    assert_eq!(exact.check(&other, quota).await.unwrap().remaining, 3);
    // Past `sync`, the next check reconciles: the four allowed here are counted in Redis (the
    // bucket is now over-full, so this one is refused) and so is the other limiter's request.
    tokio::time::sleep(sync + Duration::from_millis(50)).await;
    let d = fast.check(&subject, quota).await.unwrap();
    assert!(!d.allowed);
    let after = exact.check(&other, quota).await.unwrap();
    assert!(!after.allowed, "Redis counted what was allowed in process");
    // The retry after covers the excess: two requests over the burst at one an hour.
    let retry = after.retry_after.unwrap();
    assert!(retry > Duration::from_secs(3600), "{retry:?}");
}

#[tokio::test]
async fn two_limiters_deciding_locally_overshoot_no_more_than_the_stated_bound() {
    let redis = TestRedis::new().await;
    let subject = RateSubject::user(&UserName::new("bob").unwrap(), "sql").unwrap();
    // Bursts of 10, 100 a second (10 ms apart); reconciled every 50 ms.
    let (burst, per_second) = (10_u32, 100_u32);
    let quota = Quota::new(burst, per_second, Duration::from_secs(1)).unwrap();
    let sync = Duration::from_millis(50);
    let limiters = [local(&redis, sync), local(&redis, sync)];
    let started = std::time::Instant::now();
    let run = Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for limiter in limiters {
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0_u32;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while started.elapsed() < run {
                tick.tick().await;
                if limiter.check(&subject, quota).await.unwrap().allowed {
                    allowed += 1;
                }
            }
            allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The quota's own: the burst and the rate over the run. The bound adds, for the second
    // process, a burst and what the rate gives in one sync interval.
    let quota_allows = f64::from(burst) + f64::from(per_second) * elapsed;
    let bound = quota_allows + f64::from(burst) + f64::from(per_second) * sync.as_secs_f64();
    let allowed = f64::from(allowed);
    assert!(allowed <= bound, "{allowed} allowed, bound {bound:.0}");
    // And the limit still holds: far fewer than the ~3000 requests sent pass, and about what
    // the quota allows.
    assert!(
        allowed >= 0.8 * quota_allows,
        "{allowed} allowed, quota {quota_allows:.0}"
    );
}
