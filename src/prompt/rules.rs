//! The line-level steps: JSON minification, whitespace, duplicates, markdown.
//!
//! Each takes the whole text and returns the rewritten text. Lines inside fenced
//! code blocks are copied unchanged (the JSON step's ```json fences aside), and
//! within a line only the free segments between protected spans are rewritten.

use std::borrow::Cow;
use std::collections::HashSet;

use super::json;
use super::text::{fence_mask, fences, is_blank, is_space, is_word, map_free, spans};

fn lines_of(text: &str) -> Vec<&str> {
    text.split('\n').collect()
}

fn join(lines: &[&str], cap: usize) -> String {
    let mut out = String::with_capacity(cap);
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(l);
    }
    out
}

fn indentation(line: &str) -> &str {
    let n = line
        .bytes()
        .take_while(|&b| b == b' ' || b == b'\t')
        .count();
    &line[..n]
}

/// Paragraphs: maximal runs of lines that are neither blank nor fenced.
fn paragraphs(lines: &[&str], fenced: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if fenced[i] || is_blank(lines[i]) {
            i += 1;
            continue;
        }
        let s = i;
        while i < lines.len() && !fenced[i] && !is_blank(lines[i]) {
            i += 1;
        }
        out.push((s, i));
    }
    out
}

// ---- JSON -------------------------------------------------------------------

/// Minify ```json fences whose content is a JSON object or array, and JSON
/// objects or arrays that form the tail of a paragraph (from the first line
/// starting with `{`/`[` to the last line ending with `}`/`]`). A paragraph
/// block is left alone if minifying would break a protected span of its lines.
pub fn minify_json(text: &str) -> Cow<'_, str> {
    // every candidate (a fence body or a paragraph) has a line whose first
    // byte after spaces, tabs and carriage returns is `{` or `[`
    let b = text.as_bytes();
    let candidate = memchr::memchr2_iter(b'{', b'[', b).any(|i| {
        b[..i]
            .iter()
            .rev()
            .find(|&&c| !matches!(c, b' ' | b'\t' | b'\r'))
            .is_none_or(|&c| c == b'\n')
    });
    if !candidate {
        return Cow::Borrowed(text);
    }
    let lines = lines_of(text);
    let blocks = fences(&lines);
    let mut fenced = vec![false; lines.len()];
    for f in &blocks {
        for m in &mut fenced[f.start..f.end] {
            *m = true;
        }
    }
    // replacements: (start, end, new single line)
    let mut repl: Vec<(usize, usize, String)> = Vec::new();
    for f in &blocks {
        if !f.json || !f.closed || f.end - f.start < 3 {
            continue;
        }
        let (s, e) = (f.start + 1, f.end - 1);
        let body = lines[s..e].join("\n");
        if let Some(min) = minified_container(&body) {
            if e - s != 1 || min != body {
                repl.push((s, e, min));
            }
        }
    }
    let mut buf = Vec::new();
    let mut needles = Vec::new();
    for (ps, pe) in paragraphs(&lines, &fenced) {
        let first = (ps..pe).find(|&i| {
            let t = lines[i].trim_start_matches([' ', '\t']);
            t.starts_with('{') || t.starts_with('[')
        });
        let Some(first) = first else { continue };
        let last = (first..pe).rev().find(|&i| {
            let t = lines[i].trim_end_matches([' ', '\t', '\r']);
            t.ends_with('}') || t.ends_with(']')
        });
        let Some(last) = last else { continue };
        let body = lines[first..=last].join("\n");
        let Some(min) = minified_container(&body) else {
            continue;
        };
        // every protected span with whitespace in it must occur in the result
        needles.clear();
        for l in &lines[first..=last] {
            spans(l, &mut buf);
            needles.extend(
                buf.iter()
                    .map(|&(a, b)| &l[a..b])
                    .filter(|sp| sp.contains([' ', '\t', '\r'])),
            );
        }
        if !all_occur(&needles, &min) {
            continue;
        }
        let line = format!("{}{}", indentation(lines[first]), min);
        if last != first || line != lines[first] {
            repl.push((first, last + 1, line));
        }
    }
    if repl.is_empty() {
        return Cow::Borrowed(text);
    }
    repl.sort_by_key(|r| r.0);
    let mut out: Vec<&str> = Vec::with_capacity(lines.len());
    let mut i = 0;
    for (s, e, l) in &repl {
        out.extend_from_slice(&lines[i..*s]);
        out.push(l);
        i = *e;
    }
    out.extend_from_slice(&lines[i..]);
    Cow::Owned(join(&out, text.len()))
}

