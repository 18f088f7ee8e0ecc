//! A breaker whose state is shared through Redis by every process that uses
//! the same name on the same store.
//!
//! The decision for a call never waits for Redis while the circuit is closed:
//! each process keeps a mirror of the shared state and admits from it;
//! outcomes go into a [`protocol::Batch`] that a background task reports every
//! [`FLUSH_INTERVAL`] (at once after a failure). The report script counts the
//! batch into the cluster-wide window and opens the circuit when a threshold
//! is crossed; every transition is published, and each process's subscriber
//! updates its mirror. When the process's own batch already crosses the
//! threshold on top of the last shared counts it opens its mirror at once
//! (the report confirms it milliseconds later).
//!
//! Only half-open probes take a round trip (a lease in Redis, so exactly
//! `half_open_max_calls` probes run across processes); their outcomes are
//! settled in the background.
//!
//! Redis loss: a shadow [`Breaker`] receives every outcome of this process
//! and is kept in step with the shared state; while Redis is unusable it
//! decides alone ("local fallback"), and the first successful report adopts
//! the shared state again.

pub mod protocol;
mod runtime;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Breaker, BreakerConfig, Metrics, Permit, Rejection, State, Transition};
use crate::store::{Script, Store, StoreError};
use protocol::{Batch, Grant, Snapshot};

/// How long a batch gathers outcomes before it is reported (a failure reports at once).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// How often an idle process re-reads the shared state (in case an event was lost).
pub const IDLE_SYNC: Duration = Duration::from_secs(1);
/// How often a process in local fallback tries Redis again.
pub const FALLBACK_RETRY: Duration = Duration::from_millis(100);

/// What an admission decided without I/O.
#[derive(Debug)]
pub enum Admission {
    Admitted(Permit),
    Rejected(Rejection),
    /// A half-open probe lease is needed: call [`SharedBreaker::acquire_lease`].
    NeedsLease,
}

/// The shared state as this process last heard it.
#[derive(Debug)]
struct Mirror {
    snap: Option<Snapshot>,
    state: State,
    epoch: u64,
    /// Local monotonic time at which an open circuit admits a probe.
    open_until: f64,
    entered_at: f64,
    /// Half-open with every lease taken: reject locally until then (the
    /// first lease's expiry; a settled probe is pushed earlier).
    leases_full_until: f64,
}

#[derive(Debug)]
struct Inner {
    mirror: Mirror,
    batch: Batch,
    /// The batch being reported (counted in the next snapshot).
    in_flight: Option<Batch>,
    local: Breaker,
    fallback: bool,
    /// The mirror was opened from this process's own batch, which has not
    /// been reported yet: replies and events from before it do not close it.
    provisional: bool,
}

impl Inner {
    fn visible(&self) -> State {
        if self.fallback {
            self.local.state()
        } else {
            self.mirror.state
        }
    }
}

pub(super) struct Scripts {
    report: Script,
    acquire: Script,
    probe_done: Script,
    control: Script,
}

pub struct Shared {
    name: String,
    cfg: BreakerConfig,
    store: Arc<Store>,
    keys: [String; 3],
    args: Vec<String>,
    scripts: Scripts,
    clock: fn() -> f64,
    inner: Mutex<Inner>,
    transitions: Mutex<Vec<Transition>>,
    has_transitions: AtomicBool,
    /// Wakes the reporter: a batch started, a failure waits, or a re-read is due.
    wake: tokio::sync::Notify,
    /// A failure waits: report without gathering more outcomes.
    urgent: AtomicBool,
    sync_needed: AtomicBool,
    instance: String,
    leases: AtomicU64,
    store_errors: AtomicU64,
    fallbacks: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The handle the binding holds; dropping it stops the background tasks.
pub struct SharedBreaker {
    shared: Arc<Shared>,
    _stop: tokio::sync::watch::Sender<()>,
}

/// A shared breaker's metrics: the local ones with the shared state's view.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedMetrics {
    pub metrics: Metrics,
    pub local_fallback_active: bool,
    pub store_errors: u64,
    pub fallbacks: u64,
    pub last_error: Option<String>,
}

fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}.{:x}", std::process::id(), nanos)
}

