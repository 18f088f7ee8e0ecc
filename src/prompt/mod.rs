//! Prompt compression: rule-based, deterministic, and safe for code.
//!
//! Steps run in order of increasing loss: `json`, `whitespace`, `duplicates`
//! (lossless), `markdown`, `fillers` (balanced), `stopwords` (aggressive).
//! Every step leaves fenced code blocks (```json fences aside, which the JSON
//! step minifies), inline code, URLs, numbers, quoted strings and template
//! placeholders byte-for-byte unchanged, and a step whose result has more
//! tokens than its input is discarded, so compression never costs tokens.
//!
//! `benches/baselines/prompt.py` states the same rules in Python; the two
//! produce identical text for every input (tests/test_prompt_optimizer.py
//! checks this with hypothesis).

pub mod json;
pub mod phrases;
pub mod rules;
pub mod text;

use std::borrow::Cow;

use phrases::PhraseSet;

use crate::tokens::chunked::ChunkCounter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Json,
    Whitespace,
    Duplicates,
    Markdown,
    Fillers,
    StopWords,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Json,
        Step::Whitespace,
        Step::Duplicates,
        Step::Markdown,
        Step::Fillers,
        Step::StopWords,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Json => "json",
            Step::Whitespace => "whitespace",
            Step::Duplicates => "duplicates",
            Step::Markdown => "markdown",
            Step::Fillers => "fillers",
            Step::StopWords => "stopwords",
        }
    }

    /// The text after this step, borrowed when the step certainly changed
    /// nothing.
    pub fn apply(self, text: &str) -> Cow<'_, str> {
        match self {
            Step::Json => rules::minify_json(text),
            Step::Whitespace => rules::whitespace(text),
            Step::Duplicates => rules::duplicates(text),
            Step::Markdown => rules::markdown(text),
            Step::Fillers => PhraseSet::fillers().apply(text),
            Step::StopWords => PhraseSet::stop_words().apply(text),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Lossless,
    Balanced,
    Aggressive,
}

impl Level {
    pub const NAMES: [&'static str; 3] = ["lossless", "balanced", "aggressive"];

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "lossless" => Some(Level::Lossless),
            "balanced" => Some(Level::Balanced),
            "aggressive" => Some(Level::Aggressive),
            _ => None,
        }
    }

    pub fn steps(self) -> &'static [Step] {
        match self {
            Level::Lossless => &Step::ALL[..3],
            Level::Balanced => &Step::ALL[..5],
            Level::Aggressive => &Step::ALL[..],
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Compressed {
    pub text: String,
    pub tokens_before: usize,
    pub tokens_after: usize,
    pub steps: Vec<&'static str>,
}

impl Compressed {
    pub fn saved_ratio(&self) -> f64 {
        if self.tokens_before == 0 {
            0.0
        } else {
            (self.tokens_before - self.tokens_after) as f64 / self.tokens_before as f64
        }
    }
}

/// What compression counts tokens with.
pub trait Counter {
    /// Tokens of `text`.
    fn count(&mut self, text: &str) -> usize;

    /// Tokens of `new`, given that `old` has `old_count` tokens (a counter
    /// that can count only what changed overrides this).
    fn recount(&mut self, old: &str, old_count: usize, new: &str) -> usize {
        let _ = (old, old_count);
        self.count(new)
    }
}

impl<F: FnMut(&str) -> usize> Counter for F {
    fn count(&mut self, text: &str) -> usize {
        self(text)
    }
}

/// Counts by pieces, remembered, and recounts only around what a step changed.
impl Counter for ChunkCounter {
    fn count(&mut self, text: &str) -> usize {
        ChunkCounter::count(self, text)
    }

    fn recount(&mut self, old: &str, old_count: usize, new: &str) -> usize {
        ChunkCounter::recount(self, old, old_count, new)
    }
}

/// Apply the steps of `level` in order. With `target` (a fraction in (0, 1)),
/// stop before the next step once the saved fraction reaches it.
pub fn compress(
    text: &str,
    level: Level,
    target: Option<f64>,
    mut counter: impl Counter,
) -> Compressed {
    let before = counter.count(text);
    let mut cur = text.to_string();
    let mut tokens = before;
    let mut steps = Vec::new();
    for &step in level.steps() {
        if let Some(t) = target {
            if before > 0 && (before - tokens) as f64 / before as f64 >= t {
                break;
            }
        }
        let next = match step.apply(&cur) {
            Cow::Borrowed(_) => continue,
            Cow::Owned(next) if next == cur => continue,
            Cow::Owned(next) => next,
        };
        let n = counter.recount(&cur, tokens, &next);
        if n <= tokens {
            cur = next;
            tokens = n;
            steps.push(step.name());
        }
    }
    Compressed {
        text: cur,
        tokens_before: before,
        tokens_after: tokens,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count() + s.len() / 100
    }

    #[test]
    fn levels_add_steps() {
        let t = "Please note that   the **answer** is 42.\n\n\n\nThe answer is 42, the answer.";
        let l = compress(t, Level::Lossless, None, words);
        assert_eq!(
            l.text,
            "Please note that the **answer** is 42.\n\nThe answer is 42, the answer."
        );
        let b = compress(t, Level::Balanced, None, words);
        assert_eq!(b.text, "The answer is 42.\n\nThe answer is 42, the answer.");
        assert_eq!(b.steps, vec!["whitespace", "markdown", "fillers"]);
        let a = compress(t, Level::Aggressive, None, words);
        assert_eq!(a.text, "Answer 42.\n\nAnswer 42, answer.");
    }

    #[test]
    fn a_step_that_costs_tokens_is_discarded() {
        // a counter that penalises the absence of double spaces
        let odd = |s: &str| 100 - s.matches("  ").count();
        let r = compress("a  b", Level::Lossless, None, odd);
        assert_eq!(r.text, "a  b");
        assert!(r.steps.is_empty());
    }

    #[test]
    fn target_stops_early() {
        let t = "a   b\n\n\n\nplease c";
        let r = compress(t, Level::Aggressive, Some(0.01), |s: &str| s.len());
        assert_eq!(r.steps, vec!["whitespace"]);
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::tokens::chunked::timing::{best, piece_total, texts_from};
    use crate::tokens::{encoding, EncodingName};

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
}
