//! `llmedge._core.RateLimiter` and `llmedge._core.MultiRateLimiter` (subclassed
//! in `llmedge.resilience`, which adds `acquire_async`). Both bind the same
//! GCRA core: one limit, or several charged all or nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyTuple};

use crate::py::clock::Clock;
use crate::py::errors::{rate_limit_exceeded, value_error};
use crate::py::limiter_store::{self, limiter_error, StoreArgs};
use crate::py::loop_bridge::LoopBridge;
use crate::resilience::{Decision, Gcra, Limit, StoreLimiter, Verdict};
use crate::store::StoreError;

fn to_max_keys(v: i64) -> PyResult<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| value_error(format!("max_keys must be an integer >= 1, got {v}")))
}

fn to_cost(name: &str, v: i64) -> PyResult<u64> {
    u64::try_from(v).map_err(|_| value_error(format!("{name} must be an integer >= 0, got {v}")))
}

fn to_timeout(v: Option<f64>) -> PyResult<Option<f64>> {
    match v {
        Some(t) if t < 0.0 || t.is_nan() => Err(value_error(format!(
            "timeout must be None or a number of seconds >= 0, got {t}"
        ))),
        other => Ok(other),
    }
}

/// The state both classes share.
struct Shared {
    core: Mutex<Gcra>,
    clock: Clock,
    /// With a store: decisions in Redis; `core` is then the local fallback.
    remote: Option<Arc<StoreLimiter>>,
}

/// Costs the local fallback can grant: a cost valid for the shared burst may
/// exceed the fallback's smaller one.
fn clamp_costs(core: &Gcra, costs: &[u64]) -> Vec<u64> {
    core.limits()
        .iter()
        .zip(costs)
        .map(|(l, &c)| c.min(l.burst))
        .collect()
}

