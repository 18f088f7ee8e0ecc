//! Byte-pair merging over tiktoken ranks.
//!
//! Merging follows tiktoken's rule exactly (repeatedly merge the adjacent pair
//! whose concatenation has the lowest rank, leftmost first), with a heap for
//! long pieces so a million-byte piece costs O(n log n), not O(n^2). Used for
//! `r50k_base` / `p50k_base`, and by every encoding for the one-lookup fast
//! path of pieces that are a single token.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ahash::AHashMap;

/// Pieces shorter than this are merged with tiktoken's quadratic algorithm.
pub(super) const SMALL: usize = 64;

/// Mergeable ranks: token bytes -> id.
///
/// Tokens are keyed by their bytes packed into an integer with the length in
/// the top byte (`u64` up to 7 bytes, `u128` up to 15): one hash of a register
/// and an integer compare, no pointer chasing or `memcmp`, and the table of
/// short tokens, which merging looks up most, stays small enough for the
/// caches.
pub(super) struct Ranks {
    short: AHashMap<u64, u32>,
    mid: AHashMap<u128, u32>,
    long: AHashMap<Box<[u8]>, u32>,
}

#[inline]
fn pack64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[7] = bytes.len() as u8;
    u64::from_le_bytes(buf)
}

#[inline]
fn pack128(bytes: &[u8]) -> u128 {
    let mut buf = [0u8; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[15] = bytes.len() as u8;
    u128::from_le_bytes(buf)
}

impl Ranks {
    pub(super) fn new(tokens: impl IntoIterator<Item = (Vec<u8>, u32)>) -> Self {
        let mut r = Ranks {
            short: AHashMap::new(),
            mid: AHashMap::new(),
            long: AHashMap::new(),
        };
        for (bytes, rank) in tokens {
            match bytes.len() {
                0..=7 => {
                    r.short.insert(pack64(&bytes), rank);
                }
                8..=15 => {
                    r.mid.insert(pack128(&bytes), rank);
                }
                _ => {
                    r.long.insert(bytes.into_boxed_slice(), rank);
                }
            }
        }
        r
    }

    #[inline]
    pub(super) fn get(&self, bytes: &[u8]) -> Option<u32> {
        match bytes.len() {
            0..=7 => self.short.get(&pack64(bytes)).copied(),
            8..=15 => self.mid.get(&pack128(bytes)).copied(),
            _ => self.long.get(bytes).copied(),
        }
    }

    /// Appends the tokens of one pre-tokenised piece to `out`.
    pub(super) fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(r) = self.get(piece) {
            out.push(r);
        } else if piece.len() < SMALL {
            self.merge_small(piece, out);
        } else {
            self.merge_large(piece, out);
        }
    }

    /// Number of tokens of one piece.
    pub(super) fn count_piece(&self, piece: &[u8], scratch: &mut Vec<u32>) -> usize {
        if self.get(piece).is_some() {
            1
        } else if piece.len() < SMALL {
            self.count_small(piece)
        } else {
            scratch.clear();
            self.merge_large(piece, scratch);
            scratch.len()
        }
    }

    /// The rank of every byte: each single byte is a token in these vocabularies.
    fn byte_rank(&self, b: u8) -> u32 {
        self.get(&[b]).unwrap_or(u32::MAX)
    }

    /// tiktoken's quadratic merge on the stack: cheapest for short pieces.
    /// Calls `emit` with the byte range of each final part.
    fn merge_small_parts(&self, piece: &[u8], mut emit: impl FnMut(&[u8])) {
        debug_assert!(piece.len() < SMALL);
        // parts[i] = (start of part i, rank of merging part i with part i+1)
        let mut parts = [(0u32, u32::MAX); SMALL + 1];
        let mut len = piece.len() + 1;
        for (i, p) in parts[..len].iter_mut().enumerate() {
            p.0 = i as u32;
        }
        let rank_at = |parts: &[(u32, u32)], len: usize, i: usize| -> u32 {
            if i + 2 < len {
                self.get(&piece[parts[i].0 as usize..parts[i + 2].0 as usize])
                    .unwrap_or(u32::MAX)
            } else {
                u32::MAX
            }
        };
        for i in 0..len.saturating_sub(2) {
            parts[i].1 = rank_at(&parts, len, i);
        }
        loop {
            let mut min = (u32::MAX, usize::MAX);
            for (i, &(_, r)) in parts[..len - 1].iter().enumerate() {
                if r < min.0 {
                    min = (r, i);
                }
            }
            if min.0 == u32::MAX {
                break;
            }
            let i = min.1;
            parts.copy_within(i + 2..len, i + 1);
            len -= 1;
            parts[i].1 = rank_at(&parts, len, i);
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, len, i - 1);
            }
        }
        for w in parts[..len].windows(2) {
            emit(&piece[w[0].0 as usize..w[1].0 as usize]);
        }
    }

    fn merge_small(&self, piece: &[u8], out: &mut Vec<u32>) {
        self.merge_small_parts(piece, |bytes| {
            out.push(match self.get(bytes) {
                Some(r) => r,
                None => self.byte_rank(bytes[0]),
            })
        });
    }

    /// Token count of a piece shorter than [`SMALL`] bytes.
    pub(super) fn count_small(&self, piece: &[u8]) -> usize {
        let mut n = 0;
        self.merge_small_parts(piece, |_| n += 1);
        n
    }

    /// Tokens of a piece shorter than [`SMALL`] bytes.
    pub(super) fn encode_small(&self, piece: &[u8], out: &mut Vec<u32>) {
        self.merge_small(piece, out);
    }

    /// The same merge order with a heap and a linked list: O(n log n).
    fn merge_large(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        // Part i starts at byte i; next[i] is the start of the following part (n at the end).
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut pair_rank = vec![u32::MAX; n];
        let pair = |next: &[usize], i: usize| -> u32 {
            let j = next[i];
            if j >= n {
                return u32::MAX;
            }
            let k = next[j];
            self.get(&piece[i..k]).unwrap_or(u32::MAX)
        };
        let mut heap = BinaryHeap::with_capacity(n);
        for (i, rank) in pair_rank.iter_mut().enumerate() {
            *rank = pair(&next, i);
            if *rank != u32::MAX {
                heap.push(Reverse((*rank, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            if !alive[i] || pair_rank[i] != rank {
                continue;
            }
            // merge part i with the next part j
            let j = next[i];
            alive[j] = false;
            next[i] = next[j];
            if next[j] < n {
                prev[next[j]] = i;
            }
            pair_rank[i] = pair(&next, i);
            if pair_rank[i] != u32::MAX {
                heap.push(Reverse((pair_rank[i], i)));
            }
            let p = prev[i];
            if p < n {
                pair_rank[p] = pair(&next, p);
                if pair_rank[p] != u32::MAX {
                    heap.push(Reverse((pair_rank[p], p)));
                }
            }
        }
        let mut i = 0;
        while i < n {
            let bytes = &piece[i..next[i]];
            out.push(match self.get(bytes) {
                Some(r) => r,
                None => self.byte_rank(bytes[0]),
            });
            i = next[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Ranks {
        let mut v: Vec<(Vec<u8>, u32)> = (0u8..=255).map(|b| (vec![b], b as u32)).collect();
        for (i, t) in ["ab", "cd", "abcd", "aa", "aaaa", "  "].iter().enumerate() {
            v.push((t.as_bytes().to_vec(), 256 + i as u32));
        }
        Ranks::new(v)
    }

    #[test]
    fn small_and_large_merges_agree() {
        let r = toy();
        for text in ["abcd", "abcdabcd", "aaaaaaa", "xabcdy", "aaaaaaaaab"] {
            let long = text.repeat(40);
            let (mut a, mut b) = (vec![], vec![]);
            r.merge_small(&long.as_bytes()[..60], &mut a);
            r.merge_large(&long.as_bytes()[..60], &mut b);
            assert_eq!(a, b, "{text}");
        }
    }

    #[test]
    fn lowest_rank_leftmost_first() {
        let r = toy();
        let mut out = vec![];
        r.merge_small(b"aaa", &mut out);
        assert_eq!(out, vec![256 + 3, b'a' as u32]);
    }
}
