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

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowType {
    Count,
    Time,
}

impl WindowType {
    pub const ALLOWED: &'static [&'static str] = &["count", "time"];

    pub fn parse(s: &str) -> Option<WindowType> {
        match s {
            "count" => Some(WindowType::Count),
            "time" => Some(WindowType::Time),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WindowType::Count => "count",
            WindowType::Time => "time",
        }
    }
}

/// Configuration, validated once by [`BreakerConfig::validate`].
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub recovery_timeout: f64,
    pub success_threshold: u32,
    pub failure_rate_threshold: Option<f64>,
    pub window_type: WindowType,
    /// Calls (count window) or whole seconds (time window).
    pub window_size: u32,
    pub minimum_calls: u32,
    pub slow_call_duration: Option<f64>,
    /// Defaults to 1.0 when `slow_call_duration` is set.
    pub slow_call_rate_threshold: Option<f64>,
    pub half_open_max_calls: u32,
    pub backoff_multiplier: f64,
    pub max_recovery_timeout: Option<f64>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            recovery_timeout: 60.0,
            success_threshold: 3,
            failure_rate_threshold: None,
            window_type: WindowType::Count,
            window_size: 100,
            minimum_calls: 10,
            slow_call_duration: None,
            slow_call_rate_threshold: None,
            half_open_max_calls: 1,
            backoff_multiplier: 1.0,
            max_recovery_timeout: None,
        }
    }
}

/// Largest time window: one day of per-second buckets.
pub const MAX_TIME_WINDOW: u32 = 86_400;
/// Largest count window.
pub const MAX_COUNT_WINDOW: u32 = 1_000_000;

fn positive_finite(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "{name} must be a positive finite number of seconds, got {v}"
        ))
    }
}

fn rate(name: &str, v: f64) -> Result<(), String> {
    if v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(format!("{name} must be in (0, 1], got {v}"))
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.failure_threshold == 0 {
            return Err("failure_threshold must be >= 1, got 0".into());
        }
        if self.success_threshold == 0 {
            return Err("success_threshold must be >= 1, got 0".into());
        }
        if self.half_open_max_calls == 0 {
            return Err("half_open_max_calls must be >= 1, got 0".into());
        }
        if self.minimum_calls == 0 {
            return Err("minimum_calls must be >= 1, got 0".into());
        }
        positive_finite("recovery_timeout", self.recovery_timeout)?;
        if let Some(r) = self.failure_rate_threshold {
            rate("failure_rate_threshold", r)?;
        }
        if let Some(r) = self.slow_call_rate_threshold {
            rate("slow_call_rate_threshold", r)?;
            if self.slow_call_duration.is_none() {
                return Err(
                    "slow_call_rate_threshold needs slow_call_duration (the duration, in \
                     seconds, from which a call counts as slow)"
                        .into(),
                );
            }
        }
        if let Some(d) = self.slow_call_duration {
            positive_finite("slow_call_duration", d)?;
        }
        let max_window = match self.window_type {
            WindowType::Count => MAX_COUNT_WINDOW,
            WindowType::Time => MAX_TIME_WINDOW,
        };
        if self.window_size == 0 || self.window_size > max_window {
            return Err(format!(
                "window_size must be in 1..={max_window} for window_type={:?}, got {}",
                self.window_type.as_str(),
                self.window_size
            ));
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return Err(format!(
                "backoff_multiplier must be a finite number >= 1.0, got {}",
                self.backoff_multiplier
            ));
        }
        if let Some(m) = self.max_recovery_timeout {
            positive_finite("max_recovery_timeout", m)?;
            if m < self.recovery_timeout {
                return Err(format!(
                    "max_recovery_timeout ({m}) must be >= recovery_timeout ({})",
                    self.recovery_timeout
                ));
            }
        }
        Ok(())
    }

    fn slow_rate_threshold(&self) -> Option<f64> {
        match (self.slow_call_duration, self.slow_call_rate_threshold) {
            (Some(_), Some(r)) => Some(r),
            (Some(_), None) => Some(1.0),
            _ => None,
        }
    }

    fn uses_window(&self) -> bool {
        self.failure_rate_threshold.is_some() || self.slow_call_duration.is_some()
    }
}

/// Outcome counts over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    second: i64,
    counts: Counts,
}

/// Sliding window over the last `size` calls or the last `size` seconds.
#[derive(Debug)]
enum Window {
    Count {
        ring: Vec<u8>, // bit 0: failed, bit 1: slow
        next: usize,
        len: usize,
        totals: Counts,
    },
    Time {
        buckets: Vec<Bucket>,
    },
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

impl Window {
    fn new(kind: WindowType, size: u32) -> Window {
        match kind {
            WindowType::Count => Window::Count {
                ring: vec![0; size as usize],
                next: 0,
                len: 0,
                totals: Counts::default(),
            },
            WindowType::Time => Window::Time {
                buckets: vec![
                    Bucket {
                        second: i64::MIN,
                        counts: Counts::default()
                    };
                    size as usize
                ],
            },
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Count {
                ring,
                next,
                len,
                totals,
            } => {
                ring.iter_mut().for_each(|b| *b = 0);
                *next = 0;
                *len = 0;
                *totals = Counts::default();
            }
            Window::Time { buckets } => {
                buckets.iter_mut().for_each(|b| {
                    *b = Bucket {
                        second: i64::MIN,
                        ..*b
                    }
                });
            }
        }
    }

    fn record(&mut self, now: f64, failed: bool, slow: bool) {
        match self {
            Window::Count {
                ring,
                next,
                len,
                totals,
            } => {
                let cap = ring.len();
                if *len == cap {
                    let old = ring[*next];
                    totals.calls -= 1;
                    totals.failures -= u64::from(old & FAILED != 0);
                    totals.slow -= u64::from(old & SLOW != 0);
                } else {
                    *len += 1;
                }
                let bits = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
                ring[*next] = bits;
                *next = (*next + 1) % cap;
                totals.calls += 1;
                totals.failures += u64::from(failed);
                totals.slow += u64::from(slow);
            }
            Window::Time { buckets } => {
                let second = second_of(now);
                let idx = second.rem_euclid(buckets.len() as i64) as usize;
                let b = &mut buckets[idx];
                if b.second != second {
                    *b = Bucket {
                        second,
                        counts: Counts::default(),
                    };
                }
                b.counts.calls += 1;
                b.counts.failures += u64::from(failed);
                b.counts.slow += u64::from(slow);
            }
        }
    }

    fn totals(&self, now: f64) -> Counts {
        match self {
            Window::Count { totals, .. } => *totals,
            Window::Time { buckets } => {
                let second = second_of(now);
                let oldest = second.saturating_sub(buckets.len() as i64 - 1);
                let mut t = Counts::default();
                for b in buckets
                    .iter()
                    .filter(|b| b.second >= oldest && b.second <= second)
                {
                    t.calls += b.counts.calls;
                    t.failures += b.counts.failures;
                    t.slow += b.counts.slow;
                }
                t
            }
        }
    }
}

fn second_of(now: f64) -> i64 {
    // `as` saturates for out-of-range floats and maps NaN to 0: no panic.
    now.floor() as i64
}

/// Permission to run one call; hand it back through `record` or `release`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Permit {
    pub epoch: u64,
    pub probe: bool,
    pub start: f64,
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
            State::Closed | State::Disabled => {
                return Ok((
                    Permit {
                        epoch: self.epoch,
                        probe: false,
                        start: now,
                    },
                    None,
                ));
            }
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
