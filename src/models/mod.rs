//! The model table: encoding, context window, output limit and prices per model.
//!
//! Shipped as package data (`python/llmedge/data/models.json`, embedded here at
//! build time) and extensible at run time with [`register`].

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

/// Look a model up by exact name, else by the longest known name that the
/// given one extends with `-` (dated versions: `gpt-4o-2024-08-06` is `gpt-4o`).
pub fn lookup(model: &str) -> Result<ModelInfo, UnknownModel> {
    let table = table().read();
    if let Some(info) = table.get(model) {
        return Ok(info.clone());
    }
    let best = table
        .keys()
        .filter(|k| model.len() > k.len() && model.starts_with(k.as_str()))
        .filter(|k| model.as_bytes()[k.len()] == b'-')
        .max_by_key(|k| k.len());
    if let Some(k) = best {
        let mut info = table[k].clone();
        info.name = model.to_string();
        return Ok(info);
    }
    let mut scored: Vec<(usize, &String)> = table
        .keys()
        .map(|k| (edit_distance(model, k), k))
        .collect();
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

/// Add or replace a model for the rest of the process.
pub fn register(info: ModelInfo) {
    table().write().insert(info.name.clone(), info);
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
    fn unknown_model_suggests_close_names() {
        let err = lookup("gpt-4oo").unwrap_err();
        assert!(err.suggestions.contains(&"gpt-4o".to_string()));
        assert!(lookup("gpt-4ox").is_err(), "prefix match needs a dash");
    }
}
