//! Tokenising a prompt and reading its words, numbers (digits, number
//! words, ordinals, dates), units and negation cues: done once per prompt.

use super::rules::{self, word_key};
use super::words::{tables, NumberWord};
use super::GuardReason;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Number {
    pub(super) value: String,
    /// Number words that are often not numbers ("which one", "at first"): they
    /// can match a number on the other side but never count as a difference.
    pub(super) soft: bool,
}

#[derive(Debug, Default)]
pub struct Analysis {
    /// Normalised words in order (lowercase, apostrophes removed, contractions
    /// reduced to their verb), without numbers and negation cues.
    pub(super) words: Vec<String>,
    /// Lowercased proper nouns: capitalised words not starting a sentence.
    pub(super) proper: Vec<String>,
    pub(super) numbers: Vec<Number>,
    /// (number, canonical unit) for numbers followed (or preceded, currencies)
    /// by a unit.
    pub(super) units: Vec<(String, &'static str)>,
    pub(super) negations: u32,
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
    /// The guard's reading of `text`.
    pub fn new(text: &str) -> Analysis {
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

    /// `Some(reason)` when `candidate` must not answer this prompt.
    pub fn check(&self, candidate: &str) -> Option<GuardReason> {
        rules::compare(self, &Analysis::new(candidate))
    }

    /// The words keyed by a 64-bit hash and sorted by it: the rules compare
    /// integers instead of strings (collisions are negligible at 64 bits).
    pub(super) fn sorted_words(&self) -> Vec<(u64, &str)> {
        let mut w: Vec<(u64, &str)> = self
            .words
            .iter()
            .map(|w| (word_key(w), w.as_str()))
            .collect();
        w.sort_unstable_by_key(|(k, _)| *k);
        w
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
pub(super) fn normalise_number(raw: &str) -> Vec<String> {
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
