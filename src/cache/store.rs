//! The in-process cache tier: entries, partitions with their own exact map and
//! vector index, LRU order, TTL expiry, memory accounting and statistics.
//!
//! Single-threaded: `semantic::Cache` holds it behind its lock and drives it.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use super::guard::GuardReason;
use super::index::AUTO_FLAT_MAX;
use super::index::{HnswIndex, HnswParams, Index, IndexKind, VectorIndex};
use super::learn::{decide, Decision, EntryLearning, Observation, PartitionLearning, Rng, Source};
use super::partition::{normalize_prompt, prompt_hash};
use super::stats::Stats;

const NIL: u32 = u32::MAX;

/// The guard of one lookup: `Some(reason)` rejects a candidate, given its
/// prompt and its similarity to the query.
pub type GuardFn<'a> = dyn FnMut(&str, f32) -> Option<GuardReason> + 'a;
/// Semantic candidates above the threshold tried, best first, before a
/// lookup whose candidates the guard rejected is declared a miss.
pub const SEMANTIC_CANDIDATES: usize = 4;
/// Bookkeeping bytes of one partition besides its entries.
const PARTITION_OVERHEAD: usize = 256;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub dim: usize,
    pub max_entries: usize,
    pub max_memory_bytes: usize,
    pub index: IndexKind,
    pub hnsw: HnswParams,
    /// See `CacheConfig::max_error_rate`.
    pub max_error_rate: Option<f64>,
    pub seed: Option<u64>,
}

/// An entry to insert. `vector` must be L2-normalised and `dim` long.
pub struct NewEntry {
    /// Scoped partition key (embedder identity included).
    pub partition: String,
    pub prompt: String,
    pub vector: Vec<f32>,
    pub response: Arc<[u8]>,
    pub metadata: Option<Arc<[u8]>>,
    pub tags: Vec<String>,
    /// Seconds to live; `f64::INFINITY` never expires.
    pub ttl: f64,
    /// Seconds the entry has already lived (restored snapshots).
    pub age: f64,
    /// What the entry learned elsewhere (a snapshot, another process).
    pub learning: EntryLearning,
}

/// Which entry a semantic hit came from and at what similarity: what
/// feedback and verification report on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HitToken {
    slot: u32,
    seq: u64,
    pub similarity: f32,
}

/// A semantic candidate of a lookup: what the guard reads and the answer,
/// shared with the entry (no copy), and which entry it is.
pub struct Candidate {
    slot: u32,
    seq: u64,
    pub prompt: Arc<str>,
    response: Arc<[u8]>,
    metadata: Option<Arc<[u8]>>,
    score: f32,
    created: f64,
}

impl Candidate {
    /// The answer (copies the prompt: outside the lock); `verify`: whether
    /// the error-bounded mode drew it for verification.
    pub fn into_found(self, now: f64, verify: bool) -> Found {
        Found {
            token: Some(HitToken {
                slot: self.slot,
                seq: self.seq,
                similarity: self.score,
            }),
            verify,
            response: self.response,
            metadata: self.metadata,
            prompt: self.prompt.to_string(),
            score: self.score.clamp(-1.0, 1.0),
            age: (now - self.created).max(0.0),
            exact: false,
        }
    }
}

/// What the error-bounded mode makes of a candidate the guard accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Judgement {
    /// Served; whether it is also verified.
    Serve { verify: bool },
    /// Not served (a miss); the candidate is still worth comparing with the
    /// fresh answer the miss will compute.
    Refuse,
}

/// The first candidate (best first) that `guard` accepts, and the reasons
/// of those it rejected before it.
pub fn choose(
    candidates: Vec<Candidate>,
    mut guard: Option<&mut GuardFn<'_>>,
) -> (Option<Candidate>, Vec<GuardReason>) {
    let mut rejected = Vec::new();
    for c in candidates {
        if let Some(check) = guard.as_mut() {
            if let Some(reason) = check(&c.prompt, c.score.clamp(-1.0, 1.0)) {
                rejected.push(reason);
                continue;
            }
        }
        return (Some(c), rejected);
    }
    (None, rejected)
}

/// What a lookup found.
#[derive(Clone, Debug)]
pub struct Found {
    /// The entry a semantic hit came from (None for exact hits).
    pub token: Option<HitToken>,
    /// Whether the caller should verify this hit (error-bounded mode).
    pub verify: bool,
    pub response: Arc<[u8]>,
    pub metadata: Option<Arc<[u8]>>,
    pub prompt: String,
    pub score: f32,
    pub age: f64,
    pub exact: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StoreError {
    /// One entry alone is larger than the memory bound.
    TooLarge { bytes: usize, limit: usize },
    /// The vector's length is not the store's dimension.
    Dimension { got: usize, expected: usize },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::TooLarge { bytes, limit } => write!(
                f,
                "entry needs {bytes} bytes, more than max_memory_mb allows ({limit} bytes)"
            ),
            StoreError::Dimension { got, expected } => {
                write!(f, "embedding has dimension {got}, expected {expected}")
            }
        }
    }
}

