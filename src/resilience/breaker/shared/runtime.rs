//! The background tasks of a shared breaker, on the store's runtime: the
//! reporter (batches of outcomes, and re-reading the state when idle, after a
//! re-subscription or during a fallback) and the subscriber (transitions
//! pushed by other processes). Both hold a weak reference and end when the
//! breaker is dropped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::protocol::{Batch, Snapshot};
use super::{Shared, FALLBACK_RETRY, FLUSH_INTERVAL, IDLE_SYNC};
use crate::resilience::breaker::{BreakerConfig, Counts};
use crate::store::Push;

/// Starts the tasks; they end when the returned sender is dropped.
pub(super) fn start(shared: &Arc<Shared>, channel: &str) -> watch::Sender<()> {
    let (stop, stopped) = watch::channel(());
    shared.wake.notify_one(); // the first read of the shared state, at once
    let weak = Arc::downgrade(shared);
    shared
        .store
        .spawn(report_loop(weak.clone(), stopped.clone()));
    let rx = shared.store.subscribe(channel);
    shared.store.spawn(listen(weak, rx, stopped));
    stop
}

/// Whether the shared counts `s` (none heard yet: zero) plus this process's
/// `batch` cross a threshold (the decision the report script will take).
pub(super) fn would_open(cfg: &BreakerConfig, s: Option<&Snapshot>, batch: &Batch) -> bool {
    let (consec, window) = s.map_or((0, Counts::default()), |s| {
        (u64::from(s.consecutive_failures), s.window)
    });
    if consec + batch.lead >= u64::from(cfg.failure_threshold)
        || batch.max_run >= u64::from(cfg.failure_threshold)
    {
        return true;
    }
    if !cfg.uses_window() {
        return false;
    }
    let calls = window.calls + batch.calls;
    if calls < u64::from(cfg.minimum_calls) || calls == 0 {
        return false;
    }
    let calls = calls as f64;
    let failures = (window.failures + batch.failures) as f64;
    let slow = (window.slow + batch.slow) as f64;
    cfg.failure_rate_threshold
        .is_some_and(|r| failures >= r * calls)
        || cfg.slow_rate_threshold().is_some_and(|r| slow >= r * calls)
}

async fn report_loop(weak: Weak<Shared>, mut stopped: watch::Receiver<()>) {
    let mut last_report = Instant::now();
    loop {
        {
            let Some(sh) = weak.upgrade() else { return };
            let idle = if sh.inner.lock().fallback {
                FALLBACK_RETRY
            } else {
                IDLE_SYNC.saturating_sub(last_report.elapsed())
            };
            tokio::select! {
                () = sh.wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
                _ = stopped.changed() => return,
            }
            // A batch just started: let it gather outcomes for a while,
            // unless a failure waits (it wakes this wait too).
            let gathering = !sh.inner.lock().batch.is_empty();
            if gathering && !sh.urgent.load(Relaxed) {
                tokio::select! {
                    () = sh.wake.notified() => {}
                    () = tokio::time::sleep(FLUSH_INTERVAL) => {}
                    _ = stopped.changed() => return,
                }
            }
            sh.urgent.store(false, Relaxed);
        }
        let Some(sh) = weak.upgrade() else { return };
        let (batch, fallback, settles) = {
            let mut g = sh.inner.lock();
            let epoch = g.mirror.epoch;
            let batch = (!g.batch.is_empty()).then(|| g.batch.take(epoch));
            g.in_flight = batch.clone();
            (batch, g.fallback, g.provisional)
        };
        let due = batch.is_some()
            || fallback
            || sh.sync_needed.swap(false, Relaxed)
            || last_report.elapsed() >= IDLE_SYNC;
        if !due {
            continue;
        }
        last_report = Instant::now();
        let batch = batch.unwrap_or_else(|| {
            let g = sh.inner.lock();
            Batch::for_config(&sh.cfg, g.mirror.epoch)
        });
        let mut args = sh.args.clone();
        args.extend(batch.args());
        let reply = sh.store.eval(&sh.scripts.report, &sh.keys, &args).await;
        sh.inner.lock().in_flight = None;
        if let Ok(snap) = sh.parse(reply) {
            sh.apply(snap, (sh.clock)(), settles);
        }
    }
}

async fn listen(
    weak: Weak<Shared>,
    mut rx: tokio::sync::broadcast::Receiver<Push>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            _ = stopped.changed() => return,
        };
        let Some(sh) = weak.upgrade() else { return };
        match msg {
            Ok(Push::Message(payload)) => {
                let Ok(text) = std::str::from_utf8(&payload) else {
                    continue;
                };
                // Cheap filter before parsing: the name is the last field.
                if !text.ends_with(sh.name.as_str()) {
                    continue;
                }
                if let Ok((name, snap)) = Snapshot::parse_event(text) {
                    if name == sh.name && !sh.inner.lock().fallback {
                        sh.apply(snap, (sh.clock)(), false);
                    }
                }
            }
            Ok(Push::Subscribed) | Err(RecvError::Lagged(_)) => {
                // Events may have been missed: re-read the state.
                sh.sync_needed.store(true, Relaxed);
                sh.wake.notify_one();
            }
            Err(RecvError::Closed) => return,
        }
    }
}
