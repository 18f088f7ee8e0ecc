//! `llmedge._core.CircuitBreaker` (subclassed by `llmedge.CircuitBreaker`, which
//! adds the decorator, context managers and the registry) and `_GuardedFn`, the
//! Rust wrapper that guards a plain sync function with no Python frame between
//! the caller and the function.

use parking_lot::Mutex;
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::py::clock::{monotonic, Clock};
use crate::py::errors::{circuit_open, value_error};
use crate::resilience::{Breaker, BreakerConfig, Permit, Transition, WindowType};

/// Logs `err` on the "llmedge" logger; never raises.
pub fn log_error(py: Python<'_>, msg: &str, err: &PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("llmedge",))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", err.value(py))?;
        logger.call_method("error", (msg,), Some(&kwargs))?;
        Ok(())
    })();
    if let Err(e) = logged {
        e.write_unraisable(py, None);
    }
}

/// One admitted call; returned by `_acquire` to the Python-side wrappers.
#[pyclass(frozen, module = "llmedge._core", name = "_Permit")]
pub struct PyPermit {
    permit: Permit,
}

#[pymethods]
impl PyPermit {
    fn __repr__(&self) -> String {
        format!(
            "_Permit(epoch={}, probe={}, start={})",
            self.permit.epoch, self.permit.probe, self.permit.start
        )
    }
}

#[pyclass(frozen, subclass, module = "llmedge._core")]
pub struct CircuitBreaker {
    name: String,
    core: Mutex<Breaker>,
    clock: Clock,
    exclude: Option<Py<PyTuple>>,
    include: Option<Py<PyTuple>>,
    is_failure: Option<Py<PyAny>>,
    fallback: Option<Py<PyAny>>,
    listeners: Mutex<Vec<Py<PyAny>>>,
}

fn positive_int(name: &str, v: i64) -> PyResult<u32> {
    if v < 1 || v > i64::from(u32::MAX) {
        return Err(value_error(format!(
            "{name} must be an integer >= 1, got {v}"
        )));
    }
    Ok(v as u32)
}

/// A tuple of exception classes from a class or an iterable of classes.
pub fn exception_types(
    py: Python<'_>,
    name: &str,
    v: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Py<PyTuple>>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let items: Vec<Bound<'_, PyAny>> = if v.is_instance_of::<PyType>() {
        vec![v.clone()]
    } else {
        v.try_iter()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "{name} must be an exception class or a tuple of them, got {}",
                    v.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?
            .collect::<PyResult<_>>()?
    };
    let base = py.get_type::<pyo3::exceptions::PyBaseException>();
    for t in &items {
        let ok = t
            .cast::<PyType>()
            .map(|t| t.is_subclass(&base).unwrap_or(false))
            .unwrap_or(false);
        if !ok {
            return Err(PyTypeError::new_err(format!(
                "{name} must hold exception classes, got {}",
                t.repr().map(|r| r.to_string()).unwrap_or_default()
            )));
        }
    }
    Ok(Some(PyTuple::new(py, items)?.unbind()))
}

