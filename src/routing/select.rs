//! Choosing the order in which a request tries the upstreams.
//!
//! Every strategy returns a full ranking (the first upstream, then the
//! fallbacks), never a single pick: the caller walks it, skipping upstreams
//! whose breaker is open or whose rate limit is spent.

use std::collections::HashMap;

use super::rng::Rng;
use super::stats::{Outcome, UpstreamStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// As configured.
    Ordered,
    /// A random order, each upstream first with a probability proportional
    /// to its weight (weight 0: only as a fallback).
    Weighted,
    /// Lowest expected latency (time to first token for streams), divided
    /// by the share of calls that succeed.
    LeastLatency,
    /// Cheapest among the upstreams that meet the latency target and fail
    /// less than half their calls, then the others.
    LeastCost,
    /// Fewest calls in flight, then lowest expected latency.
    LeastBusy,
}

impl Strategy {
    pub const NAMES: &'static str =
        "'ordered', 'weighted', 'least_latency', 'least_cost', 'least_busy'";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ordered" => Ok(Self::Ordered),
            "weighted" => Ok(Self::Weighted),
            "least_latency" => Ok(Self::LeastLatency),
            "least_cost" => Ok(Self::LeastCost),
            "least_busy" => Ok(Self::LeastBusy),
            _ => Err(format!(
                "strategy must be one of {}, got {s:?}",
                Self::NAMES
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ordered => "ordered",
            Self::Weighted => "weighted",
            Self::LeastLatency => "least_latency",
            Self::LeastCost => "least_cost",
            Self::LeastBusy => "least_busy",
        }
    }

    /// Whether the ranking depends on what traffic taught (and so needs
    /// exploration to notice an upstream that recovered).
    fn learns(self) -> bool {
        matches!(self, Self::LeastLatency | Self::LeastCost | Self::LeastBusy)
    }
}

#[derive(Debug, Clone)]
pub struct SelectorConfig {
    pub strategy: Strategy,
    pub weights: Vec<f64>,
    /// Seconds; `least_cost` prefers upstreams expected to answer within it.
    pub latency_target: Option<f64>,
    /// An upstream not selected for this many seconds goes first once
    /// (learning strategies only); None: never.
    pub explore_after: Option<f64>,
    /// Weight of the newest sample in the moving averages, in (0, 1].
    pub alpha: f64,
    /// Answers seen before an upstream's p95 is trusted as a hedging delay.
    pub hedge_min_samples: usize,
    pub seed: Option<u64>,
}

impl SelectorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.weights.is_empty() {
            return Err("upstreams must not be empty: give at least one upstream".into());
        }
        for (i, w) in self.weights.iter().enumerate() {
            if !(w.is_finite() && *w >= 0.0) {
                return Err(format!(
                    "upstream {i}: weight must be a finite number >= 0, got {w}"
                ));
            }
        }
        if self.strategy == Strategy::Weighted && self.weights.iter().all(|w| *w == 0.0) {
            return Err("strategy 'weighted' needs at least one upstream with weight > 0".into());
        }
        if let Some(t) = self.latency_target {
            if !(t.is_finite() && t > 0.0) {
                return Err(format!(
                    "latency_target must be None or a number of seconds > 0, got {t}"
                ));
            }
        }
        if let Some(e) = self.explore_after {
            if !(e.is_finite() && e > 0.0) {
                return Err(format!(
                    "explore_after must be None or a number of seconds > 0, got {e}"
                ));
            }
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(format!("alpha must be in (0, 1], got {}", self.alpha));
        }
        Ok(())
    }
}

/// A selection: the order to try, and for each position the delay after
/// which a hedge may start (None: not enough samples yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    pub order: Vec<usize>,
    pub hedge_after: Vec<Option<f64>>,
    /// Whether the first upstream was chosen to explore it.
    pub explored: bool,
}

