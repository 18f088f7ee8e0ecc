//! Upstream routing decisions: the retry schedule, the retry budget, the
//! per-upstream statistics and the selection strategies.
//!
//! Pure Rust with no PyO3. Durations are measured by the caller and every
//! operation that depends on time takes `now` (seconds on any monotonic
//! clock), so the bindings choose the clock and the tests drive it by hand.
//! The HTTP work (requests, streams, hedging, cancellation) lives in Python
//! (`llmedge.routing`); this module only decides.

pub mod backoff;
pub mod budget;
pub mod rng;
pub mod select;
pub mod stats;

pub use backoff::{Backoff, Jitter, Schedule};
pub use budget::RetryBudget;
pub use select::{Selector, SelectorConfig, Strategy};
pub use stats::{Outcome, UpstreamStats};
