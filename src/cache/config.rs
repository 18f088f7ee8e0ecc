//! The semantic cache's configuration, validated once, and the checks of the
//! values a cache is given (prompts, time-to-live, vectors).

use std::fmt;

use super::index::{HnswParams, IndexKind};
use super::store::{StoreConfig, StoreError};

/// Configuration of a [`Cache`](super::Cache), checked by
/// [`CacheConfig::validate`] when the cache is built.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Embedding dimension.
    pub dim: usize,
    /// Cosine similarity a semantic hit needs, in [-1, 1]; at 1 only exact
    /// hits are served and no query is embedded.
    pub threshold: f64,
    /// Seconds an entry lives unless its insert says otherwise; `None` never
    /// expires.
    pub ttl: Option<f64>,
    pub max_entries: usize,
    pub max_memory_mb: f64,
    /// Whether semantic candidates pass the guard (`cache::guard`).
    pub guard: bool,
    pub index: IndexKind,
    pub hnsw: HnswParams,
    /// The error-bounded mode (`cache::learn`): the rate of wrong semantic
    /// answers to stay within, in (0, 1); `None` serves every candidate at
    /// or above `threshold`. With a bound, `threshold` is the floor below
    /// which no candidate is considered.
    pub max_error_rate: Option<f64>,
    /// Seed of the verification draws (`None`: from the clock).
    pub seed: Option<u64>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dim: 384,
            threshold: 0.85,
            ttl: Some(3600.0),
            max_entries: 10_000,
            max_memory_mb: 100.0,
            guard: true,
            index: IndexKind::Auto,
            hnsw: HnswParams::default(),
            max_error_rate: None,
            seed: None,
        }
    }
}

/// Why the cache refused a setting, an argument or an entry.
#[derive(Clone, Debug, PartialEq)]
pub enum CacheError {
    /// A setting or argument out of range; the message names it.
    Invalid(String),
    /// An entry the store cannot hold.
    Store(StoreError),
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Invalid(msg) => f.write_str(msg),
            CacheError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CacheError {}

impl From<StoreError> for CacheError {
    fn from(e: StoreError) -> Self {
        CacheError::Store(e)
    }
}

fn invalid(msg: String) -> CacheError {
    CacheError::Invalid(msg)
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), CacheError> {
        if !(-1.0..=1.0).contains(&self.threshold) {
            return Err(invalid(format!(
                "threshold must be a cosine similarity in [-1, 1], got {}",
                self.threshold
            )));
        }
        ttl_seconds(self.ttl)?;
        if self.max_entries == 0 {
            return Err(invalid("max_entries must be at least 1, got 0".into()));
        }
        if !(self.max_memory_mb > 0.0 && self.max_memory_mb.is_finite()) {
            return Err(invalid(format!(
                "max_memory_mb must be a positive finite number, got {}",
                self.max_memory_mb
            )));
        }
        if self.dim == 0 {
            return Err(invalid("dim must be a positive integer, got 0".into()));
        }
        if let Some(e) = self.max_error_rate {
            if !(e > 0.0 && e < 1.0) {
                return Err(invalid(format!(
                    "max_error_rate must be a rate strictly between 0 and 1 (or None), got {e}"
                )));
            }
        }
        Ok(())
    }

    pub fn max_memory_bytes(&self) -> usize {
        (self.max_memory_mb * 1024.0 * 1024.0) as usize
    }

    /// Whether lookups stop after the exact tier.
    pub fn exact_only(&self) -> bool {
        self.threshold >= 1.0
    }

    /// Seconds an entry inserted with `ttl` lives (`INFINITY`: never
    /// expires); `None` takes the configured default.
    pub fn entry_ttl(&self, ttl: Option<f64>) -> Result<f64, CacheError> {
        ttl_seconds(ttl.or(self.ttl))
    }

    /// `v` checked against the cache's dimension and L2-normalised; `what`
    /// names the vector in the error.
    pub fn normalized(&self, v: Vec<f32>, what: &str) -> Result<Vec<f32>, CacheError> {
        normalized(v, self.dim, what)
    }

    pub(super) fn store(&self) -> StoreConfig {
        StoreConfig {
            dim: self.dim,
            max_entries: self.max_entries,
            max_memory_bytes: self.max_memory_bytes(),
            index: self.index,
            hnsw: self.hnsw,
            max_error_rate: self.max_error_rate,
            seed: self.seed,
        }
    }
}

/// A time-to-live in seconds, `INFINITY` for `None` (no expiry).
fn ttl_seconds(ttl: Option<f64>) -> Result<f64, CacheError> {
    match ttl {
        None => Ok(f64::INFINITY),
        Some(t) if t > 0.0 && !t.is_nan() => Ok(t),
        Some(t) => Err(invalid(format!(
            "ttl must be a positive number of seconds (or None for no expiry), got {t}"
        ))),
    }
}

