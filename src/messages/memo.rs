//! A bounded, process-wide memo of token counts of message texts.
//!
//! Chat backends count the same history again on every turn (and a fit counts
//! what a later `count_messages` counts again); remembering the count of each
//! longer text makes those repeats cost a hash instead of a BPE pass. Keys are
//! two independent randomly seeded 64-bit hashes of the text plus its length
//! and the encoding, so a wrong hit needs a 128-bit collision. Each shard is
//! cleared when full, bounding memory (65,536 counts, about 6 MB at most).

use std::collections::HashMap;
use std::sync::OnceLock;

use ahash::RandomState;
use parking_lot::Mutex;

use crate::tokens::{chunked, Encoding, EncodingName};

/// Shorter texts are cheaper to count than to look up.
pub const MIN_BYTES: usize = 48;
const SHARDS: usize = 16;
const PER_SHARD: usize = 4096;

type Key = (EncodingName, u64, u64, usize);

struct Memo {
    hashers: (RandomState, RandomState),
    shards: Vec<Mutex<HashMap<Key, usize>>>,
}

fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(|| Memo {
        hashers: (RandomState::new(), RandomState::new()),
        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
    })
}

/// `enc.count(text)`, remembered for texts of at least [`MIN_BYTES`].
pub fn count(enc: &Encoding, text: &str) -> usize {
    if text.len() < MIN_BYTES {
        return enc.count(text);
    }
    let m = memo();
    let h1 = m.hashers.0.hash_one(text);
    let h2 = m.hashers.1.hash_one(text);
    let key = (enc.name(), h1, h2, text.len());
    let shard = &m.shards[(h1 % SHARDS as u64) as usize];
    if let Some(&n) = shard.lock().get(&key) {
        return n;
    }
    // by word-sized pieces, whose counts the thread remembers
    let n = chunked::count_text(enc, text);
    let mut map = shard.lock();
    if map.len() >= PER_SHARD {
        map.clear();
    }
    map.insert(key, n);
    n
}

/// Forget every remembered count (benchmarks measure cold counting with it).
pub fn clear() {
    for shard in &memo().shards {
        shard.lock().clear();
    }
}

/// Number of remembered counts.
pub fn len() -> usize {
    memo().shards.iter().map(|s| s.lock().len()).sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tokens::encoding;

    #[test]
    fn remembered_counts_equal_fresh_counts() {
        let o200k = encoding(EncodingName::O200kBase);
        let cl100k = encoding(EncodingName::Cl100kBase);
        for i in 0..300 {
            let text = format!("{i} some longer message text that is worth remembering 🙂 ")
                .repeat(i % 7 + 1);
            for enc in [o200k, cl100k] {
                let fresh = enc.count(&text);
                assert_eq!(count(enc, &text), fresh);
                assert_eq!(count(enc, &text), fresh, "second (remembered) count");
            }
        }
        assert!(len() > 0);
    }
}
