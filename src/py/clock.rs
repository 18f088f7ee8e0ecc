//! The injectable clock of the time-dependent classes (circuit breaker, rate
//! limiters, semantic cache): the process's monotonic clock, or a
//! zero-argument Python callable returning seconds, which tests use to move
//! time by hand.
//!
//! A binding takes the `clock=` argument with [`Clock::from_arg`] (None: the
//! process clock; a callable; anything else a `TypeError` naming it) and reads
//! the time with [`Clock::now`], which checks that a Python clock returned a
//! finite float (`TypeError` naming the value it returned otherwise, or
//! `ValueError` for NaN and infinities) and passes on whatever the clock
//! raised. Read the time before taking a lock: a Python clock runs Python
//! code. [`Clock::is_monotonic`] tells when it calls no Python, so that a
//! binding may read [`monotonic`] under its lock, and only when it needs to.
//!
//! The process clock counts seconds on the scale of Python's
//! `time.monotonic()` (anchored by [`register`] at import), so its readings
//! can be compared with times taken in Python.

use std::sync::OnceLock;
use std::time::Instant;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// (Rust instant, `time.monotonic()` at that instant), taken at import.
static BASE: OnceLock<(Instant, f64)> = OnceLock::new();

/// Seconds on the scale of Python's `time.monotonic()`, read without calling
/// Python.
pub fn monotonic() -> f64 {
    let (base, offset) = BASE.get_or_init(|| (Instant::now(), 0.0));
    offset + base.elapsed().as_secs_f64()
}

/// A `clock=` argument, converted once.
pub enum Clock {
    /// The process clock ([`monotonic`]).
    Monotonic,
    /// A zero-argument callable returning seconds.
    Python(Py<PyAny>),
}

impl Clock {
    /// None (or no argument) for the process clock, else a callable.
    pub fn from_arg(clock: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        match clock.filter(|c| !c.is_none()) {
            None => Ok(Clock::Monotonic),
            Some(c) if c.is_callable() => Ok(Clock::Python(c.clone().unbind())),
            Some(c) => Err(PyTypeError::new_err(format!(
                "clock must be None or a zero-argument callable returning seconds, got {}",
                repr(c)
            ))),
        }
    }

    /// Whether this is the process clock (reading it calls no Python).
    pub fn is_monotonic(&self) -> bool {
        matches!(self, Clock::Monotonic)
    }

    /// Seconds now. Calls a Python clock: never call it under a lock.
    pub fn now(&self, py: Python<'_>) -> PyResult<f64> {
        match self {
            Clock::Monotonic => Ok(monotonic()),
            Clock::Python(f) => {
                let v = f.bind(py).call0()?;
                let t: f64 = v.extract().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "clock() must return a float of seconds, got {}",
                        repr(&v)
                    ))
                })?;
                if !t.is_finite() {
                    return Err(PyValueError::new_err(format!(
                        "clock() returned {}; expected a finite float of seconds",
                        repr(&v)
                    )));
                }
                Ok(t)
            }
        }
    }
}

fn repr(v: &Bound<'_, PyAny>) -> String {
    v.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unrepresentable object>".into())
}

/// Anchors the process clock to `time.monotonic()`; called once at import.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let offset: f64 = m
        .py()
        .import("time")?
        .call_method0("monotonic")?
        .extract()?;
    let _ = BASE.set((Instant::now(), offset));
    Ok(())
}
