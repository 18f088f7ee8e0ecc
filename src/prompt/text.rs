//! Character classes, lines, fenced code blocks and the protected-span scanner.
//!
//! Every rule in this module is defined so that a short Python regular
//! expression states it exactly (`benches/baselines/prompt.py` holds that
//! statement): ASCII-only case folding and whitespace, and a "word character"
//! that treats every non-ASCII character as part of a word, so that no rule
//! depends on Unicode tables that differ between Rust and Python.

/// ASCII letters, digits, `_`, the apostrophe, and every non-ASCII character.
#[inline]
pub fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '\'' || !c.is_ascii()
}

/// Python's `\s` under `re.ASCII`.
#[inline]
pub fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

#[inline]
pub fn is_blank(line: &str) -> bool {
    line.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// A fenced code block: lines `start..end` (fence lines included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub start: usize,
    pub end: usize,
    pub closed: bool,
    /// The info string is exactly `json` (ASCII case-insensitive).
    pub json: bool,
}

fn fence_open(line: &str) -> Option<(u8, usize, &str)> {
    let b = line.as_bytes();
    let indent = b.iter().take_while(|&&c| c == b' ').count();
    if indent > 3 {
        return None;
    }
    let c = *b.get(indent)?;
    if c != b'`' && c != b'~' {
        return None;
    }
    let n = b[indent..].iter().take_while(|&&x| x == c).count();
    if n < 3 {
        return None;
    }
    let info = &line[indent + n..];
    if c == b'`' && info.contains('`') {
        return None;
    }
    Some((c, n, info))
}

fn fence_close(line: &str, c: u8, n: usize) -> bool {
    let b = line.as_bytes();
    let indent = b.iter().take_while(|&&x| x == b' ').count();
    if indent > 3 {
        return false;
    }
    let run = b[indent..].iter().take_while(|&&x| x == c).count();
    run >= n
        && b[indent + run..]
            .iter()
            .all(|&x| matches!(x, b' ' | b'\t' | b'\r'))
}

/// The fenced blocks of `lines` (CommonMark-style ``` and ~~~ fences of three
/// or more characters, indented at most three spaces; an unclosed fence runs
/// to the end of the text).
pub fn fences(lines: &[&str]) -> Vec<Fence> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some((c, n, info)) = fence_open(lines[i]) {
            let info = info.trim_matches(|ch| ch == ' ' || ch == '\t' || ch == '\r');
            let json = info.eq_ignore_ascii_case("json");
            let mut j = i + 1;
            while j < lines.len() && !fence_close(lines[j], c, n) {
                j += 1;
            }
            let closed = j < lines.len();
            let end = if closed { j + 1 } else { lines.len() };
            out.push(Fence {
                start: i,
                end,
                closed,
                json,
            });
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// `true` for every line that belongs to a fenced block.
pub fn fence_mask(lines: &[&str]) -> Vec<bool> {
    let mut mask = vec![false; lines.len()];
    for f in fences(lines) {
        for m in &mut mask[f.start..f.end] {
            *m = true;
        }
    }
    mask
}

#[inline]
fn char_at(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|r| r.chars().next())
}

#[inline]
fn char_before(s: &str, i: usize) -> Option<char> {
    s.get(..i).and_then(|r| r.chars().next_back())
}

fn word_before(s: &str, i: usize) -> bool {
    char_before(s, i).is_some_and(is_word)
}

/// Inline code: a backtick run closed by the next run of exactly the same length.
fn inline_code(s: &str, i: usize) -> Option<usize> {
    let b = s.as_bytes();
    if i > 0 && b[i - 1] == b'`' {
        return None;
    }
    let n = b[i..].iter().take_while(|&&c| c == b'`').count();
    let mut k = i + n;
    while k < b.len() {
        if b[k] == b'`' {
            let run = b[k..].iter().take_while(|&&c| c == b'`').count();
            if run == n {
                return Some(k + n);
            }
            k += run;
        } else {
            k += 1;
        }
    }
    None
}