impl SharedBreaker {
    /// Starts sharing `name`'s state on `store`; `cfg` must have passed
    /// `validate`. `clock` reads local monotonic seconds (the scale of the
    /// `now` arguments).
    pub fn new(store: Arc<Store>, name: &str, cfg: BreakerConfig, clock: fn() -> f64) -> Self {
        let now = clock();
        let channel = store.key(&protocol::channel(""));
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            keys: protocol::keys(store.key_prefix(), name),
            args: protocol::config_args(&cfg, name, &channel),
            scripts: Scripts {
                report: Script::new(&protocol::REPORT),
                acquire: Script::new(&protocol::ACQUIRE),
                probe_done: Script::new(&protocol::PROBE_DONE),
                control: Script::new(&protocol::CONTROL),
            },
            clock,
            inner: Mutex::new(Inner {
                mirror: Mirror {
                    snap: None,
                    state: State::Closed,
                    epoch: 0,
                    open_until: now,
                    entered_at: now,
                    leases_full_until: now,
                },
                batch: Batch::for_config(&cfg, 0),
                in_flight: None,
                local: Breaker::new(cfg.clone(), now),
                fallback: false,
                provisional: false,
            }),
            cfg,
            store,
            transitions: Mutex::new(Vec::new()),
            has_transitions: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            urgent: AtomicBool::new(false),
            sync_needed: AtomicBool::new(true),
            instance: instance_id(),
            leases: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let stop = runtime::start(&shared, &channel);
        SharedBreaker {
            shared,
            _stop: stop,
        }
    }

    /// The state calls are decided by (the local one during a fallback).
    pub fn state(&self) -> State {
        self.shared.inner.lock().visible()
    }

    pub fn local_fallback_active(&self) -> bool {
        self.shared.inner.lock().fallback
    }

    /// Admits from the mirror, with no I/O.
    pub fn try_admit(&self, now: f64) -> Admission {
        let sh = &self.shared;
        let mut g = sh.inner.lock();
        if g.fallback {
            sh.fallbacks.fetch_add(1, Relaxed);
            sh.store.record_fallback();
            let res = g.local.acquire(now);
            drop(g);
            return match res {
                Ok((p, t)) => {
                    sh.push_transition(t);
                    Admission::Admitted(p)
                }
                Err(r) => Admission::Rejected(r),
            };
        }
        let epoch = g.mirror.epoch;
        let plain = Permit {
            epoch,
            probe: false,
            start: now,
            lease: 0,
            shared: true,
        };
        match g.mirror.state {
            State::Closed | State::Disabled => Admission::Admitted(plain),
            State::Open if now < g.mirror.open_until => {
                let retry_after = g.mirror.open_until - now;
                g.local.note_rejection();
                Admission::Rejected(Rejection {
                    state: State::Open,
                    retry_after,
                })
            }
            State::ForcedOpen => {
                g.local.note_rejection();
                let retry_after = g.mirror.snap.as_ref().map_or(0.0, |s| s.recovery);
                Admission::Rejected(Rejection {
                    state: State::ForcedOpen,
                    retry_after,
                })
            }
            State::HalfOpen if now < g.mirror.leases_full_until => {
                g.local.note_rejection();
                Admission::Rejected(Rejection {
                    state: State::HalfOpen,
                    retry_after: 0.0,
                })
            }
            State::Open | State::HalfOpen => Admission::NeedsLease,
        }
    }

    /// Asks Redis for a probe lease (one round trip, at most the store's
    /// timeout); on a store error, decides locally.
    pub async fn acquire_lease(&self, now: f64) -> Result<Permit, Rejection> {
        let sh = &self.shared;
        let n = sh.leases.fetch_add(1, Relaxed) + 1;
        let mut args = sh.args.clone();
        args.push(sh.lease_id(n));
        let reply = sh.store.eval(&sh.scripts.acquire, &sh.keys, &args).await;
        self.settle_lease_reply(reply, n, now)
    }

    /// [`SharedBreaker::acquire_lease`] for a synchronous caller (call it
    /// with the GIL released).
    pub fn acquire_lease_blocking(&self, now: f64) -> Result<Permit, Rejection> {
        self.shared.store.block_on(self.acquire_lease(now))
    }

    fn settle_lease_reply(
        &self,
        reply: Result<redis::Value, StoreError>,
        lease: u64,
        now: f64,
    ) -> Result<Permit, Rejection> {
        let sh = &self.shared;
        match sh.parse(reply) {
            Ok(snap) => {
                let grant = snap.grant;
                let epoch = snap.epoch;
                sh.apply(snap, (sh.clock)(), false);
                match grant {
                    Grant::Probe | Grant::Plain => Ok(Permit {
                        epoch,
                        probe: grant == Grant::Probe,
                        start: now,
                        lease: if grant == Grant::Probe { lease } else { 0 },
                        shared: true,
                    }),
                    Grant::None => {
                        let mut g = sh.inner.lock();
                        g.local.note_rejection();
                        let (state, retry_after) = match g.mirror.state {
                            State::Open => (State::Open, (g.mirror.open_until - now).max(0.0)),
                            s => (s, 0.0),
                        };
                        Err(Rejection { state, retry_after })
                    }
                }
            }
            Err(_) => {
                // Redis is unusable: the fallback decides this call.
                match self.try_admit(now) {
                    Admission::Admitted(p) => Ok(p),
                    Admission::Rejected(r) => Err(r),
                    Admission::NeedsLease => Err(Rejection {
                        state: State::HalfOpen,
                        retry_after: 0.0,
                    }),
                }
            }
        }
    }

