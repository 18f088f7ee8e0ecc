//! One semantic cache for every process on a Redis namespace, with lookups
//! that stay local.
//!
//! A [`Replica`] ties a local [`Cache`] to a namespace in Redis. What the
//! local cache learns (sets, warms, invalidations) is queued and written to
//! Redis by a background sender; a background follower reads the namespace's
//! event stream (woken by a pub/sub doorbell) and applies what other
//! processes did to the local cache. Lookups never wait for Redis, except the
//! one bounded fetch of an exact entry the local copy evicted
//! ([`Replica::fetch_exact`]).
//!
//! Ordering: every event has a number. A write carries the number of the
//! last event its process had applied when it made the change, and that
//! event's epoch; Redis refuses it when another process's invalidation newer
//! than that covers it (see `protocol`), or any invalidation when the epoch
//! is not the namespace's any more (Redis restarted empty, or a failover
//! lost the namespace), so a write delayed by a Redis outage never brings
//! back an entry invalidated meanwhile. A follower that sees the numbers
//! jump (the stream was trimmed past it) or go back (a failover lost the
//! last writes) clears its copy and reloads the namespace; a new epoch
//! (Redis restarted empty) makes it read the new stream from its start.
//!
//! Redis loss: the sender keeps up to `max_pending` changes and counts what
//! it drops beyond; every call is bounded by the store's timeout, and
//! nothing here runs under the cache's lock while it waits for Redis.

pub mod protocol;
mod runtime;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::Value;

use super::store::Found;
use super::{Cache, NewItem};
use crate::store::{check_key_part, Script, Store, StoreError};
use protocol::{Entry, Invalid, Keys};

/// How often a follower reads the stream without a doorbell.
pub const POLL: Duration = Duration::from_millis(500);
/// Events read per call.
const READ_COUNT: usize = 512;
/// Entries per loading call (halved after a timeout).
const LOAD_PAGE: usize = 1024;
/// Entries per write call.
const WRITE_BATCH: usize = 64;
const LAG_WINDOW: usize = 1024;
/// The least time a background call (write, read, load) may take.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(2);
/// Tombstones of a cache whose entries never expire live this long.
const TOMBSTONE_MIN: Duration = Duration::from_secs(86_400);

/// How one cache shares its namespace.
#[derive(Clone, Debug)]
pub struct SharedConfig {
    pub namespace: String,
    /// Entries Redis keeps for the namespace, oldest dropped first; 0: no
    /// bound but their TTL.
    pub max_shared_entries: usize,
    /// Events the stream keeps (approximately); a follower further behind reloads.
    pub stream_max_len: usize,
    /// Changes queued while Redis is unusable; more are dropped and counted.
    pub max_pending: usize,
    /// Load the namespace in the background instead of before returning.
    pub background_load: bool,
}

impl SharedConfig {
    pub fn validate(&self) -> Result<(), String> {
        check_key_part("namespace", &self.namespace, false)?;
        if self.namespace.len() > 200 {
            return Err(format!(
                "namespace must be at most 200 bytes, got {}",
                self.namespace.len()
            ));
        }
        if self.stream_max_len < 100 {
            return Err(format!(
                "stream_max_len must be at least 100, got {}",
                self.stream_max_len
            ));
        }
        if self.max_pending == 0 {
            return Err("max_pending must be at least 1, got 0".into());
        }
        Ok(())
    }
}

/// Why a cache could not join its namespace.
#[derive(Debug)]
pub enum JoinError {
    /// The namespace belongs to another embedder, dimension or format.
    Mismatch(String),
    /// Redis answered something a join cannot use.
    Store(StoreError),
}

/// What `stats()` reports about the sharing.
#[derive(Clone, Debug, Default)]
pub struct SharedStats {
    pub namespace: String,
    pub connected: bool,
    pub loaded: bool,
    /// Entries and invalidations applied from other processes.
    pub received: u64,
    /// Entries written to Redis (accepted).
    pub sent: u64,
    /// Writes Redis refused because an invalidation had overtaken them.
    pub refused: u64,
    /// Changes dropped because the queue was full (or Redis refused them).
    pub dropped: u64,
    /// Entries or events in Redis that are not this cache's (other version,
    /// truncated, another embedder, another program's).
    pub invalid: u64,
    pub resyncs: u64,
    pub loaded_entries: u64,
    /// Exact hits answered from Redis after a local miss.
    pub remote_hits: u64,
    pub errors: u64,
    pub queue_depth: usize,
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub last_error: Option<String>,
}

