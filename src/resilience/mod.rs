//! Resilience state machines: a circuit breaker and a GCRA rate limiter.
//!
//! Pure Rust with no PyO3: every operation takes the current time (`now`, in
//! seconds on any monotonic clock) as an argument, so the bindings decide where
//! time comes from (a Rust monotonic clock or an injected Python callable) and
//! the tests drive time by hand.

pub mod breaker;
pub mod limiter;
pub mod limiter_redis;
pub mod limiter_store;

pub use breaker::{
    Breaker, BreakerConfig, Metrics, Permit, Rejection, State, Transition, WindowType,
};
pub use limiter::{Decision, Gcra, Limit};
pub use limiter_redis::RedisGcra;
pub use limiter_store::{local_limits, LimiterCounts, OnStoreError, StoreLimiter, Verdict};
