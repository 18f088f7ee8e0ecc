//! Cutting text to a token budget without splitting a character.
//!
//! BPE counts are not monotone in the length of a prefix (adding a character
//! can merge two tokens into one), and a marker can merge with its
//! neighbours, so every candidate is checked by counting the exact result.
//! The search first works on token boundaries of the original encoding
//! (binary search, then stepping forward while the next boundary still
//! fits), then refines by single characters until the next one no longer
//! fits. The result therefore always fits, and adding the next character of
//! the text on the cut side would not.

use std::borrow::Cow;

use super::Encoding;

/// Which part of the text is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Keep the beginning, cut the end: `head + marker`.
    End,
    /// Keep the end, cut the beginning: `marker + tail`.
    Start,
    /// Keep both ends, cut the middle: `head + marker + tail`.
    Middle,
}

impl Side {
    pub const NAMES: [&'static str; 3] = ["end", "start", "middle"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "end" => Some(Side::End),
            "start" => Some(Side::Start),
            "middle" => Some(Side::Middle),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::End => "end",
            Side::Start => "start",
            Side::Middle => "middle",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TruncateError {
    /// `max_tokens` was zero.
    ZeroBudget,
    /// The marker alone needs more tokens than the budget.
    MarkerTooLong {
        marker_tokens: usize,
        max_tokens: usize,
    },
}

impl std::fmt::Display for TruncateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TruncateError::ZeroBudget => write!(f, "max_tokens must be a positive integer, got 0"),
            TruncateError::MarkerTooLong {
                marker_tokens,
                max_tokens,
            } => write!(
                f,
                "the marker is {marker_tokens} tokens, more than max_tokens={max_tokens}; \
                 use a shorter marker or a larger budget"
            ),
        }
    }
}

impl std::error::Error for TruncateError {}

struct Cutter<'a> {
    enc: &'a Encoding,
    text: &'a str,
    marker: &'a str,
    max: usize,
    buf: String,
}

impl Cutter<'_> {
    /// Does `text[..head] + marker + text[tail..]` fit the budget?
    fn fits(&mut self, head: usize, tail: usize) -> bool {
        self.buf.clear();
        self.buf.push_str(&self.text[..head]);
        self.buf.push_str(self.marker);
        self.buf.push_str(&self.text[tail..]);
        self.enc.count(&self.buf) <= self.max
    }

    fn floor(&self, mut i: usize) -> usize {
        while !self.text.is_char_boundary(i) {
            i -= 1;
        }
        i
    }

    fn ceil(&self, mut i: usize) -> usize {
        while !self.text.is_char_boundary(i) {
            i += 1;
        }
        i
    }

    fn next_char(&self, i: usize) -> Option<usize> {
        self.text[i..].chars().next().map(|c| i + c.len_utf8())
    }

    fn prev_char(&self, i: usize) -> Option<usize> {
        self.text[..i].chars().next_back().map(|c| i - c.len_utf8())
    }
}

/// Largest `k` in `0..=n` with `ok(k)`, assuming `ok(0)`: binary search, then
/// step forward while the next value still holds (counts are nearly monotone).
fn largest(n: usize, mut ok: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, n + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    while lo < n && ok(lo + 1) {
        lo += 1;
    }
    lo
}

