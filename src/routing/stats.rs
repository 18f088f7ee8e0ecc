//! What one upstream's recent traffic says about it: exponentially weighted
//! latency (whole answer, time to first token, time per token of a stream)
//! and error rate, calls in flight, and the recent samples behind the
//! latency quantiles (the hedging delay is the p95 of time to first token).

/// Recent samples kept per upstream for the quantiles.
pub const SAMPLES: usize = 256;

/// How one call through an upstream ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Answered: seconds to the whole answer, to its first token, and the
    /// number of tokens streamed (0: not a stream).
    Success { total: f64, first: f64, tokens: u32 },
    /// Failed (5xx, 429, timeout, connection, cut stream): seconds spent.
    Failure { elapsed: f64 },
    /// Abandoned by us (a lost hedge, the caller went away) after
    /// `elapsed` seconds: only a lower bound of its latency, counted when it
    /// is above the current estimate (a hedge won because this was slow).
    Cancelled { elapsed: f64 },
}

#[derive(Debug, Clone, Default)]
struct Ring {
    values: Vec<f64>,
    next: usize,
}

impl Ring {
    fn push(&mut self, v: f64) {
        if self.values.len() < SAMPLES {
            self.values.push(v);
        } else {
            self.values[self.next] = v;
        }
        self.next = (self.next + 1) % SAMPLES;
    }

    /// The `qs` quantiles (nearest rank) of the samples, or None when empty.
    fn quantiles<const N: usize>(&self, qs: [f64; N]) -> Option<[f64; N]> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted = self.values.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        let n = sorted.len();
        Some(qs.map(|q| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            sorted[rank - 1]
        }))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Ewma {
    value: f64,
    seen: bool,
}

impl Ewma {
    fn update(&mut self, x: f64, alpha: f64) {
        if self.seen {
            self.value += alpha * (x - self.value);
        } else {
            self.value = x;
            self.seen = true;
        }
    }

    fn get(&self) -> Option<f64> {
        self.seen.then_some(self.value)
    }
}

#[derive(Debug, Clone, Default)]
pub struct UpstreamStats {
    latency: Ewma,
    first: Ewma,
    per_token: Ewma,
    error: Ewma,
    pub in_flight: u32,
    /// (call id, start) of the calls in flight still waiting for their
    /// first token (a stream that is answering is no sign of slowness).
    pending: Vec<(u64, f64)>,
    pub selections: u64,
    pub successes: u64,
    pub failures: u64,
    pub cancellations: u64,

    latencies: Ring,
    firsts: Ring,
    /// The p95 of `firsts`, recomputed every few samples rather than per request.
    first_p95: Option<f64>,
    since_p95: u32,
}

impl UpstreamStats {
    pub fn begin(&mut self, id: u64, now: f64) {
        self.pending.push((id, now));
        self.in_flight += 1;
        self.selections += 1;
    }

    /// The call `id` produced its first token.
    pub fn first_token_of(&mut self, id: u64) {
        if let Some(p) = self.pending.iter().position(|(i, _)| *i == id) {
            self.pending.swap_remove(p);
        }
    }

