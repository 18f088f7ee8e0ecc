//! The semantic cache: one object that owns the store behind its lock and
//! the whole flow of a lookup, an insert, invalidation, snapshots and
//! statistics. The Python class (`py::semantic_cache`) converts arguments
//! and results around it.
//!
//! A lookup has two phases so that an embedder the caller runs (a Python
//! model) never runs under the lock: [`Cache::lookup_exact`] serves what the
//! exact tier can and says which prompts still need a vector; the caller
//! computes those and hands them to [`Cache::lookup_semantic`].

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::config::{check_prompt, normalized, CacheConfig, CacheError};
use super::guard::{Analysis, GuardReason};
use super::learn::{EntryLearning, Source};
use super::partition::{normalize_prompt, prompt_hash, scoped_key, unscoped};
use super::rebuild::{Bulk, SharedStore};
use super::snapshot::{self, SnapshotError};
use super::stats::CacheStats;
use super::store::{
    choose, Candidate, Found, GuardFn, HitToken, Judgement, NewEntry, Store, StoreError,
};

/// One lookup: its prompt, its partition (canonical key, see
/// `partition::canonical_key`) and, if the caller has one, its vector
/// (normalised by [`CacheConfig::normalized`]).
pub struct Query {
    pub prompt: String,
    pub partition: String,
    pub vector: Option<Vec<f32>>,
}

/// One entry to insert.
#[derive(Clone)]
pub struct NewItem {
    pub prompt: String,
    /// Canonical partition key.
    pub partition: String,
    pub response: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
    pub tags: Vec<String>,
    /// Seconds to live (`CacheConfig::entry_ttl`).
    pub ttl: f64,
    /// Normalised by [`CacheConfig::normalized`].
    pub vector: Vec<f32>,
    /// What the entry learned elsewhere (error-bounded mode).
    pub learning: EntryLearning,
}

/// Caches made in this process, so that a hit names the cache it came from.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct Cache {
    cfg: CacheConfig,
    /// Unique in the process: a hit of another cache is refused by
    /// [`Cache::observe`]'s caller.
    instance: u64,
    /// The embedder's identity: part of every partition key, so vectors of
    /// different embedders never meet, and checked by snapshots.
    identity: String,
    store: SharedStore,
}

/// A batch of lookups after the exact tier.
pub struct ExactPhase {
    /// Partitions scoped by the embedder identity.
    queries: Vec<Query>,
    found: Vec<Option<Found>>,
    /// Microseconds each lookup has spent so far.
    micros: Vec<f64>,
    /// Lookups the semantic tier still has to answer.
    pending: Vec<usize>,
    now: f64,
}

impl ExactPhase {
    /// The prompts whose vectors the caller computes for the semantic
    /// phase: the pending lookups that came without one, in order.
    pub fn to_embed(&self) -> Vec<&str> {
        self.pending
            .iter()
            .map(|&i| &self.queries[i])
            .filter(|q| q.vector.is_none())
            .map(|q| q.prompt.as_str())
            .collect()
    }

