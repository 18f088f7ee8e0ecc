//! A direct-mapped cache of the token counts of short byte strings, shared
//! by every thread of the process.
//!
//! Keys are strings of 1 to 15 bytes packed into an integer (bytes
//! little-endian, the length in the low nibble of the top byte; a `u64` for
//! up to 7 bytes, most words with their space, else a `u128`); a slot stores
//! the key with the count (at most 15: a token has at least one byte) in the
//! high nibble of that byte. A set of slots fills one 64-byte cache line, so
//! a lookup touches one line. The cache is bounded by construction (its size
//! is fixed when it is made); the least useful slot of a set is overwritten,
//! and a miss only costs the uncached count. A lookup compares the whole key,
//! so a hit is always the count of exactly that string.
//!
//! Threads share it without a lock: a slot of up to 7 bytes is one atomic
//! word; a set of longer slots (two words each) carries a version that a
//! writer makes odd while it writes ([`Version`]), and a reader that saw it
//! change reports a miss. Writers that meet another writer skip their write:
//! it is a cache.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use super::tables::Version;

/// Longest string the cache holds.
pub const MAX_LEN: usize = 15;

/// A string of 1 to 15 bytes packed with its length: `Short` (up to 7 bytes,
/// length in the low nibble of the top byte of a `u64`) or `Long` (8 to 15,
/// the same in a `u128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Short(u64),
    Long(u128),
}

/// `bytes` packed as a key, if it is 1 to 15 bytes long.
#[inline]
pub fn key(bytes: &[u8]) -> Option<Key> {
    match bytes.len() {
        1..=7 => {
            let mut buf = [0u8; 8];
            buf[..bytes.len()].copy_from_slice(bytes);
            buf[7] = bytes.len() as u8;
            Some(Key::Short(u64::from_le_bytes(buf)))
        }
        8..=MAX_LEN => {
            let mut buf = [0u8; 16];
            buf[..bytes.len()].copy_from_slice(bytes);
            buf[15] = bytes.len() as u8;
            Some(Key::Long(u128::from_le_bytes(buf)))
        }
        _ => None,
    }
}

/// The key of `text[start..start + len]` (1 to 15 bytes), read with one
/// 16-byte load when the text extends that far past `start`.
#[inline]
pub fn key_at(text: &[u8], start: usize, len: usize) -> Option<Key> {
    if len == 0 || len > MAX_LEN {
        return None;
    }
    match text.get(start..start + 16) {
        Some(window) => {
            let mut buf = [0u8; 16];
            buf.copy_from_slice(window);
            let v = u128::from_le_bytes(buf);
            let mask = (1u128 << (8 * len)) - 1;
            Some(if len <= 7 {
                Key::Short(((v & mask) as u64) | ((len as u64) << 56))
            } else {
                Key::Long((v & mask) | ((len as u128) << 120))
            })
        }
        None => key(text.get(start..start + len)?),
    }
}

const SHORT_WAYS: usize = 8;
const LONG_WAYS: usize = 3;
/// Ways from this one on hold strings not yet looked up again: a hit there
/// moves the string up one way; a new string enters here and pushes the
/// others down, so one-off strings do not push out the most used.
const SHORT_MID: usize = SHORT_WAYS / 2;
const LONG_MID: usize = 1;

/// Top nibble of a packed slot: the count.
const SHORT_SHIFT: u32 = u64::BITS - 4;
const SHORT_MASK: u64 = 0xF << SHORT_SHIFT;
const LONG_SHIFT: u32 = u128::BITS - 4;
const LONG_MASK: u128 = 0xF << LONG_SHIFT;

/// One cache line of slots of up to 7 bytes, each a key and its count in one
/// word: a word is read and written whole, so a reader sees an empty slot or
/// a string with its count, never a mix.
#[derive(Default)]
#[repr(align(64))]
struct ShortSet([AtomicU64; SHORT_WAYS]);

/// One cache line of slots of 8 to 15 bytes (two words each), behind a
/// version: a reader that saw a write in progress or a changed version
/// reports a miss.
#[derive(Default)]
#[repr(align(64))]
struct LongSet {
    version: Version,
    slots: [[AtomicU64; 2]; LONG_WAYS],
}

