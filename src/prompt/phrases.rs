//! Filler phrases and stop words: whole-word, ASCII case-insensitive removal
//! or replacement inside the free segments of each line.
//!
//! The semantics are those of one Python regular expression per list,
//! `([ \t]*)(?<!W)(p1|p2|...)(?!W)(,?)([ \t]*)` with the phrases longest
//! first, applied left to right without overlap:
//! * a replacement keeps the surrounding spaces and comma and takes the
//!   capitalisation of the matched text's first letter (`In order to` -> `To`);
//! * a deletion also eats a directly following comma (fillers only) and the
//!   spaces after it, or, when no spaces follow, the spaces before it; when the
//!   deleted text started with a capital, the next emitted character is
//!   capitalised (`Please provide` -> `Provide`).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::text::{fence_mask, is_word, map_free};

/// Filler phrases and their replacements (empty: delete). Documented in the README.
pub const FILLERS: &[(&str, &str)] = &[
    ("it is important to note that", ""),
    ("it's important to note that", ""),
    ("it is worth noting that", ""),
    ("it is worth mentioning that", ""),
    ("it should be noted that", ""),
    ("please note that", ""),
    ("please note", ""),
    ("needless to say", ""),
    ("as a matter of fact", ""),
    ("at the end of the day", ""),
    ("for what it's worth", ""),
    ("basically", ""),
    ("actually", ""),
    ("essentially", ""),
    ("literally", ""),
    ("kindly", ""),
    ("please", ""),
    ("in order to", "to"),
    ("in order for", "for"),
    ("due to the fact that", "because"),
    ("owing to the fact that", "because"),
    ("despite the fact that", "although"),
    ("in spite of the fact that", "although"),
    ("in the event that", "if"),
    ("at this point in time", "now"),
    ("at the present time", "now"),
    ("for the purpose of", "for"),
    ("with the exception of", "except"),
    ("in the near future", "soon"),
    ("a large number of", "many"),
    ("the majority of", "most"),
    ("on a daily basis", "daily"),
    ("on a regular basis", "regularly"),
    ("is able to", "can"),
    ("are able to", "can"),
    ("has the ability to", "can"),
    ("have the ability to", "can"),
    ("prior to", "before"),
    ("in close proximity to", "near"),
    ("make sure that", "ensure"),
    ("each and every", "every"),
    ("first and foremost", "first"),
    ("until such time as", "until"),
    ("in a timely manner", "promptly"),
    ("with regard to", "about"),
    ("with regards to", "about"),
    ("in regard to", "about"),
];

/// English stop words removed at the aggressive level. Negations (`not`, `no`,
/// `never`, `nor`, `without`, contractions such as `don't`), modal verbs,
/// pronouns and words that carry logic (`or`, `if`, `but`, `only`, `all`) are
/// deliberately absent.
pub const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "am", "of", "to", "in",
    "on", "at", "by", "for", "with", "from", "into", "onto", "upon", "about", "as", "that",
    "which", "this", "these", "those", "it", "its", "itself", "there", "their", "then", "so",
    "such", "very", "just", "also", "too", "quite", "rather", "really", "some", "any", "here",
    "has", "have", "had", "having", "and", "your", "my", "our", "his", "her", "them", "me", "us",
    "what", "when", "where", "how", "while", "whether", "both", "each", "other",
];

pub struct PhraseSet {
    /// lowercased first word -> (lowercased phrase, replacement), longest first
    by_key: HashMap<String, Vec<(String, &'static str)>, ahash::RandomState>,
    eat_comma: bool,
}

fn key_of(p: &str) -> &str {
    let n = p
        .char_indices()
        .find(|&(_, c)| !is_word(c))
        .map_or(p.len(), |(i, _)| i);
    &p[..n]
}

impl PhraseSet {
    fn new(pairs: impl Iterator<Item = (&'static str, &'static str)>, eat_comma: bool) -> Self {
        let mut by_key: HashMap<String, Vec<(String, &'static str)>, ahash::RandomState> =
            HashMap::default();
        for (p, r) in pairs {
            let p = p.to_ascii_lowercase();
            by_key
                .entry(key_of(&p).to_string())
                .or_default()
                .push((p, r));
        }
        for v in by_key.values_mut() {
            v.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
        }
        PhraseSet { by_key, eat_comma }
    }

    pub fn fillers() -> &'static PhraseSet {
        static S: OnceLock<PhraseSet> = OnceLock::new();
        S.get_or_init(|| PhraseSet::new(FILLERS.iter().copied(), true))
    }

    pub fn stop_words() -> &'static PhraseSet {
        static S: OnceLock<PhraseSet> = OnceLock::new();
        S.get_or_init(|| PhraseSet::new(STOP_WORDS.iter().map(|w| (*w, "")), false))
    }

