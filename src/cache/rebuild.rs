//! Building a partition's HNSW graph off the cache lock.
//!
//! When a partition's index wants a graph (an `index="auto"` partition
//! reaching `AUTO_HNSW_MIN` entries, or a graph whose slots are mostly those
//! of removed entries), the store starts a build: the partition's journal
//! records every id it holds, then every change. A thread builds the graph
//! from the journal on all cores, holding the lock only to take the journal
//! and to copy vectors a few hundred at a time, while the partition's
//! current index keeps answering and changing; it replays what changed
//! meanwhile, and when only a few changes remain it applies them and puts
//! the graph in place, all in one short hold of the lock. A single insert
//! waits (the lock released) while the journal is long, so a steady stream
//! of inserts cannot outrun the builder.

use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::index::{HnswIndex, VectorIndex};
use super::store::{BuildStep, BuildTicket, Store};

/// Vectors copied per hold of the lock.
const COPY_CHUNK: usize = 256;

/// Runs `ticket` on a new thread. `done` is notified whenever the builder
/// takes a journal or stops, for the inserts and bulk loads that wait.
pub fn spawn(store: Weak<Mutex<Store>>, done: Arc<Condvar>, ticket: BuildTicket) {
    let (s, d, t) = (store.clone(), done.clone(), ticket.clone());
    let spawned = std::thread::Builder::new()
        .name("llmedge-index-build".into())
        .spawn(move || guarded(&s, &d, &t));
    if spawned.is_err() {
        // No thread to be had: build here rather than never.
        guarded(&store, &done, &ticket);
    }
}

/// `run`, and whatever happens (a panic included) the build ends: waiters
/// are woken and a build that did not finish is cancelled, so that no
/// insert waits for it.
fn guarded(store: &Weak<Mutex<Store>>, done: &Arc<Condvar>, t: &BuildTicket) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(store, done, t)));
    if let Some(shared) = store.upgrade() {
        shared.lock().cancel_build(t.pid, t.epoch);
    }
    done.notify_all();
}

fn run(store: &Weak<Mutex<Store>>, done: &Arc<Condvar>, t: &BuildTicket) {
    let mut graph = HnswIndex::new(t.dim, t.params);
    loop {
        let Some(shared) = store.upgrade() else {
            return;
        };
        let (step, next) = {
            let mut s = shared.lock();
            (s.build_step(t.pid, t.epoch, &mut graph), s.take_tickets())
        };
        for n in next {
            // a compaction the build's end calls for
            spawn(Arc::downgrade(&shared), done.clone(), n);
        }
        let journal = match step {
            BuildStep::Cancelled => return,
            BuildStep::Done => {
                super::trim::request(); // the index the graph replaced is gone
                return;
            }
            BuildStep::Replay(journal) => journal,
        };
        done.notify_all();
        let mut added = Vec::new();
        for (id, add) in journal {
            if add {
                added.push(id);
            } else {
                graph.remove(id);
            }
        }
        let mut items = Vec::with_capacity(added.len());
        for chunk in added.chunks(COPY_CHUNK) {
            match shared.lock().build_vectors(t.pid, t.epoch, chunk) {
                Some(v) => items.extend(v),
                None => return,
            }
        }
        drop(shared);
        graph.add_many(&items);
    }
}

/// The store behind its lock, shared with the builders it starts.
pub struct SharedStore {
    store: Arc<Mutex<Store>>,
    /// Notified when a builder takes a journal or stops.
    built: Arc<Condvar>,
}

impl SharedStore {
    pub fn new(store: Store) -> Self {
        SharedStore {
            store: Arc::new(Mutex::new(store)),
            built: Arc::new(Condvar::new()),
        }
    }

    pub fn lock(&self) -> Locked<'_> {
        let guard = self.store.lock();
        Locked {
            shared: self,
            held: guard.memory_bytes(),
            guard,
        }
    }
}

/// The locked store. The builds it started run once it is unlocked.
pub struct Locked<'a> {
    shared: &'a SharedStore,
    /// Accounted bytes when the lock was taken.
    held: usize,
    guard: MutexGuard<'a, Store>,
}

impl Locked<'_> {
    /// Releases the lock until a builder takes a journal or stops.
    pub fn wait(&mut self) {
        self.start_builds();
        self.shared.built.wait(&mut self.guard);
    }

    /// Lets any thread waiting for the lock have it, then takes it back.
    pub fn bump(&mut self) {
        MutexGuard::bump(&mut self.guard);
    }

    /// Starts the builds started so far, the lock released meanwhile.
    pub fn start_builds(&mut self) {
        let tickets = self.guard.take_tickets();
        if tickets.is_empty() {
            return;
        }
        let shared = self.shared;
        MutexGuard::unlocked(&mut self.guard, || {
            for t in tickets {
                spawn(Arc::downgrade(&shared.store), shared.built.clone(), t);
            }
        });
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.start_builds();
        if self.held.saturating_sub(self.guard.memory_bytes()) >= super::trim::TRIM_AFTER {
            super::trim::request();
        }
    }
}

#[cfg(test)]
mod tests;
