//! `llmedge.SemanticCache` (the Rust half; `llmedge.cache.SemanticCache`
//! subclasses it to add the asyncio and single-flight methods) and
//! `partition_key`.
//!
//! The cache is `cache::Cache`. Every method here converts its Python
//! arguments (responses, metadata and partitions to owned Rust values,
//! vectors through the buffer protocol), reads the clock, calls a Python
//! embedder if there is one between the two phases of a lookup, and calls the
//! core with the GIL released.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::cache::index::{HnswParams, IndexKind};
use crate::cache::learn::{wilson, Source};
use crate::cache::partition::canonical_key;
use crate::cache::shared::{JoinError, Replica, SharedConfig};
use crate::cache::snapshot::SnapshotError;
use crate::cache::store::Found;
use crate::cache::{config, Cache, CacheConfig, CacheError, NewItem, Query};
use crate::py::cache_hit::CacheHit;
use crate::py::clock::{monotonic, Clock};
use crate::py::convert::{
    encode_response, partition_text, read_matrix, read_vector, tag_list, to_json, type_name,
};
use crate::py::embedder::Embedder;
use crate::py::errors::{cache_namespace_error, cache_snapshot_error, type_error, value_error};
use crate::py::redis_store::{store_error, RedisStore};

/// Prompts per embedder call when warming.
const WARM_BATCH: usize = 256;

/// A lookup's hit, and the candidate the error-bounded mode refused.
type HitAndProbe = (Option<Py<CacheHit>>, Option<Py<CacheHit>>);

#[pyclass(frozen, subclass, module = "llmedge._core", name = "SemanticCache")]
pub struct SemanticCache {
    core: Arc<Cache>,
    embedder: Embedder,
    clock: Clock,
    /// The namespace in Redis this cache shares (`store=`).
    shared: Option<Replica>,
    /// The last reading of a Python clock (f64 bits), for the shared
    /// cache's background tasks, which must not call Python.
    last_now: Arc<AtomicU64>,
    /// `answers_match=`: compares a fresh answer with a cached one (called
    /// by the Python layer; None: its default).
    answers_match: Option<Py<PyAny>>,
}

/// A lookup's hit (or the error that failed it) and the candidate the
/// error-bounded mode refused, if any.
type Looked = (PyResult<Option<Py<CacheHit>>>, Option<Found>);

fn cache_error(e: CacheError) -> PyErr {
    value_error(e.to_string())
}

fn snapshot_error(py: Python<'_>, e: SnapshotError, path: &str) -> PyErr {
    match e {
        SnapshotError::Io(msg) => PyOSError::new_err(msg),
        other => cache_snapshot_error(py, format!("{path}: {other}")),
    }
}

