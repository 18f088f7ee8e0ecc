//! The background tasks of a shared cache, on the store's runtime: the
//! sender (queued changes to Redis) and the follower (the namespace's stream
//! to the local cache). Both hold a weak reference and end when the cache is
//! dropped. Inserting into the local cache runs on the blocking pool, never
//! on the runtime's I/O thread.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::protocol::{self, Change as Event};
use super::{
    reply_error, wall_us, Change, Inner, JoinError, NewItem, Op, Position, LAG_WINDOW, POLL,
    READ_COUNT, TOMBSTONE_MIN, WRITE_BATCH,
};
use crate::store::{Push, StoreError};

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Starts the tasks; `position` is where the follower starts (None: join
/// first) and whether it must load the namespace first.
pub(super) fn start(inner: &Arc<Inner>, position: Option<(Position, bool)>) -> watch::Sender<()> {
    let (stop, stopped) = watch::channel(());
    let weak = Arc::downgrade(inner);
    inner.store.spawn(send_loop(weak.clone(), stopped.clone()));
    let rx = inner.store.subscribe(&inner.keys.channel);
    inner.store.spawn(follow_loop(weak, rx, position, stopped));
    stop
}

/// Sleeps `d` unless stopped first; false when stopped.
async fn pause(d: Duration, stopped: &mut watch::Receiver<()>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stopped.changed() => false,
    }
}

async fn send_loop(weak: Weak<Inner>, mut stopped: watch::Receiver<()>) {
    let mut retry = RETRY_MIN;
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            let idle = inner.queue.lock().is_empty();
            if idle {
                tokio::select! {
                    () = inner.wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                    _ = stopped.changed() => return,
                }
            }
            match send_some(&inner).await {
                Ok(()) => {
                    retry = RETRY_MIN;
                    continue;
                }
                Err(e) => inner.record_error(&e),
            }
        }
        if !pause(jitter(retry), &mut stopped).await {
            return;
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + f64::from((wall_us() / 1000) as u32 % 1000) / 1000.0)
}

/// Sends the oldest queued changes (a run of sets as one call, or one
/// invalidation); on a Redis failure they go back to the queue's front.
async fn send_some(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let generation = inner.store.connection_generation();
    if inner.joined.load(Relaxed) != generation {
        match inner.join().await {
            Ok(_) => inner.joined.store(generation, Relaxed),
            Err(JoinError::Store(e)) => return Err(e),
            Err(JoinError::Mismatch(m)) => {
                // The namespace was recreated by another embedder's cache
                // while Redis was away: keep the changes, report.
                return Err(StoreError::Reply(m));
            }
        }
    }
    let batch: Vec<Op> = {
        let mut q = inner.queue.lock();
        let mut batch = Vec::new();
        let mut n = 0;
        while let Some(front) = q.front() {
            let is_set = matches!(front.change, Change::Set(_));
            if !batch.is_empty() && (!is_set || n + front.entries() > WRITE_BATCH) {
                break;
            }
            n += front.entries();
            batch.extend(q.pop_front());
            if !is_set {
                break;
            }
        }
        inner.sending.store(n, Relaxed);
        batch
    };
    if batch.is_empty() {
        return Ok(());
    }
    let result = send_batch(inner, &batch).await;
    if let Err(e) = &result {
        if e.falls_back() {
            let mut q = inner.queue.lock();
            for op in batch.into_iter().rev() {
                q.push_front(op);
            }
            inner.sending.store(0, Relaxed);
            // Whatever happened meanwhile, the bound holds again.
            inner.make_room(&mut q, 0);
        } else {
            let n: usize = batch.iter().map(Op::entries).sum();
            inner.counters.dropped.fetch_add(n as u64, Relaxed);
        }
    }
    inner.sending.store(0, Relaxed);
    result
}

