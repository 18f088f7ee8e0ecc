//! Thin PyO3 bindings: one file per Python class or function group.

pub mod cache_hit;
pub mod errors;
pub mod semantic_cache;
pub mod tokenizer;
