//! The rules: what differs between two analysed prompts, and whether the
//! difference flips the answer.

use super::analysis::{Analysis, Number, Words};
use super::words::{tables, OPPOSITE_FUNCTION_WORDS};
use super::{GuardReason, NEAR_DUPLICATE, SIMILAR, VOUCH};

/// `similarity`: the prompts' embedding similarity, when the caller has it.
pub(super) fn compare(a: &Analysis, b: &Analysis, similarity: Option<f32>) -> Option<GuardReason> {
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
        if entity_swap(a, b) {
            return Some(GuardReason::Entity);
        }
    }
    if single_substitution(a, b, similarity) {
        return Some(GuardReason::Substitution);
    }
    None
}

pub(super) type Keyed<'a> = [(u64, &'a str)];

pub(super) fn word_key(w: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in w.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Multiset intersection of two sorted lists over the longer one's length.
pub(super) fn overlap(a: &Keyed<'_>, b: &Keyed<'_>) -> f32 {
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
            (Some(x), Some(y)) => x.key.cmp(&y.key),
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

fn sorted_units(side: &[(u64, &'static str)]) -> Vec<(u64, &'static str)> {
    let mut v = side.to_vec();
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
        match na.cmp(&nb) {
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
pub(super) fn stem(w: &str) -> &str {
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
    // words present verbatim on the other side are skipped without stemming
    // (one merge of the two sorted lists), so near-duplicates (the common
    // case) stem only the few words that differ
    let mut differing: Vec<&str> = Vec::new();
    let mut j = 0;
    for &(k, w) in a {
        while b.get(j).is_some_and(|(kb, _)| *kb < k) {
            j += 1;
        }
        if b.get(j).is_none_or(|(kb, _)| *kb != k) {
            differing.push(stem(w));
        }
    }
    if differing.is_empty() {
        return differing;
    }
    differing.sort_unstable();
    differing.dedup();
    // the other side's stems, each looked up among the differing ones
    let mut shared = vec![false; differing.len()];
    for (_, w) in b {
        if let Ok(i) = differing.binary_search(&stem(w)) {
            shared[i] = true;
        }
    }
    differing
        .into_iter()
        .zip(shared)
        .filter_map(|(d, s)| (!s).then_some(d))
        .collect()
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

/// A proper noun one side names and the other does not mention, on each side.
/// Names are compared after folding case, the possessive and the plural
/// ([`name_key`]): "India's" meets "India", "WD Elements" meets "WD Element".
fn entity_swap(a: &Analysis, b: &Analysis) -> bool {
    if a.proper.is_empty() || b.proper.is_empty() {
        return false;
    }
    fn keys(w: &Words) -> Vec<&str> {
        let mut v: Vec<&str> = w.iter().map(name_key).collect();
        v.sort_unstable();
        v
    }
    let new_in =
        |p: &Words, other: &[&str]| p.iter().any(|w| other.binary_search(&name_key(w)).is_err());
    new_in(&a.proper, &keys(&b.words)) && new_in(&b.proper, &keys(&a.words))
}

/// A lowercased word (apostrophes already dropped) without its possessive or
/// plural "s": "indias" and "elements" become "india" and "element". Not the
/// verb stemmer: "wyoming" stays whole.
fn name_key(w: &str) -> &str {
    match w.strip_suffix('s') {
        Some(base) if base.chars().count() >= 3 && !base.ends_with('s') => base,
        _ => w,
    }
}

/// Everything identical but one word, and that word's swap changes the
/// request: not two function words, not an inflection or typo, not two
/// near-synonyms unless the embedding similarity is below [`VOUCH`].
fn single_substitution(a: &Analysis, b: &Analysis, similarity: Option<f32>) -> bool {
    if a.words.len() != b.words.len() || a.words.is_empty() {
        return false;
    }
    let mut diff = None;
    for (i, (x, y)) in a.words.iter().zip(b.words.iter()).enumerate() {
        if x != y {
            if diff.is_some() {
                return false;
            }
            diff = Some(i);
        }
    }
    let Some(i) = diff else { return false };
    let (x, y) = (a.words.get(i), b.words.get(i));
    let t = tables();
    let (sx, sy) = (stem(x), stem(y));
    // antonyms checked here too: in a short prompt the antonym rule's
    // overlap gate may not be reached ("before dinner" / "after dinner")
    let opposite = |p: &(&str, &str)| *p == (x, y) || *p == (y, x);
    if OPPOSITE_FUNCTION_WORDS.iter().any(opposite)
        || t.antonyms
            .get(sx)
            .is_some_and(|p| p.iter().any(|(w, _)| *w == sy))
    {
        return true;
    }
    if t.function_words.contains(x) && t.function_words.contains(y) {
        return false;
    }
    let (gx, gy) = (t.near_synonyms.get(x), t.near_synonyms.get(y));
    if gx.is_some() && gx == gy {
        return similarity.is_some_and(|s| s < VOUCH);
    }
    if sx == sy || is_typo(x, y) {
        return false;
    }
    true
}

/// Spelling variants and typos: at most one edit for words of 4+ characters,
/// two for 8+.
///
/// Linear in the words' length: the common prefix and suffix are dropped
/// (an edit distance does not change), and only the diagonal band the
/// allowed edits can reach is computed.
fn is_typo(x: &str, y: &str) -> bool {
    let (nx, ny) = (x.chars().count(), y.chars().count());
    let shortest = nx.min(ny);
    let allowed = if shortest >= 8 {
        2
    } else if shortest >= 4 {
        1
    } else {
        return false;
    };
    if nx.abs_diff(ny) > allowed {
        return false;
    }
    let prefix = x.chars().zip(y.chars()).take_while(|(a, b)| a == b).count();
    let xs: Vec<char> = x.chars().skip(prefix).collect();
    let ys: Vec<char> = y.chars().skip(prefix).collect();
    let suffix = xs
        .iter()
        .rev()
        .zip(ys.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (xs, ys) = (&xs[..xs.len() - suffix], &ys[..ys.len() - suffix]);
    edit_distance_within(xs, ys, allowed)
}

/// Whether the Levenshtein distance of `xs` and `ys` is at most `k`,
/// computing only the cells within `k` of the diagonal (O(len * k)).
pub(super) fn edit_distance_within(xs: &[char], ys: &[char], k: usize) -> bool {
    if xs.len().abs_diff(ys.len()) > k {
        return false;
    }
    // a cell outside the band holds more than k: `over` stands for it
    let over = k + 1;
    let mut prev: Vec<usize> = (0..=ys.len()).map(|j| j.min(over)).collect();
    let mut cur = vec![over; ys.len() + 1];
    for (i, cx) in xs.iter().enumerate() {
        let (lo, hi) = ((i + 1).saturating_sub(k), (i + 1 + k).min(ys.len()));
        // the cells this row reads just outside its band are out of reach
        if lo == 0 {
            cur[0] = (i + 1).min(over);
        } else {
            cur[lo - 1] = over;
        }
        for j in lo.max(1)..=hi {
            let cost = usize::from(*cx != ys[j - 1]);
            cur[j] = (prev[j - 1] + cost)
                .min(prev[j] + 1)
                .min(cur[j - 1] + 1)
                .min(over);
        }
        if let Some(next) = cur.get_mut(hi + 1) {
            *next = over;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[ys.len()] <= k
}
