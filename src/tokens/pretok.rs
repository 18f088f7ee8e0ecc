//! Pre-tokenisation: splitting text into the pieces BPE works on, exactly as
//! tiktoken's regular expressions do, in linear time.
//!
//! tiktoken's patterns use a negative look-ahead (`\s+(?!\S)`), which needs a
//! backtracking engine. Each pattern here is rewritten for a DFA as a list of
//! patterns searched together (leftmost-first, earlier patterns win): the
//! look-ahead becomes `\s+\s` whose last character is given back, and
//! whitespace running to the end of the text becomes `\s+$`. A lazy DFA
//! (`regex-automata`'s hybrid engine) runs an anchored search per piece with
//! a cache of built states taken from a small pool shared by the process
//! ([`POOL_SLOTS`] caches per pattern, each bounded by [`CACHE_CAPACITY`]),
//! so there is no per-call setup and no backtracking, and the memory does not
//! grow with the number of threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

/// Patterns and whether each ends in an emulated one-character look-ahead.
type Patterns = &'static [(&'static str, bool)];

/// o200k_base (and o200k_harmony): tiktoken's seven alternatives, in order.
const O200K: Patterns = &[
    (
        concat!(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"|\p{N}{1,3}",
            r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
            r"|\s*[\r\n]+",
            r"|\s+$",
        ),
        false,
    ),
    (r"\s+\s", true),
    (r"\s+", false),
];

/// cl100k_base, in the order of tiktoken 0.14's pattern
/// `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s`
/// (its possessive quantifiers never change a match of this pattern).
const CL100K: Patterns = &[
    (
        concat!(
            r"'(?i:[sdmt]|ll|ve|re)",
            r"|[^\r\n\p{L}\p{N}]?\p{L}+",
            r"|\p{N}{1,3}",
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
            r"|\s+$",
            r"|\s*[\r\n]+",
        ),
        false,
    ),
    (r"\s+\s", true),
    (r"\s+", false),
];

/// r50k_base and p50k_base: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
const GPT2: Patterns = &[
    (
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+$",
        false,
    ),
    (r"\s+\s", true),
    (r"\s+", false),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    O200k = 0,
    Cl100k = 1,
    Gpt2 = 2,
}

pub(super) struct Pretokenizer {
    kind: Kind,
    dfa: DFA,
    /// Used only if the lazy DFA gives up (it is configured not to).
    meta: Regex,
    lookahead: Vec<bool>,
    pool: [Mutex<Option<Cache>>; POOL_SLOTS],
}

/// Lazy-DFA caches kept per pattern: more than the cores of most servers,
/// so a counting thread nearly always finds one free and warm. A thread that
/// finds none free (more threads counting at once than slots) uses a cache
/// of its own for that call, dropped at its end.
pub(super) const POOL_SLOTS: usize = 8;
/// Most bytes of built states one cache keeps (the lazy DFA clears a cache
/// that would grow past it; the states of these patterns over multilingual
/// text take a few hundred KiB).
pub(super) const CACHE_CAPACITY: usize = 1 << 20;
/// Most bytes the pools of all patterns hold.
pub(super) const MAX_POOL_BYTES: usize = 3 * POOL_SLOTS * CACHE_CAPACITY;

static PRETOKENIZERS: [OnceLock<Pretokenizer>; 3] =
    [OnceLock::new(), OnceLock::new(), OnceLock::new()];

/// The process-wide pre-tokeniser of a kind.
pub(super) fn pretokenizer(kind: Kind) -> &'static Pretokenizer {
    PRETOKENIZERS[kind as usize].get_or_init(|| Pretokenizer::new(kind))
}

/// Bytes the pools' caches hold now (of the pre-tokenisers made so far).
pub(super) fn pool_bytes() -> usize {
    PRETOKENIZERS
        .iter()
        .filter_map(OnceLock::get)
        .flat_map(|p| &p.pool)
        .map(|slot| slot.lock().as_ref().map_or(0, Cache::memory_usage))
        .sum()
}

