//! Giving the memory of removed entries back to the system.
//!
//! glibc's `malloc` keeps the blocks a program frees for its next
//! allocations: after a partition is invalidated or a graph replaced, the
//! process's resident memory stays where it peaked, past what
//! `max_memory_mb` bounds. When the cache's accounted memory falls by
//! [`TRIM_AFTER`] or more in one hold of its lock, or a graph replaces an
//! index, [`request`] asks a background thread to call `malloc_trim`, which
//! returns the free pages; it runs [`DEBOUNCE`] later (one trim for a burst
//! of removals) and at most once per [`MIN_GAP`], never on the caller's
//! thread. Elsewhere than on glibc, `request` does nothing.

use std::time::Duration;

/// Fall in accounted bytes within one hold of the lock that asks for a trim.
pub const TRIM_AFTER: usize = 4 << 20;
/// Wait between a request and its trim.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Least time between two trims.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// Trims done by this process (for tests and statistics).
pub fn trims() -> u64 {
    imp::TRIMS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Asks for a trim soon, off this thread.
pub fn request() {
    imp::request();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::thread::Thread;

    use parking_lot::Mutex;

    use super::{DEBOUNCE, MIN_GAP};

    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }

    pub(super) static TRIMS: AtomicU64 = AtomicU64::new(0);
    /// The id of the process whose trim is due, 0 when none is: a child
    /// forked while a trim was due still gets its own.
    static DUE: AtomicU32 = AtomicU32::new(0);
    /// The trimming thread and the process it belongs to (threads do not
    /// survive a fork).
    static TRIMMER: Mutex<Option<(u32, Thread)>> = Mutex::new(None);

    pub(super) fn request() {
        let me = std::process::id();
        if DUE.swap(me, Ordering::AcqRel) == me {
            return; // already due: the thread will see it
        }
        if let Some(t) = trimmer(me) {
            t.unpark();
        }
    }

    fn trimmer(me: u32) -> Option<Thread> {
        let mut slot = TRIMMER.lock();
        if let Some((pid, t)) = slot.as_ref() {
            if *pid == me {
                return Some(t.clone());
            }
        }
        let t = std::thread::Builder::new()
            .name("llmedge-trim".into())
            .spawn(move || run(me))
            .ok()?
            .thread()
            .clone();
        *slot = Some((me, t.clone()));
        Some(t)
    }

    fn run(me: u32) {
        loop {
            if DUE.load(Ordering::Acquire) != me {
                std::thread::park();
                continue;
            }
            std::thread::sleep(DEBOUNCE);
            DUE.store(0, Ordering::Release);
            // SAFETY: malloc_trim takes a byte count and only touches the
            // allocator's own state, under its locks.
            unsafe {
                malloc_trim(0);
            }
            TRIMS.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(MIN_GAP);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use std::sync::atomic::AtomicU64;

    pub(super) static TRIMS: AtomicU64 = AtomicU64::new(0);

    pub(super) fn request() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_request_is_trimmed_once_off_the_callers_thread() {
        let before = trims();
        for _ in 0..100 {
            request(); // a burst: one trim
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while trims() == before {
            assert!(std::time::Instant::now() < deadline, "no trim in 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(DEBOUNCE * 3);
        assert_eq!(trims(), before + 1);
        request(); // after the gap, another
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while trims() == before + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "no second trim in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