impl ShortSet {
    #[inline]
    fn get(&self, key: u64) -> Option<usize> {
        for w in 0..SHORT_WAYS {
            let v = self.0[w].load(Relaxed);
            if v & !SHORT_MASK == key {
                if w >= SHORT_MID {
                    // a second sighting: up one way (two stores that may
                    // interleave with another thread's, duplicating or
                    // dropping a string, never pairing a key with a wrong count)
                    let above = self.0[w - 1].load(Relaxed);
                    self.0[w - 1].store(v, Relaxed);
                    self.0[w].store(above, Relaxed);
                }
                return Some((v >> SHORT_SHIFT) as usize);
            }
        }
        None
    }

    #[inline]
    fn put(&self, key: u64, count: usize) {
        for w in (SHORT_MID..SHORT_WAYS - 1).rev() {
            self.0[w + 1].store(self.0[w].load(Relaxed), Relaxed);
        }
        self.0[SHORT_MID].store(key | ((count as u64) << SHORT_SHIFT), Relaxed);
    }
}

impl LongSet {
    #[inline]
    fn slot(&self, w: usize) -> u128 {
        let [lo, hi] = &self.slots[w];
        u128::from(lo.load(Relaxed)) | (u128::from(hi.load(Relaxed)) << 64)
    }

    #[inline]
    fn set(&self, w: usize, v: u128) {
        self.slots[w][0].store(v as u64, Relaxed);
        self.slots[w][1].store((v >> 64) as u64, Relaxed);
    }

    #[inline]
    fn get(&self, key: u128) -> Option<usize> {
        let seen = self.version.read_begin()?;
        let (w, v) = (0..LONG_WAYS)
            .map(|w| (w, self.slot(w)))
            .find(|(_, v)| v & !LONG_MASK == key)?;
        if !self.version.read_valid(seen) {
            return None;
        }
        if w >= LONG_MID {
            if let Some(_write) = self.version.try_write() {
                let above = self.slot(w - 1);
                self.set(w - 1, self.slot(w));
                self.set(w, above);
            }
        }
        Some((v >> LONG_SHIFT) as usize)
    }

    #[inline]
    fn put(&self, key: u128, count: usize) {
        let Some(_write) = self.version.try_write() else {
            return; // another thread is writing this set: this string waits
        };
        for w in (LONG_MID..LONG_WAYS - 1).rev() {
            self.set(w + 1, self.slot(w));
        }
        self.set(LONG_MID, key | ((count as u128) << LONG_SHIFT));
    }
}