/// The pool slot a thread tries first: threads are spread over the slots in
/// the order they first count, so a thread keeps finding its own warm cache.
fn home_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: Cell<Option<usize>> = const { Cell::new(None) };
    }
    HOME.try_with(|h| {
        *h.get().get_or_insert_with(|| {
            let i = NEXT.fetch_add(1, Ordering::Relaxed) % POOL_SLOTS;
            h.set(Some(i));
            i
        })
    })
    .unwrap_or(0)
}

impl Pretokenizer {
    fn new(kind: Kind) -> Self {
        let pats = match kind {
            Kind::O200k => O200K,
            Kind::Cl100k => CL100K,
            Kind::Gpt2 => GPT2,
        };
        let sources: Vec<&str> = pats.iter().map(|(p, _)| *p).collect();
        #[allow(clippy::expect_used)]
        let dfa = DFA::builder()
            .configure(DFA::config().cache_capacity(CACHE_CAPACITY))
            .build_many(&sources)
            .expect("the pre-tokeniser patterns compile");
        #[allow(clippy::expect_used)]
        let meta = Regex::new_many(&sources).expect("the pre-tokeniser patterns compile");
        Pretokenizer {
            kind,
            dfa,
            meta,
            lookahead: pats.iter().map(|(_, l)| *l).collect(),
            pool: std::array::from_fn(|_| Mutex::new(None)),
        }
    }

    /// Calls `f` with each piece of `text`, in order; the pieces cover all of it.
    pub(super) fn for_each_piece(&self, text: &str, mut f: impl FnMut(&str)) {
        let bytes = text.as_bytes();
        let mut run = |cache: &mut Cache| {
            let mut pos = 0;
            while pos < text.len() {
                let end = match self.ascii_piece_end(bytes, pos) {
                    Some(end) => end,
                    None => self.piece_end(cache, text, pos),
                };
                f(&text[pos..end]);
                pos = end;
            }
        };
        let home = home_slot();
        for k in 0..POOL_SLOTS {
            if let Some(mut slot) = self.pool[(home + k) % POOL_SLOTS].try_lock() {
                run(slot.get_or_insert_with(|| self.dfa.create_cache()));
                return;
            }
        }
        // every slot in use (or a re-entrant call): a cache for this call
        run(&mut self.dfa.create_cache());
    }