async fn send_batch(inner: &Arc<Inner>, batch: &[Op]) -> Result<(), StoreError> {
    // The epoch of the oldest change: one made in another epoch saw nothing
    // of it (and the script treats the epoch the same way when it is not the
    // namespace's own any more).
    let epoch = batch.first().map_or("", |o| &*o.epoch);
    let observed = batch
        .iter()
        .map(|o| if &*o.epoch == epoch { o.observed } else { 0 })
        .min()
        .unwrap_or(0);
    let observed = format!("{observed} {epoch}");
    // The oldest change's time: the lag measured is the batch's longest.
    let wall = batch.first().map_or(0, |o| o.wall_us).to_string();
    let base = inner.keys.base.as_str();
    let keys = &inner.keys.keys;
    if let Some(Op {
        change:
            Change::Invalidate {
                kind,
                target,
                partition,
                text,
            },
        ..
    }) = batch.first()
    {
        let cfg_ttl = inner.cache.config().ttl.filter(|t| t.is_finite());
        let tomb_ms = cfg_ttl
            .map_or(TOMBSTONE_MIN, |t| {
                Duration::from_secs_f64(t).max(TOMBSTONE_MIN)
            })
            .as_millis()
            .to_string();
        let maxlen = inner.cfg.stream_max_len.to_string();
        let args = [
            base,
            inner.instance.as_str(),
            kind,
            maxlen.as_str(),
            inner.keys.channel.as_str(),
            wall.as_str(),
            tomb_ms.as_str(),
            target.as_str(),
            partition.as_str(),
            text.as_str(),
        ];
        inner
            .store
            .eval_within(
                inner.background_timeout(),
                &inner.scripts.invalidate,
                keys,
                &args,
            )
            .await?;
        inner.counters.sent.fetch_add(1, Relaxed);
        if *kind != "inv" {
            // The entries it covers stay readable only to the tombstone
            // check: delete them in the background.
            let this = Arc::clone(inner);
            inner.store.spawn(async move { this.sweep().await });
        }
        return Ok(());
    }
    let entries: Vec<_> = batch
        .iter()
        .flat_map(|o| match &o.change {
            Change::Set(v) => v.as_slice(),
            Change::Invalidate { .. } => &[],
        })
        .collect();
    let maxlen = inner.cfg.stream_max_len.to_string();
    let cap = inner.cfg.max_shared_entries.to_string();
    let n = entries.len().to_string();
    let ttls: Vec<String> = entries.iter().map(|e| e.ttl_ms.to_string()).collect();
    let mut args: Vec<&[u8]> = vec![
        base.as_bytes(),
        inner.instance.as_bytes(),
        observed.as_bytes(),
        maxlen.as_bytes(),
        cap.as_bytes(),
        inner.keys.channel.as_bytes(),
        wall.as_bytes(),
        n.as_bytes(),
    ];
    for (e, ttl) in entries.iter().zip(&ttls) {
        args.extend([
            e.id.as_bytes(),
            e.blob.as_slice(),
            e.partition_hash.as_bytes(),
            e.tags.as_bytes(),
            ttl.as_bytes(),
        ]);
    }
    let reply = inner
        .store
        .eval_within(
            inner.background_timeout(),
            &inner.scripts.write,
            keys,
            &args,
        )
        .await?;
    let p = protocol::items(&reply);
    let (Some(accepted), Some(refused)) = (
        p.first().and_then(protocol::int_of),
        p.get(1).and_then(protocol::int_of),
    ) else {
        return Err(reply_error("the write script", &reply));
    };
    inner
        .counters
        .sent
        .fetch_add(accepted.unsigned_abs(), Relaxed);
    inner
        .counters
        .refused
        .fetch_add(refused.unsigned_abs(), Relaxed);
    Ok(())
}

/// What reading the stream found besides events to apply.
enum Drift {
    /// Events were missed (trimmed): clear and reload.
    Gap,
    /// The namespace was recreated: read the new stream from its start.
    Epoch(String),
}

