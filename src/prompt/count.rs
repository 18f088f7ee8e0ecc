//! Exact, incremental token counting for the compression loop.
//!
//! Compression counts the text once and then once more after every step that
//! changed it, and most steps change a few words. For the encodings whose
//! pre-tokenisation regex is known to split at them (`o200k_base`,
//! `o200k_harmony`, `cl100k_base`), the text is cut at two kinds of positions
//! where a pre-token always ends, and the count is the sum of the counts of
//! the pieces. Word-sized pieces are memoised per thread (bounded, cleared
//! when full) and longer ones for the life of one compression, so counting
//! again after a step that changed a few words costs a lookup per piece:
//!
//! * after `\n` when the next byte is printable ASCII other than `/` (no
//!   pre-token pattern continues past a newline into a non-space, except the
//!   punctuation pattern's `[\r\n/]*` tail in o200k);
//! * before a space that follows a printable ASCII character (the pre-token
//!   holding that character, a word, number or punctuation run, cannot
//!   contain a space; such a piece ends in a non-space, and one cut after a
//!   newline ends in whitespace that `\s*[\r\n]+` claims before the
//!   lookahead pattern `\s+(?!\S)` is tried, in the piece as in the whole text).
//!
//! A piece not remembered yet is counted by the encoding (whose own per-thread
//! caches know the pre-tokens of common words), so a cold start costs about
//! one ordinary count.
//!
//! BPE never merges across pre-tokens, so the sum is exact; the unit tests and
//! tests/test_prompt_optimizer.py compare it with whole-text counts. Other
//! encodings (p50k, r50k: their `\s+(?!\S)` makes the newline cut unsafe) are
//! counted whole.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::tokens::hot::{self, HotCounts};
use crate::tokens::{Encoding, EncodingName};

/// Pieces up to this many bytes are remembered per thread across calls (most
/// are single words); longer ones only for the current compression.
const SHARED_PIECE_MAX: usize = 32;
/// Pieces whose cache lookups are started together.
const PREFETCH_BATCH: usize = 16;
/// A thread's remembered pieces are forgotten when there are this many.
const SHARED_CAPACITY: usize = 1 << 16;

type Memo = HashMap<Box<str>, usize, ahash::RandomState>;

/// A thread's remembered piece counts for one encoding: for pieces up to 15
/// bytes (nearly all of them), a cache of 32,768 (384 KiB) that stays close
/// to the CPU, and for pieces of 16 to `SHARED_PIECE_MAX` bytes a bounded map
/// (a map lookup is a few cache misses).
struct Shared {
    hot: HotCounts,
    map: Memo,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            hot: HotCounts::new(14, 14),
            map: Memo::default(),
        }
    }
}

thread_local! {
    /// word-sized piece -> token count, one per encoding with safe cuts
    static SHARED: RefCell<[Option<Shared>; 3]> = const { RefCell::new([None, None, None]) };
}

pub struct ChunkCounter {
    enc: &'static Encoding,
    slot: Option<usize>,
    local: Memo,
}

impl ChunkCounter {
    pub fn new(enc: &'static Encoding) -> Self {
        ChunkCounter {
            enc,
            slot: Self::slot_of(enc),
            local: Memo::default(),
        }
    }

    fn slot_of(enc: &Encoding) -> Option<usize> {
        match enc.name() {
            EncodingName::O200kBase => Some(0),
            EncodingName::O200kHarmony => Some(1),
            EncodingName::Cl100kBase => Some(2),
            EncodingName::P50kBase | EncodingName::R50kBase => None,
        }
    }

    /// Exact token count of `text`: the sum of the counts of its pieces, each
    /// remembered or counted by the encoding on first sight.
    pub fn count(&mut self, text: &str) -> usize {
        self.count_with(text, true)
    }

