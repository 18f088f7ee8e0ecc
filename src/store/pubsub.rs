//! One pub/sub connection per store, shared by every subscribed channel, that
//! reconnects with backoff and re-subscribes on its own.
//!
//! On a Redis Cluster a `PUBLISH` reaches the subscribers of every node, so
//! the connection goes to any reachable node (tried in the given order).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{broadcast, Notify};

use super::{jittered, Inner, BACKOFF_MAX, BACKOFF_MIN};

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    /// A message published on the channel.
    Message(Arc<[u8]>),
    /// The subscription was (re-)established: messages published while it was
    /// down are lost, so state they carried should be re-read.
    Subscribed,
}

const CHANNEL_CAPACITY: usize = 256;

#[derive(Default)]
pub(crate) struct Hub {
    channels: Mutex<HashMap<String, broadcast::Sender<Push>>>,
    wake: Notify,
    started: AtomicBool,
    closed: AtomicBool,
}

impl Hub {
    pub fn close(&self) {
        self.closed.store(true, Relaxed);
        self.wake.notify_one();
    }

    fn send(&self, channel: &str, push: Push) {
        if let Some(tx) = self.channels.lock().get(channel) {
            // No receiver left is fine: the channel stays subscribed.
            let _ = tx.send(push);
        }
    }
}

pub(crate) fn subscribe(
    inner: &Arc<Inner>,
    handle: &Handle,
    channel: &str,
) -> broadcast::Receiver<Push> {
    let rx = {
        let mut channels = inner.hub.channels.lock();
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    };
    if inner.hub.started.swap(true, Relaxed) {
        inner.hub.wake.notify_one();
    } else {
        handle.spawn(run(Arc::clone(inner)));
    }
    rx
}

async fn run(inner: Arc<Inner>) {
    let hub = &inner.hub;
    let mut delay = BACKOFF_MIN;
    let mut node = 0usize;
    while !hub.closed.load(Relaxed) {
        let client = &inner.pubsub_clients[node % inner.pubsub_clients.len()];
        let connected =
            tokio::time::timeout(inner.config.connect_timeout, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            node += 1;
            tokio::time::sleep(jittered(delay)).await;
            delay = (delay * 2).min(BACKOFF_MAX);
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed: HashSet<String> = HashSet::new();
        'connected: loop {
            let wanted: Vec<String> = hub
                .channels
                .lock()
                .keys()
                .filter(|c| !subscribed.contains(*c))
                .cloned()
                .collect();
            if !wanted.is_empty() {
                let ok = tokio::time::timeout(
                    inner.config.connect_timeout,
                    sink.subscribe(wanted.as_slice()),
                )
                .await;
                if !matches!(ok, Ok(Ok(()))) {
                    break 'connected;
                }
                delay = BACKOFF_MIN;
                for c in wanted {
                    hub.send(&c, Push::Subscribed);
                    subscribed.insert(c);
                }
            }
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => hub.send(
                        msg.get_channel_name(),
                        Push::Message(Arc::from(msg.get_payload_bytes())),
                    ),
                    None => break 'connected,
                },
                () = hub.wake.notified() => {
                    if hub.closed.load(Relaxed) {
                        return;
                    }
                }
            }
        }
        node += 1;
        tokio::time::sleep(jittered(delay)).await;
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}
