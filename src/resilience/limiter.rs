//! A keyed GCRA (generic cell rate algorithm) limiter with one or more limits.
//!
//! Each limit allows `rate` units per `per` seconds with bursts of up to
//! `burst` units. GCRA stores one number per key and limit, the theoretical
//! arrival time (TAT): the moment the key's bucket would be full again. A
//! charge of `cost` units at `now` is allowed when
//! `max(TAT, now) + cost * interval - now <= burst * interval`, and then moves
//! the TAT forward. This is the token bucket, exactly, without a refill loop.
//!
//! With several limits (requests per minute and tokens per minute) a charge
//! is all or nothing: every limit must allow its cost, or none is charged.
//! A key whose TATs are all in the past holds no information (its buckets are
//! full) and is dropped, so memory stays bounded by `max_keys`.

use ahash::AHashMap;

/// One limit: `rate` units per `per` seconds, bursts of `burst` units.
#[derive(Clone, Debug)]
pub struct Limit {
    pub name: String,
    pub rate: f64,
    pub per: f64,
    pub burst: u64,
    /// Seconds per unit.
    interval: f64,
    /// Seconds of credit a full bucket holds: `burst * interval`.
    tau: f64,
}

impl Limit {
    pub fn new(name: &str, rate: f64, per: f64, burst: Option<u64>) -> Result<Limit, String> {
        let label = if name.is_empty() {
            String::new()
        } else {
            format!(" of limit {name:?}")
        };
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "rate{label} must be a positive finite number, got {rate}"
            ));
        }
        if !(per.is_finite() && per > 0.0) {
            return Err(format!(
                "per{label} must be a positive finite number of seconds, got {per}"
            ));
        }
        let burst = match burst {
            Some(0) => return Err(format!("burst{label} must be >= 1, got 0")),
            Some(b) => b,
            None => (rate.floor() as u64).max(1),
        };
        let interval = per / rate;
        if !(interval.is_finite() && interval > 0.0) {
            return Err(format!("rate{label} {rate} per {per} s is out of range"));
        }
        Ok(Limit {
            name: name.to_owned(),
            rate,
            per,
            burst,
            interval,
            tau: burst as f64 * interval,
        })
    }

    /// Seconds per unit.
    pub fn interval(&self) -> f64 {
        self.interval
    }

    /// Seconds of credit a full bucket holds.
    pub fn tau(&self) -> f64 {
        self.tau
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    Allowed,
    /// Seconds until the same charge would be allowed.
    Denied {
        retry_after: f64,
    },
}

impl Decision {
    pub fn allowed(self) -> bool {
        matches!(self, Decision::Allowed)
    }
}

fn tolerance(now: f64) -> f64 {
    // Sums of float intervals drift by a few ulps; a nanosecond of slack keeps
    // "exactly one interval later" allowed.
    1e-9_f64.max(now.abs() * 1e-15)
}

/// Rejects a cost vector of the wrong length or a cost above a burst.
pub fn validate_costs(limits: &[Limit], costs: &[u64]) -> Result<(), String> {
    if costs.len() != limits.len() {
        return Err(format!(
            "expected {} costs, got {}",
            limits.len(),
            costs.len()
        ));
    }
    for (l, &c) in limits.iter().zip(costs) {
        if c > l.burst {
            let label = if l.name.is_empty() {
                String::new()
            } else {
                format!(" {}", l.name)
            };
            return Err(format!(
                "cost{label}={c} exceeds the burst of {} and could never be granted",
                l.burst
            ));
        }
    }
    Ok(())
}

#[derive(Debug)]
pub struct Gcra {
    limits: Vec<Limit>,
    keys: AHashMap<Box<str>, Box<[f64]>>,
    max_keys: usize,
}

