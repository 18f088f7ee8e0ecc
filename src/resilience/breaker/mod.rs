//! The circuit breaker state machine.
//!
//! States: `Closed` (calls pass, outcomes are counted), `Open` (calls are
//! rejected until the recovery timeout elapses), `HalfOpen` (at most
//! `half_open_max_calls` probes at once; `success_threshold` successes close
//! the circuit, one failed probe reopens it with a longer timeout when
//! `backoff_multiplier > 1`), and the manual `ForcedOpen` / `Disabled`.
//!
//! Every admitted call holds a [`Permit`] carrying the epoch (the number of
//! transitions so far) it was admitted in. An outcome whose permit comes from
//! an earlier epoch still counts in the lifetime counters but cannot move the
//! state machine: a slow call admitted while closed must not close a circuit
//! that has since opened and half-opened.

mod config;
pub mod shared;
mod window;

pub use config::{BreakerConfig, State, WindowType, MAX_COUNT_WINDOW, MAX_TIME_WINDOW};
pub use window::Counts;
use window::Window;

/// Permission to run one call; hand it back through `record` or `release`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Permit {
    pub epoch: u64,
    pub probe: bool,
    pub start: f64,
    /// The probe's lease in Redis (0: none); see [`shared`].
    pub lease: u64,
    /// Admitted by the shared state (false: by this process's breaker).
    pub shared: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rejection {
    pub state: State,
    /// Seconds until a call may be admitted again (a hint when half-open or
    /// forced open).
    pub retry_after: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub state: State,
    pub calls: u64,
    pub successes: u64,
    pub failures: u64,
    pub slow_calls: u64,
    pub rejections: u64,
    pub window: Counts,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub consecutive_failures: u32,
    pub time_in_state: f64,
    pub next_attempt_at: Option<f64>,
    pub retry_after: f64,
    pub recovery_timeout: f64,
    pub half_open_in_flight: u32,
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    epoch: u64,
    entered_at: f64,
    open_until: f64,
    current_recovery: f64,
    consecutive_failures: u32,
    half_open_in_flight: u32,
    half_open_successes: u32,
    window: Window,
    calls: u64,
    successes: u64,
    failures: u64,
    slow_calls: u64,
    rejections: u64,
}

