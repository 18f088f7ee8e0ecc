//! Raising the Python exception classes of `llmedge.errors` from Rust.
//!
//! The classes are defined in Python (several need two bases); each is looked
//! up once per process and cached.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The class `llmedge.errors.<name>`, imported once.
pub fn error_class<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || {
        PyModule::import(py, "llmedge.errors").map(Bound::unbind)
    })?;
    module.bind(py).getattr(name)?.cast_into::<PyType>().map_err(Into::into)
}

/// A `PyErr` of class `llmedge.errors.<name>` built from `args`.
pub fn new_error<'py, A>(py: Python<'py>, name: &'static str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    match error_class(py, name).and_then(|cls| cls.call1(args)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

pub fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

pub fn type_error(msg: impl Into<String>) -> PyErr {
    PyTypeError::new_err(msg.into())
}

/// `UnknownModelError` carrying the model name and the closest known names.
pub fn unknown_model(py: Python<'_>, err: crate::models::UnknownModel) -> PyErr {
    let msg = err.to_string();
    new_error(py, "UnknownModelError", (msg, err.name, err.suggestions))
}