impl SemanticCache {
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        let now = self.clock.now(py)?;
        if self.shared.is_some() && !self.clock.is_monotonic() {
            self.last_now.store(now.to_bits(), Relaxed);
        }
        Ok(now)
    }

    fn normalized(&self, v: Vec<f32>, what: &str) -> PyResult<Vec<f32>> {
        self.core.config().normalized(v, what).map_err(cache_error)
    }

    fn query_vector(&self, embedding: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<f32>>> {
        match embedding {
            Some(e) if !e.is_none() => Ok(Some(
                self.normalized(read_vector(e, "embedding")?, "embedding")?,
            )),
            _ => Ok(None),
        }
    }

    /// Embeddings of `prompts`, validated and normalised.
    fn embed_many(&self, py: Python<'_>, prompts: &[&str]) -> PyResult<Vec<Vec<f32>>> {
        let raw = self.embedder.embed(py, prompts, self.core.config().dim)?;
        raw.into_iter()
            .zip(prompts)
            .map(|(v, p)| {
                let short: String = p.chars().take(60).collect();
                self.normalized(v, &format!("the embedding of {short:?}"))
            })
            .collect()
    }

    /// A batch of lookups: the exact tier for all, one embedder call for
    /// those that missed and need a vector (no lock held), then the semantic
    /// tier. An embedder failure fails only the lookups that needed it;
    /// exact hits of the same batch are still returned (and counted).
    fn lookup_many(&self, py: Python<'_>, queries: Vec<Query>) -> PyResult<Vec<Looked>> {
        let now = self.now(py)?;
        let mut failed: Vec<Option<PyErr>> = queries.iter().map(|_| None).collect();
        let keys: Vec<(String, String)> = match &self.shared {
            Some(_) => queries
                .iter()
                .map(|q| (q.prompt.clone(), q.partition.clone()))
                .collect(),
            None => Vec::new(),
        };
        let phase = py.detach(|| self.core.lookup_exact(queries, now));
        let n = failed.len();
        let (mut found, probes) = if phase.is_done() {
            (phase.into_found(), vec![None; n])
        } else {
            match self.embed_many(py, &phase.to_embed()) {
                Ok(vectors) => py.detach(|| self.core.lookup_semantic_probed(phase, vectors)),
                Err(e) => {
                    for &i in phase.pending() {
                        failed[i] = Some(e.clone_ref(py));
                    }
                    (phase.into_found(), vec![None; n])
                }
            }
        };
        if let Some(shared) = &self.shared {
            let missed: Vec<usize> = (0..found.len())
                .filter(|&i| found[i].is_none() && failed[i].is_none())
                .collect();
            let wanted: Vec<(&str, &str)> = missed
                .iter()
                .map(|&i| (keys[i].0.as_str(), keys[i].1.as_str()))
                .collect();
            let fetched = py.detach(|| shared.fetch_exact(&wanted));
            for (i, f) in missed.into_iter().zip(fetched) {
                found[i] = f;
            }
        }
        let cache = self.core.instance();
        Ok(found
            .into_iter()
            .zip(failed)
            .zip(probes)
            .map(|((f, err), probe)| {
                let hit = match err {
                    Some(e) => Err(e),
                    None => f.map(|f| CacheHit::from_found(py, f, cache)).transpose(),
                };
                (hit, probe)
            })
            .collect())
    }

    /// Records a judgement of `hit` (one of this cache's) and shares the
    /// entry's new state with the namespace, if any.
    fn judge(
        &self,
        py: Python<'_>,
        hit: &Bound<'_, PyAny>,
        correct: &Bound<'_, PyAny>,
        source: Source,
    ) -> PyResult<bool> {
        let hit = hit.cast::<CacheHit>().map_err(|_| {
            type_error(format!(
                "hit must be a llmedge.CacheHit returned by this cache's get/aget, got {}",
                type_name(hit)
            ))
        })?;
        let correct: bool = correct.extract().map_err(|_| {
            type_error(format!(
                "correct must be a bool, got {}",
                type_name(correct)
            ))
        })?;
        let hit = hit.get();
        if hit.cache != self.core.instance() {
            return Err(value_error(
                "hit was returned by another cache: feedback goes to the cache that answered",
            ));
        }
        let Some(token) = hit.token else {
            return Err(value_error(
                "hit was fetched from the shared tier and names no local entry to learn from",
            ));
        };
        if !hit.take_judgement() {
            return Err(value_error(
                "feedback was already given for this hit (each hit is judged once)",
            ));
        }
        let now = self.now(py);
        let recorded = py.detach(|| {
            let recorded = self.core.observe(&token, correct, source);
            if let (true, Some(s), Ok(now)) = (recorded, &self.shared, &now) {
                if let Some(item) = self.core.entry_for_replica(&token, *now) {
                    let items = [item];
                    s.publish_set(s.prepare_set(&items));
                }
            }
            recorded
        });
        if !recorded {
            hit.release_judgement();
        }
        Ok(recorded)
    }

    /// An entry to insert, its vector still to come.
    fn item(
        &self,
        prompt: &str,
        response: &Bound<'_, PyAny>,
        partition: String,
        metadata: Option<&Bound<'_, PyAny>>,
        tags: Vec<String>,
        ttl: f64,
    ) -> PyResult<NewItem> {
        config::check_prompt(prompt).map_err(cache_error)?;
        let response = encode_response(response)?;
        let metadata = match metadata {
            Some(m) if !m.is_none() => {
                let v = to_json(m, "metadata")?;
                Some(serde_json::to_vec(&v).map_err(|e| type_error(e.to_string()))?)
            }
            _ => None,
        };
        Ok(NewItem {
            prompt: prompt.to_owned(),
            partition,
            response,
            metadata,
            tags,
            ttl,
            vector: Vec::new(),
            learning: Default::default(),
        })
    }

    /// Inserts all or nothing, then queues them for the namespace in Redis.
    fn insert(&self, py: Python<'_>, items: Vec<NewItem>) -> PyResult<usize> {
        let now = self.now(py)?;
        py.detach(|| {
            let prepared = self.shared.as_ref().map(|s| s.prepare_set(&items));
            let n = self.core.insert(items, now)?;
            if let (Some(s), Some(p)) = (&self.shared, prepared) {
                s.publish_set(p);
            }
            Ok(n)
        })
        .map_err(cache_error)
    }
}

