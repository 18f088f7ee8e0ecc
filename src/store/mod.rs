//! A Redis client shared by the resilience primitives (pure Rust, no PyO3).
//!
//! [`Store::connect`] validates a [`StoreConfig`], builds a small tokio runtime
//! that the store owns, and connects: one multiplexed connection to a single
//! server (`redis://`, `rediss://`, `unix://`), or a cluster connection to a
//! Redis Cluster. Every call is bounded by the configured timeout, so no caller
//! waits longer than `timeout` for Redis, whatever the server or network does.
//!
//! Connection management is the store's own rather than the redis crate's
//! `ConnectionManager`: when the connection is lost, calls fail at once with
//! [`StoreError::Unavailable`] (so callers apply their fallback immediately
//! instead of queueing behind a reconnect) while one background task
//! reconnects with exponential backoff (50 ms doubling to 2 s, jittered).
//! A connection that answers nothing for a second while calls time out is
//! treated as lost too (a vanished host sends no reset).
//!
//! For the users of the store (the limiter, the breaker):
//! - [`Store::key`] prefixes a key with the configured `key_prefix`.
//! - [`Script`] holds Lua source and its SHA1; [`Store::eval`] runs it with
//!   `EVALSHA` and, on `NOSCRIPT` (after a restart, a failover or a
//!   `SCRIPT FLUSH`), with `EVAL` (which also caches it again), all within the
//!   timeout. [`Store::eval_blocking`] is the same for synchronous callers:
//!   it parks the calling thread (call it with the GIL released).
//! - [`Store::query`] / [`Store::query_blocking`] run any other command.
//! - [`Store::spawn`] runs a future on the store's runtime;
//!   [`Store::publish`] publishes; [`Store::subscribe`] returns a
//!   `tokio::sync::broadcast::Receiver<Push>` fed by one pub/sub connection
//!   that re-subscribes after every reconnect and then sends
//!   [`Push::Subscribed`] (re-read any state that may have changed meanwhile).
//! - [`StoreError::falls_back`] says whether an error means "Redis is not
//!   usable right now" (apply the fallback policy and
//!   [`Store::record_fallback`]) or a reply that the caller must report (a
//!   key holding the wrong type, a script error).
//! - [`Store::health`] and [`Store::counters`] feed `/health` and `/metrics`.
//!
//! [`Store::close`] makes every later call fail with [`StoreError::Closed`];
//! the runtime itself stops when the last `Arc<Store>` is dropped.

mod config;
mod health;
mod pubsub;
mod scan;
#[cfg(test)]
pub mod testing;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, ToRedisArgs, Value};
use tokio::runtime::{Handle, Runtime};

pub use config::{check_key_part, redact_url, StoreConfig};
pub use health::{Counters, HealthSnapshot};
pub use pubsub::Push;

use health::Health;

/// Why a store call did not produce a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// `close()` was called.
    Closed,
    /// No usable connection: refused, lost, cluster down, server loading...
    Unavailable(String),
    /// No reply within the timeout.
    Timeout(Duration),
    /// The server refused the credentials (or the ACL user lacks a permission).
    Auth(String),
    /// The server answered with an error the caller must report: a key of the
    /// wrong type, a script error, a malformed reply.
    Reply(String),
    /// The configuration is unusable (a bad URL, prefix or timeout).
    Config(String),
}

