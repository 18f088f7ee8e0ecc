//! `count_messages` and `fit_messages`: one pass converting the Python dicts
//! into owned Rust messages (errors name the index and field), then counting
//! and fitting with the GIL released.
//!
//! `count_messages_impl` and `fit_messages_impl` are the Rust-callable entry
//! points other bindings (the PromptOptimizer) delegate to.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::messages::fit::{self, FitOptions};
use crate::messages::{
    self, ChatFormat, Content, Detail, FunctionCall, Image, Message, Part, Role, ToolDef, ToolParam,
};
use crate::models::ModelInfo;
use crate::py::convert::type_name;
use crate::py::errors::{context_overflow, type_error, value_error};
use crate::py::models::resolve;

fn string(obj: &Bound<'_, PyAny>, path: &dyn Fn() -> String) -> PyResult<String> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| type_error(format!("{}: expected str, got {}", path(), type_name(obj))))?;
    s.to_str().map(str::to_string).map_err(|_| {
        value_error(format!(
            "{}: the string is not valid Unicode (a lone surrogate?)",
            path()
        ))
    })
}

fn opt_string(
    d: &Bound<'_, PyDict>,
    key: &Bound<'_, PyString>,
    path: &dyn Fn() -> String,
) -> PyResult<Option<String>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => string(&v, path).map(Some),
        _ => Ok(None),
    }
}

fn as_dict<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    path: &dyn Fn() -> String,
) -> PyResult<&'a Bound<'py, PyDict>> {
    obj.cast::<PyDict>().map_err(|_| {
        type_error(format!(
            "{}: expected a dict, got {}",
            path(),
            type_name(obj)
        ))
    })
}

fn items<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(l) = obj.cast::<PyList>() {
        return Ok(l.iter().collect());
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return Ok(t.iter().collect());
    }
    Err(type_error(format!(
        "{what}: expected a list of dicts, got {}",
        type_name(obj)
    )))
}

fn dimension(v: Option<Bound<'_, PyAny>>, path: &dyn Fn() -> String) -> PyResult<Option<u32>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(type_error(format!(
            "{}: expected a positive int, got bool",
            path()
        )));
    }
    let n: i64 = v.extract().map_err(|_| {
        type_error(format!(
            "{}: expected a positive int, got {}",
            path(),
            type_name(&v)
        ))
    })?;
    match u32::try_from(n) {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(value_error(format!(
            "{}: expected a positive int, got {n}",
            path()
        ))),
    }
}

fn parse_image(part: &Bound<'_, PyDict>, path: &str) -> PyResult<Image> {
    let py = part.py();
    let p = || format!("{path}.image_url");
    let url_obj = part.get_item(intern!(py, "image_url"))?.ok_or_else(|| {
        value_error(format!(
            "{path}: an image_url part needs an 'image_url' key"
        ))
    })?;
    let mut detail = Detail::Auto;
    let (mut width, mut height) = (None, None);
    if let Ok(inner) = url_obj.cast::<PyDict>() {
        match inner.get_item(intern!(py, "url"))? {
            Some(u) => {
                string(&u, &|| format!("{path}.image_url.url"))?;
            }
            None => return Err(value_error(format!("{path}.image_url: missing 'url'"))),
        }
        if let Some(d) = opt_string(inner, intern!(py, "detail"), &|| {
            format!("{path}.image_url.detail")
        })? {
            detail = Detail::parse(&d).ok_or_else(|| {
                value_error(format!(
                    "{path}.image_url.detail: expected \"low\", \"high\" or \"auto\", got {d:?}"
                ))
            })?;
        }
        width = dimension(inner.get_item(intern!(py, "width"))?, &|| {
            format!("{path}.image_url.width")
        })?;
        height = dimension(inner.get_item(intern!(py, "height"))?, &|| {
            format!("{path}.image_url.height")
        })?;
    } else {
        string(&url_obj, &|| {
            format!("{} (a dict with 'url', or a URL string)", p())
        })?;
    }
    if width.is_none() {
        width = dimension(part.get_item(intern!(py, "width"))?, &|| {
            format!("{path}.width")
        })?;
    }
    if height.is_none() {
        height = dimension(part.get_item(intern!(py, "height"))?, &|| {
            format!("{path}.height")
        })?;
    }
    Ok(Image {
        detail,
        width,
        height,
    })
}

