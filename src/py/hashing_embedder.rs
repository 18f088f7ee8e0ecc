//! `llmedge.HashingEmbedder`: the built-in embedder (core in `cache::hashing`).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

use crate::cache::hashing::{self, MAX_DIM};
use crate::py::convert::type_name;
use crate::py::errors::{type_error, value_error};

#[pyclass(frozen, module = "llmedge._core")]
pub struct HashingEmbedder {
    inner: hashing::HashingEmbedder,
}

impl HashingEmbedder {
    /// The Rust embedder, for code (the cache) that embeds without calling Python.
    pub fn inner(&self) -> &hashing::HashingEmbedder {
        &self.inner
    }
}

fn parse_dim(dim: &Bound<'_, PyAny>) -> PyResult<usize> {
    if dim.is_instance_of::<PyBool>() || !dim.is_instance_of::<PyInt>() {
        return Err(type_error(format!(
            "dim must be an int, got {}",
            type_name(dim)
        )));
    }
    match dim.extract::<i64>() {
        Ok(d) if d >= 1 && d <= MAX_DIM as i64 => Ok(d as usize),
        _ => Err(value_error(format!(
            "dim must be an integer in 1..={MAX_DIM}, got {dim}"
        ))),
    }
}

fn parse_range(name: &str, r: Option<(i64, i64)>) -> PyResult<Option<(usize, usize)>> {
    match r {
        None => Ok(None),
        Some((lo, hi)) => match (usize::try_from(lo), usize::try_from(hi)) {
            (Ok(lo), Ok(hi)) => Ok(Some((lo, hi))),
            _ => Err(value_error(format!(
                "{name} must be a (min, max) pair with 1 <= min <= max <= {}, got ({lo}, {hi})",
                hashing::MAX_NGRAM
            ))),
        },
    }
}

/// Copies a sequence of str into owned strings, naming the first bad item.
pub fn extract_texts(texts: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if texts.is_instance_of::<PyString>() {
        return Err(type_error(
            "texts must be a list of str, got a single str; use embed(text) for one text",
        ));
    }
    let iter = texts.try_iter().map_err(|_| {
        type_error(format!(
            "texts must be a list of str, got {}",
            type_name(texts)
        ))
    })?;
    let mut out = Vec::new();
    for (i, item) in iter.enumerate() {
        let item = item?;
        let s = item
            .cast::<PyString>()
            .map_err(|_| type_error(format!("texts[{i}] must be str, got {}", type_name(&item))))?;
        out.push(s.to_str()?.to_owned());
    }
    Ok(out)
}

#[pymethods]
impl HashingEmbedder {
    #[new]
    #[pyo3(
        signature = (dim = None, *, word_ngrams = Some((1, 2)), char_ngrams = Some((3, 5))),
        text_signature = "(dim=384, *, word_ngrams=(1, 2), char_ngrams=(3, 5))"
    )]
    fn new(
        dim: Option<&Bound<'_, PyAny>>,
        word_ngrams: Option<(i64, i64)>,
        char_ngrams: Option<(i64, i64)>,
    ) -> PyResult<Self> {
        let dim = match dim {
            Some(d) => parse_dim(d)?,
            None => 384,
        };
        let words = parse_range("word_ngrams", word_ngrams)?;
        let chars = parse_range("char_ngrams", char_ngrams)?;
        let inner = hashing::HashingEmbedder::new_with(dim, words, chars).map_err(value_error)?;
        Ok(HashingEmbedder { inner })
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    #[getter]
    fn identity(&self) -> String {
        self.inner.identity()
    }

    #[getter]
    fn word_ngrams(&self) -> Option<(usize, usize)> {
        self.inner.word_ngrams()
    }

    #[getter]
    fn char_ngrams(&self) -> Option<(usize, usize)> {
        self.inner.char_ngrams()
    }

    /// The embedding of one text.
    fn embed(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
        let s = text
            .cast::<PyString>()
            .map_err(|_| type_error(format!("text must be str, got {}", type_name(text))))?;
        let owned = s.to_str()?.to_owned();
        let inner = &self.inner;
        Ok(py.detach(|| inner.embed(&owned)))
    }

    /// Embeddings of a list of texts, as a list of lists of float.
    fn __call__(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<f32>>> {
        let owned = extract_texts(texts)?;
        let inner = &self.inner;
        Ok(py.detach(|| {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            inner.embed_batch(&refs)
        }))
    }

    fn __repr__(&self) -> String {
        let range = |r: Option<(usize, usize)>| match r {
            Some((lo, hi)) => format!("({lo}, {hi})"),
            None => "None".to_string(),
        };
        format!(
            "HashingEmbedder(dim={}, word_ngrams={}, char_ngrams={})",
            self.inner.dim(),
            range(self.inner.word_ngrams()),
            range(self.inner.char_ngrams())
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<HashingEmbedder>()?;
    Ok(())
}
