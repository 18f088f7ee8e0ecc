//! `llmedge.Tokenizer` and the `count_tokens` functions.

use std::collections::HashSet;

use pyo3::exceptions::PyUnicodeEncodeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use rayon::prelude::*;

use crate::models;
use crate::py::convert::type_name;
use crate::py::errors::{type_error, unknown_encoding, unknown_model, unknown_token, value_error};
use crate::tokens::{self, EncodingName, Side, SpecialSet};

#[pyclass(frozen, module = "llmedge._core")]
pub struct Tokenizer {
    enc: &'static tokens::Encoding,
}

fn parse_encoding(py: Python<'_>, name: &str) -> PyResult<EncodingName> {
    EncodingName::parse(name).ok_or_else(|| unknown_encoding(py, None, name))
}

fn model_encoding(py: Python<'_>, model: &str) -> PyResult<&'static tokens::Encoding> {
    let info = models::lookup(model).map_err(|e| unknown_model(py, e))?;
    Ok(tokens::encoding(info.encoding))
}

/// Explains why a Python str cannot be read as UTF-8 (lone surrogates).
fn unencodable(py: Python<'_>, err: PyErr, what: &str) -> PyErr {
    if !err.is_instance_of::<PyUnicodeEncodeError>(py) {
        return err;
    }
    let value = err.value(py);
    let start = value.getattr("start").and_then(|s| s.extract::<usize>());
    let ch = value
        .getattr("object")
        .and_then(|o| o.get_item(start.as_ref().map_or(0, |s| *s)))
        .and_then(|c| c.repr())
        .map(|r| r.to_string());
    match (start, ch) {
        (Ok(start), Ok(ch)) => value_error(format!(
            "{what} contains the lone surrogate {ch} at index {start}, which is not valid \
             Unicode and cannot be tokenized; clean the text first, e.g. \
             text.encode('utf-8', 'replace').decode('utf-8')"
        )),
        _ => value_error(format!(
            "{what} contains a lone surrogate, which is not valid Unicode and cannot be tokenized"
        )),
    }
}

/// Borrow the UTF-8 of a Python str argument (no copy).
fn text_arg<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a str> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| type_error(format!("{what} must be str, got {}", type_name(obj))))?;
    s.to_str().map_err(|e| unencodable(obj.py(), e, what))
}

/// The texts of a batch argument: a list or tuple of str, each kept alive
/// (and its UTF-8 borrowed) so the work can run with the GIL released.
fn texts_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<PyBackedStr>> {
    let items = if let Ok(list) = obj.cast::<PyList>() {
        list.iter().collect::<Vec<_>>()
    } else if let Ok(tuple) = obj.cast::<PyTuple>() {
        tuple.iter().collect::<Vec<_>>()
    } else {
        return Err(type_error(format!(
            "{what} must be a list or tuple of str, got {}",
            type_name(obj)
        )));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let s = item.cast_into::<PyString>().map_err(|e| {
                type_error(format!(
                    "{what}[{i}] must be str, got {}",
                    type_name(e.into_inner().as_any())
                ))
            })?;
            PyBackedStr::try_from(s).map_err(|e| unencodable(obj.py(), e, &format!("{what}[{i}]")))
        })
        .collect()
}

/// Token ids from any iterable of ints (not str or bytes).
fn ids_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(type_error(format!(
            "ids must be a list of int, got {}",
            type_name(obj)
        )));
    }
    let iter = obj
        .try_iter()
        .map_err(|_| type_error(format!("ids must be a list of int, got {}", type_name(obj))))?;
    let mut ids = Vec::with_capacity(obj.len().unwrap_or(0));
    for (i, item) in iter.enumerate() {
        let item = item?;
        let id: i128 = item
            .extract()
            .map_err(|_| type_error(format!("ids[{i}] must be int, got {}", type_name(&item))))?;
        match u32::try_from(id) {
            Ok(id) => ids.push(id),
            Err(_) => {
                return Err(unknown_token(
                    item.py(),
                    &format!("invalid token id {id} at ids[{i}]: ids are 0 to 2**32-1"),
                    id,
                ))
            }
        }
    }
    Ok(ids)
}

/// `allowed_special` / `disallowed_special`: `"all"` or a collection of str.
pub struct SpecialArg(SpecialSet);

