//! The guard against false semantic hits: rejects a candidate whose prompt says
//! nearly the same thing as the query except for a change that flips the answer.
//!
//! Sentence embeddings barely move when one number changes or a "not" appears
//! ("is X safe" and "is X not safe" score above 0.9 with MiniLM), so a cache
//! that trusts the cosine alone answers the wrong question. The guard compares
//! the two prompts lexically, once each, with cheap set and multiset
//! operations:
//!
//! * numbers (digits, number words, ordinals, fractions, times, months and
//!   weekdays) must agree; a number that only one side mentions counts only
//!   when the prompts are otherwise near-duplicates (paraphrases often drop a
//!   detail, minimal edits do not);
//! * the count of negation cues ("not", "n't", "no", "never", "without", ...)
//!   must agree when the prompts share most of their words ("don't" and
//!   "do not" both count once);
//! * the unit attached to a shared number must agree ("5 mg" against "5 g");
//! * no antonym or comparison swap (safe/unsafe, more/less, before/after,
//!   hyper-/hypo-, -less/-ful, ...) between words only one side uses;
//! * no proper noun that only one side names on each side (France/Germany);
//! * no single content word substituted when everything else is identical.
//!
//! The lexical-similarity gates keep real paraphrases (which reword freely and
//! express a negation differently) from being rejected; see
//! `benches/eval_guard.py` for the measured trade-off.

use std::sync::OnceLock;

use ahash::AHashMap;

/// Why the guard rejected a semantic candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GuardReason {
    /// The prompts mention different numbers (or dates, ordinals, number words).
    Numbers,
    /// One prompt negates what the other asserts.
    Negation,
    /// The same number with a different unit ("5 mg" / "5 g").
    Units,
    /// A comparison flipped (more/less, higher/lower, before/after, ...).
    Comparison,
    /// A word swapped for its antonym (safe/unsafe, male/female, ...).
    Antonym,
    /// Different named entities (proper nouns) in otherwise similar prompts.
    Entity,
    /// One content word substituted, everything else identical.
    Substitution,
}

impl GuardReason {
    pub const ALL: [GuardReason; 7] = [
        GuardReason::Numbers,
        GuardReason::Negation,
        GuardReason::Units,
        GuardReason::Comparison,
        GuardReason::Antonym,
        GuardReason::Entity,
        GuardReason::Substitution,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GuardReason::Numbers => "numbers",
            GuardReason::Negation => "negation",
            GuardReason::Units => "units",
            GuardReason::Comparison => "comparison",
            GuardReason::Antonym => "antonym",
            GuardReason::Entity => "entity",
            GuardReason::Substitution => "substitution",
        }
    }
}

/// Share of words two prompts must have in common before a number that only
/// one of them mentions counts as a change (a minimal edit, not a rewording).
pub const NEAR_DUPLICATE: f32 = 0.8;
/// Share of words two prompts must have in common before negation, antonym and
/// entity differences count: below it the prompts are rewordings, which express
/// the same negation in different ways ("no pain" / "does not hurt").
pub const SIMILAR: f32 = 0.6;

/// `Some(reason)` when `query` and `candidate` must not share an answer.
///
/// Symmetric (`check(a, b) == check(b, a)`), and `check(x, x)` is `None`.
pub fn check(query: &str, candidate: &str) -> Option<GuardReason> {
    let a = Analysis::new(query);
    let b = Analysis::new(candidate);
    compare(&a, &b)
}

/// A prompt analysed once for the guard, for callers that check one query
/// against several candidates (or keep candidates' analyses).
#[derive(Debug)]
pub struct Prepared(Analysis);

impl Prepared {
    pub fn new(text: &str) -> Prepared {
        Prepared(Analysis::new(text))
    }
}

/// `check` on prepared prompts: the same result, without re-tokenising.
pub fn check_prepared(query: &Prepared, candidate: &Prepared) -> Option<GuardReason> {
    compare(&query.0, &candidate.0)
}

/// The lexical similarity the guard gates on: the share of word tokens (not
/// numbers, not negation cues) the two prompts have in common, as multisets,
/// over the longer prompt's count. 1.0 for two texts without words.
pub fn word_overlap(query: &str, candidate: &str) -> f32 {
    overlap(
        &Analysis::new(query).sorted_words(),
        &Analysis::new(candidate).sorted_words(),
    )
}

fn compare(a: &Analysis, b: &Analysis) -> Option<GuardReason> {
    let wa = a.sorted_words();
    let wb = b.sorted_words();
    let ov = overlap(&wa, &wb);

    if numbers_differ(a, b, ov) {
        return Some(GuardReason::Numbers);
    }
    if ov >= SIMILAR && a.negations != b.negations {
        return Some(GuardReason::Negation);
    }
    if units_differ(a, b) {
        return Some(GuardReason::Units);
    }
    if ov >= SIMILAR {
        if let Some(r) = antonym_swap(&wa, &wb) {
            return Some(r);
        }
        if entity_swap(a, b, &wa, &wb) {
            return Some(GuardReason::Entity);
        }
    }
    if single_substitution(a, b) {
        return Some(GuardReason::Substitution);
    }
    None
}

// ---- analysis ---------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Number {
    value: String,
    /// Number words that are often not numbers ("which one", "at first"): they
    /// can match a number on the other side but never count as a difference.
    soft: bool,
}

