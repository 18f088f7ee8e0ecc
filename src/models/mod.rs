//! The model table: encoding, context window, output limit and prices per model.
//!
//! Shipped as package data (`python/llmedge/data/models.json`, embedded here at
//! build time) and extensible at run time with [`register`]. Every shipped
//! value's source and as-of date is in `python/llmedge/data/MODELS_SOURCES.md`
//! (a Python test checks that each model has a row there).

use std::collections::HashMap;
use std::sync::OnceLock;

use parking_lot::RwLock;
use serde::Deserialize;

use crate::tokens::EncodingName;

const TABLE_JSON: &str = include_str!("../../python/llmedge/data/models.json");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embedding,
}

impl ModelKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "chat" => Some(ModelKind::Chat),
            "embedding" => Some(ModelKind::Embedding),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub encoding: EncodingName,
    pub context_window: u64,
    pub max_output_tokens: u64,
    /// USD per million input tokens.
    pub input_price: f64,
    /// USD per million output tokens.
    pub output_price: f64,
    /// USD per million cached input tokens; `None` when the model has no cache discount.
    pub cached_input_price: Option<f64>,
    pub kind: ModelKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownModel {
    pub name: String,
    pub suggestions: Vec<String>,
}

impl std::fmt::Display for UnknownModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown model {:?}", self.name)?;
        if !self.suggestions.is_empty() {
            write!(f, "; did you mean {}?", self.suggestions.join(", "))?;
        }
        write!(f, " (register it with llmedge.register_model)")
    }
}

#[derive(Deserialize)]
struct RawTable {
    models: HashMap<String, RawModel>,
}

#[derive(Deserialize)]
struct RawModel {
    encoding: String,
    context_window: u64,
    max_output_tokens: u64,
    input: f64,
    output: f64,
    cached_input: Option<f64>,
    kind: String,
}

fn table() -> &'static RwLock<HashMap<String, ModelInfo>> {
    static TABLE: OnceLock<RwLock<HashMap<String, ModelInfo>>> = OnceLock::new();
    TABLE.get_or_init(|| RwLock::new(parse_table(TABLE_JSON)))
}

/// Parse the shipped table. The table is part of the build, so a malformed
/// entry is a build defect caught by the unit tests, not a user error.
fn parse_table(json: &str) -> HashMap<String, ModelInfo> {
    let raw: RawTable = match serde_json::from_str(json) {
        Ok(raw) => raw,
        Err(_) => return HashMap::new(),
    };
    raw.models
        .into_iter()
        .filter_map(|(name, m)| {
            Some((
                name.clone(),
                ModelInfo {
                    name,
                    encoding: EncodingName::parse(&m.encoding)?,
                    context_window: m.context_window,
                    max_output_tokens: m.max_output_tokens,
                    input_price: m.input,
                    output_price: m.output,
                    cached_input_price: m.cached_input,
                    kind: ModelKind::parse(&m.kind)?,
                },
            ))
        })
        .collect()
}

/// Whether `model` is a dated snapshot of `base`: `base`, then `-`, then a
/// run of digits that ends the name or is followed by `-`
/// (`gpt-4o-2024-08-06`, `gpt-4-0613`, `gpt-5.4-mini-2026-03-17`).
/// Any other suffix names a different model with its own limits and prices
/// (`gpt-5.4-pro` is not `gpt-5.4`, `gpt-5.4` is not `gpt-5`, `gpt-4-32k` is
/// not `gpt-4`), so it must not silently inherit the base's entry.
fn is_snapshot_of(model: &str, base: &str) -> bool {
    let Some(rest) = model.strip_prefix(base).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && matches!(rest.as_bytes().get(digits), None | Some(b'-'))
}

/// Look a model up by exact name, else by the longest known name that the
/// given one is a dated snapshot of (see [`is_snapshot_of`]).
pub fn lookup(model: &str) -> Result<ModelInfo, UnknownModel> {
    let table = table().read();
    if let Some(info) = table.get(model) {
        return Ok(info.clone());
    }
    let best = table
        .keys()
        .filter(|k| is_snapshot_of(model, k))
        .max_by_key(|k| k.len());
    if let Some(k) = best {
        let mut info = table[k].clone();
        info.name = model.to_string();
        return Ok(info);
    }
    let mut scored: Vec<(usize, &String)> =
        table.keys().map(|k| (edit_distance(model, k), k)).collect();
    scored.sort();
    let limit = (model.chars().count() / 2).max(3);
    Err(UnknownModel {
        name: model.to_string(),
        suggestions: scored
            .into_iter()
            .filter(|(d, _)| *d <= limit)
            .take(3)
            .map(|(_, k)| k.clone())
            .collect(),
    })
}

