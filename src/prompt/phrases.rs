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

use std::borrow::Cow;
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

/// A lowercased phrase and its replacement (empty: delete).
type Phrase = (Box<[u8]>, &'static str);

pub struct PhraseSet {
    /// Open addressing: the packed lowercased first word of a phrase (see
    /// [`pack`]; 0 marks an empty slot) -> index into `groups`.
    slots: Box<[(u128, u32)]>,
    /// Per first word: (lowercased phrase, replacement), longest first.
    groups: Vec<Vec<Phrase>>,
    /// Bit `n` of `lens[c & 31]`: some first word starts with the ASCII letter
    /// `c` (either case) and has `n` bytes; rejects most words before [`pack`].
    lens: [u16; 32],
    eat_comma: bool,
}

/// Word bytes: the bytes of word characters ([`is_word`]): ASCII letters,
/// digits, `_`, `'`, and every byte of a non-ASCII character.
static WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'_' || c == b'\'' || c >= 0x80;
        i += 1;
    }
    t
};

/// Longest first word of a phrase that [`pack`] can hold.
const KEY_MAX: usize = 15;

/// `word` lowercased (ASCII) and packed with its length (1 to 15 bytes) into
/// an integer, so that a lookup compares one integer instead of a string.
#[inline]
fn pack(word: &[u8]) -> Option<u128> {
    if word.is_empty() || word.len() > KEY_MAX {
        return None;
    }
    let mut buf = [0u8; 16];
    for (d, s) in buf.iter_mut().zip(word) {
        *d = s.to_ascii_lowercase();
    }
    buf[15] = word.len() as u8;
    Some(u128::from_le_bytes(buf))
}

