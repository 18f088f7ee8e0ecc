//! Breaker configuration and the names of its states and window kinds.

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

    pub fn parse(s: &str) -> Option<State> {
        [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::Disabled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
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

    pub fn slow_rate_threshold(&self) -> Option<f64> {
        match (self.slow_call_duration, self.slow_call_rate_threshold) {
            (Some(_), Some(r)) => Some(r),
            (Some(_), None) => Some(1.0),
            _ => None,
        }
    }

    pub fn uses_window(&self) -> bool {
        self.failure_rate_threshold.is_some() || self.slow_call_duration.is_some()
    }
}