/// A change to send: entries, or one invalidation.
#[derive(Debug)]
enum Change {
    Set(Vec<Outgoing>),
    Invalidate {
        kind: &'static str,
        target: String,
        partition: String,
        text: String,
    },
}

/// Entries encoded for Redis ([`Replica::prepare_set`]).
#[derive(Debug)]
pub struct PreparedSet(Vec<Outgoing>);

#[derive(Debug)]
struct Outgoing {
    id: String,
    blob: Vec<u8>,
    partition_hash: String,
    tags: String,
    ttl_ms: u64,
}

#[derive(Debug)]
struct Op {
    change: Change,
    /// The event this process had applied when it made the change, and the
    /// epoch (of the namespace in Redis) it belongs to.
    observed: u64,
    epoch: Arc<str>,
    wall_us: u64,
}

impl Op {
    fn entries(&self) -> usize {
        match &self.change {
            Change::Set(v) => v.len(),
            Change::Invalidate { .. } => 1,
        }
    }
}

/// Where a follower is in the namespace's stream.
#[derive(Clone, Debug)]
struct Position {
    epoch: String,
    seq: u64,
    last_id: String,
}

struct Scripts {
    join: Script,
    write: Script,
    invalidate: Script,
    read: Script,
    load: Script,
    fetch: Script,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
    refused: AtomicU64,
    dropped: AtomicU64,
    invalid: AtomicU64,
    resyncs: AtomicU64,
    loaded_entries: AtomicU64,
    remote_hits: AtomicU64,
    errors: AtomicU64,
}

pub(crate) struct Inner {
    cache: Arc<Cache>,
    store: Arc<Store>,
    cfg: SharedConfig,
    keys: Keys,
    instance: String,
    /// The cache's clock (its `now`), readable from any thread.
    now: Box<dyn Fn() -> f64 + Send + Sync>,
    scripts: Scripts,
    queue: Mutex<VecDeque<Op>>,
    wake: tokio::sync::Notify,
    /// Sending an op right now (for `flush`).
    sending: AtomicBool,
    /// The namespace's epoch and the last event of it applied (the
    /// `observed` of new changes); one lock, so that both are of one epoch.
    applied: Mutex<(Arc<str>, u64)>,
    /// The store's connection generation of the sender's last join.
    joined: AtomicU64,
    loaded: AtomicBool,
    counters: Counters,
    lags: Mutex<VecDeque<f64>>,
    last_error: Mutex<Option<String>>,
}

/// The handle a cache holds; dropping it stops the background tasks.
pub struct Replica {
    inner: Arc<Inner>,
    _stop: tokio::sync::watch::Sender<()>,
}

/// Wall-clock microseconds: replication lag is measured between processes.
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}.{:x}", std::process::id(), nanos)
}

fn ttl_ms(ttl: f64) -> u64 {
    if ttl.is_finite() {
        ((ttl * 1000.0).ceil() as u64).max(1)
    } else {
        0
    }
}

fn reply_error(what: &str, v: &Value) -> StoreError {
    StoreError::Reply(format!("unexpected reply to {what}: {v:?}"))
}