#[inline]
fn slot_of(key: u128, mask: usize) -> usize {
    let h =
        ((key as u64) ^ ((key >> 64) as u64).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 40) as usize & mask
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
        let mut keys: Vec<u128> = Vec::new();
        let mut lens = [0u16; 32];
        let mut groups: Vec<Vec<Phrase>> = Vec::new();
        for (p, r) in pairs {
            let p = p.to_ascii_lowercase();
            // every phrase is ASCII with a first word of at most 15 bytes
            let first = key_of(&p).as_bytes();
            let Some(k) = pack(first) else {
                continue;
            };
            lens[(first[0] & 31) as usize] |= 1 << first.len();
            let g = match keys.iter().position(|&x| x == k) {
                Some(g) => g,
                None => {
                    keys.push(k);
                    groups.push(Vec::new());
                    groups.len() - 1
                }
            };
            groups[g].push((p.into_bytes().into_boxed_slice(), r));
        }
        for v in &mut groups {
            v.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
        }
        let size = (keys.len() * 4).next_power_of_two().max(16);
        let mut slots = vec![(0u128, 0u32); size].into_boxed_slice();
        for (g, &k) in keys.iter().enumerate() {
            let mut i = slot_of(k, size - 1);
            while slots[i].0 != 0 {
                i = (i + 1) & (size - 1);
            }
            slots[i] = (k, g as u32);
        }
        PhraseSet {
            slots,
            groups,
            lens,
            eat_comma,
        }
    }

    pub fn fillers() -> &'static PhraseSet {
        static S: OnceLock<PhraseSet> = OnceLock::new();
        S.get_or_init(|| PhraseSet::new(FILLERS.iter().copied(), true))
    }

    pub fn stop_words() -> &'static PhraseSet {
        static S: OnceLock<PhraseSet> = OnceLock::new();
        S.get_or_init(|| PhraseSet::new(STOP_WORDS.iter().map(|w| (*w, "")), false))
    }

    #[inline]
    fn group(&self, word: &[u8]) -> Option<&[Phrase]> {
        let key = pack(word)?;
        let mask = self.slots.len() - 1;
        let mut i = slot_of(key, mask);
        loop {
            let (k, g) = self.slots[i];
            if k == key {
                return Some(&self.groups[g as usize]);
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// The longest phrase matching at `j` (the start of the word `b[j..end]`)
    /// with a word boundary after it: its end and its replacement.
    #[inline]
    fn match_at(&self, b: &[u8], j: usize, end: usize) -> Option<(usize, &'static str)> {
        let n = end - j;
        if n > KEY_MAX || self.lens[(b[j] & 31) as usize] & (1 << n) == 0 {
            return None;
        }
        let cands = self.group(&b[j..end])?;
        let rest = &b[j..];
        for (p, r) in cands {
            if rest.len() >= p.len()
                && rest[..p.len()].eq_ignore_ascii_case(p)
                && !rest.get(p.len()).is_some_and(|&c| WORD[c as usize])
            {
                return Some((j + p.len(), r));
            }
        }
        None
    }

    /// The end of the word run starting at `i`.
    #[inline]
    fn word_end(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && WORD[b[i] as usize] {
            i += 1;
        }
        i
    }

    /// Whether some phrase matches at a word start of `line`, read as one
    /// segment. For a line without the byte 0xE2 (the lead byte of the
    /// curly quotes that open and close a protected span next to a word),
    /// `false` means no free segment of the line has a match either: every
    /// protected span begins after a non-word byte or with one, and ends
    /// before one or with one that cannot start a word, so the word starts,
    /// words and boundaries of a free segment are those of the line.
    fn may_match(&self, line: &[u8]) -> bool {
        if line.contains(&0xE2) {
            return true;
        }
        let mut i = 0;
        while i < line.len() {
            if !WORD[line[i] as usize] {
                i += 1;
                continue;
            }
            let end = Self::word_end(line, i + 1);
            if line[i].is_ascii_alphabetic() && self.match_at(line, i, end).is_some() {
                return true;
            }
            i = end;
        }
        false
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
        // invariant: `i` is 0, follows a non-word byte, or ends a match
        while i < b.len() {
            if !WORD[b[i] as usize] {
                i += 1;
                continue;
            }
            // a word run; only one starting with an ASCII letter can match
            let end = Self::word_end(b, i + 1);
            if b[i].is_ascii_alphabetic() {
                if let Some((pend, repl)) = self.match_at(b, i, end) {
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
                    continue;
                }
            }
            i = end;
        }
        emitter.emit(&seg[copied..]);
        changed
    }

    /// Apply to every free segment of every line outside fenced code; `None`
    /// when nothing matched (the text stays as it is).
    pub fn apply_changed(&self, text: &str) -> Option<String> {
        let lines: Vec<&str> = text.split('\n').collect();
        let fenced = fence_mask(&lines);
        let mut out: Option<String> = None;
        let mut scratch = String::new();
        let mut buf = Vec::new();
        let mut off = 0; // byte offset of line i
        for (i, line) in lines.iter().enumerate() {
            let rewrite = !fenced[i] && self.may_match(line.as_bytes());
            match &mut out {
                Some(o) => {
                    o.push('\n');
                    if rewrite {
                        map_free(line, &mut buf, o, |seg, _, o| {
                            self.apply_segment(seg, o);
                        });
                    } else {
                        o.push_str(line);
                    }
                }
                None if rewrite => {
                    scratch.clear();
                    let mut hit = false;
                    map_free(line, &mut buf, &mut scratch, |seg, _, o| {
                        hit |= self.apply_segment(seg, o);
                    });
                    if hit {
                        let mut o = String::with_capacity(text.len());
                        o.push_str(&text[..off]);
                        o.push_str(&scratch);
                        out = Some(o);
                    }
                }
                None => {}
            }
            off += line.len() + 1;
        }
        out
    }

    /// Apply to every free segment of every line outside fenced code.
    pub fn apply<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.apply_changed(text)
            .map_or(Cow::Borrowed(text), Cow::Owned)
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
        PhraseSet::fillers().apply(s).into_owned()
    }

    fn sw(s: &str) -> String {
        PhraseSet::stop_words().apply(s).into_owned()
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