/// `store=` and the options of a shared cache, as the constructor takes them.
struct SharedArgs<'a, 'py> {
    store: Option<&'a Bound<'py, PyAny>>,
    namespace: Option<String>,
    max_shared_entries: Option<usize>,
    background_load: bool,
    max_pending_writes: usize,
    stream_max_len: usize,
}

impl SharedArgs<'_, '_> {
    fn start(
        self,
        py: Python<'_>,
        core: &Arc<Cache>,
        clock: &Clock,
        last_now: &Arc<AtomicU64>,
    ) -> PyResult<Option<Replica>> {
        let Some(store) = self.store.filter(|s| !s.is_none()) else {
            for (name, given) in [
                ("namespace", self.namespace.is_some()),
                ("max_shared_entries", self.max_shared_entries.is_some()),
                ("background_load", self.background_load),
            ] {
                if given {
                    return Err(value_error(format!(
                        "{name}= needs store= (a llmedge.RedisStore to share the cache through)"
                    )));
                }
            }
            return Ok(None);
        };
        let store = store
            .cast::<RedisStore>()
            .map_err(|_| {
                type_error(format!(
                    "store must be a llmedge.RedisStore or None, got {}",
                    type_name(store)
                ))
            })?
            .get()
            .inner()
            .clone();
        let cfg = SharedConfig {
            namespace: self.namespace.unwrap_or_else(|| "default".into()),
            max_shared_entries: self.max_shared_entries.unwrap_or(0),
            stream_max_len: self.stream_max_len,
            max_pending: self.max_pending_writes,
            background_load: self.background_load,
        };
        cfg.validate().map_err(value_error)?;
        let now: Box<dyn Fn() -> f64 + Send + Sync> = if clock.is_monotonic() {
            Box::new(monotonic)
        } else {
            last_now.store(clock.now(py)?.to_bits(), Relaxed);
            let last = Arc::clone(last_now);
            Box::new(move || f64::from_bits(last.load(Relaxed)))
        };
        let core = Arc::clone(core);
        match py.detach(|| Replica::start(core, store, cfg, now)) {
            Ok(r) => Ok(Some(r)),
            Err(JoinError::Mismatch(m)) => Err(cache_namespace_error(py, m)),
            Err(JoinError::Store(e)) => Err(store_error(py, e)),
        }
    }
}