impl Replica {
    /// Joins `cfg.namespace` on `store` for `cache` and, unless
    /// `background_load`, loads the namespace's live entries before
    /// returning (with Redis unreachable it returns at once, empty, and
    /// loads when Redis answers). `now` reads the cache's clock.
    pub fn start(
        cache: Arc<Cache>,
        store: Arc<Store>,
        cfg: SharedConfig,
        now: Box<dyn Fn() -> f64 + Send + Sync>,
    ) -> Result<Replica, JoinError> {
        cfg.validate()
            .map_err(|m| JoinError::Store(StoreError::Config(m)))?;
        let keys = Keys::new(store.key_prefix(), &cfg.namespace);
        let inner = Arc::new(Inner {
            cache,
            keys,
            instance: instance_id(),
            now,
            scripts: Scripts {
                join: Script::new(&protocol::JOIN),
                write: Script::new(&protocol::WRITE),
                invalidate: Script::new(&protocol::INVALIDATE),
                read: Script::new(&protocol::READ),
                load: Script::new(&protocol::LOAD),
                fetch: Script::new(&protocol::FETCH),
            },
            queue: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            sending: AtomicBool::new(false),
            applied: Mutex::new((Arc::from(""), 0)),
            joined: AtomicU64::new(u64::MAX),
            loaded: AtomicBool::new(false),
            counters: Counters::default(),
            lags: Mutex::new(VecDeque::new()),
            last_error: Mutex::new(None),
            store,
            cfg,
        });
        let mut position = None;
        match inner.store.block_on(inner.join()) {
            Ok(p) => {
                inner
                    .joined
                    .store(inner.store.connection_generation(), Relaxed);
                if inner.cfg.background_load {
                    position = Some((p, true));
                } else {
                    match inner.store.block_on(inner.load_all(&p)) {
                        Ok(()) => position = Some((p, false)),
                        Err(e) => inner.record_error(&e),
                    }
                }
            }
            Err(JoinError::Mismatch(m)) => return Err(JoinError::Mismatch(m)),
            Err(JoinError::Store(e)) if e.falls_back() => inner.record_error(&e),
            Err(JoinError::Store(e)) => return Err(JoinError::Store(e)),
        }
        let stop = runtime::start(&inner, position);
        Ok(Replica { inner, _stop: stop })
    }

    pub fn namespace(&self) -> &str {
        &self.inner.cfg.namespace
    }

