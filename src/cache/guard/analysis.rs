//! Tokenising a prompt and reading its words, numbers (digits, number
//! words, ordinals, dates), units and negation cues: done once per prompt.

use super::rules::{self, word_key};
use super::words::{tables, NumberWord};
use super::GuardReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Number {
    /// The canonical form's key ([`word_key`]): numbers are compared by it.
    pub(super) key: u64,
    /// Number words that are often not numbers ("which one", "at first"): they
    /// can match a number on the other side but never count as a difference.
    pub(super) soft: bool,
}

impl Number {
    fn hard(canonical: &str) -> Number {
        Number {
            key: word_key(canonical),
            soft: false,
        }
    }
}

/// Strings in one buffer: one allocation for all the words of a prompt.
#[derive(Debug, Default)]
pub(super) struct Words {
    text: String,
    ends: Vec<usize>,
}

impl Words {
    fn push(&mut self, w: &str) {
        self.text.push_str(w);
        self.ends.push(self.text.len());
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(super) fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }
}

#[derive(Debug, Default)]
pub struct Analysis {
    /// Normalised words in order (lowercase, apostrophes removed, contractions
    /// reduced to their verb), without numbers and negation cues.
    pub(super) words: Words,
    /// Lowercased proper nouns: capitalised words not starting a sentence.
    pub(super) proper: Words,
    pub(super) numbers: Vec<Number>,
    /// (number's key, canonical unit) for numbers followed (or preceded,
    /// currencies) by a unit.
    pub(super) units: Vec<(u64, &'static str)>,
    pub(super) negations: u32,
    /// `words`' keys ([`word_key`]) with their indices, sorted by key:
    /// computed once, compared with every candidate.
    keyed: Vec<(u64, usize)>,
}

/// What the reader just passed, for the token that follows.
#[derive(Default)]
struct Context {
    /// The last number read, if nothing came between it and here.
    prev_number: Option<u64>,
    /// A currency symbol waiting for its number.
    pending_currency: Option<&'static str>,
    acc: NumberWords,
}

impl Analysis {
    /// The guard's reading of `text`, in one pass over it.
    pub fn new(text: &str) -> Analysis {
        let text = without_trailing_noise(text);
        let mut a = Analysis::default();
        let mut cx = Context::default();
        let mut chars = text.char_indices().peekable();
        let mut sentence_start = true;
        let mut word = String::new();
        let mut canonical = String::new();
        while let Some((at, c)) = chars.next() {
            if c.is_ascii_digit() {
                // digits with '.', ',', ':' or '/' between digits
                let mut end = at + 1;
                while let Some(&(i, d)) = chars.peek() {
                    let separator = matches!(d, '.' | ',' | ':' | '/')
                        && text[i + 1..].starts_with(|n: char| n.is_ascii_digit());
                    if d.is_ascii_digit() || separator {
                        chars.next();
                        end = i + 1;
                    } else {
                        break;
                    }
                }
                a.number(&text[at..end], &mut cx, &mut canonical);
                sentence_start = false;
            } else if class(c) & ALNUM != 0 {
                let capitalised = class(c) & UPPER != 0;
                word.clear();
                push_lower(&mut word, c);
                while let Some(&(i, d)) = chars.peek() {
                    if class(d) & ALNUM != 0 && !d.is_ascii_digit() {
                        push_lower(&mut word, d);
                        chars.next();
                    } else if matches!(d, '\'' | '\u{2019}' | '`')
                        && text[i + d.len_utf8()..].starts_with(char::is_alphabetic)
                    {
                        // apostrophes dropped: "what's" and "whats" are one word
                        chars.next();
                    } else {
                        break;
                    }
                }
                a.word(&word, capitalised, sentence_start, &mut cx);
                sentence_start = false;
            } else {
                if matches!(c, '.' | '!' | '?' | '\n' | ':' | ';') {
                    sentence_start = true;
                }
                if matches!(c, '%' | '$' | '\u{20ac}' | '\u{a3}' | '\u{b0}') {
                    a.symbol(c, &mut cx);
                }
            }
        }
        a.flush_words(&mut cx.acc);
        a.numbers.sort_unstable();
        a.keyed = a
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| (word_key(w), i))
            .collect();
        a.keyed.sort_unstable_by_key(|(k, _)| *k);
        a
    }

    fn number(&mut self, raw: &str, cx: &mut Context, buf: &mut String) {
        self.flush_words(&mut cx.acc);
        let mut last = None;
        each_number(raw, buf, |canonical| {
            let n = Number::hard(canonical);
            self.numbers.push(n);
            last = Some(n.key);
        });
        if let (Some(cur), Some(v)) = (cx.pending_currency.take(), last) {
            self.units.push((v, cur));
        }
        cx.prev_number = last;
    }

