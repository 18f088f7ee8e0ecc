//! `llmedge.SemanticCache` (the Rust half; `llmedge.cache.SemanticCache`
//! subclasses it to add the asyncio and single-flight methods) and
//! `partition_key`.
//!
//! Every method converts its Python arguments first (responses, metadata and
//! partitions to owned Rust values, vectors through the buffer protocol),
//! reads the clock, calls a Python embedder if there is one, and only then
//! takes the store's lock, with the GIL released.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use pyo3::exceptions::PyOSError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;

use crate::cache::guard::{self, GuardReason};
use crate::cache::hashing::HashingEmbedder;
use crate::cache::index::{HnswParams, IndexKind};
use crate::cache::partition::{canonical_key, normalize_prompt, scoped_key, unscoped};
use crate::cache::snapshot::{self, SnapshotError};
use crate::cache::store::{CacheTier, Found, GuardFn, NewEntry, Store, StoreConfig, StoreError};
use crate::py::cache_hit::CacheHit;
use crate::py::errors::{new_error, type_error, value_error};

const TAG_STR: u8 = b'S';
const TAG_BYTES: u8 = b'B';
const TAG_JSON: u8 = b'J';
const MAX_JSON_DEPTH: usize = 200;
/// Prompts per embedder call when warming.
const WARM_BATCH: usize = 256;

enum Embedder {
    Hashing(HashingEmbedder),
    Python(Py<PyAny>),
}

enum Clock {
    Monotonic,
    Python(Py<PyAny>),
}

#[pyclass(frozen, subclass, module = "llmedge._core", name = "SemanticCache")]
pub struct SemanticCache {
    store: Mutex<Store>,
    embedder: Embedder,
    identity: String,
    dim: usize,
    threshold: f32,
    /// Seconds; `INFINITY` when entries never expire.
    ttl: f64,
    guard: bool,
    index: IndexKind,
    max_entries: usize,
    max_memory_mb: f64,
    clock: Clock,
}

/// One lookup of a batch: prompt, scoped partition, optional vector.
struct Query {
    prompt: String,
    partition: String,
    vector: Option<Vec<f32>>,
}

fn monotonic() -> f64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn snapshot_error(py: Python<'_>, e: SnapshotError, path: &str) -> PyErr {
    match e {
        SnapshotError::Io(msg) => PyOSError::new_err(msg),
        other => new_error(py, "CacheSnapshotError", (format!("{path}: {other}"),)),
    }
}

// ---- conversions ----------------------------------------------------------

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A JSON-compatible Python value as serde_json, or a TypeError naming where
/// the first unsupported value sits.
fn to_json(obj: &Bound<'_, PyAny>, what: &str, path: &mut String, depth: usize) -> PyResult<Value> {
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
            out.push(to_json(&item, what, path, depth + 1)?);
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
            map.insert(key, to_json(&v, what, path, depth + 1)?);
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

fn from_json<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
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
fn encode_response(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
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
    let value = to_json(obj, "response", &mut String::new(), 0)?;
    let mut out = vec![TAG_JSON];
    serde_json::to_writer(&mut out, &value).map_err(|e| type_error(e.to_string()))?;
    Ok(out)
}

fn decode_response<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
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

/// The canonical (unscoped) key of a partition argument.
fn partition_text(partition: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
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
        let v = to_json(p, "partition", &mut String::new(), 0)?;
        return Ok(canonical_key(&v));
    }
    Err(type_error(format!(
        "partition must be a dict, a str (e.g. from llmedge.partition_key) or None, not {}",
        type_name(p)
    )))
}

fn check_prompt(prompt: &str) -> PyResult<()> {
    if prompt.trim().is_empty() {
        return Err(value_error(format!(
            "prompt must be a non-empty string, got {prompt:?}"
        )));
    }
    Ok(())
}

