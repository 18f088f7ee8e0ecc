//! Thin PyO3 bindings: one file per Python class or function group.

pub mod errors;
pub mod prompt_optimizer;
pub mod tokenizer;
