//! Counters and the round-trip window behind `health()` and `metrics()`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

/// Round trips kept for the percentiles: enough for a stable p99, small
/// enough that a snapshot sorts it in microseconds.
const RTT_WINDOW: usize = 1024;

#[derive(Default)]
pub(crate) struct Health {
    pub connected: AtomicBool,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub fallbacks: AtomicU64,
    pub reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    rtt: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    micros: Vec<u32>,
    next: usize,
}

impl Health {
    pub fn record_rtt(&self, rtt: Duration) {
        let us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        let mut ring = self.rtt.lock();
        if ring.micros.len() < RTT_WINDOW {
            ring.micros.push(us);
        } else {
            let i = ring.next;
            ring.micros[i] = us;
        }
        ring.next = (ring.next + 1) % RTT_WINDOW;
    }

    pub fn set_last_error(&self, msg: String) {
        *self.last_error.lock() = Some(msg);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// (p50, p99) of the recent round trips, in milliseconds.
    pub fn rtt_percentiles(&self) -> Option<(f64, f64)> {
        let mut v = self.rtt.lock().micros.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((v.len() - 1) as f64 * q).round() as usize;
            f64::from(v[i]) / 1000.0
        };
        Some((at(0.50), at(0.99)))
    }

    pub fn snapshot(&self) -> Counters {
        Counters {
            calls: self.calls.load(Relaxed),
            errors: self.errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            fallbacks: self.fallbacks.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
        }
    }
}

/// The store's counters since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls sent to Redis (scripts, commands, publishes).
    pub calls: u64,
    /// Calls that failed (timeouts included).
    pub errors: u64,
    /// Calls that waited the whole timeout.
    pub timeouts: u64,
    /// Decisions that users of the store took locally (fallback policies).
    pub fallbacks: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
}

/// What `/health` shows about the store.
#[derive(Clone, Debug)]
pub struct HealthSnapshot {
    pub connected: bool,
    pub cluster: bool,
    /// The URL(s), passwords redacted, comma-separated.
    pub url: String,
    pub last_error: Option<String>,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    /// Scripts known to be in the server's script cache.
    pub scripts_loaded: usize,
    pub counters: Counters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_a_bounded_window() {
        let h = Health::default();
        assert_eq!(h.rtt_percentiles(), None);
        for us in 1..=100u64 {
            h.record_rtt(Duration::from_micros(us));
        }
        let (p50, p99) = h.rtt_percentiles().expect("samples");
        assert!((p50 - 0.050).abs() < 0.0015, "{p50}");
        assert!((p99 - 0.099).abs() < 0.0015, "{p99}");
        for _ in 0..RTT_WINDOW {
            h.record_rtt(Duration::from_millis(2));
        }
        assert_eq!(h.rtt_percentiles(), Some((2.0, 2.0)));
    }
}
