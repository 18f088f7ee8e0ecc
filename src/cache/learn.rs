//! The error-bounded mode: what entries and partitions learn about how
//! similar a prompt must be for a cached answer to be right, and the rule
//! that decides from it whether a candidate may be served.
//!
//! An observation is one semantic candidate whose answer was checked: its
//! cosine similarity to the prompt and whether its answer was right (by
//! feedback, by a verified hit, or by a miss whose fresh answer was
//! compared with the candidate's). Each entry keeps its own; each partition
//! pools those of all its entries, and an entry too young to have enough of
//! its own borrows its partition's.
//!
//! The rule, for a bound `eps` on the rate of wrong answers: among the
//! observations at similarity `>= t`, `n(t)` in all and `e(t)` wrong, the
//! upper end of the Wilson score interval (z = 1.96: 97.5% one-sided) of the
//! error rate must be at most `eps`. Candidate thresholds are tested from the
//! highest similarity down, starting where `n(t)` first reaches the least
//! count that could pass with no error at all, and the walk stops at the
//! first one that fails (fixed-sequence testing: the order depends on the
//! similarities only, never on the outcomes, so the chance that any accepted
//! threshold is wrong stays at the test's level without a correction for the
//! many thresholds tried). Starting lower (at a larger share of the
//! observations) was measured to overshoot the bound on mqp.csv. The
//! learned threshold is the last one that passed; with none, the candidate
//! is refused: a young cache serves nothing semantic until it has the
//! evidence.
//!
//! Observations below the learned threshold come from every miss that had a
//! candidate, those above it only from the sampled verifications: the tail
//! over-represents its lower, more error-prone part, which makes the
//! estimate conservative, never optimistic.

use std::collections::VecDeque;

/// Two-sided 95% normal quantile (one-sided 97.5%).
pub const Z: f64 = 1.959_963_984_540_054;
/// Observations an entry keeps (the newest).
pub const ENTRY_OBSERVATIONS: usize = 256;
/// Observations a partition keeps (the newest).
pub const POOL_OBSERVATIONS: usize = 4096;
/// The least probability with which a served semantic hit is verified.
pub const MIN_VERIFY: f64 = 0.01;

/// One checked candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub similarity: f32,
    pub correct: bool,
}

/// The Wilson score interval (z = [`Z`]) of `errors` in `n`; `(0, 1)` for n = 0.
pub fn wilson(errors: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = errors as f64 / n;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    let lo = if errors == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    (lo, (centre + half).min(1.0))
}

/// The least number of observations, all correct, whose upper bound is
/// within `eps`.
pub fn least_evidence(eps: f64) -> u64 {
    // z^2 / (n + z^2) <= eps
    let n = (Z * Z * (1.0 - eps) / eps).ceil().max(1.0) as u64;
    // the closed form can be one short of the interval's rounding
    (n.saturating_sub(1)..n + 3)
        .find(|&k| wilson(0, k).1 <= eps)
        .unwrap_or(n + 3)
}

/// A learned threshold and the evidence behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tail {
    /// Similarity a candidate needs.
    pub threshold: f32,
    /// Observations at or above it, and how many were wrong.
    pub n: u64,
    pub errors: u64,
}

impl Tail {
    /// How often a hit served on this evidence is verified: the width of
    /// the interval relative to the bound, so verification is certain when
    /// the threshold has just been learned and falls as evidence grows
    /// (about as 1/n), never below [`MIN_VERIFY`].
    pub fn verify_probability(&self, eps: f64) -> f64 {
        let (_, hi) = wilson(self.errors, self.n);
        let p = self.errors as f64 / self.n.max(1) as f64;
        ((hi - p) / eps).clamp(MIN_VERIFY, 1.0)
    }
}

/// The rule of the module documentation applied to `obs`.
pub fn learned_threshold<'a>(
    obs: impl IntoIterator<Item = &'a Observation>,
    eps: f64,
) -> Option<Tail> {
    let mut sorted: Vec<Observation> = obs.into_iter().copied().collect();
    sorted.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    let start = least_evidence(eps);
    let (mut n, mut errors) = (0u64, 0u64);
    let mut passed = None;
    for (i, o) in sorted.iter().enumerate() {
        n += 1;
        errors += u64::from(!o.correct);
        // a threshold is tested once all observations at its value are in
        let last_of_value = sorted
            .get(i + 1)
            .is_none_or(|next| next.similarity != o.similarity);
        if !last_of_value || n < start {
            continue;
        }
        if wilson(errors, n).1 > eps {
            break;
        }
        passed = Some(Tail {
            threshold: o.similarity,
            n,
            errors,
        });
    }
    passed
}

