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

/// Mergeable ranks: token bytes -> id.
pub(super) struct Ranks {
    map: AHashMap<Box<[u8]>, u32>,
}

impl Ranks {
    pub(super) fn new(tokens: impl IntoIterator<Item = (Vec<u8>, u32)>) -> Self {
        Ranks {
            map: tokens
                .into_iter()
                .map(|(b, r)| (b.into_boxed_slice(), r))
                .collect(),
        }
    }

    #[inline]
    pub(super) fn get(&self, bytes: &[u8]) -> Option<u32> {
        self.map.get(bytes).copied()
    }

    /// Appends the tokens of one pre-tokenised piece to `out`.
    pub(super) fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(r) = self.get(piece) {
            out.push(r);
        } else if piece.len() < 64 {
            self.merge_small(piece, out);
        } else {
            self.merge_large(piece, out);
        }
    }

    /// Number of tokens of one piece.
    pub(super) fn count_piece(&self, piece: &[u8], scratch: &mut Vec<u32>) -> usize {
        if self.get(piece).is_some() {
            return 1;
        }
        scratch.clear();
        self.encode_piece(piece, scratch);
        scratch.len()
    }

    /// The rank of every byte: each single byte is a token in these vocabularies.
    fn byte_rank(&self, b: u8) -> u32 {
        self.get(&[b]).unwrap_or(u32::MAX)
    }

    /// tiktoken's quadratic merge: cheapest for short pieces.
    fn merge_small(&self, piece: &[u8], out: &mut Vec<u32>) {
        // parts[i] = (start of part i, rank of merging part i with part i+1)
        let rank_at = |parts: &[(usize, u32)], i: usize| -> u32 {
            if i + 2 < parts.len() {
                self.get(&piece[parts[i].0..parts[i + 2].0])
                    .unwrap_or(u32::MAX)
            } else {
                u32::MAX
            }
        };
        let mut parts: Vec<(usize, u32)> = (0..=piece.len()).map(|i| (i, u32::MAX)).collect();
        for i in 0..parts.len().saturating_sub(2) {
            parts[i].1 = rank_at(&parts, i);
        }
        loop {
            let mut min = (u32::MAX, usize::MAX);
            for (i, &(_, r)) in parts[..parts.len() - 1].iter().enumerate() {
                if r < min.0 {
                    min = (r, i);
                }
            }
            if min.0 == u32::MAX {
                break;
            }
            let i = min.1;
            parts.remove(i + 1);
            parts[i].1 = rank_at(&parts, i);
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, i - 1);
            }
        }
        for w in parts.windows(2) {
            let bytes = &piece[w[0].0..w[1].0];
            out.push(match self.get(bytes) {
                Some(r) => r,
                None => self.byte_rank(bytes[0]),
            });
        }
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
