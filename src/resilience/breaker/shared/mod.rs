//! A breaker whose state is shared through Redis by every process that uses
//! the same name on the same store.

pub mod protocol;