impl Breaker {
    /// A closed breaker; `cfg` must have passed `validate`.
    pub fn new(cfg: BreakerConfig, now: f64) -> Breaker {
        let window = Window::new(cfg.window_type, cfg.window_size);
        Breaker {
            current_recovery: cfg.recovery_timeout,
            cfg,
            state: State::Closed,
            epoch: 0,
            entered_at: now,
            open_until: now,
            consecutive_failures: 0,
            half_open_in_flight: 0,
            half_open_successes: 0,
            window,
            calls: 0,
            successes: 0,
            failures: 0,
            slow_calls: 0,
            rejections: 0,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether `acquire`, or `record` of a success, needs the real time. When
    /// false (closed, counting consecutive failures only) neither can change
    /// the state nor reads `now`, so a caller may skip reading its clock.
    pub fn needs_time(&self) -> bool {
        self.state != State::Closed || self.cfg.uses_window()
    }

    fn enter(&mut self, to: State, now: f64) -> Transition {
        let from = self.state;
        self.state = to;
        self.epoch += 1;
        self.entered_at = now;
        self.half_open_in_flight = 0;
        self.half_open_successes = 0;
        match to {
            State::Open => self.open_until = now + self.current_recovery,
            State::Closed => {
                self.current_recovery = self.cfg.recovery_timeout;
                self.consecutive_failures = 0;
                self.window.clear();
            }
            _ => {}
        }
        Transition { from, to }
    }

    /// Admits a call or rejects it. An open circuit whose timeout has elapsed
    /// half-opens here (the returned transition).
    pub fn acquire(&mut self, now: f64) -> Result<(Permit, Option<Transition>), Rejection> {
        let mut transition = None;
        match self.state {
            State::Closed | State::Disabled => return Ok((self.plain_permit(now), None)),
            State::ForcedOpen => {
                self.rejections += 1;
                return Err(Rejection {
                    state: State::ForcedOpen,
                    retry_after: self.current_recovery,
                });
            }
            State::Open => {
                if now < self.open_until {
                    self.rejections += 1;
                    return Err(Rejection {
                        state: State::Open,
                        retry_after: self.open_until - now,
                    });
                }
                transition = Some(self.enter(State::HalfOpen, now));
            }
            State::HalfOpen => {}
        }
        if self.half_open_in_flight < self.cfg.half_open_max_calls {
            self.half_open_in_flight += 1;
            Ok((
                Permit {
                    epoch: self.epoch,
                    probe: true,
                    start: now,
                    lease: 0,
                    shared: false,
                },
                transition,
            ))
        } else {
            self.rejections += 1;
            Err(Rejection {
                state: State::HalfOpen,
                retry_after: 0.0,
            })
        }
    }

    /// A closed-state permit of the current epoch started at `start` (also
    /// how a shared breaker feeds this process's outcomes to its local shadow).
    pub fn plain_permit(&self, start: f64) -> Permit {
        Permit {
            epoch: self.epoch,
            probe: false,
            start,
            lease: 0,
            shared: false,
        }
    }

    /// Counts a call rejected on this breaker's behalf (by the shared state).
    pub fn note_rejection(&mut self) {
        self.rejections += 1;
    }

    /// Takes a state decided elsewhere (the shared state other processes
    /// agreed on): `remaining` seconds until an open circuit half-opens.
    /// Lifetime counters stay; no transition is reported.
    pub fn adopt(
        &mut self,
        state: State,
        now: f64,
        remaining: f64,
        recovery: f64,
        consecutive_failures: u32,
    ) {
        if state != self.state {
            self.epoch += 1;
            self.entered_at = now;
            self.half_open_in_flight = 0;
            self.half_open_successes = 0;
            if state == State::Closed {
                self.window.clear();
            }
            self.state = state;
        }
        if state == State::Open {
            self.open_until = now + remaining;
        }
        self.current_recovery = recovery;
        self.consecutive_failures = consecutive_failures;
    }

    /// Records the outcome of an admitted call that finished at `now`.
    pub fn record(&mut self, permit: Permit, now: f64, failed: bool) -> Option<Transition> {
        let slow = self
            .cfg
            .slow_call_duration
            .is_some_and(|d| now - permit.start >= d);
        self.calls += 1;
        if failed {
            self.failures += 1;
        } else {
            self.successes += 1;
        }
        self.slow_calls += u64::from(slow);
        if permit.epoch != self.epoch {
            return None;
        }
        match self.state {
            State::Closed => {
                if failed {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                } else {
                    self.consecutive_failures = 0;
                }
                if self.cfg.uses_window() {
                    self.window.record(now, failed, slow);
                }
                if self.should_open(now) {
                    return Some(self.enter(State::Open, now));
                }
                None
            }
            State::HalfOpen if permit.probe => {
                self.half_open_in_flight = self.half_open_in_flight.saturating_sub(1);
                let bad = failed || slow && self.cfg.slow_rate_threshold().is_some();
                if bad {
                    let grown = self.current_recovery * self.cfg.backoff_multiplier;
                    self.current_recovery = match self.cfg.max_recovery_timeout {
                        Some(max) => grown.min(max),
                        None => grown,
                    };
                    Some(self.enter(State::Open, now))
                } else {
                    self.half_open_successes += 1;
                    if self.half_open_successes >= self.cfg.success_threshold {
                        Some(self.enter(State::Closed, now))
                    } else {
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// Hands back a permit without an outcome (a cancelled call, or one the
    /// filters ignore): frees its half-open slot, counts nothing.
    pub fn release(&mut self, permit: Permit) {
        if permit.probe && permit.epoch == self.epoch && self.state == State::HalfOpen {
            self.half_open_in_flight = self.half_open_in_flight.saturating_sub(1);
        }
    }

    fn should_open(&self, now: f64) -> bool {
        if self.consecutive_failures >= self.cfg.failure_threshold {
            return true;
        }
        if !self.cfg.uses_window() {
            return false;
        }
        let t = self.window.totals(now);
        if t.calls < u64::from(self.cfg.minimum_calls) || t.calls == 0 {
            return false;
        }
        let calls = t.calls as f64;
        if let Some(r) = self.cfg.failure_rate_threshold {
            if t.failures as f64 >= r * calls {
                return true;
            }
        }
        if let Some(r) = self.cfg.slow_rate_threshold() {
            if t.slow as f64 >= r * calls {
                return true;
            }
        }
        false
    }

    fn goto(&mut self, to: State, now: f64) -> Option<Transition> {
        if self.state == to && to != State::Closed {
            return None;
        }
        let t = self.enter(to, now);
        (t.from != t.to).then_some(t)
    }

    /// Back to closed with an empty window and the base recovery timeout;
    /// the lifetime counters are kept.
    pub fn reset(&mut self, now: f64) -> Option<Transition> {
        self.current_recovery = self.cfg.recovery_timeout;
        self.goto(State::Closed, now)
    }

    pub fn force_open(&mut self, now: f64) -> Option<Transition> {
        self.goto(State::ForcedOpen, now)
    }

    pub fn disable(&mut self, now: f64) -> Option<Transition> {
        self.goto(State::Disabled, now)
    }

    pub fn metrics(&self, now: f64) -> Metrics {
        let window = if self.cfg.uses_window() {
            self.window.totals(now)
        } else {
            Counts::default()
        };
        let ratio = |n: u64| {
            if window.calls == 0 {
                0.0
            } else {
                n as f64 / window.calls as f64
            }
        };
        let (next_attempt_at, retry_after) = match self.state {
            State::Open => (Some(self.open_until), (self.open_until - now).max(0.0)),
            State::ForcedOpen => (None, self.current_recovery),
            _ => (None, 0.0),
        };
        Metrics {
            state: self.state,
            calls: self.calls,
            successes: self.successes,
            failures: self.failures,
            slow_calls: self.slow_calls,
            rejections: self.rejections,
            window,
            failure_rate: ratio(window.failures),
            slow_call_rate: ratio(window.slow),
            consecutive_failures: self.consecutive_failures,
            time_in_state: (now - self.entered_at).max(0.0),
            next_attempt_at,
            retry_after,
            recovery_timeout: self.current_recovery,
            half_open_in_flight: self.half_open_in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            recovery_timeout: 10.0,
            success_threshold: 2,
            ..BreakerConfig::default()
        }
    }

    fn call(b: &mut Breaker, now: f64, failed: bool) -> Option<Transition> {
        let (p, _) = b.acquire(now).expect("admitted");
        b.record(p, now, failed)
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers() {
        let mut b = Breaker::new(cfg(), 0.0);
        assert!(call(&mut b, 0.0, true).is_none());
        assert!(call(&mut b, 0.0, false).is_none()); // success resets the run
        call(&mut b, 0.0, true);
        call(&mut b, 0.0, true);
        let t = call(&mut b, 1.0, true).expect("opens");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        let r = b.acquire(5.0).expect_err("open");
        assert_eq!(r.state, State::Open);
        assert!((r.retry_after - 6.0).abs() < 1e-12);
        let (p, t) = b.acquire(11.0).expect("probe");
        assert_eq!(
            t,
            Some(Transition {
                from: State::Open,
                to: State::HalfOpen
            })
        );
        assert!(p.probe);
        assert_eq!(
            b.acquire(11.0).expect_err("one probe").state,
            State::HalfOpen
        );
        assert!(b.record(p, 11.0, false).is_none());
        let t = call(&mut b, 11.0, false).expect("closes");
        assert_eq!(t.to, State::Closed);
        assert_eq!(b.metrics(11.0).rejections, 2);
    }

    #[test]
    fn failed_probe_backs_off_up_to_the_cap() {
        let c = BreakerConfig {
            backoff_multiplier: 2.0,
            max_recovery_timeout: Some(30.0),
            failure_threshold: 1,
            ..cfg()
        };
        let mut b = Breaker::new(c, 0.0);
        call(&mut b, 0.0, true);
        let mut now = 0.0;
        for expected in [20.0, 30.0, 30.0] {
            now += b.metrics(now).retry_after;
            assert_eq!(call(&mut b, now, true).map(|t| t.to), Some(State::Open));
            assert!((b.metrics(now).retry_after - expected).abs() < 1e-9);
        }
        b.reset(now);
        assert_eq!(b.metrics(now).recovery_timeout, 10.0);
    }

    #[test]
    fn stale_outcomes_do_not_move_the_state() {
        let mut b = Breaker::new(
            BreakerConfig {
                failure_threshold: 1,
                ..cfg()
            },
            0.0,
        );
        let (old, _) = b.acquire(0.0).expect("closed");
        call(&mut b, 0.0, true);
        let (probe, _) = b.acquire(20.0).expect("probe");
        assert!(b.record(old, 20.0, true).is_none());
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.metrics(20.0).half_open_in_flight, 1);
        b.release(probe);
        assert_eq!(b.metrics(20.0).half_open_in_flight, 0);
    }

    #[test]
    fn failure_rate_over_count_window() {
        let c = BreakerConfig {
            failure_threshold: 1000,
            failure_rate_threshold: Some(0.5),
            window_size: 4,
            minimum_calls: 4,
            ..cfg()
        };
        let mut b = Breaker::new(c, 0.0);
        for failed in [true, false, false, false, false, false] {
            assert!(call(&mut b, 0.0, failed).is_none());
        }
        assert!(call(&mut b, 0.0, true).is_none()); // 1 of the last 4 failed
        let t = call(&mut b, 0.0, true);
        assert_eq!(t.map(|t| t.to), Some(State::Open));
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let c = BreakerConfig {
            failure_threshold: 1000,
            failure_rate_threshold: Some(1.0),
            window_type: WindowType::Time,
            window_size: 2,
            minimum_calls: 2,
            ..cfg()
        };
        let mut b = Breaker::new(c, 0.0);
        call(&mut b, 0.5, true);
        call(&mut b, 1.5, false);
        assert_eq!(b.metrics(1.5).window.calls, 2);
        assert_eq!(b.metrics(2.5).window.calls, 1);
        call(&mut b, 2.5, true);
        assert_eq!(call(&mut b, 3.0, true).map(|t| t.to), Some(State::Open));
    }

    #[test]
    fn slow_calls_open_the_circuit() {
        let c = BreakerConfig {
            slow_call_duration: Some(1.0),
            slow_call_rate_threshold: Some(0.5),
            minimum_calls: 2,
            window_size: 2,
            ..cfg()
        };
        let mut b = Breaker::new(c, 0.0);
        let (p, _) = b.acquire(0.0).expect("closed");
        assert!(b.record(p, 0.5, false).is_none());
        let (p, _) = b.acquire(1.0).expect("closed");
        assert_eq!(b.record(p, 2.0, false).map(|t| t.to), Some(State::Open));
        assert_eq!(b.metrics(2.0).slow_calls, 1);
    }

    #[test]
    fn adopting_a_state_decided_elsewhere() {
        let mut b = Breaker::new(cfg(), 0.0);
        call(&mut b, 0.0, true);
        b.adopt(State::Open, 1.0, 4.0, 20.0, 3);
        let r = b.acquire(2.0).expect_err("open");
        assert!((r.retry_after - 3.0).abs() < 1e-12);
        let m = b.metrics(2.0);
        assert_eq!((m.recovery_timeout, m.consecutive_failures), (20.0, 3));
        let (p, t) = b.acquire(5.0).expect("a local probe");
        assert_eq!(t.map(|t| t.to), Some(State::HalfOpen));
        b.adopt(State::Closed, 6.0, 0.0, 10.0, 0);
        assert!(
            b.record(p, 6.0, true).is_none(),
            "a permit from before the adoption"
        );
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.metrics(6.0).calls, 2, "lifetime counters stay");
    }

    #[test]
    fn manual_states() {
        let mut b = Breaker::new(cfg(), 0.0);
        assert_eq!(b.force_open(0.0).map(|t| t.to), Some(State::ForcedOpen));
        assert!(b.force_open(0.0).is_none());
        assert_eq!(b.acquire(1e9).expect_err("forced").state, State::ForcedOpen);
        b.disable(0.0);
        for _ in 0..10 {
            assert!(call(&mut b, 0.0, true).is_none());
        }
        assert_eq!(b.state(), State::Disabled);
        assert_eq!(b.reset(0.0).map(|t| t.to), Some(State::Closed));
        assert!(b.reset(0.0).is_none());
    }

    #[test]
    fn validation_names_the_value() {
        let bad = BreakerConfig {
            failure_rate_threshold: Some(1.5),
            ..cfg()
        };
        assert!(bad.validate().expect_err("invalid").contains("1.5"));
        let bad = BreakerConfig {
            recovery_timeout: -1.0,
            ..cfg()
        };
        assert!(bad
            .validate()
            .expect_err("invalid")
            .contains("recovery_timeout"));
        let bad = BreakerConfig {
            slow_call_rate_threshold: Some(0.5),
            ..cfg()
        };
        assert!(bad.validate().is_err());
        assert!(cfg().validate().is_ok());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Probes in flight never exceed half_open_max_calls, whatever the
            /// order of admissions, outcomes and clock steps.
            #[test]
            fn half_open_never_admits_more_than_max(
                ops in proptest::collection::vec((0u8..4, 0u32..30), 1..200),
            ) {
                let c = BreakerConfig {
                    failure_threshold: 2,
                    recovery_timeout: 5.0,
                    half_open_max_calls: 3,
                    ..BreakerConfig::default()
                };
                let mut b = Breaker::new(c, 0.0);
                let mut now = 0.0;
                let mut held: Vec<Permit> = Vec::new();
                for (op, arg) in ops {
                    match op {
                        0 => {
                            if let Ok((p, _)) = b.acquire(now) {
                                held.push(p);
                            }
                        }
                        1 | 2 if !held.is_empty() => {
                            let p = held.remove(arg as usize % held.len());
                            b.record(p, now, op == 1);
                        }
                        _ => now += f64::from(arg),
                    }
                    let probes = held.iter().filter(|p| p.probe && p.epoch == b.epoch).count();
                    prop_assert!(probes <= 3);
                    if b.state() == State::HalfOpen {
                        prop_assert_eq!(b.metrics(now).half_open_in_flight as usize, probes);
                    }
                }
            }
        }
    }
}
