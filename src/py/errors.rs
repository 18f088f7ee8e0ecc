//! Raising the Python exception classes of `llmedge.errors` from Rust.
//!
//! The classes are defined in Python (several need two bases); each is looked
//! up once per process and cached. Each class raised from Rust has one typed
//! constructor here, which builds its message and its attributes, so that no
//! binding names a class by a string.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::messages::fit::FitError;
use crate::tokens::EncodingName;

/// The class `llmedge.errors.<name>`, imported once.
fn error_class<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || {
        PyModule::import(py, "llmedge.errors").map(Bound::unbind)
    })?;
    module
        .bind(py)
        .getattr(name)?
        .cast_into::<PyType>()
        .map_err(Into::into)
}

/// A `PyErr` of class `llmedge.errors.<name>` built from `args`. Bindings
/// call the typed constructors below instead.
fn new_error<'py, A>(py: Python<'py>, name: &'static str, args: A) -> PyErr
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

/// `UnknownEncodingError` for `name`, listing the shipped encodings; `arg`
/// names the argument when the call has several.
pub fn unknown_encoding(py: Python<'_>, arg: Option<&str>, name: &str) -> PyErr {
    let allowed: Vec<&str> = EncodingName::ALL.iter().map(|e| e.as_str()).collect();
    let prefix = arg.map(|a| format!("{a}: ")).unwrap_or_default();
    let msg = format!(
        "{prefix}unknown encoding {name:?}; expected one of {}",
        allowed.join(", ")
    );
    new_error(py, "UnknownEncodingError", (msg,))
}

/// `UnknownTokenError` carrying the offending id.
pub fn unknown_token(py: Python<'_>, msg: &str, token: i128) -> PyErr {
    new_error(py, "UnknownTokenError", (msg.to_owned(), token))
}

/// `ContextOverflowError` carrying the tokens required and available.
pub fn context_overflow(py: Python<'_>, err: &FitError) -> PyErr {
    let FitError::Overflow {
        required,
        available,
    } = *err;
    new_error(
        py,
        "ContextOverflowError",
        (err.to_string(), required, available),
    )
}

/// `CircuitOpenError`: circuit `name` in `state` rejected a call.
pub fn circuit_open(py: Python<'_>, name: &str, state: &str, retry_after: f64) -> PyErr {
    let msg = format!("circuit {name:?} is {state}; retry after {retry_after:.3} s");
    new_error(py, "CircuitOpenError", (msg, name, state, retry_after))
}

/// `RateLimitExceeded` for `key`, which could be granted in `retry_after` s.
pub fn rate_limit_exceeded(py: Python<'_>, key: &str, retry_after: f64) -> PyErr {
    let msg = format!("rate limit exceeded for key {key:?}; retry after {retry_after:.3} s");
    new_error(py, "RateLimitExceeded", (msg, retry_after, key))
}

/// `llmedge.StoreError` with `msg` (Redis unusable, credentials refused,
/// the store closed, or a value another program wrote with the wrong type).
pub fn store_unusable(py: Python<'_>, msg: String) -> PyErr {
    new_error(py, "StoreError", (msg,))
}

/// `CacheNamespaceError` with `msg`: a shared cache's namespace holds
/// another embedder's entries.
pub fn cache_namespace_error(py: Python<'_>, msg: String) -> PyErr {
    new_error(py, "CacheNamespaceError", (msg,))
}

/// `CacheSnapshotError` with `msg`.
pub fn cache_snapshot_error(py: Python<'_>, msg: String) -> PyErr {
    new_error(py, "CacheSnapshotError", (msg,))
}