fn url_char(c: u8) -> bool {
    !matches!(
        c,
        b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b'<' | b'>' | b'"' | b'\'' | b'`'
    )
}

fn url(s: &str, i: usize) -> Option<usize> {
    let rest = &s[i..];
    let prefix = if rest.starts_with("https://") {
        8
    } else if rest.starts_with("http://") {
        7
    } else if rest.starts_with("www.") {
        4
    } else {
        return None;
    };
    if word_before(s, i) {
        return None;
    }
    let b = s.as_bytes();
    let mut end = i + prefix;
    while end < b.len() && url_char(b[end]) {
        end += 1;
    }
    while end > i + prefix
        && matches!(
            b[end - 1],
            b'.' | b',' | b';' | b':' | b'!' | b'?' | b')' | b']' | b'}'
        )
    {
        end -= 1;
    }
    // `end` may sit inside a multi-byte character only if the last kept byte is a
    // continuation byte, which `url_char` accepted; trimming stops at ASCII bytes,
    // so it always lands on a boundary.
    (end > i + prefix).then_some(end)
}

/// `{{name}}`, `{name}`, `${name}`: 1 to 100 characters, no braces, quotes or newlines.
fn placeholder(s: &str, i: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut j = i;
    if b[j] == b'$' {
        j += 1;
    }
    if b.get(j) != Some(&b'{') {
        return None;
    }
    let body = |start: usize, close: &str| -> Option<usize> {
        for (n, (off, c)) in s[start..].char_indices().enumerate() {
            if c == '}' {
                return (n >= 1 && s[start + off..].starts_with(close))
                    .then_some(start + off + close.len());
            }
            if c == '{' || c == '\n' || c == '"' || n == 100 {
                return None;
            }
        }
        None
    };
    if b.get(j + 1) == Some(&b'{') {
        if let Some(e) = body(j + 2, "}}") {
            return Some(e);
        }
    }
    body(j + 1, "}")
}

/// A quote: `open`, at most 200 characters without `close`, then `close`.
fn simple_quote(s: &str, i: usize, open: char, close: char) -> Option<usize> {
    let start = i + open.len_utf8();
    for (n, (off, c)) in s[start..].char_indices().enumerate() {
        if c == close {
            return Some(start + off + close.len_utf8());
        }
        if c == '\n' || n == 200 {
            return None;
        }
    }
    None
}

/// `'quoted'`: opened after a non-word character and before a non-space, closed
/// by the first `'` not followed by a word character, at most 200 characters.
fn single_quote(s: &str, i: usize) -> Option<usize> {
    if word_before(s, i) {
        return None;
    }
    let start = i + 1;
    match char_at(s, start) {
        Some(c) if !is_space(c) && c != '\'' => {}
        _ => return None,
    }
    let mut units = 0usize;
    let mut pos = start;
    loop {
        let c = char_at(s, pos)?;
        if units >= 1 && c == '\'' && !char_at(s, pos + 1).is_some_and(is_word) {
            return Some(pos + 1);
        }
        if units == 200 || c == '\n' {
            return None;
        }
        units += 1;
        pos += c.len_utf8();
    }
}