/// Whether every one of `needles` occurs in `hay`. They are searched for
/// from where the previous one was found (spans keep their order when JSON
/// is minified, so the searches together read `hay` about once), and from
/// the start only when that fails.
fn all_occur(needles: &[&str], hay: &str) -> bool {
    let mut from = 0;
    for n in needles {
        match hay[from..].find(n) {
            Some(i) => from += i,
            None if hay.contains(n) => {}
            None => return false,
        }
    }
    true
}

fn minified_container(body: &str) -> Option<String> {
    let t = body.trim_matches([' ', '\t', '\n', '\r']);
    if !(t.starts_with('{') || t.starts_with('[')) || !json::is_valid(t) {
        return None;
    }
    Some(json::minify(t))
}

// ---- whitespace -------------------------------------------------------------

/// Outside code: collapse each run of spaces and tabs after a line's
/// indentation to one space, drop trailing spaces and tabs, and collapse runs
/// of blank lines to one.
pub fn whitespace(text: &str) -> Cow<'_, str> {
    if whitespace_is_noop(text) {
        return Cow::Borrowed(text);
    }
    let lines = lines_of(text);
    let fenced = fence_mask(&lines);
    let mut out = String::with_capacity(text.len());
    let mut buf = Vec::new();
    let mut prev_blank = false;
    let mut first = true;
    for (i, line) in lines.iter().enumerate() {
        if fenced[i] {
            if !first {
                out.push('\n');
            }
            first = false;
            out.push_str(line);
            prev_blank = false;
            continue;
        }
        let blank = is_blank(line);
        if blank && prev_blank {
            continue;
        }
        prev_blank = blank;
        if !first {
            out.push('\n');
        }
        first = false;
        let ind = indentation(line);
        let rest = &line[ind.len()..];
        if rest.is_empty() {
            continue;
        }
        out.push_str(ind);
        let start = out.len();
        map_free(rest, &mut buf, &mut out, |seg, _, out| {
            // each run of spaces and tabs becomes one space (neither byte
            // occurs inside a multi-byte character)
            let b = seg.as_bytes();
            let mut copied = 0;
            let mut i = 0;
            while i < b.len() {
                if b[i] == b' ' || b[i] == b'\t' {
                    let mut j = i + 1;
                    while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                        j += 1;
                    }
                    if j > i + 1 || b[i] == b'\t' {
                        out.push_str(&seg[copied..i]);
                        out.push(' ');
                        copied = j;
                    }
                    i = j;
                } else {
                    i += 1;
                }
            }
            out.push_str(&seg[copied..]);
        });
        let trimmed = out[start..].trim_end_matches([' ', '\t']).len();
        out.truncate(start + trimmed);
    }
    Cow::Owned(out)
}

/// True when [`whitespace`] certainly leaves `text` as it is: after each
/// line's indentation no tab and no two spaces in a row, no space or tab
/// before a line end or at the end of the text, and no two blank lines in a
/// row (protected spans and code are not told apart: a conservative test).
fn whitespace_is_noop(text: &str) -> bool {
    plain_spacing(text.as_bytes()) || whitespace_scan_is_noop(text.as_bytes())
}

/// Most prompts: no tab, carriage return, double space or space before a
/// line end, and no two empty lines in a row (a blank line could then only be
/// empty); a sufficient condition for [`whitespace_is_noop`], found by
/// vectorised searches.
fn plain_spacing(b: &[u8]) -> bool {
    memchr::memchr2(b'\t', b'\r', b).is_none()
        && memchr::memmem::find(b, b"  ").is_none()
        && memchr::memmem::find(b, b" \n").is_none()
        && memchr::memmem::find(b, b"\n\n\n").is_none()
        && !b.starts_with(b"\n\n")
        && !b.ends_with(b"\n\n")
        && !b.ends_with(b" ")
        && b != b"\n"
}

fn whitespace_scan_is_noop(text: &[u8]) -> bool {
    let mut prev = b'\n';
    let mut in_indent = true;
    let mut line_blank = true;
    let mut prev_line_blank = false;
    for &c in text {
        match c {
            b'\n' => {
                if matches!(prev, b' ' | b'\t') || (line_blank && prev_line_blank) {
                    return false;
                }
                prev_line_blank = line_blank;
                line_blank = true;
                in_indent = true;
            }
            b' ' | b'\t' if in_indent => {}
            b'\t' => return false,
            b' ' if prev == b' ' => return false,
            b' ' => {}
            b'\r' => in_indent = false,
            _ => {
                in_indent = false;
                line_blank = false;
            }
        }
        prev = c;
    }
    !(matches!(prev, b' ' | b'\t') || (line_blank && prev_line_blank))
}

// ---- duplicates -------------------------------------------------------------

