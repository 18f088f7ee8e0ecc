//! llmedge: fast, correct LLM plumbing for Python web backends.
//!
//! Pure-Rust cores (`tokens`, `models`, ...) carry no PyO3; `py` holds the
//! bindings. This file only assembles the `llmedge._core` module.

pub mod cache;
pub mod models;
pub mod py;
pub mod tokens;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::tokenizer::register(m)?;
    py::semantic_cache::register(m)?;
    Ok(())
}
