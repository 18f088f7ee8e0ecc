//! Canonical partition keys and prompt normalisation.
//!
//! A partition says what must match exactly for two prompts to share an
//! answer (model, sampling parameters, system prompt, tenant, ...). Its key is
//! canonical JSON: object keys sorted, no insignificant whitespace, integral
//! floats written as integers (`temperature=0` and `temperature=0.0` are the
//! same partition). It never depends on a process-seeded hash, so keys are
//! stable across processes and snapshots.

use serde_json::Value;

/// The canonical key of a partition value. A JSON string is used verbatim (so
/// the output of `partition_key(...)` passed back as a string names the same
/// partition as the dict it came from); `null` is the default partition `""`.
pub fn canonical_key(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => canonical_json(other),
    }
}

/// Canonical JSON text of `value`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            out.push_str(&value.to_string());
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // 2^53: every integral float below it is an exact integer.
                if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                    out.push_str(&format!("{}", f as i64));
                    return;
                }
            }
            out.push_str(&n.to_string());
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(*k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
    }
}

/// The internal key of a partition: the embedder identity is part of every
/// partition, so vectors of different embedders never meet.
pub fn scoped_key(embedder_identity: &str, partition: &str) -> String {
    let mut s = String::with_capacity(embedder_identity.len() + 1 + partition.len());
    s.push_str(embedder_identity);
    s.push('\u{1}');
    s.push_str(partition);
    s
}

/// The part of a scoped key after the embedder identity.
pub fn unscoped(key: &str) -> &str {
    key.split_once('\u{1}').map_or(key, |(_, p)| p)
}

/// Whitespace collapsed to single spaces, trimmed, and case folded: the form
/// the exact tier compares.
pub fn normalize_prompt(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    for word in prompt.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// A 64-bit FNV-1a hash of the normalised prompt (stable across processes).
pub fn prompt_hash(normalized: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in normalized.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_is_order_independent() {
        let a = json!({"model": "gpt-4o", "temperature": 0.0, "tools": [{"b": 1, "a": 2}]});
        let b = json!({"tools": [{"a": 2, "b": 1}], "temperature": 0, "model": "gpt-4o"});
        assert_eq!(canonical_key(&a), canonical_key(&b));
        assert_eq!(
            canonical_key(&a),
            r#"{"model":"gpt-4o","temperature":0,"tools":[{"a":2,"b":1}]}"#
        );
    }

    #[test]
    fn strings_and_null() {
        assert_eq!(canonical_key(&json!("tenant-a")), "tenant-a");
        assert_eq!(canonical_key(&Value::Null), "");
        assert_ne!(
            canonical_key(&json!({"t": 0.5})),
            canonical_key(&json!({"t": 0.7}))
        );
    }

    #[test]
    fn normalisation_folds_case_and_whitespace() {
        assert_eq!(
            normalize_prompt("  What IS\tthe\n capital? "),
            "what is the capital?"
        );
        assert_eq!(prompt_hash(&normalize_prompt("A  b")), prompt_hash("a b"));
    }

    #[test]
    fn scoped_roundtrip() {
        let k = scoped_key("emb/v1", r#"{"a":1}"#);
        assert_eq!(unscoped(&k), r#"{"a":1}"#);
    }
}