/// A number at a word start: digits, groups joined by `.,:/-`, and an ASCII
/// alphanumeric tail (`3.14`, `1,000`, `16:9`, `2024-08-06`, `4o`, `2nd`).
fn number(s: &str, i: usize) -> Option<usize> {
    if word_before(s, i) {
        return None;
    }
    let b = s.as_bytes();
    let mut j = i;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    while j + 1 < b.len()
        && matches!(b[j], b'.' | b',' | b':' | b'/' | b'-')
        && b[j + 1].is_ascii_digit()
    {
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    Some(j)
}

/// The bytes at which a protected span can start (see [`spans`]).
static SPAN_START: [bool; 256] = {
    let mut t = [false; 256];
    let starts = b"`hw${\"'0123456789";
    let mut i = 0;
    while i < starts.len() {
        t[starts[i] as usize] = true;
        i += 1;
    }
    t[0xE2] = true; // the lead byte of the curly quote
    t
};

/// The protected spans of one line, as byte ranges, left to right.
///
/// At each position the first kind that matches wins: inline code, URL,
/// placeholder, `"..."`, `“...”`, `'...'`, number. Scanning resumes after a span.
pub fn spans(line: &str, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        // only these bytes can start a span; each is the first byte of a
        // character, so skipping the others never lands inside one
        if !SPAN_START[c as usize] {
            i += 1;
            continue;
        }
        let end = match c {
            b'`' => inline_code(line, i),
            b'h' | b'w' => url(line, i),
            b'$' | b'{' => placeholder(line, i),
            b'"' => simple_quote(line, i, '"', '"'),
            b'\'' => single_quote(line, i),
            b'0'..=b'9' => number(line, i),
            0xE2 if line[i..].starts_with('\u{201C}') => {
                simple_quote(line, i, '\u{201C}', '\u{201D}')
            }
            _ => None,
        };
        match end {
            Some(e) => {
                out.push((i, e));
                i = e;
            }
            None => {
                i += 1;
                while i < b.len() && !line.is_char_boundary(i) {
                    i += 1;
                }
            }
        }
    }
}

/// Rebuild `line` into `out`, passing each free (unprotected) segment through `f`.
/// `f` receives the segment and its index among free segments.
pub fn map_free(
    line: &str,
    spans_buf: &mut Vec<(usize, usize)>,
    out: &mut String,
    mut f: impl FnMut(&str, usize, &mut String),
) {
    spans(line, spans_buf);
    let mut last = 0;
    let mut idx = 0;
    for &(s, e) in spans_buf.iter() {
        if s > last {
            f(&line[last..s], idx, out);
            idx += 1;
        }
        out.push_str(&line[s..e]);
        last = e;
    }
    if last < line.len() {
        f(&line[last..], idx, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans_of(s: &str) -> Vec<&str> {
        let mut v = Vec::new();
        spans(s, &mut v);
        v.iter().map(|&(a, b)| &s[a..b]).collect()
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(
            spans_of(
                "see `a b` at https://x.org/a. {name} ${Pos:Dev} {{x}} \"q q\" 'it is' 3.14 4o"
            ),
            vec![
                "`a b`",
                "https://x.org/a",
                "{name}",
                "${Pos:Dev}",
                "{{x}}",
                "\"q q\"",
                "'it is'",
                "3.14",
                "4o"
            ]
        );
    }

    #[test]
    fn apostrophes_are_not_quotes() {
        assert_eq!(
            spans_of("don't do it, it's the users' data"),
            Vec::<&str>::new()
        );
        assert_eq!(spans_of("say 'don't' now"), vec!["'don't'"]);
    }

    #[test]
    fn digits_inside_words_are_not_numbers() {
        assert_eq!(spans_of("A0-level mp3 x2"), Vec::<&str>::new());
        assert_eq!(spans_of("gpt-4o"), vec!["4o"]);
    }

    #[test]
    fn fences_close_with_a_long_enough_run() {
        let lines: Vec<&str> = "a\n```json\n{}\n```\nb\n~~~~\nx\n~~~\n~~~~~"
            .split('\n')
            .collect();
        let f = fences(&lines);
        assert_eq!(
            f[0],
            Fence {
                start: 1,
                end: 4,
                closed: true,
                json: true
            }
        );
        assert_eq!(
            f[1],
            Fence {
                start: 5,
                end: 9,
                closed: true,
                json: false
            }
        );
    }

    #[test]
    fn unicode_does_not_split_characters() {
        assert_eq!(
            spans_of("é“x”ü 'é' www.é.com"),
            vec!["“x”", "'é'", "www.é.com"]
        );
    }
}
