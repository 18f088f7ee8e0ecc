//! The embedder a `SemanticCache` runs: the built-in hashing embedder (with
//! the GIL released) or a Python callable taking a list of strings.

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::cache::config::embedder_dim;
use crate::cache::hashing::HashingEmbedder;
use crate::py::convert::{read_matrix, type_name};
use crate::py::errors::{type_error, value_error};

pub enum Embedder {
    Hashing(HashingEmbedder),
    Python(Py<PyAny>),
}

impl Embedder {
    /// The embedder of the `embedder=` and `dim=` arguments, its identity
    /// and its dimension.
    pub fn from_args(
        embedder: Option<&Bound<'_, PyAny>>,
        dim: Option<usize>,
    ) -> PyResult<(Embedder, String, usize)> {
        match embedder {
            Some(e) if !e.is_none() => {
                if !e.is_callable() {
                    return Err(type_error(format!(
                        "embedder must be a callable taking a list of strings, not {}",
                        type_name(e)
                    )));
                }
                let dim = embedder_dim(own_dim(e), dim).map_err(|e| value_error(e.to_string()))?;
                Ok((Embedder::Python(e.clone().unbind()), identity(e)?, dim))
            }
            _ => {
                let h = HashingEmbedder::new(dim.unwrap_or(384)).map_err(value_error)?;
                let (identity, dim) = (h.identity(), h.dim());
                Ok((Embedder::Hashing(h), identity, dim))
            }
        }
    }

    /// The raw vectors of `prompts` (`dim` floats each, not yet checked):
    /// the Rust embedder with the GIL released, or one call of the Python
    /// embedder.
    pub fn embed(&self, py: Python<'_>, prompts: &[&str], dim: usize) -> PyResult<Vec<Vec<f32>>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Embedder::Hashing(h) => Ok(py.detach(|| prompts.iter().map(|p| h.embed(p)).collect())),
            Embedder::Python(f) => {
                let list = PyList::new(py, prompts)?;
                let out = f.bind(py).call1((list,))?;
                read_matrix(&out, prompts.len(), dim, "the embedder's output")
            }
        }
    }
}

fn attr_value<'py>(obj: &Bound<'py, PyAny>, name: &str) -> Option<Bound<'py, PyAny>> {
    let v = obj.getattr(name).ok()?;
    if v.is_none() {
        return None;
    }
    if v.is_callable() && !v.is_instance_of::<PyString>() {
        return v.call0().ok();
    }
    Some(v)
}

fn identity(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    for attr in ["identity", "name", "model_name"] {
        if let Some(v) = attr_value(obj, attr) {
            if let Ok(s) = v.extract::<String>() {
                if !s.is_empty() {
                    return Ok(s);
                }
            }
        }
    }
    let named = if obj.hasattr("__qualname__")? {
        obj.clone()
    } else {
        obj.get_type().into_any()
    };
    let module: String = named
        .getattr("__module__")
        .and_then(|m| m.extract())
        .unwrap_or_default();
    let qual: String = named
        .getattr("__qualname__")
        .and_then(|m| m.extract())
        .unwrap_or_default();
    Ok(format!("{module}.{qual}"))
}

fn own_dim(obj: &Bound<'_, PyAny>) -> Option<usize> {
    for attr in ["dim", "dimension", "get_sentence_embedding_dimension"] {
        if let Some(v) = attr_value(obj, attr) {
            if let Ok(d) = v.extract::<usize>() {
                return Some(d);
            }
        }
    }
    None
}