fn substantial(s: &str) -> bool {
    let t = s.trim_matches(is_space);
    // a character has at most 4 bytes: 64 bytes hold at least 16 of them
    t.len() >= 16
        && (t.len() >= 64 || t.chars().count() >= 16)
        && t.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Remove exact repeats of an earlier paragraph or line outside code, keeping
/// the first occurrence. Only "substantial" units count (at least 16
/// characters with a letter); table rows (`|...`) are never removed as lines.
/// A paragraph removed entirely takes the blank lines before it along.
pub fn duplicates(text: &str) -> Cow<'_, str> {
    let lines = lines_of(text);
    let fenced = fence_mask(&lines);
    // byte offset of each line: a paragraph's lines joined with `\n` are the
    // text between the start of its first line and the end of its last
    let mut starts = Vec::with_capacity(lines.len());
    let mut off = 0;
    for l in &lines {
        starts.push(off);
        off += l.len() + 1;
    }
    let mut delete = vec![false; lines.len()];
    let mut seen_paras: HashSet<&str, ahash::RandomState> =
        HashSet::with_capacity_and_hasher(lines.len() / 2, Default::default());
    let mut seen_lines: HashSet<&str, ahash::RandomState> =
        HashSet::with_capacity_and_hasher(lines.len(), Default::default());
    let mut any = false;
    for (s, e) in paragraphs(&lines, &fenced) {
        let joined = &text[starts[s]..starts[e - 1] + lines[e - 1].len()];
        let mut gone = false;
        if substantial(joined) && !seen_paras.insert(joined) {
            delete[s..e].iter_mut().for_each(|d| *d = true);
            gone = true;
        }
        if !gone {
            for i in s..e {
                let l = lines[i];
                if substantial(l)
                    && !l.trim_start_matches(is_space).starts_with('|')
                    && !seen_lines.insert(l)
                {
                    delete[i] = true;
                }
            }
            gone = delete[s..e].iter().all(|&d| d);
        }
        if delete[s..e].iter().any(|&d| d) {
            any = true;
        }
        if gone {
            let mut j = s;
            while j > 0 && !fenced[j - 1] && is_blank(lines[j - 1]) {
                j -= 1;
                delete[j] = true;
            }
        }
    }
    if !any {
        return Cow::Borrowed(text);
    }
    let kept: Vec<&str> = lines
        .iter()
        .zip(&delete)
        .filter(|(_, &d)| !d)
        .map(|(l, _)| *l)
        .collect();
    Cow::Owned(join(&kept, text.len()))
}

// ---- markdown ---------------------------------------------------------------

fn thematic_break(line: &str) -> bool {
    let t = line
        .trim_end_matches([' ', '\t', '\r'])
        .trim_start_matches([' ', '\t']);
    let Some(c) = t.chars().next() else {
        return false;
    };
    matches!(c, '-' | '*' | '_')
        && t.chars().all(|x| x == c || x == ' ' || x == '\t')
        && t.chars().filter(|&x| x == c).count() >= 3
}

/// True when [`markdown`] certainly leaves `text` as it is: no `**`, no `__`
/// and no line that is a thematic break.
fn markdown_is_noop(text: &str) -> bool {
    !text.contains("**")
        && !text.contains("__")
        && !text.split('\n').any(|l| {
            l.trim_start_matches([' ', '\t'])
                .starts_with(['-', '*', '_'])
                && thematic_break(l)
        })
}

