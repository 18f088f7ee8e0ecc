//! `llmedge._core.Retry` (subclassed by `llmedge.Retry`, which adds the
//! decorator and `call`/`acall`): the validated configuration, the delay
//! schedule and the per-object retry budget.

use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};

use crate::py::circuit_breaker::{callable_or_none, exception_types, opt_seconds};
use crate::py::clock::Clock;
use crate::py::errors::value_error;
use crate::routing::{RetryBudget, Schedule};

#[pyclass(frozen, subclass, module = "llmedge._core")]
pub struct Retry {
    schedule: Schedule,
    budget: Mutex<RetryBudget>,
    /// Exception classes to retry (None: the default rule in Python).
    retry_on: Option<Py<PyTuple>>,
    /// A predicate `retry_on(exc) -> bool` instead of classes.
    retry_if: Option<Py<PyAny>>,
    respect_retry_after: bool,
    deadline: Option<f64>,
    clock: Clock,
    sleep: Option<Py<PyAny>>,
    seed: Option<u64>,
}

#[pymethods]
impl Retry {
    #[new]
    #[pyo3(signature = (
        attempts = 3, *, backoff = "exponential", base = 0.1, max_delay = 10.0,
        jitter = "full", retry_on = None, respect_retry_after = true, deadline = None,
        budget = 0.2, min_retries_per_second = 1.0, budget_window = 10.0,
        clock = None, sleep = None, seed = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        attempts: i64,
        backoff: &str,
        base: f64,
        max_delay: f64,
        jitter: &str,
        retry_on: Option<Bound<'_, PyAny>>,
        respect_retry_after: bool,
        deadline: Option<f64>,
        budget: f64,
        min_retries_per_second: f64,
        budget_window: f64,
        clock: Option<Bound<'_, PyAny>>,
        sleep: Option<Bound<'_, PyAny>>,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let schedule =
            Schedule::new(attempts, backoff, base, max_delay, jitter).map_err(value_error)?;
        let budget =
            RetryBudget::new(budget, min_retries_per_second, budget_window).map_err(value_error)?;
        let deadline = opt_seconds("deadline", deadline)?;
        let (retry_on, retry_if) = match retry_on.filter(|r| !r.is_none()) {
            None => (None, None),
            Some(r) if r.is_instance_of::<PyType>() || r.is_instance_of::<PyTuple>() => {
                (exception_types(py, "retry_on", Some(&r))?, None)
            }
            Some(r) if r.is_callable() => (None, Some(r.unbind())),
            Some(r) => {
                return Err(PyTypeError::new_err(format!(
                    "retry_on must be an exception class, a tuple of them or a predicate \
                     retry_on(exc) -> bool, got {}",
                    r.repr().map(|s| s.to_string()).unwrap_or_default()
                )))
            }
        };
        Ok(Retry {
            schedule,
            budget: Mutex::new(budget),
            retry_on,
            retry_if,
            respect_retry_after,
            deadline,
            clock: Clock::from_arg(clock.as_ref())?,
            sleep: callable_or_none("sleep", sleep)?,
            seed,
        })
    }

    #[getter]
    fn attempts(&self) -> u32 {
        self.schedule.attempts
    }

    #[getter]
    fn backoff(&self) -> &'static str {
        self.schedule.backoff.name()
    }

    #[getter]
    fn base(&self) -> f64 {
        self.schedule.base
    }

    #[getter]
    fn max_delay(&self) -> f64 {
        self.schedule.max_delay
    }

    #[getter]
    fn jitter(&self) -> &'static str {
        self.schedule.jitter.name()
    }

    /// The exception classes retried, the predicate, or None (the default rule).
    #[getter]
    fn retry_on(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match (&self.retry_on, &self.retry_if) {
            (Some(t), _) => Some(t.clone_ref(py).into_any()),
            (None, Some(f)) => Some(f.clone_ref(py)),
            (None, None) => None,
        }
    }

    #[getter]
    fn respect_retry_after(&self) -> bool {
        self.respect_retry_after
    }

    #[getter]
    fn deadline(&self) -> Option<f64> {
        self.deadline
    }

    #[getter]
    fn budget(&self) -> f64 {
        self.budget.lock().ratio()
    }

    #[getter]
    fn min_retries_per_second(&self) -> f64 {
        self.budget.lock().min_per_second()
    }

    #[getter]
    fn budget_window(&self) -> f64 {
        self.budget.lock().window()
    }

    #[getter]
    fn clock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.clock {
            Clock::Python(f) => Some(f.clone_ref(py)),
            Clock::Monotonic => None,
        }
    }

    #[getter]
    fn sleep(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sleep.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// The `attempts - 1` delays before each retry (before any Retry-After
    /// and deadline): those of ``seed``, else of this object's seed, else
    /// a fresh random draw.
    #[pyo3(signature = (*, seed = None))]
    fn delays(&self, seed: Option<u64>) -> Vec<f64> {
        self.schedule.delays(seed.or(self.seed))
    }

    /// Retries the budget would allow now.
    fn budget_available(&self, py: Python<'_>) -> PyResult<f64> {
        let now = self.clock.now(py)?;
        Ok(self.budget.lock().available(now))
    }

    /// Now, on this object's clock.
    fn _now(&self, py: Python<'_>) -> PyResult<f64> {
        self.clock.now(py)
    }

    /// Counts a first attempt in the budget.
    fn _record_call(&self, py: Python<'_>) -> PyResult<()> {
        let now = self.clock.now(py)?;
        self.budget.lock().record_call(now);
        Ok(())
    }

    /// Takes one retry from the budget; False when it is spent.
    fn _try_retry(&self, py: Python<'_>) -> PyResult<bool> {
        let now = self.clock.now(py)?;
        Ok(self.budget.lock().try_retry(now))
    }

    fn __repr__(&self) -> String {
        let s = &self.schedule;
        let deadline = self.deadline.map_or("None".to_owned(), |d| d.to_string());
        let b = self.budget.lock();
        format!(
            "Retry(attempts={}, backoff={:?}, base={}, max_delay={}, jitter={:?}, deadline={}, budget={}, min_retries_per_second={})",
            s.attempts,
            s.backoff.name(),
            s.base,
            s.max_delay,
            s.jitter.name(),
            deadline,
            b.ratio(),
            b.min_per_second(),
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Retry>()
}
