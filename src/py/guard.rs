//! `llmedge.guard_check`: the cache's guard against false semantic hits
//! (core in `cache::guard`), exposed for users and tests.

use pyo3::prelude::*;

use crate::cache::guard;

/// The reason `candidate` must not answer `query` ("numbers", "negation",
/// "units", "comparison", "antonym", "entity", "substitution"), or None.
#[pyfunction]
fn guard_check(py: Python<'_>, query: &str, candidate: &str) -> Option<&'static str> {
    // a few microseconds on prompts: releasing the GIL would cost more than
    // it frees; long documents take long enough to be worth it
    let reason = if query.len() + candidate.len() > 8192 {
        py.detach(|| guard::check(query, candidate))
    } else {
        guard::check(query, candidate)
    };
    reason.map(guard::GuardReason::as_str)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(guard_check, m)?)?;
    Ok(())
}