/// `**x**` -> `x` (x not starting or ending with a space); `__x y__` -> `x y`
/// when not inside a word and x contains a space (so `__init__` stays).
fn strip_emphasis(seg: &str, out: &mut String) {
    let b = seg.as_bytes();
    let mut i = 0;
    let mut run = 0;
    while i + 1 < b.len() {
        let d = b[i];
        if (d == b'*' || d == b'_') && b[i + 1] == d {
            if let Some((inner_end, end)) = emphasis_at(seg, i, d) {
                out.push_str(&seg[run..i]);
                let inner = &seg[i + 2..inner_end];
                if d == b'*' || inner.contains(' ') {
                    out.push_str(inner);
                } else {
                    out.push_str(&seg[i..end]);
                }
                i = end;
                run = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&seg[run..]);
}

fn emphasis_at(seg: &str, i: usize, d: u8) -> Option<(usize, usize)> {
    let b = seg.as_bytes();
    if d == b'_' && seg[..i].chars().next_back().is_some_and(is_word) {
        return None;
    }
    let first = seg[i + 2..].chars().next()?;
    if is_space(first) {
        return None;
    }
    let mut k = i + 2 + first.len_utf8();
    while k + 1 < b.len() {
        if b[k] == d && b[k + 1] == d {
            let before = seg[..k].chars().next_back().is_some_and(|c| !is_space(c));
            let after_ok = d == b'*' || !seg[k + 2..].chars().next().is_some_and(is_word);
            if before && after_ok {
                return Some((k, k + 2));
            }
        }
        k += 1;
    }
    None
}

/// Drop thematic breaks (`---`, `***`, `___`; a blank line right after a dropped
/// break is dropped too when the previous kept line is blank) and emphasis markers.
pub fn markdown(text: &str) -> Cow<'_, str> {
    if markdown_is_noop(text) {
        return Cow::Borrowed(text);
    }
    let lines = lines_of(text);
    let fenced = fence_mask(&lines);
    let mut out = String::with_capacity(text.len());
    let mut buf = Vec::new();
    let mut after_break = false;
    // None: nothing emitted yet; Some(blank?) of the last emitted line
    let mut last_blank: Option<bool> = None;
    for (i, line) in lines.iter().enumerate() {
        if !fenced[i] {
            if thematic_break(line) {
                after_break = true;
                continue;
            }
            if after_break && is_blank(line) && last_blank != Some(false) {
                continue;
            }
        }
        after_break = false;
        if last_blank.is_some() {
            out.push('\n');
        }
        if fenced[i] {
            out.push_str(line);
            last_blank = Some(false);
            continue;
        }
        last_blank = Some(is_blank(line));
        if line.contains("**") || line.contains("__") {
            map_free(line, &mut buf, &mut out, |seg, _, out| {
                strip_emphasis(seg, out)
            });
        } else {
            out.push_str(line);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_spacing_implies_the_scan_finds_nothing_to_do() {
        // every text of up to 7 bytes over the bytes that matter
        let alphabet = [b' ', b'\n', b'a', b'\t', b'\r'];
        let mut plain = 0;
        for len in 0..=7u32 {
            for mut code in 0..5usize.pow(len) {
                let text: Vec<u8> = (0..len)
                    .map(|_| {
                        let c = alphabet[code % 5];
                        code /= 5;
                        c
                    })
                    .collect();
                if plain_spacing(&text) {
                    plain += 1;
                    assert!(whitespace_scan_is_noop(&text), "{text:?}");
                    let t = std::str::from_utf8(&text).expect("ascii");
                    assert_eq!(whitespace(t), t);
                }
            }
        }
        assert!(plain > 100);
    }

    #[test]
    fn all_occur_finds_each_needle_once_or_fails() {
        let hay = "{\"a\":\"x y\",\"b\":\"p q\"}";
        for (needles, expect) in [
            (vec![], true),
            (vec!["x y"], true),
            (vec!["x y", "p q", "\"a\":", "x y"], true),
            (vec!["x y", "p q", "\"a\": "], false),
            (vec!["x y", "p  q", "a", "b"], false),
            (vec!["y\",\"b", "x", "q\"}", "{"], true),
        ] {
            assert_eq!(all_occur(&needles, hay), expect, "{needles:?}");
        }
        // a block with several strings with spaces, each kept as it was
        let t = "Use:\n{\"k\": \"a b\",\n \"l\": 1, \"m\": \"c  d\", \"n\": \"e f\"}";
        assert_eq!(
            minify_json(t),
            "Use:\n{\"k\":\"a b\",\"l\":1,\"m\":\"c  d\",\"n\":\"e f\"}"
        );
    }

    #[test]
    fn whitespace_keeps_code_and_indentation() {
        let t = "a  b\t c   \n\n\n\n  - x   y\n```\nkeep   this  \n\n\n```\n\"q   q\"  z";
        assert_eq!(
            whitespace(t),
            "a b c\n\n  - x y\n```\nkeep   this  \n\n\n```\n\"q   q\" z"
        );
    }

    #[test]
    fn duplicates_keep_first() {
        let t = "Do not write explanations.\n\nOther paragraph here ok.\n\nDo not write explanations.\nshort\nshort\n---\n---";
        assert_eq!(
            duplicates("Repeated paragraph text.\n\nOther\n\nRepeated paragraph text.\n"),
            "Repeated paragraph text.\n\nOther\n"
        );
        assert_eq!(
            duplicates(t),
            "Do not write explanations.\n\nOther paragraph here ok.\n\nshort\nshort\n---\n---"
        );
    }

    #[test]
    fn json_is_minified_in_fences_and_paragraphs() {
        let t = "Schema:\n{\n  \"a\": [1, 2],\n  \"b\": \"x  y\"\n}\n\n```json\n[ 1,\n 2 ]\n```\n```js\n{ \"a\": 1 }\n```";
        assert_eq!(
            minify_json(t),
            "Schema:\n{\"a\":[1,2],\"b\":\"x  y\"}\n\n```json\n[1,2]\n```\n```js\n{ \"a\": 1 }\n```"
        );
    }

    #[test]
    fn markdown_strips_emphasis_and_rules() {
        let t = "**Bold** and __two words__ but __init__ and a**b**c\n\n---\n\nNext `**x**`";
        assert_eq!(
            markdown(t),
            "Bold and two words but __init__ and abc\n\nNext `**x**`"
        );
    }
}