/// What one entry has learned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntryLearning {
    /// The newest observations, oldest first.
    pub observations: Vec<Observation>,
    /// Observations ever made of this entry (more than `observations`
    /// holds once it is full): tells a replica which ones it already has.
    pub total: u64,
}

impl EntryLearning {
    pub fn record(&mut self, o: Observation) {
        if self.observations.len() == ENTRY_OBSERVATIONS {
            self.observations.remove(0);
        }
        self.observations.push(o);
        self.total += 1;
    }

    /// The highest similarity at which this entry's answer was wrong.
    pub fn veto(&self) -> f32 {
        self.observations
            .iter()
            .filter(|o| !o.correct)
            .map(|o| o.similarity)
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// Whether the observations `self` has beyond `earlier` (the same
    /// entry as a replica knew it) and which they are.
    pub fn newer_than(&self, earlier: Option<&EntryLearning>) -> &[Observation] {
        let known = earlier.map_or(0, |e| e.total);
        let fresh = self.total.saturating_sub(known);
        let k = usize::try_from(fresh)
            .map_or(self.observations.len(), |f| f.min(self.observations.len()));
        &self.observations[self.observations.len() - k..]
    }
}

/// What a partition has learned: its entries' observations pooled.
#[derive(Clone, Debug, Default)]
pub struct PartitionLearning {
    observations: VecDeque<Observation>,
    pub total: u64,
    /// The learned threshold for the current observations and bound.
    cached: Option<(f64, Option<Tail>)>,
}

impl PartialEq for PartitionLearning {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total && self.observations == other.observations
    }
}

impl PartitionLearning {
    pub fn from_parts(observations: Vec<Observation>, total: u64) -> Self {
        let mut p = PartitionLearning {
            observations: observations.into(),
            total,
            cached: None,
        };
        while p.observations.len() > POOL_OBSERVATIONS {
            p.observations.pop_front();
        }
        p
    }

    pub fn record(&mut self, o: Observation) {
        if self.observations.len() == POOL_OBSERVATIONS {
            self.observations.pop_front();
        }
        self.observations.push_back(o);
        self.total += 1;
        self.cached = None;
    }

    pub fn observations(&self) -> impl Iterator<Item = &Observation> {
        self.observations.iter()
    }

    pub fn len(&self) -> usize {
        self.observations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.observations.is_empty()
    }

    /// The partition's learned threshold under bound `eps`.
    pub fn tail(&mut self, eps: f64) -> Option<Tail> {
        match self.cached {
            Some((e, t)) if e == eps => t,
            _ => {
                let t = learned_threshold(&self.observations, eps);
                self.cached = Some((eps, t));
                t
            }
        }
    }
}

/// Whether a candidate at `similarity` is served, and on what evidence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Served; the evidence that allowed it.
    Serve(Tail),
    /// Not enough evidence that an answer this similar is right.
    Refuse,
}

/// The decision for a candidate of `entry` at `similarity`: the entry's
/// own evidence when it has enough to pass the rule; otherwise the
/// partition's, and never at or below a similarity at which this entry's
/// answer was already wrong.
pub fn decide(
    entry: Option<&EntryLearning>,
    partition: Option<Tail>,
    similarity: f32,
    eps: f64,
) -> Decision {
    if let Some(own) = entry.and_then(|e| learned_threshold(&e.observations, eps)) {
        return if similarity >= own.threshold {
            Decision::Serve(own)
        } else {
            Decision::Refuse
        };
    }
    let veto = entry.map_or(f32::NEG_INFINITY, EntryLearning::veto);
    match partition {
        Some(t) if similarity >= t.threshold && similarity > veto => Decision::Serve(t),
        _ => Decision::Refuse,
    }
}

/// A small deterministic generator (SplitMix64) for the verification draws.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where an observation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `feedback(hit, correct)`.
    Feedback,
    /// A served hit also sent to the LLM.
    Verified,
    /// A refused candidate compared with the fresh answer of its miss.
    Probe,
}

/// Counters of the error-bounded mode.
#[derive(Clone, Debug, Default)]
pub struct LearnStats {
    /// Semantic candidates refused for want of evidence (misses).
    pub refused: u64,
    /// Served hits sent to the LLM as well, and how many were wrong.
    pub verified: u64,
    pub verified_wrong: u64,
    /// Refused candidates whose answer was compared with the fresh one.
    pub probed: u64,
    pub probed_wrong: u64,
    /// Explicit feedback, and how much said wrong.
    pub feedback: u64,
    pub feedback_wrong: u64,
}

