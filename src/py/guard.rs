//! `llmedge.guard_check`: the cache's guard against false semantic hits
//! (core in `cache::guard`), exposed for users and tests.

use pyo3::prelude::*;

use crate::cache::guard;

/// The reason `candidate` must not answer `query` ("numbers", "negation",
/// "units", "comparison", "antonym", "entity", "substitution"), or None.
#[pyfunction]
fn guard_check(query: &str, candidate: &str) -> Option<&'static str> {
    guard::check(query, candidate).map(guard::GuardReason::as_str)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(guard_check, m)?)?;
    Ok(())
}