    /// Records the outcome of an admitted call that finished at `now`.
    pub fn record(&self, permit: Permit, now: f64, failed: bool) {
        let sh = &self.shared;
        let slow = sh
            .cfg
            .slow_call_duration
            .is_some_and(|d| now - permit.start >= d);
        let mut g = sh.inner.lock();
        if !permit.shared {
            let t = g.local.record(permit, now, failed);
            drop(g);
            sh.push_transition(t);
            return;
        }
        // The shadow hears every outcome, in whatever state it is in.
        let shadow = g.local.plain_permit(permit.start);
        let _ = g.local.record(shadow, now, failed);
        if permit.probe {
            drop(g);
            let bad = failed || slow && sh.cfg.slow_rate_threshold().is_some();
            sh.settle_probe(permit, if bad { "fail" } else { "ok" });
            return;
        }
        if g.fallback || g.mirror.state != State::Closed || permit.epoch != g.mirror.epoch {
            return; // a stale outcome, or one the shared state cannot use now
        }
        if g.batch.epoch != permit.epoch {
            g.batch = Batch::for_config(&sh.cfg, permit.epoch);
        }
        let first = g.batch.is_empty();
        g.batch.push(failed, slow);
        let opens = match &g.in_flight {
            Some(f) if f.epoch == g.batch.epoch => {
                runtime::would_open(&sh.cfg, g.mirror.snap.as_ref(), &f.then(&g.batch))
            }
            _ => runtime::would_open(&sh.cfg, g.mirror.snap.as_ref(), &g.batch),
        };
        if opens {
            let recovery = g
                .mirror
                .snap
                .as_ref()
                .map_or(sh.cfg.recovery_timeout, |s| s.recovery);
            g.mirror.state = State::Open;
            g.provisional = true;
            g.mirror.open_until = now + recovery;
            g.mirror.entered_at = now;
            drop(g);
            sh.push_transition(Some(Transition {
                from: State::Closed,
                to: State::Open,
            }));
        } else {
            drop(g);
        }
        if failed {
            sh.urgent.store(true, Relaxed);
            sh.wake.notify_one();
        } else if first {
            sh.wake.notify_one();
        }
    }

    /// Hands back a permit without an outcome.
    pub fn release(&self, permit: Permit) {
        let sh = &self.shared;
        if !permit.shared {
            sh.inner.lock().local.release(permit);
        } else if permit.probe {
            sh.settle_probe(permit, "release");
        }
    }

    /// Closes the circuit everywhere (locally when Redis is unusable).
    pub fn reset(&self, now: f64) {
        self.control("reset", now, |b, now| b.reset(now));
    }

    pub fn force_open(&self, now: f64) {
        self.control("force_open", now, |b, now| b.force_open(now));
    }

    pub fn disable(&self, now: f64) {
        self.control("disable", now, |b, now| b.disable(now));
    }

    fn control(&self, op: &str, now: f64, local: fn(&mut Breaker, f64) -> Option<Transition>) {
        let sh = &self.shared;
        let mut args = sh.args.clone();
        args.push(op.to_owned());
        let reply = sh
            .store
            .block_on(sh.store.eval(&sh.scripts.control, &sh.keys, &args));
        match sh.parse(reply) {
            Ok(snap) => sh.apply(snap, now, false),
            Err(_) => {
                let t = local(&mut sh.inner.lock().local, now);
                sh.push_transition(t);
            }
        }
    }

    /// Transitions seen since the last call, oldest first (for the listeners).
    pub fn take_transitions(&self) -> Vec<Transition> {
        if !self.shared.has_transitions.load(Relaxed) {
            return Vec::new();
        }
        self.shared.has_transitions.store(false, Relaxed);
        std::mem::take(&mut *self.shared.transitions.lock())
    }

