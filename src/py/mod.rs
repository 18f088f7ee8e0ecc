//! Thin PyO3 bindings: one file per Python class or function group.

pub mod circuit_breaker;
pub mod errors;
pub mod rate_limiter;
pub mod tokenizer;
