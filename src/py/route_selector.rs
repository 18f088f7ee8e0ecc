//! `llmedge._core.RouteSelector`: the decision half of `llmedge.Router`
//! (statistics and ranking); the Router in `llmedge.routing` does the HTTP.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::py::errors::value_error;
use crate::routing::{Outcome, Selector, SelectorConfig, Strategy};

#[pyclass(frozen, module = "llmedge._core")]
pub struct RouteSelector {
    core: Mutex<Selector>,
}

fn seconds(name: &str, v: f64) -> PyResult<f64> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(value_error(format!(
            "{name} must be a finite number of seconds >= 0, got {v}"
        )))
    }
}

#[pymethods]
impl RouteSelector {
    #[new]
    #[pyo3(signature = (
        weights, *, strategy = "ordered", latency_target = None, explore_after = None,
        alpha = 0.2, hedge_min_samples = 20, seed = None,
    ))]
    fn new(
        weights: Vec<f64>,
        strategy: &str,
        latency_target: Option<f64>,
        explore_after: Option<f64>,
        alpha: f64,
        hedge_min_samples: usize,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let config = SelectorConfig {
            strategy: Strategy::parse(strategy).map_err(value_error)?,
            weights,
            latency_target,
            explore_after,
            alpha,
            hedge_min_samples,
            seed,
        };
        Ok(RouteSelector {
            core: Mutex::new(Selector::new(config).map_err(value_error)?),
        })
    }

    #[getter]
    fn strategy(&self) -> &'static str {
        self.core.lock().config().strategy.name()
    }

    /// (order, hedge delay per position or None, whether the first was explored).
    fn rank(&self, stream: bool, model: &str, now: f64) -> (Vec<usize>, Vec<Option<f64>>, bool) {
        let r = self.core.lock().rank(stream, model, now);
        (r.order, r.hedge_after, r.explored)
    }

    fn has_prices(&self, model: &str) -> bool {
        self.core.lock().has_prices(model)
    }

    /// USD per million tokens per upstream for requests of ``model`` (inf: unknown).
    fn set_prices(&self, model: &str, prices: Vec<f64>) -> PyResult<()> {
        self.core
            .lock()
            .set_prices(model, prices)
            .map_err(value_error)
    }

    /// A call to upstream ``index`` starts; its id, for the call that ends it.
    fn begin(&self, index: usize, now: f64) -> PyResult<u64> {
        self.core.lock().begin(index, now).map_err(value_error)
    }

    /// The call's first token arrived (a stream keeps going).
    fn first_token(&self, index: usize, call: u64) -> PyResult<()> {
        self.core
            .lock()
            .first_token(index, call)
            .map_err(value_error)
    }

    /// An answer: seconds to the whole answer, to the first token, tokens streamed.
    #[pyo3(signature = (index, call, total, first, tokens = 0))]
    fn success(
        &self,
        index: usize,
        call: u64,
        total: f64,
        first: f64,
        tokens: u32,
    ) -> PyResult<()> {
        let (total, first) = (seconds("total", total)?, seconds("first", first)?);
        self.end(
            index,
            call,
            Outcome::Success {
                total,
                first,
                tokens,
            },
        )
    }

    fn failure(&self, index: usize, call: u64, elapsed: f64) -> PyResult<()> {
        let elapsed = seconds("elapsed", elapsed)?;
        self.end(index, call, Outcome::Failure { elapsed })
    }

    /// Abandoned after ``elapsed`` seconds (a lost hedge or race).
    fn cancelled(&self, index: usize, call: u64, elapsed: f64) -> PyResult<()> {
        let elapsed = seconds("elapsed", elapsed)?;
        self.end(index, call, Outcome::Cancelled { elapsed })
    }

    /// The statistics of upstream ``index``.
    fn stats<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Bound<'py, PyDict>> {
        let (s, weight) = {
            let core = self.core.lock();
            let n = core.len();
            let s = core
                .stats(index)
                .ok_or_else(|| {
                    value_error(format!("upstream index must be in 0..{n}, got {index}"))
                })?
                .clone();
            (s, core.config().weights[index])
        };
        let d = PyDict::new(py);
        let q = s.latency_quantiles();
        d.set_item("weight", weight)?;
        d.set_item("selections", s.selections)?;
        d.set_item("successes", s.successes)?;
        d.set_item("failures", s.failures)?;
        d.set_item("cancellations", s.cancellations)?;
        d.set_item("in_flight", s.in_flight)?;
        d.set_item("error_rate", s.error_rate())?;
        d.set_item("latency_ewma", s.latency())?;
        d.set_item("first_token_ewma", s.first_token())?;
        d.set_item("per_token_ewma", s.per_token())?;
        d.set_item("latency_p50", q.map(|q| q[0]))?;
        d.set_item("latency_p95", q.map(|q| q[1]))?;
        d.set_item("latency_p99", q.map(|q| q[2]))?;
        d.set_item("samples", s.samples())?;
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.core.lock().len()
    }

    fn __repr__(&self) -> String {
        let core = self.core.lock();
        let c = core.config();
        format!(
            "RouteSelector(upstreams={}, strategy={:?}, latency_target={:?}, explore_after={:?}, alpha={})",
            core.len(),
            c.strategy.name(),
            c.latency_target,
            c.explore_after,
            c.alpha
        )
    }
}

impl RouteSelector {
    fn end(&self, index: usize, call: u64, outcome: Outcome) -> PyResult<()> {
        self.core
            .lock()
            .end(index, call, outcome)
            .map_err(value_error)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RouteSelector>()
}