#[derive(Debug, Default)]
struct Analysis {
    /// Normalised words in order (lowercase, apostrophes removed, contractions
    /// reduced to their verb), without numbers and negation cues.
    words: Vec<String>,
    /// Lowercased proper nouns: capitalised words not starting a sentence.
    proper: Vec<String>,
    numbers: Vec<Number>,
    /// (number, canonical unit) for numbers followed (or preceded, currencies)
    /// by a unit.
    units: Vec<(String, &'static str)>,
    negations: u32,
}

enum Token {
    Word {
        text: String,
        capitalised: bool,
        sentence_start: bool,
    },
    Number(String),
    Symbol(char),
}

fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut sentence_start = true;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            let mut s = String::new();
            s.push(c);
            i += 1;
            while i < chars.len() {
                let d = chars[i];
                let separator = matches!(d, '.' | ',' | ':' | '/')
                    && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
                if d.is_ascii_digit() || separator {
                    s.push(d);
                    i += 1;
                } else {
                    break;
                }
            }
            out.push(Token::Number(s));
            sentence_start = false;
        } else if c.is_alphanumeric() {
            let capitalised = c.is_uppercase();
            let mut s = String::new();
            while i < chars.len() {
                let d = chars[i];
                if d.is_ascii_alphabetic() {
                    s.push(d.to_ascii_lowercase());
                    i += 1;
                } else if d.is_alphanumeric() && !d.is_ascii_digit() {
                    s.extend(d.to_lowercase());
                    i += 1;
                } else if matches!(d, '\'' | '\u{2019}' | '`')
                    && chars.get(i + 1).is_some_and(|n| n.is_alphabetic())
                    && !s.is_empty()
                {
                    // apostrophes dropped: "what's" and "whats" are one word
                    i += 1;
                } else {
                    break;
                }
            }
            out.push(Token::Word {
                text: s,
                capitalised,
                sentence_start,
            });
            sentence_start = false;
        } else {
            if matches!(c, '.' | '!' | '?' | '\n' | ':' | ';') {
                sentence_start = true;
            }
            if matches!(c, '%' | '$' | '\u{20ac}' | '\u{a3}' | '\u{b0}') {
                out.push(Token::Symbol(c));
            }
            i += 1;
        }
    }
    out
}

impl Analysis {
    fn new(text: &str) -> Analysis {
        let t = tables();
        let tokens = tokenize(text);
        let mut a = Analysis::default();
        let mut acc = NumberWords::default();
        let mut prev_number: Option<String> = None;
        let mut pending_currency: Option<&'static str> = None;
        for tok in tokens {
            match tok {
                Token::Number(raw) => {
                    a.flush_words(&mut acc);
                    let values = normalise_number(&raw);
                    for v in &values {
                        a.numbers.push(Number {
                            value: v.clone(),
                            soft: false,
                        });
                    }
                    let last = values.last().cloned();
                    if let (Some(cur), Some(v)) = (pending_currency.take(), last.as_ref()) {
                        a.units.push((v.clone(), cur));
                    }
                    prev_number = last;
                }
                Token::Symbol(c) => {
                    a.flush_words(&mut acc);
                    let unit = match c {
                        '%' => Some("%"),
                        '\u{b0}' => Some("deg"),
                        _ => None,
                    };
                    match (unit, prev_number.take()) {
                        (Some(u), Some(n)) => a.units.push((n, u)),
                        _ => {
                            pending_currency = match c {
                                '$' => Some("usd"),
                                '\u{20ac}' => Some("eur"),
                                '\u{a3}' => Some("gbp"),
                                _ => None,
                            }
                        }
                    }
                }
                Token::Word {
                    text,
                    capitalised,
                    sentence_start,
                } => {
                    pending_currency = None;
                    let after_number = prev_number.take();
                    let lex = t.lexicon.get(text.as_str()).copied().unwrap_or_default();
                    if let Some(n) = &after_number {
                        if matches!(text.as_str(), "st" | "nd" | "rd" | "th") {
                            continue; // 28th
                        }
                        if let Some(u) = lex.unit {
                            a.units.push((n.clone(), u));
                        }
                    }
                    if let Some(nw) = lex.number {
                        if acc.push(nw, &text) {
                            continue;
                        }
                        a.flush_words(&mut acc);
                        acc.push(nw, &text);
                        continue;
                    }
                    a.flush_words(&mut acc);
                    if let Some(v) = lex.calendar {
                        a.numbers.push(Number {
                            value: v.to_string(),
                            soft: false,
                        });
                        continue;
                    }
                    if lex.negation {
                        a.negations += 1;
                        continue;
                    }
                    if let Some(base) = lex.contraction {
                        a.negations += 1;
                        a.words.push(base.to_string());
                        continue;
                    }
                    if capitalised && !sentence_start && text != "i" {
                        a.proper.push(text.clone());
                    }
                    a.words.push(text);
                }
            }
        }
        a.flush_words(&mut acc);
        a.numbers.sort();
        a
    }

    fn flush_words(&mut self, acc: &mut NumberWords) {
        if let Some(n) = acc.take() {
            self.numbers.push(n);
        }
    }

    /// The words keyed by a 64-bit hash and sorted by it: the rules compare
    /// integers instead of strings (collisions are negligible at 64 bits).
    fn sorted_words(&self) -> Vec<(u64, &str)> {
        let mut w: Vec<(u64, &str)> = self
            .words
            .iter()
            .map(|w| (word_key(w), w.as_str()))
            .collect();
        w.sort_unstable_by_key(|(k, _)| *k);
        w
    }
}

