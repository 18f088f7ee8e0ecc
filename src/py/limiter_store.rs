//! The `store=` arguments of `RateLimiter` and `MultiRateLimiter`: parsing,
//! the limiter's Redis half (`StoreLimiter`), its errors and metrics.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::py::errors::{store_error, type_error, value_error};
use crate::py::redis_store::{from_store_error, RedisStore};
use crate::resilience::{local_limits, Limit, OnStoreError, StoreLimiter};
use crate::store::StoreError;

/// The keyword arguments about sharing, as given.
pub struct StoreArgs<'a, 'py> {
    pub store: Option<&'a Bound<'py, PyAny>>,
    pub name: Option<&'a str>,
    pub on_store_error: &'a str,
    pub local_share: i64,
    pub deny_cache: bool,
    pub clock_given: bool,
}

/// The Redis half (None without a store) and the limits of the in-process
/// limiter (the fallback's share of them with a store, else all of them).
pub fn attach(
    args: StoreArgs<'_, '_>,
    limits: Vec<Limit>,
    max_keys: usize,
) -> PyResult<(Option<StoreLimiter>, Vec<Limit>)> {
    let policy = OnStoreError::parse(args.on_store_error).map_err(value_error)?;
    let share = u32::try_from(args.local_share)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            value_error(format!(
                "local_share must be an integer >= 1 (the number of processes sharing the limit), got {}",
                args.local_share
            ))
        })?;
    let Some(store) = args.store.filter(|s| !s.is_none()) else {
        return Ok((None, limits));
    };
    let store = store.cast::<RedisStore>().map_err(|_| {
        type_error(format!(
            "store must be a llmedge.RedisStore, got {}",
            store
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    if args.clock_given && policy != OnStoreError::Local {
        return Err(value_error(format!(
            "clock= is not used with a store and on_store_error={:?}: decisions use the Redis \
             server's time (clock= only drives the on_store_error=\"local\" fallback)",
            policy.as_str()
        )));
    }
    let local = local_limits(&limits, share).map_err(value_error)?;
    let remote = StoreLimiter::new(
        store.get().inner().clone(),
        limits,
        args.name,
        policy,
        args.deny_cache,
        max_keys,
    )
    .map_err(value_error)?;
    Ok((Some(remote), local))
}

/// A store error that no policy covers (a key of the wrong type, a script
/// error, a failed `reset`), naming the limiter key.
pub fn limiter_error(py: Python<'_>, key: &str, e: StoreError) -> PyErr {
    match e {
        StoreError::Config(_) => from_store_error(py, e),
        other => store_error(py, format!("rate limiter key {key:?}: {other}")),
    }
}

/// `limiter.metrics()`.
pub fn metrics<'py>(
    py: Python<'py>,
    remote: Option<&StoreLimiter>,
) -> PyResult<Bound<'py, PyDict>> {
    let c = remote.map(StoreLimiter::counts).unwrap_or_default();
    let d = PyDict::new(py);
    d.set_item("shared", remote.is_some())?;
    d.set_item("store_errors", c.store_errors)?;
    d.set_item("fallbacks", c.fallbacks)?;
    d.set_item("deny_cache_hits", c.deny_cache_hits)?;
    d.set_item("decisions", c.decisions)?;
    Ok(d)
}

/// What a limiter's repr adds when it has a store.
pub fn repr_suffix(remote: Option<&StoreLimiter>) -> String {
    match remote {
        None => String::new(),
        Some(r) => format!(
            ", store={:?}, name={:?}, on_store_error={:?}",
            r.store().config().redacted_urls().join(","),
            r.name(),
            r.policy().as_str()
        ),
    }
}