impl LearnStats {
    pub fn count(&mut self, source: Source, correct: bool) {
        let (n, wrong) = match source {
            Source::Feedback => (&mut self.feedback, &mut self.feedback_wrong),
            Source::Verified => (&mut self.verified, &mut self.verified_wrong),
            Source::Probe => (&mut self.probed, &mut self.probed_wrong),
        };
        *n += 1;
        *wrong += u64::from(!correct);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn obs(similarity: f32, correct: bool) -> Observation {
        Observation {
            similarity,
            correct,
        }
    }

    #[test]
    fn wilson_bounds_and_least_evidence() {
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(5, 100);
        assert!(lo < 0.05 && hi > 0.05 && lo > 0.0 && hi < 0.12, "{lo} {hi}");
        for eps in [0.01, 0.02, 0.05, 0.3] {
            let n = least_evidence(eps);
            assert!(wilson(0, n).1 <= eps);
            assert!(wilson(0, n - 1).1 > eps, "{eps}: {n}");
        }
        assert_eq!(least_evidence(0.02), 189);
    }

    #[test]
    fn no_threshold_without_evidence_then_one_as_it_grows() {
        let eps = 0.05;
        let need = least_evidence(eps) as usize;
        let mut few: Vec<_> = (0..need - 1)
            .map(|i| obs(0.99 - i as f32 * 1e-4, true))
            .collect();
        assert_eq!(learned_threshold(&few, eps), None);
        few.push(obs(0.5, true));
        let t = learned_threshold(&few, eps).unwrap();
        assert_eq!((t.threshold, t.n, t.errors), (0.5, need as u64, 0));
    }

    #[test]
    fn the_walk_stops_at_the_first_failure() {
        let eps = 0.05;
        // clean above 0.9, wrong below: the threshold stays above the errors
        let mut o: Vec<_> = (0..400).map(|i| obs(0.9 + i as f32 * 2e-4, true)).collect();
        o.extend((0..100).map(|i| obs(0.8 + i as f32 * 1e-4, false)));
        let t = learned_threshold(&o, eps).unwrap();
        assert!(t.threshold >= 0.8, "{t:?}");
        let rate = t.errors as f64 / t.n as f64;
        assert!(wilson(t.errors, t.n).1 <= eps && rate < eps);
        // a clean stretch below the errors is never reached
        o.extend((0..2000).map(|i| obs(0.5 + i as f32 * 1e-5, true)));
        assert!(learned_threshold(&o, eps).unwrap().threshold >= 0.8);
    }

    #[test]
    fn decisions_use_own_evidence_then_partition_with_veto() {
        let eps = 0.3;
        let tail = Tail {
            threshold: 0.9,
            n: 100,
            errors: 0,
        };
        let pool = Some(tail);
        assert_eq!(decide(None, None, 0.99, eps), Decision::Refuse);
        assert_eq!(decide(None, pool, 0.95, eps), Decision::Serve(tail));
        assert_eq!(decide(None, pool, 0.85, eps), Decision::Refuse);
        let mut e = EntryLearning::default();
        e.record(obs(0.96, false));
        assert_eq!(decide(Some(&e), pool, 0.95, eps), Decision::Refuse);
        assert!(matches!(
            decide(Some(&e), pool, 0.97, eps),
            Decision::Serve(_)
        ));
        // enough of its own: it may go below the partition's threshold
        let mut hot = EntryLearning::default();
        for i in 0..20 {
            hot.record(obs(0.8 + i as f32 * 0.001, true));
        }
        assert!(
            matches!(decide(Some(&hot), pool, 0.85, eps), Decision::Serve(t) if t.threshold == 0.8)
        );
    }

    #[test]
    fn entries_tell_replicas_what_is_new() {
        let mut e = EntryLearning::default();
        for i in 0..(ENTRY_OBSERVATIONS + 10) {
            e.record(obs(i as f32, true));
        }
        assert_eq!(e.observations.len(), ENTRY_OBSERVATIONS);
        assert_eq!(e.newer_than(None).len(), ENTRY_OBSERVATIONS);
        let mut earlier = e.clone();
        earlier.total -= 3;
        assert_eq!(e.newer_than(Some(&earlier)).len(), 3);
        assert_eq!(e.newer_than(Some(&e)).len(), 0);
    }

    #[test]
    fn verification_falls_with_evidence_and_rng_is_seeded() {
        let p = |n| {
            Tail {
                threshold: 0.9,
                n,
                errors: 0,
            }
            .verify_probability(0.02)
        };
        assert!(p(189) > 0.9 && p(1000) < p(400) && p(1_000_000) == MIN_VERIFY);
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<f64> = (0..5).map(|_| a.next_f64()).collect();
        assert_eq!(xs, (0..5).map(|_| b.next_f64()).collect::<Vec<_>>());
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