#[derive(Clone, Copy, Debug)]
enum NumberWord {
    /// 0..=19
    Unit(u64),
    /// 20, 30, ... 90
    Tens(u64),
    /// hundred, thousand, million, billion
    Scale(u64),
    /// A word that stands alone: ordinals, "twice", "half", "dozen".
    Alone(&'static str),
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
        match w {
            NumberWord::Unit(u) | NumberWord::Tens(u) => self.current += u,
            NumberWord::Scale(100) => self.current = self.current.max(1) * 100,
            NumberWord::Scale(s) => {
                self.total += self.current.max(1) * s;
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
        let value = match self.alone {
            Some(v) => v.to_string(),
            None => (self.total + self.current).to_string(),
        };
        let n = Number {
            value,
            soft: self.soft,
        };
        *self = NumberWords::default();
        Some(n)
    }
}

/// Canonical forms of a digit token: thousands separators removed, trailing
/// decimal zeros and ":00" dropped, leading zeros stripped; a comma that is not
/// a thousands separator separates numbers ("2,3").
fn normalise_number(raw: &str) -> Vec<String> {
    let grouped = {
        let int_part = raw.split('.').next().unwrap_or(raw);
        let groups: Vec<&str> = int_part.split(',').collect();
        groups.len() > 1
            && !groups[0].is_empty()
            && groups[0].len() <= 3
            && groups[1..].iter().all(|g| g.len() == 3)
    };
    let pieces: Vec<String> = if grouped {
        vec![raw.replace(',', "")]
    } else {
        raw.split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    pieces.iter().map(|p| canonical_number(p)).collect()
}

fn strip_leading_zeros(s: &str) -> &str {
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0"
    } else {
        t
    }
}

fn canonical_number(p: &str) -> String {
    if p.contains(':') {
        let parts: Vec<&str> = p.split(':').collect();
        let mut keep = parts.len();
        while keep > 1 && parts[keep - 1].chars().all(|c| c == '0') {
            keep -= 1;
        }
        let mut out = strip_leading_zeros(parts[0]).to_string();
        for part in &parts[1..keep] {
            out.push(':');
            out.push_str(part);
        }
        return out;
    }
    if p.contains('/') {
        return p
            .split('/')
            .map(strip_leading_zeros)
            .collect::<Vec<_>>()
            .join("/");
    }
    let dots = p.matches('.').count();
    if dots == 1 {
        let (int, frac) = p.split_once('.').unwrap_or((p, ""));
        let frac = frac.trim_end_matches('0');
        let int = strip_leading_zeros(int);
        if frac.is_empty() {
            return int.to_string();
        }
        return format!("{int}.{frac}");
    }
    if dots > 1 {
        return p.to_string(); // a date or a version: compared as written
    }
    strip_leading_zeros(p).to_string()
}

// ---- the rules ----------------------------------------------------------------

type Keyed<'a> = [(u64, &'a str)];