    pub fn config(&self) -> &SharedConfig {
        &self.inner.cfg
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// `items` encoded for Redis: prepare before inserting them locally
    /// (the insert consumes them), publish once the insert succeeded.
    pub fn prepare_set(&self, items: &[NewItem]) -> PreparedSet {
        let identity = self.inner.cache.identity().to_owned();
        let entries = items
            .iter()
            .map(|i| {
                let e = Entry {
                    identity: identity.clone(),
                    partition: i.partition.clone(),
                    prompt: i.prompt.clone(),
                    response: i.response.clone(),
                    metadata: i.metadata.clone(),
                    tags: i.tags.clone(),
                    ttl: i.ttl,
                    vector: i.vector.clone(),
                    learning: i.learning.clone(),
                };
                Outgoing {
                    id: protocol::entry_id(&i.partition, &i.prompt),
                    blob: e.encode(),
                    partition_hash: protocol::partition_hash(&i.partition),
                    tags: protocol::tag_hashes(&i.tags),
                    ttl_ms: ttl_ms(i.ttl),
                }
            })
            .collect();
        PreparedSet(entries)
    }

    /// Queues entries just inserted in the local cache for Redis.
    pub fn publish_set(&self, prepared: PreparedSet) {
        self.inner.enqueue(Change::Set(prepared.0));
    }

    pub fn publish_invalidate(&self, prompt: &str, partition: &str) {
        self.inner.enqueue(Change::Invalidate {
            kind: "inv",
            target: protocol::entry_id(partition, prompt),
            partition: partition.to_owned(),
            text: prompt.to_owned(),
        });
    }

    pub fn publish_invalidate_partition(&self, partition: &str) {
        self.inner.enqueue(Change::Invalidate {
            kind: "part",
            target: protocol::partition_hash(partition),
            partition: partition.to_owned(),
            text: String::new(),
        });
    }

    pub fn publish_invalidate_tag(&self, tag: &str) {
        self.inner.enqueue(Change::Invalidate {
            kind: "tag",
            target: protocol::tag_hash(tag),
            partition: String::new(),
            text: tag.to_owned(),
        });
    }

    pub fn publish_clear(&self) {
        self.inner.enqueue(Change::Invalidate {
            kind: "clear",
            target: String::new(),
            partition: String::new(),
            text: String::new(),
        });
    }

    /// After local misses: the live entries of `(prompt, partition)` pairs
    /// from Redis, inserted locally, when the local copy has evicted entries
    /// (one round trip each, all at once, so the whole batch waits at most
    /// the store's timeout; an error is a miss).
    pub fn fetch_exact(&self, wanted: &[(&str, &str)]) -> Vec<Option<Found>> {
        let inner = &self.inner;
        if wanted.is_empty() || inner.cache.evictions() == 0 {
            return vec![None; wanted.len()];
        }
        let ids: Vec<String> = wanted
            .iter()
            .map(|(prompt, partition)| protocol::entry_id(partition, prompt))
            .collect();
        let calls = ids.iter().map(|id| {
            let args = [inner.keys.base.as_str(), id.as_str()];
            async move {
                inner
                    .store
                    .eval(&inner.scripts.fetch, &inner.keys.keys, &args)
                    .await
            }
        });
        let replies = inner.store.block_on(futures_util::future::join_all(calls));
        let now = (inner.now)();
        replies
            .into_iter()
            .map(|r| {
                let reply = r.inspect_err(|e| inner.record_error(e)).ok()?;
                let parts = protocol::items(&reply);
                let (blob, pttl) = (protocol::bytes_of(parts.first()?)?, parts.get(1)?);
                let item = inner.decode(blob, protocol::int_of(pttl).unwrap_or(-2), None)?;
                let found = Found {
                    token: None,
                    verify: false,
                    response: Arc::from(item.response.as_slice()),
                    metadata: item.metadata.as_deref().map(Arc::from),
                    prompt: item.prompt.clone(),
                    score: 1.0,
                    age: 0.0,
                    exact: true,
                };
                inner.cache.insert(vec![item], now).ok()?;
                inner.counters.remote_hits.fetch_add(1, Relaxed);
                inner.cache.count_remote_hit();
                Some(found)
            })
            .collect()
    }

    /// Waits (parking the thread) until every queued change was sent or
    /// dropped, at most `timeout`; whether the queue drained.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.inner.queue.lock().is_empty() && !self.inner.sending.load(Relaxed) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            self.inner.wake.notify_one();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn stats(&self) -> SharedStats {
        let inner = &self.inner;
        let c = &inner.counters;
        let (p50, p99) = {
            let lags = inner.lags.lock();
            let mut v: Vec<f64> = lags.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| -> Option<f64> {
                (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * p).round() as usize])
            };
            (q(0.5), q(0.99))
        };
        SharedStats {
            namespace: inner.cfg.namespace.clone(),
            connected: inner.store.is_connected() && !inner.store.is_closed(),
            loaded: inner.loaded.load(Relaxed),
            received: c.received.load(Relaxed),
            sent: c.sent.load(Relaxed),
            refused: c.refused.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            invalid: c.invalid.load(Relaxed),
            resyncs: c.resyncs.load(Relaxed),
            loaded_entries: c.loaded_entries.load(Relaxed),
            remote_hits: c.remote_hits.load(Relaxed),
            errors: c.errors.load(Relaxed),
            queue_depth: queued(&inner.queue.lock()),
            lag_p50_ms: p50,
            lag_p99_ms: p99,
            last_error: inner.last_error.lock().clone(),
        }
    }
}

/// Entries waiting in the locked queue `q`.
fn queued(q: &VecDeque<Op>) -> usize {
    q.iter().map(Op::entries).sum()
}

impl Inner {
    /// The bound of the background calls: no request waits for them, and a
    /// write given up on the client may still have run on the server (it
    /// would be sent, and applied elsewhere, twice).
    fn background_timeout(&self) -> Duration {
        self.store.timeout().max(BACKGROUND_TIMEOUT)
    }

    fn set_applied(&self, epoch: &str, seq: u64) {
        let mut applied = self.applied.lock();
        if &*applied.0 != epoch {
            applied.0 = Arc::from(epoch);
        }
        applied.1 = seq;
    }

    fn record_error(&self, e: &StoreError) {
        self.counters.errors.fetch_add(1, Relaxed);
        *self.last_error.lock() = Some(e.to_string());
    }

    fn enqueue(&self, change: Change) {
        let (epoch, observed) = self.applied.lock().clone();
        let op = Op {
            change,
            observed,
            epoch,
            wall_us: wall_us(),
        };
        let mut q = self.queue.lock();
        self.make_room(&mut q, op.entries());
        q.push_back(op);
        drop(q);
        self.wake.notify_one();
    }