impl Shared {
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        self.clock.now(py)
    }

    fn try_acquire(&self, py: Python<'_>, key: &str, costs: &[u64]) -> PyResult<Decision> {
        if let Some(remote) = &self.remote {
            remote.validate_costs(costs).map_err(value_error)?;
            let verdict = py.detach(|| remote.try_acquire(key, costs));
            return self.settle(py, key, costs, verdict);
        }
        let now = self.now(py)?;
        let mut core = self.core.lock();
        core.validate_costs(costs).map_err(value_error)?;
        Ok(core.try_acquire(key, costs, now))
    }

    /// The decision from Redis or its policy, or from the local fallback.
    fn settle(
        &self,
        py: Python<'_>,
        key: &str,
        costs: &[u64],
        verdict: Result<Verdict<Decision>, StoreError>,
    ) -> PyResult<Decision> {
        match verdict {
            Ok(Verdict::Decided(d)) => Ok(d),
            Ok(Verdict::Local) => {
                let now = self.now(py)?;
                let mut core = self.core.lock();
                let costs = clamp_costs(&core, costs);
                Ok(core.try_acquire(key, &costs, now))
            }
            Err(e) => Err(limiter_error(py, key, e)),
        }
    }

    /// `try_or_wait` for a coroutine on `bridge`'s loop: the wait (a float)
    /// when it is known at once (no store, or the deny cache), else a future
    /// of that loop that the store's runtime resolves with it.
    fn try_or_wait_async<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        bridge: &Bound<'py, LoopBridge>,
        key: &str,
        costs: Vec<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(remote) = &self.remote else {
            let wait = self.try_or_wait(py, key, &costs)?;
            return Ok(PyFloat::new(py, wait).into_any());
        };
        remote.validate_costs(&costs).map_err(value_error)?;
        if let Some(d) = remote.denied_locally(key, &costs) {
            return Ok(PyFloat::new(py, wait_of(d)).into_any());
        }
        let (future, completion) = bridge.get().start(py)?;
        let (shared, remote, key) = (Arc::clone(self), Arc::clone(remote), key.to_owned());
        remote.store().clone().spawn(async move {
            let verdict = remote.try_acquire_remote(&key, &costs).await;
            completion.finish(Box::new(move |py| {
                let d = shared.settle(py, &key, &costs, verdict)?;
                Ok(PyFloat::new(py, wait_of(d)).into_any().unbind())
            }));
        });
        Ok(future)
    }

    /// Blocks (GIL released) until granted; RateLimitExceeded as soon as the
    /// wait would pass `timeout`.
    fn acquire(
        &self,
        py: Python<'_>,
        key: &str,
        costs: &[u64],
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let timeout = to_timeout(timeout)?;
        let started = Instant::now();
        loop {
            let retry_after = match self.try_acquire(py, key, costs)? {
                Decision::Allowed => return Ok(true),
                Decision::Denied { retry_after } => retry_after,
            };
            if let Some(t) = timeout {
                let left = t - started.elapsed().as_secs_f64();
                if retry_after > left {
                    return Err(rate_limit_exceeded(py, key, retry_after));
                }
            }
            let wait = Duration::from_secs_f64(retry_after.clamp(1e-6, 3600.0));
            py.detach(|| std::thread::sleep(wait));
            py.check_signals()?;
        }
    }

    fn retry_after(&self, py: Python<'_>, key: &str, costs: &[u64]) -> PyResult<f64> {
        if let Some(remote) = &self.remote {
            remote.validate_costs(costs).map_err(value_error)?;
            match py.detach(|| remote.retry_after(key, costs)) {
                Ok(Verdict::Decided(wait)) => return Ok(wait),
                Ok(Verdict::Local) => {}
                Err(e) => return Err(limiter_error(py, key, e)),
            }
            let now = self.now(py)?;
            let core = self.core.lock();
            return Ok(core.retry_after(key, &clamp_costs(&core, costs), now));
        }
        let now = self.now(py)?;
        let core = self.core.lock();
        core.validate_costs(costs).map_err(value_error)?;
        Ok(core.retry_after(key, costs, now))
    }

    fn try_or_wait(&self, py: Python<'_>, key: &str, costs: &[u64]) -> PyResult<f64> {
        Ok(wait_of(self.try_acquire(py, key, costs)?))
    }

    fn len(&self, py: Python<'_>) -> PyResult<usize> {
        if let Some(remote) = &self.remote {
            return py
                .detach(|| remote.stored_keys())
                .map_err(|e| limiter_error(py, "*", e));
        }
        let now = self.now(py)?;
        Ok(self.core.lock().purge(now))
    }

    fn available(&self, py: Python<'_>, key: &str) -> PyResult<Vec<u64>> {
        if let Some(remote) = &self.remote {
            match py.detach(|| remote.available(key)) {
                Ok(Verdict::Decided(avail)) => return Ok(avail),
                Ok(Verdict::Local) => {}
                Err(e) => return Err(limiter_error(py, key, e)),
            }
        }
        let now = self.now(py)?;
        Ok(self.core.lock().available(key, now))
    }

    /// Forgets `key` (in Redis too, with a store).
    fn reset(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let local = self.core.lock().reset(key);
        match &self.remote {
            None => Ok(local),
            Some(remote) => py
                .detach(|| remote.reset(key))
                .map_err(|e| limiter_error(py, key, e)),
        }
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.core.lock().clear();
        match &self.remote {
            None => Ok(()),
            Some(remote) => py
                .detach(|| remote.clear())
                .map_err(|e| limiter_error(py, "*", e)),
        }
    }
}

