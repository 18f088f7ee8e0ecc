//! Conversions between Python values and Rust ones that several bindings
//! share: type names for error messages, JSON-compatible values, float
//! buffers (numpy arrays, lists) and cached responses.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;

use crate::cache::partition::canonical_key;
use crate::cache::payload::{MAX_JSON_DEPTH, TAG_BYTES, TAG_JSON, TAG_STR};
use crate::py::errors::{type_error, value_error};

/// The name of `obj`'s type, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A JSON-compatible Python value as serde_json, or a TypeError naming where
/// in `what` the first unsupported value sits.
pub fn to_json(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    json_at(obj, what, &mut String::new(), 0)
}

fn json_at(obj: &Bound<'_, PyAny>, what: &str, path: &mut String, depth: usize) -> PyResult<Value> {
    if depth > MAX_JSON_DEPTH {
        return Err(type_error(format!(
            "{what}{path} is nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(type_error(format!(
            "{what}{path} is an integer outside the 64-bit range; JSON-compatible values are \
             str, int (64-bit), float, bool, None, list and dict with str keys"
        )));
    }
    if obj.is_instance_of::<PyFloat>() {
        let f: f64 = obj.extract()?;
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| {
                type_error(format!("{what}{path} is {f}, which JSON cannot represent"))
            });
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            out.push(json_at(&item, what, path, depth + 1)?);
            path.truncate(len);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = serde_json::Map::new();
        for (k, v) in dict.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(type_error(format!(
                    "{what}{path} has a key of type {} ({}); JSON object keys must be str",
                    type_name(&k),
                    k.repr().map(|r| r.to_string()).unwrap_or_default()
                )));
            };
            let key = key.to_str()?.to_owned();
            let len = path.len();
            path.push_str(&format!("[{key:?}]"));
            map.insert(key, json_at(&v, what, path, depth + 1)?);
            path.truncate(len);
        }
        return Ok(Value::Object(map));
    }
    let hint = if obj.is_instance_of::<PyTuple>() {
        " (a tuple would come back as a list; pass a list)"
    } else {
        ""
    };
    Err(type_error(format!(
        "{what}{path} has type {}, which is not JSON-compatible{hint}; accepted: str, bytes \
         (top level only), int, float, bool, None, list, dict with str keys",
        type_name(obj)
    )))
}

