//! `llmedge._core.RedisStore` (subclassed in `llmedge.store`, which adds
//! `aping`): the Python face of `crate::store::Store`. Every call releases
//! the GIL while it waits for Redis.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyList, PyString, PyTuple};

use crate::py::errors::{store_unusable, type_error, value_error};
use crate::py::loop_bridge::LoopBridge;
use crate::store::{Counters, Store, StoreConfig, StoreError};

/// A `StoreError` as a Python exception: configuration problems are
/// ValueErrors, everything else `llmedge.StoreError`.
pub fn store_error(py: Python<'_>, e: StoreError) -> PyErr {
    match e {
        StoreError::Config(msg) => value_error(msg),
        other => store_unusable(py, other.to_string()),
    }
}

fn to_urls(url: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = url.cast::<PyString>() {
        return Ok(vec![s.to_str()?.to_owned()]);
    }
    if url.is_instance_of::<PyList>() || url.is_instance_of::<PyTuple>() {
        return url
            .try_iter()?
            .map(|u| {
                u?.extract::<String>().map_err(|_| {
                    type_error("url must be a string or a list of strings (cluster nodes)")
                })
            })
            .collect();
    }
    Err(type_error(format!(
        "url must be a string or a list of strings (cluster nodes), got {}",
        url.get_type().name()?
    )))
}

fn set_counters(d: &Bound<'_, PyDict>, c: &Counters) -> PyResult<()> {
    d.set_item("errors", c.errors)?;
    d.set_item("timeouts", c.timeouts)?;
    d.set_item("fallbacks", c.fallbacks)?;
    d.set_item("reconnects", c.reconnects)
}

/// A connection to Redis (one server or a Redis Cluster) that limiters and
/// breakers share through `store=`.
#[pyclass(frozen, subclass, module = "llmedge._core")]
pub struct RedisStore {
    store: Arc<Store>,
}

impl RedisStore {
    pub fn inner(&self) -> &Arc<Store> {
        &self.store
    }
}

#[pymethods]
impl RedisStore {
    #[new]
    #[pyo3(signature = (
        url = None, *, key_prefix = "llmedge:", timeout = 0.05, connect_timeout = 1.0,
        cluster = None, health_interval = 1.0
    ))]
    fn new(
        py: Python<'_>,
        url: Option<&Bound<'_, PyAny>>,
        key_prefix: &str,
        timeout: f64,
        connect_timeout: f64,
        cluster: Option<bool>,
        health_interval: f64,
    ) -> PyResult<Self> {
        let urls = match url {
            None => vec!["redis://localhost:6379/0".to_owned()],
            Some(u) => to_urls(u)?,
        };
        let config = StoreConfig::new(urls, cluster, key_prefix, timeout, connect_timeout)
            .and_then(|c| c.with_health_interval(health_interval))
            .map_err(value_error)?;
        let store = py
            .detach(|| Store::connect(config))
            .map_err(|e| store_error(py, e))?;
        Ok(RedisStore { store })
    }

    /// Round-trip seconds of a PING; raises StoreError when Redis does not
    /// answer within `timeout`.
    fn ping(&self, py: Python<'_>) -> PyResult<f64> {
        py.detach(|| self.store.ping_blocking())
            .map(|d| d.as_secs_f64())
            .map_err(|e| store_error(py, e))
    }

    /// `ping` for a coroutine: a future of `bridge`'s loop that the store's
    /// runtime resolves.
    fn _ping_async<'py>(
        &self,
        py: Python<'py>,
        bridge: &Bound<'py, LoopBridge>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (future, completion) = bridge.get().start(py)?;
        let store = Arc::clone(&self.store);
        self.store.spawn(async move {
            let rtt = store.ping().await;
            completion.finish(Box::new(move |py| match rtt {
                Ok(d) => Ok(PyFloat::new(py, d.as_secs_f64()).into_any().unbind()),
                Err(e) => Err(store_error(py, e)),
            }));
        });
        Ok(future)
    }

    /// Connection state (checked by a heartbeat every `health_interval`
    /// seconds while idle), last error, round-trip percentiles and counters.
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.store.health();
        let d = PyDict::new(py);
        d.set_item("connected", h.connected)?;
        d.set_item("cluster", h.cluster)?;
        d.set_item("url", h.url)?;
        d.set_item("last_error", h.last_error)?;
        d.set_item("rtt_p50_ms", h.rtt_p50_ms)?;
        d.set_item("rtt_p99_ms", h.rtt_p99_ms)?;
        d.set_item("scripts_loaded", h.scripts_loaded)?;
        set_counters(&d, &h.counters)?;
        Ok(d)
    }

    /// Counters since creation: calls, errors, timeouts, fallbacks, reconnects.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.store.counters();
        let d = PyDict::new(py);
        d.set_item("calls", c.calls)?;
        set_counters(&d, &c)?;
        Ok(d)
    }

    /// Drops the connections; later calls raise StoreError("store is closed")
    /// and limiters and breakers apply their fallback policy.
    fn close(&self) {
        self.store.close();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.store.is_closed()
    }

    #[getter]
    fn key_prefix(&self) -> &str {
        self.store.key_prefix()
    }

    #[getter]
    fn timeout(&self) -> f64 {
        self.store.timeout().as_secs_f64()
    }

    #[getter]
    fn cluster(&self) -> bool {
        self.store.config().cluster
    }

    /// Seconds between the heartbeat PINGs of an idle connection.
    #[getter]
    fn health_interval(&self) -> f64 {
        self.store.config().health_interval.as_secs_f64()
    }

    fn __repr__(&self) -> String {
        let c = self.store.config();
        let urls = c.redacted_urls();
        let url = if c.cluster {
            format!("{urls:?}")
        } else {
            format!("{:?}", urls[0])
        };
        format!(
            "RedisStore(url={url}, key_prefix={:?}, timeout={}, cluster={}, connected={})",
            c.key_prefix,
            c.timeout.as_secs_f64(),
            if c.cluster { "True" } else { "False" },
            if self.store.is_connected() && !self.store.is_closed() {
                "True"
            } else {
                "False"
            },
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RedisStore>()?;
    Ok(())
}
