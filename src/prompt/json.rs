//! A strict JSON validator and whitespace minifier.
//!
//! Minifying only deletes the whitespace between tokens, so strings, numbers,
//! escapes and key order stay byte-for-byte what the prompt author wrote. The
//! accepted language is exactly what Python's `json.loads` accepts without
//! `NaN`/`Infinity`, with nesting capped at [`MAX_DEPTH`]; the validator is
//! iterative, so hostile nesting cannot overflow the stack.

pub const MAX_DEPTH: usize = 256;

#[inline]
fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

fn string(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    loop {
        let c = *b.get(i)?;
        match c {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = b.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return None,
    }
    let int_digits = i - int_start;
    let mut plain_int = true;
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        plain_int = false;
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            i = j;
            plain_int = false;
        }
    }
    // Python (3.11+) refuses to convert integers of more than 4300 digits
    if plain_int && int_digits > 4300 {
        return None;
    }
    Some(i)
}

/// Whether `s` (surrounding whitespace allowed) is one JSON value.
pub fn is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let mut stack: Vec<u8> = Vec::new();
    let mut i = ws(b, 0);
    'value: loop {
        // parse one value at i
        match b.get(i) {
            Some(&open @ (b'{' | b'[')) => {
                if stack.len() + 1 > MAX_DEPTH {
                    return false;
                }
                i = ws(b, i + 1);
                let close = if open == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    stack.push(open);
                    if open == b'{' {
                        match key(b, i) {
                            Some(j) => i = j,
                            None => return false,
                        }
                    }
                    continue 'value;
                }
            }
            Some(b'"') => match string(b, i) {
                Some(j) => i = j,
                None => return false,
            },
            Some(b'-' | b'0'..=b'9') => match number(b, i) {
                Some(j) => i = j,
                None => return false,
            },
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            _ => return false,
        }
        // after a value: close containers or move to the next element
        loop {
            i = ws(b, i);
            match (stack.last(), b.get(i)) {
                (None, None) => return true,
                (None, Some(_)) => return false,
                (Some(b'{'), Some(b',')) => match key(b, ws(b, i + 1)) {
                    Some(j) => {
                        i = j;
                        continue 'value;
                    }
                    None => return false,
                },
                (Some(b'['), Some(b',')) => {
                    i = ws(b, i + 1);
                    continue 'value;
                }
                (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']')) => {
                    stack.pop();
                    i += 1;
                }
                _ => return false,
            }
        }
    }
}

/// `"key"` `:` and the whitespace after it; returns the start of the value.
fn key(b: &[u8], i: usize) -> Option<usize> {
    let j = ws(b, string(b, i)?);
    (b.get(j) == Some(&b':')).then(|| ws(b, j + 1))
}

/// `s` without the whitespace outside strings. `s` must be valid JSON.
pub fn minify(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut run = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.push_str(&s[run..i]);
                i += 1;
                run = i;
            }
            b'"' => {
                let end = string(b, i).unwrap_or(b.len());
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[run..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_python_accepts() {
        for ok in [
            "{}",
            "[]",
            " {\"a\": [1, -0, 2.5e-3, 1E+2, true, false, null, \"\\u00e9\\n\"]}\n",
            "[[], {}, [{}]]",
            "\"x\"",
            "0",
        ] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{'a': 1}",
            "[01]",
            "[1.]",
            "[.5]",
            "[1e]",
            "NaN",
            "[Infinity]",
            "\"a\tb\"",
            "\"\\x\"",
            "[1] [2]",
            "{\"a\":1,}",
            "\u{feff}{}",
            "[+1]",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_recursion() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(!is_valid(&deep));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(is_valid(&ok));
        let over = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(!is_valid(&over));
    }

    #[test]
    fn minify_keeps_strings() {
        assert_eq!(
            minify("{\n  \"a b\": [1, 2],\n  \"c\": \"x \\\" y\"\n}"),
            "{\"a b\":[1,2],\"c\":\"x \\\" y\"}"
        );
    }
}