/// One view of an entry, for snapshots (oldest first in LRU order).
pub struct EntryView<'a> {
    pub partition: &'a str,
    pub prompt: &'a str,
    pub vector: Vec<f32>,
    pub response: &'a [u8],
    pub metadata: Option<&'a [u8]>,
    pub tags: &'a [Box<str>],
    pub age: f64,
    pub remaining: f64,
    pub learning: Option<&'a EntryLearning>,
}

struct Entry {
    partition: u32,
    hash: u64,
    seq: u64,
    /// Shared with the candidates a lookup checks outside the lock.
    prompt: Arc<str>,
    response: Arc<[u8]>,
    metadata: Option<Arc<[u8]>>,
    tags: Box<[Box<str>]>,
    created: f64,
    expires: f64,
    prev: u32,
    next: u32,
    bytes: usize,
    /// Allocated at the first observation.
    learning: Option<Box<EntryLearning>>,
}

struct Partition {
    key: Box<str>,
    exact: HashMap<u64, u32>,
    index: Index,
    /// The graph being built for this partition off the lock, if any.
    build: Option<Build>,
    /// Bytes the index holds beyond what its entries are accounted for.
    extra: usize,
}

/// A partition's graph in the making (see `cache::rebuild`): `index` keeps
/// answering and changing; every change since the build started is in
/// `journal` for the builder to replay.
struct Build {
    epoch: u64,
    /// Ids added (or given a new vector: true) or removed (false), in order.
    journal: Vec<(u32, bool)>,
    /// Journals the builder has taken so far.
    replays: u32,
}

/// Journal length up to which the builder finishes under the lock: the
/// last few entries go into the graph, which then replaces the index.
pub const FINISH_AT: usize = 4;
/// Journal length at which a single insert waits for the builder (bulk
/// inserts never wait); from the builder's third replay on, [`FINISH_AT`],
/// so that a steady stream of inserts cannot keep the build from finishing.
const JOURNAL_MAX: usize = 2048;

/// Build epochs, unique in the process (a partition slot and a store are
/// reused; an epoch is not).
static EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A build to run: the store's partition `pid` gets a graph of `dim`-dim
/// vectors with `params`; `epoch` tells whether the build still stands.
#[derive(Clone)]
pub struct BuildTicket {
    pub pid: u32,
    pub epoch: u64,
    pub dim: usize,
    pub params: HnswParams,
}

/// What the builder does next.
pub enum BuildStep {
    /// The partition is gone or no longer wants this graph.
    Cancelled,
    /// The graph replaced the partition's index.
    Done,
    /// Ids to replay off the lock: removed ones (false) and those whose
    /// vectors to fetch with [`Store::build_vectors`] and add (true); each
    /// id once, with its last change.
    Replay(Vec<(u32, bool)>),
}

#[derive(Clone, Copy, PartialEq)]
struct Deadline(f64);
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

pub struct Store {
    cfg: StoreConfig,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    seq: u64,
    /// Most recently used.
    head: u32,
    /// Least recently used: evicted first.
    tail: u32,
    len: usize,
    partitions: Vec<Option<Partition>>,
    partition_free: Vec<u32>,
    partition_ids: HashMap<Box<str>, u32>,
    tags: HashMap<Box<str>, HashSet<u32>>,
    expiry: BinaryHeap<Reverse<(Deadline, u32, u64)>>,
    live_bytes: usize,
    /// Sum of the partitions' `extra`: slots of removed entries awaiting
    /// reuse, reserved capacity and each index's fixed part (the visited
    /// sets of the graph walks), so that the memory bound covers them.
    index_extra: usize,
    /// Builds started and not yet handed to a thread.
    tickets: Vec<BuildTicket>,
    /// Bulk inserts running (`begin_bulk`): builds do not finish meanwhile.
    bulk: usize,
    /// What each partition (scoped key) learned; kept when the partition
    /// empties, so that a cache does not forget its domain.
    learning: HashMap<Box<str>, PartitionLearning>,
    rng: Rng,
    pub stats: Stats,
}