#[derive(Debug)]
pub struct Selector {
    config: SelectorConfig,
    stats: Vec<UpstreamStats>,
    /// When each upstream was last selected (first in a ranking or called);
    /// NaN until the first ranking, which counts as a try of every upstream.
    last_tried: Vec<f64>,
    rng: Rng,
    seq: u64,
    /// Price per upstream for each request model, as set by the caller
    /// (USD per million tokens; infinite when unknown).
    prices: HashMap<String, Vec<f64>>,
}

impl Selector {
    pub fn new(config: SelectorConfig) -> Result<Self, String> {
        config.validate()?;
        let n = config.weights.len();
        Ok(Selector {
            rng: config.seed.map_or_else(Rng::from_entropy, Rng::new),
            config,
            stats: vec![UpstreamStats::default(); n],
            last_tried: vec![f64::NAN; n],
            seq: 0,
            prices: HashMap::new(),
        })
    }

    pub fn config(&self) -> &SelectorConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.stats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    pub fn stats(&self, i: usize) -> Option<&UpstreamStats> {
        self.stats.get(i)
    }

    pub fn has_prices(&self, model: &str) -> bool {
        self.prices.contains_key(model)
    }

    pub fn set_prices(&mut self, model: &str, prices: Vec<f64>) -> Result<(), String> {
        if prices.len() != self.stats.len() {
            return Err(format!(
                "prices must have one entry per upstream ({}), got {}",
                self.stats.len(),
                prices.len()
            ));
        }
        if let Some(p) = prices.iter().find(|p| p.is_nan() || **p < 0.0) {
            return Err(format!(
                "prices must be numbers >= 0 (inf: unknown), got {p}"
            ));
        }
        self.prices.insert(model.to_owned(), prices);
        Ok(())
    }

    /// Expected latency, inflated by the error rate: a failure costs its own
    /// time plus a fallback, and fast failures must not look fast.
    fn score(&self, i: usize, stream: bool, now: f64) -> f64 {
        let s = &self.stats[i];
        let expected = s.expected(stream, now).unwrap_or(0.0).max(0.001);
        let err = s.error_rate();
        expected * (1.0 + 4.0 * err) / (1.0 - err).max(0.05)
    }

    pub fn rank(&mut self, stream: bool, model: &str, now: f64) -> Ranking {
        let n = self.stats.len();
        for t in self.last_tried.iter_mut().filter(|t| t.is_nan()) {
            *t = now;
        }
        let mut order: Vec<usize> = (0..n).collect();
        match self.config.strategy {
            Strategy::Ordered => {}
            Strategy::Weighted => {
                // Efraimidis-Spirakis: sorting by -ln(u) / w draws a weighted
                // random permutation.
                let keys: Vec<f64> = self
                    .config
                    .weights
                    .iter()
                    .map(|&w| {
                        let u = self.rng.next_f64().max(f64::MIN_POSITIVE);
                        if w > 0.0 {
                            -u.ln() / w
                        } else {
                            f64::INFINITY
                        }
                    })
                    .collect();
                order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
            }
            Strategy::LeastLatency => {
                let scores: Vec<f64> = (0..n).map(|i| self.score(i, stream, now)).collect();
                order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
            }
            Strategy::LeastCost => {
                let prices = self.prices.get(model);
                let key: Vec<(bool, f64, f64)> = (0..n)
                    .map(|i| {
                        let s = &self.stats[i];
                        let fast = match (self.config.latency_target, s.expected(stream, now)) {
                            (Some(t), Some(e)) => e <= t,
                            _ => true,
                        };
                        let ok = fast && s.error_rate() < 0.5;
                        let price = prices.map_or(f64::INFINITY, |p| p[i]);
                        (!ok, price, self.score(i, stream, now))
                    })
                    .collect();
                order.sort_by(|&a, &b| {
                    let (x, y) = (key[a], key[b]);
                    x.0.cmp(&y.0)
                        .then(x.1.total_cmp(&y.1))
                        .then(x.2.total_cmp(&y.2))
                });
            }
            Strategy::LeastBusy => {
                let key: Vec<(u32, f64)> = (0..n)
                    .map(|i| (self.stats[i].in_flight, self.score(i, stream, now)))
                    .collect();
                order.sort_by(|&a, &b| key[a].0.cmp(&key[b].0).then(key[a].1.total_cmp(&key[b].1)));
            }
        }
        let hedge_after: Vec<Option<f64>> = order
            .iter()
            .map(|&i| self.stats[i].first_token_p95(self.config.hedge_min_samples))
            .collect();
        let mut ranking = Ranking {
            order,
            hedge_after,
            explored: false,
        };
        if let (true, Some(after)) = (self.config.strategy.learns(), self.config.explore_after) {
            // The upstream left alone longest, if that is longer than
            // `explore_after`, goes first once; its hedge delay stays that of
            // the upstream it displaced, so exploring costs little latency.
            let stale = (1..n)
                .filter(|&p| now - self.last_tried[ranking.order[p]] >= after)
                .min_by(|&a, &b| {
                    self.last_tried[ranking.order[a]].total_cmp(&self.last_tried[ranking.order[b]])
                });
            if let Some(p) = stale {
                let i = ranking.order.remove(p);
                ranking.order.insert(0, i);
                let displaced = ranking.hedge_after[0];
                ranking.hedge_after.remove(p);
                ranking.hedge_after.insert(0, displaced);
                ranking.explored = true;
            }
        }
        if let Some(&first) = ranking.order.first() {
            self.last_tried[first] = now;
        }
        ranking
    }

