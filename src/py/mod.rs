//! Thin PyO3 bindings: one file per Python class or function group.

pub mod cost;
pub mod errors;
pub mod messages;
pub mod models;
pub mod tokenizer;