fn parse_content(v: &Bound<'_, PyAny>, path: &str) -> PyResult<Content> {
    let py = v.py();
    if v.is_none() {
        return Ok(Content::None);
    }
    if let Ok(s) = v.cast::<PyString>() {
        return string(s.as_any(), &|| path.to_string()).map(Content::Text);
    }
    let Ok(list) = v.cast::<PyList>() else {
        return Err(type_error(format!(
            "{path}: expected str, list of parts or None, got {}",
            type_name(v)
        )));
    };
    let mut parts = Vec::with_capacity(list.len());
    for (j, part) in list.iter().enumerate() {
        let pp = format!("{path}[{j}]");
        let d = as_dict(&part, &|| pp.clone())?;
        let kind = match d.get_item(intern!(py, "type"))? {
            Some(t) => string(&t, &|| format!("{pp}.type"))?,
            None => return Err(value_error(format!("{pp}: missing 'type'"))),
        };
        match kind.as_str() {
            "text" | "refusal" => {
                let key = PyString::new(py, &kind);
                let text = d.get_item(&key)?.ok_or_else(|| {
                    value_error(format!("{pp}: a {kind} part needs a '{kind}' key"))
                })?;
                parts.push(Part::Text(string(&text, &|| format!("{pp}.{kind}"))?));
            }
            "image_url" => parts.push(Part::Image(parse_image(d, &pp)?)),
            other => {
                return Err(value_error(format!(
                    "{pp}.type: unsupported part type {other:?}; expected \"text\", \"refusal\" \
                     or \"image_url\""
                )))
            }
        }
    }
    Ok(Content::Parts(parts))
}

fn parse_call(v: &Bound<'_, PyAny>, path: &str) -> PyResult<FunctionCall> {
    let py = v.py();
    let d = as_dict(v, &|| path.to_string())?;
    let name = match d.get_item(intern!(py, "name"))? {
        Some(n) => string(&n, &|| format!("{path}.name"))?,
        None => return Err(value_error(format!("{path}: missing 'name'"))),
    };
    let arguments = opt_string(d, intern!(py, "arguments"), &|| format!("{path}.arguments"))?
        .unwrap_or_default();
    Ok(FunctionCall { name, arguments })
}

fn parse_message(obj: &Bound<'_, PyAny>, i: usize) -> PyResult<Message> {
    let py = obj.py();
    let d = as_dict(obj, &|| format!("messages[{i}]"))?;
    let role_obj = d
        .get_item(intern!(py, "role"))?
        .ok_or_else(|| value_error(format!("messages[{i}]: missing 'role'")))?;
    let role_s = string(&role_obj, &|| format!("messages[{i}].role"))?;
    let role = Role::parse(&role_s).ok_or_else(|| {
        let allowed: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        value_error(format!(
            "messages[{i}].role: unknown role {role_s:?}; expected one of {}",
            allowed.join(", ")
        ))
    })?;
    let content = match d.get_item(intern!(py, "content"))? {
        Some(c) => parse_content(&c, &format!("messages[{i}].content"))?,
        None => Content::None,
    };
    let name = opt_string(d, intern!(py, "name"), &|| format!("messages[{i}].name"))?;
    let mut calls = Vec::new();
    if let Some(tc) = d
        .get_item(intern!(py, "tool_calls"))?
        .filter(|v| !v.is_none())
    {
        let path = format!("messages[{i}].tool_calls");
        for (j, call) in items(&tc, &path)?.iter().enumerate() {
            let cp = format!("{path}[{j}]");
            let cd = as_dict(call, &|| cp.clone())?;
            let f = cd
                .get_item(intern!(py, "function"))?
                .ok_or_else(|| value_error(format!("{cp}: missing 'function'")))?;
            calls.push(parse_call(&f, &format!("{cp}.function"))?);
        }
    }
    if let Some(fc) = d
        .get_item(intern!(py, "function_call"))?
        .filter(|v| !v.is_none())
    {
        calls.push(parse_call(&fc, &format!("messages[{i}].function_call"))?);
    }
    Ok(Message {
        role,
        content,
        name,
        calls,
    })
}