    fn symbol(&mut self, c: char, cx: &mut Context) {
        self.flush_words(&mut cx.acc);
        let unit = match c {
            '%' => Some("%"),
            '\u{b0}' => Some("deg"),
            _ => None,
        };
        match (unit, cx.prev_number.take()) {
            (Some(u), Some(n)) => self.units.push((n, u)),
            _ => {
                cx.pending_currency = match c {
                    '$' => Some("usd"),
                    '\u{20ac}' => Some("eur"),
                    '\u{a3}' => Some("gbp"),
                    _ => None,
                }
            }
        }
    }

    fn word(&mut self, text: &str, capitalised: bool, sentence_start: bool, cx: &mut Context) {
        cx.pending_currency = None;
        let after_number = cx.prev_number.take();
        let lex = tables().lexicon.get(text).copied().unwrap_or_default();
        if let Some(n) = after_number {
            if matches!(text, "st" | "nd" | "rd" | "th") {
                return; // 28th
            }
            if let Some(u) = lex.unit {
                self.units.push((n, u));
            }
        }
        if let Some(nw) = lex.number {
            if !cx.acc.push(nw, text) {
                self.flush_words(&mut cx.acc);
                cx.acc.push(nw, text);
            }
            return;
        }
        self.flush_words(&mut cx.acc);
        if let Some(v) = lex.calendar {
            self.numbers.push(Number::hard(v));
            return;
        }
        if lex.negation {
            self.negations = self.negations.saturating_add(1);
            return;
        }
        if let Some(base) = lex.contraction {
            self.negations = self.negations.saturating_add(1);
            self.words.push(base);
            return;
        }
        if capitalised && !sentence_start && text != "i" {
            self.proper.push(text);
        }
        self.words.push(text);
    }

    fn flush_words(&mut self, acc: &mut NumberWords) {
        if let Some(n) = acc.take() {
            self.numbers.push(n);
        }
    }

    /// `Some(reason)` when `candidate` must not answer this prompt.
    pub fn check(&self, candidate: &str) -> Option<GuardReason> {
        self.check_with_similarity(candidate, None)
    }

    /// [`Analysis::check`] given the prompts' embedding similarity
    /// ([`super::check_with_similarity`]).
    pub fn check_with_similarity(
        &self,
        candidate: &str,
        similarity: Option<f32>,
    ) -> Option<GuardReason> {
        rules::compare(self, &Analysis::new(candidate), similarity)
    }

    /// The words keyed by a 64-bit hash and sorted by it: the rules compare
    /// integers instead of strings (collisions are negligible at 64 bits).
    pub(super) fn sorted_words(&self) -> Vec<(u64, &str)> {
        self.keyed
            .iter()
            .map(|&(k, i)| (k, self.words.get(i)))
            .collect()
    }
}

/// `text` without a single stray character after its last sentence's end
/// ("Why?s", "Thanks! 1", "Done.~"): a slip of the finger, not a word. A
/// digit counts only after '?' or '!' ("3.9" keeps its 9).
fn without_trailing_noise(text: &str) -> &str {
    let trimmed = text.trim_end();
    let Some((at, last)) = trimmed.char_indices().next_back() else {
        return text;
    };
    let head = trimmed[..at].trim_end();
    let ends = |set: &[char]| head.ends_with(set);
    let noise = if last.is_ascii_digit() {
        ends(&['?', '!'])
    } else if last.is_alphanumeric() {
        ends(&['?', '!', '.'])
    } else {
        !last.is_whitespace() && !matches!(last, '.' | '?' | '!') && ends(&['?', '!', '.'])
    };
    if noise {
        head
    } else {
        text
    }
}

const ALNUM: u8 = 1;
const UPPER: u8 = 2;

/// `c`'s class ([`ALNUM`], [`UPPER`]): from a table for the Basic
/// Multilingual Plane, built once (the standard library's lookups are binary
/// searches, most of the time of text in other scripts), else computed.
#[inline]
fn class(c: char) -> u8 {
    static BMP: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();
    let compute =
        |c: char| (u8::from(c.is_alphanumeric()) * ALNUM) | (u8::from(c.is_uppercase()) * UPPER);
    if c.is_ascii() {
        return compute(c);
    }
    match BMP
        .get_or_init(|| {
            (0..=0xFFFFu32)
                .map(|u| char::from_u32(u).map_or(0, compute))
                .collect()
        })
        .get(c as usize)
    {
        Some(&k) => k,
        None => compute(c),
    }
}

/// Appends `c` lowercased (ASCII without a table lookup).
#[inline]
fn push_lower(s: &mut String, c: char) {
    if c.is_ascii() {
        s.push(c.to_ascii_lowercase());
    } else {
        s.extend(c.to_lowercase());
    }
}

