//! Thin PyO3 bindings: one file per Python class or function group.

pub mod circuit_breaker;
pub mod cost;
pub mod errors;
pub mod guard;
pub mod hashing_embedder;
pub mod messages;
pub mod models;
pub mod rate_limiter;
pub mod tokenizer;