    /// `keep_long`: remember pieces longer than `SHARED_PIECE_MAX` for the
    /// life of this counter (compression counts the same text again).
    fn count_with(&mut self, text: &str, keep_long: bool) -> usize {
        let Some(slot) = self.slot else {
            return self.enc.count(text);
        };
        let enc = self.enc;
        let local = &mut self.local;
        let mut run = |shared: &mut Shared| {
            if shared.map.len() >= SHARED_CAPACITY {
                shared.map.clear();
            }
            let mut total = 0usize;
            let bytes = text.as_bytes();
            let mut cut = pieces(text);
            let mut start = 0;
            // pieces in batches: the cache lines of a batch's lookups are
            // requested together, so their misses overlap instead of queueing
            let mut batch = [(0usize, 0usize); PREFETCH_BATCH];
            loop {
                let mut nb = 0;
                while nb < PREFETCH_BATCH {
                    let Some(p) = cut.next() else { break };
                    batch[nb] = (start, p.len());
                    start += p.len();
                    nb += 1;
                }
                if nb == 0 {
                    break;
                }
                for &(s, l) in &batch[..nb] {
                    if let Some(k) = hot::key_at(bytes, s, l) {
                        shared.hot.prefetch(k);
                    }
                }
                for &(s, l) in &batch[..nb] {
                    let p = &text[s..s + l];
                    let key = hot::key_at(bytes, s, l);
                    if let Some(k) = key {
                        // up to 15 bytes: the cache, else the encoding (whose own
                        // caches know the words); a map behind the cache would
                        // cost an allocation for every new piece
                        let n = match shared.hot.get(k) {
                            Some(n) => n,
                            None => {
                                let n = enc.count(p);
                                shared.hot.put(k, n);
                                n
                            }
                        };
                        total += n;
                        continue;
                    }
                    let memo = if p.len() <= SHARED_PIECE_MAX {
                        &mut shared.map
                    } else if keep_long {
                        &mut *local
                    } else {
                        total += enc.count(p);
                        continue;
                    };
                    let n = match memo.get(p) {
                        Some(&n) => n,
                        None => {
                            let n = enc.count(p);
                            memo.insert(p.into(), n);
                            n
                        }
                    };
                    total += n;
                }
            }
            total
        };
        SHARED
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut all) => Some(run(all[slot].get_or_insert_with(Shared::default))),
                Err(_) => None,
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| run(&mut Shared::default()))
    }
}

/// Exact token count of `text` by the same pieces and per-thread caches as
/// [`ChunkCounter::count`], for one text (pieces longer than
/// `SHARED_PIECE_MAX` are counted by the encoding, not remembered). For the
/// encodings without safe cuts this is `enc.count(text)`.
pub fn count_text(enc: &Encoding, text: &str) -> usize {
    // the process-wide encoding of that name (`enc` is it)
    let enc = crate::tokens::encoding(enc.name());
    ChunkCounter {
        enc,
        slot: ChunkCounter::slot_of(enc),
        local: Memo::default(),
    }
    .count_with(text, false)
}

impl crate::prompt::Counter for ChunkCounter {
    fn count(&mut self, text: &str) -> usize {
        ChunkCounter::count(self, text)
    }

    /// Counts only the pieces around what changed: `old` and `new` share a
    /// prefix and a suffix, and whether a position is a cut depends only on
    /// the two bytes around it, so the pieces that end at a cut inside the
    /// shared prefix, or start at one inside the shared suffix, are the same
    /// pieces in both texts; `new` has `old_count` tokens minus those of the
    /// old pieces in between plus those of the new ones.
    fn recount(&mut self, old: &str, old_count: usize, new: &str) -> usize {
        if self.slot.is_none() {
            return self.count(new);
        }
        let (o, n) = (old.as_bytes(), new.as_bytes());
        let shorter = o.len().min(n.len());
        let prefix = o.iter().zip(n).take_while(|(a, b)| a == b).count();
        let suffix = o
            .iter()
            .rev()
            .zip(n.iter().rev())
            .take(shorter - prefix)
            .take_while(|(a, b)| a == b)
            .count();
        // the last cut at or before prefix - 1, the first at or after
        // len - suffix + 1 (in old; the same cut in new)
        let start = (1..prefix).rev().find(|&p| is_cut(o, p)).unwrap_or(0);
        let end_old = (o.len() - suffix + 1..o.len())
            .find(|&p| is_cut(o, p))
            .unwrap_or(o.len());
        let end_new = end_old + n.len() - o.len();
        if (end_old - start) + (end_new - start) >= n.len() {
            return self.count(new);
        }
        // both ends are cuts at ASCII bytes or text ends: character boundaries
        let removed = self.count(&old[start..end_old]);
        let added = self.count(&new[start..end_new]);
        old_count - removed + added
    }
}

