//! `llmedge.PromptOptimizer` and `llmedge.CompressionResult`.

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::messages::fit::FitOptions;
use crate::models::{self, ModelInfo};
use crate::prompt::{self, Level};
use crate::py::convert::type_name;
use crate::py::errors::{type_error, unknown_model, value_error};
use crate::py::messages::{count_messages_impl, fit_messages_impl};
use crate::tokens::{self, chunked::ChunkCounter};

/// The result of `PromptOptimizer.compress`.
#[pyclass(frozen, module = "llmedge._core")]
pub struct CompressionResult {
    /// The prompt object itself when no step changed it (no copy, no decode).
    #[pyo3(get)]
    text: Py<PyString>,
    #[pyo3(get)]
    tokens_before: usize,
    #[pyo3(get)]
    tokens_after: usize,
    #[pyo3(get)]
    saved_ratio: f64,
    #[pyo3(get)]
    steps: Vec<&'static str>,
}

#[pymethods]
impl CompressionResult {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "CompressionResult(tokens_before={}, tokens_after={}, saved_ratio={:.4}, steps={:?}, text_len={})",
            self.tokens_before,
            self.tokens_after,
            self.saved_ratio,
            self.steps,
            self.text.bind(py).len()?
        ))
    }
}

/// Token budgeting and rule-based compression for one model.
#[pyclass(frozen, module = "llmedge._core")]
pub struct PromptOptimizer {
    /// The resolved model (encoding, context window, prices); `fit_messages`
    /// and `count_messages` count with it.
    pub info: ModelInfo,
    pub max_context_tokens: u64,
    pub reserve_output_tokens: u64,
    pub history_limit: Option<u64>,
}

impl PromptOptimizer {
    pub fn encoding(&self) -> &'static tokens::Encoding {
        tokens::encoding(self.info.encoding)
    }

    /// Tokens available for the prompt: `max_context_tokens - reserve_output_tokens`.
    pub fn budget(&self) -> u64 {
        self.max_context_tokens - self.reserve_output_tokens
    }
}

/// A `str` argument as an owned Rust string, with errors that name the argument.
pub fn text_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    str_arg(obj, what).map(|(_, text)| text.to_owned())
}

/// A `str` argument as the string object and its UTF-8 text (borrowed from
/// the object), with errors that name the argument.
fn str_arg<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    what: &str,
) -> PyResult<(&'a Bound<'py, PyString>, &'a str)> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| type_error(format!("{what} must be a str, not {}", type_name(obj))))?;
    let text = s.to_str().map_err(|e| {
        value_error(format!(
            "{what} is not valid Unicode (lone surrogate?): {e}"
        ))
    })?;
    Ok((s, text))
}

fn parse_level(level: &str) -> PyResult<Level> {
    Level::parse(level).ok_or_else(|| {
        value_error(format!(
            "unknown level '{level}'; expected one of {}",
            Level::NAMES.map(|n| format!("'{n}'")).join(", ")
        ))
    })
}

fn check_target(target: f64) -> PyResult<f64> {
    if target.is_finite() && target > 0.0 && target < 1.0 {
        Ok(target)
    } else {
        Err(value_error(format!(
            "target_reduction must be a fraction strictly between 0 and 1, got {target}"
        )))
    }
}

#[pymethods]
impl PromptOptimizer {
    #[new]
    #[pyo3(signature = (model = "gpt-4o", *, max_context_tokens = None, reserve_output_tokens = 300, history_limit = None))]
    fn new(
        py: Python<'_>,
        model: &str,
        max_context_tokens: Option<i64>,
        reserve_output_tokens: i64,
        history_limit: Option<i64>,
    ) -> PyResult<Self> {
        let info = models::lookup(model).map_err(|e| unknown_model(py, e))?;
        let max = match max_context_tokens {
            None => info.context_window,
            Some(m) if m > 0 => m as u64,
            Some(m) => {
                return Err(value_error(format!(
                    "max_context_tokens must be a positive integer, got {m}"
                )))
            }
        };
        if reserve_output_tokens < 0 || reserve_output_tokens as u64 >= max {
            return Err(value_error(format!(
                "reserve_output_tokens must be >= 0 and < max_context_tokens ({max}), got {reserve_output_tokens}"
            )));
        }
        let history_limit = match history_limit {
            None => None,
            Some(h) if h >= 1 => Some(h as u64),
            Some(h) => {
                return Err(value_error(format!(
                    "history_limit must be None or an integer >= 1, got {h}"
                )))
            }
        };
        Ok(PromptOptimizer {
            info,
            max_context_tokens: max,
            reserve_output_tokens: reserve_output_tokens as u64,
            history_limit,
        })
    }

