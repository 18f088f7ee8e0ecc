//! Tool (function) definitions, costed by the rule OpenAI publishes in its
//! cookbook ("How to count tokens with tiktoken", section "Counting tokens for
//! chat completions with tool calls"), which matched the API exactly on its
//! examples (105 tokens on gpt-3.5-turbo / gpt-4, 101 on gpt-4o / gpt-4o-mini).
//!
//! For a non-empty list of tools:
//!
//! * per function: `func_init` + tokens of `"{name}:{description}"` (one
//!   trailing `.` of the description removed);
//! * if the function has properties: `prop_init` once, then per property
//!   `prop_key` + tokens of `"{key}:{type}:{description}"` (one trailing `.`
//!   removed); a property with an `enum` adds `enum_init` plus, per item,
//!   `enum_item` + tokens of the item;
//! * `func_end` once for the whole list.
//!
//! Constants: `func_init` 10 for the cl100k models (gpt-3.5-turbo, gpt-4,
//! gpt-4-turbo), 7 for the others; `prop_init` 3, `prop_key` 3, `enum_init`
//! -3, `enum_item` 3, `func_end` 12.
//!
//! Beyond the published rule (documented approximations): a property whose
//! `type` is a list is written joined by `", "`; a missing type or description
//! is the empty string; non-string enum items are written as JSON; the
//! properties of nested object properties are counted recursively with the same
//! per-property rule (the cookbook ignores them and so under-counts nested
//! schemas).

use crate::tokens::Encoding;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolParam {
    pub name: String,
    pub type_name: String,
    pub description: String,
    pub enum_items: Option<Vec<String>>,
    pub properties: Vec<ToolParam>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    pub properties: Vec<ToolParam>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToolRates {
    pub func_init: i64,
    pub prop_init: i64,
    pub prop_key: i64,
    pub enum_init: i64,
    pub enum_item: i64,
    pub func_end: i64,
}

impl ToolRates {
    pub const CL100K: ToolRates = ToolRates {
        func_init: 10,
        prop_init: 3,
        prop_key: 3,
        enum_init: -3,
        enum_item: 3,
        func_end: 12,
    };
    pub const MODERN: ToolRates = ToolRates {
        func_init: 7,
        ..ToolRates::CL100K
    };
}

fn strip_one_dot(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

fn count_len(enc: &Encoding, s: &str) -> i64 {
    i64::try_from(super::memo::count(enc, s)).unwrap_or(i64::MAX)
}

fn params_tokens(params: &[ToolParam], rates: ToolRates, enc: &Encoding) -> i64 {
    if params.is_empty() {
        return 0;
    }
    let mut n = rates.prop_init;
    for p in params {
        n += rates.prop_key;
        if let Some(items) = &p.enum_items {
            n += rates.enum_init;
            for item in items {
                n += rates.enum_item + count_len(enc, item);
            }
        }
        let line = format!(
            "{}:{}:{}",
            p.name,
            p.type_name,
            strip_one_dot(&p.description)
        );
        n += count_len(enc, &line);
        n += params_tokens(&p.properties, rates, enc);
    }
    n
}

/// Tokens that the tool definitions add to a request (0 for no tools).
pub fn tools_tokens(tools: &[ToolDef], rates: ToolRates, enc: &Encoding) -> i64 {
    if tools.is_empty() {
        return 0;
    }
    let mut n = 0;
    for f in tools {
        n += rates.func_init;
        n += count_len(
            enc,
            &format!("{}:{}", f.name, strip_one_dot(&f.description)),
        );
        n += params_tokens(&f.properties, rates, enc);
    }
    n + rates.func_end
}
