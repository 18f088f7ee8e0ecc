//! Exact, incremental token counting by pieces, for texts counted again and
//! again: prompt compression (which counts the text once and then once more
//! after every step that changed it, and most steps change a few words) and
//! the memo of message counts.
//!
//! For the encodings whose pre-tokenisation regex is known to split at them
//! (`o200k_base`, `o200k_harmony`, `cl100k_base`), the text is cut at four
//! kinds of positions where a pre-token always ends, and the count is the sum
//! of the counts of the pieces. Pieces up to 48 bytes are remembered in
//! bounded tables shared by every thread of the process, and longer ones for the life of one
//! [`ChunkCounter`] (one compression), so counting again after a step that
//! changed a few words costs a lookup per piece:
//!
//! * after `\n` when the next byte is printable ASCII other than `/` (no
//!   pre-token pattern continues past a newline into a non-space, except the
//!   punctuation pattern's `[\r\n/]*` tail in o200k);
//! * before a space that follows a printable ASCII character (the pre-token
//!   holding that character, a word, number or punctuation run, cannot
//!   contain a space; such a piece ends in a non-space, and one cut after a
//!   newline ends in whitespace that `\s*[\r\n]+` claims before the
//!   lookahead pattern `\s+(?!\S)` is tried, in the piece as in the whole text);
//! * after a newline followed by spaces and tabs up to a printable ASCII
//!   character (an indentation: `\s*[\r\n]+` ends at the last newline of a
//!   whitespace run);
//! * before the last of two or more spaces or tabs followed by a printable
//!   ASCII character (`\s+(?!\S)` takes the whitespace before it; in the
//!   piece, which ends there, it takes it all, the same pre-token).
//!
//! A piece not remembered yet is counted by the encoding (whose own tables
//! know the pre-tokens of common words), so a cold start costs about
//! one ordinary count.
//!
//! BPE never merges across pre-tokens, so the sum is exact; the unit tests and
//! tests/test_prompt_optimizer.py compare it with whole-text counts. Other
//! encodings (p50k, r50k: their `\s+(?!\S)` makes the newline cut unsafe) are
//! counted whole.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::hot;
use super::tables::{Counts, PIECE_MAX};
use super::{Encoding, EncodingName};

/// Pieces up to this many bytes are remembered across calls (most are single
/// words); longer ones only for the current compression.
const SHARED_PIECE_MAX: usize = PIECE_MAX;
/// Pieces whose cache lookups are started together.
const PREFETCH_BATCH: usize = 16;

type Memo = HashMap<Box<str>, usize, ahash::RandomState>;

/// The remembered piece counts of one encoding ([`Counts`]), shared by every
/// thread of the process: for pieces up to 15 bytes (nearly all of them), a
/// cache that stays close to the CPU, of 32,768 pieces up to 7 bytes
/// (256 KiB) and 49,152 of 8 to 15 bytes (1 MiB: the 744 prompts of the
/// benchmark have 17,000 distinct words of 8 to 15 bytes); for pieces of 16
/// to `SHARED_PIECE_MAX` bytes a table of 16,384 (1 MiB).
const BITS: (u32, u32, u32) = (15, 14, 14);
/// Bytes of one encoding's tables (made on its first count by pieces).
pub const TABLE_BYTES: usize = Counts::size(BITS.0, BITS.1, BITS.2);