    /// The pieces of `text` as a vector (for tests and truncation).
    #[cfg(test)]
    pub(super) fn pieces<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let mut pos = 0;
        self.for_each_piece(text, |p| {
            out.push(&text[pos..pos + p.len()]);
            pos += p.len();
        });
        out
    }

    /// The end of the piece at `pos` without the DFA, for the pieces most
    /// text is made of, when the bytes around them are ASCII and the answer
    /// is certain: an ASCII word (with at most one leading ASCII character
    /// that is not a letter, digit, `\r`, `\n` or `'`) or a run of one to
    /// three ASCII digits, in `o200k` and `cl100k`. `None` leaves the piece to
    /// the DFA (a non-ASCII or `'` byte right after the word could extend it).
    ///
    /// Why this is exact: at a letter (or lead character and letter) the
    /// first alternative that can match is the letters pattern, and the
    /// patterns are tried in order. cl100k's takes the lead and every
    /// following letter. o200k's first takes upper case letters then lower
    /// case ones and needs at least one lower case letter; failing that its
    /// second takes the upper case letters; either stops at the first ASCII
    /// byte that is not a letter of the case it expects. At a digit, the
    /// letters patterns cannot match (a digit is no lead) and `\p{N}{1,3}`
    /// takes up to three digits.
    #[inline]
    fn ascii_piece_end(&self, b: &[u8], pos: usize) -> Option<usize> {
        if self.kind == Kind::Gpt2 {
            return None;
        }
        let c = b[pos];
        if c.is_ascii_digit() {
            let mut j = pos + 1;
            while j < b.len() && j - pos < 3 && b[j].is_ascii_digit() {
                j += 1;
            }
            if j - pos < 3 && b.get(j).is_some_and(|&x| x >= 0x80) {
                return None;
            }
            return Some(j);
        }
        let start = if c.is_ascii_alphabetic() {
            pos
        } else {
            if c >= 0x80 || matches!(c, b'\r' | b'\n' | b'\'') {
                return None;
            }
            if !b.get(pos + 1).is_some_and(u8::is_ascii_alphabetic) {
                return None;
            }
            pos + 1
        };
        let mut j = start;
        if self.kind == Kind::O200k {
            while j < b.len() && b[j].is_ascii_uppercase() {
                j += 1;
            }
            while j < b.len() && b[j].is_ascii_lowercase() {
                j += 1;
            }
        } else {
            while j < b.len() && b[j].is_ascii_alphabetic() {
                j += 1;
            }
        }
        match b.get(j) {
            Some(&x) if x >= 0x80 || x == b'\'' => None,
            _ => Some(j),
        }
    }

    fn piece_end(&self, cache: &mut Cache, text: &str, pos: usize) -> usize {
        let input = Input::new(text).range(pos..).anchored(Anchored::Yes);
        let found = match self.dfa.try_search_fwd(cache, &input) {
            Ok(m) => m.map(|m| (m.offset(), m.pattern().as_usize())),
            Err(_) => self
                .meta
                .find(input)
                .map(|m| (m.end(), m.pattern().as_usize())),
        };
        let next_char = pos + text[pos..].chars().next().map_or(1, char::len_utf8);
        match found {
            Some((mut end, pattern)) => {
                if self.lookahead.get(pattern).copied().unwrap_or(false) {
                    end -= text[pos..end].chars().next_back().map_or(0, char::len_utf8);
                }
                // never an empty piece (cannot happen: `\s+` or an earlier
                // pattern matches every character)
                if end <= pos {
                    next_char
                } else {
                    end
                }
            }
            None => next_char,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulates_lookahead() {
        let p = pretokenizer(Kind::Gpt2);
        assert_eq!(
            p.pieces("a   b\t\n  c  "),
            vec!["a", "  ", " b", "\t\n ", " c", "  "]
        );
        assert_eq!(p.pieces("it's 12 !!"), vec!["it", "'s", " 12", " !!"]);
        let huge = " ".repeat(1_000_000) + "x";
        assert_eq!(p.pieces(&huge).len(), 2);
    }

    #[test]
    fn ascii_fast_path_agrees_with_the_dfa() {
        let texts = [
            "Hello WORLD's 12345 x  \n  HTTPServer isn't (word) \tTab\x0bv 9a a9 ",
            "camelCase ABCdef abcDEF A a I'M i'm 'quote' \"q\" x'y 1234567 12é 123é",
            "café naïve Zoë ÉCOLE über 日本語 word日本 ab\u{300}c \r\nline\rcr",
            "a.b,c;d:e!f?g-h_i/j\\k|l@m#n$o%p^q&r*s(t)u[v]w{x}y<z>~`",
        ];
        for kind in [Kind::O200k, Kind::Cl100k] {
            let p = pretokenizer(kind);
            let mut cache = p.dfa.create_cache();
            for t in texts {
                let b = t.as_bytes();
                for pos in (0..b.len()).filter(|&i| t.is_char_boundary(i)) {
                    if let Some(end) = p.ascii_piece_end(b, pos) {
                        assert_eq!(
                            end,
                            p.piece_end(&mut cache, t, pos),
                            "{kind:?} {t:?} at {pos}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn o200k_and_cl100k_pieces() {
        let o = pretokenizer(Kind::O200k);
        assert_eq!(
            o.pieces("Hello WORLD's 12345 x  \n  "),
            vec!["Hello", " WORLD's", " ", "123", "45", " x", "  \n", "  "]
        );
        let c = pretokenizer(Kind::Cl100k);
        assert_eq!(
            c.pieces("Hello WORLD'S 12345 x  \n  "),
            vec!["Hello", " WORLD", "'S", " ", "123", "45", " x", "  \n  "]
        );
    }
}