/// Convert a list of message dicts; the Python objects are returned beside
/// the parsed messages so a fit can hand back the originals.
pub fn parse_messages<'py>(
    messages: &Bound<'py, PyAny>,
) -> PyResult<(Vec<Bound<'py, PyAny>>, Vec<Message>)> {
    let objs = items(messages, "messages")?;
    let parsed = objs
        .iter()
        .enumerate()
        .map(|(i, m)| parse_message(m, i))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((objs, parsed))
}

fn enum_item(v: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = v.cast::<PyString>() {
        return string(s.as_any(), &|| "enum item".into());
    }
    if v.is_none() {
        return Ok("null".into());
    }
    if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
        return Ok(if b.is_true() { "true" } else { "false" }.into());
    }
    Ok(v.str()?.to_string())
}

fn parse_properties(params: &Bound<'_, PyDict>, path: &str) -> PyResult<Vec<ToolParam>> {
    let py = params.py();
    let Some(props) = params
        .get_item(intern!(py, "properties"))?
        .filter(|p| !p.is_none())
    else {
        return Ok(Vec::new());
    };
    let props = as_dict(&props, &|| format!("{path}.properties"))?;
    let mut out = Vec::with_capacity(props.len());
    for (k, v) in props.iter() {
        let key = string(&k, &|| format!("{path}.properties key"))?;
        let pp = format!("{path}.properties.{key}");
        let pd = as_dict(&v, &|| pp.clone())?;
        let type_name = match pd.get_item(intern!(py, "type"))? {
            None => String::new(),
            Some(t) if t.is_none() => String::new(),
            Some(t) => {
                if let Ok(list) = t.cast::<PyList>() {
                    list.iter()
                        .map(|x| string(&x, &|| format!("{pp}.type")))
                        .collect::<PyResult<Vec<_>>>()?
                        .join(", ")
                } else {
                    string(&t, &|| format!("{pp}.type"))?
                }
            }
        };
        let description = opt_string(pd, intern!(py, "description"), &|| {
            format!("{pp}.description")
        })?
        .unwrap_or_default();
        let enum_items = match pd.get_item(intern!(py, "enum"))?.filter(|e| !e.is_none()) {
            None => None,
            Some(e) => Some(
                items(&e, &format!("{pp}.enum"))?
                    .iter()
                    .map(enum_item)
                    .collect::<PyResult<Vec<_>>>()?,
            ),
        };
        let properties = parse_properties(pd, &pp)?;
        out.push(ToolParam {
            name: key,
            type_name,
            description,
            enum_items,
            properties,
        });
    }
    Ok(out)
}