/// Seconds to wait before `d` could change: 0.0 when granted.
fn wait_of(d: Decision) -> f64 {
    match d {
        Decision::Allowed => 0.0,
        Decision::Denied { retry_after } => retry_after,
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A keyed GCRA limiter: `rate` units per `per` seconds, bursts of `burst`.
#[pyclass(frozen, subclass, module = "llmedge._core")]
pub struct RateLimiter {
    shared: Arc<Shared>,
    burst: u64,
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(signature = (
        rate, per = 1.0, *, burst = None, clock = None, max_keys = 100_000, store = None,
        name = None, on_store_error = "local", local_share = 1, deny_cache = true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rate: f64,
        per: f64,
        burst: Option<i64>,
        clock: Option<Bound<'_, PyAny>>,
        max_keys: i64,
        store: Option<Bound<'_, PyAny>>,
        name: Option<&str>,
        on_store_error: &str,
        local_share: i64,
        deny_cache: bool,
    ) -> PyResult<Self> {
        let burst = match burst {
            None => None,
            Some(b) if b >= 1 => Some(b as u64),
            Some(b) => {
                return Err(value_error(format!(
                    "burst must be an integer >= 1, got {b}"
                )))
            }
        };
        let limit = Limit::new("", rate, per, burst).map_err(value_error)?;
        let burst = limit.burst;
        let max_keys = to_max_keys(max_keys)?;
        let clock = Clock::from_arg(clock.as_ref())?;
        let sharing = StoreArgs {
            store: store.as_ref(),
            name,
            on_store_error,
            local_share,
            deny_cache,
            clock_given: !clock.is_monotonic(),
        };
        let (remote, local) = limiter_store::attach(sharing, vec![limit], max_keys)?;
        let core = Gcra::new(local, max_keys).map_err(value_error)?;
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                clock,
                remote: remote.map(Arc::new),
            }),
            burst,
        })
    }

    #[getter]
    fn rate(&self) -> f64 {
        match &self.shared.remote {
            Some(r) => r.limits()[0].rate,
            None => self.shared.core.lock().limits()[0].rate,
        }
    }

    #[getter]
    fn per(&self) -> f64 {
        self.shared.core.lock().limits()[0].per
    }

    #[getter]
    fn burst(&self) -> u64 {
        self.burst
    }

    #[getter]
    fn max_keys(&self) -> usize {
        self.shared.core.lock().max_keys()
    }

    /// Takes `cost` units for `key` if available now; never blocks.
    #[pyo3(signature = (key = "", cost = 1))]
    fn try_acquire(&self, py: Python<'_>, key: &str, cost: i64) -> PyResult<bool> {
        let cost = to_cost("cost", cost)?;
        Ok(self.shared.try_acquire(py, key, &[cost])?.allowed())
    }

    /// Waits (GIL released) until `cost` units are granted and returns True;
    /// raises RateLimitExceeded at once if the wait would exceed `timeout`.
    #[pyo3(signature = (key = "", cost = 1, timeout = None))]
    fn acquire(
        &self,
        py: Python<'_>,
        key: &str,
        cost: i64,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let cost = to_cost("cost", cost)?;
        self.shared.acquire(py, key, &[cost], timeout)
    }

    /// Like try_acquire, but raises RateLimitExceeded instead of returning False.
    #[pyo3(signature = (key = "", cost = 1))]
    fn check(&self, py: Python<'_>, key: &str, cost: i64) -> PyResult<()> {
        let cost = to_cost("cost", cost)?;
        match self.shared.try_acquire(py, key, &[cost])? {
            Decision::Allowed => Ok(()),
            Decision::Denied { retry_after } => Err(rate_limit_exceeded(py, key, retry_after)),
        }
    }

    /// Seconds until `cost` units could be taken for `key` (0.0: now).
    #[pyo3(signature = (key = "", cost = 1))]
    fn retry_after(&self, py: Python<'_>, key: &str, cost: i64) -> PyResult<f64> {
        let cost = to_cost("cost", cost)?;
        self.shared.retry_after(py, key, &[cost])
    }

    /// Units `key` could take right now.
    #[pyo3(signature = (key = ""))]
    fn available(&self, py: Python<'_>, key: &str) -> PyResult<u64> {
        Ok(self.shared.available(py, key)?[0])
    }

    /// Forgets `key` (its bucket is full again); True if it carried state.
    #[pyo3(signature = (key = ""))]
    fn reset(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        self.shared.reset(py, key)
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.shared.clear(py)
    }

    /// Whether a store is attached (state in Redis).
    #[getter]
    fn shared(&self) -> bool {
        self.shared.remote.is_some()
    }

    /// {"shared", "store_errors", "fallbacks", "deny_cache_hits", "decisions"}
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        limiter_store::metrics(py, self.shared.remote.as_deref())
    }

    #[pyo3(signature = (key, cost))]
    fn _try_or_wait(&self, py: Python<'_>, key: &str, cost: i64) -> PyResult<f64> {
        let cost = to_cost("cost", cost)?;
        self.shared.try_or_wait(py, key, &[cost])
    }

    /// `_try_or_wait` without blocking the loop: a float, or a future of
    /// `bridge`'s loop that resolves to it.
    #[pyo3(signature = (bridge, key, cost))]
    fn _try_or_wait_async<'py>(
        &self,
        py: Python<'py>,
        bridge: &Bound<'py, LoopBridge>,
        key: &str,
        cost: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cost = to_cost("cost", cost)?;
        self.shared.try_or_wait_async(py, bridge, key, vec![cost])
    }

    /// Keys that carry state (idle keys are dropped first).
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.shared.len(py)
    }

    fn __repr__(&self) -> String {
        let core = self.shared.core.lock();
        let remote = self.shared.remote.as_deref();
        let l = remote.map_or(&core.limits()[0], |r| &r.limits()[0]);
        format!(
            "RateLimiter(rate={}, per={}, burst={}, max_keys={}, keys={}{})",
            fmt_num(l.rate),
            fmt_num(l.per),
            l.burst,
            core.max_keys(),
            core.stored_keys(),
            limiter_store::repr_suffix(remote)
        )
    }
}