/// One per encoding with safe cuts.
static SHARED: [OnceLock<Counts>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
/// Bytes of the tables of every encoding with safe cuts.
pub const MAX_TABLE_BYTES: usize = SHARED.len() * TABLE_BYTES;

/// Bytes the piece counter's tables hold now.
pub(super) fn table_bytes() -> usize {
    SHARED
        .iter()
        .filter_map(OnceLock::get)
        .map(Counts::bytes)
        .sum()
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
        let shared = SHARED[slot].get_or_init(|| Counts::new(BITS.0, BITS.1, BITS.2));
        let mut total = 0usize;
        let bytes = text.as_bytes();
        let mut cut = pieces(text);
        let mut start = 0;
        // pieces in batches, and the cache lines of the next batch's
        // lookups requested before this batch is looked up: the misses
        // overlap one another and this batch's work instead of queueing
        let mut fill = |batch: &mut [(usize, usize); PREFETCH_BATCH]| {
            let mut nb = 0;
            while nb < PREFETCH_BATCH {
                let Some(p) = cut.next() else { break };
                batch[nb] = (start, p.len());
                if let Some(k) = hot::key_at(bytes, start, p.len()) {
                    shared.hot.prefetch(k);
                }
                start += p.len();
                nb += 1;
            }
            nb
        };
        let mut batch = [(0usize, 0usize); PREFETCH_BATCH];
        let mut next = [(0usize, 0usize); PREFETCH_BATCH];
        let mut nb = fill(&mut batch);
        while nb > 0 {
            let nn = fill(&mut next);
            for &(s, l) in &batch[..nb] {
                let p = &text[s..s + l];
                // the key again (one load and a mask): keeping it in the
                // batch, 32 bytes an entry, measured slower
                if let Some(k) = hot::key_at(bytes, s, l) {
                    // up to 15 bytes: the cache, else the encoding (whose own
                    // caches know the words)
                    total += match shared.hot.get(k) {
                        Some(n) => n,
                        None => {
                            let n = enc.count(p);
                            shared.hot.put(k, n);
                            n
                        }
                    };
                    continue;
                }
                if p.len() <= SHARED_PIECE_MAX {
                    total += match shared.pieces.get(p.as_bytes()) {
                        Some(n) => n as usize,
                        None => {
                            let n = enc.count(p);
                            shared.pieces.put(p.as_bytes(), n as u32);
                            n
                        }
                    };
                } else if keep_long {
                    total += *local.entry(p.into()).or_insert_with(|| enc.count(p));
                } else {
                    total += enc.count(p);
                }
            }
            std::mem::swap(&mut batch, &mut next);
            nb = nn;
        }
        total
    }
}

/// Exact token count of `text` by the same pieces and tables as
/// [`ChunkCounter::count`], for one text (pieces longer than
/// `SHARED_PIECE_MAX` are counted by the encoding, not remembered). For the
/// encodings without safe cuts this is `enc.count(text)`.
pub fn count_text(enc: &Encoding, text: &str) -> usize {
    // the process-wide encoding of that name (`enc` is it)
    let enc = super::encoding(enc.name());
    ChunkCounter {
        enc,
        slot: ChunkCounter::slot_of(enc),
        local: Memo::default(),
    }
    .count_with(text, false)
}

