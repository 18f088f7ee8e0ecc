//! `register_model`, `model_info` and `list_models`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::models::{self, ModelInfo, ModelKind};
use crate::py::errors::{unknown_encoding, unknown_model, value_error};
use crate::tokens::EncodingName;

/// Look a model up, raising `UnknownModelError` with suggestions.
pub fn resolve(py: Python<'_>, model: &str) -> PyResult<ModelInfo> {
    models::lookup(model).map_err(|e| unknown_model(py, e))
}

fn non_negative(field: &str, v: i64) -> PyResult<u64> {
    u64::try_from(v)
        .map_err(|_| value_error(format!("{field}: expected a non-negative integer, got {v}")))
}

#[pyfunction]
#[pyo3(signature = (
    name, *, encoding, context_window, max_output_tokens = None, input_price = 0.0,
    output_price = 0.0, cached_input_price = None, kind = "chat"
))]
#[allow(clippy::too_many_arguments)]
fn register_model(
    py: Python<'_>,
    name: &str,
    encoding: &str,
    context_window: i64,
    max_output_tokens: Option<i64>,
    input_price: f64,
    output_price: f64,
    cached_input_price: Option<f64>,
    kind: &str,
) -> PyResult<()> {
    let enc = EncodingName::parse(encoding)
        .ok_or_else(|| unknown_encoding(py, Some("encoding"), encoding))?;
    let kind = ModelKind::parse(kind).ok_or_else(|| {
        value_error(format!(
            "kind: expected \"chat\" or \"embedding\", got {kind:?}"
        ))
    })?;
    if context_window <= 0 {
        return Err(value_error(format!(
            "context_window: expected a positive number of tokens, got {context_window}"
        )));
    }
    let context_window = non_negative("context_window", context_window)?;
    let max_output_tokens = match max_output_tokens {
        Some(v) => non_negative("max_output_tokens", v)?,
        None => context_window,
    };
    let info = ModelInfo {
        name: name.to_string(),
        encoding: enc,
        context_window,
        max_output_tokens,
        input_price,
        output_price,
        cached_input_price,
        kind,
    };
    models::try_register(info).map_err(value_error)
}

pub fn info_dict<'py>(py: Python<'py>, info: &ModelInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &info.name)?;
    d.set_item("encoding", info.encoding.as_str())?;
    d.set_item("context_window", info.context_window)?;
    d.set_item("max_output_tokens", info.max_output_tokens)?;
    d.set_item("input_price", info.input_price)?;
    d.set_item("output_price", info.output_price)?;
    d.set_item("cached_input_price", info.cached_input_price)?;
    d.set_item("kind", info.kind.as_str())?;
    Ok(d)
}

#[pyfunction]
fn model_info<'py>(py: Python<'py>, model: &str) -> PyResult<Bound<'py, PyDict>> {
    info_dict(py, &resolve(py, model)?)
}

#[pyfunction]
#[pyo3(signature = (kind = None))]
fn list_models(kind: Option<&str>) -> PyResult<Vec<String>> {
    let kind = match kind {
        None => None,
        Some(k) => Some(ModelKind::parse(k).ok_or_else(|| {
            value_error(format!(
                "kind: expected \"chat\", \"embedding\" or None, got {k:?}"
            ))
        })?),
    };
    Ok(models::names()
        .into_iter()
        .filter(|n| match kind {
            None => true,
            Some(k) => models::lookup(n).map(|i| i.kind == k).unwrap_or(false),
        })
        .collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(register_model, m)?)?;
    m.add_function(wrap_pyfunction!(model_info, m)?)?;
    m.add_function(wrap_pyfunction!(list_models, m)?)?;
    Ok(())
}