impl StoreError {
    /// True when Redis is not usable right now (closed, unreachable, too slow,
    /// credentials refused): callers apply their fallback policy.
    pub fn falls_back(&self) -> bool {
        matches!(
            self,
            StoreError::Closed
                | StoreError::Unavailable(_)
                | StoreError::Timeout(_)
                | StoreError::Auth(_)
        )
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Closed => f.write_str("store is closed"),
            StoreError::Unavailable(m) => write!(f, "Redis is unavailable: {m}"),
            StoreError::Timeout(t) => {
                write!(f, "Redis did not answer within {} ms", fmt_ms(*t))
            }
            StoreError::Auth(m) => write!(f, "Redis refused the credentials: {m}"),
            StoreError::Reply(m) => write!(f, "Redis error: {m}"),
            StoreError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

fn fmt_ms(t: Duration) -> String {
    let ms = t.as_secs_f64() * 1000.0;
    if ms.fract() == 0.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

/// Lua source and its SHA1, for `EVALSHA`.
#[derive(Clone, Debug)]
pub struct Script {
    source: String,
    sha: String,
}

impl Script {
    pub fn new(source: &str) -> Script {
        Script {
            source: source.to_owned(),
            sha: redis::Script::new(source).get_hash().to_owned(),
        }
    }

    pub fn sha(&self) -> &str {
        &self.sha
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn send(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        self.send_to(cmd, None).await
    }

    /// `route` picks a cluster node (a single server ignores it).
    async fn send_to(
        &mut self,
        cmd: &Cmd,
        route: Option<&RoutingInfo>,
    ) -> redis::RedisResult<Value> {
        // Error replies arrive as `Value::ServerError`: make them errors.
        match (self, route) {
            (Conn::Single(c), _) => c.req_packed_command(cmd).await?.extract_error(),
            (Conn::Cluster(c), None) => c.req_packed_command(cmd).await?.extract_error(),
            (Conn::Cluster(c), Some(r)) => c
                .route_command(cmd.clone(), r.clone())
                .await?
                .extract_error(),
        }
    }
}

// One per store: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// Runtime threads: the connection's reader/writer task, reconnects and
/// pub/sub are all I/O bound; one thread keeps wake-ups on one core.
const RUNTIME_THREADS: usize = 1;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection whose calls time out and that answered nothing for this long
/// is replaced.
const STALL: Duration = Duration::from_secs(1);

pub(crate) struct Inner {
    config: StoreConfig,
    client: Client,
    /// Clients for the pub/sub connection: the URL, or each cluster node.
    pubsub_clients: Vec<redis::Client>,
    /// The connection and its generation (a failure only takes down the
    /// connection it happened on).
    conn: RwLock<Option<(u64, Conn)>>,
    generation: AtomicU64,
    closed: AtomicBool,
    reconnecting: AtomicBool,
    /// Micros since `started` of the last reply.
    last_reply_us: AtomicU64,
    started: Instant,
    loaded: Mutex<HashSet<String>>,
    health: Health,
    hub: pubsub::Hub,
}

/// A connection to Redis (or a Redis Cluster) with its own runtime.
pub struct Store {
    inner: Arc<Inner>,
    handle: Handle,
    runtime: Mutex<Option<Runtime>>,
}

impl Store {
    /// Builds the runtime and connects within `connect_timeout`.
    ///
    /// Fails on an unusable configuration and on an answer that will not
    /// change by retrying (wrong password, unknown database). When the server
    /// does not answer at all, returns a store that reports
    /// [`StoreError::Unavailable`] and keeps connecting in the background.
    pub fn connect(config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        let client = if config.cluster {
            let mut b =
                redis::cluster::ClusterClientBuilder::new(config.urls.iter().map(String::as_str))
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.timeout);
            b = b.retries(3);
            Client::Cluster(b.build().map_err(|e| config_error(&config, &e))?)
        } else {
            Client::Single(
                redis::Client::open(config.urls[0].as_str())
                    .map_err(|e| config_error(&config, &e))?,
            )
        };
        let pubsub_clients = config
            .urls
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config_error(&config, &e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("llmedge-redis")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the I/O runtime: {e}")))?;
        let store = Arc::new(Store {
            inner: Arc::new(Inner {
                config,
                client,
                pubsub_clients,
                conn: RwLock::new(None),
                generation: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                reconnecting: AtomicBool::new(false),
                last_reply_us: AtomicU64::new(0),
                started: Instant::now(),
                loaded: Mutex::new(HashSet::new()),
                health: Health::default(),
                hub: pubsub::Hub::default(),
            }),
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        });
        let inner = Arc::clone(&store.inner);
        match store.block_on(async move { inner.open().await }) {
            Ok(conn) => store.inner.install(conn, false),
            Err(e) if e.is_permanent() => return Err(e.into_error()),
            Err(e) => {
                store.inner.health.set_last_error(e.to_string());
                Inner::reconnect_in_background(&store.inner, &store.handle);
            }
        }
        store.handle.spawn(heartbeat(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn timeout(&self) -> Duration {
        self.inner.config.timeout
    }

    pub fn key_prefix(&self) -> &str {
        &self.inner.config.key_prefix
    }

    /// `suffix` with the key prefix in front.
    pub fn key(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.key_prefix().len() + suffix.len());
        k.push_str(self.key_prefix());
        k.push_str(suffix);
        k
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Relaxed)
    }

    /// Changes each time a connection is (re-)established: state derived
    /// from earlier replies may be stale (the server may have restarted empty).
    pub fn connection_generation(&self) -> u64 {
        self.inner.generation.load(Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.inner.health.connected.load(Relaxed)
    }

    /// Runs `script` (EVALSHA, then EVAL on NOSCRIPT) within the timeout.
    pub async fn eval<K: ToRedisArgs, A: ToRedisArgs>(
        &self,
        script: &Script,
        keys: &[K],
        args: &[A],
    ) -> Result<Value, StoreError> {
        self.inner.eval(script, keys, args, self.timeout()).await
    }

    /// [`Store::eval`] bounded by `timeout` instead of the configured one:
    /// for background work that no request waits for, where giving up early
    /// would only repeat the work.
    pub async fn eval_within<K: ToRedisArgs, A: ToRedisArgs>(
        &self,
        timeout: Duration,
        script: &Script,
        keys: &[K],
        args: &[A],
    ) -> Result<Value, StoreError> {
        self.inner.eval(script, keys, args, timeout).await
    }

    /// [`Store::eval`] for a synchronous caller: parks the thread for at most
    /// the timeout.
    pub fn eval_blocking<K: ToRedisArgs + Sync, A: ToRedisArgs + Sync>(
        &self,
        script: &Script,
        keys: &[K],
        args: &[A],
    ) -> Result<Value, StoreError> {
        self.block_on(self.inner.eval(script, keys, args, self.timeout()))
    }

    /// Any command, within the timeout.
    pub async fn query(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        self.query_routed(cmd, None).await
    }

    /// [`Store::query`] sent to the cluster node `route` picks.
    async fn query_routed(
        &self,
        cmd: &Cmd,
        route: Option<&RoutingInfo>,
    ) -> Result<Value, StoreError> {
        self.inner.bounded(self.inner.send(cmd, route)).await
    }

    pub fn query_blocking(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        self.block_on(self.query(cmd))
    }

    /// Round-trip time of a `PING`.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        self.query(&redis::cmd("PING")).await?;
        Ok(started.elapsed())
    }

    pub fn ping_blocking(&self) -> Result<Duration, StoreError> {
        self.block_on(self.ping())
    }

    /// `PUBLISH channel payload` (the channel is used as given: prefix it
    /// with [`Store::key`]); the number of subscribers that received it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<i64, StoreError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        match self.query(&cmd).await? {
            Value::Int(n) => Ok(n),
            other => Err(StoreError::Reply(format!(
                "PUBLISH answered {other:?}, expected an integer"
            ))),
        }
    }

    /// A receiver of the messages on `channel` (used as given). One pub/sub
    /// connection serves every channel of the store; after it is
    /// (re-)established each receiver gets [`Push::Subscribed`]. A receiver
    /// that falls more than 256 messages behind sees `RecvError::Lagged`.
    pub fn subscribe(&self, channel: &str) -> tokio::sync::broadcast::Receiver<Push> {
        pubsub::subscribe(&self.inner, &self.handle, channel)
    }

    /// Runs `fut` on the store's runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// The runtime's handle (for timers and tasks of the store's users).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Drives `fut` to completion from a synchronous caller.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        if Handle::try_current().is_ok() {
            // A thread inside some runtime must not block it: drive the
            // future from a scoped thread instead (rare: sync code called
            // from async Rust).
            std::thread::scope(|s| {
                s.spawn(|| self.handle.block_on(fut))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            self.handle.block_on(fut)
        }
    }

    /// Counts one decision a user of the store took locally because Redis
    /// was not usable.
    pub fn record_fallback(&self) {
        self.inner.health.fallbacks.fetch_add(1, Relaxed);
    }

    pub fn counters(&self) -> Counters {
        self.inner.health.snapshot()
    }

    pub fn health(&self) -> HealthSnapshot {
        let h = &self.inner.health;
        let rtt = h.rtt_percentiles();
        HealthSnapshot {
            connected: h.connected.load(Relaxed) && !self.is_closed(),
            cluster: self.inner.config.cluster,
            url: self.inner.config.redacted_urls().join(","),
            last_error: h.last_error(),
            rtt_p50_ms: rtt.map(|r| r.0),
            rtt_p99_ms: rtt.map(|r| r.1),
            scripts_loaded: self.inner.loaded.lock().len(),
            counters: h.snapshot(),
        }
    }

    /// Drops the connections; every later call fails with
    /// [`StoreError::Closed`]. Idempotent.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Relaxed) {
            return;
        }
        self.inner.conn.write().take();
        self.inner.health.connected.store(false, Relaxed);
        self.inner.hub.close();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
        if let Some(rt) = self.runtime.lock().take() {
            // Never blocks, so the last reference may go away anywhere
            // (a Python finaliser, or a task on this very runtime).
            rt.shutdown_background();
        }
    }
}

fn config_error(config: &StoreConfig, e: &RedisError) -> StoreError {
    StoreError::Config(format!(
        "{} is not a usable Redis URL: {e}",
        config.redacted_urls().join(", ")
    ))
}

/// A connection attempt's failure: permanent ones fail construction.
enum OpenError {
    Permanent(StoreError),
    Transient(StoreError),
}

impl OpenError {
    fn is_permanent(&self) -> bool {
        matches!(self, OpenError::Permanent(_))
    }

