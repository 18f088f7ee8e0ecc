//! Thin PyO3 bindings: one file per Python class or function group.

pub mod cache_hit;
pub mod circuit_breaker;
pub mod clock;
pub mod convert;
pub mod cost;
pub mod embedder;
pub mod errors;
pub mod guard;
pub mod hashing_embedder;
pub mod limiter_store;
pub mod loop_bridge;
pub mod messages;
pub mod models;
pub mod prompt_optimizer;
pub mod rate_limiter;
pub mod redis_store;
pub mod retry;
pub mod route_selector;
pub mod semantic_cache;
pub mod tokenizer;
