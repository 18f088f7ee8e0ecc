//! Pre-tokenisation: splitting text into the pieces BPE works on, exactly as
//! tiktoken's regular expressions do, in linear time.
//!
//! tiktoken's patterns use a negative look-ahead (`\s+(?!\S)`), which needs a
//! backtracking engine. Each pattern here is rewritten for a DFA as a list of
//! patterns searched together (leftmost-first, earlier patterns win): the
//! look-ahead becomes `\s+\s` whose last character is given back, and
//! whitespace running to the end of the text becomes `\s+$`. A lazy DFA
//! (`regex-automata`'s hybrid engine) runs an anchored search per piece with
//! a per-thread cache, so there is no per-call setup and no backtracking.

use std::cell::RefCell;
use std::sync::OnceLock;

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
}

thread_local! {
    static CACHES: RefCell<[Option<Cache>; 3]> = const { RefCell::new([None, None, None]) };
}

/// The process-wide pre-tokeniser of a kind (the per-thread caches belong to it).
pub(super) fn pretokenizer(kind: Kind) -> &'static Pretokenizer {
    static CELLS: [OnceLock<Pretokenizer>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    CELLS[kind as usize].get_or_init(|| Pretokenizer::new(kind))
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
            .build_many(&sources)
            .expect("the pre-tokeniser patterns compile");
        #[allow(clippy::expect_used)]
        let meta = Regex::new_many(&sources).expect("the pre-tokeniser patterns compile");
        Pretokenizer {
            kind,
            dfa,
            meta,
            lookahead: pats.iter().map(|(_, l)| *l).collect(),
        }
    }

    /// Calls `f` with each piece of `text`, in order; the pieces cover all of it.
    pub(super) fn for_each_piece(&self, text: &str, mut f: impl FnMut(&str)) {
        let slot = self.kind as usize;
        let mut run = |cache: &mut Cache| {
            let mut pos = 0;
            while pos < text.len() {
                let end = self.piece_end(cache, text, pos);
                f(&text[pos..end]);
                pos = end;
            }
        };
        let done = CACHES
            .try_with(|caches| {
                let Ok(mut caches) = caches.try_borrow_mut() else {
                    return false;
                };
                let cache = caches[slot].get_or_insert_with(|| self.dfa.create_cache());
                run(cache);
                true
            })
            .unwrap_or(false);
        if !done {
            // re-entrant use or thread teardown: a cache of our own
            run(&mut self.dfa.create_cache());
        }
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
