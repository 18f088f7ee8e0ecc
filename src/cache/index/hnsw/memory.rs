//! The memory layout of the HNSW graph: the visited set of a walk, the
//! cache-line aligned arrays of codes and links, and the lookup of a slot's
//! links.

use std::collections::HashMap;

/// The set of slots a walk has visited: open addressing over a table sized
/// for the walk, not for the index (a search at the default `ef` visits about
/// 1,400 slots and its 16 KB table stays in the L1 cache; a tag byte per slot
/// was measured no faster at 100,000 entries and costs a byte per entry).
#[derive(Default)]
pub(super) struct Visited {
    /// Slot + 1 per cell, 0 when empty; a power of two long.
    pub(super) table: Vec<u32>,
    len: usize,
}

impl Visited {
    /// Empties the set, sized for a walk keeping `ef` results in a graph of
    /// `slots` slots (it grows if a walk visits more).
    pub(super) fn clear(&mut self, ef: usize, slots: usize) {
        let want = (ef * 64)
            .min(slots * 4)
            .next_power_of_two()
            .clamp(16, 1 << 16);
        if self.table.len() != want {
            self.table = vec![0; want];
        } else {
            self.table.iter_mut().for_each(|c| *c = 0);
        }
        self.len = 0;
    }

    /// Adds `slot`; false when it was already there.
    #[inline(always)]
    pub(super) fn insert(&mut self, slot: u32) -> bool {
        if 2 * (self.len + 1) > self.table.len() {
            self.grow();
        }
        let mask = self.table.len() - 1;
        let key = slot.wrapping_add(1);
        let bits = self.table.len().trailing_zeros();
        let mut i = (slot.wrapping_mul(0x9E37_79B9) >> (32 - bits)) as usize;
        loop {
            let c = self.table[i];
            if c == key {
                return false;
            }
            if c == 0 {
                self.table[i] = key;
                self.len += 1;
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    #[cold]
    fn grow(&mut self) {
        let bigger = vec![0; (self.table.len() * 2).max(16)];
        let old = std::mem::replace(&mut self.table, bigger);
        self.len = 0;
        for key in old.into_iter().filter(|&k| k != 0) {
            self.insert(key - 1);
        }
    }
}

/// The links of `slot` on `level` in `links0` / `upper` (see `HnswIndex`).
#[inline(always)]
pub(super) fn links_of<'a>(
    links0: &'a [u32],
    degree0: &[u8],
    upper: &'a HashMap<u32, Box<[u32]>>,
    m: usize,
    slot: u32,
    level: usize,
) -> &'a [u32] {
    if level == 0 {
        let at = slot as usize * 2 * m;
        return &links0[at..at + usize::from(degree0[slot as usize])];
    }
    let Some(u) = upper.get(&slot) else {
        return &[];
    };
    let at = (level - 1) * (m + 1);
    &u[at + 1..at + 1 + u[at] as usize]
}

/// Integer types `LineVec` holds (any bit pattern is a valid value).
pub(super) trait Plain: Copy {}
impl Plain for u32 {}
impl Plain for u64 {}

/// A growable array whose first element starts a cache line, so that a
/// 64-byte sign code or a 128-byte list of links spans exactly one or two
/// lines. (The allocator's large blocks start 16 bytes into a line, which
/// made every code two loads, the second one not prefetched.)
///
/// The elements live in a `Vec<u64>` from a word offset that starts a line,
/// rather than in a type aligned to 64: the allocator cannot grow
/// over-aligned blocks in place, and the copies it made instead raised its
/// threshold for returning freed memory to the system (resident memory
/// grew by about 1 KB per entry at 100,000 entries). Large blocks keep
/// their offset when they grow; the data moves when the offset changes.
pub(super) struct LineVec<T> {
    /// `off` words of padding, then the elements' words.
    buf: Vec<u64>,
    off: usize,
    len: usize,
    _of: std::marker::PhantomData<T>,
}

/// Words a line holds.
const LINE_WORDS: usize = 8;

impl<T: Plain> LineVec<T> {
    pub(super) fn new() -> Self {
        LineVec {
            buf: Vec::new(),
            off: 0,
            len: 0,
            _of: std::marker::PhantomData,
        }
    }

    /// Words holding `n` elements.
    fn words(n: usize) -> usize {
        (n * std::mem::size_of::<T>()).div_ceil(8)
    }

    /// Appends `n` zeros.
    pub(super) fn grow_zeroed(&mut self, n: usize) {
        self.reserve_exact(n);
        self.len += n;
        self.buf.resize(self.off + Self::words(self.len), 0);
    }

    /// Room for `more` elements beyond `len` without reallocating.
    pub(super) fn reserve_exact(&mut self, more: usize) {
        // Any offset (at most LINE_WORDS - 1) fits in what is reserved.
        let want = Self::words(self.len + more) + LINE_WORDS - 1;
        if self.buf.capacity() < want {
            self.buf.reserve_exact(want - self.buf.len());
            self.realign();
        }
    }

    /// Moves the elements to where a line starts in the current block.
    fn realign(&mut self) {
        let addr = self.buf.as_ptr() as usize;
        let need = (64 - addr % 64) % 64 / 8;
        if need == self.off {
            return;
        }
        let data = self.buf.len() - self.off;
        // Within the capacity reserved: no reallocation, the address holds.
        self.buf.resize(self.buf.len().max(need + data), 0);
        self.buf.copy_within(self.off..self.off + data, need);
        self.buf.truncate(need + data);
        self.off = need;
    }

    /// Bytes allocated.
    pub(super) fn bytes(&self) -> usize {
        self.buf.capacity() * 8
    }
}

impl<T: Plain> std::ops::Deref for LineVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        debug_assert!(self.len == 0 || self.buf.as_ptr().wrapping_add(self.off) as usize % 64 == 0);
        // SAFETY: `buf[off..]` holds `words(len)` words, at least `len`
        // elements of T, aligned (8 >= align_of::<T>()); T is an integer,
        // valid for any bits; the borrow follows `self`.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().add(self.off).cast::<T>(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for LineVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buf.as_mut_ptr().add(self.off).cast::<T>(),
                self.len,
            )
        }
    }
}
