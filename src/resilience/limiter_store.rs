//! A limiter whose decisions are made in Redis, with what happens when Redis
//! cannot decide (the `on_store_error` policy) and the local deny cache.
//!
//! [`StoreLimiter::try_acquire`] returns [`Verdict::Local`] when the policy
//! is "local" and Redis is not usable: the caller then decides with its
//! in-process [`Gcra`](super::Gcra), built by [`local_limits`] at the shared
//! rate divided by the number of processes sharing it. Decisions go back to
//! Redis on the first call after the store reconnects.
//!
//! The deny cache remembers, per key, that Redis refused `costs` until a
//! monotonic instant T. Until T a request for at least as much of every limit
//! is refused without a round trip: buckets only refill with time, and other
//! processes only drain them, so Redis would refuse it too. The cache is
//! emptied when the store reconnects (the server may have restarted empty);
//! a `reset` made by another process is the exception: this process keeps
//! refusing until T.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use parking_lot::Mutex;

use super::limiter::{validate_costs, Decision, Limit};
use super::limiter_redis::RedisGcra;
use crate::store::{Store, StoreError};

/// What a limiter does when Redis cannot decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStoreError {
    /// Decide in process at `rate / local_share`.
    Local,
    /// Fail open: allow.
    Allow,
    /// Fail closed: refuse.
    Deny,
}

impl OnStoreError {
    pub fn parse(s: &str) -> Result<OnStoreError, String> {
        match s {
            "local" => Ok(OnStoreError::Local),
            "allow" => Ok(OnStoreError::Allow),
            "deny" => Ok(OnStoreError::Deny),
            other => Err(format!(
                "on_store_error must be \"local\", \"allow\" or \"deny\", got {other:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Local => "local",
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        }
    }
}

/// The limits of the in-process fallback: each rate and burst divided by
/// `share` (the number of processes sharing the limit), bursts at least 1.
pub fn local_limits(limits: &[Limit], share: u32) -> Result<Vec<Limit>, String> {
    if share == 0 {
        return Err("local_share must be an integer >= 1, got 0".into());
    }
    let share_f = f64::from(share);
    limits
        .iter()
        .map(|l| {
            let burst = (l.burst / u64::from(share)).max(1);
            Limit::new(&l.name, l.rate / share_f, l.per, Some(burst))
        })
        .collect()
}

/// An answer from Redis or from the policy, or "decide locally".
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict<T> {
    Decided(T),
    Local,
}

#[derive(Default)]
struct Counts {
    decisions: AtomicU64,
    store_errors: AtomicU64,
    fallbacks: AtomicU64,
    deny_cache_hits: AtomicU64,
}

/// The counters behind `limiter.metrics()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterCounts {
    /// Decisions Redis made.
    pub decisions: u64,
    /// Calls that failed (fallbacks, and errors raised to the caller).
    pub store_errors: u64,
    /// Answers given by the `on_store_error` policy.
    pub fallbacks: u64,
    /// Refusals from the deny cache (no round trip).
    pub deny_cache_hits: u64,
}

/// Until when, and for which costs, Redis refused a key.
type Refused = (Instant, Box<[u64]>);

struct DenyCache {
    until: Mutex<AHashMap<Box<str>, Refused>>,
    max_keys: usize,
    /// The store connection the entries came from.
    generation: AtomicU64,
}

impl DenyCache {
    fn check(&self, key: &str, costs: &[u64], generation: u64) -> Option<f64> {
        let mut until = self.until.lock();
        if self.generation.swap(generation, Relaxed) != generation {
            // A new connection: the server may have restarted empty.
            until.clear();
            return None;
        }
        let (t, denied) = until.get(key)?;
        let left = t.checked_duration_since(Instant::now())?.as_secs_f64();
        costs
            .iter()
            .zip(denied.iter())
            .all(|(c, d)| c >= d)
            .then_some(left)
    }