async fn follow_loop(
    weak: Weak<Inner>,
    mut rx: tokio::sync::broadcast::Receiver<Push>,
    mut position: Option<(Position, bool)>,
    mut stopped: watch::Receiver<()>,
) {
    let mut retry = RETRY_MIN;
    loop {
        let ok = {
            let Some(inner) = weak.upgrade() else { return };
            match step(&inner, &mut position).await {
                Ok(more) => {
                    retry = RETRY_MIN;
                    if more {
                        continue;
                    }
                    true
                }
                Err(e) => {
                    inner.record_error(&e);
                    false
                }
            }
        };
        if !ok {
            if !pause(jitter(retry), &mut stopped).await {
                return;
            }
            retry = (retry * 2).min(RETRY_MAX);
            continue;
        }
        tokio::select! {
            r = rx.recv() => {
                if let Err(RecvError::Closed) = r {
                    if !pause(POLL, &mut stopped).await { return; }
                }
            }
            () = tokio::time::sleep(POLL) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Joins/loads when needed, then reads and applies one batch of events;
/// whether more may be waiting.
async fn step(
    inner: &Arc<Inner>,
    position: &mut Option<(Position, bool)>,
) -> Result<bool, StoreError> {
    let (pos, needs_load) = match position {
        Some(p) => p,
        None => {
            let p = follower_join(inner).await?;
            position.insert((p, true))
        }
    };
    if *needs_load {
        inner
            .load_all(pos)
            .await
            .inspect_err(|_| *position = None)?;
        let Some(p) = position.as_mut() else {
            return Ok(true);
        };
        p.1 = false;
        return Ok(true);
    }
    let count = READ_COUNT.to_string();
    let args = [
        inner.keys.base.as_str(),
        pos.last_id.as_str(),
        count.as_str(),
    ];
    let reply = inner
        .store
        .eval_within(
            inner.background_timeout(),
            &inner.scripts.read,
            &inner.keys.keys,
            &args,
        )
        .await?;
    let p = protocol::items(&reply);
    let epoch = p.first().and_then(protocol::string_of).unwrap_or_default();
    let seq_now = p
        .get(1)
        .and_then(protocol::int_of)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let server_ms = p
        .get(2)
        .and_then(protocol::int_of)
        .and_then(|n| u64::try_from(n).ok());
    let repaired = p.get(4).and_then(protocol::int_of).unwrap_or(0);
    if repaired > 0 {
        inner
            .counters
            .invalid
            .fetch_add(repaired.unsigned_abs(), Relaxed);
    }
    let Some(events) = p.get(3).and_then(protocol::parse_events) else {
        return Err(reply_error("the read script", &reply));
    };
    let drift = if epoch.is_empty() {
        // The metadata is gone (Redis restarted empty, or a failover lost
        // it): create it again, and read the new stream from its start like
        // any new epoch's (joining at its end would skip the invalidations
        // other processes made since the restart).
        let fresh = follower_join(inner).await?;
        Some(Drift::Epoch(fresh.epoch))
    } else if epoch != pos.epoch {
        Some(Drift::Epoch(epoch))
    } else if seq_now < pos.seq || (events.is_empty() && seq_now > pos.seq) {
        Some(Drift::Gap)
    } else {
        None
    };
    let mut apply = Vec::new();
    let mut drift = drift;
    let more = events.len() >= READ_COUNT;
    if drift.is_none() {
        let mut seq = pos.seq;
        for ev in events {
            pos.last_id = ev.id.clone();
            let Some(s) = ev.seq else {
                inner.counters.invalid.fetch_add(1, Relaxed);
                continue;
            };
            if s <= seq {
                // Read after the last event applied, yet numbered as if
                // before it: the stream's history was rewritten (a failover
                // lost the last writes and the counter went back), so events
                // with these numbers may be new ones.
                drift = Some(Drift::Gap);
                break;
            }
            if s > seq + 1 {
                drift = Some(Drift::Gap);
                break;
            }
            seq = s;
            if ev.origin == inner.instance.as_bytes() {
                continue;
            }
            let age = match (server_ms, protocol::id_ms(&ev.id)) {
                (Some(now), Some(at)) => Some(now.saturating_sub(at)),
                _ => None,
            };
            if let Some(change) = ev.change {
                apply.push((change, age, ev.wall_us));
            }
        }
        pos.seq = seq;
    }
    match drift {
        Some(Drift::Epoch(e)) => {
            // Redis restarted empty (or the metadata was recreated): what
            // this process has stays valid; what is new comes from the start
            // of the new stream, numbered from 1 (a jump past that reloads).
            inner.set_applied(&e, 0);
            *pos = Position {
                epoch: e,
                seq: 0,
                last_id: "0-0".into(),
            };
            inner.joined.store(u64::MAX, Relaxed);
            return Ok(true);
        }
        Some(Drift::Gap) => {
            // Events were trimmed before this process read them: what it has
            // may be stale. Start again from what Redis holds.
            inner.counters.resyncs.fetch_add(1, Relaxed);
            let fresh = follower_join(inner).await?;
            inner.cache.clear();
            *position = Some((fresh, true));
            return Ok(true);
        }
        None => {}
    }
    let seq = pos.seq;
    if !apply.is_empty() {
        let this = Arc::clone(inner);
        tokio::task::spawn_blocking(move || apply_events(&this, apply))
            .await
            .map_err(|e| StoreError::Reply(format!("applying events failed: {e}")))?;
    }
    inner.set_applied(&pos.epoch, seq);
    Ok(more)
}

/// Joins for the follower: another embedder's namespace is an error to
/// report and retry, like any other.
async fn follower_join(inner: &Inner) -> Result<Position, StoreError> {
    inner.join().await.map_err(|e| match e {
        JoinError::Store(e) => e,
        JoinError::Mismatch(m) => StoreError::Reply(m),
    })
}

/// Applies other processes' changes to the local cache, in order.
fn apply_events(inner: &Inner, events: Vec<(Event, Option<u64>, Option<u64>)>) {
    let mut lags = Vec::new();
    for (change, age_ms, wrote_ms) in events {
        match change {
            Event::Set(blob) => {
                let items: Vec<NewItem> = inner.decode(&blob, -1, age_ms).into_iter().collect();
                if items.is_empty() || inner.insert_each(items) == 0 {
                    continue;
                }
                if let Some(w) = wrote_ms {
                    lags.push(wall_us().saturating_sub(w) as f64 / 1000.0);
                }
            }
            Event::Invalidate { partition, prompt } => {
                inner.cache.invalidate(&prompt, &partition);
            }
            Event::Partition(p) => {
                inner.cache.invalidate_partition(&p);
            }
            Event::Tag(t) => {
                inner.cache.invalidate_tag(&t);
            }
            Event::Clear => inner.cache.clear(),
        }
        inner.counters.received.fetch_add(1, Relaxed);
    }
    if !lags.is_empty() {
        let mut l = inner.lags.lock();
        for x in lags {
            if l.len() == LAG_WINDOW {
                l.pop_front();
            }
            l.push_back(x);
        }
    }
}
