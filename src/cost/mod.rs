//! USD cost of requests from the model table's prices, and a running tally.
//!
//! `input_tokens` is the request's whole prompt, cached tokens included, as in
//! OpenAI's `usage.prompt_tokens`; `cached_input_tokens` (its
//! `prompt_tokens_details.cached_tokens`) is the part of it billed at the
//! cached price, or at the input price for models without a cache discount.

use std::collections::BTreeMap;

use crate::models::ModelInfo;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
}

impl Usage {
    pub fn validate(&self) -> Result<(), String> {
        if self.cached_input_tokens > self.input_tokens {
            return Err(format!(
                "cached_input_tokens: {} exceeds input_tokens {} (cached tokens are part of the \
                 prompt)",
                self.cached_input_tokens, self.input_tokens
            ));
        }
        Ok(())
    }
}

/// USD cost of one request; `usage` must be valid.
pub fn estimate(model: &ModelInfo, usage: &Usage) -> f64 {
    let uncached = usage.input_tokens.saturating_sub(usage.cached_input_tokens) as f64;
    let cached_price = model.cached_input_price.unwrap_or(model.input_price);
    (uncached * model.input_price
        + usage.cached_input_tokens as f64 * cached_price
        + usage.output_tokens as f64 * model.output_price)
        / 1_000_000.0
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub usage: Usage,
    pub cost: f64,
}

impl Totals {
    fn add(&mut self, usage: &Usage, cost: f64) {
        self.requests += 1;
        self.usage.input_tokens += usage.input_tokens;
        self.usage.output_tokens += usage.output_tokens;
        self.usage.cached_input_tokens += usage.cached_input_tokens;
        self.cost += cost;
    }
}

/// Running totals per model name (as recorded) and overall.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    pub by_model: BTreeMap<String, Totals>,
    pub total: Totals,
}

impl Ledger {
    pub fn record(&mut self, model: &str, usage: &Usage, cost: f64) {
        self.by_model
            .entry(model.to_string())
            .or_default()
            .add(usage, cost);
        self.total.add(usage, cost);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::models;

    #[test]
    fn gpt4o_prices_with_cache() {
        let m = models::lookup("gpt-4o").unwrap();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cached_input_tokens: 0,
        };
        assert!((estimate(&m, &u) - 12.5).abs() < 1e-9);
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 0,
            cached_input_tokens: 800,
        };
        // 200 * 2.5 + 800 * 1.25 = 1500 per million
        assert!((estimate(&m, &u) - 0.0015).abs() < 1e-12);
    }

    #[test]
    fn no_cache_discount_bills_cached_at_input_price() {
        let m = models::lookup("gpt-4").unwrap();
        let a = Usage {
            input_tokens: 1000,
            output_tokens: 10,
            cached_input_tokens: 900,
        };
        let b = Usage {
            cached_input_tokens: 0,
            ..a
        };
        assert_eq!(estimate(&m, &a), estimate(&m, &b));
    }

    #[test]
    fn ledger_sums() {
        let mut l = Ledger::default();
        let u = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 0,
        };
        l.record("a", &u, 1.0);
        l.record("a", &u, 2.0);
        l.record("b", &u, 0.5);
        assert_eq!(l.total.requests, 3);
        assert_eq!(l.by_model["a"].usage.input_tokens, 20);
        assert!((l.total.cost - 3.5).abs() < 1e-12);
        assert!(Usage {
            cached_input_tokens: 11,
            ..u
        }
        .validate()
        .is_err());
    }
}
