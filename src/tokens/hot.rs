//! A small direct-mapped cache of the token counts of short byte strings.
//!
//! Keys are strings of 1 to 15 bytes packed into a `u128` (bytes little-endian,
//! the length in the low nibble of the top byte); a slot stores the key with
//! the count (at most 15: a token has at least one byte) in the high nibble
//! of that byte. Four slots share one 64-byte cache line (a set), so a lookup
//! touches one line. The cache is bounded by construction; the least useful
//! slot of a set is overwritten, and a miss only costs the uncached count. A
//! lookup compares the whole key, so a hit is always the count of exactly
//! that string.

/// Longest string the cache holds.
pub const MAX_LEN: usize = 15;
const COUNT_SHIFT: u32 = 124;
const COUNT_MASK: u128 = 0xF << COUNT_SHIFT;
const WAYS: usize = 4;

/// `bytes` packed as a key, if it is 1 to 15 bytes long.
#[inline]
pub fn key(bytes: &[u8]) -> Option<u128> {
    if bytes.is_empty() || bytes.len() > MAX_LEN {
        return None;
    }
    let mut buf = [0u8; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[15] = bytes.len() as u8;
    Some(u128::from_le_bytes(buf))
}

/// The key of `text[start..start + len]` (1 to 15 bytes), read with one
/// 16-byte load when the text extends that far past `start`.
#[inline]
pub fn key_at(text: &[u8], start: usize, len: usize) -> Option<u128> {
    if len == 0 || len > MAX_LEN {
        return None;
    }
    match text.get(start..start + 16) {
        Some(window) => {
            let mut buf = [0u8; 16];
            buf.copy_from_slice(window);
            let v = u128::from_le_bytes(buf);
            let mask = (1u128 << (8 * len)) - 1;
            Some((v & mask) | ((len as u128) << 120))
        }
        None => key(text.get(start..start + len)?),
    }
}

/// Four slots in one cache line, most useful first.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Set([u128; WAYS]);

pub struct HotCounts {
    sets: Box<[Set]>,
    shift: u32,
}

impl HotCounts {
    /// A cache of `2^bits` strings (16 bytes each), `bits` from 2 to 24.
    pub fn new(bits: u32) -> Self {
        let bits = bits.clamp(2, 24);
        let sets = 1usize << (bits - 2);
        HotCounts {
            sets: vec![Set::default(); sets].into_boxed_slice(),
            shift: 64 - (bits - 2),
        }
    }

    #[inline]
    fn index(&self, key: u128) -> usize {
        let lo = key as u64;
        let hi = (key >> 64) as u64;
        let h = (lo ^ hi.rotate_left(29).wrapping_mul(0xA24B_AED4_963E_E407))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> self.shift) as usize
    }

    /// The remembered count of the string packed in `key`; a hit moves the
    /// string one place towards the front of its set.
    #[inline]
    pub fn get(&mut self, key: u128) -> Option<usize> {
        let i = self.index(key);
        let set = &mut self.sets[i].0;
        for w in 0..WAYS {
            let v = set[w];
            if v & !COUNT_MASK == key {
                if w > 0 {
                    set.swap(w - 1, w);
                }
                return Some((v >> COUNT_SHIFT) as usize);
            }
        }
        None
    }

    /// Remember `count` for the string packed in `key` (counts above 15, which
    /// a string of at most 15 bytes cannot have, are not stored). New strings
    /// enter a set in its third place, so one-off strings do not push out the
    /// two most used.
    #[inline]
    pub fn put(&mut self, key: u128, count: usize) {
        if count <= 15 {
            let i = self.index(key);
            let set = &mut self.sets[i].0;
            set[3] = set[2];
            set[2] = key | ((count as u128) << COUNT_SHIFT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exact_strings_only() {
        let mut h = HotCounts::new(13);
        let a = key(b" hello").expect("short");
        let b = key(b" hello ").expect("short");
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
            let s = format!("w{i}");
            let k = key(s.as_bytes()).expect("short");
            h.put(k, (i % 16) as usize);
            assert_eq!(h.get(k), Some((i % 16) as usize));
            let old = format!("w{}", i / 2);
            let found = h.get(key(old.as_bytes()).expect("short"));
            assert!(found.is_none() || found == Some((i / 2 % 16) as usize));
        }
    }
}