    /// Drops queued changes until `room` more entries fit in `max_pending`:
    /// the oldest entries first; invalidations are kept while entries can
    /// make room (a lost invalidation leaves stale answers elsewhere, a lost
    /// entry only a miss).
    fn make_room(&self, q: &mut VecDeque<Op>, room: usize) {
        let mut depth = queued(q);
        while depth + room > self.cfg.max_pending && !q.is_empty() {
            let victim = q
                .iter()
                .position(|o| matches!(o.change, Change::Set(_)))
                .unwrap_or(0);
            if let Some(o) = q.remove(victim) {
                depth -= o.entries();
                self.counters.dropped.fetch_add(o.entries() as u64, Relaxed);
            }
        }
    }

    /// Reads (creating if needed) the namespace's metadata and checks it
    /// against this cache; the position of the stream now.
    async fn join(&self) -> Result<Position, JoinError> {
        let dim = self.cache.config().dim.to_string();
        let format = protocol::FORMAT.to_string();
        let epoch = instance_id();
        let args = [
            self.keys.base.as_str(),
            self.cache.identity(),
            dim.as_str(),
            format.as_str(),
            epoch.as_str(),
        ];
        let reply = self
            .store
            .eval_within(
                self.background_timeout(),
                &self.scripts.join,
                &self.keys.keys,
                &args,
            )
            .await
            .map_err(JoinError::Store)?;
        let p = protocol::items(&reply);
        let text = |i: usize| p.get(i).and_then(protocol::string_of);
        if text(0).as_deref() != Some("ok") {
            return Err(JoinError::Store(reply_error("the join script", &reply)));
        }
        let repaired = p.get(7).and_then(protocol::int_of).unwrap_or(0);
        if repaired > 0 {
            self.counters
                .invalid
                .fetch_add(repaired.unsigned_abs(), Relaxed);
        }
        let (identity, their_dim, their_format) = (text(1), text(2), text(3));
        if identity.as_deref() != Some(self.cache.identity())
            || their_dim.as_deref() != Some(dim.as_str())
            || their_format.as_deref() != Some(format.as_str())
        {
            return Err(JoinError::Mismatch(format!(
                "namespace {:?} holds entries of embedder {:?} with dimension {} (format {}); \
                 this cache uses embedder {:?} with dimension {dim} (format {format}): use \
                 another namespace, or the same embedder",
                self.cfg.namespace,
                identity.unwrap_or_default(),
                their_dim.unwrap_or_default(),
                their_format.unwrap_or_default(),
                self.cache.identity(),
            )));
        }
        Ok(Position {
            epoch: text(4).unwrap_or_default(),
            seq: p
                .get(5)
                .and_then(protocol::int_of)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            last_id: text(6).unwrap_or_else(|| "0-0".into()),
        })
    }

    /// An entry from Redis as an item for the local cache: validated, its
    /// vector normalised, its TTL the time it has left (`pttl_ms`: -1 no
    /// expiry, -2 gone; `age_ms`: for stream events, the time since it was
    /// written). Counts what it refuses.
    fn decode(&self, blob: &[u8], pttl_ms: i64, age_ms: Option<u64>) -> Option<NewItem> {
        let cfg = self.cache.config();
        let e = match Entry::decode(blob, self.cache.identity(), cfg.dim) {
            Ok(e) => e,
            Err(Invalid::Corrupt | Invalid::Version(_) | Invalid::Foreign) => {
                self.counters.invalid.fetch_add(1, Relaxed);
                return None;
            }
        };
        let ttl = match (pttl_ms, age_ms) {
            (-2, _) => return None,
            (ms, _) if ms >= 0 => ms as f64 / 1000.0,
            (_, Some(age)) => e.ttl - age as f64 / 1000.0,
            _ => e.ttl,
        };
        if ttl.is_nan() || ttl <= 0.0 {
            return None;
        }
        let Ok(vector) = cfg.normalized(e.vector, "") else {
            self.counters.invalid.fetch_add(1, Relaxed);
            return None;
        };
        Some(NewItem {
            prompt: e.prompt,
            partition: e.partition,
            response: e.response,
            metadata: e.metadata,
            tags: e.tags,
            ttl,
            vector,
            learning: e.learning,
        })
    }

