//! Choosing the messages of a conversation that fit a token budget.
//!
//! The budget covers the whole request as [`super::count_messages`] counts it
//! (reply priming and tool definitions included). Required, in order of
//! precedence: the system/developer messages (when `keep_system`) and the last
//! user message; if those alone exceed the budget the fit fails with
//! [`FitError::Overflow`]. The other messages are grouped into units (an
//! assistant message with tool or function calls together with the tool /
//! function results that follow it; every other message alone) and taken
//! whole, newest first (`Last`) or oldest first (`First`), stopping at the
//! first unit that does not fit so the kept history has no holes. A
//! `history_limit` caps the number of non-pinned messages kept (the last user
//! message included). With `allow_partial`, the first unit that does not fit
//! is truncated instead of dropped when it is a single message with string
//! content: `Last` keeps the end of its text, `First` the beginning.

use super::{content_tokens, ChatFormat, Content, Message, Role};
use crate::tokens::Encoding;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Last,
    First,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "last" => Some(Strategy::Last),
            "first" => Some(Strategy::First),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FitOptions {
    pub max_tokens: i64,
    pub strategy: Strategy,
    pub keep_system: bool,
    pub history_limit: Option<usize>,
    pub allow_partial: bool,
}

impl FitOptions {
    /// The options of a fit from the caller's arguments, checked once:
    /// `max_tokens` positive, `strategy` "last" or "first", `history_limit`
    /// None or positive. The error names the argument and its value.
    pub fn validate(
        max_tokens: i64,
        strategy: &str,
        keep_system: bool,
        history_limit: Option<i64>,
        allow_partial: bool,
    ) -> Result<Self, String> {
        if max_tokens <= 0 {
            return Err(format!(
                "max_tokens: expected a positive number of tokens, got {max_tokens}"
            ));
        }
        let strategy = Strategy::parse(strategy)
            .ok_or_else(|| format!("strategy: expected \"last\" or \"first\", got {strategy:?}"))?;
        let history_limit = match history_limit {
            None => None,
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(n) => {
                return Err(format!(
                    "history_limit: expected a positive number of messages or None, got {n}"
                ))
            }
        };
        Ok(FitOptions {
            max_tokens,
            strategy,
            keep_system,
            history_limit,
            allow_partial,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    pub index: usize,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitPlan {
    /// Indices of the kept messages, ascending.
    pub kept: Vec<usize>,
    /// The kept message whose string content was shortened, if any.
    pub partial: Option<Partial>,
    /// Prompt tokens of the result, as `count_messages` counts it.
    pub tokens: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FitError {
    Overflow { required: i64, available: i64 },
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitError::Overflow {
                required,
                available,
            } => write!(
                f,
                "the required messages (system messages and the last user message, with the \
                 request overhead) need {required} tokens but the budget is {available}"
            ),
        }
    }
}

fn units(messages: &[Message], pinned: &[bool]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut open_call_unit = false;
    for (i, m) in messages.iter().enumerate() {
        if pinned[i] {
            continue;
        }
        let is_result = matches!(m.role, Role::Tool | Role::Function);
        match out.last_mut() {
            Some(unit) if is_result && open_call_unit => unit.push(i),
            _ => {
                out.push(vec![i]);
                open_call_unit = m.role == Role::Assistant && m.has_calls();
            }
        }
    }
    out
}

/// Positions of all char boundaries of `text`, `0` and `len` included.
fn boundaries(text: &str) -> Vec<usize> {
    let mut b: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    b.push(text.len());
    b
}

/// The longest prefix (`keep_start`) or suffix of `text` of at most `limit`
/// tokens, cut on a char boundary; `None` when not even one char fits.
pub fn truncate_text(enc: &Encoding, text: &str, limit: i64, keep_start: bool) -> Option<String> {
    if limit <= 0 {
        return None;
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if enc.count(text) <= limit {
        return Some(text.to_string());
    }
    let b = boundaries(text);
    let piece = |k: usize| -> &str {
        // k = number of chars kept
        if keep_start {
            &text[..b[k]]
        } else {
            &text[b[b.len() - 1 - k]..]
        }
    };
    // largest k with count(piece(k)) <= limit; count(piece(0)) = 0 holds
    let (mut lo, mut hi) = (0usize, b.len() - 1);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if enc.count(piece(mid)) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo > 0).then(|| piece(lo).to_string())
}

/// Choose the messages to keep; `costs[i]` is `message_tokens(messages[i])`
/// and `overhead` the request's fixed cost (reply priming and tools).
pub fn fit(
    messages: &[Message],
    costs: &[i64],
    overhead: i64,
    fmt: &ChatFormat,
    opts: &FitOptions,
) -> Result<FitPlan, FitError> {
    let budget = opts.max_tokens;
    let pinned: Vec<bool> = messages
        .iter()
        .map(|m| opts.keep_system && m.role.is_system())
        .collect();
    let units = units(messages, &pinned);
    let last_user_unit = units
        .iter()
        .rposition(|u| u.iter().any(|&i| messages[i].role == Role::User));

    let mut kept: Vec<usize> = (0..messages.len()).filter(|&i| pinned[i]).collect();
    let mut used = overhead + kept.iter().map(|&i| costs[i]).sum::<i64>();
    let mut history_left = opts.history_limit.unwrap_or(usize::MAX);
    if let Some(u) = last_user_unit {
        used += units[u].iter().map(|&i| costs[i]).sum::<i64>();
        kept.extend(&units[u]);
        history_left = history_left.saturating_sub(units[u].len());
    }
    if used > budget {
        return Err(FitError::Overflow {
            required: used,
            available: budget,
        });
    }

    let order: Vec<usize> = match opts.strategy {
        Strategy::Last => (0..units.len()).rev().collect(),
        Strategy::First => (0..units.len()).collect(),
    };
    let mut partial = None;
    for u in order {
        if Some(u) == last_user_unit {
            continue;
        }
        let unit = &units[u];
        if unit.len() > history_left {
            break;
        }
        let cost: i64 = unit.iter().map(|&i| costs[i]).sum();
        if used + cost <= budget {
            used += cost;
            history_left -= unit.len();
            kept.extend(unit);
            continue;
        }
        if opts.allow_partial && unit.len() == 1 {
            let i = unit[0];
            let m = &messages[i];
            if let (Content::Text(text), false) = (&m.content, m.has_calls()) {
                let enc = fmt.encoder();
                let fixed = costs[i] - content_tokens(&m.content, fmt, enc);
                let room = budget - used - fixed;
                let keep_start = opts.strategy == Strategy::First;
                if let Some(t) = truncate_text(enc, text, room, keep_start) {
                    used += fixed + i64::try_from(enc.count(&t)).unwrap_or(i64::MAX);
                    kept.push(i);
                    partial = Some(Partial { index: i, text: t });
                }
            }
        }
        break;
    }
    kept.sort_unstable();
    Ok(FitPlan {
        kept,
        partial,
        tokens: used,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{count_messages, per_message_tokens, request_overhead, FunctionCall};
    use super::*;
    use crate::models;

    fn fmt() -> ChatFormat {
        ChatFormat::for_model(&models::lookup("gpt-4o").unwrap())
    }

    fn opts(max_tokens: i64) -> FitOptions {
        FitOptions {
            max_tokens,
            strategy: Strategy::Last,
            keep_system: true,
            history_limit: None,
            allow_partial: false,
        }
    }

    fn run(msgs: &[Message], o: &FitOptions) -> Result<FitPlan, FitError> {
        let f = fmt();
        let costs = per_message_tokens(msgs, &f);
        fit(msgs, &costs, request_overhead(&[], &f), &f, o)
    }

    fn convo() -> Vec<Message> {
        vec![
            Message::text(Role::System, "You are terse."),
            Message::text(Role::User, "one two three four five"),
            Message::text(Role::Assistant, "six seven eight nine ten"),
            Message::text(Role::User, "eleven twelve thirteen"),
            Message::text(Role::Assistant, "fourteen fifteen"),
            Message::text(Role::User, "sixteen"),
        ]
    }

    #[test]
    fn validate_checks_each_argument_and_names_it() {
        let ok = FitOptions::validate(100, "first", false, Some(3), true).unwrap();
        assert_eq!(
            ok,
            FitOptions {
                max_tokens: 100,
                strategy: Strategy::First,
                keep_system: false,
                history_limit: Some(3),
                allow_partial: true,
            }
        );
        assert_eq!(
            FitOptions::validate(1, "last", true, None, false).unwrap(),
            opts(1)
        );
        let err = |r: Result<FitOptions, String>| r.unwrap_err();
        assert_eq!(
            err(FitOptions::validate(0, "last", true, None, false)),
            "max_tokens: expected a positive number of tokens, got 0"
        );
        assert_eq!(
            err(FitOptions::validate(10, "middle", true, None, false)),
            "strategy: expected \"last\" or \"first\", got \"middle\""
        );
        assert_eq!(
            err(FitOptions::validate(10, "last", true, Some(-2), false)),
            "history_limit: expected a positive number of messages or None, got -2"
        );
    }

    #[test]
    fn everything_fits_under_a_large_budget() {
        let msgs = convo();
        let plan = run(&msgs, &opts(10_000)).unwrap();
        assert_eq!(plan.kept, (0..6).collect::<Vec<_>>());
        assert_eq!(plan.tokens as u64, count_messages(&msgs, &[], &fmt()));
    }

    #[test]
    fn the_result_never_exceeds_the_budget_and_is_a_suffix() {
        let msgs = convo();
        let full = count_messages(&msgs, &[], &fmt()) as i64;
        let required = run(&msgs, &opts(full)).unwrap();
        for budget in 1..=full {
            match run(&msgs, &opts(budget)) {
                Ok(plan) => {
                    let kept: Vec<Message> = plan.kept.iter().map(|&i| msgs[i].clone()).collect();
                    let n = count_messages(&kept, &[], &fmt()) as i64;
                    assert_eq!(n, plan.tokens);
                    assert!(n <= budget);
                    assert_eq!(plan.kept[0], 0, "system kept");
                    let rest = &plan.kept[1..];
                    assert_eq!(*rest.last().unwrap(), 5, "last user kept");
                    assert!(rest.windows(2).all(|w| w[1] == w[0] + 1), "{rest:?}");
                }
                Err(FitError::Overflow {
                    required: r,
                    available,
                }) => {
                    assert_eq!(available, budget);
                    assert!(r > budget);
                }
            }
        }
        assert_eq!(required.kept.len(), 6);
    }

    #[test]
    fn history_limit_and_first_strategy() {
        let msgs = convo();
        let o = FitOptions {
            history_limit: Some(3),
            ..opts(10_000)
        };
        assert_eq!(run(&msgs, &o).unwrap().kept, vec![0, 3, 4, 5]);
        let o = FitOptions {
            strategy: Strategy::First,
            history_limit: Some(3),
            ..opts(10_000)
        };
        assert_eq!(run(&msgs, &o).unwrap().kept, vec![0, 1, 2, 5]);
    }

    #[test]
    fn tool_calls_stay_with_their_results() {
        let call = Message {
            calls: vec![FunctionCall {
                name: "lookup".into(),
                arguments: "{\"q\":1}".into(),
            }],
            ..Message::text(Role::Assistant, "")
        };
        let msgs = vec![
            Message::text(Role::User, "old question with several words in it"),
            call,
            Message::text(Role::Tool, "result one"),
            Message::text(Role::Tool, "result two"),
            Message::text(Role::User, "new"),
        ];
        let f = fmt();
        let costs = per_message_tokens(&msgs, &f);
        let need = 3 + costs[4] + costs[1] + costs[2] + costs[3];
        let plan = run(&msgs, &opts(need)).unwrap();
        assert_eq!(plan.kept, vec![1, 2, 3, 4]);
        let plan = run(&msgs, &opts(need - 1)).unwrap();
        assert_eq!(plan.kept, vec![4], "the unit is dropped whole");
    }

    #[test]
    fn overflow_reports_the_numbers() {
        let msgs = convo();
        let f = fmt();
        let costs = per_message_tokens(&msgs, &f);
        let required = 3 + costs[0] + costs[5];
        assert_eq!(
            run(&msgs, &opts(required - 1)),
            Err(FitError::Overflow {
                required,
                available: required - 1
            })
        );
    }

    #[test]
    fn partial_truncation_fills_the_budget_exactly_or_below() {
        let long = "alpha beta gamma delta épsilon zeta eta theta iota kappa ".repeat(20);
        let msgs = vec![
            Message::text(Role::System, "sys"),
            Message::text(Role::Assistant, &long),
            Message::text(Role::User, "question"),
        ];
        let f = fmt();
        let costs = per_message_tokens(&msgs, &f);
        let budget = 3 + costs[0] + costs[2] + 30;
        let o = FitOptions {
            allow_partial: true,
            ..opts(budget)
        };
        let plan = run(&msgs, &o).unwrap();
        assert_eq!(plan.kept, vec![0, 1, 2]);
        let p = plan.partial.clone().unwrap();
        assert!(long.ends_with(&p.text), "Last keeps the end");
        let mut kept = msgs.clone();
        kept[1] = Message::text(Role::Assistant, &p.text);
        let n = count_messages(&kept, &[], &f) as i64;
        assert_eq!(n, plan.tokens);
        assert!(n <= budget && n >= budget - 3, "{n} vs {budget}");
        let o = FitOptions {
            strategy: Strategy::First,
            ..o
        };
        let p = run(&msgs, &o).unwrap().partial.unwrap();
        assert!(long.starts_with(&p.text));
    }

    fn arb_message() -> impl proptest::strategy::Strategy<Value = Message> {
        use proptest::prelude::*;
        (0..4usize, "[a-c é🙂.]{0,40}", any::<bool>()).prop_map(|(r, text, call)| {
            let role = [Role::System, Role::User, Role::Assistant, Role::Tool][r];
            let mut m = Message::text(role, &text);
            if call && role == Role::Assistant {
                m.calls.push(FunctionCall {
                    name: "f".into(),
                    arguments: text.clone(),
                });
            }
            m
        })
    }

    proptest::proptest! {
        #[test]
        fn fit_invariants(
            msgs in proptest::collection::vec(arb_message(), 0..10),
            budget in 1i64..300,
            first in proptest::bool::ANY,
            partial in proptest::bool::ANY,
            limit in proptest::option::of(1usize..6),
        ) {
            let o = FitOptions {
                max_tokens: budget,
                strategy: if first { Strategy::First } else { Strategy::Last },
                keep_system: true,
                history_limit: limit,
                allow_partial: partial,
            };
            match run(&msgs, &o) {
                Err(FitError::Overflow { required, available }) => {
                    proptest::prop_assert!(required > available);
                    proptest::prop_assert_eq!(available, budget);
                }
                Ok(plan) => {
                    let kept: Vec<Message> = plan
                        .kept
                        .iter()
                        .map(|&i| match &plan.partial {
                            Some(p) if p.index == i => Message::text(msgs[i].role, &p.text),
                            _ => msgs[i].clone(),
                        })
                        .collect();
                    let n = count_messages(&kept, &[], &fmt()) as i64;
                    proptest::prop_assert_eq!(n, plan.tokens);
                    proptest::prop_assert!(n <= budget);
                    proptest::prop_assert!(plan.kept.windows(2).all(|w| w[0] < w[1]));
                    for (i, m) in msgs.iter().enumerate() {
                        if m.role == Role::System {
                            proptest::prop_assert!(plan.kept.contains(&i));
                        }
                    }
                    if let Some(u) = msgs.iter().rposition(|m| m.role == Role::User) {
                        proptest::prop_assert!(plan.kept.contains(&u));
                    }
                    if let Some(l) = limit {
                        let history = plan.kept.iter().filter(|&&i| msgs[i].role != Role::System);
                        proptest::prop_assert!(history.count() <= l);
                    }
                }
            }
        }
    }

    #[test]
    fn truncate_text_never_splits_a_char() {
        let enc = fmt().encoder();
        let text = "日本語のテキスト🙂と絵文字".repeat(5);
        for limit in 1..40 {
            for keep_start in [true, false] {
                if let Some(t) = truncate_text(enc, &text, limit, keep_start) {
                    assert!(enc.count(&t) as i64 <= limit);
                    assert!(if keep_start {
                        text.starts_with(&t)
                    } else {
                        text.ends_with(&t)
                    });
                }
            }
        }
    }
}