/// Whether the pieces of `b` are cut before position `p` (`0 < p < b.len()`).
#[inline]
fn is_cut(b: &[u8], p: usize) -> bool {
    match b[p] {
        b' ' => b[p - 1].is_ascii_graphic(),
        0x21..=0x7e => b[p - 1] == b'\n' && b[p] != b'/',
        _ => false,
    }
}

/// `text` cut at the positions where every supported pre-tokeniser splits.
pub fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let b = text.as_bytes();
    let mut start = 0;
    let mut p = 1;
    std::iter::from_fn(move || {
        while p < b.len() {
            let cut = is_cut(b, p);
            p += 1;
            if cut {
                let s = &text[start..p - 1];
                start = p - 1;
                return Some(s);
            }
        }
        if start < b.len() {
            let s = &text[start..];
            start = b.len();
            return Some(s);
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::encoding;

    #[test]
    fn recounts_equal_whole_counts() {
        use crate::prompt::Counter;
        let base = "Hello world, this is a test.\nNext line here\n  indented\n- item\n/path\n\
                    {\"a\": 1}\n日本語 テキスト and English\nI'm sure they'll say \"don't\" 12 34";
        let edits: &[(&str, &str)] = &[
            ("this is", "this   is"),
            ("Hello", "hello"),
            ("34", "34 "),
            ("\n- item", ""),
            ("  indented", "indented"),
            ("テキスト", "text"),
            ("{\"a\": 1}", "{\"a\":1}"),
            (" and", ""),
            ("\n/path", "\n /path"),
            ("Next", "Next\n\n"),
        ];
        for name in EncodingName::ALL {
            let enc = encoding(name);
            let mut c = ChunkCounter::new(enc);
            let mut cur = base.to_string();
            let mut n = c.count(&cur);
            for (from, to) in edits {
                let next = cur.replacen(from, to, 1);
                let m = Counter::recount(&mut c, &cur, n, &next);
                assert_eq!(m, enc.count(&next), "{name:?} {next:?}");
                cur = next;
                n = m;
            }
            // every single-byte deletion and insertion of a space or newline
            let text = "ab cd\nef  gh\n\nij/kl mn";
            let whole = enc.count(text);
            for i in 0..=text.len() {
                for ins in ["", " ", "\n", "x"] {
                    let mut next = text.to_string();
                    if ins.is_empty() {
                        if i == text.len() {
                            continue;
                        }
                        next.remove(i);
                    } else {
                        next.insert_str(i, ins);
                    }
                    let m = Counter::recount(&mut c, text, whole, &next);
                    assert_eq!(m, enc.count(&next), "{name:?} {next:?}");
                }
            }
        }
    }

    #[test]
    fn chunked_counts_equal_whole_counts() {
        let texts = [
            "Hello world, this is a test.\nNext line here\n  indented\n- item\n/path\n.\n/x",
            "a b c d e f\n\n\nx y\r\nz  w \n\u{a0}q\n\u{3000}r",
            "I'm sure they'll say \"don't\" 123 456789 HTTPServer isn't DONE yet\n\tTab",
            "{\n  \"a\": [1, 2],\n  \"b\": \"x y\"\n}\n```python\ndef f(x):\n    return x  # ok\n```\n",
            "日本語 テキスト and English mixed\nλόγος words\n",
            "a. b) c' d's e 12 ab #$ ab ?! x\n' y\n\" z\n... w ,, v \u{2019} u '' t 'x s",
            "Hello, world! It's (really) great: \"yes\" - no; ok\n1. item\n- item\n> quote",
        ];
        for name in EncodingName::ALL {
            let enc = encoding(name);
            let mut c = ChunkCounter::new(enc);
            for t in texts {
                assert_eq!(c.count(t), enc.count(t), "{name:?} {t:?}");
                if c.slot.is_some() {
                    let sum: usize = pieces(t).map(|p| enc.count(p)).sum();
                    assert_eq!(sum, enc.count(t), "{name:?} {t:?}");
                }
            }
            for t in texts.iter().rev() {
                assert_eq!(c.count(t), enc.count(t), "{name:?} {t:?}");
            }
            for t in texts {
                let mut fresh = ChunkCounter::new(enc);
                assert_eq!(fresh.count(t), enc.count(t), "{name:?} {t:?}");
                let edited = t.replace(' ', "  ").replace("a", "the");
                assert_eq!(
                    fresh.count(&edited),
                    enc.count(&edited),
                    "{name:?} {edited:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::prompt::{compress, Level, Step};
    use crate::tokens::encoding;
    use std::time::Instant;

    fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> (std::time::Duration, T) {
        let mut best = std::time::Duration::MAX;
        let mut out = None;
        for _ in 0..reps {
            let t = Instant::now();
            let r = f();
            best = best.min(t.elapsed());
            out = Some(r);
        }
        (best, out.expect("reps > 0"))
    }

    /// A JSON list of strings from `path`, for the timing tests below (they
    /// do nothing without it).
    fn texts_from(path: &str) -> Option<Vec<String>> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Total of the texts' counts by pieces, each with a fresh counter.
    fn piece_total(enc: &'static Encoding, texts: &[String]) -> usize {
        texts.iter().map(|p| ChunkCounter::new(enc).count(p)).sum()
    }

    /// `cargo test --release --lib timing -- --ignored --nocapture` with
    /// /tmp/prompts.json (a JSON list of strings): where compression spends
    /// its time (best of several passes, per-thread caches warm).
    #[test]
    #[ignore]
    fn where_the_time_goes() {
        let Some(prompts) = texts_from("/tmp/prompts.json") else {
            return;
        };
        let reps: usize = std::env::var("REPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(9);
        let enc = encoding(EncodingName::O200kBase);
        enc.count("warm up");
        let (t, n) = best(reps, || prompts.iter().map(|p| enc.count(p)).sum::<usize>());
        println!("whole count {n}: {t:?}");
        let (t, n) = best(reps, || piece_total(enc, &prompts));
        println!("piece count {n}: {t:?}");
        for step in Step::ALL {
            let (t, n) = best(reps, || {
                prompts.iter().map(|p| step.apply(p).len()).sum::<usize>()
            });
            println!("rule {:>10} {n}: {t:?}", step.name());
        }
        for level in [Level::Lossless, Level::Balanced, Level::Aggressive] {
            let (t, n) = best(reps, || {
                prompts
                    .iter()
                    .map(|p| compress(p, level, None, ChunkCounter::new(enc)).tokens_after)
                    .sum::<usize>()
            });
            println!("compress {level:?} {n}: {t:?}");
        }
    }

    /// `cargo test --release --lib chat_texts -- --ignored --nocapture` with
    /// /tmp/chat_texts.json (a JSON list of the message texts of the chats of
    /// en_100_tree.jsonl): whole counts against counts by pieces, warm.
    #[test]
    #[ignore]
    fn chat_texts() {
        let Some(texts) = texts_from("/tmp/chat_texts.json") else {
            return;
        };
        let enc = encoding(EncodingName::O200kBase);
        for _ in 0..3 {
            let (t, n) = best(30, || texts.iter().map(|p| enc.count(p)).sum::<usize>());
            println!("whole count {n}: {t:?}");
            let (t, n) = best(30, || piece_total(enc, &texts));
            println!("piece count {n}: {t:?}");
        }
    }

    /// `cargo test --release --lib cold_threads -- --ignored --nocapture` with
    /// /tmp/prompts.json: one pass over the prompts in a new thread (its
    /// caches empty), then a second pass; best of `REPS` threads.
    #[test]
    #[ignore]
    fn cold_threads() {
        let Some(prompts) = texts_from("/tmp/prompts.json") else {
            return;
        };
        let enc = encoding(EncodingName::O200kBase);
        enc.count("warm up");
        let reps: usize = std::env::var("REPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let mut best_cold = std::time::Duration::MAX;
        let mut best_warm = std::time::Duration::MAX;
        for _ in 0..reps {
            let (c, w) = std::thread::spawn({
                let prompts = prompts.clone();
                move || {
                    let t = Instant::now();
                    let n: usize = prompts.iter().map(|p| enc.count(p)).sum();
                    let cold = t.elapsed();
                    let t = Instant::now();
                    let m: usize = prompts.iter().map(|p| enc.count(p)).sum();
                    assert_eq!(n, m);
                    (cold, t.elapsed())
                }
            })
            .join()
            .expect("thread");
            best_cold = best_cold.min(c);
            best_warm = best_warm.min(w);
        }
        println!("fresh thread: cold pass {best_cold:?}, second pass {best_warm:?}");
    }
}