/// Validate and L2-normalise a vector.
fn normalized(mut v: Vec<f32>, dim: usize, what: &str) -> PyResult<Vec<f32>> {
    if v.len() != dim {
        return Err(value_error(format!(
            "{what} has dimension {}, expected {dim}",
            v.len()
        )));
    }
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(value_error(format!(
            "{what} has a non-finite value {x} at index {i}"
        )));
    }
    // Eight partial sums: one running f64 sum is a chain of dependent adds
    // (a tenth of a lookup's time at 384 dimensions).
    let mut part = [0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (p, x) in part.iter_mut().zip(c) {
            *p += f64::from(*x) * f64::from(*x);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum();
    let norm = (part.iter().sum::<f64>() + tail).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(value_error(format!(
            "{what} is all zeros (or its norm is not finite); cosine similarity needs a \
             non-zero vector"
        )));
    }
    let inv = (1.0 / norm) as f32;
    v.iter_mut().for_each(|x| *x *= inv);
    Ok(v)
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
fn read_matrix(
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
    items.iter().map(|row| read_vector_raw(row, what)).collect()
}

fn read_vector_raw(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
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

fn embedder_identity(obj: &Bound<'_, PyAny>) -> PyResult<String> {
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

fn embedder_dim(obj: &Bound<'_, PyAny>) -> Option<usize> {
    for attr in ["dim", "dimension", "get_sentence_embedding_dimension"] {
        if let Some(v) = attr_value(obj, attr) {
            if let Ok(d) = v.extract::<usize>() {
                return Some(d);
            }
        }
    }
    None
}

fn parse_ttl(ttl: Option<f64>, what: &str) -> PyResult<f64> {
    match ttl {
        None => Ok(f64::INFINITY),
        Some(t) if t > 0.0 && !t.is_nan() => Ok(t),
        Some(t) => Err(value_error(format!(
            "{what} must be a positive number of seconds (or None for no expiry), got {t}"
        ))),
    }
}

fn parse_tags(tags: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
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

fn guard_fn(q: &str, c: &str) -> Option<GuardReason> {
    guard::check(q, c)
}

impl SemanticCache {
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        match &self.clock {
            Clock::Monotonic => Ok(monotonic()),
            Clock::Python(f) => {
                let v = f.bind(py).call0()?;
                let t: f64 = v.extract().map_err(|_| {
                    type_error(format!(
                        "clock() must return a float, got {}",
                        type_name(&v)
                    ))
                })?;
                if !t.is_finite() {
                    return Err(value_error(format!(
                        "clock() returned {t}; expected a finite float"
                    )));
                }
                Ok(t)
            }
        }
    }

    fn scoped(&self, partition: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
        Ok(scoped_key(&self.identity, &partition_text(partition)?))
    }

    fn query_vector(&self, embedding: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<f32>>> {
        match embedding {
            Some(e) if !e.is_none() => Ok(Some(normalized(
                read_vector_raw(e, "embedding")?,
                self.dim,
                "embedding",
            )?)),
            _ => Ok(None),
        }
    }

    /// Embeddings of `prompts`, validated and normalised: the Rust embedder
    /// with the GIL released, or one call of the Python embedder.
    fn embed_many(&self, py: Python<'_>, prompts: &[&str]) -> PyResult<Vec<Vec<f32>>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let raw = match &self.embedder {
            Embedder::Hashing(h) => py.detach(|| prompts.iter().map(|p| h.embed(p)).collect()),
            Embedder::Python(f) => {
                let list = PyList::new(py, prompts)?;
                let out = f.bind(py).call1((list,))?;
                read_matrix(&out, prompts.len(), self.dim, "the embedder's output")?
            }
        };
        raw.into_iter()
            .zip(prompts)
            .map(|(v, p)| {
                let short: String = p.chars().take(60).collect();
                normalized(v, self.dim, &format!("the embedding of {short:?}"))
            })
            .collect()
    }

    fn hit(&self, py: Python<'_>, f: Found) -> PyResult<Py<CacheHit>> {
        let response = decode_response(py, &f.response)?.unbind();
        let metadata = match &f.metadata {
            Some(m) => {
                let v: Value = serde_json::from_slice(m)
                    .map_err(|_| value_error("cached metadata is corrupted"))?;
                from_json(py, &v)?.unbind()
            }
            None => py.None(),
        };
        Py::new(
            py,
            CacheHit {
                response,
                score: f64::from(f.score),
                kind: if f.exact { "exact" } else { "semantic" },
                matched_prompt: f.prompt,
                age: f.age,
                metadata,
            },
        )
    }

    /// The lookups of a batch: exact tier for all, one embedder call for
    /// those that missed and need a vector, then the semantic tier.
    /// An embedder failure fails only the lookups that needed it; exact hits
    /// of the same batch are still returned (and counted).
    fn lookup_many(
        &self,
        py: Python<'_>,
        queries: Vec<Query>,
    ) -> PyResult<Vec<PyResult<Option<Py<CacheHit>>>>> {
        let now = self.now(py)?;
        let exact_only = self.threshold >= 1.0;
        let (mut found, mut micros): (Vec<Option<Found>>, Vec<f64>) = py.detach(|| {
            let mut store = self.store.lock();
            let mut found = Vec::with_capacity(queries.len());
            let mut micros = Vec::with_capacity(queries.len());
            for q in &queries {
                let t = Instant::now();
                let f = store.lookup_exact(&q.partition, &q.prompt, now);
                if f.is_some() {
                    store.stats.exact_hits += 1;
                } else if exact_only {
                    store.stats.misses += 1;
                }
                let us = t.elapsed().as_secs_f64() * 1e6;
                if f.is_some() || exact_only {
                    store.stats.record_latency(us);
                }
                found.push(f);
                micros.push(us);
            }
            (found, micros)
        });
        let mut failed: Vec<Option<PyErr>> = (0..queries.len()).map(|_| None).collect();
        if !exact_only {
            let pending: Vec<usize> = (0..queries.len()).filter(|&i| found[i].is_none()).collect();
            if !pending.is_empty() {
                let need: Vec<&str> = pending
                    .iter()
                    .filter(|&&i| queries[i].vector.is_none())
                    .map(|&i| queries[i].prompt.as_str())
                    .collect();
                let mut computed = match self.embed_many(py, &need) {
                    Ok(v) => v.into_iter(),
                    Err(e) => {
                        for &i in &pending {
                            failed[i] = Some(e.clone_ref(py));
                        }
                        return Ok(collect_hits(self, py, found, failed));
                    }
                };
                let vectors: Vec<Vec<f32>> = pending
                    .iter()
                    .map(|&i| match &queries[i].vector {
                        Some(v) => v.clone(),
                        None => computed.next().unwrap_or_default(),
                    })
                    .collect();
                let threshold = self.threshold;
                let guard: Option<&GuardFn> = if self.guard { Some(&guard_fn) } else { None };
                let results: Vec<Option<Found>> = py.detach(|| {
                    let mut store = self.store.lock();
                    pending
                        .iter()
                        .zip(&vectors)
                        .map(|(&i, v)| {
                            let t = Instant::now();
                            let q = &queries[i];
                            let (f, rejected) = store.lookup_semantic(
                                &q.partition,
                                &q.prompt,
                                v,
                                threshold,
                                guard,
                                now,
                            );
                            for r in rejected {
                                *store.stats.guard_rejections.entry(r.as_str()).or_insert(0) += 1;
                            }
                            if f.is_some() {
                                store.stats.semantic_hits += 1;
                            } else {
                                store.stats.misses += 1;
                            }
                            micros[i] += t.elapsed().as_secs_f64() * 1e6;
                            store.stats.record_latency(micros[i]);
                            f
                        })
                        .collect()
                });
                for (&i, f) in pending.iter().zip(results) {
                    found[i] = f;
                }
            }
        }
        Ok(collect_hits(self, py, found, failed))
    }

    fn make_entry(
        &self,
        prompt: &str,
        response: &Bound<'_, PyAny>,
        partition: String,
        metadata: Option<&Bound<'_, PyAny>>,
        tags: Vec<String>,
        ttl: f64,
    ) -> PyResult<NewEntry> {
        check_prompt(prompt)?;
        let response = encode_response(response)?;
        let metadata = match metadata {
            Some(m) if !m.is_none() => {
                let v = to_json(m, "metadata", &mut String::new(), 0)?;
                Some(Arc::from(
                    serde_json::to_vec(&v).map_err(|e| type_error(e.to_string()))?,
                ))
            }
            _ => None,
        };
        Ok(NewEntry {
            partition,
            prompt: prompt.to_owned(),
            vector: Vec::new(),
            response: Arc::from(response),
            metadata,
            tags,
            ttl,
            age: 0.0,
        })
    }

    fn insert_all(&self, py: Python<'_>, entries: Vec<NewEntry>) -> PyResult<usize> {
        let now = self.now(py)?;
        let n = entries.len();
        py.detach(|| {
            let mut store = self.store.lock();
            // Check every entry before changing anything: all or nothing.
            for e in &entries {
                let bytes = store.required_bytes(e);
                if bytes > store.config().max_memory_bytes {
                    return Err(StoreError::TooLarge {
                        bytes,
                        limit: store.config().max_memory_bytes,
                    });
                }
            }
            for e in entries {
                store.insert(e, now)?;
            }
            Ok(())
        })
        .map_err(|e| value_error(e.to_string()))?;
        Ok(n)
    }
}

#[pymethods]
impl SemanticCache {
    #[new]
    #[pyo3(signature = (*, embedder=None, dim=None, threshold=0.85, ttl=Some(3600.0), max_entries=10_000, max_memory_mb=100.0, guard=true, index="auto", clock=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        embedder: Option<&Bound<'_, PyAny>>,
        dim: Option<usize>,
        threshold: f64,
        ttl: Option<f64>,
        max_entries: usize,
        max_memory_mb: f64,
        guard: bool,
        index: &str,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if !(-1.0..=1.0).contains(&threshold) {
            return Err(value_error(format!(
                "threshold must be a cosine similarity in [-1, 1], got {threshold}"
            )));
        }
        let ttl = parse_ttl(ttl, "ttl")?;
        if max_entries == 0 {
            return Err(value_error("max_entries must be at least 1, got 0"));
        }
        if !(max_memory_mb > 0.0 && max_memory_mb.is_finite()) {
            return Err(value_error(format!(
                "max_memory_mb must be a positive finite number, got {max_memory_mb}"
            )));
        }
        let kind = IndexKind::parse(index).ok_or_else(|| {
            value_error(format!(
                "index must be one of {}, got {index:?}",
                IndexKind::ALLOWED
            ))
        })?;
        let clock = match clock {
            Some(c) if !c.is_none() => {
                if !c.is_callable() {
                    return Err(type_error(format!(
                        "clock must be a zero-argument callable returning seconds, not {}",
                        type_name(c)
                    )));
                }
                Clock::Python(c.clone().unbind())
            }
            _ => Clock::Monotonic,
        };
        let (embedder, identity, dim) = match embedder {
            Some(e) if !e.is_none() => {
                if !e.is_callable() {
                    return Err(type_error(format!(
                        "embedder must be a callable taking a list of strings, not {}",
                        type_name(e)
                    )));
                }
                let own = embedder_dim(e);
                let dim =
                    match (own, dim) {
                        (Some(a), Some(b)) if a != b => {
                            return Err(value_error(format!(
                                "dim={b} disagrees with the embedder's dimension {a}"
                            )))
                        }
                        (Some(a), _) => a,
                        (None, Some(b)) => b,
                        (None, None) => return Err(value_error(
                            "cannot tell the embedder's dimension: give it a `dim` attribute or \
                             pass dim=",
                        )),
                    };
                if dim == 0 {
                    return Err(value_error("dim must be a positive integer, got 0"));
                }
                (
                    Embedder::Python(e.clone().unbind()),
                    embedder_identity(e)?,
                    dim,
                )
            }
            _ => {
                let h = HashingEmbedder::new(dim.unwrap_or(384)).map_err(value_error)?;
                let identity = h.identity();
                let dim = h.dim();
                (Embedder::Hashing(h), identity, dim)
            }
        };
        let cfg = StoreConfig {
            dim,
            max_entries,
            max_memory_bytes: (max_memory_mb * 1024.0 * 1024.0) as usize,
            index: kind,
            hnsw: HnswParams::default(),
        };
        Ok(SemanticCache {
            store: Mutex::new(Store::new(cfg)),
            embedder,
            identity,
            dim,
            threshold: threshold as f32,
            ttl,
            guard,
            index: kind,
            max_entries,
            max_memory_mb,
            clock,
        })
    }

    #[getter]
    fn dim(&self) -> usize {
        self.dim
    }
    #[getter]
    fn threshold(&self) -> f64 {
        f64::from(self.threshold)
    }
    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.ttl.is_finite().then_some(self.ttl)
    }
    #[getter]
    fn max_entries(&self) -> usize {
        self.max_entries
    }
    #[getter]
    fn max_memory_mb(&self) -> f64 {
        self.max_memory_mb
    }
    #[getter]
    fn guard(&self) -> bool {
        self.guard
    }
    #[getter]
    fn index(&self) -> &'static str {
        self.index.as_str()
    }
    #[getter]
    fn embedder_identity(&self) -> &str {
        &self.identity
    }

    #[pyo3(signature = (prompt, *, partition=None, embedding=None))]
    fn get(
        &self,
        py: Python<'_>,
        prompt: &str,
        partition: Option<&Bound<'_, PyAny>>,
        embedding: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<CacheHit>>> {
        check_prompt(prompt)?;
        let q = Query {
            prompt: prompt.to_owned(),
            partition: self.scoped(partition)?,
            vector: self.query_vector(embedding)?,
        };
        match self.lookup_many(py, vec![q])?.pop() {
            Some(r) => r,
            None => Ok(None),
        }
    }

    /// Many lookups with one embedder call: `requests` holds
    /// `(prompt, partition, embedding)` tuples. The asyncio methods batch
    /// concurrent lookups through this.
    /// Each result is a `CacheHit`, None, or the exception that lookup
    /// raised (a bad request or an embedder failure fails only its own).
    fn get_many(&self, py: Python<'_>, requests: &Bound<'_, PyAny>) -> PyResult<Vec<Py<PyAny>>> {
        let mut parsed: Vec<PyResult<Query>> = Vec::new();
        for item in requests.try_iter()? {
            let item = item?;
            parsed.push((|| {
                let (prompt, partition, embedding): (String, Bound<'_, PyAny>, Bound<'_, PyAny>) =
                    item.extract().map_err(|_| {
                        type_error("get_many takes (prompt, partition, embedding) tuples")
                    })?;
                check_prompt(&prompt)?;
                Ok(Query {
                    partition: self.scoped(Some(&partition))?,
                    vector: self.query_vector(Some(&embedding))?,
                    prompt,
                })
            })());
        }
        let mut errors: Vec<Option<PyErr>> = Vec::with_capacity(parsed.len());
        let mut queries = Vec::new();
        for p in parsed {
            match p {
                Ok(q) => {
                    queries.push(q);
                    errors.push(None);
                }
                Err(e) => errors.push(Some(e)),
            }
        }
        let mut results = self.lookup_many(py, queries)?.into_iter();
        errors
            .into_iter()
            .map(|err| {
                let r = match err {
                    Some(e) => Err(e),
                    None => results.next().unwrap_or(Ok(None)),
                };
                Ok(match r {
                    Ok(Some(hit)) => hit.into_any(),
                    Ok(None) => py.None(),
                    Err(e) => e.into_value(py).into_any(),
                })
            })
            .collect()
    }

    #[pyo3(signature = (prompt, response, *, partition=None, embedding=None, ttl=None, metadata=None, tags=None))]
    #[allow(clippy::too_many_arguments)]
    fn set(
        &self,
        py: Python<'_>,
        prompt: &str,
        response: &Bound<'_, PyAny>,
        partition: Option<&Bound<'_, PyAny>>,
        embedding: Option<&Bound<'_, PyAny>>,
        ttl: Option<f64>,
        metadata: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = match ttl {
            None => self.ttl,
            Some(t) => parse_ttl(Some(t), "ttl")?,
        };
        let mut entry = self.make_entry(
            prompt,
            response,
            self.scoped(partition)?,
            metadata,
            parse_tags(tags)?,
            ttl,
        )?;
        entry.vector = match self.query_vector(embedding)? {
            Some(v) => v,
            None => self.embed_many(py, &[prompt])?.pop().unwrap_or_default(),
        };
        self.insert_all(py, vec![entry]).map(|_| ())
    }

    #[pyo3(signature = (pairs, *, partition=None, embeddings=None, ttl=None, tags=None))]
    fn warm(
        &self,
        py: Python<'_>,
        pairs: &Bound<'_, PyAny>,
        partition: Option<&Bound<'_, PyAny>>,
        embeddings: Option<&Bound<'_, PyAny>>,
        ttl: Option<f64>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let ttl = match ttl {
            None => self.ttl,
            Some(t) => parse_ttl(Some(t), "ttl")?,
        };
        let scoped = self.scoped(partition)?;
        let tags = parse_tags(tags)?;
        let iter = match pairs.cast::<PyDict>() {
            Ok(d) => d.items().into_any().try_iter()?,
            Err(_) => pairs.try_iter()?,
        };
        let mut entries = Vec::new();
        for item in iter {
            let item = item?;
            let (prompt, response): (String, Bound<'_, PyAny>) = item.extract().map_err(|_| {
                type_error(format!(
                    "warm takes (prompt, response) pairs or a dict, got an item of type {}",
                    type_name(&item)
                ))
            })?;
            entries.push(self.make_entry(
                &prompt,
                &response,
                scoped.clone(),
                None,
                tags.clone(),
                ttl,
            )?);
        }
        let vectors = match embeddings {
            Some(e) if !e.is_none() => read_matrix(e, entries.len(), self.dim, "embeddings")?
                .into_iter()
                .enumerate()
                .map(|(i, v)| normalized(v, self.dim, &format!("embeddings[{i}]")))
                .collect::<PyResult<Vec<_>>>()?,
            _ => {
                let mut out = Vec::with_capacity(entries.len());
                for chunk in entries.chunks(WARM_BATCH) {
                    let prompts: Vec<&str> = chunk.iter().map(|e| e.prompt.as_str()).collect();
                    out.extend(self.embed_many(py, &prompts)?);
                }
                out
            }
        };
        for (e, v) in entries.iter_mut().zip(vectors) {
            e.vector = v;
        }
        self.insert_all(py, entries)
    }

    #[pyo3(signature = (prompt, *, partition=None))]
    fn invalidate(
        &self,
        py: Python<'_>,
        prompt: &str,
        partition: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let key = self.scoped(partition)?;
        Ok(py.detach(|| self.store.lock().invalidate(&key, prompt)))
    }

    #[pyo3(signature = (partition))]
    fn invalidate_partition(
        &self,
        py: Python<'_>,
        partition: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let key = self.scoped(Some(partition))?;
        Ok(py.detach(|| self.store.lock().invalidate_partition(&key)))
    }

    fn invalidate_tag(&self, py: Python<'_>, tag: &str) -> usize {
        py.detach(|| self.store.lock().invalidate_tag(tag))
    }

    fn clear(&self, py: Python<'_>) {
        py.detach(|| self.store.lock().clear())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        py.detach(|| self.store.lock().len())
    }

    /// The key single-flight coordination uses: scoped partition and
    /// normalised prompt.
    #[pyo3(signature = (prompt, *, partition=None))]
    fn flight_key(&self, prompt: &str, partition: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
        check_prompt(prompt)?;
        Ok(format!(
            "{}\u{0}{}",
            self.scoped(partition)?,
            normalize_prompt(prompt)
        ))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (s, entries, memory, slack, partitions, kinds) = py.detach(|| {
            let store = self.store.lock();
            let kinds = store.index_kinds();
            (
                store.stats.clone(),
                store.len(),
                store.memory_bytes(),
                store.index_slack_bytes(),
                store.partition_count(),
                kinds,
            )
        });
        let d = PyDict::new(py);
        d.set_item("hits", s.exact_hits + s.semantic_hits)?;
        d.set_item("exact_hits", s.exact_hits)?;
        d.set_item("semantic_hits", s.semantic_hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("lookups", s.lookups())?;
        d.set_item("hit_rate", s.hit_rate())?;
        d.set_item("guard_rejections", s.total_rejections())?;
        let by = PyDict::new(py);
        for (k, v) in &s.guard_rejections {
            by.set_item(k, v)?;
        }
        d.set_item("guard_rejections_by_reason", by)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("expirations", s.expirations)?;
        d.set_item("invalidations", s.invalidations)?;
        d.set_item("inserts", s.inserts)?;
        d.set_item("entries", entries)?;
        d.set_item("partitions", partitions)?;
        d.set_item("memory_bytes", memory)?;
        d.set_item(
            "max_memory_bytes",
            (self.max_memory_mb * 1024.0 * 1024.0) as usize,
        )?;
        d.set_item("index_slack_bytes", slack)?;
        let idx = PyDict::new(py);
        idx.set_item("flat", kinds.iter().filter(|k| k.1 == "flat").count())?;
        idx.set_item("hnsw", kinds.iter().filter(|k| k.1 == "hnsw").count())?;
        d.set_item("indexes", idx)?;
        d.set_item("lookup_p50_us", s.latency_quantile(0.5))?;
        d.set_item("lookup_p99_us", s.latency_quantile(0.99))?;
        Ok(d)
    }

    fn reset_stats(&self, py: Python<'_>) {
        py.detach(|| self.store.lock().stats.reset())
    }

    /// Write a snapshot atomically (temporary file, fsync, rename).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<usize> {
        let now = self.now(py)?;
        let shown = path.display().to_string();
        py.detach(|| {
            let (data, n) = {
                let store = self.store.lock();
                let mut w = snapshot::Writer::new(&self.identity, self.dim);
                let mut n = 0;
                store.for_each_oldest_first(now, |e| {
                    w.entry(
                        unscoped(e.partition),
                        e.prompt,
                        e.response,
                        e.metadata,
                        e.tags,
                        e.age,
                        e.remaining,
                        &e.vector,
                    );
                    n += 1;
                });
                (w.finish(), n)
            };
            snapshot::write_atomic(&path, &data).map(|_| n)
        })
        .map_err(|e| snapshot_error(py, e, &shown))
    }

    /// Replace the contents with a snapshot's (all or nothing); the number
    /// of entries restored.
    fn load_snapshot(&self, py: Python<'_>, path: PathBuf) -> PyResult<usize> {
        let now = self.now(py)?;
        let shown = path.display().to_string();
        let result = py.detach(|| {
            let data = std::fs::read(&path)
                .map_err(|e| SnapshotError::Io(format!("cannot read {}: {e}", path.display())))?;
            let entries = snapshot::decode(&data, &self.identity, self.dim)?;
            let cfg = self.store.lock().config().clone();
            let mut fresh = Store::new(cfg);
            let mut bad = None;
            for e in entries {
                let vector = match normalized_plain(e.vector, self.dim) {
                    Some(v) => v,
                    None => {
                        bad = Some(SnapshotError::Corrupted);
                        break;
                    }
                };
                let entry = NewEntry {
                    partition: scoped_key(&self.identity, &e.partition),
                    prompt: e.prompt,
                    vector,
                    response: Arc::from(e.response),
                    metadata: e.metadata.map(Arc::from),
                    tags: e.tags,
                    ttl: e.age + e.remaining,
                    age: e.age,
                };
                // Entries larger than this cache's memory bound are skipped.
                let _ = fresh.insert(entry, now);
            }
            if let Some(b) = bad {
                return Err(b);
            }
            fresh.stats.reset();
            let n = fresh.len();
            *self.store.lock() = fresh;
            Ok(n)
        });
        result.map_err(|e| snapshot_error(py, e, &shown))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let (n, mem) = py.detach(|| {
            let s = self.store.lock();
            (s.len(), s.memory_bytes())
        });
        let ttl = if self.ttl.is_finite() {
            format!("{}", self.ttl)
        } else {
            "None".into()
        };
        format!(
            "SemanticCache(embedder={:?}, dim={}, threshold={}, ttl={ttl}, max_entries={}, \
             max_memory_mb={}, guard={}, index={:?}, entries={n}, memory_bytes={mem})",
            self.identity,
            self.dim,
            self.threshold,
            self.max_entries,
            self.max_memory_mb,
            if self.guard { "True" } else { "False" },
            self.index.as_str(),
        )
    }
}