pub fn callable_or_none(name: &str, v: Option<Bound<'_, PyAny>>) -> PyResult<Option<Py<PyAny>>> {
    match v.filter(|v| !v.is_none()) {
        None => Ok(None),
        Some(v) if v.is_callable() => Ok(Some(v.unbind())),
        Some(v) => Err(PyTypeError::new_err(format!(
            "{name} must be callable, got {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))),
    }
}

pub fn opt_seconds(name: &str, v: Option<f64>) -> PyResult<Option<f64>> {
    match v {
        Some(s) if !(s.is_finite() && s > 0.0) => Err(value_error(format!(
            "{name} must be a positive finite number of seconds, got {s}"
        ))),
        other => Ok(other),
    }
}

impl CircuitBreaker {
    pub fn now(&self, py: Python<'_>) -> PyResult<f64> {
        self.clock.now(py)
    }

    /// Admits a call (firing the open -> half_open transition) or returns the
    /// `CircuitOpenError` to raise.
    pub fn admit(&self, py: Python<'_>) -> PyResult<Result<Permit, PyErr>> {
        let res = if self.clock.is_monotonic() {
            // The Rust clock calls no Python, so it may be read under the lock,
            // and only when the state machine needs it.
            let mut core = self.core.lock();
            let now = if core.needs_time() { monotonic() } else { 0.0 };
            core.acquire(now)
        } else {
            let now = self.now(py)?;
            self.core.lock().acquire(now)
        };
        match res {
            Ok((permit, t)) => {
                self.fire(py, t);
                Ok(Ok(permit))
            }
            Err(r) => Ok(Err(circuit_open(
                py,
                &self.name,
                r.state.as_str(),
                r.retry_after,
            ))),
        }
    }

    /// Records a finished call: `failed` None means "no outcome" (release).
    pub fn finish(&self, py: Python<'_>, permit: Permit, failed: Option<bool>) -> PyResult<()> {
        match failed {
            None => self.core.lock().release(permit),
            Some(failed) => {
                let t = if self.clock.is_monotonic() {
                    let mut core = self.core.lock();
                    // A success in the closed state with no slow-call or time
                    // window cannot move the state: the time is not needed.
                    let now = if failed || core.needs_time() {
                        monotonic()
                    } else {
                        0.0
                    };
                    core.record(permit, now, failed)
                } else {
                    let now = self.now(py)?;
                    self.core.lock().record(permit, now, failed)
                };
                self.fire(py, t);
            }
        }
        Ok(())
    }

    /// Whether an exception counts as a failure; None for BaseExceptions
    /// that are not errors of the guarded service (cancellation, exit).
    pub fn judge_error(&self, py: Python<'_>, err: &PyErr) -> Option<bool> {
        let value = err.value(py);
        if !value.is_instance_of::<PyException>() {
            return None;
        }
        if let Some(ex) = &self.exclude {
            if value.is_instance(ex.bind(py).as_any()).unwrap_or(false) {
                return Some(false);
            }
        }
        if let Some(inc) = &self.include {
            if !value.is_instance(inc.bind(py).as_any()).unwrap_or(false) {
                return Some(false);
            }
        }
        match &self.is_failure {
            None => Some(true),
            Some(pred) => Some(self.predicate(py, pred, value.as_any(), true)),
        }
    }

    /// Whether a returned value counts as a failure (only `is_failure` can say so).
    pub fn judge_value(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> bool {
        match &self.is_failure {
            None => false,
            Some(pred) => self.predicate(py, pred, value, false),
        }
    }

    fn predicate(
        &self,
        py: Python<'_>,
        pred: &Py<PyAny>,
        arg: &Bound<'_, PyAny>,
        default: bool,
    ) -> bool {
        match pred.bind(py).call1((arg,)).and_then(|r| r.is_truthy()) {
            Ok(b) => b,
            Err(e) => {
                log_error(
                    py,
                    &format!(
                        "is_failure predicate of circuit breaker {:?} raised",
                        self.name
                    ),
                    &e,
                );
                default
            }
        }
    }

    /// Runs the listeners for a transition, outside every lock.
    fn fire(&self, py: Python<'_>, t: Option<Transition>) {
        let Some(t) = t else { return };
        let listeners: Vec<Py<PyAny>> = {
            let guard = self.listeners.lock();
            if guard.is_empty() {
                return;
            }
            guard.iter().map(|l| l.clone_ref(py)).collect()
        };
        for l in listeners {
            if let Err(e) = l.call1(py, (self.name.as_str(), t.from.as_str(), t.to.as_str())) {
                log_error(
                    py,
                    &format!(
                        "listener of circuit breaker {:?} raised on {} -> {}",
                        self.name, t.from, t.to
                    ),
                    &e,
                );
            }
        }
    }

    pub fn call_fallback(
        &self,
        py: Python<'_>,
        err: PyErr,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        match &self.fallback {
            Some(f) => Ok(f.bind(py).call(args, kwargs)?.unbind()),
            None => Err(err),
        }
    }
}

#[pymethods]
impl CircuitBreaker {
    #[new]
    #[pyo3(signature = (
        name, *, failure_threshold = 5, recovery_timeout = 60.0, success_threshold = 3,
        failure_rate_threshold = None, window_type = "count", window_size = 100,
        minimum_calls = 10, slow_call_duration = None, slow_call_rate_threshold = None,
        half_open_max_calls = 1, backoff_multiplier = 1.0, max_recovery_timeout = None,
        exclude = None, include = None, is_failure = None, fallback = None, clock = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &str,
        failure_threshold: i64,
        recovery_timeout: f64,
        success_threshold: i64,
        failure_rate_threshold: Option<f64>,
        window_type: &str,
        window_size: i64,
        minimum_calls: i64,
        slow_call_duration: Option<f64>,
        slow_call_rate_threshold: Option<f64>,
        half_open_max_calls: i64,
        backoff_multiplier: f64,
        max_recovery_timeout: Option<f64>,
        exclude: Option<Bound<'_, PyAny>>,
        include: Option<Bound<'_, PyAny>>,
        is_failure: Option<Bound<'_, PyAny>>,
        fallback: Option<Bound<'_, PyAny>>,
        clock: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let window_type = WindowType::parse(window_type).ok_or_else(|| {
            value_error(format!(
                "window_type must be one of {}, got {window_type:?}",
                WindowType::ALLOWED
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let cfg = BreakerConfig {
            failure_threshold: positive_int("failure_threshold", failure_threshold)?,
            recovery_timeout,
            success_threshold: positive_int("success_threshold", success_threshold)?,
            failure_rate_threshold,
            window_type,
            window_size: positive_int("window_size", window_size)?,
            minimum_calls: positive_int("minimum_calls", minimum_calls)?,
            slow_call_duration: opt_seconds("slow_call_duration", slow_call_duration)?,
            slow_call_rate_threshold,
            half_open_max_calls: positive_int("half_open_max_calls", half_open_max_calls)?,
            backoff_multiplier,
            max_recovery_timeout,
        };
        cfg.validate().map_err(value_error)?;
        let exclude = exception_types(py, "exclude", exclude.as_ref())?;
        let include = exception_types(py, "include", include.as_ref())?;
        let is_failure = callable_or_none("is_failure", is_failure)?;
        let fallback = callable_or_none("fallback", fallback)?;
        let clock = Clock::from_arg(clock.as_ref())?;
        let now = clock.now(py)?;
        Ok(CircuitBreaker {
            name: name.to_owned(),
            core: Mutex::new(Breaker::new(cfg, now)),
            clock,
            exclude,
            include,
            is_failure,
            fallback,
            listeners: Mutex::new(Vec::new()),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// "closed", "open", "half_open", "forced_open" or "disabled".
    #[getter]
    fn state(&self) -> &'static str {
        self.core.lock().state().as_str()
    }

    #[getter]
    fn fallback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.fallback.as_ref().map(|f| f.clone_ref(py))
    }

    /// Seconds until an open circuit admits a probe (0.0 when closed).
    #[getter]
    fn retry_after(&self, py: Python<'_>) -> PyResult<f64> {
        let now = self.now(py)?;
        Ok(self.core.lock().metrics(now).retry_after)
    }

    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let now = self.now(py)?;
        let m = self.core.lock().metrics(now);
        let d = PyDict::new(py);
        d.set_item("name", &self.name)?;
        d.set_item("state", m.state.as_str())?;
        d.set_item("calls", m.calls)?;
        d.set_item("successes", m.successes)?;
        d.set_item("failures", m.failures)?;
        d.set_item("slow_calls", m.slow_calls)?;
        d.set_item("rejections", m.rejections)?;
        d.set_item("window_calls", m.window.calls)?;
        d.set_item("failure_rate", m.failure_rate)?;
        d.set_item("slow_call_rate", m.slow_call_rate)?;
        d.set_item("consecutive_failures", m.consecutive_failures)?;
        d.set_item("time_in_state", m.time_in_state)?;
        d.set_item("next_attempt_at", m.next_attempt_at)?;
        d.set_item("retry_after", m.retry_after)?;
        d.set_item("recovery_timeout", m.recovery_timeout)?;
        d.set_item("half_open_in_flight", m.half_open_in_flight)?;
        Ok(d)
    }

    /// Closes the circuit, clearing the window and the backoff.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        let now = self.now(py)?;
        let t = self.core.lock().reset(now);
        self.fire(py, t);
        Ok(())
    }

    /// Rejects every call until `reset()`.
    fn force_open(&self, py: Python<'_>) -> PyResult<()> {
        let now = self.now(py)?;
        let t = self.core.lock().force_open(now);
        self.fire(py, t);
        Ok(())
    }

    /// Admits every call and never opens until `reset()`; outcomes are still counted.
    fn disable(&self, py: Python<'_>) -> PyResult<()> {
        let now = self.now(py)?;
        let t = self.core.lock().disable(now);
        self.fire(py, t);
        Ok(())
    }

    /// `fn(name, old_state, new_state)` after every transition.
    fn add_listener(&self, listener: Bound<'_, PyAny>) -> PyResult<()> {
        let l = callable_or_none("listener", Some(listener))?
            .ok_or_else(|| PyTypeError::new_err("listener must be callable, got None"))?;
        self.listeners.lock().push(l);
        Ok(())
    }

    fn remove_listener(&self, py: Python<'_>, listener: Bound<'_, PyAny>) -> PyResult<bool> {
        // Compare by identity: calling __eq__ under the lock could run Python code.
        let ptr = listener.as_ptr();
        let removed = {
            let mut guard = self.listeners.lock();
            guard
                .iter()
                .position(|l| l.as_ptr() == ptr)
                .map(|i| guard.remove(i))
        };
        let found = removed.is_some();
        drop(removed);
        let _ = py;
        Ok(found)
    }

    /// Admission for the Python-side wrappers: a permit or CircuitOpenError.
    fn _acquire(&self, py: Python<'_>) -> PyResult<PyPermit> {
        match self.admit(py)? {
            Ok(permit) => Ok(PyPermit { permit }),
            Err(e) => Err(e),
        }
    }

    /// The call succeeded and has no value to judge (a `with` block, a stream).
    fn _on_success(&self, py: Python<'_>, permit: &PyPermit) -> PyResult<()> {
        self.finish(py, permit.permit, Some(false))
    }

    /// The call returned `value` (judged by `is_failure`).
    fn _on_result(
        &self,
        py: Python<'_>,
        permit: &PyPermit,
        value: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let failed = self.judge_value(py, &value);
        self.finish(py, permit.permit, Some(failed))
    }

    /// The call raised `exc` (judged by include / exclude / is_failure).
    fn _on_error(&self, py: Python<'_>, permit: &PyPermit, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let err = PyErr::from_value(exc);
        let failed = self.judge_error(py, &err);
        self.finish(py, permit.permit, failed)
    }

    /// Hands a permit back without an outcome.
    fn _release(&self, py: Python<'_>, permit: &PyPermit) -> PyResult<()> {
        self.finish(py, permit.permit, None)
    }

    fn __repr__(&self) -> String {
        let b = self.core.lock();
        let c = b.config();
        let mut s = format!(
            "CircuitBreaker({:?}, state={:?}, failure_threshold={}, recovery_timeout={}, \
             success_threshold={}, half_open_max_calls={}",
            self.name,
            b.state().as_str(),
            c.failure_threshold,
            c.recovery_timeout,
            c.success_threshold,
            c.half_open_max_calls
        );
        if let Some(r) = c.failure_rate_threshold {
            s += &format!(
                ", failure_rate_threshold={r}, window_type={:?}, window_size={}, minimum_calls={}",
                c.window_type.as_str(),
                c.window_size,
                c.minimum_calls
            );
        }
        if let Some(d) = c.slow_call_duration {
            s += &format!(", slow_call_duration={d}");
        }
        if c.backoff_multiplier != 1.0 {
            s += &format!(", backoff_multiplier={}", c.backoff_multiplier);
        }
        s.push(')');
        s
    }
}

/// A sync function guarded by a breaker: `__call__` admits, calls the function
/// with no lock held, records the outcome, and returns or re-raises.
#[pyclass(frozen, dict, module = "llmedge._core", name = "_GuardedFn")]
pub struct GuardedFn {
    breaker: Py<CircuitBreaker>,
    func: Py<PyAny>,
}

static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pymethods]
impl GuardedFn {
    #[new]
    fn new(breaker: Py<CircuitBreaker>, func: Bound<'_, PyAny>) -> PyResult<Self> {
        if !func.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "can only guard a callable, got {}",
                func.repr().map(|r| r.to_string()).unwrap_or_default()
            )));
        }
        Ok(GuardedFn {
            breaker,
            func: func.unbind(),
        })
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let b = self.breaker.get();
        let permit = match b.admit(py)? {
            Ok(p) => p,
            Err(rejected) => return b.call_fallback(py, rejected, args, kwargs),
        };
        match self.func.bind(py).call(args, kwargs) {
            Ok(v) => {
                let failed = b.judge_value(py, &v);
                b.finish(py, permit, Some(failed))?;
                Ok(v.unbind())
            }
            Err(e) => {
                let failed = b.judge_error(py, &e);
                if let Err(clock_err) = b.finish(py, permit, failed) {
                    log_error(py, "recording a failed call raised", &clock_err);
                }
                Err(e)
            }
        }
    }

    /// Binds like a function, so decorated methods receive `self`.
    fn __get__(
        slf: Bound<'_, Self>,
        obj: Option<Bound<'_, PyAny>>,
        owner: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let _ = owner;
        let py = slf.py();
        match obj.filter(|o| !o.is_none()) {
            None => Ok(slf.into_any().unbind()),
            Some(obj) => {
                let mt = METHOD_TYPE.get_or_try_init(py, || {
                    Ok::<_, PyErr>(py.import("types")?.getattr("MethodType")?.unbind())
                })?;
                Ok(mt.bind(py).call1((slf, obj))?.unbind())
            }
        }
    }

    #[getter]
    fn breaker(&self, py: Python<'_>) -> Py<CircuitBreaker> {
        self.breaker.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "<guarded {} by circuit {:?}>",
            self.func.bind(py).repr()?,
            self.breaker.get().name
        ))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CircuitBreaker>()?;
    m.add_class::<GuardedFn>()?;
    m.add_class::<PyPermit>()?;
    Ok(())
}