impl Gcra {
    pub fn new(limits: Vec<Limit>, max_keys: usize) -> Result<Gcra, String> {
        if limits.is_empty() {
            return Err("at least one limit is needed".into());
        }
        if max_keys == 0 {
            return Err("max_keys must be >= 1, got 0".into());
        }
        Ok(Gcra {
            limits,
            keys: AHashMap::new(),
            max_keys,
        })
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Rejects a cost vector of the wrong length or a cost above a burst.
    pub fn validate_costs(&self, costs: &[u64]) -> Result<(), String> {
        validate_costs(&self.limits, costs)
    }

    /// New TATs for `costs` against `stored` (or a full bucket), or the wait.
    fn evaluate(
        &self,
        stored: Option<&[f64]>,
        costs: &[u64],
        now: f64,
        out: &mut [f64],
    ) -> Decision {
        let eps = tolerance(now);
        let mut wait: f64 = 0.0;
        for (i, (l, &c)) in self.limits.iter().zip(costs).enumerate() {
            let tat = stored.map_or(now, |s| s[i].max(now));
            let new_tat = tat + c as f64 * l.interval;
            let excess = new_tat - now - l.tau;
            if excess > eps {
                wait = wait.max(excess);
            }
            out[i] = new_tat;
        }
        if wait > 0.0 {
            Decision::Denied { retry_after: wait }
        } else {
            Decision::Allowed
        }
    }

    /// Charges `costs` (validated) to `key` if every limit allows it.
    pub fn try_acquire(&mut self, key: &str, costs: &[u64], now: f64) -> Decision {
        let mut buf = [0.0_f64; 4];
        let mut heap;
        let out: &mut [f64] = if self.limits.len() <= buf.len() {
            &mut buf[..self.limits.len()]
        } else {
            heap = vec![0.0; self.limits.len()];
            &mut heap
        };
        let decision = self.evaluate(self.keys.get(key).map(|s| &s[..]), costs, now, out);
        if decision.allowed() {
            if let Some(stored) = self.keys.get_mut(key) {
                stored.copy_from_slice(out);
            } else if out.iter().any(|&t| t > now) {
                self.make_room(now);
                self.keys
                    .insert(key.into(), out.to_vec().into_boxed_slice());
            }
        }
        decision
    }

    /// Seconds until `costs` could be charged to `key` (0.0: now).
    pub fn retry_after(&self, key: &str, costs: &[u64], now: f64) -> f64 {
        let mut out = vec![0.0; self.limits.len()];
        match self.evaluate(self.keys.get(key).map(|s| &s[..]), costs, now, &mut out) {
            Decision::Allowed => 0.0,
            Decision::Denied { retry_after } => retry_after,
        }
    }

    /// Units of each limit `key` could spend right now.
    pub fn available(&self, key: &str, now: f64) -> Vec<u64> {
        let eps = tolerance(now);
        self.limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let tat = self.keys.get(key).map_or(now, |s| s[i].max(now));
                let credit = (l.tau - (tat - now) + eps) / l.interval;
                (credit.floor().max(0.0) as u64).min(l.burst)
            })
            .collect()
    }

    pub fn reset(&mut self, key: &str) -> bool {
        self.keys.remove(key).is_some()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
    }

    /// Drops idle keys and returns how many keys still carry state.
    pub fn purge(&mut self, now: f64) -> usize {
        self.keys.retain(|_, tats| tats.iter().any(|&t| t > now));
        self.keys.len()
    }

    /// Keys currently stored (idle ones included until the next purge).
    pub fn stored_keys(&self) -> usize {
        self.keys.len()
    }

    /// Before inserting a key at the bound: drop idle keys, and if every key
    /// is active, evict the 1/64 of the keys closest to idle (the fullest
    /// buckets, so forgetting them grants the least extra credit). Evicting a
    /// batch keeps the O(keys) scan amortised to O(64) per new key.
    fn make_room(&mut self, now: f64) {
        if self.keys.len() < self.max_keys {
            return;
        }
        if self.purge(now) < self.max_keys {
            return;
        }
        let batch = (self.keys.len() / 64).max(1);
        let mut by_tat: Vec<(f64, Box<str>)> = self
            .keys
            .iter()
            .map(|(k, tats)| {
                (
                    tats.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    k.clone(),
                )
            })
            .collect();
        by_tat.select_nth_unstable_by(batch - 1, |a, b| a.0.total_cmp(&b.0));
        for (_, k) in by_tat.into_iter().take(batch) {
            self.keys.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(rate: f64, per: f64, burst: Option<u64>) -> Gcra {
        Gcra::new(vec![Limit::new("", rate, per, burst).expect("valid")], 100).expect("valid")
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let mut g = single(10.0, 1.0, Some(5));
        for _ in 0..5 {
            assert!(g.try_acquire("a", &[1], 0.0).allowed());
        }
        match g.try_acquire("a", &[1], 0.0) {
            Decision::Denied { retry_after } => assert!((retry_after - 0.1).abs() < 1e-9),
            Decision::Allowed => panic!("burst exceeded"),
        }
        assert!(g.try_acquire("a", &[1], 0.1).allowed());
        assert!(!g.try_acquire("a", &[1], 0.1).allowed());
        // a full second refills the whole burst, no more
        assert_eq!(g.available("a", 1.1), vec![5]);
        assert_eq!(g.available("a", 100.0), vec![5]);
        // other keys are independent
        assert!(g.try_acquire("b", &[5], 0.1).allowed());
    }

    #[test]
    fn idle_keys_are_dropped() {
        let mut g = single(1.0, 1.0, Some(2));
        g.try_acquire("a", &[1], 0.0);
        g.try_acquire("b", &[2], 0.0);
        assert_eq!(g.purge(0.5), 2);
        assert_eq!(g.purge(1.0), 1);
        assert_eq!(g.purge(2.0), 0);
    }

    #[test]
    fn bounded_keys_evict_closest_to_idle() {
        let mut g =
            Gcra::new(vec![Limit::new("", 1.0, 1.0, Some(10)).expect("ok")], 2).expect("ok");
        g.try_acquire("a", &[1], 0.0);
        g.try_acquire("b", &[5], 0.0);
        g.try_acquire("c", &[3], 0.0);
        assert_eq!(g.stored_keys(), 2);
        assert_eq!(g.available("a", 0.0), vec![10]); // "a" was evicted
        assert_eq!(g.available("b", 0.0), vec![5]);
    }

    #[test]
    fn eviction_at_the_bound_is_batched() {
        let mut g =
            Gcra::new(vec![Limit::new("", 1.0, 1.0, Some(1000)).expect("ok")], 128).expect("ok");
        for i in 0..128u64 {
            assert!(g.try_acquire(&format!("k{i}"), &[i + 1], 0.0).allowed());
        }
        assert!(g.try_acquire("new", &[500], 0.0).allowed());
        assert_eq!(g.stored_keys(), 127); // 2 evicted, 1 inserted
        assert_eq!(g.available("k0", 0.0), vec![1000]);
        assert_eq!(g.available("k1", 0.0), vec![1000]);
        assert_eq!(g.available("k2", 0.0), vec![997]);
    }

    #[test]
    fn multi_limit_is_all_or_nothing() {
        let limits = vec![
            Limit::new("requests", 3.0, 60.0, None).expect("ok"),
            Limit::new("tokens", 1000.0, 60.0, None).expect("ok"),
        ];
        let mut g = Gcra::new(limits, 10).expect("ok");
        assert!(g.try_acquire("k", &[1, 900], 0.0).allowed());
        let d = g.try_acquire("k", &[1, 200], 0.0);
        assert!(!d.allowed());
        assert_eq!(g.available("k", 0.0), vec![2, 100]); // nothing charged
        assert!(g.try_acquire("k", &[1, 100], 0.0).allowed());
        assert!(g.try_acquire("k", &[1, 0], 0.0).allowed());
        assert!(!g.try_acquire("k", &[1, 0], 0.0).allowed());
        assert!(g.validate_costs(&[1, 1001]).is_err());
    }

    #[test]
    fn bad_limits_are_rejected() {
        assert!(Limit::new("", 0.0, 1.0, None).is_err());
        assert!(Limit::new("", 1.0, -1.0, None).is_err());
        assert!(Limit::new("", f64::NAN, 1.0, None).is_err());
        assert!(Limit::new("", 1.0, 1.0, Some(0)).is_err());
        assert_eq!(Limit::new("", 0.5, 1.0, None).expect("ok").burst, 1);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Over any schedule, a key never receives more than its burst plus
            /// what the rate refilled, and an idle key always gets its burst.
            #[test]
            fn never_grants_more_than_burst_plus_refill(
                rate in 1u32..50,
                burst in 1u64..20,
                steps in proptest::collection::vec((0u32..2000, 0u64..20), 1..80),
            ) {
                let mut g = single(f64::from(rate), 1.0, Some(burst));
                let mut now = 0.0_f64;
                let mut granted = 0u64;
                for (dt_ms, cost) in steps {
                    now += f64::from(dt_ms) / 1000.0;
                    let cost = cost.min(burst);
                    if g.try_acquire("k", &[cost], now).allowed() {
                        granted += cost;
                    }
                    let bound = burst as f64 + now * f64::from(rate);
                    prop_assert!(granted as f64 <= bound + 1e-6, "{granted} > {bound}");
                }
                prop_assert_eq!(g.available("k", now + burst as f64 / f64::from(rate)), vec![burst]);
            }
        }
    }
}