impl ChunkCounter {
    /// Exact token count of `new`, given that `old` has `old_count` tokens.
    /// Counts only the pieces around what changed: `old` and `new` share a
    /// prefix and a suffix, so the pieces that end at a cut (in both texts)
    /// inside the shared prefix, or start at one inside the shared suffix, are
    /// the same pieces in both texts; `new` has `old_count` tokens minus those
    /// of the old pieces in between plus those of the new ones.
    pub fn recount(&mut self, old: &str, old_count: usize, new: &str) -> usize {
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
        // len - suffix + 1 (in old; the same cut in new); whether a position
        // is a cut may depend on the run of blanks around it, so it is
        // checked in both texts
        let start = (1..prefix)
            .rev()
            .find(|&p| is_cut(o, p) && is_cut(n, p))
            .unwrap_or(0);
        let end_old = (o.len() - suffix + 1..o.len())
            .find(|&p| is_cut(o, p) && is_cut(n, p + n.len() - o.len()))
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

#[inline]
fn is_blank_byte(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Whether the pieces of `b` are cut before position `p` (`0 < p < b.len()`).
#[inline]
fn is_cut(b: &[u8], p: usize) -> bool {
    let (x, y) = (b[p - 1], b[p]);
    match y {
        b' ' if x.is_ascii_graphic() => true,
        0x21..=0x7e => x == b'\n' && y != b'/',
        b' ' | b'\t' if x == b'\n' => {
            // an indentation after the last newline of a whitespace run
            let end = p + b[p..].iter().take_while(|&&c| is_blank_byte(c)).count();
            b.get(end).is_some_and(u8::is_ascii_graphic)
        }
        // the last blank of a whitespace run before a printable character:
        // `\s+(?!\S)` ends before it
        b' ' | b'\t' if is_blank_byte(x) => b.get(p + 1).is_some_and(u8::is_ascii_graphic),
        _ => false,
    }
}

/// Bit `i`: whether [`is_cut`] holds at `base + i`, for the positions from
/// `base` (at least 1) to `base + 63` or the end of `b`, whichever is first.
#[inline]
fn cut_mask(b: &[u8], base: usize) -> u64 {
    if let Some(window) = b.get(base - 1..base + 65) {
        // the cuts decided by the bytes around them, and the indentations,
        // which are few and decided by their run of blanks
        let (mut m, mut maybe) = cut_mask64(window);
        while maybe != 0 {
            let i = maybe.trailing_zeros() as usize;
            maybe &= maybe - 1;
            m |= (is_cut(b, base + i) as u64) << i;
        }
        return m;
    }
    let mut m = 0;
    for p in base..b.len() {
        m |= (is_cut(b, p) as u64) << (p - base);
    }
    m
}

/// For a block, `w` being the byte before it, its 64 bytes and the byte
/// after: the positions where [`is_cut`] holds by the bytes around them, and
/// those after a newline where it holds if the blanks that follow end at a
/// printable character.
#[cfg(target_arch = "x86_64")]
#[inline]
fn cut_mask64(w: &[u8]) -> (u64, u64) {
    use std::arch::x86_64::*;
    debug_assert_eq!(w.len(), 66);
    let (mut sure, mut maybe) = (0u64, 0u64);
    for k in 0..4 {
        // SAFETY: `w` has 66 bytes, so the 16-byte loads at 16k, 16k + 1 and
        // 16k + 2 (k < 4) are in bounds; SSE2 is part of x86-64.
        let (a, b) = unsafe {
            let prev = _mm_loadu_si128(w.as_ptr().add(16 * k).cast());
            let cur = _mm_loadu_si128(w.as_ptr().add(16 * k + 1).cast());
            let next = _mm_loadu_si128(w.as_ptr().add(16 * k + 2).cast());
            let eq = |x, c: u8| _mm_cmpeq_epi8(x, _mm_set1_epi8(c as i8));
            let graphic = |x| _mm_andnot_si128(eq(x, 0x7f), _mm_cmpgt_epi8(x, _mm_set1_epi8(0x20)));
            let blank = |x| _mm_or_si128(eq(x, b' '), eq(x, b'\t'));
            let space_after_graphic = _mm_and_si128(eq(cur, b' '), graphic(prev));
            let graphic_after_newline =
                _mm_andnot_si128(eq(cur, b'/'), _mm_and_si128(graphic(cur), eq(prev, b'\n')));
            let last_blank = _mm_and_si128(_mm_and_si128(blank(cur), blank(prev)), graphic(next));
            let sure = _mm_or_si128(
                _mm_or_si128(space_after_graphic, graphic_after_newline),
                last_blank,
            );
            let indent = _mm_and_si128(blank(cur), eq(prev, b'\n'));
            (_mm_movemask_epi8(sure), _mm_movemask_epi8(indent))
        };
        sure |= u64::from(a as u16) << (16 * k);
        maybe |= u64::from(b as u16) << (16 * k);
    }
    (sure, maybe)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn cut_mask64(w: &[u8]) -> (u64, u64) {
    cut_mask64_portable(w)
}

/// [`cut_mask64`] without SIMD (other architectures; the tests compare the two).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn cut_mask64_portable(w: &[u8]) -> (u64, u64) {
    let mut maybe = 0;
    for i in 0..64 {
        let (x, y) = (w[i], w[i + 1]);
        maybe |= ((is_blank_byte(y) && x == b'\n') as u64) << i;
    }
    let mut sure = 0;
    for i in 0..64 {
        sure |= ((maybe >> i & 1 == 0 && is_cut(w, i + 1)) as u64) << i;
    }
    (sure, maybe)
}

/// `text` cut at the positions where every supported pre-tokeniser splits,
/// found 64 bytes at a time.
pub fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let b = text.as_bytes();
    let mut start = 0;
    // cuts not yet returned among the 64 positions from `base`
    let mut base = 1;
    let mut mask = 0u64;
    let mut next = 1;
    std::iter::from_fn(move || loop {
        if mask != 0 {
            let p = base + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            // a cut is at an ASCII byte: a character boundary
            let s = &text[start..p];
            start = p;
            return Some(s);
        }
        if next < b.len() {
            base = next;
            mask = cut_mask(b, base);
            next = base + 64;
            continue;
        }
        if start < b.len() {
            let s = &text[start..];
            start = b.len();
            return Some(s);
        }
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::encoding;

    /// The cuts by the definition, one position at a time.
    fn pieces_by_definition(text: &str) -> Vec<&str> {
        let b = text.as_bytes();
        let mut cuts: Vec<usize> = (1..b.len()).filter(|&p| is_cut(b, p)).collect();
        cuts.insert(0, 0);
        cuts.push(b.len());
        cuts.windows(2)
            .filter(|w| w[0] < w[1])
            .map(|w| &text[w[0]..w[1]])
            .collect()
    }

    #[test]
    fn table_size_is_the_documented_constant() {
        assert_eq!(Counts::new(BITS.0, BITS.1, BITS.2).bytes(), TABLE_BYTES);
    }

    #[test]
    fn block_cuts_equal_cuts_by_definition() {
        // every byte class at every offset of a block, and blocks' edges
        let alphabet = [
            "a", " ", "\n", "/", "~", "\x7f", "\t", "é", "日", "!", "  ", "\n\n",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..300 {
            let mut t = String::new();
            while t.len() < len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                t.push_str(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            assert_eq!(
                pieces(&t).collect::<Vec<_>>(),
                pieces_by_definition(&t),
                "{t:?}"
            );
        }
        let words = "word ".repeat(100) + "\nline\n/path x\x7f y";
        assert_eq!(
            pieces(&words).collect::<Vec<_>>(),
            pieces_by_definition(&words)
        );
    }

    #[test]
    fn simd_block_masks_equal_portable_ones() {
        let alphabet = b" \t\n\r/a~\x7f\x80\xe6!{";
        let mut seed = 0x1234_5678_9abc_def1_u64;
        for _ in 0..20_000 {
            let w: Vec<u8> = (0..66)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            assert_eq!(cut_mask64(&w), cut_mask64_portable(&w), "{w:?}");
        }
    }

    #[test]
    fn indentation_cuts_keep_counts_exact() {
        // runs of blanks between newlines, printable characters, other
        // whitespace and letters, cut, counted and recounted after edits
        let alphabet = [
            " ", "  ", "\t", "\n", "\r\n", "x", "if", "\"k\":", "{", "/", "'s", "9", "\u{a0}",
            "\u{3000}", "日本", "\x0b", " \n", "    ", "é",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for name in [EncodingName::O200kBase, EncodingName::Cl100kBase] {
            let enc = encoding(name);
            let mut c = ChunkCounter::new(enc);
            for _ in 0..400 {
                let len = rand(40);
                let text: String = (0..len).map(|_| alphabet[rand(alphabet.len())]).collect();
                let whole = enc.count(&text);
                assert_eq!(c.count(&text), whole, "{name:?} {text:?}");
                let i = rand(text.len() + 1);
                if !text.is_char_boundary(i) {
                    continue;
                }
                let mut next = text.clone();
                next.insert_str(i, alphabet[rand(alphabet.len())]);
                let m = c.recount(&text, whole, &next);
                assert_eq!(m, enc.count(&next), "{name:?} {text:?} -> {next:?}");
            }
        }
    }

    #[test]
    fn recounts_equal_whole_counts() {
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
                let m = c.recount(&cur, n, &next);
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
                    let m = c.recount(text, whole, &next);
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

/// Timings on local data (ignored tests, run by hand); the helpers serve
/// `prompt`'s timing of compression too.
#[cfg(test)]
pub(crate) mod timing {
    use super::*;
    use crate::tokens::encoding;
    use std::time::Instant;

    /// The best time of `reps` runs of `f`, and its last result.
    pub(crate) fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> (std::time::Duration, T) {
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
    pub(crate) fn texts_from(path: &str) -> Option<Vec<String>> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Total of the texts' counts by pieces, each with a fresh counter.
    pub(crate) fn piece_total(enc: &'static Encoding, texts: &[String]) -> usize {
        texts.iter().map(|p| ChunkCounter::new(enc).count(p)).sum()
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