    fn into_error(self) -> StoreError {
        match self {
            OpenError::Permanent(e) | OpenError::Transient(e) => e,
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Permanent(e) | OpenError::Transient(e) => e.fmt(f),
        }
    }
}

/// Maps a redis crate error (the connection's generation is `gen`).
fn classify(e: &RedisError) -> StoreError {
    let msg = e.to_string();
    let kind = e.kind();
    if e.is_timeout() {
        return StoreError::Unavailable(format!("timed out: {msg}"));
    }
    if let ErrorKind::Server(k) = kind {
        return match k {
            ServerErrorKind::BusyLoading
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask => StoreError::Unavailable(msg),
            ServerErrorKind::NoPerm => StoreError::Auth(msg),
            _ => StoreError::Reply(msg),
        };
    }
    match kind {
        ErrorKind::AuthenticationFailed => StoreError::Auth(msg),
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => StoreError::Unavailable(msg),
        _ if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
            StoreError::Unavailable(msg)
        }
        _ => match e.code() {
            Some("NOAUTH" | "WRONGPASS") => StoreError::Auth(msg),
            Some("BUSY" | "OOM" | "LOADING" | "CLUSTERDOWN" | "MASTERDOWN") => {
                StoreError::Unavailable(msg)
            }
            _ => StoreError::Reply(msg),
        },
    }
}