#[pymethods]
impl SemanticCache {
    #[new]
    #[pyo3(signature = (*, embedder=None, dim=None, threshold=0.85, ttl=Some(3600.0), max_entries=10_000, max_memory_mb=100.0, guard=true, index="auto", clock=None, store=None, namespace=None, max_shared_entries=None, background_load=false, max_pending_writes=10_000, stream_max_len=10_000, max_error_rate=None, answers_match=None, seed=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        embedder: Option<&Bound<'_, PyAny>>,
        dim: Option<usize>,
        threshold: f64,
        ttl: Option<f64>,
        max_entries: usize,
        max_memory_mb: f64,
        guard: bool,
        index: &str,
        clock: Option<&Bound<'_, PyAny>>,
        store: Option<&Bound<'_, PyAny>>,
        namespace: Option<String>,
        max_shared_entries: Option<usize>,
        background_load: bool,
        max_pending_writes: usize,
        stream_max_len: usize,
        max_error_rate: Option<f64>,
        answers_match: Option<&Bound<'_, PyAny>>,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let answers_match = match answers_match.filter(|a| !a.is_none()) {
            Some(a) if !a.is_callable() => {
                return Err(type_error(format!(
                    "answers_match must be a callable (cached_answer, fresh_answer) -> bool or \
                     None, got {}",
                    type_name(a)
                )))
            }
            other => other.map(|a| a.clone().unbind()),
        };
        let index = IndexKind::parse(index).ok_or_else(|| {
            value_error(format!(
                "index must be one of {}, got {index:?}",
                IndexKind::ALLOWED
            ))
        })?;
        let clock = Clock::from_arg(clock)?;
        let (embedder, identity, dim) = Embedder::from_args(embedder, dim)?;
        let cfg = CacheConfig {
            dim,
            threshold,
            ttl,
            max_entries,
            max_memory_mb,
            guard,
            index,
            hnsw: HnswParams::default(),
            max_error_rate,
            seed,
        };
        let core = Arc::new(Cache::new(cfg, identity).map_err(cache_error)?);
        let last_now = Arc::new(AtomicU64::new(0));
        let shared = SharedArgs {
            store,
            namespace,
            max_shared_entries,
            background_load,
            max_pending_writes,
            stream_max_len,
        }
        .start(py, &core, &clock, &last_now)?;
        Ok(SemanticCache {
            core,
            embedder,
            clock,
            shared,
            last_now,
            answers_match,
        })
    }

    /// The bound on the rate of wrong semantic answers, or None.
    #[getter]
    fn max_error_rate(&self) -> Option<f64> {
        self.core.config().max_error_rate
    }

    /// The `answers_match=` callable given, or None.
    #[getter]
    fn answers_match(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.answers_match.as_ref().map(|a| a.clone_ref(py))
    }

    /// Tells the cache whether the answer of `hit` (returned by this
    /// cache's get/aget) was right: the entry and its partition learn from
    /// it. Each hit is judged once.
    fn feedback(
        &self,
        py: Python<'_>,
        hit: &Bound<'_, PyAny>,
        correct: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if self.judge(py, hit, correct, Source::Feedback)? {
            Ok(())
        } else {
            Err(value_error(
                "the entry of this hit is no longer cached (evicted, expired, replaced or \
                 invalidated): nothing to learn from",
            ))
        }
    }

    /// The Python layer's report of a verification: `hit` was a served hit
    /// drawn for verification (`probe=False`) or a refused candidate
    /// (`probe=True`), and `matched` says whether the fresh answer matched;
    /// whether it was recorded (False: the entry is gone since).
    #[pyo3(signature = (hit, matched, *, probe))]
    fn _verified(
        &self,
        py: Python<'_>,
        hit: &Bound<'_, PyAny>,
        matched: &Bound<'_, PyAny>,
        probe: bool,
    ) -> PyResult<bool> {
        let source = if probe {
            Source::Probe
        } else {
            Source::Verified
        };
        self.judge(py, hit, matched, source)
    }

    /// One lookup for the verifying flows: `(hit, probe)`, where `probe` is
    /// the candidate the error-bounded mode refused (a miss), as a hit to
    /// report on with `_verified(probe, matched, probe=True)`, or None.
    #[pyo3(signature = (prompt, *, partition=None, embedding=None))]
    fn _lookup(
        &self,
        py: Python<'_>,
        prompt: &str,
        partition: Option<&Bound<'_, PyAny>>,
        embedding: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<HitAndProbe> {
        config::check_prompt(prompt).map_err(cache_error)?;
        let q = Query {
            prompt: prompt.to_owned(),
            partition: partition_text(partition)?,
            vector: self.query_vector(embedding)?,
        };
        match self.lookup_many(py, vec![q])?.pop() {
            Some((hit, probe)) => {
                let probe = probe
                    .map(|f| CacheHit::from_found(py, f, self.core.instance()))
                    .transpose()?;
                Ok((hit?, probe))
            }
            None => Ok((None, None)),
        }
    }

    #[getter]
    fn dim(&self) -> usize {
        self.core.config().dim
    }
    #[getter]
    fn threshold(&self) -> f64 {
        self.core.config().threshold
    }
    #[getter]
    fn ttl(&self) -> Option<f64> {
        // an infinite ttl is no expiry
        self.core.config().ttl.filter(|t| t.is_finite())
    }
    #[getter]
    fn max_entries(&self) -> usize {
        self.core.config().max_entries
    }
    #[getter]
    fn max_memory_mb(&self) -> f64 {
        self.core.config().max_memory_mb
    }
    #[getter]
    fn guard(&self) -> bool {
        self.core.config().guard
    }
    #[getter]
    fn index(&self) -> &'static str {
        self.core.config().index.as_str()
    }
    #[getter]
    fn embedder_identity(&self) -> &str {
        self.core.identity()
    }

    #[pyo3(signature = (prompt, *, partition=None, embedding=None))]
    fn get(
        &self,
        py: Python<'_>,
        prompt: &str,
        partition: Option<&Bound<'_, PyAny>>,
        embedding: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<CacheHit>>> {
        config::check_prompt(prompt).map_err(cache_error)?;
        let q = Query {
            prompt: prompt.to_owned(),
            partition: partition_text(partition)?,
            vector: self.query_vector(embedding)?,
        };
        match self.lookup_many(py, vec![q])?.pop() {
            Some((r, _)) => r,
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
                config::check_prompt(&prompt).map_err(cache_error)?;
                Ok(Query {
                    partition: partition_text(Some(&partition))?,
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
                    None => results.next().map_or(Ok(None), |(r, _)| r),
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
        let ttl = self.core.config().entry_ttl(ttl).map_err(cache_error)?;
        let partition = partition_text(partition)?;
        let mut item = self.item(prompt, response, partition, metadata, tag_list(tags)?, ttl)?;
        item.vector = match self.query_vector(embedding)? {
            Some(v) => v,
            None => self.embed_many(py, &[prompt])?.pop().unwrap_or_default(),
        };
        self.insert(py, vec![item]).map(|_| ())
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
        let ttl = self.core.config().entry_ttl(ttl).map_err(cache_error)?;
        let partition = partition_text(partition)?;
        let tags = tag_list(tags)?;
        let iter = match pairs.cast::<PyDict>() {
            Ok(d) => d.items().into_any().try_iter()?,
            Err(_) => pairs.try_iter()?,
        };
        let mut items = Vec::new();
        for item in iter {
            let item = item?;
            let (prompt, response): (String, Bound<'_, PyAny>) = item.extract().map_err(|_| {
                type_error(format!(
                    "warm takes (prompt, response) pairs or a dict, got an item of type {}",
                    type_name(&item)
                ))
            })?;
            items.push(self.item(
                &prompt,
                &response,
                partition.clone(),
                None,
                tags.clone(),
                ttl,
            )?);
        }
        let vectors = match embeddings {
            Some(e) if !e.is_none() => {
                read_matrix(e, items.len(), self.core.config().dim, "embeddings")?
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| self.normalized(v, &format!("embeddings[{i}]")))
                    .collect::<PyResult<Vec<_>>>()?
            }
            _ => {
                let mut out = Vec::with_capacity(items.len());
                for chunk in items.chunks(WARM_BATCH) {
                    let prompts: Vec<&str> = chunk.iter().map(|e| e.prompt.as_str()).collect();
                    out.extend(self.embed_many(py, &prompts)?);
                }
                out
            }
        };
        for (item, v) in items.iter_mut().zip(vectors) {
            item.vector = v;
        }
        self.insert(py, items)
    }

    #[pyo3(signature = (prompt, *, partition=None))]
    fn invalidate(
        &self,
        py: Python<'_>,
        prompt: &str,
        partition: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let partition = partition_text(partition)?;
        Ok(py.detach(|| {
            let removed = self.core.invalidate(prompt, &partition);
            if let Some(s) = &self.shared {
                s.publish_invalidate(prompt, &partition);
            }
            removed
        }))
    }

    #[pyo3(signature = (partition))]
    fn invalidate_partition(
        &self,
        py: Python<'_>,
        partition: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let partition = partition_text(Some(partition))?;
        Ok(py.detach(|| {
            let n = self.core.invalidate_partition(&partition);
            if let Some(s) = &self.shared {
                s.publish_invalidate_partition(&partition);
            }
            n
        }))
    }

    fn invalidate_tag(&self, py: Python<'_>, tag: &str) -> usize {
        py.detach(|| {
            let n = self.core.invalidate_tag(tag);
            if let Some(s) = &self.shared {
                s.publish_invalidate_tag(tag);
            }
            n
        })
    }

    fn clear(&self, py: Python<'_>) {
        py.detach(|| {
            self.core.clear();
            if let Some(s) = &self.shared {
                s.publish_clear();
            }
        })
    }

    /// The namespace this cache shares through `store=`, or None.
    #[getter]
    fn namespace(&self) -> Option<&str> {
        self.shared.as_ref().map(Replica::namespace)
    }

    /// Waits (GIL released) until the changes queued for Redis were written
    /// (or dropped), at most `timeout` seconds; whether the queue drained.
    /// True at once for a cache without a store.
    #[pyo3(signature = (timeout=5.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(value_error(format!(
                "timeout must be a finite number of seconds >= 0, got {timeout}"
            )));
        }
        Ok(match &self.shared {
            Some(s) => py.detach(|| s.flush(Duration::from_secs_f64(timeout))),
            None => true,
        })
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        py.detach(|| self.core.len())
    }

    /// The key single-flight coordination uses: scoped partition and
    /// normalised prompt.
    #[pyo3(signature = (prompt, *, partition=None))]
    fn flight_key(&self, prompt: &str, partition: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
        let partition = partition_text(partition)?;
        self.core
            .flight_key(prompt, &partition)
            .map_err(cache_error)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = py.detach(|| self.core.stats());
        let s = &st.counters;
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
        d.set_item("entries", st.entries)?;
        d.set_item("partitions", st.partitions)?;
        d.set_item("memory_bytes", st.memory_bytes)?;
        d.set_item("max_memory_bytes", st.max_memory_bytes)?;
        d.set_item("index_slack_bytes", st.index_slack_bytes)?;
        let idx = PyDict::new(py);
        idx.set_item("flat", st.flat_indexes)?;
        idx.set_item("hnsw", st.hnsw_indexes)?;
        d.set_item("indexes", idx)?;
        d.set_item("index_builds", st.index_builds)?;
        d.set_item("lookup_p50_us", s.latency_quantile(0.5))?;
        d.set_item("error_bound", error_bound_stats(py, &st)?)?;
        d.set_item("lookup_p99_us", s.latency_quantile(0.99))?;
        if let Some(shared) = &self.shared {
            let x = shared.stats();
            let sh = PyDict::new(py);
            sh.set_item("namespace", x.namespace)?;
            sh.set_item("connected", x.connected)?;
            sh.set_item("loaded", x.loaded)?;
            sh.set_item("loaded_entries", x.loaded_entries)?;
            sh.set_item("received", x.received)?;
            sh.set_item("sent", x.sent)?;
            sh.set_item("refused", x.refused)?;
            sh.set_item("dropped", x.dropped)?;
            sh.set_item("invalid", x.invalid)?;
            sh.set_item("resyncs", x.resyncs)?;
            sh.set_item("remote_hits", x.remote_hits)?;
            sh.set_item("errors", x.errors)?;
            sh.set_item("queue_depth", x.queue_depth)?;
            sh.set_item("lag_p50_ms", x.lag_p50_ms)?;
            sh.set_item("lag_p99_ms", x.lag_p99_ms)?;
            sh.set_item("last_error", x.last_error)?;
            d.set_item("shared", sh)?;
        }
        Ok(d)
    }

    fn reset_stats(&self, py: Python<'_>) {
        py.detach(|| self.core.reset_stats())
    }

    /// Write a snapshot atomically (temporary file, fsync, rename).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<usize> {
        let now = self.now(py)?;
        py.detach(|| self.core.save(&path, now))
            .map_err(|e| snapshot_error(py, e, &path.display().to_string()))
    }

    /// Replace the contents with a snapshot's (all or nothing); the number
    /// of entries restored.
    fn load_snapshot(&self, py: Python<'_>, path: PathBuf) -> PyResult<usize> {
        let now = self.now(py)?;
        py.detach(|| self.core.load_snapshot(&path, now))
            .map_err(|e| snapshot_error(py, e, &path.display().to_string()))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let (n, mem) = py.detach(|| (self.core.len(), self.core.memory_bytes()));
        let c = self.core.config();
        let ttl = self.ttl().map_or("None".into(), |t| t.to_string());
        let shared = match &self.shared {
            Some(s) => format!(", namespace={:?}", s.namespace()),
            None => String::new(),
        };
        let bound = match c.max_error_rate {
            Some(e) => format!(", max_error_rate={e}"),
            None => String::new(),
        };
        format!(
            "SemanticCache(embedder={:?}, dim={}, threshold={}, ttl={ttl}, max_entries={}, \
             max_memory_mb={}, guard={}, index={:?}{bound}{shared}, entries={n}, \
             memory_bytes={mem})",
            self.core.identity(),
            c.dim,
            c.threshold,
            c.max_entries,
            c.max_memory_mb,
            if c.guard { "True" } else { "False" },
            c.index.as_str(),
        )
    }
}

