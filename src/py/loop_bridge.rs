//! `llmedge._core._LoopBridge`: completes asyncio futures with the results of
//! work that runs on a store's tokio runtime, without the runtime ever taking
//! the GIL.
//!
//! One bridge serves one event loop (`llmedge.store` keeps one per loop). A
//! binding calls [`LoopBridge::start`] on the loop's thread, which returns a
//! new future of that loop and a [`Completion`]; the work, spawned on the
//! runtime, ends with [`Completion::finish`] and a closure that turns its
//! result into a Python value. `finish` queues the closure and, when the
//! queue was empty, writes one byte to a socket pair whose other end the loop
//! watches (`loop.add_reader(bridge.fileno(), bridge.drain)`); `drain` runs
//! on the loop's thread with the GIL, calls the queued closures and sets the
//! futures' results. So a call costs one wake-up of the loop however many
//! completions arrive together, and neither side waits for the other's lock
//! or for the GIL (the executor path this replaces took the GIL on an executor
//! thread twice per call).
//!
//! Unix only: elsewhere the constructor raises NotImplementedError and
//! `llmedge.store` falls back to the loop's default executor.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use ahash::AHashMap;
use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::py::errors::store_unusable;

/// Turns a finished job's result into the future's value (or exception);
/// runs on the loop's thread.
pub type Finish = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// Finished jobs waiting for the loop, and the loop's wake-up.
struct Mailbox {
    done: Mutex<Vec<(u64, Finish)>>,
    #[cfg(unix)]
    writer: std::os::unix::net::UnixStream,
}

impl Mailbox {
    fn post(&self, id: u64, finish: Finish) {
        let was_empty = {
            let mut done = self.done.lock();
            done.push((id, finish));
            done.len() == 1
        };
        if was_empty {
            self.wake();
        }
    }

    #[cfg(unix)]
    fn wake(&self) {
        use std::io::Write;
        // A full socket buffer already holds a wake-up: nothing is lost.
        let _ = (&self.writer).write(&[1]);
    }

    #[cfg(not(unix))]
    fn wake(&self) {}
}

/// Resolves one future. Dropped without [`Completion::finish`] (the runtime
/// stopped and dropped the job), it fails the future instead of leaving its
/// awaiter waiting forever.
pub struct Completion {
    mailbox: Arc<Mailbox>,
    id: u64,
    finished: bool,
}

impl Completion {
    pub fn finish(mut self, finish: Finish) {
        self.finished = true;
        self.mailbox.post(self.id, finish);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.finished {
            self.mailbox.post(
                self.id,
                Box::new(|py| {
                    Err(store_unusable(
                        py,
                        "the store stopped before Redis answered".to_owned(),
                    ))
                }),
            );
        }
    }
}

/// Completions of store calls for one asyncio event loop.
#[pyclass(frozen, module = "llmedge._core", name = "_LoopBridge")]
pub struct LoopBridge {
    event_loop: Py<PyAny>,
    mailbox: Arc<Mailbox>,
    #[cfg(unix)]
    reader: std::os::unix::net::UnixStream,
    /// Futures by job id; removed before their result is set.
    pending: Mutex<AHashMap<u64, Py<PyAny>>>,
    next_id: AtomicU64,
}

impl LoopBridge {
    /// A new future of the loop and the completion that will resolve it.
    /// Call on the loop's thread.
    pub fn start<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Completion)> {
        let future = self.event_loop.bind(py).call_method0("create_future")?;
        let id = self.next_id.fetch_add(1, Relaxed);
        self.pending.lock().insert(id, future.clone().unbind());
        let completion = Completion {
            mailbox: Arc::clone(&self.mailbox),
            id,
            finished: false,
        };
        Ok((future, completion))
    }

    #[cfg(unix)]
    fn clear_wakeups(&self) {
        use std::io::Read;
        // One byte per batch of completions: a read that does not fill the
        // buffer has emptied the socket, so no second read to see EAGAIN.
        let mut buf = [0_u8; 256];
        while matches!((&self.reader).read(&mut buf), Ok(n) if n == buf.len()) {}
    }

    #[cfg(not(unix))]
    fn clear_wakeups(&self) {}
}

#[pymethods]
impl LoopBridge {
    #[new]
    fn new(event_loop: Bound<'_, PyAny>) -> PyResult<Self> {
        #[cfg(unix)]
        {
            let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
            reader.set_nonblocking(true)?;
            writer.set_nonblocking(true)?;
            Ok(LoopBridge {
                event_loop: event_loop.unbind(),
                mailbox: Arc::new(Mailbox {
                    done: Mutex::new(Vec::new()),
                    writer,
                }),
                reader,
                pending: Mutex::new(AHashMap::new()),
                next_id: AtomicU64::new(0),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = event_loop;
            Err(pyo3::exceptions::PyNotImplementedError::new_err(
                "completing asyncio futures from the store's runtime needs Unix sockets",
            ))
        }
    }

    /// The descriptor the loop watches for readability.
    fn fileno(&self) -> i64 {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            i64::from(self.reader.as_raw_fd())
        }
        #[cfg(not(unix))]
        {
            -1
        }
    }

    /// Resolves the futures of every finished job (the loop's reader
    /// callback). A cancelled future's result is dropped.
    fn drain(&self, py: Python<'_>) {
        // Wake-ups first, then the queue: a job posted in between leaves a
        // spare wake-up (an empty drain later), never a job without one.
        self.clear_wakeups();
        let done = std::mem::take(&mut *self.mailbox.done.lock());
        for (id, finish) in done {
            let future = self.pending.lock().remove(&id);
            let result = finish(py);
            let Some(future) = future else { continue };
            let future = future.bind(py);
            if future
                .call_method0("done")
                .and_then(|d| d.is_truthy())
                .unwrap_or(true)
            {
                continue;
            }
            let set = match result {
                Ok(value) => future.call_method1("set_result", (value,)),
                Err(e) => future.call_method1("set_exception", (e.value(py),)),
            };
            if let Err(e) = set {
                // Nobody awaits a future that refuses its result: report it
                // the way the loop reports a failed callback.
                e.write_unraisable(py, Some(future));
            }
        }
    }

    /// Futures not resolved yet.
    fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let event_loop = self
            .event_loop
            .bind(py)
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_default();
        format!(
            "_LoopBridge(loop={event_loop}, fd={}, pending={})",
            self.fileno(),
            self.pending.lock().len()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LoopBridge>()?;
    Ok(())
}