fn is_noscript(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(ServerErrorKind::NoScript)) || e.code() == Some("NOSCRIPT")
}

/// Checks the connection every `health_interval` while nothing else does,
/// so that a lost server shows in `health()` without traffic. Ends with the
/// store.
async fn heartbeat(inner: std::sync::Weak<Inner>) {
    let Some(interval) = inner.upgrade().map(|i| i.config.health_interval) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Relaxed) {
            return;
        }
        inner.beat().await;
    }
}

/// Delay before the next reconnect attempt: `base` scaled by 0.5..1.5.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

impl Inner {
    fn current(&self) -> Result<(u64, Conn), StoreError> {
        if self.closed.load(Relaxed) {
            return Err(StoreError::Closed);
        }
        match &*self.conn.read() {
            Some((gen, conn)) => Ok((*gen, conn.clone())),
            None => {
                let last = self.health.last_error();
                let last = last.as_deref().unwrap_or("connecting");
                Err(StoreError::Unavailable(format!(
                    "not connected ({})",
                    last.strip_prefix("Redis is unavailable: ").unwrap_or(last)
                )))
            }
        }
    }

    fn install(&self, conn: Conn, reconnect: bool) {
        if self.closed.load(Relaxed) {
            return;
        }
        let gen = self.generation.fetch_add(1, Relaxed) + 1;
        self.loaded.lock().clear();
        *self.conn.write() = Some((gen, conn));
        self.touch();
        self.health.connected.store(true, Relaxed);
        if reconnect {
            self.health.reconnects.fetch_add(1, Relaxed);
        }
    }

    fn touch(&self) {
        let us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_reply_us.store(us, Relaxed);
    }