/// The `error_bound` part of `stats()`: None without a bound.
fn error_bound_stats<'py>(
    py: Python<'py>,
    st: &crate::cache::stats::CacheStats,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(eps) = st.max_error_rate else {
        return Ok(None);
    };
    let l = &st.counters.learn;
    let d = PyDict::new(py);
    d.set_item("max_error_rate", eps)?;
    d.set_item("refused", l.refused)?;
    d.set_item("verified", l.verified)?;
    d.set_item("verified_wrong", l.verified_wrong)?;
    let served = st.counters.semantic_hits;
    d.set_item(
        "verification_rate",
        if served == 0 {
            0.0
        } else {
            l.verified as f64 / served as f64
        },
    )?;
    // verified hits are a random sample of the served ones: their error
    // rate estimates the rate of wrong answers served
    d.set_item(
        "observed_error_rate",
        (l.verified > 0).then(|| l.verified_wrong as f64 / l.verified as f64),
    )?;
    d.set_item("observed_error_ci", wilson(l.verified_wrong, l.verified))?;
    d.set_item("probed", l.probed)?;
    d.set_item("probed_wrong", l.probed_wrong)?;
    d.set_item("feedback", l.feedback)?;
    d.set_item("feedback_wrong", l.feedback_wrong)?;
    d.set_item("observations", st.observations)?;
    let mut learned: Vec<f32> = st.partition_thresholds.iter().flatten().copied().collect();
    learned.sort_by(f32::total_cmp);
    let t = PyDict::new(py);
    t.set_item("partitions", st.partition_thresholds.len())?;
    t.set_item("learned", learned.len())?;
    let q = |p: f64| -> Option<f64> {
        (!learned.is_empty())
            .then(|| f64::from(learned[((learned.len() - 1) as f64 * p).round() as usize]))
    };
    t.set_item("min", q(0.0))?;
    t.set_item("p50", q(0.5))?;
    t.set_item("max", q(1.0))?;
    t.set_item("entries_with_own", st.entry_thresholds)?;
    d.set_item("thresholds", t)?;
    Ok(Some(d))
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
    let v = to_json(dict.as_any(), "partition_key argument")?;
    Ok(canonical_key(&v))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SemanticCache>()?;
    m.add_class::<CacheHit>()?;
    m.add_function(wrap_pyfunction!(partition_key, m)?)?;
    Ok(())
}