fn collect_hits(
    cache: &SemanticCache,
    py: Python<'_>,
    found: Vec<Option<Found>>,
    failed: Vec<Option<PyErr>>,
) -> Vec<PyResult<Option<Py<CacheHit>>>> {
    found
        .into_iter()
        .zip(failed)
        .map(|(f, err)| match err {
            Some(e) => Err(e),
            None => f.map(|f| cache.hit(py, f)).transpose(),
        })
        .collect()
}

fn normalized_plain(v: Vec<f32>, dim: usize) -> Option<Vec<f32>> {
    if v.len() != dim || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0).then(|| v.iter().map(|x| x / norm).collect())
}

/// `partition_key(model=None, **params)`: the canonical partition string
/// (sorted keys, compact JSON, integral floats as integers), stable across
/// processes; pass it (or the equivalent dict) as `partition=`.
#[pyfunction]
#[pyo3(signature = (model=None, **params))]
fn partition_key(
    py: Python<'_>,
    model: Option<&Bound<'_, PyAny>>,
    params: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    let dict = match params {
        Some(p) => p.copy()?,
        None => PyDict::new(py),
    };
    if let Some(m) = model {
        if !m.is_none() {
            dict.set_item("model", m)?;
        }
    }
    let v = to_json(
        dict.as_any(),
        "partition_key argument",
        &mut String::new(),
        0,
    )?;
    Ok(canonical_key(&v))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SemanticCache>()?;
    m.add_class::<CacheHit>()?;
    m.add_function(wrap_pyfunction!(partition_key, m)?)?;
    Ok(())
}
