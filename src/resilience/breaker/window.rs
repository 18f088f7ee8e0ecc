//! The sliding window of outcomes: the last `size` calls, or the last `size`
//! whole seconds in per-second buckets.

use super::config::WindowType;

/// Outcome counts over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Bucket {
    second: i64,
    counts: Counts,
}

/// Sliding window over the last `size` calls or the last `size` seconds.
#[derive(Debug)]
pub(super) enum Window {
    Count {
        ring: Vec<u8>, // bit 0: failed, bit 1: slow
        next: usize,
        len: usize,
        totals: Counts,
    },
    Time {
        buckets: Vec<Bucket>,
    },
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

impl Window {
    pub(super) fn new(kind: WindowType, size: u32) -> Window {
        match kind {
            WindowType::Count => Window::Count {
                ring: vec![0; size as usize],
                next: 0,
                len: 0,
                totals: Counts::default(),
            },
            WindowType::Time => Window::Time {
                buckets: vec![
                    Bucket {
                        second: i64::MIN,
                        counts: Counts::default()
                    };
                    size as usize
                ],
            },
        }
    }

    pub(super) fn clear(&mut self) {
        match self {
            Window::Count {
                ring,
                next,
                len,
                totals,
            } => {
                ring.iter_mut().for_each(|b| *b = 0);
                *next = 0;
                *len = 0;
                *totals = Counts::default();
            }
            Window::Time { buckets } => {
                buckets.iter_mut().for_each(|b| {
                    *b = Bucket {
                        second: i64::MIN,
                        ..*b
                    }
                });
            }
        }
    }

    pub(super) fn record(&mut self, now: f64, failed: bool, slow: bool) {
        match self {
            Window::Count {
                ring,
                next,
                len,
                totals,
            } => {
                let cap = ring.len();
                if *len == cap {
                    let old = ring[*next];
                    totals.calls -= 1;
                    totals.failures -= u64::from(old & FAILED != 0);
                    totals.slow -= u64::from(old & SLOW != 0);
                } else {
                    *len += 1;
                }
                let bits = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
                ring[*next] = bits;
                *next = (*next + 1) % cap;
                totals.calls += 1;
                totals.failures += u64::from(failed);
                totals.slow += u64::from(slow);
            }
            Window::Time { buckets } => {
                let second = second_of(now);
                let idx = second.rem_euclid(buckets.len() as i64) as usize;
                let b = &mut buckets[idx];
                if b.second != second {
                    *b = Bucket {
                        second,
                        counts: Counts::default(),
                    };
                }
                b.counts.calls += 1;
                b.counts.failures += u64::from(failed);
                b.counts.slow += u64::from(slow);
            }
        }
    }

    pub(super) fn totals(&self, now: f64) -> Counts {
        match self {
            Window::Count { totals, .. } => *totals,
            Window::Time { buckets } => {
                let second = second_of(now);
                let oldest = second.saturating_sub(buckets.len() as i64 - 1);
                let mut t = Counts::default();
                for b in buckets
                    .iter()
                    .filter(|b| b.second >= oldest && b.second <= second)
                {
                    t.calls += b.counts.calls;
                    t.failures += b.counts.failures;
                    t.slow += b.counts.slow;
                }
                t
            }
        }
    }
}

fn second_of(now: f64) -> i64 {
    // `as` saturates for out-of-range floats and maps NaN to 0: no panic.
    now.floor() as i64
}