    /// The longest phrase matching at `j` (a word start) with a word boundary after it.
    fn match_at(&self, seg: &str, j: usize, key: &str) -> Option<(usize, &'static str)> {
        let mut lower = [0u8; 32];
        if key.len() > lower.len() {
            return None;
        }
        for (d, s) in lower.iter_mut().zip(key.bytes()) {
            *d = s.to_ascii_lowercase();
        }
        let k = std::str::from_utf8(&lower[..key.len()]).ok()?;
        let cands = self.by_key.get(k)?;
        let rest = &seg.as_bytes()[j..];
        for (p, r) in cands {
            let pb = p.as_bytes();
            if rest.len() >= pb.len()
                && rest[..pb.len()].eq_ignore_ascii_case(pb)
                && !seg[j + pb.len()..].chars().next().is_some_and(is_word)
            {
                return Some((j + pb.len(), r));
            }
        }
        None
    }

    /// Rewrite one free segment into `out`.
    pub fn apply_segment(&self, seg: &str, out: &mut String) -> bool {
        let b = seg.as_bytes();
        let mut emitter = Emitter {
            out,
            pending: false,
        };
        let mut changed = false;
        let mut prev_end = 0; // end of the last match
        let mut copied = 0; // seg[..copied] has been emitted or dropped
        let mut i = 0;
        let mut prev_word = false;
        while i < b.len() {
            let c = match seg[i..].chars().next() {
                Some(c) => c,
                None => break,
            };
            let w = is_word(c);
            if w && !prev_word && c.is_ascii_alphabetic() {
                // a word start: the key is the maximal run of word characters
                let end = seg[i..]
                    .char_indices()
                    .find(|&(_, x)| !is_word(x))
                    .map_or(seg.len(), |(o, _)| i + o);
                if let Some((pend, repl)) = self.match_at(seg, i, &seg[i..end]) {
                    // leading spaces: from max(prev_end, start of the run before i)
                    let mut lead = i;
                    while lead > prev_end && matches!(b[lead - 1], b' ' | b'\t') {
                        lead -= 1;
                    }
                    let mut after = pend;
                    let comma = self.eat_comma && b.get(after) == Some(&b',');
                    if comma {
                        after += 1;
                    }
                    let mut trail = after;
                    while trail < b.len() && matches!(b[trail], b' ' | b'\t') {
                        trail += 1;
                    }
                    emitter.emit(&seg[copied..lead]);
                    let upper = b[i].is_ascii_uppercase();
                    if repl.is_empty() {
                        if trail > after {
                            emitter.emit(&seg[lead..i]);
                        }
                        if upper {
                            emitter.pending = true;
                        }
                    } else {
                        emitter.emit(&seg[lead..i]);
                        if upper {
                            emitter.pending = true;
                        }
                        emitter.emit(repl);
                        emitter.emit(&seg[pend..trail]);
                    }
                    changed = true;
                    prev_end = trail;
                    copied = trail;
                    i = trail;
                    prev_word = false;
                    continue;
                }
                // skip the rest of this word
                i = end;
                prev_word = true;
                continue;
            }
            prev_word = w;
            i += c.len_utf8();
        }
        emitter.emit(&seg[copied..]);
        changed
    }

    /// Apply to every free segment of every line outside fenced code.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut buf = Vec::new();
        let lines: Vec<&str> = text.split('\n').collect();
        let fenced = fence_mask(&lines);
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            if fenced[i] {
                out.push_str(line);
            } else {
                map_free(line, &mut buf, &mut out, |seg, _, out| {
                    self.apply_segment(seg, out);
                });
            }
        }
        out
    }
}

struct Emitter<'a> {
    out: &'a mut String,
    pending: bool,
}

impl Emitter<'_> {
    fn emit(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if self.pending {
            self.pending = false;
            let first = s.as_bytes()[0];
            if first.is_ascii_lowercase() {
                self.out.push(first.to_ascii_uppercase() as char);
                self.out.push_str(&s[1..]);
                return;
            }
        }
        self.out.push_str(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> String {
        PhraseSet::fillers().apply(s)
    }

    fn sw(s: &str) -> String {
        PhraseSet::stop_words().apply(s)
    }

    #[test]
    fn fillers_keep_case_and_spacing() {
        assert_eq!(f("Please provide the code."), "Provide the code.");
        assert_eq!(f("In order to win, basically, try."), "To win, try.");
        assert_eq!(f("It is done, actually."), "It is done,.");
        assert_eq!(f("pleased to meet"), "pleased to meet");
        assert_eq!(f("Basically actually done"), "Done");
        assert_eq!(
            f("say `please` \"please\" please"),
            "say `please` \"please\""
        );
    }

    #[test]
    fn stop_words_keep_negations() {
        assert_eq!(sw("The cat is not on the mat"), "Cat not mat");
        assert_eq!(sw("it's a 3a test"), "it's 3a test");
    }
}
