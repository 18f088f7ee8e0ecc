//! Hit, miss, guard, eviction and latency counters of one cache.

use std::collections::BTreeMap;

use super::learn::LearnStats;

/// Lookups whose latency is kept for the percentiles.
pub const LATENCY_WINDOW: usize = 4096;

#[derive(Default, Clone)]
pub struct Stats {
    pub exact_hits: u64,
    pub semantic_hits: u64,
    pub misses: u64,
    pub guard_rejections: BTreeMap<&'static str, u64>,
    pub evictions: u64,
    pub expirations: u64,
    pub invalidations: u64,
    pub inserts: u64,
    /// The error-bounded mode's counters.
    pub learn: LearnStats,
    latencies_us: Vec<f64>,
    next: usize,
}

impl Stats {
    pub fn record_latency(&mut self, us: f64) {
        if self.latencies_us.len() < LATENCY_WINDOW {
            self.latencies_us.push(us);
        } else {
            self.latencies_us[self.next] = us;
        }
        self.next = (self.next + 1) % LATENCY_WINDOW;
    }

    pub fn lookups(&self) -> u64 {
        self.exact_hits + self.semantic_hits + self.misses
    }

    pub fn hit_rate(&self) -> f64 {
        let n = self.lookups();
        if n == 0 {
            0.0
        } else {
            (self.exact_hits + self.semantic_hits) as f64 / n as f64
        }
    }

    pub fn total_rejections(&self) -> u64 {
        self.guard_rejections.values().sum()
    }

    /// The `q`-quantile (0..=1) of the recent lookup latencies, microseconds;
    /// 0 before the first lookup.
    pub fn latency_quantile(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_by(f64::total_cmp);
        let idx = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        v[idx]
    }

    pub fn reset(&mut self) {
        *self = Stats::default();
    }
}

/// A cache's statistics at one moment: the counters and the store's size.
#[derive(Clone)]
pub struct CacheStats {
    pub counters: Stats,
    pub entries: usize,
    pub partitions: usize,
    pub memory_bytes: usize,
    pub max_memory_bytes: usize,
    pub index_slack_bytes: usize,
    /// Partitions searched by a flat index and by an HNSW graph.
    pub flat_indexes: usize,
    pub hnsw_indexes: usize,
    /// Partitions whose graph is being built off the lock.
    pub index_builds: usize,
    /// The bound of the error-bounded mode, if on.
    pub max_error_rate: Option<f64>,
    /// Each partition's learned threshold (None: not enough evidence yet).
    pub partition_thresholds: Vec<Option<f32>>,
    /// Entries with enough evidence of their own for a threshold.
    pub entry_thresholds: usize,
    /// Observations the partitions hold.
    pub observations: usize,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rate() {
        let mut s = Stats::default();
        assert_eq!(s.latency_quantile(0.5), 0.0);
        for i in 1..=100 {
            s.record_latency(i as f64);
        }
        assert_eq!(s.latency_quantile(0.0), 1.0);
        assert_eq!(s.latency_quantile(1.0), 100.0);
        assert!((s.latency_quantile(0.5) - 50.0).abs() <= 1.0);
        s.exact_hits = 1;
        s.misses = 3;
        assert_eq!(s.hit_rate(), 0.25);
        for i in 0..LATENCY_WINDOW {
            s.record_latency(1000.0 + i as f64);
        }
        assert!(s.latency_quantile(0.0) >= 1000.0);
    }
}
