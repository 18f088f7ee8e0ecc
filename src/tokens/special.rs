//! Special tokens in text: tiktoken's `allowed_special` / `disallowed_special` rules.

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};

use super::Encoding;

/// A set of special tokens as tiktoken takes it: `"all"` or explicit strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecialSet {
    /// `"all"`: for `allowed_special`, every special token of the encoding;
    /// for `disallowed_special`, every special token not allowed.
    All,
    /// Explicit strings. As in tiktoken, strings that are not special tokens
    /// are ignored when allowed, and still searched for when disallowed.
    Strings(HashSet<String>),
}

impl SpecialSet {
    pub fn none() -> Self {
        SpecialSet::Strings(HashSet::new())
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, SpecialSet::Strings(s) if s.is_empty())
    }

    fn contains(&self, token: &str) -> bool {
        match self {
            SpecialSet::All => true,
            SpecialSet::Strings(s) => s.contains(token),
        }
    }
}

/// A disallowed special token found in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisallowedSpecialFound {
    pub token: String,
    /// Byte offset of the token in the text.
    pub offset: usize,
}

impl DisallowedSpecialFound {
    /// tiktoken's message, with the token rendered by `repr` (Python's `repr()` in the bindings).
    pub fn message(&self, repr: &str) -> String {
        format!(
            "Encountered text corresponding to disallowed special token {repr}.\n\
             If you want this text to be encoded as a special token, pass it to \
             `allowed_special`, e.g. `allowed_special={{{repr}, ...}}`.\n\
             If you want this text to be encoded as normal text, disable the check for this \
             token by passing `disallowed_special=(tokenizer.special_tokens.keys() - {{{repr}}})`.\n\
             To disable this check for all special tokens, pass `disallowed_special=()`.\n"
        )
    }
}

impl std::fmt::Display for DisallowedSpecialFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message(&format!("{:?}", self.token)))
    }
}

impl std::error::Error for DisallowedSpecialFound {}

/// Finds special tokens in text; one per encoding, built on first need.
pub(super) struct Matcher {
    ac: Option<AhoCorasick>,
    ids: Vec<u32>,
}

impl Matcher {
    fn new(tokens: &[(String, u32)]) -> Self {
        // Special tokens all look like `<|...|>`, so none contains another and
        // leftmost-first matching finds each occurrence exactly once.
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(tokens.iter().map(|(s, _)| s.as_str()))
            .ok();
        Matcher {
            ac,
            ids: tokens.iter().map(|(_, id)| *id).collect(),
        }
    }
}

fn all_specials(enc: &Encoding) -> &Matcher {
    enc.all_specials
        .get_or_init(|| Matcher::new(enc.special_tokens()))
}

/// Special-token occurrences `(start, end, id)` of `text` that `allowed` admits, in order.
pub(super) fn allowed_matches<'a>(
    enc: &'a Encoding,
    text: &'a str,
    allowed: &'a SpecialSet,
) -> impl Iterator<Item = (usize, usize, u32)> + 'a {
    let m = all_specials(enc);
    m.ac.iter()
        .flat_map(move |ac| ac.find_iter(text))
        .filter(move |hit| allowed.contains(&text[hit.range()]))
        .map(move |hit| (hit.start(), hit.end(), m.ids[hit.pattern().as_usize()]))
}

/// tiktoken's check: the leftmost disallowed string in `text` is an error.
pub(super) fn check_disallowed(
    enc: &Encoding,
    text: &str,
    allowed: &SpecialSet,
    disallowed: &SpecialSet,
) -> Result<(), DisallowedSpecialFound> {
    let found = match disallowed {
        SpecialSet::All => {
            if matches!(allowed, SpecialSet::All) {
                return Ok(());
            }
            all_specials(enc).ac.as_ref().and_then(|ac| {
                ac.find_iter(text)
                    .find(|hit| !allowed.contains(&text[hit.range()]))
                    .map(|hit| (hit.start(), text[hit.range()].to_owned()))
            })
        }
        SpecialSet::Strings(set) if set.is_empty() => None,
        SpecialSet::Strings(set) => {
            // Arbitrary strings (tiktoken searches for whatever it is given).
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(set.iter().map(String::as_str))
                .ok();
            ac.and_then(|ac| {
                ac.find(text)
                    .map(|hit| (hit.start(), text[hit.range()].to_owned()))
            })
        }
    };
    match found {
        Some((offset, token)) => Err(DisallowedSpecialFound { token, offset }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{encoding, EncodingName};

    fn set(items: &[&str]) -> SpecialSet {
        SpecialSet::Strings(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn default_rejects_special_text() {
        let enc = encoding(EncodingName::Cl100kBase);
        let err = enc
            .encode("hi <|endoftext|>", &SpecialSet::none(), &SpecialSet::All)
            .expect_err("disallowed by default");
        assert_eq!(err.token, "<|endoftext|>");
        assert_eq!(err.offset, 3);
    }

    #[test]
    fn allowed_specials_become_ids() {
        let enc = encoding(EncodingName::Cl100kBase);
        let ids = enc
            .encode(
                "a<|endoftext|>b",
                &set(&["<|endoftext|>"]),
                &SpecialSet::All,
            )
            .expect("allowed");
        assert!(ids.contains(&100_257));
        let all = enc
            .encode(
                "<|fim_prefix|><|endoftext|>",
                &SpecialSet::All,
                &SpecialSet::All,
            )
            .expect("all allowed");
        assert_eq!(all, vec![100_258, 100_257]);
    }

    #[test]
    fn disallowed_empty_encodes_as_text() {
        let enc = encoding(EncodingName::Cl100kBase);
        let ids = enc
            .encode("<|endoftext|>", &SpecialSet::none(), &SpecialSet::none())
            .expect("check disabled");
        assert_eq!(ids, enc.encode_ordinary("<|endoftext|>"));
    }

    #[test]
    fn other_disallowed_special_is_still_found() {
        let enc = encoding(EncodingName::Cl100kBase);
        let err = enc
            .encode(
                "<|endoftext|> <|fim_middle|>",
                &set(&["<|endoftext|>"]),
                &SpecialSet::All,
            )
            .expect_err("fim_middle not allowed");
        assert_eq!(err.token, "<|fim_middle|>");
    }
}