    /// Takes connection `gen` down (if it is still the current one) and
    /// starts reconnecting.
    fn lost(self: &Arc<Self>, gen: u64, handle: &Handle) {
        {
            let mut conn = self.conn.write();
            match &*conn {
                Some((g, _)) if *g == gen => *conn = None,
                _ => return,
            }
        }
        self.health.connected.store(false, Relaxed);
        Inner::reconnect_in_background(self, handle);
    }

    /// Connects, authenticates (a `PING` surfaces NOAUTH) within
    /// `connect_timeout`.
    async fn open(&self) -> Result<Conn, OpenError> {
        let attempt = async {
            let mut conn = match &self.client {
                Client::Single(c) => {
                    let cfg = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.config.connect_timeout))
                        .set_response_timeout(None);
                    Conn::Single(c.get_multiplexed_async_connection_with_config(&cfg).await?)
                }
                Client::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
            };
            conn.send(&redis::cmd("PING")).await?;
            Ok::<Conn, RedisError>(conn)
        };
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => {
                let err = classify(&e);
                let shown = self.config.redacted_urls().join(", ");
                let permanent = matches!(err, StoreError::Auth(_))
                    || (matches!(err, StoreError::Reply(_))
                        && !matches!(e.kind(), ErrorKind::Client | ErrorKind::Parse))
                    || e.kind() == ErrorKind::InvalidClientConfig;
                let err = match err {
                    StoreError::Auth(m) => StoreError::Auth(format!("{m} (connecting to {shown})")),
                    StoreError::Unavailable(m) | StoreError::Reply(m) => {
                        StoreError::Unavailable(format!("cannot connect to {shown}: {m}"))
                    }
                    other => other,
                };
                if permanent {
                    Err(OpenError::Permanent(match err {
                        StoreError::Unavailable(m) => StoreError::Config(m),
                        other => other,
                    }))
                } else {
                    Err(OpenError::Transient(err))
                }
            }
            Err(_) => Err(OpenError::Transient(StoreError::Unavailable(format!(
                "cannot connect to {} within {} ms",
                self.config.redacted_urls().join(", "),
                fmt_ms(self.config.connect_timeout)
            )))),
        }
    }

    fn reconnect_in_background(this: &Arc<Self>, handle: &Handle) {
        if this.closed.load(Relaxed) || this.reconnecting.swap(true, Relaxed) {
            return;
        }
        let inner = Arc::clone(this);
        handle.spawn(async move {
            let mut delay = BACKOFF_MIN;
            while !inner.closed.load(Relaxed) {
                match inner.open().await {
                    Ok(conn) => {
                        inner.reconnecting.store(false, Relaxed);
                        inner.install(conn, true);
                        return;
                    }
                    Err(e) => inner.health.set_last_error(e.to_string()),
                }
                tokio::time::sleep(jittered(delay)).await;
                delay = (delay * 2).min(BACKOFF_MAX);
            }
            inner.reconnecting.store(false, Relaxed);
        });
    }

    /// One command on the current connection (not bounded: see `bounded`).
    async fn send_on(
        &self,
        gen: u64,
        conn: &mut Conn,
        cmd: &Cmd,
        route: Option<&RoutingInfo>,
    ) -> Result<Value, (u64, RedisError)> {
        self.health.calls.fetch_add(1, Relaxed);
        match conn.send_to(cmd, route).await {
            Ok(v) => {
                self.touch();
                Ok(v)
            }
            Err(e) => Err((gen, e)),
        }
    }

    async fn send(
        self: &Arc<Self>,
        cmd: &Cmd,
        route: Option<&RoutingInfo>,
    ) -> Result<Value, StoreError> {
        let (gen, mut conn) = self.current()?;
        self.send_on(gen, &mut conn, cmd, route)
            .await
            .map_err(|(gen, e)| self.failed(gen, &e))
    }

    /// Records a failed call and maps its error; takes a single-server
    /// connection down when the failure was the connection's.
    fn failed(self: &Arc<Self>, gen: u64, e: &RedisError) -> StoreError {
        let err = classify(e);
        self.health.errors.fetch_add(1, Relaxed);
        self.health.set_last_error(err.to_string());
        let connection_gone = matches!(err, StoreError::Unavailable(_))
            && (e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error());
        if connection_gone && matches!(self.client, Client::Single(_)) {
            if let Ok(handle) = Handle::try_current() {
                self.lost(gen, &handle);
            }
        }
        err
    }

    async fn eval<K: ToRedisArgs, A: ToRedisArgs>(
        self: &Arc<Self>,
        script: &Script,
        keys: &[K],
        args: &[A],
        timeout: Duration,
    ) -> Result<Value, StoreError> {
        let run = async {
            let (gen, mut conn) = self.current()?;
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.sha()).arg(keys.len()).arg(keys).arg(args);
            let reply = match self.send_on(gen, &mut conn, &cmd, None).await {
                Err((gen, e)) if is_noscript(&e) => {
                    self.loaded.lock().remove(script.sha());
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(script.source()).arg(keys.len()).arg(keys).arg(args);
                    self.send_on(gen, &mut conn, &cmd, None).await
                }
                other => other,
            };
            match reply {
                Ok(v) => {
                    let mut loaded = self.loaded.lock();
                    if !loaded.contains(script.sha()) {
                        loaded.insert(script.sha().to_owned());
                    }
                    Ok(v)
                }
                Err((gen, e)) => Err(self.failed(gen, &e)),
            }
        };
        self.bounded_by(timeout, run).await
    }

    /// Bounds a call by the timeout and records its round trip or timeout.
    async fn bounded<T>(
        self: &Arc<Self>,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.bounded_by(self.config.timeout, fut).await
    }

    async fn bounded_by<T>(
        self: &Arc<Self>,
        timeout: Duration,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => {
                self.health.record_rtt(started.elapsed());
                Ok(v)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let err = StoreError::Timeout(timeout);
                self.health.timeouts.fetch_add(1, Relaxed);
                self.health.errors.fetch_add(1, Relaxed);
                self.health.set_last_error(err.to_string());
                self.check_stall();
                Err(err)
            }
        }
    }

    /// One heartbeat: a `PING` unless a reply arrived within the last half
    /// interval (traffic already proves the connection). Not counted as a
    /// call; a failure is recorded as the last error, takes a lost
    /// single-server connection down (the reconnect loop then brings it
    /// back) and marks a cluster disconnected until a `PING` answers again.
    async fn beat(self: &Arc<Self>) {
        let now_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let quiet_us = u64::try_from((self.config.health_interval / 2).as_micros()).unwrap_or(0);
        if now_us.saturating_sub(self.last_reply_us.load(Relaxed)) < quiet_us {
            return;
        }
        let Ok((gen, mut conn)) = self.current() else {
            return; // closed, or the reconnect loop is at work
        };
        let cluster = matches!(conn, Conn::Cluster(_));
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.config.timeout, conn.send(&ping)).await {
            Ok(Ok(_)) => {
                self.touch();
                self.health.connected.store(true, Relaxed);
            }
            Ok(Err(e)) => {
                let err = classify(&e);
                self.health.set_last_error(format!("heartbeat: {err}"));
                if !err.falls_back() {
                    return; // an answer, if not PONG: the server is there
                }
                if cluster {
                    self.health.connected.store(false, Relaxed);
                } else if let Ok(handle) = Handle::try_current() {
                    self.lost(gen, &handle);
                }
            }
            Err(_) => {
                self.health.set_last_error(format!(
                    "heartbeat: {}",
                    StoreError::Timeout(self.config.timeout)
                ));
                if cluster {
                    self.health.connected.store(false, Relaxed);
                } else {
                    self.check_stall();
                }
            }
        }
    }

    /// After a timeout: replace a single-server connection that has not
    /// answered anything for `STALL`.
    fn check_stall(self: &Arc<Self>) {
        if !matches!(self.client, Client::Single(_)) {
            return;
        }
        let now_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let silent = now_us.saturating_sub(self.last_reply_us.load(Relaxed));
        if silent < u64::try_from(STALL.as_micros()).unwrap_or(u64::MAX) {
            return;
        }
        let gen = self.conn.read().as_ref().map(|(g, _)| *g);
        if let (Some(gen), Ok(handle)) = (gen, Handle::try_current()) {
            self.health
                .set_last_error(format!("no reply for {} ms: reconnecting", silent / 1000));
            self.lost(gen, &handle);
        }
    }
}

#[cfg(test)]
mod tests;
