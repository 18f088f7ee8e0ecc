//! `llmedge.CacheHit`: what a semantic cache lookup returns.

use pyo3::prelude::*;

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
