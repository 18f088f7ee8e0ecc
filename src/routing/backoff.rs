//! The retry schedule: how long to wait before each retry.
//!
//! `Schedule::delays` is the whole schedule as a pure function of the
//! configuration and a seed, so the documentation, the tests and the retry
//! loop all use the same numbers.

use super::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// `base * 2^i`
    Exponential,
    /// `base * (i + 1)`
    Linear,
    /// `base`
    Constant,
}

impl Backoff {
    pub const NAMES: &'static str = "'exponential', 'linear', 'constant'";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "exponential" => Ok(Self::Exponential),
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            _ => Err(format!("backoff must be one of {}, got {s:?}", Self::NAMES)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Exponential => "exponential",
            Self::Linear => "linear",
            Self::Constant => "constant",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The delay as computed.
    None,
    /// Uniform in `[0, delay]` (AWS's "full jitter").
    Full,
    /// Uniform in `[delay / 2, delay]`.
    Equal,
    /// Uniform in `[base, 3 * previous]`, capped (AWS's "decorrelated jitter").
    Decorrelated,
}

impl Jitter {
    pub const NAMES: &'static str = "'none', 'full', 'equal', 'decorrelated'";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "full" => Ok(Self::Full),
            "equal" => Ok(Self::Equal),
            "decorrelated" => Ok(Self::Decorrelated),
            _ => Err(format!("jitter must be one of {}, got {s:?}", Self::NAMES)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Full => "full",
            Self::Equal => "equal",
            Self::Decorrelated => "decorrelated",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Calls in all, the first included (>= 1).
    pub attempts: u32,
    pub backoff: Backoff,
    pub base: f64,
    pub max_delay: f64,
    pub jitter: Jitter,
}

impl Schedule {
    pub fn new(
        attempts: i64,
        backoff: &str,
        base: f64,
        max_delay: f64,
        jitter: &str,
    ) -> Result<Self, String> {
        let attempts = u32::try_from(attempts)
            .ok()
            .filter(|a| (1..=1000).contains(a))
            .ok_or_else(|| format!("attempts must be an integer in 1..=1000, got {attempts}"))?;
        if !(base.is_finite() && base >= 0.0) {
            return Err(format!(
                "base must be a finite number of seconds >= 0, got {base}"
            ));
        }
        if !(max_delay.is_finite() && max_delay >= base) {
            return Err(format!(
                "max_delay must be a finite number of seconds >= base ({base}), got {max_delay}"
            ));
        }
        Ok(Schedule {
            attempts,
            backoff: Backoff::parse(backoff)?,
            base,
            max_delay,
            jitter: Jitter::parse(jitter)?,
        })
    }

    /// The delay before retry `i` (0: the first retry) without jitter, capped.
    pub fn ceiling(&self, i: u32) -> f64 {
        let d = match self.backoff {
            Backoff::Exponential => self.base * 2f64.powi(i.min(1023) as i32),
            Backoff::Linear => self.base * f64::from(i + 1),
            Backoff::Constant => self.base,
        };
        d.min(self.max_delay)
    }

    /// The `attempts - 1` delays before each retry, drawn with `rng`.
    pub fn delays_with(&self, rng: &mut Rng) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.attempts.saturating_sub(1) as usize);
        let mut previous = self.base;
        for i in 0..self.attempts.saturating_sub(1) {
            let ceiling = self.ceiling(i);
            let d = match self.jitter {
                Jitter::None => ceiling,
                Jitter::Full => rng.uniform(0.0, ceiling),
                Jitter::Equal => rng.uniform(ceiling / 2.0, ceiling),
                Jitter::Decorrelated => {
                    let high = (previous * 3.0).max(self.base);
                    rng.uniform(self.base, high).min(self.max_delay)
                }
            };
            previous = d;
            out.push(d);
        }
        out
    }

    /// The schedule for `seed` (None: a fresh random one).
    pub fn delays(&self, seed: Option<u64>) -> Vec<f64> {
        let mut rng = seed.map_or_else(Rng::from_entropy, Rng::new);
        self.delays_with(&mut rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exponential_without_jitter_doubles_and_caps() {
        let s = Schedule::new(6, "exponential", 0.1, 1.0, "none").unwrap();
        let d = s.delays(Some(0));
        let want = [0.1, 0.2, 0.4, 0.8, 1.0];
        assert_eq!(d.len(), 5);
        for (a, b) in d.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{d:?}");
        }
    }

    #[test]
    fn linear_and_constant() {
        let s = Schedule::new(4, "linear", 0.5, 10.0, "none").unwrap();
        assert_eq!(s.delays(None), vec![0.5, 1.0, 1.5]);
        let s = Schedule::new(3, "constant", 0.25, 10.0, "none").unwrap();
        assert_eq!(s.delays(None), vec![0.25, 0.25]);
    }

    #[test]
    fn one_attempt_has_no_delays() {
        let s = Schedule::new(1, "exponential", 0.1, 1.0, "full").unwrap();
        assert!(s.delays(None).is_empty());
    }

    #[test]
    fn bad_configuration_is_rejected_with_the_value() {
        let e = Schedule::new(0, "exponential", 0.1, 1.0, "full").unwrap_err();
        assert!(e.contains("attempts") && e.contains('0'), "{e}");
        let e = Schedule::new(3, "fibonacci", 0.1, 1.0, "full").unwrap_err();
        assert!(e.contains("fibonacci") && e.contains("'linear'"), "{e}");
        let e = Schedule::new(3, "linear", 0.1, 1.0, "some").unwrap_err();
        assert!(
            e.contains("\"some\"") && e.contains("'decorrelated'"),
            "{e}"
        );
        assert!(Schedule::new(3, "linear", -1.0, 1.0, "none").is_err());
        assert!(Schedule::new(3, "linear", 2.0, 1.0, "none").is_err());
        assert!(Schedule::new(3, "linear", f64::NAN, 1.0, "none").is_err());
    }

    proptest! {
        #[test]
        fn jittered_delays_stay_within_bounds(
            attempts in 1i64..30,
            base in 0.0f64..2.0,
            extra in 0.0f64..20.0,
            seed in any::<u64>(),
            backoff in prop::sample::select(vec!["exponential", "linear", "constant"]),
            jitter in prop::sample::select(vec!["none", "full", "equal", "decorrelated"]),
        ) {
            let s = Schedule::new(attempts, backoff, base, base + extra, jitter).unwrap();
            let d = s.delays(Some(seed));
            prop_assert_eq!(d.len() as i64, attempts - 1);
            prop_assert_eq!(&d, &s.delays(Some(seed)));
            for (i, x) in d.iter().enumerate() {
                prop_assert!(*x >= 0.0 && *x <= s.max_delay + 1e-12);
                if jitter != "decorrelated" {
                    prop_assert!(*x <= s.ceiling(i as u32) + 1e-12);
                }
                if jitter == "equal" {
                    prop_assert!(*x >= s.ceiling(i as u32) / 2.0 - 1e-12);
                }
            }
        }
    }
}