/// Tool definitions: `{"type": "function", "function": {...}}` or the legacy
/// bare function dict (`functions=` of the old API).
pub fn parse_tools(tools: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<ToolDef>> {
    let Some(tools) = tools.filter(|t| !t.is_none()) else {
        return Ok(Vec::new());
    };
    let py = tools.py();
    let mut out = Vec::new();
    for (i, t) in items(tools, "tools")?.iter().enumerate() {
        let tp = format!("tools[{i}]");
        let d = as_dict(t, &|| tp.clone())?;
        let (f, fp) = match d.get_item(intern!(py, "function"))? {
            Some(f) => (f, format!("{tp}.function")),
            None => (t.clone(), tp.clone()),
        };
        let fd = as_dict(&f, &|| fp.clone())?;
        let name = match fd.get_item(intern!(py, "name"))? {
            Some(n) => string(&n, &|| format!("{fp}.name"))?,
            None => return Err(value_error(format!("{fp}: missing 'name'"))),
        };
        let description = opt_string(fd, intern!(py, "description"), &|| {
            format!("{fp}.description")
        })?
        .unwrap_or_default();
        let properties = match fd
            .get_item(intern!(py, "parameters"))?
            .filter(|p| !p.is_none())
        {
            None => Vec::new(),
            Some(p) => {
                let pd = as_dict(&p, &|| format!("{fp}.parameters"))?;
                parse_properties(pd, &format!("{fp}.parameters"))?
            }
        };
        out.push(ToolDef {
            name,
            description,
            properties,
        });
    }
    Ok(out)
}

/// Prompt tokens of `messages` (and `tools`) for `model`.
pub fn count_messages_impl(
    py: Python<'_>,
    messages: &Bound<'_, PyAny>,
    model: &ModelInfo,
    tools: Option<&Bound<'_, PyAny>>,
) -> PyResult<u64> {
    let (_, parsed) = parse_messages(messages)?;
    let tool_defs = parse_tools(tools)?;
    let fmt = ChatFormat::for_model(model);
    Ok(py.detach(|| messages::count_messages(&parsed, &tool_defs, &fmt)))
}

/// The messages of `messages` that fit `opts.max_tokens`: the original
/// objects in order, except a partially kept one, which is a copy with
/// shorter content.
pub fn fit_messages_impl(
    py: Python<'_>,
    messages: &Bound<'_, PyAny>,
    model: &ModelInfo,
    opts: &FitOptions,
    tools: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyList>> {
    let (objs, parsed) = parse_messages(messages)?;
    let tool_defs = parse_tools(tools)?;
    let fmt = ChatFormat::for_model(model);
    let plan = py
        .detach(|| {
            let costs = messages::per_message_tokens(&parsed, &fmt);
            let overhead = messages::request_overhead(&tool_defs, &fmt);
            fit::fit(&parsed, &costs, overhead, &fmt, opts)
        })
        .map_err(|e| context_overflow(py, &e))?;
    let out = PyList::empty(py);
    for &i in &plan.kept {
        match &plan.partial {
            Some(p) if p.index == i => {
                let copy = as_dict(&objs[i], &|| format!("messages[{i}]"))?.copy()?;
                copy.set_item(intern!(py, "content"), &p.text)?;
                out.append(copy)?;
            }
            _ => out.append(&objs[i])?,
        }
    }
    Ok(out.unbind())
}

#[pyfunction]
#[pyo3(signature = (messages, model, *, tools = None))]
fn count_messages(
    py: Python<'_>,
    messages: &Bound<'_, PyAny>,
    model: &str,
    tools: Option<&Bound<'_, PyAny>>,
) -> PyResult<u64> {
    let info = resolve(py, model)?;
    count_messages_impl(py, messages, &info, tools)
}

#[pyfunction]
#[pyo3(signature = (
    messages, model, *, max_tokens, strategy = "last", keep_system = true,
    history_limit = None, allow_partial = false, tools = None
))]
#[allow(clippy::too_many_arguments)]
fn fit_messages(
    py: Python<'_>,
    messages: &Bound<'_, PyAny>,
    model: &str,
    max_tokens: i64,
    strategy: &str,
    keep_system: bool,
    history_limit: Option<i64>,
    allow_partial: bool,
    tools: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyList>> {
    let info = resolve(py, model)?;
    let opts = FitOptions::validate(
        max_tokens,
        strategy,
        keep_system,
        history_limit,
        allow_partial,
    )
    .map_err(value_error)?;
    fit_messages_impl(py, messages, &info, &opts, tools)
}

/// Forget the remembered token counts of message texts; returns how many
/// there were. Private: benchmarks use it to measure cold counting.
#[pyfunction]
fn _clear_message_count_memo(py: Python<'_>) -> usize {
    py.detach(|| {
        let n = messages::memo::len();
        messages::memo::clear();
        n
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_clear_message_count_memo, m)?)?;
    m.add_function(wrap_pyfunction!(count_messages, m)?)?;
    m.add_function(wrap_pyfunction!(fit_messages, m)?)?;
    Ok(())
}