    fn record(&self, key: &str, costs: &[u64], retry_after: f64) {
        let Some(t) = Instant::now().checked_add(std::time::Duration::from_secs_f64(
            retry_after.clamp(0.0, 86_400.0),
        )) else {
            return;
        };
        let mut until = self.until.lock();
        if until.len() >= self.max_keys && !until.contains_key(key) {
            let now = Instant::now();
            until.retain(|_, (t, _)| *t > now);
            if until.len() >= self.max_keys {
                until.clear();
            }
        }
        until.insert(key.into(), (t, costs.into()));
    }
}

/// A limiter of several limits per key, decided in Redis.
pub struct StoreLimiter {
    store: Arc<Store>,
    remote: RedisGcra,
    policy: OnStoreError,
    deny: Option<DenyCache>,
    counts: Counts,
}

impl StoreLimiter {
    pub fn new(
        store: Arc<Store>,
        limits: Vec<Limit>,
        name: Option<&str>,
        policy: OnStoreError,
        deny_cache: bool,
        max_keys: usize,
    ) -> Result<StoreLimiter, String> {
        Ok(StoreLimiter {
            store,
            remote: RedisGcra::new(limits, name)?,
            policy,
            deny: deny_cache.then(|| DenyCache {
                until: Mutex::new(AHashMap::new()),
                max_keys: max_keys.max(1),
                generation: AtomicU64::new(0),
            }),
            counts: Counts::default(),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn name(&self) -> &str {
        self.remote.name()
    }

    pub fn limits(&self) -> &[Limit] {
        self.remote.limits()
    }

    pub fn policy(&self) -> OnStoreError {
        self.policy
    }

    pub fn deny_cache(&self) -> bool {
        self.deny.is_some()
    }

    pub fn validate_costs(&self, costs: &[u64]) -> Result<(), String> {
        validate_costs(self.limits(), costs)
    }

    pub fn counts(&self) -> LimiterCounts {
        LimiterCounts {
            decisions: self.counts.decisions.load(Relaxed),
            store_errors: self.counts.store_errors.load(Relaxed),
            fallbacks: self.counts.fallbacks.load(Relaxed),
            deny_cache_hits: self.counts.deny_cache_hits.load(Relaxed),
        }
    }

    /// A Redis answer, or the policy's (counted) when Redis is not usable.
    fn answer<T>(
        &self,
        result: Result<T, StoreError>,
        allow: impl FnOnce() -> T,
        deny: impl FnOnce() -> T,
    ) -> Result<Verdict<T>, StoreError> {
        match result {
            Ok(v) => Ok(Verdict::Decided(v)),
            Err(e) => {
                self.counts.store_errors.fetch_add(1, Relaxed);
                if !e.falls_back() {
                    return Err(e);
                }
                self.counts.fallbacks.fetch_add(1, Relaxed);
                self.store.record_fallback();
                Ok(match self.policy {
                    OnStoreError::Local => Verdict::Local,
                    OnStoreError::Allow => Verdict::Decided(allow()),
                    OnStoreError::Deny => Verdict::Decided(deny()),
                })
            }
        }
    }

    /// What "deny" answers: the time `costs` take to refill, at least the
    /// store's timeout (so waiting callers do not spin).
    fn deny_wait(&self, costs: &[u64]) -> f64 {
        self.limits()
            .iter()
            .zip(costs)
            .map(|(l, &c)| c.max(1) as f64 * l.interval())
            .fold(self.store.timeout().as_secs_f64(), f64::max)
    }

    /// The deny cache's refusal of `costs` for `key`, if it has one (no
    /// round trip; counted).
    pub fn denied_locally(&self, key: &str, costs: &[u64]) -> Option<Decision> {
        let deny = self.deny.as_ref()?;
        let retry_after = deny.check(key, costs, self.store.connection_generation())?;
        self.counts.deny_cache_hits.fetch_add(1, Relaxed);
        Some(Decision::Denied { retry_after })
    }

    /// Charges `costs` (validated) to `key` if every limit allows it.
    pub fn try_acquire(&self, key: &str, costs: &[u64]) -> Result<Verdict<Decision>, StoreError> {
        if let Some(d) = self.denied_locally(key, costs) {
            return Ok(Verdict::Decided(d));
        }
        let result = self.remote.try_acquire(&self.store, key, costs);
        self.settle(key, costs, result)
    }

    /// [`StoreLimiter::try_acquire`] on the store's runtime, after the
    /// caller has consulted [`StoreLimiter::denied_locally`].
    pub async fn try_acquire_remote(
        &self,
        key: &str,
        costs: &[u64],
    ) -> Result<Verdict<Decision>, StoreError> {
        let result = self.remote.try_acquire_async(&self.store, key, costs).await;
        self.settle(key, costs, result)
    }

    /// Counts Redis' decision, remembers a refusal, applies the policy.
    fn settle(
        &self,
        key: &str,
        costs: &[u64],
        result: Result<Decision, StoreError>,
    ) -> Result<Verdict<Decision>, StoreError> {
        if let Ok(d) = &result {
            self.counts.decisions.fetch_add(1, Relaxed);
            if let (Decision::Denied { retry_after }, Some(cache)) = (d, &self.deny) {
                cache.record(key, costs, *retry_after);
            }
        }
        self.answer(
            result,
            || Decision::Allowed,
            || Decision::Denied {
                retry_after: self.deny_wait(costs),
            },
        )
    }

    pub fn retry_after(&self, key: &str, costs: &[u64]) -> Result<Verdict<f64>, StoreError> {
        let result = self.remote.retry_after(&self.store, key, costs);
        self.answer(result, || 0.0, || self.deny_wait(costs))
    }

    pub fn available(&self, key: &str) -> Result<Verdict<Vec<u64>>, StoreError> {
        let result = self.remote.available(&self.store, key);
        let n = self.limits().len();
        self.answer(
            result,
            || self.limits().iter().map(|l| l.burst).collect(),
            || vec![0; n],
        )
    }

    /// Forgets `key` in Redis and in the deny cache.
    pub fn reset(&self, key: &str) -> Result<bool, StoreError> {
        if let Some(d) = &self.deny {
            d.until.lock().remove(key);
        }
        self.remote.reset(&self.store, key)
    }

    pub fn clear(&self) -> Result<(), StoreError> {
        if let Some(d) = &self.deny {
            d.until.lock().clear();
        }
        self.remote.clear(&self.store)
    }

    pub fn stored_keys(&self) -> Result<usize, StoreError> {
        self.remote.stored_keys(&self.store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::RedisServer;
    use crate::store::StoreConfig;

    fn limiter(server: &RedisServer, policy: OnStoreError, deny_cache: bool) -> StoreLimiter {
        let cfg = StoreConfig::new(vec![server.url()], None, "t:", 0.2, 0.2).expect("config");
        let store = Store::connect(cfg).expect("connects");
        let limits = vec![Limit::new("", 1.0, 3600.0, Some(2)).expect("ok")];
        StoreLimiter::new(
            store,
            limits,
            Some(policy.as_str()),
            policy,
            deny_cache,
            100,
        )
        .expect("ok")
    }

    fn allowed(v: Verdict<Decision>) -> Option<bool> {
        match v {
            Verdict::Decided(d) => Some(d.allowed()),
            Verdict::Local => None,
        }
    }

    #[test]
    fn the_deny_cache_refuses_without_a_round_trip() {
        let Some(server) = RedisServer::start(&[]) else {
            return;
        };
        let l = limiter(&server, OnStoreError::Local, true);
        assert_eq!(l.try_acquire("k", &[2]).map(allowed), Ok(Some(true)));
        let calls = l.store().counters().calls;
        assert_eq!(l.try_acquire("k", &[1]).map(allowed), Ok(Some(false)));
        assert_eq!(l.store().counters().calls, calls + 1);
        // Asking for as much again is refused locally...
        assert_eq!(l.try_acquire("k", &[1]).map(allowed), Ok(Some(false)));
        assert_eq!(l.try_acquire("k", &[2]).map(allowed), Ok(Some(false)));
        assert_eq!(l.store().counters().calls, calls + 1);
        assert_eq!(l.counts().deny_cache_hits, 2);
        // ...asking for less goes to Redis; reset clears the cache.
        assert_eq!(l.try_acquire("k", &[0]).map(allowed), Ok(Some(true)));
        assert_eq!(l.store().counters().calls, calls + 2);
        assert_eq!(l.reset("k"), Ok(true));
        assert_eq!(l.try_acquire("k", &[1]).map(allowed), Ok(Some(true)));
        assert_eq!(l.counts().decisions, 4);
    }

    #[test]
    fn policies_apply_when_redis_is_gone_and_decisions_come_back() {
        let Some(mut server) = RedisServer::start(&[]) else {
            return;
        };
        let local = limiter(&server, OnStoreError::Local, false);
        let allow = limiter(&server, OnStoreError::Allow, false);
        let deny = limiter(&server, OnStoreError::Deny, false);
        for l in [&local, &allow, &deny] {
            assert_eq!(l.try_acquire("k", &[2]).map(allowed), Ok(Some(true)));
        }
        server.kill();
        for _ in 0..3 {
            assert_eq!(local.try_acquire("k", &[1]), Ok(Verdict::Local));
            assert_eq!(allow.try_acquire("k", &[1]).map(allowed), Ok(Some(true)));
            match deny.try_acquire("k", &[1]) {
                Ok(Verdict::Decided(Decision::Denied { retry_after })) => {
                    assert!((retry_after - 3600.0).abs() < 1e-6, "{retry_after}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(allow.available("k"), Ok(Verdict::Decided(vec![2])));
        assert_eq!(deny.available("k"), Ok(Verdict::Decided(vec![0])));
        assert_eq!(local.retry_after("k", &[1]), Ok(Verdict::Local));
        let c = local.counts();
        assert_eq!((c.fallbacks, c.store_errors), (4, 4));
        assert_eq!(local.store().counters().fallbacks, 4);
        assert!(local.reset("k").is_err_and(|e| e.falls_back()));
        server.restart();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        // The server came back empty: the key's bucket is full again.
        while local.try_acquire("k", &[1]) == Ok(Verdict::Local) {
            assert!(
                Instant::now() < deadline,
                "decisions never went back to Redis"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(local.available("k"), Ok(Verdict::Decided(vec![1])));
    }

    #[test]
    fn local_limits_divide_rate_and_burst() {
        let limits = vec![
            Limit::new("requests", 100.0, 60.0, None).expect("ok"),
            Limit::new("tokens", 10.0, 1.0, Some(3)).expect("ok"),
        ];
        let local = local_limits(&limits, 4).expect("ok");
        assert_eq!((local[0].rate, local[0].burst), (25.0, 25));
        assert_eq!((local[1].rate, local[1].burst), (2.5, 1));
        assert!(local_limits(&limits, 0).is_err());
        assert_eq!(OnStoreError::parse("deny"), Ok(OnStoreError::Deny));
        assert!(OnStoreError::parse("open")
            .expect_err("bad")
            .contains("\"local\""));
    }
}