    /// Indices of the lookups the semantic phase answers.
    pub fn pending(&self) -> &[usize] {
        &self.pending
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Results without a semantic phase (it had nothing to do, or the
    /// caller could not compute the vectors): exact hits, None elsewhere.
    pub fn into_found(self) -> Vec<Option<Found>> {
        self.found
    }
}

impl Cache {
    pub fn new(cfg: CacheConfig, identity: impl Into<String>) -> Result<Cache, CacheError> {
        cfg.validate()?;
        Ok(Cache {
            store: SharedStore::new(Store::new(cfg.store())),
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cfg,
            identity: identity.into(),
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn instance(&self) -> u64 {
        self.instance
    }

    pub fn len(&self) -> usize {
        self.store.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn memory_bytes(&self) -> usize {
        self.store.lock().memory_bytes()
    }

    fn scoped(&self, partition: &str) -> String {
        scoped_key(&self.identity, partition)
    }

    /// The exact tier for every query of a batch (one lock). A query it
    /// answers, and every query when the threshold admits exact hits only,
    /// is counted now; the rest wait for [`Cache::lookup_semantic`].
    pub fn lookup_exact(&self, mut queries: Vec<Query>, now: f64) -> ExactPhase {
        for q in &mut queries {
            q.partition = self.scoped(&q.partition);
        }
        let exact_only = self.cfg.exact_only();
        let mut found = Vec::with_capacity(queries.len());
        let mut micros = Vec::with_capacity(queries.len());
        let mut pending = Vec::new();
        // normalised before the lock: the time is the prompt's length
        let keys: Vec<(String, u64)> = queries
            .iter()
            .map(|q| {
                let n = normalize_prompt(&q.prompt);
                let h = prompt_hash(&n);
                (n, h)
            })
            .collect();
        let mut store = self.store.lock();
        for (i, (q, (normalized, hash))) in queries.iter().zip(&keys).enumerate() {
            let t = Instant::now();
            let f = store.lookup_normalized(&q.partition, normalized, *hash, now);
            if f.is_some() {
                store.stats.exact_hits += 1;
            } else if exact_only {
                store.stats.misses += 1;
            } else {
                pending.push(i);
            }
            let us = t.elapsed().as_secs_f64() * 1e6;
            if f.is_some() || exact_only {
                store.stats.record_latency(us);
            }
            found.push(f);
            micros.push(us);
        }
        drop(store);
        ExactPhase {
            queries,
            found,
            micros,
            pending,
            now,
        }
    }

    /// The semantic tier for the lookups `phase` left pending; `computed`
    /// holds the vectors of `phase.to_embed()`, in that order, normalised.
    /// Each query is analysed for the guard at most once, however many
    /// candidates it meets, and the guard runs with the lock released.
    pub fn lookup_semantic(
        &self,
        phase: ExactPhase,
        computed: Vec<Vec<f32>>,
    ) -> Vec<Option<Found>> {
        self.lookup_semantic_probed(phase, computed).0
    }

    /// [`Cache::lookup_semantic`], and for each lookup the candidate the
    /// error-bounded mode refused, if any (its miss's fresh answer can be
    /// compared with it: [`Cache::observe`] with [`Source::Probe`]).
    pub fn lookup_semantic_probed(
        &self,
        phase: ExactPhase,
        computed: Vec<Vec<f32>>,
    ) -> (Vec<Option<Found>>, Vec<Option<Found>>) {
        let ExactPhase {
            queries,
            mut found,
            mut micros,
            pending,
            now,
        } = phase;
        let mut computed = computed.into_iter();
        let vectors: Vec<Vec<f32>> = pending
            .iter()
            .map(|&i| match &queries[i].vector {
                Some(v) => v.clone(),
                None => computed.next().unwrap_or_default(),
            })
            .collect();
        let threshold = self.cfg.threshold as f32;
        let mut store = self.store.lock();
        let candidates: Vec<Vec<Candidate>> = pending
            .iter()
            .zip(&vectors)
            .map(|(&i, v)| {
                let t = Instant::now();
                let c = store.semantic_candidates(&queries[i].partition, v, threshold, now);
                micros[i] += t.elapsed().as_secs_f64() * 1e6;
                c
            })
            .collect();
        drop(store);
        // the guard reads prompts of any length: outside the lock, so that a
        // long prompt delays its own lookup only
        let chosen: Vec<(Option<Candidate>, Vec<GuardReason>)> = pending
            .iter()
            .zip(candidates)
            .map(|(&i, c)| {
                let t = Instant::now();
                let q = &queries[i];
                let mut analysed: Option<Analysis> = None;
                // the lookup's cosine vouches (or not) for a near-synonym swap
                let mut guard = |candidate: &str, similarity: f32| -> Option<GuardReason> {
                    analysed
                        .get_or_insert_with(|| Analysis::new(&q.prompt))
                        .check_with_similarity(candidate, Some(similarity))
                };
                let guard: Option<&mut GuardFn<'_>> = if self.cfg.guard {
                    Some(&mut guard)
                } else {
                    None
                };
                let r = choose(c, guard);
                micros[i] += t.elapsed().as_secs_f64() * 1e6;
                r
            })
            .collect();
        let mut store = self.store.lock();
        let mut answers = Vec::with_capacity(pending.len());
        for (&i, (c, rejected)) in pending.iter().zip(chosen) {
            let t = Instant::now();
            for r in rejected {
                *store.stats.guard_rejections.entry(r.as_str()).or_insert(0) += 1;
            }
            let judged = c.map(|c| {
                let j = store.judge(&c);
                (c, j)
            });
            match &judged {
                Some((c, Judgement::Serve { .. })) => {
                    store.accept(c);
                    store.stats.semantic_hits += 1;
                }
                _ => store.stats.misses += 1,
            }
            micros[i] += t.elapsed().as_secs_f64() * 1e6;
            store.stats.record_latency(micros[i]);
            answers.push((i, judged));
        }
        drop(store);
        let mut probes: Vec<Option<Found>> = found.iter().map(|_| None).collect();
        for (i, judged) in answers {
            match judged {
                Some((c, Judgement::Serve { verify })) => {
                    found[i] = Some(c.into_found(now, verify))
                }
                Some((c, Judgement::Refuse)) => probes[i] = Some(c.into_found(now, false)),
                None => {}
            }
        }
        (found, probes)
    }

    /// Records whether the answer of a semantic hit (or of a refused
    /// candidate) was right; false when its entry is no longer cached.
    pub fn observe(&self, token: &HitToken, correct: bool, source: Source) -> bool {
        self.store.lock().observe(token, correct, source)
    }

    /// The entry of `token` as an item for another process (its partition
    /// unscoped), with what it learned.
    pub fn entry_for_replica(&self, token: &HitToken, now: f64) -> Option<NewItem> {
        let e = self.store.lock().entry_for_replica(token, now)?;
        Some(NewItem {
            partition: unscoped(&e.partition).to_owned(),
            prompt: e.prompt,
            response: e.response.to_vec(),
            metadata: e.metadata.map(|m| m.to_vec()),
            tags: e.tags,
            ttl: e.ttl,
            vector: e.vector,
            learning: e.learning,
        })
    }

    /// Inserts every item or none: each is checked against the store's
    /// dimension and memory bound before the first is inserted. The number
    /// inserted. A single item waits (the lock released) while its
    /// partition's graph build has fallen behind; many items (a bulk load)
    /// let waiting threads in between any two and return once the graphs
    /// of the partitions they filled are built.
    pub fn insert(&self, items: Vec<NewItem>, now: f64) -> Result<usize, CacheError> {
        let n = items.len();
        let entries = self.entries(items);
        // Declared before the lock: on an early return it ends after it.
        let bulk = (n > 1).then(|| self.store.bulk());
        let mut store = self.store.lock();
        for e in &entries {
            if e.vector.len() != self.cfg.dim {
                return Err(StoreError::Dimension {
                    got: e.vector.len(),
                    expected: self.cfg.dim,
                }
                .into());
            }
            let bytes = store.required_bytes(e);
            let limit = store.config().max_memory_bytes;
            if bytes > limit {
                return Err(StoreError::TooLarge { bytes, limit }.into());
            }
        }
        let mut filled: Vec<String> = Vec::new();
        for (k, e) in entries.into_iter().enumerate() {
            if n == 1 {
                while store.must_wait(&e.partition) {
                    store.wait();
                }
            } else {
                if k > 0 {
                    store.bump();
                }
                if !filled.contains(&e.partition) {
                    filled.push(e.partition.clone());
                }
            }
            store.insert(e, now)?;
        }
        if let Some(b) = bulk {
            b.end(&mut store);
        }
        while filled.iter().any(|p| store.is_building(p)) {
            store.wait();
        }
        Ok(n)
    }

    /// Marks a bulk load of many `load` calls: until the guard is dropped,
    /// graph builds go on absorbing inserts rather than finishing (see
    /// `Store::begin_bulk`).
    pub fn bulk(&self) -> Bulk<'_> {
        self.store.bulk()
    }

    /// Inserts entries loaded from elsewhere (a shared namespace), in
    /// order: an entry this cache refuses (too large for its memory bound,
    /// wrong dimension) is skipped, not the batch. Waiting threads get the
    /// lock between any two entries, and it returns without waiting for
    /// graph builds: until a partition's graph is in place its exact scan
    /// answers. The number inserted.
    pub fn load(&self, items: Vec<NewItem>, now: f64) -> usize {
        let entries = self.entries(items);
        let mut store = self.store.lock();
        let mut n = 0;
        for (k, e) in entries.into_iter().enumerate() {
            if k > 0 {
                store.bump();
            }
            n += usize::from(store.insert(e, now).is_ok());
        }
        n
    }

    fn entries(&self, items: Vec<NewItem>) -> Vec<NewEntry> {
        items
            .into_iter()
            .map(|i| NewEntry {
                partition: self.scoped(&i.partition),
                prompt: i.prompt,
                vector: i.vector,
                response: Arc::from(i.response),
                metadata: i.metadata.map(Arc::from),
                tags: i.tags,
                ttl: i.ttl,
                age: 0.0,
                learning: i.learning,
            })
            .collect()
    }

    /// Removes the entry of `prompt` (compared as the exact tier does).
    pub fn invalidate(&self, prompt: &str, partition: &str) -> bool {
        let key = self.scoped(partition);
        self.store.lock().invalidate(&key, prompt)
    }

    pub fn invalidate_partition(&self, partition: &str) -> usize {
        let key = self.scoped(partition);
        self.store.lock().invalidate_partition(&key)
    }

    pub fn invalidate_tag(&self, tag: &str) -> usize {
        self.store.lock().invalidate_tag(tag)
    }

    /// Removes every entry; the statistics stay.
    pub fn clear(&self) {
        self.store.lock().clear()
    }

    /// The key under which concurrent misses of one prompt wait for a
    /// single computation: scoped partition and normalised prompt.
    pub fn flight_key(&self, prompt: &str, partition: &str) -> Result<String, CacheError> {
        check_prompt(prompt)?;
        Ok(format!(
            "{}\u{0}{}",
            self.scoped(partition),
            normalize_prompt(prompt)
        ))
    }

    pub fn stats(&self) -> CacheStats {
        let mut store = self.store.lock();
        let (partition_thresholds, entry_thresholds) = store.learned_thresholds();
        let observations = store.partition_learning().map(|(_, p)| p.len()).sum();
        let kinds = store.index_kinds();
        let count = |kind: &str| kinds.iter().filter(|k| k.1 == kind).count();
        CacheStats {
            counters: store.stats.clone(),
            entries: store.len(),
            partitions: store.partition_count(),
            memory_bytes: store.memory_bytes(),
            max_memory_bytes: self.cfg.max_memory_bytes(),
            index_slack_bytes: store.index_slack_bytes(),
            flat_indexes: count("flat"),
            hnsw_indexes: count("hnsw"),
            index_builds: store.builds_running(),
            max_error_rate: self.cfg.max_error_rate,
            partition_thresholds,
            entry_thresholds,
            observations,
        }
    }

    /// Entries evicted to stay within the bounds since creation (or the
    /// last statistics reset).
    pub fn evictions(&self) -> u64 {
        self.store.lock().stats.evictions
    }

    /// A lookup counted as a miss was answered after all (by the shared
    /// tier): count it as an exact hit.
    pub fn count_remote_hit(&self) {
        let mut store = self.store.lock();
        store.stats.misses = store.stats.misses.saturating_sub(1);
        store.stats.exact_hits += 1;
    }

    pub fn reset_stats(&self) {
        self.store.lock().stats.reset()
    }

    /// Writes a snapshot of the live entries to `path` atomically; the
    /// number written. The lock is held while encoding, not while writing.
    pub fn save(&self, path: &Path, now: f64) -> Result<usize, SnapshotError> {
        let mut w = snapshot::Writer::new(&self.identity, self.cfg.dim);
        let mut n = 0;
        let store = self.store.lock();
        store.for_each_oldest_first(now, |e| {
            w.entry(&snapshot::SnapEntry {
                partition: unscoped(e.partition).to_owned(),
                prompt: e.prompt.to_owned(),
                response: e.response.to_vec(),
                metadata: e.metadata.map(<[u8]>::to_vec),
                tags: e.tags.iter().map(|t| t.to_string()).collect(),
                age: e.age,
                remaining: e.remaining,
                vector: e.vector,
                learning: e.learning.cloned().unwrap_or_default(),
            });
            n += 1;
        });
        // only this embedder's partitions: the identity is checked on load
        let prefix = self.scoped("");
        for (key, learned) in store.partition_learning() {
            if let Some(partition) = key.strip_prefix(prefix.as_str()) {
                w.partition(partition, learned);
            }
        }
        drop(store);
        snapshot::write_atomic(path, &w.finish())?;
        Ok(n)
    }

    /// Replaces the contents with the snapshot at `path`, all or nothing
    /// (statistics reset); the number of entries restored. Entries larger
    /// than this cache's memory bound are skipped.
    pub fn load_snapshot(&self, path: &Path, now: f64) -> Result<usize, SnapshotError> {
        let data = snapshot::read_file(path)?;
        let snap = snapshot::decode(&data, &self.identity, self.cfg.dim)?;
        let mut fresh = Store::new(self.cfg.store());
        for e in snap.entries {
            let vector =
                normalized(e.vector, self.cfg.dim, "").map_err(|_| SnapshotError::Corrupted)?;
            let entry = NewEntry {
                partition: self.scoped(&e.partition),
                prompt: e.prompt,
                vector,
                response: Arc::from(e.response),
                metadata: e.metadata.map(Arc::from),
                tags: e.tags,
                ttl: e.age + e.remaining,
                age: e.age,
                learning: e.learning,
            };
            let _ = fresh.insert(entry, now);
        }
        // the saved pools hold more than the entries' own observations
        // (those of entries evicted since): they replace what inserting fed
        if snap.version >= 2 {
            fresh.set_partition_learning(
                snap.partitions
                    .into_iter()
                    .map(|(k, v)| (self.scoped(&k), v))
                    .collect(),
            );
        }
        fresh.stats.reset();
        let n = fresh.len();
        *self.store.lock() = fresh;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
