//! llmedge: fast, correct LLM plumbing for Python web backends.
//!
//! Pure-Rust cores (`tokens`, `models`, ...) carry no PyO3; `py` holds the
//! bindings. This file only assembles the `llmedge._core` module.

pub mod cache;
pub mod cost;
pub mod messages;
pub mod models;
pub mod prompt;
pub mod py;
pub mod resilience;
pub mod routing;
pub mod store;
pub mod tokens;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::clock::register(m)?;
    py::tokenizer::register(m)?;
    py::models::register(m)?;
    py::messages::register(m)?;
    py::cost::register(m)?;
    py::circuit_breaker::register(m)?;
    py::rate_limiter::register(m)?;
    py::redis_store::register(m)?;
    py::loop_bridge::register(m)?;
    py::retry::register(m)?;
    py::route_selector::register(m)?;
    py::guard::register(m)?;
    py::hashing_embedder::register(m)?;
    py::prompt_optimizer::register(m)?;
    py::semantic_cache::register(m)?;
    Ok(())
}