    #[getter]
    fn model(&self) -> &str {
        &self.info.name
    }

    #[getter]
    fn max_context_tokens(&self) -> u64 {
        self.max_context_tokens
    }

    #[getter]
    fn reserve_output_tokens(&self) -> u64 {
        self.reserve_output_tokens
    }

    #[getter]
    fn history_limit(&self) -> Option<u64> {
        self.history_limit
    }

    #[getter(budget)]
    fn budget_py(&self) -> u64 {
        self.budget()
    }

    /// Tokens of `text` for this optimizer's model.
    fn count(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text_arg(text, "text")?;
        let enc = self.encoding();
        Ok(py.detach(|| enc.count(&text)))
    }

    #[pyo3(signature = (prompt, *, level = "lossless", target_reduction = None))]
    fn compress(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        level: &str,
        target_reduction: Option<f64>,
    ) -> PyResult<CompressionResult> {
        let (obj, text) = str_arg(prompt, "prompt")?;
        let level = parse_level(level)?;
        let target = target_reduction.map(check_target).transpose()?;
        let enc = self.encoding();
        // `text` borrows the prompt object's UTF-8 buffer, which lives as
        // long as the object and never changes (str is immutable)
        let r = py.detach(|| prompt::compress(text, level, target, ChunkCounter::new(enc)));
        let text = if r.steps.is_empty() {
            obj.clone().unbind()
        } else {
            PyString::new(py, &r.text).unbind()
        };
        Ok(CompressionResult {
            saved_ratio: r.saved_ratio(),
            text,
            tokens_before: r.tokens_before,
            tokens_after: r.tokens_after,
            steps: r.steps,
        })
    }

    /// Compress with steps of increasing loss until `target_reduction` of the
    /// tokens is saved or the steps run out. Never truncates.
    #[pyo3(signature = (prompt, target_reduction = 0.25))]
    fn optimize(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        target_reduction: f64,
    ) -> PyResult<String> {
        let text = text_arg(prompt, "prompt")?;
        let target = check_target(target_reduction)?;
        let enc = self.encoding();
        Ok(py.detach(|| {
            prompt::compress(
                &text,
                Level::Aggressive,
                Some(target),
                ChunkCounter::new(enc),
            )
            .text
        }))
    }

    /// Tokens of a chat request (messages, reply priming and `tools`) for the
    /// optimizer's model.
    #[pyo3(signature = (messages, *, tools = None))]
    fn count_messages(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        tools: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        count_messages_impl(py, messages, &self.info, tools)
    }

    /// The messages that fit the budget (`max_context_tokens -
    /// reserve_output_tokens` unless `max_tokens` is given), with the
    /// optimizer's `history_limit` unless one is given here.
    #[pyo3(signature = (
        messages, *, max_tokens = None, strategy = "last", keep_system = true,
        history_limit = None, allow_partial = false, tools = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn fit_messages(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        max_tokens: Option<i64>,
        strategy: &str,
        keep_system: bool,
        history_limit: Option<i64>,
        allow_partial: bool,
        tools: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyList>> {
        let max_tokens =
            max_tokens.unwrap_or_else(|| i64::try_from(self.budget()).unwrap_or(i64::MAX));
        let history_limit = history_limit.or_else(|| {
            self.history_limit
                .map(|h| i64::try_from(h).unwrap_or(i64::MAX))
        });
        let opts = FitOptions::validate(
            max_tokens,
            strategy,
            keep_system,
            history_limit,
            allow_partial,
        )
        .map_err(value_error)?;
        fit_messages_impl(py, messages, &self.info, &opts, tools)
    }

    fn __repr__(&self) -> String {
        let hl = self
            .history_limit
            .map_or_else(|| "None".to_string(), |h| h.to_string());
        format!(
            "PromptOptimizer(model={:?}, max_context_tokens={}, reserve_output_tokens={}, history_limit={}, encoding={:?})",
            self.info.name,
            self.max_context_tokens,
            self.reserve_output_tokens,
            hl,
            self.info.encoding.as_str()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PromptOptimizer>()?;
    m.add_class::<CompressionResult>()?;
    Ok(())
}
