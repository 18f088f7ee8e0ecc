//! `estimate_cost` and `CostTracker`.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::cost::{self, Ledger, Totals, Usage};
use crate::py::errors::value_error;
use crate::py::models::resolve;

fn usage(input_tokens: i64, output_tokens: i64, cached_input_tokens: i64) -> PyResult<Usage> {
    let field = |name: &str, v: i64| {
        u64::try_from(v)
            .map_err(|_| value_error(format!("{name}: expected a non-negative integer, got {v}")))
    };
    let u = Usage {
        input_tokens: field("input_tokens", input_tokens)?,
        output_tokens: field("output_tokens", output_tokens)?,
        cached_input_tokens: field("cached_input_tokens", cached_input_tokens)?,
    };
    u.validate().map_err(value_error)?;
    Ok(u)
}

#[pyfunction]
#[pyo3(signature = (model, input_tokens, output_tokens, *, cached_input_tokens = 0))]
fn estimate_cost(
    py: Python<'_>,
    model: &str,
    input_tokens: i64,
    output_tokens: i64,
    cached_input_tokens: i64,
) -> PyResult<f64> {
    let u = usage(input_tokens, output_tokens, cached_input_tokens)?;
    Ok(cost::estimate(&resolve(py, model)?, &u))
}

/// Thread-safe running totals of token usage and USD cost, by model.
#[pyclass(frozen, module = "llmedge._core")]
pub struct CostTracker {
    ledger: Mutex<Ledger>,
}

fn totals_dict<'py>(py: Python<'py>, t: &Totals) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("requests", t.requests)?;
    d.set_item("input_tokens", t.usage.input_tokens)?;
    d.set_item("cached_input_tokens", t.usage.cached_input_tokens)?;
    d.set_item("output_tokens", t.usage.output_tokens)?;
    d.set_item("cost", t.cost)?;
    Ok(d)
}

#[pymethods]
impl CostTracker {
    #[new]
    fn new() -> Self {
        CostTracker {
            ledger: Mutex::new(Ledger::default()),
        }
    }

    /// Record one request and return its cost in USD.
    #[pyo3(signature = (model, input_tokens, output_tokens, *, cached_input_tokens = 0))]
    fn record(
        &self,
        py: Python<'_>,
        model: &str,
        input_tokens: i64,
        output_tokens: i64,
        cached_input_tokens: i64,
    ) -> PyResult<f64> {
        let u = usage(input_tokens, output_tokens, cached_input_tokens)?;
        let c = cost::estimate(&resolve(py, model)?, &u);
        self.ledger.lock().record(model, &u, c);
        Ok(c)
    }

    /// `{"models": {name: totals}, "total": totals}`; totals hold `requests`,
    /// `input_tokens`, `cached_input_tokens`, `output_tokens` and `cost`.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshot = self.ledger.lock().clone();
        let models = PyDict::new(py);
        for (name, t) in &snapshot.by_model {
            models.set_item(name, totals_dict(py, t)?)?;
        }
        let d = PyDict::new(py);
        d.set_item("models", models)?;
        d.set_item("total", totals_dict(py, &snapshot.total)?)?;
        Ok(d)
    }

    fn reset(&self) {
        *self.ledger.lock() = Ledger::default();
    }

    fn __repr__(&self) -> String {
        let l = self.ledger.lock();
        format!(
            "CostTracker(models={}, requests={}, cost={:.6})",
            l.by_model.len(),
            l.total.requests,
            l.total.cost
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CostTracker>()?;
    m.add_function(wrap_pyfunction!(estimate_cost, m)?)?;
    Ok(())
}
