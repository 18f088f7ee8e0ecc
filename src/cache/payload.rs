//! What the cache stores as a response and as metadata, as bytes: a response
//! is a tag (its Python type) and a body, metadata is JSON. The bindings
//! encode and decode them; snapshots check them on load, so a crafted file
//! is refused whole instead of failing lookups later.

/// A `str` response: the body is UTF-8.
pub const TAG_STR: u8 = b'S';
/// A `bytes` response: the body as is.
pub const TAG_BYTES: u8 = b'B';
/// Any other JSON-compatible response: the body is JSON.
pub const TAG_JSON: u8 = b'J';
/// Deepest nesting of lists and dicts accepted in a JSON value, under
/// serde_json's own limit of 128 so that whatever is accepted reads back.
pub const MAX_JSON_DEPTH: usize = 100;

/// Whether `data` is JSON that reads back as a value: parsed as a lookup
/// parses it (serde_json refuses nesting deeper than 128 levels with an
/// error, before it could exhaust the stack; skipping a value without
/// building it has no such limit).
pub fn is_json(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data).is_ok()
}

/// Whether `data` is an encoded response that decodes.
pub fn is_response(data: &[u8]) -> bool {
    match data.split_first() {
        Some((&TAG_STR, body)) => std::str::from_utf8(body).is_ok(),
        Some((&TAG_BYTES, _)) => true,
        Some((&TAG_JSON, body)) => is_json(body),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_and_json() {
        assert!(is_response(b"Shello"));
        assert!(is_response(b"B\xff\x00"));
        assert!(is_response(b"J{\"a\": [1, 2.5, null]}"));
        assert!(!is_response(b""));
        assert!(!is_response(b"S\xff"));
        assert!(!is_response(b"J{"));
        assert!(!is_response(b"Xabc"));
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(is_json(deep(MAX_JSON_DEPTH + 1).as_bytes()));
        assert!(!is_json(deep(100_000).as_bytes()));
    }
}
