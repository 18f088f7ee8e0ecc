//! A small direct-mapped cache of the token counts of short byte strings.
//!
//! Keys are strings of 1 to 15 bytes packed into an integer (bytes
//! little-endian, the length in the low nibble of the top byte; a `u64` for
//! up to 7 bytes, most words with their space, else a `u128`); a slot stores
//! the key with the count (at most 15: a token has at least one byte) in the
//! high nibble of that byte. A set of slots fills one 64-byte cache line, so
//! a lookup touches one line. The cache is bounded by construction; the least useful
//! slot of a set is overwritten, and a miss only costs the uncached count. A
//! lookup compares the whole key, so a hit is always the count of exactly
//! that string.

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

macro_rules! table {
    ($name:ident, $int:ty, $ways:expr) => {
        /// One cache line of slots, most useful first.
        #[derive(Clone, Copy, Default)]
        #[repr(align(64))]
        struct $name([$int; $ways]);

        impl $name {
            const SHIFT: u32 = <$int>::BITS - 4;
            const MASK: $int = 0xF << Self::SHIFT;

            #[inline]
            fn get(&mut self, key: $int) -> Option<usize> {
                for w in 0..$ways {
                    let v = self.0[w];
                    if v & !Self::MASK == key {
                        if w > 0 {
                            self.0.swap(w - 1, w);
                        }
                        return Some((v >> Self::SHIFT) as usize);
                    }
                }
                None
            }

            /// New strings enter in the middle, so one-off strings do not push
            /// out the most used. Returns whether a string was dropped.
            #[inline]
            fn put(&mut self, key: $int, count: usize) -> bool {
                const MID: usize = $ways / 2;
                let dropped = self.0[$ways - 1] != 0;
                self.0.copy_within(MID..$ways - 1, MID + 1);
                self.0[MID] = key | ((count as $int) << Self::SHIFT);
                dropped
            }
        }
    };
}

const LONG_WAYS: usize = 4;
table!(ShortSet, u64, 8);
table!(LongSet, u128, LONG_WAYS);

#[inline]
fn mix(lo: u64, hi: u64) -> u64 {
    (lo ^ hi.rotate_left(29).wrapping_mul(0xA24B_AED4_963E_E407))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

pub struct HotCounts {
    short: Box<[ShortSet]>,
    long: Box<[LongSet]>,
    short_shift: u32,
    long_shift: u32,
    /// the long table doubles, up to this many strings, when it has dropped
    /// as many strings as it holds
    long_max: usize,
    long_dropped: usize,
}

impl HotCounts {
    /// A cache of `2^short_bits` strings of up to 7 bytes (8 bytes each) and
    /// `2^long_bits` of 8 to 15 bytes (16 bytes each); bits from 3 to 24.
    pub fn new(short_bits: u32, long_bits: u32) -> Self {
        Self::growing(short_bits, long_bits, long_bits)
    }

    /// As [`new`](Self::new), with a table of long strings that doubles,
    /// up to `2^long_max_bits` strings, each time it has dropped as many
    /// strings as it holds (text with more distinct long words than it holds).
    pub fn growing(short_bits: u32, long_bits: u32, long_max_bits: u32) -> Self {
        let sb = short_bits.clamp(3, 24) - 3;
        let lb = long_bits.clamp(3, 24) - 2;
        HotCounts {
            short: vec![ShortSet::default(); 1 << sb].into_boxed_slice(),
            long: vec![LongSet::default(); 1 << lb].into_boxed_slice(),
            short_shift: 64 - sb,
            long_shift: 64 - lb,
            long_max: 1 << long_max_bits.clamp(long_bits.clamp(3, 24), 24),
            long_dropped: 0,
        }
    }

    /// Bytes held by the tables.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.short) + std::mem::size_of_val(&*self.long)
    }

    fn grow_long(&mut self) {
        let lb = 64 - self.long_shift + 1;
        let old = std::mem::replace(
            &mut self.long,
            vec![LongSet::default(); 1 << lb].into_boxed_slice(),
        );
        self.long_shift = 64 - lb;
        self.long_dropped = 0;
        for set in old.iter() {
            // least useful first, so the most useful end up in front
            for &v in set.0.iter().rev().filter(|&&v| v != 0) {
                let k = v & !LongSet::MASK;
                let i = (mix(k as u64, (k >> 64) as u64) >> self.long_shift) as usize;
                self.long[i].put(k, (v >> LongSet::SHIFT) as usize);
            }
        }
    }

    /// The remembered count of the string packed in `key`.
    #[inline]
    pub fn get(&mut self, key: Key) -> Option<usize> {
        match key {
            Key::Short(k) => {
                let i = (mix(k, 0) >> self.short_shift) as usize;
                self.short[i].get(k)
            }
            Key::Long(k) => {
                let i = (mix(k as u64, (k >> 64) as u64) >> self.long_shift) as usize;
                self.long[i].get(k)
            }
        }
    }

    /// Ask the CPU to start loading the cache line that [`get`](Self::get)
    /// of `key` will read (a hint: it changes no state and reads nothing).
    #[inline]
    pub fn prefetch(&self, key: Key) {
        let line: *const u8 = match key {
            Key::Short(k) => {
                let i = (mix(k, 0) >> self.short_shift) as usize;
                self.short[i].0.as_ptr().cast()
            }
            Key::Long(k) => {
                let i = (mix(k as u64, (k >> 64) as u64) >> self.long_shift) as usize;
                self.long[i].0.as_ptr().cast()
            }
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
    pub fn put(&mut self, key: Key, count: usize) {
        if count > 15 {
            return;
        }
        match key {
            Key::Short(k) => {
                let i = (mix(k, 0) >> self.short_shift) as usize;
                self.short[i].put(k, count);
            }
            Key::Long(k) => {
                let i = (mix(k as u64, (k >> 64) as u64) >> self.long_shift) as usize;
                if self.long[i].put(k, count) {
                    self.long_dropped += 1;
                    let held = self.long.len() * LONG_WAYS;
                    if self.long_dropped >= held && held < self.long_max {
                        self.grow_long();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_table_grows_to_its_bound_and_keeps_counts() {
        let mut h = HotCounts::growing(3, 6, 8);
        let start = h.bytes();
        let word = |i: u32| format!("word{i:011}");
        for i in 0..5_000u32 {
            let k = key(word(i).as_bytes()).expect("15 bytes");
            h.put(k, (i % 16) as usize);
        }
        // 64 -> 128 -> 256 long strings of 16 bytes, then no more
        assert_eq!(h.bytes() - start, (256 - 64) * 16);
        let mut found = 0;
        for i in 0..5_000u32 {
            if let Some(n) = h.get(key(word(i).as_bytes()).expect("15 bytes")) {
                assert_eq!(n, (i % 16) as usize);
                found += 1;
            }
        }
        assert!(found > 0 && found <= 256, "{found}");
        // a fixed table does not grow
        let mut f = HotCounts::new(3, 6);
        let before = f.bytes();
        for i in 0..5_000u32 {
            f.put(key(word(i).as_bytes()).expect("15 bytes"), 1);
        }
        assert_eq!(f.bytes(), before);
    }

    #[test]
    fn remembers_exact_strings_only() {
        let mut h = HotCounts::new(13, 13);
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
}
