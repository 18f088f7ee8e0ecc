//! The semantic response cache: partitions, exact and vector tiers, the guard
//! against false hits, bounds and persistence.
//!
//! [`Cache`] (in `semantic`) is the cache: it owns the store and the flow of
//! every operation; [`CacheConfig`] is its validated configuration. Below it,
//! `store` keeps entries, partitions, LRU order, expiry and memory
//! accounting; `index` searches vectors; `guard` rejects false semantic
//! hits; `snapshot` is the file format and `payload` what a response and
//! metadata are as bytes; `shared` shares a cache through a Redis namespace;
//! `trim` gives the memory of removed entries back to the system.

pub mod config;
pub mod guard;
pub mod hashing;
pub mod index;
pub mod learn;
pub mod partition;
pub mod payload;
pub mod rebuild;
pub mod semantic;
pub mod shared;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod trim;

pub use config::{CacheConfig, CacheError};
pub use semantic::{Cache, ExactPhase, NewItem, Query};
