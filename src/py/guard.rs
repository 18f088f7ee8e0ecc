//! `llmedge.guard_check`: the cache's guard against false semantic hits
//! (core in `cache::guard`), exposed for users and tests.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::cache::guard;

/// Cosines computed in single precision may pass 1 by a rounding error.
const COSINE_SLACK: f64 = 1e-3;

/// The reason `candidate` must not answer `query` ("numbers", "negation",
/// "units", "comparison", "antonym", "entity", "substitution"), or None.
/// `similarity`: the prompts' embedding cosine, when known (a near-synonym
/// swap then counts only below the guard's vouching level).
#[pyfunction]
#[pyo3(signature = (query, candidate, similarity=None))]
fn guard_check(
    py: Python<'_>,
    query: &str,
    candidate: &str,
    similarity: Option<f64>,
) -> PyResult<Option<&'static str>> {
    if let Some(s) = similarity {
        if !(s.is_finite() && (-1.0 - COSINE_SLACK..=1.0 + COSINE_SLACK).contains(&s)) {
            return Err(PyValueError::new_err(format!(
                "similarity must be a cosine similarity in [-1, 1] or None, got {s}"
            )));
        }
    }
    let similarity = similarity.map(|s| s as f32);
    // a few microseconds on prompts: releasing the GIL would cost more than
    // it frees; long documents take long enough to be worth it
    let reason = if query.len() + candidate.len() > 8192 {
        py.detach(|| guard::check_with_similarity(query, candidate, similarity))
    } else {
        guard::check_with_similarity(query, candidate, similarity)
    };
    Ok(reason.map(guard::GuardReason::as_str))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(guard_check, m)?)?;
    Ok(())
}