pub(super) fn truncate<'t>(
    enc: &Encoding,
    text: &'t str,
    max_tokens: usize,
    side: Side,
    marker: &str,
) -> Result<Cow<'t, str>, TruncateError> {
    if max_tokens == 0 {
        return Err(TruncateError::ZeroBudget);
    }
    if enc.count(text) <= max_tokens {
        return Ok(Cow::Borrowed(text));
    }
    let marker_tokens = enc.count(marker);
    if marker_tokens > max_tokens {
        return Err(TruncateError::MarkerTooLong {
            marker_tokens,
            max_tokens,
        });
    }
    // Byte offsets of the token boundaries of the original text.
    let ids = enc.encode_ordinary(text);
    let mut offs = Vec::with_capacity(ids.len() + 1);
    offs.push(0usize);
    for id in &ids {
        let last = *offs.last().unwrap_or(&0);
        offs.push((last + enc.token_len(*id)).min(text.len()));
    }
    let n = ids.len();
    let len = text.len();
    let mut c = Cutter {
        enc,
        text,
        marker,
        max: max_tokens,
        buf: String::with_capacity(len.min(16 * max_tokens) + marker.len()),
    };
    let (mut head, mut tail) = match side {
        Side::End => {
            let k = largest(n, |k| {
                let h = c.floor(offs[k]);
                c.fits(h, len)
            });
            (c.floor(offs[k]), len)
        }
        Side::Start => {
            let k = largest(n, |k| {
                let t = c.ceil(offs[n - k]);
                c.fits(0, t)
            });
            (0, c.ceil(offs[n - k]))
        }
        Side::Middle => {
            let split = |k: usize| (k.div_ceil(2), k / 2);
            let k = largest(n, |k| {
                let (h, t) = split(k);
                let (a, b) = (c.floor(offs[h]), c.ceil(offs[n - t]));
                c.fits(a, b)
            });
            let (h, t) = split(k);
            (c.floor(offs[h]), c.ceil(offs[n - t]))
        }
    };
    // Refine by characters on the kept side(s), alternating for the middle.
    let mut grow_head = side != Side::Start;
    let mut grow_tail = side != Side::End;
    while grow_head || grow_tail {
        if grow_head {
            match c.next_char(head) {
                Some(h) if h <= tail && c.fits(h, tail) => head = h,
                _ => grow_head = false,
            }
        }
        if grow_tail {
            match c.prev_char(tail) {
                Some(t) if t >= head && c.fits(head, t) => tail = t,
                _ => grow_tail = false,
            }
        }
    }
    let mut out = String::with_capacity(head + marker.len() + (len - tail));
    out.push_str(&text[..head]);
    out.push_str(marker);
    out.push_str(&text[tail..]);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{encoding, EncodingName};

    const TEXT: &str = "The quick brown fox jumps over the lazy dog. \
        Ünïcödé, 日本語のテキスト, emoji 👩‍👩‍👧✨ and more words to cut. ";

    fn check(side: Side, marker: &str) {
        let enc = encoding(EncodingName::O200kBase);
        let text = TEXT.repeat(5);
        for max in 1..60 {
            let out = match enc.truncate(&text, max, side, marker) {
                Ok(out) => out,
                Err(TruncateError::MarkerTooLong { .. }) => {
                    assert!(enc.count(marker) > max);
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            assert!(enc.count(&out) <= max, "{side:?} {max} {out:?}");
            match side {
                Side::End => {
                    let head = out.strip_suffix(marker).expect("ends with marker");
                    assert!(text.starts_with(head));
                    let next = text[head.len()..].chars().next().expect("cut");
                    let longer = format!("{head}{next}{marker}");
                    assert!(enc.count(&longer) > max, "{max}: {longer:?} would fit");
                }
                Side::Start => {
                    let tail = out.strip_prefix(marker).expect("starts with marker");
                    assert!(text.ends_with(tail));
                    let prev = text[..text.len() - tail.len()]
                        .chars()
                        .next_back()
                        .expect("cut");
                    let longer = format!("{marker}{prev}{tail}");
                    assert!(enc.count(&longer) > max, "{max}: {longer:?} would fit");
                }
                Side::Middle => {
                    let split = (0..=out.len())
                        .filter(|&i| out.is_char_boundary(i))
                        .any(|i| {
                            out[i..].starts_with(marker)
                                && text.starts_with(&out[..i])
                                && text.ends_with(&out[i + marker.len()..])
                        });
                    assert!(split, "{max}: {out:?} is not head + marker + tail");
                }
            }
        }
    }

    #[test]
    fn end_start_middle_fit_and_are_locally_maximal() {
        for side in [Side::End, Side::Start, Side::Middle] {
            check(side, "");
            check(side, " [...] ");
        }
    }

    #[test]
    fn short_text_is_returned_unchanged() {
        let enc = encoding(EncodingName::Cl100kBase);
        assert_eq!(
            enc.truncate("short", 10, Side::End, "...").as_deref(),
            Ok("short")
        );
    }

    #[test]
    fn errors() {
        let enc = encoding(EncodingName::Cl100kBase);
        assert_eq!(
            enc.truncate("x", 0, Side::End, ""),
            Err(TruncateError::ZeroBudget)
        );
        let long_marker = " ... ".repeat(10);
        assert!(matches!(
            enc.truncate(&"word ".repeat(50), 3, Side::End, &long_marker),
            Err(TruncateError::MarkerTooLong { .. })
        ));
    }
}