/// A prompt must have a non-blank character.
pub fn check_prompt(prompt: &str) -> Result<(), CacheError> {
    if prompt.trim().is_empty() {
        return Err(invalid(format!(
            "prompt must be a non-empty string, got {prompt:?}"
        )));
    }
    Ok(())
}

/// The dimension of a cache whose embedder reports `own` (if it does) and
/// whose caller asked for `given`.
pub fn embedder_dim(own: Option<usize>, given: Option<usize>) -> Result<usize, CacheError> {
    let dim = match (own, given) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(format!(
                "dim={b} disagrees with the embedder's dimension {a}"
            )))
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => {
            return Err(invalid(
                "cannot tell the embedder's dimension: give it a `dim` attribute or pass dim="
                    .into(),
            ))
        }
    };
    if dim == 0 {
        return Err(invalid("dim must be a positive integer, got 0".into()));
    }
    Ok(dim)
}

/// `v` checked (length `dim`, finite, not zero) and L2-normalised.
pub(super) fn normalized(mut v: Vec<f32>, dim: usize, what: &str) -> Result<Vec<f32>, CacheError> {
    if v.len() != dim {
        return Err(invalid(format!(
            "{what} has dimension {}, expected {dim}",
            v.len()
        )));
    }
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(invalid(format!(
            "{what} has a non-finite value {x} at index {i}"
        )));
    }
    // Eight partial sums: one running f64 sum is a chain of dependent adds
    // (a tenth of a lookup's time at 384 dimensions).
    let mut part = [0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (p, x) in part.iter_mut().zip(c) {
            *p += f64::from(*x) * f64::from(*x);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum();
    let norm = (part.iter().sum::<f64>() + tail).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(invalid(format!(
            "{what} is all zeros (or its norm is not finite); cosine similarity needs a \
             non-zero vector"
        )));
    }
    let inv = (1.0 / norm) as f32;
    v.iter_mut().for_each(|x| *x *= inv);
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(r: Result<(), CacheError>) -> String {
        r.unwrap_err().to_string()
    }

    fn with_rate(e: f64) -> String {
        message(
            CacheConfig {
                max_error_rate: Some(e),
                ..CacheConfig::default()
            }
            .validate(),
        )
    }

    #[test]
    fn validate_names_the_bad_setting() {
        assert!(CacheConfig::default().validate().is_ok());
        let with = |f: fn(&mut CacheConfig)| {
            let mut c = CacheConfig::default();
            f(&mut c);
            message(c.validate())
        };
        assert!(with(|c| c.threshold = 1.5).starts_with("threshold"));
        assert!(with(|c| c.threshold = f64::NAN).starts_with("threshold"));
        assert!(with(|c| c.ttl = Some(0.0)).starts_with("ttl"));
        assert!(with(|c| c.ttl = Some(f64::NAN)).starts_with("ttl"));
        assert!(with(|c| c.max_entries = 0).starts_with("max_entries"));
        assert!(with(|c| c.max_memory_mb = f64::INFINITY).starts_with("max_memory_mb"));
        assert!(with(|c| c.dim = 0).starts_with("dim"));
        for bad in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(with_rate(bad).starts_with("max_error_rate"));
        }
        assert!(CacheConfig {
            max_error_rate: Some(0.02),
            ..CacheConfig::default()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn entry_ttl_defaults_to_the_config() {
        let mut c = CacheConfig::default();
        assert_eq!(c.entry_ttl(None), Ok(3600.0));
        assert_eq!(c.entry_ttl(Some(5.0)), Ok(5.0));
        assert!(c.entry_ttl(Some(-1.0)).is_err());
        c.ttl = None;
        assert_eq!(c.entry_ttl(None), Ok(f64::INFINITY));
    }

    #[test]
    fn dimensions_and_vectors() {
        assert_eq!(embedder_dim(Some(8), None), Ok(8));
        assert_eq!(embedder_dim(None, Some(4)), Ok(4));
        assert!(embedder_dim(Some(8), Some(4)).is_err());
        assert!(embedder_dim(None, None).is_err());
        assert!(embedder_dim(Some(0), None).is_err());
        let v = normalized(vec![3.0, 4.0], 2, "v").unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        for (bad, text) in [
            (vec![1.0], "dimension 1, expected 2"),
            (vec![1.0, f32::NAN], "non-finite value NaN at index 1"),
            (vec![0.0, 0.0], "all zeros"),
        ] {
            let e = normalized(bad, 2, "v").unwrap_err().to_string();
            assert!(e.contains(text), "{e}");
        }
        assert!(check_prompt(" \n").is_err());
        assert!(check_prompt("x").is_ok());
    }
}