impl Store {
    pub fn new(cfg: StoreConfig) -> Self {
        Store {
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            head: NIL,
            tail: NIL,
            len: 0,
            partitions: Vec::new(),
            partition_free: Vec::new(),
            partition_ids: HashMap::new(),
            tags: HashMap::new(),
            expiry: BinaryHeap::new(),
            live_bytes: 0,
            index_extra: 0,
            tickets: Vec::new(),
            bulk: 0,
            learning: HashMap::new(),
            rng: Rng::new(cfg.seed.unwrap_or_else(clock_seed)),
            stats: Stats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn partition_count(&self) -> usize {
        self.partition_ids.len()
    }

    /// Heap bytes held by indexes beyond their live entries (HNSW slots of
    /// removed entries awaiting reuse or compaction).
    pub fn index_slack_bytes(&self) -> usize {
        self.partitions
            .iter()
            .flatten()
            .map(|p| match &p.index {
                Index::Hnsw(h) => h.slack_bytes(),
                Index::Flat(_) => 0,
            })
            .sum()
    }

    /// Vector and link bytes one entry costs in the largest index kind.
    fn index_bytes_per_entry(&self) -> usize {
        let flat = self.cfg.dim * 4 + 16;
        let hnsw = self.cfg.hnsw.bytes_per_entry(self.cfg.dim);
        flat.max(hnsw)
    }

    /// The bytes `entry` will be accounted for.
    pub fn entry_bytes(
        &self,
        prompt: &str,
        response: usize,
        metadata: usize,
        tags: &[String],
    ) -> usize {
        std::mem::size_of::<Option<Entry>>()
            + prompt.len()
            + response
            + 16
            + if metadata > 0 { metadata + 16 } else { 0 }
            + tags.iter().map(|t| t.len() + 16 + 48).sum::<usize>()
            + 24 // exact map slot
            + 32 // expiry heap item
            + self.index_bytes_per_entry()
    }

    /// The most memory inserting `entry` can need: the entry itself and,
    /// if its partition is new, the partition's bookkeeping. An entry above
    /// `max_memory_bytes` is refused.
    pub fn required_bytes(&self, entry: &NewEntry) -> usize {
        self.entry_bytes(
            &entry.prompt,
            entry.response.len(),
            entry.metadata.as_ref().map_or(0, |m| m.len()),
            &entry.tags,
        ) + PARTITION_OVERHEAD
            + 2 * entry.partition.len()
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = match self.entry(slot) {
            Some(e) => (e.prev, e.next),
            None => return,
        };
        match prev {
            NIL => self.head = next,
            p => {
                if let Some(Some(e)) = self.slots.get_mut(p as usize) {
                    e.next = next;
                }
            }
        }
        match next {
            NIL => self.tail = prev,
            n => {
                if let Some(Some(e)) = self.slots.get_mut(n as usize) {
                    e.prev = prev;
                }
            }
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        if let Some(Some(e)) = self.slots.get_mut(slot as usize) {
            e.prev = NIL;
            e.next = old_head;
        }
        if old_head != NIL {
            if let Some(Some(e)) = self.slots.get_mut(old_head as usize) {
                e.prev = slot;
            }
        } else {
            self.tail = slot;
        }
        self.head = slot;
    }

    fn touch(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    fn partition_id(&self, key: &str) -> Option<u32> {
        self.partition_ids.get(key).copied()
    }

    fn partition_mut(&mut self, pid: u32) -> Option<&mut Partition> {
        self.partitions
            .get_mut(pid as usize)
            .and_then(Option::as_mut)
    }

    fn get_or_create_partition(&mut self, key: &str) -> u32 {
        if let Some(pid) = self.partition_id(key) {
            return pid;
        }
        let p = Partition {
            key: key.into(),
            exact: HashMap::new(),
            index: Index::new(self.cfg.index, self.cfg.dim, self.cfg.hnsw),
            build: None,
            extra: 0,
        };
        let pid = match self.partition_free.pop() {
            Some(pid) => {
                self.partitions[pid as usize] = Some(p);
                pid
            }
            None => {
                self.partitions.push(Some(p));
                (self.partitions.len() - 1) as u32
            }
        };
        self.partition_ids.insert(key.into(), pid);
        self.live_bytes += PARTITION_OVERHEAD + 2 * key.len();
        pid
    }

    /// Remove the entry in `slot` (no counters touched).
    fn remove_slot(&mut self, slot: u32) -> bool {
        if self.entry(slot).is_none() {
            return false;
        }
        self.unlink(slot);
        let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return false;
        };
        self.free.push(slot);
        self.len -= 1;
        self.live_bytes -= e.bytes;
        for t in e.tags.iter() {
            if let Some(set) = self.tags.get_mut(t) {
                set.remove(&slot);
                if set.is_empty() {
                    self.tags.remove(t);
                }
            }
        }
        let (kind, dim) = (self.cfg.index, self.cfg.dim);
        let mut drop_partition = false;
        if let Some(p) = self.partition_mut(e.partition) {
            if p.exact.get(&e.hash) == Some(&slot) {
                p.exact.remove(&e.hash);
            }
            p.index.remove(slot);
            if let Some(b) = &mut p.build {
                b.journal.push((slot, false));
            }
            if p.exact.is_empty() && p.index.is_empty() {
                drop_partition = true;
            } else {
                let small = kind == IndexKind::Auto && p.index.len() <= AUTO_FLAT_MAX;
                if p.index.shrink(kind, dim, p.exact.values()) || small {
                    p.build = None;
                }
            }
        }
        if !drop_partition {
            self.reaccount(e.partition);
            self.start_build(e.partition);
        }
        if drop_partition {
            if let Some(p) = self
                .partitions
                .get_mut(e.partition as usize)
                .and_then(Option::take)
            {
                self.partition_ids.remove(&p.key);
                self.live_bytes -= PARTITION_OVERHEAD + 2 * p.key.len();
                self.index_extra -= p.extra;
                self.partition_free.push(e.partition);
            }
        }
        if self.len == 0 {
            // Nothing live: drop whatever the heap still holds.
            self.expiry.clear();
        }
        true
    }

    /// Remove every entry whose deadline is at or before `now`.
    pub fn purge_expired(&mut self, now: f64) {
        while let Some(Reverse((Deadline(t), slot, seq))) = self.expiry.peek().copied() {
            if t > now {
                break;
            }
            self.expiry.pop();
            if self.entry(slot).is_some_and(|e| e.seq == seq) && self.remove_slot(slot) {
                self.stats.expirations += 1;
            }
        }
        // Stale heap items (of replaced or removed entries) are skipped above;
        // rebuild when they outnumber the live ones so the heap cannot grow
        // without bound.
        if self.expiry.len() > 2 * self.len + 64 {
            let items: Vec<_> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.as_ref().map(|e| (i as u32, e)))
                .filter(|(_, e)| e.expires.is_finite())
                .map(|(i, e)| Reverse((Deadline(e.expires), i, e.seq)))
                .collect();
            self.expiry = BinaryHeap::from(items);
        }
    }

    fn evict_to_bounds(&mut self, keep: u32) {
        while self.len > self.cfg.max_entries || self.memory_bytes() > self.cfg.max_memory_bytes {
            let victim = self.tail;
            if victim == NIL || victim == keep {
                break;
            }
            if self.remove_slot(victim) {
                self.stats.evictions += 1;
            } else {
                break;
            }
        }
    }

    fn found(&self, slot: u32, score: f32, exact: bool, now: f64) -> Option<Found> {
        let e = self.entry(slot)?;
        Some(Found {
            token: Some(HitToken {
                slot,
                seq: e.seq,
                similarity: score,
            }),
            verify: false,
            response: e.response.clone(),
            metadata: e.metadata.clone(),
            prompt: e.prompt.to_string(),
            score: score.clamp(-1.0, 1.0),
            age: (now - e.created).max(0.0),
            exact,
        })
    }

    fn exact_slot(&self, partition: &str, normalized: &str, hash: u64) -> Option<u32> {
        let pid = self.partition_id(partition)?;
        let p = self.partitions.get(pid as usize)?.as_ref()?;
        let slot = *p.exact.get(&hash)?;
        let e = self.entry(slot)?;
        (normalize_prompt(&e.prompt) == normalized).then_some(slot)
    }

    /// Visit entries from least to most recently used.
    pub fn for_each_oldest_first(&self, now: f64, mut f: impl FnMut(EntryView<'_>)) {
        let mut slot = self.tail;
        while slot != NIL {
            let Some(e) = self.entry(slot) else { break };
            let p = self
                .partitions
                .get(e.partition as usize)
                .and_then(Option::as_ref);
            if let Some(p) = p {
                if let Some(v) = p.index.vector(slot) {
                    if e.expires > now {
                        f(EntryView {
                            partition: &p.key,
                            prompt: &e.prompt,
                            vector: v,
                            response: &e.response,
                            metadata: e.metadata.as_deref(),
                            tags: &e.tags,
                            age: (now - e.created).max(0.0),
                            remaining: e.expires - now,
                            learning: e.learning.as_deref(),
                        });
                    }
                }
            }
            slot = e.prev;
        }
    }

    /// Name of the index kind each partition currently uses, by scoped key.
    pub fn index_kinds(&self) -> Vec<(String, &'static str, usize)> {
        self.partitions
            .iter()
            .flatten()
            .map(|p| (p.key.to_string(), p.index.kind_name(), p.index.len()))
            .collect()
    }

    pub fn lookup_exact(&mut self, partition: &str, prompt: &str, now: f64) -> Option<Found> {
        let normalized = normalize_prompt(prompt);
        let hash = prompt_hash(&normalized);
        self.lookup_normalized(partition, &normalized, hash, now)
    }

    /// [`lookup_exact`](Self::lookup_exact) of a prompt normalised (and
    /// hashed) by the caller, before it took the lock.
    pub fn lookup_normalized(
        &mut self,
        partition: &str,
        normalized: &str,
        hash: u64,
        now: f64,
    ) -> Option<Found> {
        self.purge_expired(now);
        let slot = self.exact_slot(partition, normalized, hash)?;
        if self.entry(slot)?.expires <= now {
            return None;
        }
        self.touch(slot);
        self.found(slot, 1.0, true, now)
    }

    /// Unexpired candidates with similarity >= `threshold`, best first (at
    /// most [`SEMANTIC_CANDIDATES`]): what the guard checks, after the lock
    /// is released, before one is [`accept`](Self::accept)ed.
    pub fn semantic_candidates(
        &mut self,
        partition: &str,
        query: &[f32],
        threshold: f32,
        now: f64,
    ) -> Vec<Candidate> {
        self.purge_expired(now);
        let Some(pid) = self.partition_id(partition) else {
            return Vec::new();
        };
        let Some(p) = self.partition_mut(pid) else {
            return Vec::new();
        };
        let found = p.index.search(query, SEMANTIC_CANDIDATES, threshold);
        found
            .into_iter()
            .filter_map(|(slot, score)| {
                let e = self.entry(slot)?;
                (e.expires > now && e.partition == pid).then(|| Candidate {
                    slot,
                    seq: e.seq,
                    prompt: e.prompt.clone(),
                    response: e.response.clone(),
                    metadata: e.metadata.clone(),
                    score,
                    created: e.created,
                })
            })
            .collect()
    }

    /// Marks the entry of a candidate the guard accepted as used, if it is
    /// still there (another thread may have replaced it since).
    pub fn accept(&mut self, c: &Candidate) {
        if self.entry(c.slot).is_some_and(|e| e.seq == c.seq) {
            self.touch(c.slot);
        }
    }

    /// Best unexpired candidate with similarity >= `threshold` that `guard`
    /// accepts; the reasons of the candidates it rejected.
    pub fn lookup_semantic(
        &mut self,
        partition: &str,
        query: &[f32],
        threshold: f32,
        guard: Option<&mut GuardFn<'_>>,
        now: f64,
    ) -> (Option<Found>, Vec<GuardReason>) {
        let candidates = self.semantic_candidates(partition, query, threshold, now);
        let (chosen, rejected) = choose(candidates, guard);
        let found = chosen.map(|c| {
            self.accept(&c);
            c.into_found(now, false)
        });
        (found, rejected)
    }

    pub fn insert(&mut self, entry: NewEntry, now: f64) -> Result<(), StoreError> {
        if entry.vector.len() != self.cfg.dim {
            return Err(StoreError::Dimension {
                got: entry.vector.len(),
                expected: self.cfg.dim,
            });
        }
        let bytes = self.required_bytes(&entry);
        if bytes > self.cfg.max_memory_bytes {
            return Err(StoreError::TooLarge {
                bytes,
                limit: self.cfg.max_memory_bytes,
            });
        }
        let bytes = bytes - PARTITION_OVERHEAD - 2 * entry.partition.len();
        self.purge_expired(now);
        let normalized = normalize_prompt(&entry.prompt);
        let hash = prompt_hash(&normalized);
        let pid = self.get_or_create_partition(&entry.partition);
        // The same prompt (after normalisation) replaces the old entry; a
        // 64-bit hash collision does too, which costs one cached answer.
        let previous = self
            .partitions
            .get(pid as usize)
            .and_then(Option::as_ref)
            .and_then(|p| p.exact.get(&hash).copied());
        let mut learned = entry.learning;
        let known = previous
            .and_then(|old| self.entry(old))
            .and_then(|e| e.learning.as_deref());
        let fresh: Vec<Observation> = learned.newer_than(known).to_vec();
        if !fresh.is_empty() {
            let pool = self
                .learning
                .entry(entry.partition.as_str().into())
                .or_default();
            for o in fresh {
                pool.record(o);
            }
        }
        learned
            .observations
            .truncate(super::learn::ENTRY_OBSERVATIONS);
        if let Some(old) = previous {
            self.remove_slot(old);
        }
        // The replaced entry may have been the partition's last one.
        let pid = self.get_or_create_partition(&entry.partition);

        self.seq += 1;
        let expires = now - entry.age.max(0.0) + entry.ttl;
        let e = Entry {
            partition: pid,
            hash,
            seq: self.seq,
            prompt: Arc::from(entry.prompt),
            response: entry.response,
            metadata: entry.metadata,
            tags: entry.tags.iter().map(|t| t.as_str().into()).collect(),
            created: now - entry.age.max(0.0),
            expires,
            prev: NIL,
            next: NIL,
            bytes,
            learning: (learned.total > 0).then(|| Box::new(learned)),
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(e);
                s
            }
            None => {
                self.slots.push(Some(e));
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        self.live_bytes += bytes;
        self.push_front(slot);
        for t in &entry.tags {
            self.tags.entry(t.as_str().into()).or_default().insert(slot);
        }
        if expires.is_finite() {
            self.expiry
                .push(Reverse((Deadline(expires), slot, self.seq)));
        }
        if let Some(p) = self.partition_mut(pid) {
            p.exact.insert(hash, slot);
            p.index.add(slot, &entry.vector);
            if let Some(b) = &mut p.build {
                b.journal.push((slot, true));
            }
        }
        self.reaccount(pid);
        self.start_build(pid);
        self.stats.inserts += 1;
        if expires <= now {
            // Restored already expired: never visible.
            self.remove_slot(slot);
            self.stats.expirations += 1;
            return Ok(());
        }
        self.evict_to_bounds(slot);
        Ok(())
    }

    pub fn invalidate(&mut self, partition: &str, prompt: &str) -> bool {
        let normalized = normalize_prompt(prompt);
        match self.exact_slot(partition, &normalized, prompt_hash(&normalized)) {
            Some(slot) => {
                let removed = self.remove_slot(slot);
                if removed {
                    self.stats.invalidations += 1;
                }
                removed
            }
            None => false,
        }
    }

    pub fn invalidate_partition(&mut self, partition: &str) -> usize {
        let slots: Vec<u32> = self
            .partition_id(partition)
            .and_then(|pid| self.partitions.get(pid as usize)?.as_ref())
            .map(|p| p.exact.values().copied().collect())
            .unwrap_or_default();
        self.invalidate_slots(slots)
    }

    pub fn invalidate_tag(&mut self, tag: &str) -> usize {
        let slots: Vec<u32> = self
            .tags
            .get(tag)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.invalidate_slots(slots)
    }

    /// Removes the entries in `slots`, counted as invalidations.
    fn invalidate_slots(&mut self, slots: Vec<u32>) -> usize {
        let n = slots.into_iter().filter(|&s| self.remove_slot(s)).count();
        self.stats.invalidations += n as u64;
        n
    }

    /// Removes every entry; statistics and what partitions learned stay.
    pub fn clear(&mut self) {
        let stats = std::mem::take(&mut self.stats);
        let bulk = self.bulk;
        let learning = std::mem::take(&mut self.learning);
        let rng = self.rng.clone();
        *self = Store::new(self.cfg.clone());
        self.stats = stats;
        self.bulk = bulk;
        self.learning = learning;
        self.rng = rng;
    }

    /// A bulk insert starts: until it ends, a build replays what changed
    /// rather than finishing, so that the partitions being filled stay on
    /// their flat index (an insert into it costs a copy) and the builder
    /// adds their entries to the graph in parallel batches; once a graph
    /// was in place each insert would go into it one at a time.
    pub fn begin_bulk(&mut self) {
        self.bulk += 1;
    }

    pub fn end_bulk(&mut self) {
        self.bulk = self.bulk.saturating_sub(1);
    }

    /// The error-bounded mode's judgement of candidate `c` (serve
    /// everything without a bound), counted; a served hit is drawn for
    /// verification with the probability its evidence calls for.
    pub fn judge(&mut self, c: &Candidate) -> Judgement {
        let Some(eps) = self.cfg.max_error_rate else {
            return Judgement::Serve { verify: false };
        };
        let Some(e) = self.entry(c.slot).filter(|e| e.seq == c.seq) else {
            // replaced or removed since the search: nothing to learn from
            self.stats.learn.refused += 1;
            return Judgement::Refuse;
        };
        let own = e.learning.as_deref().cloned();
        let key = self.partition_key(e.partition);
        let tail = key
            .and_then(|k| self.learning.get_mut(&k))
            .and_then(|p| p.tail(eps));
        match decide(own.as_ref(), tail, c.score, eps) {
            Decision::Serve(t) => {
                let verify = self.rng.next_f64() < t.verify_probability(eps);
                Judgement::Serve { verify }
            }
            Decision::Refuse => {
                self.stats.learn.refused += 1;
                Judgement::Refuse
            }
        }
    }

    fn partition_key(&self, pid: u32) -> Option<Box<str>> {
        Some(self.partitions.get(pid as usize)?.as_ref()?.key.clone())
    }

    /// Records that the answer of the hit `token` was right or wrong, for
    /// its entry and its partition; false (nothing recorded) when that
    /// entry is no longer in the store.
    pub fn observe(&mut self, token: &HitToken, correct: bool, source: Source) -> bool {
        let Some(e) = self
            .slots
            .get_mut(token.slot as usize)
            .and_then(Option::as_mut)
            .filter(|e| e.seq == token.seq)
        else {
            return false;
        };
        let o = Observation {
            similarity: token.similarity,
            correct,
        };
        e.learning.get_or_insert_with(Box::default).record(o);
        let pid = e.partition;
        self.stats.learn.count(source, correct);
        if let Some(key) = self.partition_key(pid) {
            self.learning.entry(key).or_default().record(o);
        }
        // learning of partitions long gone is dropped, not kept forever
        if self.learning.len() > 4 * self.partition_ids.len() + 1024 {
            let live = &self.partition_ids;
            self.learning.retain(|k, _| live.contains_key(k));
        }
        true
    }

    /// The entry of `token` as it would be inserted elsewhere (another
    /// process): partition (scoped), prompt, response, metadata, tags,
    /// seconds left, vector and what it learned.
    pub fn entry_for_replica(&self, token: &HitToken, now: f64) -> Option<NewEntry> {
        let e = self.entry(token.slot).filter(|e| e.seq == token.seq)?;
        let p = self.partitions.get(e.partition as usize)?.as_ref()?;
        Some(NewEntry {
            partition: p.key.to_string(),
            prompt: e.prompt.to_string(),
            vector: p.index.vector(token.slot)?,
            response: e.response.clone(),
            metadata: e.metadata.clone(),
            tags: e.tags.iter().map(|t| t.to_string()).collect(),
            ttl: e.expires - now,
            age: 0.0,
            learning: e.learning.as_deref().cloned().unwrap_or_default(),
        })
    }

    /// What each partition learned, by scoped key.
    pub fn partition_learning(&self) -> impl Iterator<Item = (&str, &PartitionLearning)> {
        self.learning.iter().map(|(k, v)| (&**k, v))
    }

    /// Replaces what partitions learned (a snapshot's).
    pub fn set_partition_learning(&mut self, learned: Vec<(String, PartitionLearning)>) {
        self.learning = learned
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v))
            .collect();
    }

    /// Learned thresholds under the configured bound: each partition's
    /// (None where it has too little evidence) and how many entries have
    /// enough of their own.
    pub fn learned_thresholds(&mut self) -> (Vec<Option<f32>>, usize) {
        let Some(eps) = self.cfg.max_error_rate else {
            return (Vec::new(), 0);
        };
        let parts = self
            .learning
            .values_mut()
            .map(|p| p.tail(eps).map(|t| t.threshold))
            .collect();
        let own = self
            .slots
            .iter()
            .flatten()
            .filter_map(|e| e.learning.as_deref())
            .filter(|l| {
                l.observations.len() as u64 >= super::learn::least_evidence(eps)
                    && super::learn::learned_threshold(&l.observations, eps).is_some()
            })
            .count();
        (parts, own)
    }

    /// Starts a graph build for partition `pid` if its index wants one and
    /// none runs: the journal starts with every id the partition holds.
    fn start_build(&mut self, pid: u32) {
        let kind = self.cfg.index;
        let Some(p) = self.partition_mut(pid) else {
            return;
        };
        if p.build.is_some() || !p.index.wants_graph(kind) {
            return;
        }
        let mut ids: Vec<u32> = p.exact.values().copied().collect();
        ids.sort_unstable();
        let epoch = EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        p.build = Some(Build {
            epoch,
            journal: ids.into_iter().map(|id| (id, true)).collect(),
            replays: 0,
        });
        self.tickets.push(BuildTicket {
            pid,
            epoch,
            dim: self.cfg.dim,
            params: self.cfg.hnsw,
        });
    }

    /// Brings partition `pid`'s share of `index_extra` up to date.
    fn reaccount(&mut self, pid: u32) {
        let per = self.index_bytes_per_entry();
        let Some(p) = self.partition_mut(pid) else {
            return;
        };
        let extra = p.index.memory_bytes().saturating_sub(p.index.len() * per);
        let old = std::mem::replace(&mut p.extra, extra);
        self.index_extra = self.index_extra + extra - old;
    }

    /// Builds started since the last call, for the caller to run once it
    /// has released the lock.
    pub fn take_tickets(&mut self) -> Vec<BuildTicket> {
        std::mem::take(&mut self.tickets)
    }

    fn build_of(&mut self, pid: u32, epoch: u64) -> Option<&mut Partition> {
        self.partition_mut(pid)
            .filter(|p| p.build.as_ref().is_some_and(|b| b.epoch == epoch))
    }

    /// The builder's next step for build `epoch` of partition `pid`. When
    /// few changes remain they go into `graph`, which replaces the index
    /// (the switch is atomic under the lock); otherwise the journal is
    /// handed over to replay off the lock.
    pub fn build_step(&mut self, pid: u32, epoch: u64, graph: &mut HnswIndex) -> BuildStep {
        let (dim, params, bulk) = (self.cfg.dim, self.cfg.hnsw, self.bulk > 0);
        let Some(p) = self.build_of(pid, epoch) else {
            return BuildStep::Cancelled;
        };
        let Some(b) = p.build.as_mut() else {
            return BuildStep::Cancelled;
        };
        let journal = coalesce(std::mem::take(&mut b.journal));
        if journal.len() > FINISH_AT {
            b.replays += 1;
            return BuildStep::Replay(journal);
        }
        if bulk {
            return BuildStep::Replay(journal);
        }
        for (id, added) in journal {
            match p.index.vector(id).filter(|_| added) {
                Some(v) => graph.add(id, &v),
                None => {
                    graph.remove(id);
                }
            }
        }
        let done = std::mem::replace(graph, HnswIndex::new(dim, params));
        p.index = Index::Hnsw(Box::new(done));
        p.build = None;
        self.reaccount(pid);
        // Removals during the build may have left the new graph mostly free.
        self.start_build(pid);
        BuildStep::Done
    }

    /// Ends build `epoch` of partition `pid` if it still runs (its builder
    /// stopped without finishing).
    pub fn cancel_build(&mut self, pid: u32, epoch: u64) {
        if let Some(p) = self.build_of(pid, epoch) {
            p.build = None;
        }
    }

    /// The vectors of `ids` for build `epoch` of partition `pid`, skipping
    /// ids removed since (the journal holds their removal); None when the
    /// build was cancelled.
    pub fn build_vectors(
        &mut self,
        pid: u32,
        epoch: u64,
        ids: &[u32],
    ) -> Option<Vec<(u32, Vec<f32>)>> {
        let p = self.build_of(pid, epoch)?;
        Some(
            ids.iter()
                .filter_map(|&id| Some((id, p.index.vector(id)?)))
                .collect(),
        )
    }

    /// Whether a single insert into `partition` must wait for its build
    /// to catch up (see [`JOURNAL_MAX`]).
    pub fn must_wait(&self, partition: &str) -> bool {
        self.building(partition).is_some_and(|b| {
            let limit = if b.replays >= 3 {
                FINISH_AT
            } else {
                JOURNAL_MAX
            };
            b.journal.len() >= limit
        })
    }

    fn building(&self, partition: &str) -> Option<&Build> {
        let pid = self.partition_id(partition)?;
        self.partitions.get(pid as usize)?.as_ref()?.build.as_ref()
    }

    /// Whether a graph is being built for `partition`.
    pub fn is_building(&self, partition: &str) -> bool {
        self.building(partition).is_some()
    }

    /// Partitions whose graph is being built.
    pub fn builds_running(&self) -> usize {
        self.partitions
            .iter()
            .flatten()
            .filter(|p| p.build.is_some())
            .count()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes accounted: every entry (its share of its index included) and
    /// what the indexes hold beyond their entries' shares.
    pub fn memory_bytes(&self) -> usize {
        self.live_bytes + self.index_extra
    }
}

/// A seed for the verification draws when none was given.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
}

/// Each id of `journal` once, with its last change, in the order of those
/// last changes.
fn coalesce(journal: Vec<(u32, bool)>) -> Vec<(u32, bool)> {
    let mut last: HashMap<u32, usize> = HashMap::with_capacity(journal.len());
    for (k, &(id, _)) in journal.iter().enumerate() {
        last.insert(id, k);
    }
    journal
        .into_iter()
        .enumerate()
        .filter(|(k, (id, _))| last.get(id) == Some(k))
        .map(|(_, op)| op)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(max_entries: usize, max_memory_bytes: usize, index: IndexKind) -> StoreConfig {
        StoreConfig {
            dim: 4,
            max_entries,
            max_memory_bytes,
            index,
            hnsw: HnswParams::default(),
            max_error_rate: None,
            seed: None,
        }
    }

    fn unit(v: [f32; 4]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn entry(p: &str, prompt: &str, v: [f32; 4], ttl: f64) -> NewEntry {
        NewEntry {
            partition: p.into(),
            prompt: prompt.into(),
            vector: unit(v),
            response: Arc::from(prompt.as_bytes()),
            metadata: None,
            tags: vec!["t".into()],
            ttl,
            age: 0.0,
            learning: EntryLearning::default(),
        }
    }

    #[test]
    fn exact_and_semantic_within_partition() {
        let mut s = Store::new(cfg(100, 1 << 20, IndexKind::Flat));
        s.insert(entry("a", "Hello  World", [1.0, 0.0, 0.0, 0.0], 10.0), 0.0)
            .unwrap();
        assert!(s.lookup_exact("a", "hello world", 1.0).is_some());
        assert!(s.lookup_exact("b", "hello world", 1.0).is_none());
        let (hit, _) = s.lookup_semantic("a", &unit([1.0, 0.1, 0.0, 0.0]), 0.9, None, 1.0);
        assert!(hit.is_some_and(|h| !h.exact && h.score > 0.9));
        let (hit, _) = s.lookup_semantic("b", &unit([1.0, 0.1, 0.0, 0.0]), 0.9, None, 1.0);
        assert!(hit.is_none());
    }

    #[test]
    fn expiry_and_lru_bounds() {
        let mut s = Store::new(cfg(2, 1 << 20, IndexKind::Flat));
        s.insert(entry("a", "one", [1.0, 0.0, 0.0, 0.0], 10.0), 0.0)
            .unwrap();
        s.insert(entry("a", "two", [0.0, 1.0, 0.0, 0.0], 10.0), 0.0)
            .unwrap();
        assert!(s.lookup_exact("a", "one", 1.0).is_some()); // "two" is now LRU
        s.insert(entry("a", "three", [0.0, 0.0, 1.0, 0.0], 10.0), 1.0)
            .unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.lookup_exact("a", "two", 1.0).is_none());
        assert_eq!(s.stats.evictions, 1);
        assert!(s.lookup_exact("a", "one", 11.0).is_none());
        assert_eq!(s.len(), 0);
        assert_eq!(s.stats.expirations, 2);
        assert_eq!(s.partition_count(), 0);
        assert_eq!(s.memory_bytes(), 0);
    }

    #[test]
    fn memory_bound_holds_and_tags_invalidate() {
        let one =
            Store::new(cfg(100, 1 << 20, IndexKind::Flat)).entry_bytes("p0", 2, 0, &["t".into()]);
        let mut s = Store::new(cfg(100, 3 * one + 600, IndexKind::Flat));
        for i in 0..10 {
            s.insert(
                entry("a", &format!("p{i}"), [1.0, i as f32, 0.0, 0.0], 10.0),
                0.0,
            )
            .unwrap();
            assert!(s.memory_bytes() <= 3 * one + 600);
        }
        assert!(s.len() >= 2 && s.len() <= 3);
        assert_eq!(s.invalidate_tag("t"), s.stats.invalidations as usize);
        assert_eq!(s.len(), 0);
        assert_eq!(s.memory_bytes(), 0);
    }

    #[test]
    fn too_large_is_refused_without_change() {
        let mut s = Store::new(cfg(100, 500, IndexKind::Flat));
        let mut e = entry("a", "x", [1.0, 0.0, 0.0, 0.0], 10.0);
        e.response = Arc::from(vec![0u8; 1000]);
        assert!(matches!(s.insert(e, 0.0), Err(StoreError::TooLarge { .. })));
        assert_eq!(s.len(), 0);
        assert_eq!(s.memory_bytes(), 0);
    }

    #[test]
    fn replace_same_prompt() {
        let mut s = Store::new(cfg(100, 1 << 20, IndexKind::Flat));
        s.insert(entry("a", "x", [1.0, 0.0, 0.0, 0.0], 10.0), 0.0)
            .unwrap();
        s.insert(entry("a", "X ", [0.0, 1.0, 0.0, 0.0], 10.0), 0.0)
            .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(&*s.lookup_exact("a", "x", 0.0).unwrap().response, b"X ");
        assert!(s.invalidate("a", "x"));
        assert_eq!(s.len(), 0);
        assert_eq!(s.memory_bytes(), 0);
    }
}
