//! `llmedge.CacheHit`: what a semantic cache lookup returns.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;
use serde_json::Value;

use crate::cache::store::{Found, HitToken};
use crate::py::convert::{decode_response, from_json};
use crate::py::errors::value_error;

#[pyclass(frozen, module = "llmedge._core")]
pub struct CacheHit {
    #[pyo3(get)]
    pub response: Py<PyAny>,
    #[pyo3(get)]
    pub score: f64,
    #[pyo3(get)]
    pub kind: &'static str,
    #[pyo3(get)]
    pub matched_prompt: String,
    #[pyo3(get)]
    pub age: f64,
    #[pyo3(get)]
    pub metadata: Py<PyAny>,
    /// Whether the error-bounded mode drew this hit for verification.
    #[pyo3(get)]
    pub verify: bool,
    /// The entry it came from and the cache it belongs to (feedback).
    pub token: Option<HitToken>,
    pub cache: u64,
    /// Set by the first feedback on this hit: a hit is judged once.
    judged: AtomicBool,
}

impl CacheHit {
    /// What the cache found, converted to Python values.
    pub fn from_found(py: Python<'_>, f: Found, cache: u64) -> PyResult<Py<CacheHit>> {
        let response = decode_response(py, &f.response)?.unbind();
        let metadata = match &f.metadata {
            Some(m) => {
                let v: Value = serde_json::from_slice(m)
                    .map_err(|_| value_error("cached metadata is corrupted"))?;
                from_json(py, &v)?.unbind()
            }
            None => py.None(),
        };
        Py::new(
            py,
            CacheHit {
                response,
                score: f64::from(f.score),
                kind: if f.exact { "exact" } else { "semantic" },
                matched_prompt: f.prompt,
                age: f.age,
                metadata,
                verify: f.verify,
                token: f.token,
                cache,
                judged: AtomicBool::new(false),
            },
        )
    }

    /// Marks the hit judged; false if it already was (by another thread too).
    pub fn take_judgement(&self) -> bool {
        !self.judged.swap(true, Ordering::AcqRel)
    }

    /// Undoes [`take_judgement`](Self::take_judgement) when the judgement
    /// could not be recorded.
    pub fn release_judgement(&self) {
        self.judged.store(false, Ordering::Release);
    }
}

#[pymethods]
impl CacheHit {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let response = self.response.bind(py).repr()?;
        let mut response = response.to_string();
        if response.chars().count() > 60 {
            response = response.chars().take(57).collect::<String>() + "...";
        }
        Ok(format!(
            "CacheHit(kind={:?}, score={:.4}, matched_prompt={:?}, age={:.3}, response={})",
            self.kind, self.score, self.matched_prompt, self.age, response
        ))
    }
}