    pub fn metrics(&self, now: f64) -> SharedMetrics {
        let sh = &self.shared;
        let g = sh.inner.lock();
        let mut m = g.local.metrics(now);
        if !g.fallback {
            if let Some(s) = &g.mirror.snap {
                m.state = g.mirror.state;
                m.window = s.window;
                let ratio = |n: u64| {
                    if s.window.calls == 0 {
                        0.0
                    } else {
                        n as f64 / s.window.calls as f64
                    }
                };
                m.failure_rate = ratio(s.window.failures);
                m.slow_call_rate = ratio(s.window.slow);
                m.consecutive_failures = s.consecutive_failures;
                m.recovery_timeout = s.recovery;
                m.time_in_state = (now - g.mirror.entered_at).max(0.0);
                m.half_open_in_flight = if g.mirror.state == State::HalfOpen {
                    sh.cfg.half_open_max_calls.saturating_sub(s.free_leases)
                } else {
                    0
                };
                (m.next_attempt_at, m.retry_after) = match g.mirror.state {
                    State::Open => (
                        Some(g.mirror.open_until),
                        (g.mirror.open_until - now).max(0.0),
                    ),
                    State::ForcedOpen => (None, s.recovery),
                    _ => (None, 0.0),
                };
            }
        }
        SharedMetrics {
            metrics: m,
            local_fallback_active: g.fallback,
            store_errors: sh.store_errors.load(Relaxed),
            fallbacks: sh.fallbacks.load(Relaxed),
            last_error: sh.last_error.lock().clone(),
        }
    }
}

impl Shared {
    /// Lease numbers start at 1 (a permit's 0 means "no lease").
    fn lease_id(&self, n: u64) -> String {
        format!("{}.{n}", self.instance)
    }

    fn push_transition(&self, t: Option<Transition>) {
        if let Some(t) = t.filter(|t| t.from != t.to) {
            self.transitions.lock().push(t);
            self.has_transitions.store(true, Relaxed);
        }
    }

    /// A script's reply as a snapshot; a store error switches to the local
    /// fallback (and is counted).
    fn parse(&self, reply: Result<redis::Value, StoreError>) -> Result<Snapshot, StoreError> {
        let res = reply.and_then(|v| {
            redis::from_redis_value::<Vec<String>>(v)
                .map_err(|e| StoreError::Reply(format!("breaker script reply: {e}")))
                .and_then(|f| Snapshot::parse(&f).map_err(StoreError::Reply))
        });
        if let Err(e) = &res {
            self.store_errors.fetch_add(1, Relaxed);
            *self.last_error.lock() = Some(e.to_string());
            self.enter_fallback();
        }
        res
    }

    fn enter_fallback(&self) {
        let mut g = self.inner.lock();
        if g.fallback {
            return;
        }
        let from = g.visible();
        g.fallback = true;
        g.provisional = false;
        let to = g.visible();
        drop(g);
        self.push_transition(Some(Transition { from, to }));
    }

    /// Adopts a snapshot newer than the mirror (leaving the fallback).
    /// `settles`: the reply to the report that carried the batch behind a
    /// provisional opening.
    fn apply(&self, snap: Snapshot, now: f64, settles: bool) {
        let mut g = self.inner.lock();
        if let Some(old) = &g.mirror.snap {
            if !snap.newer_than(old) && !g.fallback {
                return;
            }
        }
        if settles {
            g.provisional = false;
        } else if g.provisional && snap.epoch == g.mirror.epoch && snap.state == State::Closed {
            g.mirror.snap = Some(snap); // older news: the opening stands
            return;
        }
        g.provisional = false;
        let from = g.visible();
        g.fallback = false;
        if snap.state != g.mirror.state || snap.epoch != g.mirror.epoch {
            g.mirror.entered_at = now - snap.time_in_state;
        }
        g.mirror.state = snap.state;
        g.mirror.epoch = snap.epoch;
        g.mirror.open_until = now + snap.remaining;
        g.mirror.leases_full_until = if snap.free_leases == 0 {
            now + snap.lease_wait
        } else {
            now
        };
        if g.batch.epoch != snap.epoch {
            g.batch = Batch::for_config(&self.cfg, snap.epoch);
        }
        g.local.adopt(
            snap.state,
            now,
            snap.remaining,
            snap.recovery,
            snap.consecutive_failures,
        );
        g.mirror.snap = Some(snap);
        let to = g.visible();
        drop(g);
        self.push_transition(Some(Transition { from, to }));
    }

    /// Settles a probe lease in the background.
    fn settle_probe(self: &Arc<Self>, permit: Permit, outcome: &'static str) {
        let sh = Arc::clone(self);
        let id = self.lease_id(permit.lease);
        self.store.spawn(async move {
            let mut args = sh.args.clone();
            args.extend([id, permit.epoch.to_string(), outcome.to_owned()]);
            let reply = sh.store.eval(&sh.scripts.probe_done, &sh.keys, &args).await;
            if let Ok(snap) = sh.parse(reply) {
                sh.apply(snap, (sh.clock)(), false);
            }
        });
    }
}