/// Accumulates runs of number words ("twenty five", "two hundred").
#[derive(Default)]
struct NumberWords {
    total: u64,
    current: u64,
    last: Option<NumberWord>,
    words: usize,
    alone: Option<&'static str>,
    soft: bool,
}

impl NumberWords {
    /// Adds a word to the run; false when it cannot extend the run (the
    /// caller flushes and starts a new one).
    fn push(&mut self, w: NumberWord, text: &str) -> bool {
        let extends = match (self.last, w) {
            (None, _) => true,
            (_, NumberWord::Alone(_)) | (Some(NumberWord::Alone(_)), _) => false,
            (Some(NumberWord::Tens(_)), NumberWord::Unit(u)) => u < 10 && u > 0,
            (Some(NumberWord::Scale(_)), NumberWord::Unit(_) | NumberWord::Tens(_)) => true,
            (Some(NumberWord::Unit(_) | NumberWord::Tens(_)), NumberWord::Scale(_)) => true,
            (Some(NumberWord::Scale(s)), NumberWord::Scale(t)) => t > s,
            _ => false,
        };
        if !extends {
            return false;
        }
        // saturating: a run of number words can be as long as the prompt
        // ("nine hundred nine hundred ..."); past u64::MAX every such run
        // reads as the same (absurd) number
        match w {
            NumberWord::Unit(u) | NumberWord::Tens(u) => {
                self.current = self.current.saturating_add(u)
            }
            NumberWord::Scale(100) => self.current = self.current.max(1).saturating_mul(100),
            NumberWord::Scale(s) => {
                self.total = self
                    .total
                    .saturating_add(self.current.max(1).saturating_mul(s));
                self.current = 0;
            }
            NumberWord::Alone(v) => self.alone = Some(v),
        }
        self.words += 1;
        self.soft = self.words == 1 && matches!(text, "one" | "first" | "second" | "once" | "half");
        self.last = Some(w);
        true
    }

    fn take(&mut self) -> Option<Number> {
        self.last?;
        let key = match self.alone {
            Some(v) => word_key(v),
            None => word_key(&self.total.saturating_add(self.current).to_string()),
        };
        let n = Number {
            key,
            soft: self.soft,
        };
        *self = NumberWords::default();
        Some(n)
    }
}

/// Calls `f` with the canonical form of each number of a digit token:
/// thousands separators removed, trailing decimal zeros and ":00" dropped,
/// leading zeros stripped; a comma that is not a thousands separator
/// separates numbers ("2,3"). `buf` is scratch space.
fn each_number(raw: &str, buf: &mut String, mut f: impl FnMut(&str)) {
    let int_part = raw.split('.').next().unwrap_or(raw);
    let mut groups = int_part.split(',');
    let first = groups.next().unwrap_or("");
    let grouped = int_part.contains(',')
        && !first.is_empty()
        && first.len() <= 3
        && groups.all(|g| g.len() == 3);
    if grouped {
        let joined: String = raw.split(',').collect();
        canonical_number(&joined, buf);
        f(buf);
        return;
    }
    for piece in raw.split(',').filter(|p| !p.is_empty()) {
        canonical_number(piece, buf);
        f(buf);
    }
}

/// [`each_number`]'s forms as a list (for tests).
#[cfg(test)]
pub(super) fn normalise_number(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_number(raw, &mut String::new(), |n| out.push(n.to_string()));
    out
}

fn strip_leading_zeros(s: &str) -> &str {
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0"
    } else {
        t
    }
}

/// The canonical form of one number (no ',') into `out`.
fn canonical_number(p: &str, out: &mut String) {
    out.clear();
    if p.contains(':') {
        // "8:00" is 8, "8:05:00" is 8:05: trailing all-zero parts dropped
        let mut keep = p.len();
        while let Some(colon) = p[..keep].rfind(':') {
            if p[colon + 1..keep].bytes().all(|c| c == b'0') {
                keep = colon;
            } else {
                break;
            }
        }
        match p[..keep].split_once(':') {
            Some((head, rest)) => {
                out.push_str(strip_leading_zeros(head));
                out.push(':');
                out.push_str(rest);
            }
            None => out.push_str(strip_leading_zeros(&p[..keep])),
        }
        return;
    }
    if p.contains('/') {
        for (i, part) in p.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(strip_leading_zeros(part));
        }
        return;
    }
    let mut dots = p.match_indices('.');
    match (dots.next(), dots.next()) {
        (Some((at, _)), None) => {
            let frac = p[at + 1..].trim_end_matches('0');
            out.push_str(strip_leading_zeros(&p[..at]));
            if !frac.is_empty() {
                out.push('.');
                out.push_str(frac);
            }
        }
        (Some(_), Some(_)) => out.push_str(p), // a date or a version: as written
        _ => out.push_str(strip_leading_zeros(p)),
    }
}