impl<'a, 'py> FromPyObject<'a, 'py> for SpecialArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(s) = obj.cast::<PyString>() {
            return if s.to_str()? == "all" {
                Ok(SpecialArg(SpecialSet::All))
            } else {
                Err(value_error(format!(
                    "expected \"all\" or a set of special-token strings, got the string {:?}",
                    s.to_str()?
                )))
            };
        }
        if obj.is_none() || obj.is_instance_of::<PyBytes>() {
            return Err(type_error(format!(
                "expected \"all\" or a set of special-token strings, got {}",
                type_name(&obj.to_owned())
            )));
        }
        let iter = obj.try_iter().map_err(|_| {
            type_error(format!(
                "expected \"all\" or a set of special-token strings, got {}",
                type_name(&obj.to_owned())
            ))
        })?;
        let mut set = HashSet::new();
        for item in iter {
            let item = item?;
            let s = item.cast::<PyString>().map_err(|_| {
                type_error(format!(
                    "special tokens must be str, got {}",
                    type_name(&item)
                ))
            })?;
            set.insert(s.to_str()?.to_owned());
        }
        Ok(SpecialArg(SpecialSet::Strings(set)))
    }
}

fn disallowed_error(py: Python<'_>, e: tokens::DisallowedSpecialFound, prefix: &str) -> PyErr {
    let repr = PyString::new(py, &e.token)
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| format!("{:?}", e.token));
    value_error(format!("{prefix}{}", e.message(&repr)))
}