#[inline]
fn mix(lo: u64, hi: u64) -> u64 {
    (lo ^ hi.rotate_left(29).wrapping_mul(0xA24B_AED4_963E_E407))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The cache, shared by every thread of the process: lookups are loads (and,
/// the first times a string is seen again, a store), never a lock.
pub struct HotCounts {
    short: Box<[ShortSet]>,
    long: Box<[LongSet]>,
    short_shift: u32,
    long_shift: u32,
}

impl HotCounts {
    /// A cache of `2^short_bits` strings of up to 7 bytes (8 bytes each) and
    /// `3 * 2^long_sets_bits` of 8 to 15 bytes (64 bytes per 3); bits from 3
    /// (short) or 0 (long sets) to 24.
    pub fn new(short_bits: u32, long_sets_bits: u32) -> Self {
        let sb = short_bits.clamp(3, 24) - 3;
        let lb = long_sets_bits.clamp(0, 24);
        HotCounts {
            short: (0..1usize << sb).map(|_| ShortSet::default()).collect(),
            long: (0..1usize << lb).map(|_| LongSet::default()).collect(),
            short_shift: 64 - sb,
            long_shift: 64 - lb,
        }
    }

    /// Bytes held by the tables (fixed at construction).
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.short) + std::mem::size_of_val(&*self.long)
    }

    #[inline]
    fn short_set(&self, k: u64) -> &ShortSet {
        &self.short[(mix(k, 0).checked_shr(self.short_shift).unwrap_or(0)) as usize]
    }

    #[inline]
    fn long_set(&self, k: u128) -> &LongSet {
        let h = mix(k as u64, (k >> 64) as u64);
        &self.long[h.checked_shr(self.long_shift).unwrap_or(0) as usize]
    }

    /// The remembered count of the string packed in `key`.
    #[inline]
    pub fn get(&self, key: Key) -> Option<usize> {
        match key {
            Key::Short(k) => self.short_set(k).get(k),
            Key::Long(k) => self.long_set(k).get(k),
        }
    }

    /// Ask the CPU to start loading the cache line that [`get`](Self::get)
    /// of `key` will read (a hint: it changes no state and reads nothing).
    #[inline]
    pub fn prefetch(&self, key: Key) {
        let line: *const u8 = match key {
            Key::Short(k) => (self.short_set(k) as *const ShortSet).cast(),
            Key::Long(k) => (self.long_set(k) as *const LongSet).cast(),
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults and has no effect
        // on memory; `line` points into a live table anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = line;
    }

    /// Remember `count` for the string packed in `key` (counts above 15, which
    /// a string of at most 15 bytes cannot have, are not stored).
    #[inline]
    pub fn put(&self, key: Key, count: usize) {
        if count > 15 {
            return;
        }
        match key {
            Key::Short(k) => self.short_set(k).put(k, count),
            Key::Long(k) => self.long_set(k).put(k, count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_fixed_and_counts_are_kept() {
        let h = HotCounts::new(3, 4);
        assert_eq!(h.bytes(), 64 + 16 * 64);
        let word = |i: u32| format!("word{i:011}");
        for i in 0..5_000u32 {
            h.put(
                key(word(i).as_bytes()).expect("15 bytes"),
                (i % 16) as usize,
            );
        }
        assert_eq!(h.bytes(), 64 + 16 * 64);
        let mut found = 0;
        for i in 0..5_000u32 {
            if let Some(n) = h.get(key(word(i).as_bytes()).expect("15 bytes")) {
                assert_eq!(n, (i % 16) as usize);
                found += 1;
            }
        }
        assert!(found > 0 && found <= 16 * LONG_WAYS, "{found}");
    }

    #[test]
    fn remembers_exact_strings_only() {
        let h = HotCounts::new(13, 11);
        let a = key(b" hello").expect("short");
        let b = key(b" hello world").expect("short");
        assert_eq!(h.get(a), None);
        h.put(a, 1);
        assert_eq!(h.get(a), Some(1));
        assert_eq!(h.get(b), None);
        h.put(b, 15);
        assert_eq!(h.get(b), Some(15));
        assert!(key(b"").is_none());
        assert!(key(&[b'x'; 16]).is_none());
        let text = b"0123456789abcdefghijklmnopqrstuvwxyz";
        for start in 0..text.len() {
            for len in 0..=16 {
                let expect = text.get(start..start + len).and_then(key);
                assert_eq!(key_at(text, start, len), expect, "{start} {len}");
            }
        }
        // distinct lengths of zero bytes are distinct keys
        assert_ne!(key(&[0]), key(&[0, 0]));
        // what is found is always what was stored for that string
        for i in 0..100_000u32 {
            let s = format!("w{i}{}", "x".repeat(i as usize % 9));
            let k = key(s.as_bytes()).expect("short");
            h.put(k, (i % 16) as usize);
            assert_eq!(h.get(k), Some((i % 16) as usize));
            let j = i / 2;
            let old = format!("w{j}{}", "x".repeat(j as usize % 9));
            let found = h.get(key(old.as_bytes()).expect("short"));
            assert!(found.is_none() || found == Some((j % 16) as usize));
        }
    }

    #[test]
    fn threads_sharing_a_small_table_never_read_a_wrong_count() {
        // a tiny table, so that every thread writes the sets the others read
        let h = HotCounts::new(3, 1);
        let strings: Vec<String> = (0..64)
            .map(|i| format!("{i:0width$}", width = 1 + i % 15))
            .collect();
        let count = |s: &str| s.len() % 16;
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (h, strings) = (&h, &strings);
                scope.spawn(move || {
                    for round in 0..20_000 {
                        let s = &strings[(round * 7 + t * 13) % strings.len()];
                        let k = key(s.as_bytes()).expect("1 to 15 bytes");
                        match h.get(k) {
                            Some(n) => assert_eq!(n, count(s), "{s:?}"),
                            None => h.put(k, count(s)),
                        }
                    }
                });
            }
        });
    }
}
