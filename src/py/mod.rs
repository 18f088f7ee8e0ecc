//! Thin PyO3 bindings: one file per Python class or function group.

pub mod errors;
pub mod guard;
pub mod hashing_embedder;
pub mod tokenizer;