pub fn from_json<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(from_json(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, from_json(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A response as tagged bytes: the tag keeps its type so it comes back equal.
pub fn encode_response(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_str()?;
        let mut out = Vec::with_capacity(s.len() + 1);
        out.push(TAG_STR);
        out.extend_from_slice(s.as_bytes());
        return Ok(out);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        let b = b.as_bytes();
        let mut out = Vec::with_capacity(b.len() + 1);
        out.push(TAG_BYTES);
        out.extend_from_slice(b);
        return Ok(out);
    }
    let value = to_json(obj, "response")?;
    let mut out = vec![TAG_JSON];
    serde_json::to_writer(&mut out, &value).map_err(|e| type_error(e.to_string()))?;
    Ok(out)
}

pub fn decode_response<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let corrupt = || value_error("cached response is corrupted");
    let (&tag, body) = data.split_first().ok_or_else(corrupt)?;
    match tag {
        TAG_STR => {
            Ok(PyString::new(py, std::str::from_utf8(body).map_err(|_| corrupt())?).into_any())
        }
        TAG_BYTES => Ok(PyBytes::new(py, body).into_any()),
        TAG_JSON => {
            let v: Value = py
                .detach(|| serde_json::from_slice(body))
                .map_err(|_| corrupt())?;
            from_json(py, &v)
        }
        _ => Err(corrupt()),
    }
}

/// A float buffer read through `memoryview` (the buffer protocol is not in
/// the abi3 API of Python 3.10): its shape and its values as f32, or None
/// when `obj` exposes no contiguous float32/float64 buffer.
fn read_buffer(obj: &Bound<'_, PyAny>) -> PyResult<Option<(Vec<usize>, Vec<f32>)>> {
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyString>() {
        return Ok(None);
    }
    static MEMORYVIEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = obj.py();
    let memoryview = MEMORYVIEW.get_or_try_init(py, || {
        PyResult::Ok(py.import("builtins")?.getattr("memoryview")?.unbind())
    })?;
    let Ok(mv) = memoryview.bind(py).call1((obj,)) else {
        return Ok(None);
    };
    let format: String = mv.getattr(intern!(py, "format"))?.extract()?;
    let width = match format.trim_start_matches(['<', '=', '@']) {
        "f" => 4,
        "d" => 8,
        _ => return Ok(None),
    };
    if !mv.getattr(intern!(py, "c_contiguous"))?.extract::<bool>()? {
        return Ok(None);
    }
    let shape: Vec<usize> = mv.getattr(intern!(py, "shape"))?.extract()?;
    let raw = mv.call_method0(intern!(py, "tobytes"))?;
    let bytes = raw.cast::<PyBytes>()?.as_bytes();
    let values: Vec<f32> = if width == 4 {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    Ok(Some((shape, values)))
}

/// Rows of a 2-D float array (buffer protocol, float32 or float64) or of a
/// list of lists of floats; `rows` and `dim` are the expected shape.
pub fn read_matrix(
    obj: &Bound<'_, PyAny>,
    rows: usize,
    dim: usize,
    what: &str,
) -> PyResult<Vec<Vec<f32>>> {
    let shape_err = |shape: String| {
        value_error(format!(
            "{what} has shape {shape}, expected ({rows}, {dim})"
        ))
    };
    if let Some((shape, data)) = read_buffer(obj)? {
        let ok = match shape.as_slice() {
            [r, d] => *r == rows && *d == dim,
            _ => false,
        };
        if !ok {
            return Err(shape_err(format!("{shape:?}")));
        }
        return Ok(data.chunks_exact(dim.max(1)).map(<[f32]>::to_vec).collect());
    }
    let items: Vec<Bound<'_, PyAny>> = match obj.try_iter() {
        Ok(it) if !obj.is_instance_of::<PyString>() => it.collect::<PyResult<_>>()?,
        _ => {
            return Err(type_error(format!(
                "{what} must be a 2-D float array or a list of lists of floats, not {}",
                type_name(obj)
            )))
        }
    };
    if items.len() != rows {
        return Err(shape_err(format!("({}, ...)", items.len())));
    }
    items.iter().map(|row| read_vector(row, what)).collect()
}

/// A 1-D float array (buffer protocol) or an iterable of floats.
pub fn read_vector(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
    if let Some((shape, data)) = read_buffer(obj)? {
        if shape.len() == 1 {
            return Ok(data);
        }
        return Err(value_error(format!(
            "{what} must be 1-D, got shape {shape:?}"
        )));
    }
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(type_error(format!(
            "{what} must be a sequence of floats, not {}",
            type_name(obj)
        )));
    }
    let mut out = Vec::new();
    for item in obj.try_iter().map_err(|_| {
        type_error(format!(
            "{what} must be a float array or a list of floats, not {}",
            type_name(obj)
        ))
    })? {
        let item = item?;
        let x: f64 = item.extract().map_err(|_| {
            type_error(format!(
                "{what} holds a {}, expected floats",
                type_name(&item)
            ))
        })?;
        out.push(x as f32);
    }
    Ok(out)
}

/// The canonical (unscoped) key of a partition argument.
pub fn partition_text(partition: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    let Some(p) = partition else {
        return Ok(String::new());
    };
    if p.is_none() {
        return Ok(String::new());
    }
    if let Ok(s) = p.cast::<PyString>() {
        return Ok(s.to_str()?.to_owned());
    }
    if p.is_instance_of::<PyDict>() {
        let v = to_json(p, "partition")?;
        return Ok(canonical_key(&v));
    }
    Err(type_error(format!(
        "partition must be a dict, a str (e.g. from llmedge.partition_key) or None, not {}",
        type_name(p)
    )))
}

/// A `tags=` argument: a list of strings, duplicates dropped.
pub fn tag_list(tags: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(tags) = tags else {
        return Ok(Vec::new());
    };
    if tags.is_none() {
        return Ok(Vec::new());
    }
    if tags.is_instance_of::<PyString>() {
        return Err(type_error(
            "tags must be a list of strings, not a single str",
        ));
    }
    let mut out = Vec::new();
    for t in tags
        .try_iter()
        .map_err(|_| type_error("tags must be a list of strings"))?
    {
        let t = t?;
        let s: String = t
            .extract()
            .map_err(|_| type_error(format!("tags must be strings, got a {}", type_name(&t))))?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}
