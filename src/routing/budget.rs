//! A retry budget (as Finagle's `RetryBudget` and Envoy's retry budgets):
//! retries may be at most `ratio` of the calls made in the last `window`
//! seconds, plus a floor of `min_per_second` so a quiet process can still
//! retry. When a dependency fails for everyone, the extra load retries put
//! on it stays bounded by the ratio instead of multiplying it by `attempts`.

const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Index of the time slice this slot counts (`floor(now / slice)`).
    epoch: i64,
    calls: u64,
    retries: u64,
}

#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    window: f64,
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: f64, window: f64) -> Result<Self, String> {
        if !(ratio.is_finite() && ratio >= 0.0) {
            return Err(format!(
                "budget must be a fraction of calls >= 0 (0.2: retries at most 20% of calls), got {ratio}"
            ));
        }
        if !(min_per_second.is_finite() && min_per_second >= 0.0) {
            return Err(format!(
                "min_retries_per_second must be a finite number >= 0, got {min_per_second}"
            ));
        }
        if !(window.is_finite() && window > 0.0) {
            return Err(format!(
                "budget_window must be a finite number of seconds > 0, got {window}"
            ));
        }
        Ok(RetryBudget {
            ratio,
            min_per_second,
            window,
            slots: [Slot {
                epoch: i64::MIN,
                ..Slot::default()
            }; SLOTS],
        })
    }

    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    pub fn min_per_second(&self) -> f64 {
        self.min_per_second
    }

    pub fn window(&self) -> f64 {
        self.window
    }

    fn epoch(&self, now: f64) -> i64 {
        (now / (self.window / SLOTS as f64)).floor() as i64
    }

    fn slot(&mut self, now: f64) -> &mut Slot {
        let epoch = self.epoch(now);
        let slot = &mut self.slots[epoch.rem_euclid(SLOTS as i64) as usize];
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                ..Slot::default()
            };
        }
        slot
    }

    fn totals(&self, now: f64) -> (u64, u64) {
        let current = self.epoch(now);
        self.slots
            .iter()
            .filter(|s| s.epoch > current - SLOTS as i64 && s.epoch <= current)
            .fold((0, 0), |(c, r), s| (c + s.calls, r + s.retries))
    }

    /// Counts a first attempt.
    pub fn record_call(&mut self, now: f64) {
        self.slot(now).calls += 1;
    }

    /// Retries still allowed now (fractional).
    pub fn available(&self, now: f64) -> f64 {
        let (calls, retries) = self.totals(now);
        let allowed = self.ratio * calls as f64 + self.min_per_second * self.window;
        (allowed - retries as f64).max(0.0)
    }

    /// Takes one retry from the budget if one is left.
    pub fn try_retry(&mut self, now: f64) -> bool {
        if self.available(now) >= 1.0 {
            self.slot(now).retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retries_are_bounded_by_the_ratio_of_calls() {
        let mut b = RetryBudget::new(0.2, 0.0, 10.0).unwrap();
        for _ in 0..100 {
            b.record_call(1.0);
        }
        let granted = (0..100).filter(|_| b.try_retry(1.0)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_allows_retries_without_traffic_and_the_window_forgets() {
        let mut b = RetryBudget::new(0.0, 0.5, 10.0).unwrap();
        let granted = (0..100).filter(|_| b.try_retry(0.0)).count();
        assert_eq!(granted, 5);
        assert!(!b.try_retry(5.0));
        assert!(b.try_retry(11.5)); // the first slice left the window
    }

    #[test]
    fn old_calls_stop_counting() {
        let mut b = RetryBudget::new(1.0, 0.0, 10.0).unwrap();
        for _ in 0..10 {
            b.record_call(0.0);
        }
        assert!((b.available(9.9) - 10.0).abs() < 1e-9);
        assert_eq!(b.available(10.5), 0.0);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(RetryBudget::new(-0.1, 0.0, 10.0)
            .unwrap_err()
            .contains("-0.1"));
        assert!(RetryBudget::new(0.2, f64::NAN, 10.0).is_err());
        assert!(RetryBudget::new(0.2, 0.0, 0.0).is_err());
    }

    proptest! {
        #[test]
        fn never_more_retries_than_allowed_in_any_window(
            events in prop::collection::vec((0.0f64..0.5, any::<bool>()), 1..400),
            ratio in 0.0f64..1.0,
        ) {
            let mut b = RetryBudget::new(ratio, 0.0, 10.0).unwrap();
            let mut now = 0.0;
            let mut log: Vec<(f64, bool)> = Vec::new(); // (time, is_retry) of what was counted
            for (dt, retry) in events {
                now += dt;
                if !retry {
                    b.record_call(now);
                    log.push((now, false));
                    continue;
                }
                if !b.try_retry(now) {
                    continue;
                }
                log.push((now, true));
                // At the moment of each grant, counted over the budget's own slices, which is at most the last 10 s.
                let slice = 1.0;
                let first = ((now / slice).floor() - 9.0) * slice;
                let calls = log.iter().filter(|(t, r)| !r && *t >= first).count() as f64;
                let retries = log.iter().filter(|(t, r)| *r && *t >= first).count() as f64;
                prop_assert!(retries <= ratio * calls + 1e-9);
            }
        }
    }
}
