//! The counting engine's process-wide tables, and what they hold.
//!
//! Counting remembers the counts of pieces it has seen, in tables shared by
//! every thread of the process (one set per encoding, made on the encoding's
//! first count): a thread pool of any size holds one copy. Every table's size
//! is fixed when it is made, so the bytes they hold are bounded by
//! [`MAX_TABLE_BYTES`] however many threads count.
//!
//! Readers take no lock. A table whose entries are larger than one atomic
//! word guards each entry (or set of entries) with a [`Version`]: a writer
//! makes it odd while it writes, and a reader that saw it odd or changed
//! reports a miss (the count is then computed, never guessed).

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{fence, AtomicU64};

use super::hot::HotCounts;
use super::{chunked, pretok, EncodingName};

/// A sequence lock's version word (even: stable, odd: being written).
#[derive(Default)]
pub(super) struct Version(AtomicU64);

/// Held while writing; the version becomes even (and new) when it is dropped.
pub(super) struct Writing<'a> {
    version: &'a Version,
    start: u64,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.version.0.store(self.start + 2, Release);
    }
}

impl Version {
    /// The version before reading, or `None` while a write is in progress.
    #[inline]
    pub(super) fn read_begin(&self) -> Option<u64> {
        let v = self.0.load(Acquire);
        (v & 1 == 0).then_some(v)
    }

    /// Whether what was read since [`read_begin`](Self::read_begin) returned
    /// `seen` was not written meanwhile.
    #[inline]
    pub(super) fn read_valid(&self, seen: u64) -> bool {
        fence(Acquire);
        self.0.load(Relaxed) == seen
    }

    /// Exclusive right to write, unless another thread holds it (the caller
    /// then skips its write).
    #[inline]
    pub(super) fn try_write(&self) -> Option<Writing<'_>> {
        let start = self.0.load(Relaxed);
        if start & 1 == 1 {
            return None;
        }
        self.0
            .compare_exchange(start, start + 1, Acquire, Relaxed)
            .ok()?;
        fence(Release);
        Some(Writing {
            version: self,
            start,
        })
    }
}

/// Longest piece a [`PieceTable`] holds.
pub(super) const PIECE_MAX: usize = 48;
const PIECE_WORDS: usize = PIECE_MAX / 8;

/// One entry: its version, the piece's length and count, and its bytes
/// (zero-padded): one cache line.
#[derive(Default)]
#[repr(align(64))]
struct PieceSlot {
    version: Version,
    /// length in the low 32 bits, count in the high 32; 0 when empty
    meta: AtomicU64,
    bytes: [AtomicU64; PIECE_WORDS],
}

/// A direct-mapped table of the counts of pieces of 1 to [`PIECE_MAX`]
/// bytes: a new piece replaces the one in its slot. Fixed size, no
/// allocation per piece, no lock for readers.
pub(super) struct PieceTable {
    slots: Box<[PieceSlot]>,
    shift: u32,
    hasher: ahash::RandomState,
}

impl PieceTable {
    /// A table of `2^bits` pieces (64 bytes each); bits from 0 to 24.
    pub(super) fn new(bits: u32) -> Self {
        let bits = bits.min(24);
        PieceTable {
            slots: (0..1usize << bits).map(|_| PieceSlot::default()).collect(),
            shift: 64 - bits,
            // fixed seeds: which pieces share a slot is then the same in
            // every run (benchmarks repeat); the table holds no secret
            hasher: ahash::RandomState::with_seeds(
                0x243f_6a88_85a3_08d3,
                0x1319_8a2e_0370_7344,
                0xa409_3822_299f_31d0,
                0x082e_fa98_ec4e_6c89,
            ),
        }
    }

    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    #[inline]
    fn slot(&self, piece: &[u8]) -> &PieceSlot {
        let h = self.hasher.hash_one(piece);
        &self.slots[h.checked_shr(self.shift).unwrap_or(0) as usize]
    }