    /// A call to upstream `i` starts: its id, for `end`.
    pub fn begin(&mut self, i: usize, now: f64) -> Result<u64, String> {
        let n = self.stats.len();
        let s = self
            .stats
            .get_mut(i)
            .ok_or_else(|| format!("upstream index must be in 0..{n}, got {i}"))?;
        self.seq += 1;
        s.begin(self.seq, now);
        self.last_tried[i] = now;
        Ok(self.seq)
    }

    /// The call `id` to upstream `i` produced its first token.
    pub fn first_token(&mut self, i: usize, id: u64) -> Result<(), String> {
        let n = self.stats.len();
        self.stats
            .get_mut(i)
            .ok_or_else(|| format!("upstream index must be in 0..{n}, got {i}"))?
            .first_token_of(id);
        Ok(())
    }

    /// The call `id` to upstream `i` ended.
    pub fn end(&mut self, i: usize, id: u64, outcome: Outcome) -> Result<(), String> {
        let n = self.stats.len();
        let alpha = self.config.alpha;
        self.stats
            .get_mut(i)
            .ok_or_else(|| format!("upstream index must be in 0..{n}, got {i}"))?
            .end(id, outcome, alpha);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(strategy: &str, n: usize) -> SelectorConfig {
        SelectorConfig {
            strategy: Strategy::parse(strategy).unwrap(),
            weights: vec![1.0; n],
            latency_target: None,
            explore_after: None,
            alpha: 0.3,
            hedge_min_samples: 5,
            seed: Some(1),
        }
    }

    fn ok(s: &mut Selector, i: usize, seconds: f64) {
        let id = s.begin(i, 0.0).unwrap();
        s.end(
            i,
            id,
            Outcome::Success {
                total: seconds,
                first: seconds,
                tokens: 0,
            },
        )
        .unwrap();
    }

    #[test]
    fn ordered_is_the_configured_order() {
        let mut s = Selector::new(config("ordered", 3)).unwrap();
        ok(&mut s, 0, 9.0);
        assert_eq!(s.rank(false, "m", 0.0).order, vec![0, 1, 2]);
    }

    #[test]
    fn least_latency_prefers_the_fast_and_penalises_errors() {
        let mut s = Selector::new(config("least_latency", 3)).unwrap();
        for _ in 0..5 {
            ok(&mut s, 0, 0.5);
            ok(&mut s, 1, 0.1);
            ok(&mut s, 2, 0.2);
        }
        assert_eq!(s.rank(false, "m", 0.0).order, vec![1, 2, 0]);
        for _ in 0..5 {
            let id = s.begin(1, 0.0).unwrap();
            s.end(1, id, Outcome::Failure { elapsed: 0.01 }).unwrap();
        }
        assert_eq!(s.rank(false, "m", 0.0).order[0], 2);
    }

    #[test]
    fn least_cost_prefers_cheap_within_the_latency_target() {
        let mut c = config("least_cost", 3);
        c.latency_target = Some(1.0);
        let mut s = Selector::new(c).unwrap();
        s.set_prices("m", vec![5.0, 1.0, 2.0]).unwrap();
        assert_eq!(s.rank(false, "m", 0.0).order, vec![1, 2, 0]);
        for _ in 0..5 {
            ok(&mut s, 1, 3.0); // the cheapest is too slow now
        }
        assert_eq!(s.rank(false, "m", 0.0).order, vec![2, 0, 1]);
        // unknown model: no prices, latency decides
        assert_eq!(s.rank(false, "other", 0.0).order[2], 1);
        assert!(s.set_prices("m", vec![1.0]).is_err());
        assert!(s.set_prices("m", vec![1.0, f64::NAN, 1.0]).is_err());
    }

    #[test]
    fn least_busy_counts_calls_in_flight() {
        let mut s = Selector::new(config("least_busy", 2)).unwrap();
        let id = s.begin(0, 0.0).unwrap();
        assert_eq!(s.rank(false, "m", 0.0).order, vec![1, 0]);
        s.end(0, id, Outcome::Cancelled { elapsed: 0.0 }).unwrap();
        assert_eq!(s.rank(false, "m", 0.0).order, vec![0, 1]);
    }

    #[test]
    fn weighted_follows_the_weights() {
        let mut c = config("weighted", 3);
        c.weights = vec![3.0, 1.0, 0.0];
        let mut s = Selector::new(c).unwrap();
        let mut first = [0usize; 3];
        for _ in 0..4000 {
            let r = s.rank(false, "m", 0.0);
            first[r.order[0]] += 1;
            assert_eq!(r.order[2], 2, "weight 0 is only a fallback");
        }
        let share = first[0] as f64 / 4000.0;
        assert!((0.72..0.78).contains(&share), "{first:?}");
    }

    #[test]
    fn exploration_retries_an_upstream_left_alone() {
        let mut c = config("least_latency", 2);
        c.explore_after = Some(10.0);
        let mut s = Selector::new(c).unwrap();
        for _ in 0..5 {
            ok(&mut s, 0, 0.1);
            ok(&mut s, 1, 5.0);
        }
        let r = s.rank(false, "m", 1.0);
        assert_eq!(r.order, vec![0, 1]);
        assert!(!r.explored);
        let r = s.rank(false, "m", 10.5);
        assert_eq!(r.order, vec![1, 0]);
        assert!(r.explored);
        // hedged after the displaced upstream's p95, not the slow one's
        assert_eq!(r.hedge_after[0], Some(0.1));
        assert_eq!(s.rank(false, "m", 11.0).order, vec![0, 1]);
    }

    #[test]
    fn hedge_delay_needs_enough_samples() {
        let mut s = Selector::new(config("ordered", 2)).unwrap();
        for _ in 0..4 {
            ok(&mut s, 0, 0.2);
        }
        assert_eq!(s.rank(false, "m", 0.0).hedge_after, vec![None, None]);
        ok(&mut s, 0, 0.2);
        assert_eq!(s.rank(false, "m", 0.0).hedge_after[0], Some(0.2));
    }

    #[test]
    fn bad_configuration() {
        let e = Strategy::parse("fastest").unwrap_err();
        assert!(e.contains("fastest") && e.contains("least_cost"), "{e}");
        let mut c = config("ordered", 2);
        c.weights = vec![1.0, -1.0];
        assert!(Selector::new(c).unwrap_err().contains("-1"));
        assert!(Selector::new(config("ordered", 0))
            .unwrap_err()
            .contains("empty"));
        let mut c = config("weighted", 2);
        c.weights = vec![0.0, 0.0];
        assert!(Selector::new(c).is_err());
        let mut s = Selector::new(config("ordered", 2)).unwrap();
        assert!(s.begin(5, 0.0).is_err());
        assert!(s.end(5, 1, Outcome::Cancelled { elapsed: 0.0 }).is_err());
    }
}