fn parse_side(side: &str) -> PyResult<Side> {
    Side::parse(side).ok_or_else(|| {
        value_error(format!(
            "side must be one of {}, got {side:?}",
            Side::NAMES
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn budget_arg(max_tokens: &Bound<'_, PyAny>) -> PyResult<usize> {
    if max_tokens.is_instance_of::<pyo3::types::PyBool>() {
        return Err(type_error("max_tokens must be int, got bool"));
    }
    let n: i128 = max_tokens.extract().map_err(|_| {
        type_error(format!(
            "max_tokens must be int, got {}",
            type_name(max_tokens)
        ))
    })?;
    if n <= 0 {
        return Err(value_error(format!(
            "max_tokens must be a positive integer, got {n}"
        )));
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

#[pymethods]
impl Tokenizer {
    #[new]
    fn new(py: Python<'_>, encoding: &str) -> PyResult<Self> {
        Ok(Tokenizer {
            enc: tokens::encoding(parse_encoding(py, encoding)?),
        })
    }

    /// The tokenizer of a model in the model table (`gpt-4o` -> `o200k_base`).
    #[staticmethod]
    fn for_model(py: Python<'_>, model: &str) -> PyResult<Self> {
        Ok(Tokenizer {
            enc: model_encoding(py, model)?,
        })
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.enc.name().as_str()
    }

    #[getter]
    fn n_vocab(&self) -> u32 {
        self.enc.n_vocab()
    }

    /// `{token: id}` for every special token of the encoding.
    #[getter]
    fn special_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let enc = self.enc;
        let specials = py.detach(|| enc.special_tokens());
        let d = PyDict::new(py);
        for (s, id) in specials {
            d.set_item(s, id)?;
        }
        Ok(d)
    }

    /// Number of tokens of `text` as ordinary text (special tokens are not recognised).
    fn count(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text_arg(text, "text")?;
        let enc = self.enc;
        Ok(py.detach(|| enc.count(text)))
    }

    /// Counts of many texts, in parallel over all cores with the GIL released.
    fn count_batch(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
        count_batch_impl(py, self.enc, texts)
    }

    fn encode_ordinary(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let text = text_arg(text, "text")?;
        let enc = self.enc;
        Ok(py.detach(|| enc.encode_ordinary(text)))
    }

    #[pyo3(signature = (text, *, allowed_special = SpecialArg(SpecialSet::none()), disallowed_special = SpecialArg(SpecialSet::All)))]
    fn encode(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        allowed_special: SpecialArg,
        disallowed_special: SpecialArg,
    ) -> PyResult<Vec<u32>> {
        let text = text_arg(text, "text")?;
        let enc = self.enc;
        py.detach(|| enc.encode(text, &allowed_special.0, &disallowed_special.0))
            .map_err(|e| disallowed_error(py, e, ""))
    }

    fn encode_ordinary_batch(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Vec<u32>>> {
        let texts = texts_arg(texts, "texts")?;
        let enc = self.enc;
        Ok(py.detach(|| texts.par_iter().map(|t| enc.encode_ordinary(t)).collect()))
    }

    #[pyo3(signature = (texts, *, allowed_special = SpecialArg(SpecialSet::none()), disallowed_special = SpecialArg(SpecialSet::All)))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        allowed_special: SpecialArg,
        disallowed_special: SpecialArg,
    ) -> PyResult<Vec<Vec<u32>>> {
        let texts = texts_arg(texts, "texts")?;
        let enc = self.enc;
        let (allowed, disallowed) = (&allowed_special.0, &disallowed_special.0);
        let results: Vec<_> = py.detach(|| {
            texts
                .par_iter()
                .map(|t| enc.encode(t, allowed, disallowed))
                .collect()
        });
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.map_err(|e| disallowed_error(py, e, &format!("texts[{i}]: "))))
            .collect()
    }

    /// The text of `ids`; bytes that are not valid UTF-8 become U+FFFD.
    fn decode(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids = ids_arg(ids)?;
        let enc = self.enc;
        py.detach(|| enc.decode(&ids)).map_err(|e| {
            unknown_token(
                py,
                &format!("{e} in encoding {}", enc.name()),
                e.token.into(),
            )
        })
    }

    /// The raw bytes of `ids`.
    fn decode_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let ids = ids_arg(ids)?;
        let enc = self.enc;
        let bytes = py.detach(|| enc.decode_bytes(&ids)).map_err(|e| {
            unknown_token(
                py,
                &format!("{e} in encoding {}", enc.name()),
                e.token.into(),
            )
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// `text` cut to at most `max_tokens` tokens, `marker` included.
    #[pyo3(signature = (text, max_tokens, *, side = "end", marker = None))]
    fn truncate(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        max_tokens: &Bound<'_, PyAny>,
        side: &str,
        marker: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let text = text_arg(text, "text")?;
        let marker = match marker {
            Some(m) => text_arg(m, "marker")?,
            None => "",
        };
        let side = parse_side(side)?;
        let max_tokens = budget_arg(max_tokens)?;
        let enc = self.enc;
        py.detach(|| {
            enc.truncate(text, max_tokens, side, marker)
                .map(|c| c.into_owned())
        })
        .map_err(|e| value_error(e.to_string()))
    }

    fn __repr__(&self) -> String {
        format!(
            "Tokenizer({:?}, n_vocab={})",
            self.enc.name().as_str(),
            self.enc.n_vocab()
        )
    }
}

fn count_batch_impl(
    py: Python<'_>,
    enc: &'static tokens::Encoding,
    texts: &Bound<'_, PyAny>,
) -> PyResult<Vec<usize>> {
    let texts = texts_arg(texts, "texts")?;
    Ok(py.detach(|| texts.par_iter().map(|t| enc.count(t)).collect()))
}

/// Number of tokens of `text` for `model` (its encoding from the model table).
#[pyfunction]
#[pyo3(signature = (text, model = "gpt-4o"))]
fn count_tokens(py: Python<'_>, text: &Bound<'_, PyAny>, model: &str) -> PyResult<usize> {
    let text = text_arg(text, "text")?;
    let enc = model_encoding(py, model)?;
    Ok(py.detach(|| enc.count(text)))
}

/// Token counts of many texts for `model`, in parallel with the GIL released.
#[pyfunction]
#[pyo3(signature = (texts, model = "gpt-4o"))]
fn count_tokens_batch(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    model: &str,
) -> PyResult<Vec<usize>> {
    let enc = model_encoding(py, model)?;
    count_batch_impl(py, enc, texts)
}

/// Bytes held now by the token-counting tables of this process, shared by
/// all its threads; never more than `TOKEN_TABLE_MAX_BYTES`.
#[pyfunction]
fn token_table_bytes(py: Python<'_>) -> usize {
    py.detach(tokens::table_bytes)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tokenizer>()?;
    m.add_function(wrap_pyfunction!(token_table_bytes, m)?)?;
    m.add("TOKEN_TABLE_MAX_BYTES", tokens::MAX_TABLE_BYTES)?;
    m.add_function(wrap_pyfunction!(count_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(count_tokens_batch, m)?)?;
    Ok(())
}