    #[inline]
    fn words(piece: &[u8]) -> [u64; PIECE_WORDS] {
        let mut buf = [0u8; PIECE_MAX];
        buf[..piece.len()].copy_from_slice(piece);
        let mut out = [0u64; PIECE_WORDS];
        for (w, chunk) in out.iter_mut().zip(buf.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        out
    }

    /// The remembered count of `piece`.
    #[inline]
    pub(super) fn get(&self, piece: &[u8]) -> Option<u32> {
        if piece.is_empty() || piece.len() > PIECE_MAX {
            return None;
        }
        let slot = self.slot(piece);
        let seen = slot.version.read_begin()?;
        let meta = slot.meta.load(Relaxed);
        if meta as u32 as usize != piece.len() {
            return None;
        }
        let want = Self::words(piece);
        let used = piece.len().div_ceil(8);
        if (0..used).any(|w| slot.bytes[w].load(Relaxed) != want[w]) {
            return None;
        }
        slot.version.read_valid(seen).then_some((meta >> 32) as u32)
    }

    /// Remember `count` for `piece` (pieces longer than [`PIECE_MAX`] are
    /// not remembered; nor is any while another thread writes its slot).
    #[inline]
    pub(super) fn put(&self, piece: &[u8], count: u32) {
        if piece.is_empty() || piece.len() > PIECE_MAX {
            return;
        }
        let slot = self.slot(piece);
        let Some(_writing) = slot.version.try_write() else {
            return;
        };
        for (cell, w) in slot.bytes.iter().zip(Self::words(piece)) {
            cell.store(w, Relaxed);
        }
        slot.meta
            .store(piece.len() as u64 | (u64::from(count) << 32), Relaxed);
    }
}

/// Remembered counts: of pieces up to 15 bytes in a [`HotCounts`], of longer
/// ones up to [`PIECE_MAX`] bytes in a [`PieceTable`].
pub(super) struct Counts {
    pub(super) hot: HotCounts,
    pub(super) pieces: PieceTable,
}

impl Counts {
    /// Bytes of `Counts::new(short_bits, long_set_bits, piece_bits)`.
    pub(super) const fn size(short_bits: u32, long_set_bits: u32, piece_bits: u32) -> usize {
        (8 << short_bits) + (64 << long_set_bits) + (64 << piece_bits)
    }

    /// See [`HotCounts::new`] and [`PieceTable::new`].
    pub(super) fn new(short_bits: u32, long_set_bits: u32, piece_bits: u32) -> Self {
        Counts {
            hot: HotCounts::new(short_bits, long_set_bits),
            pieces: PieceTable::new(piece_bits),
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.hot.bytes() + self.pieces.bytes()
    }
}

/// The most bytes all counting tables of the process hold, whatever the
/// number of threads: every encoding's counting engine's
/// ([`super::COUNT_TABLE_BYTES`] each), the piece counter's
/// ([`chunked::MAX_TABLE_BYTES`]) and the pre-tokenisers' pools of lazy-DFA
/// caches ([`pretok::MAX_POOL_BYTES`]).
pub const MAX_TABLE_BYTES: usize = EncodingName::ALL.len() * super::COUNT_TABLE_BYTES
    + chunked::MAX_TABLE_BYTES
    + pretok::MAX_POOL_BYTES;

/// Bytes the counting tables of the process hold now (tables not made yet,
/// for encodings not used yet, hold nothing). At most [`MAX_TABLE_BYTES`].
pub fn table_bytes() -> usize {
    let engines: usize = EncodingName::ALL
        .into_iter()
        .map(|name| super::encoding(name).count_table_bytes())
        .sum();
    engines + chunked::table_bytes() + pretok::pool_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_what_the_tables_can_hold() {
        assert_eq!(MAX_TABLE_BYTES, 41_418_752);
        for name in EncodingName::ALL {
            super::super::encoding(name).count("warm up");
        }
        assert!(table_bytes() <= MAX_TABLE_BYTES);
    }

    #[test]
    fn piece_table_keeps_exact_pieces() {
        let t = PieceTable::new(4);
        assert_eq!(t.bytes(), 16 * 64);
        assert_eq!(t.get(b"anything"), None);
        t.put(b"a piece of sixteen+", 5);
        assert_eq!(t.get(b"a piece of sixteen+"), Some(5));
        assert_eq!(t.get(b"a piece of sixteen-"), None);
        assert_eq!(t.get(b"a piece of sixteen"), None);
        let long = [b'x'; PIECE_MAX + 1];
        t.put(&long, 3);
        assert_eq!(t.get(&long), None);
        t.put(&long[..PIECE_MAX], 7);
        assert_eq!(t.get(&long[..PIECE_MAX]), Some(7));
        // zero bytes are bytes: a shorter run of them is another piece
        t.put(&[0, 0, 0], 3);
        assert_eq!(t.get(&[0, 0]), None);
        assert_eq!(t.get(&[0, 0, 0]), Some(3));
    }

    #[test]
    fn piece_table_shared_by_threads_never_reads_a_wrong_count() {
        let t = PieceTable::new(2);
        let pieces: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("{i:>width$}", width = 1 + i % PIECE_MAX).into_bytes())
            .collect();
        std::thread::scope(|scope| {
            for k in 0..8 {
                let (t, pieces) = (&t, &pieces);
                scope.spawn(move || {
                    for round in 0..20_000 {
                        let p = &pieces[(round * 3 + k * 11) % pieces.len()];
                        match t.get(p) {
                            Some(n) => assert_eq!(n as usize, p.len() * 3),
                            None => t.put(p, (p.len() * 3) as u32),
                        }
                    }
                });
            }
        });
    }
}