fn word_key(w: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in w.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn contains(sorted: &Keyed<'_>, key: u64) -> bool {
    sorted.binary_search_by_key(&key, |(k, _)| *k).is_ok()
}

/// Multiset intersection of two sorted lists over the longer one's length.
fn overlap(a: &Keyed<'_>, b: &Keyed<'_>) -> f32 {
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    common as f32 / longest as f32
}

/// Numbers present on one side only (multiset difference), counted as
/// (hard, soft) per side; a soft number can absorb an equal number on the
/// other side.
fn unmatched(a: &[Number], b: &[Number]) -> [(usize, usize); 2] {
    let (mut i, mut j) = (0, 0);
    let mut out = [(0, 0); 2];
    let count = |n: &Number, c: &mut (usize, usize)| {
        if n.soft {
            c.1 += 1;
        } else {
            c.0 += 1;
        }
    };
    while i < a.len() || j < b.len() {
        let ord = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.value.cmp(&y.value),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => {
                count(&a[i], &mut out[0]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                count(&b[j], &mut out[1]);
                j += 1;
            }
        }
    }
    out
}

fn numbers_differ(a: &Analysis, b: &Analysis, ov: f32) -> bool {
    let [(ha, sa), (hb, sb)] = unmatched(&a.numbers, &b.numbers);
    if ha > 0 && hb > 0 {
        return true; // a number replaced by another
    }
    if (ha > 0 || hb > 0) && ov >= NEAR_DUPLICATE {
        return true; // a number added to an otherwise identical prompt
    }
    // "the first world war" / "the second world war": soft number words
    // count when both sides have one the other lacks in similar prompts
    (ha + sa > 0) && (hb + sb > 0) && ov >= SIMILAR
}

fn sorted_units<'a>(side: &'a [(String, &'static str)]) -> Vec<(&'a str, &'static str)> {
    let mut v: Vec<(&'a str, &'static str)> = side.iter().map(|(n, u)| (n.as_str(), *u)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn units_differ(a: &Analysis, b: &Analysis) -> bool {
    if a.units.is_empty() || b.units.is_empty() {
        return false;
    }
    // sets, not multisets ("2 months" may be said twice on one side), grouped
    // by number; a number both sides give a unit must have the same units
    let (ua, ub) = (sorted_units(&a.units), sorted_units(&b.units));
    let (mut i, mut j) = (0, 0);
    while i < ua.len() && j < ub.len() {
        let (na, nb) = (ua[i].0, ub[j].0);
        match na.cmp(nb) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                let ei = i + ua[i..].iter().take_while(|(n, _)| *n == na).count();
                let ej = j + ub[j..].iter().take_while(|(n, _)| *n == nb).count();
                if ua[i..ei] != ub[j..ej] {
                    return true;
                }
                i = ei;
                j = ej;
            }
        }
    }
    false
}

/// Light suffix stripping so that "increased", "increasing" and "increases"
/// meet "increase" in the antonym table.
fn stem(w: &str) -> &str {
    // dispatch on the last byte: this runs for every differing word
    let suffixes: &[&str] = match w.as_bytes().last() {
        Some(b'g') => &["ing"],
        Some(b'd') => &["ed"],
        Some(b's') if !w.ends_with("ss") => &["es", "s"],
        Some(b'e') => &["e"],
        _ => return w,
    };
    for suffix in suffixes {
        if let Some(base) = w.strip_suffix(suffix) {
            if base.len() >= 3
                && base.chars().count() >= 3
                && !(*suffix == "s" && base.ends_with('u'))
            {
                return base;
            }
        }
    }
    w
}

/// Distinct stems present on one side only.
fn only_in<'a>(a: &Keyed<'a>, b: &Keyed<'_>) -> Vec<&'a str> {
    // words present verbatim on the other side are skipped without stemming,
    // so near-duplicates (the common case) stem only the few words that differ
    let differing: Vec<&str> = a
        .iter()
        .filter(|(k, _)| !contains(b, *k))
        .map(|(_, w)| stem(w))
        .collect();
    if differing.is_empty() {
        return differing;
    }
    let mut b_stems: Vec<&str> = b.iter().map(|(_, w)| stem(w)).collect();
    b_stems.sort_unstable();
    let mut out: Vec<&str> = differing
        .into_iter()
        .filter(|s| b_stems.binary_search(s).is_err())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn antonym_swap(wa: &Keyed<'_>, wb: &Keyed<'_>) -> Option<GuardReason> {
    let oa = only_in(wa, wb);
    if oa.is_empty() {
        return None;
    }
    let ob = only_in(wb, wa);
    if ob.is_empty() {
        return None;
    }
    // linear in the differing words: each word's counterparts are looked up
    // in the other side's sorted list, never all pairs
    let t = tables();
    let in_b = |w: &str| ob.binary_search(&w).is_ok();
    let mut best: Option<GuardReason> = None;
    for x in &oa {
        if let Some(partners) = t.antonyms.get(x) {
            for (y, r) in partners {
                if in_b(y) {
                    best = Some(best.map_or(*r, |b| b.min(*r)));
                }
            }
        }
        if affix_counterparts(x).iter().any(|y| in_b(y)) {
            best = Some(best.map_or(GuardReason::Antonym, |b| b.min(GuardReason::Antonym)));
        }
    }
    best
}

const PREFIX_SWAPS: [(&str, &str); 10] = [
    ("hyper", "hypo"),
    ("over", "under"),
    ("pre", "post"),
    ("inter", "intra"),
    ("up", "down"),
    ("in", "out"),
    ("in", "ex"),
    ("im", "ex"),
    ("en", "de"),
    ("max", "min"),
];

/// The words that would be `x`'s opposite by affix: "safe" <-> "unsafe",
/// "nonsmoker" <-> "smoker", "hyperthyroid" <-> "hypothyroid", "painless"
/// <-> "painful". Both directions are generated, so checking one side's
/// words is enough (and symmetric).
fn affix_counterparts(x: &str) -> Vec<String> {
    let chars = |s: &str| s.chars().count();
    let mut out = Vec::new();
    for p in ["un", "non"] {
        if chars(x) >= 3 && !(p == "un" && x == "less") {
            out.push(format!("{p}{x}"));
        }
        if let Some(base) = x.strip_prefix(p) {
            if chars(base) >= 3 && x != "unless" {
                out.push(base.to_string());
            }
        }
    }
    for (p, q) in PREFIX_SWAPS {
        if let Some(base) = x.strip_prefix(p) {
            if chars(base) >= 4 {
                out.push(format!("{q}{base}"));
            }
        }
        if let Some(base) = x.strip_prefix(q) {
            if chars(base) >= 4 {
                out.push(format!("{p}{base}"));
            }
        }
    }
    if let Some(base) = x.strip_suffix("less") {
        if chars(base) >= 3 {
            out.push(format!("{base}ful"));
        }
    }
    if let Some(base) = x.strip_suffix("ful") {
        if chars(base) >= 3 {
            out.push(format!("{base}less"));
        }
    }
    out
}

fn entity_swap(a: &Analysis, b: &Analysis, wa: &Keyed<'_>, wb: &Keyed<'_>) -> bool {
    let new_in = |p: &[String], other: &Keyed<'_>| p.iter().any(|w| !contains(other, word_key(w)));
    new_in(&a.proper, wb) && new_in(&b.proper, wa)
}

fn single_substitution(a: &Analysis, b: &Analysis) -> bool {
    if a.words.len() != b.words.len() || a.words.is_empty() {
        return false;
    }
    let mut diff = None;
    for (i, (x, y)) in a.words.iter().zip(&b.words).enumerate() {
        if x != y {
            if diff.is_some() {
                return false;
            }
            diff = Some(i);
        }
    }
    let Some(i) = diff else { return false };
    let (x, y) = (a.words[i].as_str(), b.words[i].as_str());
    let t = tables();
    let (gx, gy) = (t.interchangeable.get(x), t.interchangeable.get(y));
    if gx.is_some() && gx == gy {
        return false;
    }
    if stem(x) == stem(y) || is_typo(x, y) {
        return false;
    }
    true
}

/// Spelling variants and typos: at most one edit for words of 4+ characters,
/// two for 8+.
fn is_typo(x: &str, y: &str) -> bool {
    let xs: Vec<char> = x.chars().collect();
    let ys: Vec<char> = y.chars().collect();
    let shortest = xs.len().min(ys.len());
    let allowed = if shortest >= 8 {
        2
    } else if shortest >= 4 {
        1
    } else {
        return false;
    };
    if xs.len().abs_diff(ys.len()) > allowed {
        return false;
    }
    let mut prev: Vec<usize> = (0..=ys.len()).collect();
    let mut cur = vec![0; ys.len() + 1];
    for (i, cx) in xs.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cy) in ys.iter().enumerate() {
            let cost = usize::from(cx != cy);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[ys.len()] <= allowed
}

// ---- tables ---------------------------------------------------------------------

/// What the guard knows about one word (one hash lookup per word).
#[derive(Clone, Copy, Default)]
struct Lexeme {
    number: Option<NumberWord>,
    calendar: Option<&'static str>,
    negation: bool,
    /// "dont" -> "do": a negation plus the verb it negates.
    contraction: Option<&'static str>,
    unit: Option<&'static str>,
}

struct Tables {
    lexicon: AHashMap<&'static str, Lexeme>,
    /// stem -> its opposites' stems
    antonyms: AHashMap<&'static str, Vec<(&'static str, GuardReason)>>,
    /// word -> its group in INTERCHANGEABLE
    interchangeable: AHashMap<&'static str, usize>,
}

const UNITS: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];

const TENS: [&str; 8] = [
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

const ALONE: &[(&str, &str)] = &[
    ("first", "1"),
    ("second", "2"),
    ("third", "3"),
    ("fourth", "4"),
    ("fifth", "5"),
    ("sixth", "6"),
    ("seventh", "7"),
    ("eighth", "8"),
    ("ninth", "9"),
    ("tenth", "10"),
    ("eleventh", "11"),
    ("twelfth", "12"),
    ("twentieth", "20"),
    ("hundredth", "100"),
    ("once", "1"),
    ("twice", "2"),
    ("thrice", "3"),
    ("half", "1/2"),
    ("dozen", "12"),
    ("dozens", "12"),
];

const MONTHS: &[(&str, &str)] = &[
    ("january", "month1"),
    ("jan", "month1"),
    ("february", "month2"),
    ("feb", "month2"),
    ("march", "month3"),
    ("mar", "month3"),
    ("april", "month4"),
    ("apr", "month4"),
    ("june", "month6"),
    ("jun", "month6"),
    ("july", "month7"),
    ("jul", "month7"),
    ("august", "month8"),
    ("aug", "month8"),
    ("september", "month9"),
    ("sept", "month9"),
    ("sep", "month9"),
    ("october", "month10"),
    ("oct", "month10"),
    ("november", "month11"),
    ("nov", "month11"),
    ("december", "month12"),
    ("dec", "month12"),
    ("monday", "weekday1"),
    ("tuesday", "weekday2"),
    ("wednesday", "weekday3"),
    ("thursday", "weekday4"),
    ("friday", "weekday5"),
    ("saturday", "weekday6"),
    ("sunday", "weekday7"),
];

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "non", "nope",
];

const CONTRACTIONS: &[(&str, &str)] = &[
    ("dont", "do"),
    ("doesnt", "does"),
    ("didnt", "did"),
    ("isnt", "is"),
    ("arent", "are"),
    ("wasnt", "was"),
    ("werent", "were"),
    ("havent", "have"),
    ("hasnt", "has"),
    ("hadnt", "had"),
    ("wont", "will"),
    ("wouldnt", "would"),
    ("cant", "can"),
    ("couldnt", "could"),
    ("shouldnt", "should"),
    ("mustnt", "must"),
    ("neednt", "need"),
    ("mightnt", "might"),
    ("shant", "shall"),
    ("aint", "is"),
    ("cannot", "can"),
    ("without", "with"),
];

const UNIT_WORDS: &[(&str, &str)] = &[
    ("mg", "mg"),
    ("milligram", "mg"),
    ("milligrams", "mg"),
    ("g", "g"),
    ("gm", "g"),
    ("gram", "g"),
    ("grams", "g"),
    ("kg", "kg"),
    ("kgs", "kg"),
    ("kilo", "kg"),
    ("kilos", "kg"),
    ("kilogram", "kg"),
    ("kilograms", "kg"),
    ("mcg", "mcg"),
    ("ug", "mcg"),
    ("µg", "mcg"),
    ("microgram", "mcg"),
    ("micrograms", "mcg"),
    ("ml", "ml"),
    ("millilitre", "ml"),
    ("milliliter", "ml"),
    ("milliliters", "ml"),
    ("millilitres", "ml"),
    ("l", "l"),
    ("litre", "l"),
    ("liter", "l"),
    ("litres", "l"),
    ("liters", "l"),
    ("lb", "lb"),
    ("lbs", "lb"),
    ("pound", "lb"),
    ("pounds", "lb"),
    ("oz", "oz"),
    ("ounce", "oz"),
    ("ounces", "oz"),
    ("mm", "mm"),
    ("cm", "cm"),
    ("m", "m"),
    ("meter", "m"),
    ("meters", "m"),
    ("metre", "m"),
    ("metres", "m"),
    ("km", "km"),
    ("inch", "in"),
    ("inches", "in"),
    ("ft", "ft"),
    ("foot", "ft"),
    ("feet", "ft"),
    ("mile", "mi"),
    ("miles", "mi"),
    ("mi", "mi"),
    ("s", "s"),
    ("sec", "s"),
    ("secs", "s"),
    ("second", "s"),
    ("seconds", "s"),
    ("min", "min"),
    ("mins", "min"),
    ("minute", "min"),
    ("minutes", "min"),
    ("h", "h"),
    ("hr", "h"),
    ("hrs", "h"),
    ("hour", "h"),
    ("hours", "h"),
    ("day", "day"),
    ("days", "day"),
    ("week", "week"),
    ("weeks", "week"),
    ("wk", "week"),
    ("wks", "week"),
    ("month", "month"),
    ("months", "month"),
    ("mo", "month"),
    ("year", "year"),
    ("years", "year"),
    ("yr", "year"),
    ("yrs", "year"),
    ("percent", "%"),
    ("pct", "%"),
    ("degree", "deg"),
    ("degrees", "deg"),
    ("celsius", "c"),
    ("fahrenheit", "f"),
    ("dollar", "usd"),
    ("dollars", "usd"),
    ("usd", "usd"),
    ("euro", "eur"),
    ("euros", "eur"),
    ("eur", "eur"),
    ("gb", "gb"),
    ("mb", "mb"),
    ("kb", "kb"),
    ("tb", "tb"),
    ("ghz", "ghz"),
    ("mhz", "mhz"),
    ("am", "am"),
    ("pm", "pm"),
];

/// Pairs whose swap flips the answer. Comparisons first; both directions are
/// entered.
const COMPARISONS: &[(&str, &str)] = &[
    ("more", "less"),
    ("more", "fewer"),
    ("most", "least"),
    ("higher", "lower"),
    ("highest", "lowest"),
    ("high", "low"),
    ("greater", "smaller"),
    ("greater", "lesser"),
    ("increase", "decrease"),
    ("increase", "reduce"),
    ("raise", "lower"),
    ("rise", "fall"),
    ("gain", "lose"),
    ("gain", "loss"),
    ("bigger", "smaller"),
    ("biggest", "smallest"),
    ("big", "small"),
    ("larger", "smaller"),
    ("largest", "smallest"),
    ("large", "small"),
    ("longer", "shorter"),
    ("longest", "shortest"),
    ("long", "short"),
    ("faster", "slower"),
    ("fastest", "slowest"),
    ("fast", "slow"),
    ("older", "younger"),
    ("oldest", "youngest"),
    ("old", "young"),
    ("better", "worse"),
    ("best", "worst"),
    ("maximum", "minimum"),
    ("max", "min"),
    ("above", "below"),
    ("over", "under"),
    ("heavier", "lighter"),
    ("earlier", "later"),
    ("early", "late"),
    ("before", "after"),
    ("first", "last"),
    ("cheaper", "dearer"),
    ("stronger", "weaker"),
    ("strongest", "weakest"),
    ("warmer", "colder"),
    ("hotter", "colder"),
    ("easier", "harder"),
    ("easiest", "hardest"),
];

const ANTONYMS: &[(&str, &str)] = &[
    ("safe", "dangerous"),
    ("safe", "harmful"),
    ("true", "false"),
    ("right", "wrong"),
    ("correct", "wrong"),
    ("good", "bad"),
    ("positive", "negative"),
    ("male", "female"),
    ("man", "woman"),
    ("men", "women"),
    ("boy", "girl"),
    ("husband", "wife"),
    ("son", "daughter"),
    ("father", "mother"),
    ("brother", "sister"),
    ("adult", "child"),
    ("adults", "children"),
    ("adult", "kid"),
    ("hot", "cold"),
    ("warm", "cold"),
    ("start", "stop"),
    ("begin", "end"),
    ("open", "close"),
    ("open", "closed"),
    ("on", "off"),
    ("always", "never"),
    ("all", "none"),
    ("yes", "no"),
    ("left", "right"),
    ("upper", "lower"),
    ("top", "bottom"),
    ("front", "back"),
    ("inside", "outside"),
    ("internal", "external"),
    ("acute", "chronic"),
    ("benign", "malignant"),
    ("import", "export"),
    ("buy", "sell"),
    ("win", "lose"),
    ("accept", "reject"),
    ("add", "remove"),
    ("include", "exclude"),
    ("enable", "disable"),
    ("encrypt", "decrypt"),
    ("encode", "decode"),
    ("push", "pull"),
    ("send", "receive"),
    ("input", "output"),
    ("north", "south"),
    ("east", "west"),
    ("day", "night"),
    ("morning", "evening"),
    ("morning", "night"),
    ("yesterday", "tomorrow"),
    ("today", "tomorrow"),
    ("today", "yesterday"),
    ("past", "future"),
    ("present", "absent"),
    ("wet", "dry"),
    ("heavy", "light"),
    ("thick", "thin"),
    ("hard", "soft"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("cheap", "expensive"),
    ("pass", "fail"),
    ("love", "hate"),
    ("like", "dislike"),
    ("agree", "disagree"),
    ("able", "unable"),
    ("allow", "forbid"),
    ("allow", "prohibit"),
    ("legal", "illegal"),
    ("possible", "impossible"),
    ("regular", "irregular"),
    ("relevant", "irrelevant"),
    ("responsible", "irresponsible"),
    ("reversible", "irreversible"),
    ("logical", "illogical"),
    ("mature", "immature"),
    ("mobile", "immobile"),
    ("patient", "impatient"),
    ("perfect", "imperfect"),
    ("proper", "improper"),
    ("polite", "impolite"),
    ("practical", "impractical"),
    ("active", "inactive"),
    ("adequate", "inadequate"),
    ("appropriate", "inappropriate"),
    ("complete", "incomplete"),
    ("correct", "incorrect"),
    ("curable", "incurable"),
    ("direct", "indirect"),
    ("effective", "ineffective"),
    ("efficient", "inefficient"),
    ("expensive", "inexpensive"),
    ("formal", "informal"),
    ("sufficient", "insufficient"),
    ("valid", "invalid"),
    ("visible", "invisible"),
    ("voluntary", "involuntary"),
    ("dependent", "independent"),
    ("consistent", "inconsistent"),
    ("capable", "incapable"),
    ("secure", "insecure"),
    ("stable", "unstable"),
    ("sensitive", "insensitive"),
    ("tolerant", "intolerant"),
    ("honest", "dishonest"),
    ("connect", "disconnect"),
    ("approve", "disapprove"),
    ("continue", "discontinue"),
    ("comfort", "discomfort"),
    ("advantage", "disadvantage"),
    ("appear", "disappear"),
    ("satisfied", "dissatisfied"),
    ("obey", "disobey"),
    ("trust", "distrust"),
    ("normal", "abnormal"),
    ("typical", "atypical"),
    ("symmetric", "asymmetric"),
    ("symptomatic", "asymptomatic"),
    ("sync", "async"),
    ("synchronous", "asynchronous"),
    ("success", "failure"),
    ("succeed", "fail"),
    ("win", "loss"),
    ("profit", "loss"),
    ("friend", "enemy"),
    ("light", "dark"),
    ("clean", "dirty"),
    ("full", "empty"),
    ("alive", "dead"),
    ("live", "die"),
    ("legal", "banned"),
    ("permitted", "forbidden"),
    ("useful", "useless"),
    ("include", "omit"),
    ("maximize", "minimize"),
    ("maximise", "minimise"),
    ("ascending", "descending"),
    ("asc", "desc"),
    ("upload", "download"),
    ("login", "logout"),
    ("inhale", "exhale"),
    ("vegan", "carnivore"),
    ("iphone", "android"),
];

/// Groups of words whose swap leaves the request the same (articles, modal
/// hedges, politeness, a few request verbs and near-synonyms common in
/// prompts); a substitution within a group is not a change.
const INTERCHANGEABLE: &[&[&str]] = &[
    &[
        "a", "an", "the", "this", "that", "can", "could", "may", "might", "should", "would",
        "will", "please", "kindly", "some", "any", "do", "does", "is", "are", "am", "hi", "hello",
        "hey",
    ],
    &["explain", "describe", "define", "whats", "what", "clarify"],
    &["give", "show", "tell", "provide", "list"],
    &["to", "into"],
    &["ok", "okay", "alright", "fine", "safe"],
    &["good", "great", "nice", "decent"],
    &["big", "large", "huge"],
    &["small", "little", "tiny"],
    &["fast", "quick", "quickly", "rapid"],
    &["buy", "purchase"],
    &["fix", "repair", "solve", "resolve"],
    &["start", "begin"],
    &["make", "create", "build", "write"],
    &["use", "utilize", "utilise"],
    &["help", "assist"],
    &["about", "on", "regarding"],
];

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut lexicon: AHashMap<&'static str, Lexeme> = AHashMap::new();
        let mut number =
            |w: &'static str, n: NumberWord| lexicon.entry(w).or_default().number = Some(n);
        for (i, w) in UNITS.iter().enumerate() {
            number(w, NumberWord::Unit(i as u64));
        }
        for (i, w) in TENS.iter().enumerate() {
            number(w, NumberWord::Tens(20 + 10 * i as u64));
        }
        for (w, s) in [
            ("hundred", 100),
            ("thousand", 1000),
            ("million", 1_000_000),
            ("billion", 1_000_000_000),
        ] {
            number(w, NumberWord::Scale(s));
        }
        for (w, v) in ALONE {
            number(w, NumberWord::Alone(v));
        }
        for (w, v) in MONTHS {
            lexicon.entry(w).or_default().calendar = Some(v);
        }
        for w in NEGATIONS {
            lexicon.entry(w).or_default().negation = true;
        }
        for (w, base) in CONTRACTIONS {
            lexicon.entry(w).or_default().contraction = Some(base);
        }
        for (w, u) in UNIT_WORDS {
            lexicon.entry(w).or_default().unit = Some(u);
        }
        let mut antonyms = AHashMap::new();
        for (list, reason) in [
            (ANTONYMS, GuardReason::Antonym),
            (COMPARISONS, GuardReason::Comparison),
        ] {
            for (x, y) in list {
                let (sx, sy) = (stem(x), stem(y));
                if sx == sy {
                    continue;
                }
                antonyms
                    .entry(sx)
                    .or_insert_with(Vec::new)
                    .push((sy, reason));
                antonyms
                    .entry(sy)
                    .or_insert_with(Vec::new)
                    .push((sx, reason));
            }
        }
        Tables {
            lexicon,
            antonyms,
            interchangeable: INTERCHANGEABLE
                .iter()
                .enumerate()
                .flat_map(|(g, words)| words.iter().map(move |w| (*w, g)))
                .collect(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(a: &str, b: &str) -> Option<&'static str> {
        let r = check(a, b);
        assert_eq!(r, check(b, a), "asymmetric on {a:?} / {b:?}");
        r.map(GuardReason::as_str)
    }

    #[test]
    fn numbers() {
        assert_eq!(
            reason(
                "I have had a fever for 3 days",
                "I have had a fever for 4 days"
            ),
            Some("numbers")
        );
        assert_eq!(
            reason("Can I take two pills?", "Can I take 3 pills?"),
            Some("numbers")
        );
        assert_eq!(
            reason("Can I take twenty five mg?", "Can I take 25 mg?"),
            None
        );
        assert_eq!(reason("meeting on the 3rd", "meeting on the third"), None);
        assert_eq!(
            reason("meeting on the 3rd", "meeting on the fourth"),
            Some("numbers")
        );
        assert_eq!(
            reason("it costs 1,000 dollars", "it costs 1000 dollars"),
            None
        );
        assert_eq!(reason("at 2:00 pm", "at 2 pm"), None);
        assert_eq!(reason("a 2.50 fee", "a 2.5 fee"), None);
        assert_eq!(reason("born in March", "born in April"), Some("numbers"));
        assert_eq!(
            reason("Can I take ibuprofen?", "Can I take 2 ibuprofen?"),
            Some("numbers")
        );
    }

    #[test]
    fn negation() {
        assert_eq!(
            reason(
                "Is it safe to drink coffee?",
                "Is it not safe to drink coffee?"
            ),
            Some("negation")
        );
        assert_eq!(reason("I don't sleep well", "I do not sleep well"), None);
        assert_eq!(reason("I can't sleep", "I cannot sleep"), None);
        assert_eq!(reason("I can't sleep", "I can sleep"), Some("negation"));
        assert_eq!(
            reason("coffee with sugar", "coffee without sugar"),
            Some("negation")
        );
    }

    #[test]
    fn antonyms_and_comparisons() {
        assert_eq!(
            reason(
                "Is it safe to fly when pregnant?",
                "Is it unsafe to fly when pregnant?"
            ),
            Some("antonym")
        );
        assert_eq!(
            reason(
                "Should I eat before running?",
                "Should I eat after running?"
            ),
            Some("comparison")
        );
        assert_eq!(
            reason(
                "why does my blood pressure increase",
                "why does my blood pressure decrease"
            ),
            Some("comparison")
        );
        assert_eq!(
            reason(
                "symptoms of hyperthyroidism in women",
                "symptoms of hypothyroidism in women"
            ),
            Some("antonym")
        );
        assert_eq!(
            reason("is the procedure painless", "is the procedure painful"),
            Some("antonym")
        );
    }

    #[test]
    fn entities_units_substitution() {
        assert_eq!(
            reason(
                "What is the capital of France?",
                "What is the capital of Germany?"
            ),
            Some("entity")
        );
        assert_eq!(
            reason(
                "what is the capital of france",
                "what is the capital of germany"
            ),
            Some("substitution")
        );
        assert_eq!(reason("Take 5 mg daily", "Take 5 g daily"), Some("units"));
        assert_eq!(reason("Take 5mg daily", "Take 5 mg daily"), None);
        assert_eq!(reason("can i take ibuprofen", "can i take ibuprofin"), None);
        assert_eq!(
            reason("can i take the medication", "can i take the medications"),
            None
        );
    }

    #[test]
    fn paraphrases_pass() {
        assert_eq!(
            reason("How do I reset my password?", "how do i reset my password"),
            None
        );
        assert_eq!(
            reason("What's the weather like?", "whats the weather like"),
            None
        );
        assert_eq!(
            reason(
                "My vitamin D level is 20, should I stop taking vitamin D? Even 400 gives me cramps.",
                "I get cramps even on a dose of 400 but my vitamin D level is 20. Should I stop?",
            ),
            None
        );
        assert_eq!(reason("", ""), None);
        assert_eq!(reason("¿Qué? 東京 🙂", "¿Qué? 東京 🙂"), None);
    }

    #[test]
    fn prepared_agrees_with_check() {
        let pairs = [
            ("I have 3 cats", "I have 4 cats"),
            ("is it safe", "is it not safe"),
            ("a", "a"),
        ];
        for (x, y) in pairs {
            assert_eq!(
                check_prepared(&Prepared::new(x), &Prepared::new(y)),
                check(x, y)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn never_contradicts_itself(x in "\\PC{0,80}") {
            proptest::prop_assert_eq!(check(&x, &x), None);
        }

        #[test]
        fn symmetric(a in "[a-zA-Z0-9 .,:%$'-]{0,60}", b in "[a-zA-Z0-9 .,:%$'-]{0,60}") {
            proptest::prop_assert_eq!(check(&a, &b), check(&b, &a));
        }

        #[test]
        fn symmetric_on_guard_words(
            a in proptest::collection::vec(proptest::sample::select(WORDS.to_vec()), 0..10),
            b in proptest::collection::vec(proptest::sample::select(WORDS.to_vec()), 0..10),
        ) {
            let (a, b) = (a.join(" "), b.join(" "));
            proptest::prop_assert_eq!(check(&a, &b), check(&b, &a));
        }
    }

    const WORDS: &[&str] = &[
        "the",
        "not",
        "no",
        "don't",
        "3",
        "three",
        "2.50",
        "1,000",
        "safe",
        "unsafe",
        "more",
        "less",
        "France",
        "Paris",
        "mg",
        "g",
        "%",
        "$",
        "first",
        "28th",
        "half",
        "twenty",
        "five",
        "painless",
        "painful",
        "hyperthyroid",
        "hypothyroid",
        "cats",
        "dogs",
        "good",
        "great",
    ];

    #[test]
    fn number_normalisation() {
        assert_eq!(normalise_number("1,000"), vec!["1000"]);
        assert_eq!(normalise_number("2,3"), vec!["2", "3"]);
        assert_eq!(normalise_number("007"), vec!["7"]);
        assert_eq!(normalise_number("8:00"), vec!["8"]);
        assert_eq!(normalise_number("8:05"), vec!["8:05"]);
        assert_eq!(normalise_number("1.50"), vec!["1.5"]);
        assert_eq!(normalise_number("1/2"), vec!["1/2"]);
    }
}