/// Several limits per key (requests and tokens per minute), charged together.
#[pyclass(frozen, subclass, module = "llmedge._core")]
pub struct MultiRateLimiter {
    shared: Arc<Shared>,
    names: Vec<String>,
}

impl MultiRateLimiter {
    fn costs(&self, costs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<u64>> {
        let mut out = vec![0_u64; self.names.len()];
        let Some(costs) = costs else { return Ok(out) };
        for (k, v) in costs.iter() {
            let name: String = k.extract()?;
            let Some(i) = self.names.iter().position(|n| *n == name) else {
                return Err(value_error(format!(
                    "unknown limit {name:?}; this limiter has {}",
                    self.names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let c: i64 = v.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "cost {name}= must be an integer, got {}",
                    v.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
            out[i] = to_cost(&name, c)?;
        }
        Ok(out)
    }
}

#[pymethods]
impl MultiRateLimiter {
    /// `limits` maps a name to `(rate, per)` or `(rate, per, burst)`.
    #[new]
    #[pyo3(signature = (
        limits, *, clock = None, max_keys = 100_000, store = None, name = None,
        on_store_error = "local", local_share = 1, deny_cache = true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        limits: &Bound<'_, PyDict>,
        clock: Option<Bound<'_, PyAny>>,
        max_keys: i64,
        store: Option<Bound<'_, PyAny>>,
        name: Option<&str>,
        on_store_error: &str,
        local_share: i64,
        deny_cache: bool,
    ) -> PyResult<Self> {
        if limits.is_empty() {
            return Err(value_error("limits must name at least one limit, got {}"));
        }
        let mut parsed = Vec::with_capacity(limits.len());
        let mut names = Vec::with_capacity(limits.len());
        for (k, v) in limits.iter() {
            let name: String = k.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "limit names must be strings, got {}",
                    k.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
            if name.is_empty() || name == "key" || name == "timeout" {
                return Err(value_error(format!(
                    "limit name {name:?} is not allowed (empty, or clashes with a parameter)"
                )));
            }
            let bad = || {
                value_error(format!(
                    "limit {name:?} must be (rate, per) or (rate, per, burst), got {}",
                    v.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            };
            let t = v.cast::<PyTuple>().map_err(|_| bad())?;
            let (rate, per, burst): (f64, f64, Option<i64>) = match t.len() {
                2 => {
                    let (r, p) = t.extract().map_err(|_| bad())?;
                    (r, p, None)
                }
                3 => {
                    let (r, p, b) = t.extract::<(f64, f64, i64)>().map_err(|_| bad())?;
                    (r, p, Some(b))
                }
                _ => return Err(bad()),
            };
            let burst = match burst {
                None => None,
                Some(b) if b >= 1 => Some(b as u64),
                Some(b) => {
                    return Err(value_error(format!(
                        "burst of limit {name:?} must be >= 1, got {b}"
                    )))
                }
            };
            parsed.push(Limit::new(&name, rate, per, burst).map_err(value_error)?);
            names.push(name);
        }
        let max_keys = to_max_keys(max_keys)?;
        let clock = Clock::from_arg(clock.as_ref())?;
        let sharing = StoreArgs {
            store: store.as_ref(),
            name,
            on_store_error,
            local_share,
            deny_cache,
            clock_given: !clock.is_monotonic(),
        };
        let (remote, local) = limiter_store::attach(sharing, parsed, max_keys)?;
        let core = Gcra::new(local, max_keys).map_err(value_error)?;
        Ok(MultiRateLimiter {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                clock,
                remote: remote.map(Arc::new),
            }),
            names,
        })
    }

    /// name -> (rate, per, burst)
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let core = self.shared.core.lock();
        let limits = self
            .shared
            .remote
            .as_ref()
            .map_or(core.limits(), |r| r.limits());
        for l in limits {
            d.set_item(&l.name, (l.rate, l.per, l.burst))?;
        }
        Ok(d)
    }

    #[getter]
    fn max_keys(&self) -> usize {
        self.shared.core.lock().max_keys()
    }

    /// Charges every named cost (missing names cost 0) if all limits allow it.
    #[pyo3(signature = (key = "", **costs))]
    fn try_acquire(
        &self,
        py: Python<'_>,
        key: &str,
        costs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<bool> {
        let costs = self.costs(costs)?;
        Ok(self.shared.try_acquire(py, key, &costs)?.allowed())
    }

    #[pyo3(signature = (key = "", *, timeout = None, **costs))]
    fn acquire(
        &self,
        py: Python<'_>,
        key: &str,
        timeout: Option<f64>,
        costs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<bool> {
        let costs = self.costs(costs)?;
        self.shared.acquire(py, key, &costs, timeout)
    }

    #[pyo3(signature = (key = "", **costs))]
    fn check(&self, py: Python<'_>, key: &str, costs: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let costs = self.costs(costs)?;
        match self.shared.try_acquire(py, key, &costs)? {
            Decision::Allowed => Ok(()),
            Decision::Denied { retry_after } => Err(rate_limit_exceeded(py, key, retry_after)),
        }
    }

    #[pyo3(signature = (key = "", **costs))]
    fn retry_after(
        &self,
        py: Python<'_>,
        key: &str,
        costs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<f64> {
        let costs = self.costs(costs)?;
        self.shared.retry_after(py, key, &costs)
    }

    /// name -> units `key` could take right now.
    #[pyo3(signature = (key = ""))]
    fn available<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyDict>> {
        let avail = self.shared.available(py, key)?;
        let d = PyDict::new(py);
        for (n, a) in self.names.iter().zip(avail) {
            d.set_item(n, a)?;
        }
        Ok(d)
    }

    #[pyo3(signature = (key = ""))]
    fn reset(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        self.shared.reset(py, key)
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.shared.clear(py)
    }

    /// Whether a store is attached (state in Redis).
    #[getter]
    fn shared(&self) -> bool {
        self.shared.remote.is_some()
    }

    /// {"shared", "store_errors", "fallbacks", "deny_cache_hits", "decisions"}
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        limiter_store::metrics(py, self.shared.remote.as_deref())
    }

    #[pyo3(signature = (key, costs))]
    fn _try_or_wait(
        &self,
        py: Python<'_>,
        key: &str,
        costs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<f64> {
        let costs = self.costs(costs)?;
        self.shared.try_or_wait(py, key, &costs)
    }

    #[pyo3(signature = (bridge, key, costs))]
    fn _try_or_wait_async<'py>(
        &self,
        py: Python<'py>,
        bridge: &Bound<'py, LoopBridge>,
        key: &str,
        costs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let costs = self.costs(costs)?;
        self.shared.try_or_wait_async(py, bridge, key, costs)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.shared.len(py)
    }

    fn __repr__(&self) -> String {
        let core = self.shared.core.lock();
        let remote = self.shared.remote.as_deref();
        let parts: Vec<String> = remote
            .map_or(core.limits(), |r| r.limits())
            .iter()
            .map(|l| {
                format!(
                    "{:?}: ({}, {}, burst={})",
                    l.name,
                    fmt_num(l.rate),
                    fmt_num(l.per),
                    l.burst
                )
            })
            .collect();
        format!(
            "MultiRateLimiter({{{}}}, max_keys={}, keys={}{})",
            parts.join(", "),
            core.max_keys(),
            core.stored_keys(),
            limiter_store::repr_suffix(remote)
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RateLimiter>()?;
    m.add_class::<MultiRateLimiter>()?;
    Ok(())
}
