//! `llmedge.Tokenizer` and the `count_tokens` functions.

use pyo3::prelude::*;

use crate::models;
use crate::py::errors::{new_error, unknown_model};
use crate::tokens::{self, EncodingName};

#[pyclass(frozen, module = "llmedge._core")]
pub struct Tokenizer {
    enc: &'static tokens::Encoding,
}

fn parse_encoding(py: Python<'_>, name: &str) -> PyResult<EncodingName> {
    EncodingName::parse(name).ok_or_else(|| {
        let allowed: Vec<&str> = EncodingName::ALL.iter().map(|e| e.as_str()).collect();
        new_error(
            py,
            "UnknownEncodingError",
            (format!("unknown encoding {name:?}; expected one of {}", allowed.join(", ")),),
        )
    })
}

#[pymethods]
impl Tokenizer {
    #[new]
    fn new(py: Python<'_>, encoding: &str) -> PyResult<Self> {
        Ok(Tokenizer { enc: tokens::encoding(parse_encoding(py, encoding)?) })
    }

    #[staticmethod]
    fn for_model(py: Python<'_>, model: &str) -> PyResult<Self> {
        let info = models::lookup(model).map_err(|e| unknown_model(py, e))?;
        Ok(Tokenizer { enc: tokens::encoding(info.encoding) })
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.enc.name().as_str()
    }

    fn count(&self, py: Python<'_>, text: &str) -> usize {
        let enc = self.enc;
        py.detach(|| enc.count(text))
    }

    fn __repr__(&self) -> String {
        format!("Tokenizer({:?})", self.enc.name().as_str())
    }
}

#[pyfunction]
#[pyo3(signature = (text, model = "gpt-4o"))]
fn count_tokens(py: Python<'_>, text: &str, model: &str) -> PyResult<usize> {
    let info = models::lookup(model).map_err(|e| unknown_model(py, e))?;
    let enc = tokens::encoding(info.encoding);
    Ok(py.detach(|| enc.count(text)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tokenizer>()?;
    m.add_function(wrap_pyfunction!(count_tokens, m)?)?;
    Ok(())
}