    pub fn end(&mut self, id: u64, outcome: Outcome, alpha: f64) {
        self.first_token_of(id);
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Success {
                total,
                first,
                tokens,
            } => {
                let (total, first) = (total.max(0.0), first.clamp(0.0, total.max(0.0)));
                self.successes += 1;
                self.error.update(0.0, alpha);
                self.latency.update(total, alpha);
                self.first.update(first, alpha);
                if tokens > 1 {
                    self.per_token
                        .update((total - first) / f64::from(tokens - 1), alpha);
                }
                self.latencies.push(total);
                self.firsts.push(first);
                self.since_p95 += 1;
                if self.first_p95.is_none() || self.since_p95 >= 8 {
                    self.first_p95 = self.firsts.quantiles([0.95]).map(|[q]| q);
                    self.since_p95 = 0;
                }
            }
            Outcome::Failure { elapsed } => {
                self.failures += 1;
                self.error.update(1.0, alpha);
                // A failure that took long (a timeout) is slow too: it moves
                // the latency estimate up, but is not a quantile sample.
                if elapsed > self.latency.get().unwrap_or(0.0) {
                    self.latency.update(elapsed.max(0.0), alpha);
                    self.first.update(elapsed.max(0.0), alpha);
                }
            }
            Outcome::Cancelled { elapsed } => {
                self.cancellations += 1;
                if let Some(current) = self.latency.get() {
                    if elapsed > current {
                        self.latency.update(elapsed, alpha);
                        self.first.update(elapsed, alpha);
                    }
                }
            }
        }
    }

    pub fn latency(&self) -> Option<f64> {
        self.latency.get()
    }

    pub fn first_token(&self) -> Option<f64> {
        self.first.get()
    }

    pub fn per_token(&self) -> Option<f64> {
        self.per_token.get()
    }

    pub fn error_rate(&self) -> f64 {
        self.error.get().unwrap_or(0.0)
    }

    /// Expected seconds to what the caller waits for (the first token of a
    /// stream, the whole answer otherwise), at least the age of the oldest
    /// call still in flight (an upstream that stopped answering looks slow
    /// at once, not when its calls time out); None before any sample.
    pub fn expected(&self, stream: bool, now: f64) -> Option<f64> {
        let average = if stream {
            self.first.get()
        } else {
            self.latency.get()
        };
        let oldest = self
            .pending
            .iter()
            .map(|(_, t)| now - *t)
            .fold(f64::NAN, f64::max);
        match (average, oldest.is_nan()) {
            (Some(a), false) => Some(a.max(oldest)),
            (None, false) => Some(oldest),
            (a, true) => a,
        }
    }

    /// The p95 of time to first token once `min_samples` answers were seen.
    pub fn first_token_p95(&self, min_samples: usize) -> Option<f64> {
        if self.firsts.values.len() < min_samples.max(1) {
            return None;
        }
        self.first_p95
    }

    /// (p50, p95, p99) of the whole answer's latency.
    pub fn latency_quantiles(&self) -> Option<[f64; 3]> {
        self.latencies.quantiles([0.5, 0.95, 0.99])
    }

    pub fn samples(&self) -> usize {
        self.latencies.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(total: f64) -> Outcome {
        Outcome::Success {
            total,
            first: total,
            tokens: 0,
        }
    }

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_by_alpha() {
        let mut s = UpstreamStats::default();
        assert_eq!(s.latency(), None);
        s.begin(1, 0.0);
        s.end(1, ok(1.0), 0.5);
        assert_eq!(s.latency(), Some(1.0));
        s.begin(2, 0.0);
        s.end(2, ok(3.0), 0.5);
        assert_eq!(s.latency(), Some(2.0));
        assert_eq!((s.selections, s.successes, s.in_flight), (2, 2, 0));
    }

    #[test]
    fn stream_timings_give_first_token_and_per_token() {
        let mut s = UpstreamStats::default();
        s.begin(1, 0.0);
        s.end(
            1,
            Outcome::Success {
                total: 1.2,
                first: 0.2,
                tokens: 11,
            },
            0.2,
        );
        assert_eq!(s.first_token(), Some(0.2));
        assert!((s.per_token().unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(s.expected(true, 0.0), Some(0.2));
        assert_eq!(s.expected(false, 0.0), Some(1.2));
    }

    #[test]
    fn error_rate_rises_with_failures_and_falls_with_successes() {
        let mut s = UpstreamStats::default();
        for _ in 0..20 {
            s.begin(1, 0.0);
            s.end(1, Outcome::Failure { elapsed: 0.01 }, 0.2);
        }
        assert!(s.error_rate() > 0.95);
        for _ in 0..30 {
            s.begin(1, 0.0);
            s.end(1, ok(0.01), 0.2);
        }
        assert!(s.error_rate() < 0.01);
        s.begin(1, 0.0);
        s.end(1, Outcome::Cancelled { elapsed: 0.0 }, 0.2);
        assert_eq!((s.cancellations, s.in_flight), (1, 0));
    }

    #[test]
    fn calls_in_flight_and_lost_hedges_raise_the_estimate() {
        let mut s = UpstreamStats::default();
        s.begin(1, 0.0);
        s.end(1, ok(0.1), 0.5);
        s.begin(2, 10.0);
        s.begin(3, 11.0);
        assert_eq!(s.in_flight, 2);
        assert_eq!(s.expected(false, 12.0), Some(2.0)); // the oldest call's age
        s.end(2, Outcome::Cancelled { elapsed: 2.1 }, 0.5);
        assert!((s.latency().unwrap() - 1.1).abs() < 1e-12);
        s.end(3, Outcome::Cancelled { elapsed: 0.01 }, 0.5); // below: no signal
        assert!((s.latency().unwrap() - 1.1).abs() < 1e-12);
        assert_eq!(s.expected(false, 100.0), s.latency());
        let mut fresh = UpstreamStats::default();
        fresh.begin(9, 5.0);
        assert_eq!(fresh.expected(true, 6.5), Some(1.5));
        // a stream that is answering no longer counts as waiting
        fresh.first_token_of(9);
        assert_eq!((fresh.expected(true, 60.0), fresh.in_flight), (None, 1));
    }

    #[test]
    fn quantiles_are_nearest_rank_over_the_recent_samples() {
        let mut s = UpstreamStats::default();
        for i in 1..=100 {
            s.begin(i, 0.0);
            s.end(i, ok(i as f64), 0.1);
        }
        assert_eq!(s.latency_quantiles(), Some([50.0, 95.0, 99.0]));
        assert_eq!(s.first_token_p95(200), None);
        let p95 = s.first_token_p95(20).unwrap();
        assert!((90.0..=95.0).contains(&p95), "{p95}");
        for i in 0..SAMPLES as u64 {
            s.begin(i, 0.0);
            s.end(i, ok(1.0), 0.1);
        }
        assert_eq!(s.latency_quantiles(), Some([1.0, 1.0, 1.0]));
        assert_eq!(s.samples(), SAMPLES);
    }
}
