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
//! * no single content word substituted when everything else is identical
//!   (function words swapped for one another never count; near-synonyms count
//!   only when the prompts' embedding similarity, if given, is below
//!   [`VOUCH`]).
//!
//! Names are compared by their stem (case, possessive and plural folded), and
//! a single stray character after the last sentence's end is ignored.
//!
//! The lexical-similarity gates keep real paraphrases (which reword freely and
//! express a negation differently) from being rejected; see
//! `benches/eval_guard.py` for the measured trade-off.
//!
//! Layout: `analysis` tokenises a prompt once into words, numbers, units and
//! negation cues; `rules` compares two analyses; `words` holds the word
//! tables. A lookup analyses its query once ([`Analysis`]) and checks it
//! against each candidate.

mod analysis;
mod rules;
mod words;

pub use analysis::Analysis;

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

/// The embedding similarity at which the prompts' embeddings vouch for a
/// near-synonym swap ("best"/"top", "add"/"upload"): a sentence embedding
/// scores a one-word synonym swap well above it, while a swap that changes
/// the request lowers it.
pub const VOUCH: f32 = 0.9;

/// `Some(reason)` when `query` and `candidate` must not share an answer.
///
/// Symmetric (`check(a, b) == check(b, a)`), and `check(x, x)` is `None`.
pub fn check(query: &str, candidate: &str) -> Option<GuardReason> {
    check_with_similarity(query, candidate, None)
}

/// [`check`] given the prompts' embedding similarity (the cosine of the cache's
/// lookup): a near-synonym swap counts as a change only below [`VOUCH`].
pub fn check_with_similarity(
    query: &str,
    candidate: &str,
    similarity: Option<f32>,
) -> Option<GuardReason> {
    Analysis::new(query).check_with_similarity(candidate, similarity)
}

/// The lexical similarity the guard gates on: the share of word tokens (not
/// numbers, not negation cues) the two prompts have in common, as multisets,
/// over the longer prompt's count. 1.0 for two texts without words.
pub fn word_overlap(query: &str, candidate: &str) -> f32 {
    rules::overlap(
        &Analysis::new(query).sorted_words(),
        &Analysis::new(candidate).sorted_words(),
    )
}

#[cfg(test)]
mod tests;