    /// Inserts items one by one (an entry too large for this cache is
    /// skipped, not the batch).
    fn insert_each(&self, items: Vec<NewItem>) -> u64 {
        let now = (self.now)();
        let mut n = 0;
        for item in items {
            if self.cache.insert(vec![item], now).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Loads every live entry of the namespace (epoch `at.epoch`) into the
    /// local cache, page by page; the follower then applies the stream from
    /// `at`. A page is decoded and inserted on the blocking pool while the
    /// next one is fetched (pages go in in order: a later write of a prompt
    /// wins), and returns once every entry is in the local cache, without
    /// waiting for graph builds (see `Cache::load`).
    async fn load_all(self: &Arc<Self>, at: &Position) -> Result<(), StoreError> {
        let _bulk = self.cache.bulk();
        let mut after = "0".to_owned();
        let mut page = LOAD_PAGE;
        let mut inserting: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let reply = match self.load_page(&after, page, false).await {
                Ok(v) => v,
                Err(StoreError::Timeout(_)) if page > 8 => {
                    page /= 2;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let p = protocol::items(&reply);
            let epoch = p.first().and_then(protocol::string_of).unwrap_or_default();
            if epoch != at.epoch {
                return Err(StoreError::Unavailable(
                    "the namespace was recreated while loading (Redis restarted?)".into(),
                ));
            }
            let scanned = p.get(2).and_then(protocol::int_of).unwrap_or(0);
            let bad = p.get(3).and_then(protocol::int_of).unwrap_or(0);
            self.counters.invalid.fetch_add(bad.unsigned_abs(), Relaxed);
            let Some(last) = p.get(1).and_then(protocol::string_of) else {
                return Err(reply_error("the load script", &reply));
            };
            if let Some(previous) = inserting.take() {
                let _ = previous.await;
            }
            let this = Arc::clone(self);
            inserting = Some(tokio::task::spawn_blocking(move || this.load_reply(&reply)));
            after = last;
            if scanned < page as i64 {
                break;
            }
        }
        if let Some(previous) = inserting {
            let _ = previous.await;
        }
        self.set_applied(&at.epoch, at.seq);
        self.loaded.store(true, Relaxed);
        Ok(())
    }

    /// Decodes the entries of one page of the load script and inserts them.
    fn load_reply(&self, reply: &Value) {
        let p = protocol::items(reply);
        let blobs = p.get(5).map(protocol::items).unwrap_or_default();
        let items: Vec<NewItem> = blobs
            .chunks_exact(2)
            .filter_map(|c| {
                let blob = protocol::bytes_of(&c[0]);
                if blob.is_none() {
                    self.counters.invalid.fetch_add(1, Relaxed);
                }
                self.decode(blob?, protocol::int_of(&c[1]).unwrap_or(-2), None)
            })
            .collect();
        let n = self.cache.load(items, (self.now)());
        self.counters.loaded_entries.fetch_add(n as u64, Relaxed);
    }

    /// One page of the load script: up to `count` index members after score
    /// `after`; `sweep` deletes the dead ones instead of returning the live.
    async fn load_page(&self, after: &str, count: usize, sweep: bool) -> Result<Value, StoreError> {
        let count = count.to_string();
        let args = [
            self.keys.base.as_str(),
            after,
            count.as_str(),
            if sweep { "1" } else { "0" },
        ];
        self.store
            .eval_within(
                self.background_timeout(),
                &self.scripts.load,
                &self.keys.keys,
                &args,
            )
            .await
    }

    /// Deletes the entries tombstones cover (and index members whose entry
    /// expired), page by page; errors end it (the next invalidation sweeps
    /// again, and readers skip what it left).
    async fn sweep(&self) {
        let mut after = "0".to_owned();
        loop {
            let Ok(reply) = self.load_page(&after, LOAD_PAGE, true).await else {
                return;
            };
            let p = protocol::items(&reply);
            let scanned = p.get(2).and_then(protocol::int_of).unwrap_or(0);
            match p.get(1).and_then(protocol::string_of) {
                Some(last) if scanned >= LOAD_PAGE as i64 => after = last,
                _ => return,
            }
        }
    }
}