impl ModelInfo {
    /// Check the invariants a registered model must hold; the message names
    /// the offending field and value.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: expected a non-empty model name".into());
        }
        if self.context_window == 0 {
            return Err("context_window: expected a positive number of tokens, got 0".into());
        }
        if self.max_output_tokens > self.context_window {
            return Err(format!(
                "max_output_tokens: {} exceeds context_window {}",
                self.max_output_tokens, self.context_window
            ));
        }
        let prices = [
            ("input_price", Some(self.input_price)),
            ("output_price", Some(self.output_price)),
            ("cached_input_price", self.cached_input_price),
        ];
        for (field, price) in prices {
            if let Some(p) = price {
                if !p.is_finite() || p < 0.0 {
                    return Err(format!(
                        "{field}: expected a finite, non-negative USD price per million tokens, got {p}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Add or replace a model for the rest of the process.
pub fn register(info: ModelInfo) {
    table().write().insert(info.name.clone(), info);
}

/// Validate, then add or replace a model; the table is unchanged on error.
pub fn try_register(info: ModelInfo) -> Result<(), String> {
    info.validate()?;
    register(info);
    Ok(())
}

/// All known model names, sorted.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = table().read().keys().cloned().collect();
    v.sort();
    v
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_parses_completely() {
        let raw: serde_json::Value = serde_json::from_str(TABLE_JSON).unwrap();
        let n = raw["models"].as_object().unwrap().len();
        assert_eq!(parse_table(TABLE_JSON).len(), n);
    }

    #[test]
    fn dated_versions_resolve_to_longest_prefix() {
        let info = lookup("gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(info.input_price, 0.15);
        assert_eq!(lookup("gpt-4o-2024-08-06").unwrap().input_price, 2.5);
    }

    #[test]
    fn shipped_models_are_valid_and_cover_the_families() {
        for name in names() {
            let info = lookup(&name).unwrap();
            info.validate().unwrap();
        }
        for name in [
            "gpt-5.5",
            "gpt-5.5-pro",
            "gpt-5.4",
            "gpt-5.4-mini",
            "gpt-5.4-nano",
            "gpt-5.4-pro",
            "gpt-5.2",
            "gpt-5",
            "gpt-5-mini",
            "gpt-4.1",
            "gpt-4.1-nano",
            "gpt-4o",
            "o1",
            "o3",
            "o4-mini",
            "gpt-4-turbo",
            "gpt-4",
            "gpt-3.5-turbo",
            "gpt-oss-20b",
            "text-embedding-3-large",
            "text-embedding-ada-002",
        ] {
            assert!(lookup(name).is_ok(), "{name}");
        }
        assert_eq!(
            lookup("gpt-oss-120b").unwrap().encoding,
            EncodingName::O200kHarmony
        );
        assert_eq!(
            lookup("gpt-4-turbo-2024-04-09").unwrap().context_window,
            128000
        );
        assert_eq!(lookup("gpt-4-0613").unwrap().context_window, 8192);
        assert_eq!(lookup("gpt-4o-2024-05-13").unwrap().input_price, 5.0);
    }

    #[test]
    fn validation_rejects_bad_entries() {
        let mut info = lookup("gpt-4o").unwrap();
        info.name = "custom-x".into();
        info.input_price = -1.0;
        assert!(info.validate().unwrap_err().contains("input_price"));
        info.input_price = 1.0;
        info.max_output_tokens = info.context_window + 1;
        assert!(try_register(info).is_err());
        assert!(lookup("custom-x").is_err(), "table unchanged on error");
    }

    #[test]
    fn snapshots_resolve_to_their_own_family_only() {
        let price = |name: &str| lookup(name).unwrap().input_price;
        assert_eq!(price("gpt-5.4-mini-2026-03-17"), 0.75);
        assert_eq!(price("gpt-5.4-2026-03-05"), 2.5);
        assert_eq!(price("gpt-5.4-pro-2026-03-05"), 30.0);
        assert_eq!(price("gpt-5.5-2026-04-23"), 5.0);
        assert_eq!(price("gpt-5.2-2025-12-11"), 1.75);
        assert_eq!(price("gpt-5-mini-2025-08-07"), 0.25);
        assert_eq!(price("gpt-3.5-turbo-1106"), 1.0, "exact legacy entry wins");
        assert_eq!(lookup("gpt-5.4").unwrap().context_window, 1_050_000);
        assert_eq!(lookup("gpt-5").unwrap().context_window, 400_000);
        for name in [
            "gpt-5.9",       // a later release is not gpt-5
            "gpt-5.4-turbo", // an unknown variant is not gpt-5.4
            "gpt-4o-realtime-preview",
            "o1-preview",
            "gpt-5.4-",
        ] {
            assert!(lookup(name).is_err(), "{name}");
        }
        assert!(is_snapshot_of("gpt-4-0613", "gpt-4"));
        assert!(!is_snapshot_of("gpt-4-32k", "gpt-4"));
        assert!(!is_snapshot_of("gpt-3.5-turbo-16k", "gpt-3.5-turbo"));
        assert!(is_snapshot_of("gpt-4-1106-preview", "gpt-4"));
        assert!(is_snapshot_of("gpt-4-32k-0613", "gpt-4-32k"));
        assert!(!is_snapshot_of("gpt-4.1", "gpt-4"));
        assert!(!is_snapshot_of("gpt-4", "gpt-4"));
    }

    #[test]
    fn unknown_model_suggests_close_names() {
        let err = lookup("gpt-4oo").unwrap_err();
        assert!(err.suggestions.contains(&"gpt-4o".to_string()));
        assert!(lookup("gpt-4ox").is_err(), "prefix match needs a dash");
    }
}
