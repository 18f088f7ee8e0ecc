//! The semantic response cache: partitions, exact and vector tiers, the guard
//! against false hits, bounds and persistence.

pub mod guard;
pub mod hashing;
pub mod index;
pub mod partition;
pub mod snapshot;
pub mod stats;
pub mod store;
