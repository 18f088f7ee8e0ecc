//! Chat messages: OpenAI's token accounting and fitting a conversation into a
//! token budget. Pure Rust; `py::messages` converts Python dicts into these.
//!
//! Accounting (OpenAI cookbook, "Counting tokens for chat completions API
//! calls", exact on the API for plain messages), per message:
//!
//! * `tokens_per_message` (3; 4 for gpt-3.5-turbo-0301) + tokens of the role;
//! * the content: a string, nothing (`None`), or a list of parts, where a text
//!   (or refusal) part costs the tokens of its text and an image part is costed
//!   by [`image`]'s tile formula;
//! * `name`: its tokens + `tokens_per_name` (1; -1 for gpt-3.5-turbo-0301);
//! * each tool call (`tool_calls[i].function`) and a legacy `function_call`:
//!   tokens of the function name + tokens of the arguments text + 3 (the
//!   community rule measured by hmarr/openai-chat-tokens for `function_call`,
//!   applied to every call);
//! * a legacy `function`-role message counts 2 fewer (measured on the API by
//!   hmarr/openai-chat-tokens);
//! * `tool_call_id` and unknown keys are not counted.
//!
//! Plus 3 for the reply priming (`<|start|>assistant<|message|>`) per request,
//! plus the tool definitions by [`tools`]'s rule.

pub mod fit;
pub mod image;
pub mod memo;
pub mod tools;

use rayon::prelude::*;

use crate::models::ModelInfo;
use crate::tokens::{self, Encoding, EncodingName};

pub use image::{Detail, Image, ImageRates};
pub use tools::{ToolDef, ToolParam, ToolRates};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::System,
        Role::Developer,
        Role::User,
        Role::Assistant,
        Role::Tool,
        Role::Function,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }

    /// System-like messages are the ones `keep_system` pins.
    pub fn is_system(self) -> bool {
        matches!(self, Role::System | Role::Developer)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    None,
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Content,
    pub name: Option<String>,
    /// `tool_calls[*].function` and a legacy `function_call`, in that order.
    pub calls: Vec<FunctionCall>,
}

impl Message {
    pub fn text(role: Role, content: &str) -> Self {
        Message {
            role,
            content: Content::Text(content.to_string()),
            name: None,
            calls: Vec::new(),
        }
    }

    pub fn has_calls(&self) -> bool {
        !self.calls.is_empty()
    }
}

/// The accounting constants of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatFormat {
    pub encoding: EncodingName,
    pub tokens_per_message: i64,
    pub tokens_per_name: i64,
    pub tokens_per_call: i64,
    pub reply_priming: i64,
    pub images: ImageRates,
    pub tools: ToolRates,
}

impl ChatFormat {
    /// The constants for `model`, chosen by its name family (see the README).
    pub fn for_model(model: &ModelInfo) -> Self {
        let name = model.name.as_str();
        let family = |base: &str| {
            name == base
                || name
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.starts_with('-'))
        };
        let legacy = family("gpt-3.5-turbo-0301");
        let images = if family("gpt-4o-mini") {
            ImageRates {
                base: 2833,
                tile: 5667,
            }
        } else if family("o1") || family("o1-pro") || family("o3") {
            ImageRates {
                base: 75,
                tile: 150,
            }
        } else if family("gpt-5") || family("gpt-5-chat-latest") {
            ImageRates {
                base: 70,
                tile: 140,
            }
        } else {
            ImageRates {
                base: 85,
                tile: 170,
            }
        };
        ChatFormat {
            encoding: model.encoding,
            tokens_per_message: if legacy { 4 } else { 3 },
            tokens_per_name: if legacy { -1 } else { 1 },
            tokens_per_call: 3,
            reply_priming: 3,
            images,
            tools: if model.encoding == EncodingName::Cl100kBase {
                ToolRates::CL100K
            } else {
                ToolRates::MODERN
            },
        }
    }

    pub fn encoder(&self) -> &'static Encoding {
        tokens::encoding(self.encoding)
    }
}

/// Above this much text a conversation is counted on all cores.
const PARALLEL_BYTES: usize = 32 * 1024;

fn text_bytes(m: &Message) -> usize {
    let content = match &m.content {
        Content::None => 0,
        Content::Text(t) => t.len(),
        Content::Parts(parts) => parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Image(_) => 0,
            })
            .sum(),
    };
    content + m.calls.iter().map(|c| c.arguments.len()).sum::<usize>()
}

fn small_count(enc: &Encoding, s: &str) -> i64 {
    if s.is_empty() {
        return 0;
    }
    i64::try_from(memo::count(enc, s)).unwrap_or(i64::MAX)
}

/// Tokens of the message's content alone.
pub fn content_tokens(content: &Content, fmt: &ChatFormat, enc: &Encoding) -> i64 {
    match content {
        Content::None => 0,
        Content::Text(t) => small_count(enc, t),
        Content::Parts(parts) => parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => small_count(enc, t),
                Part::Image(img) => {
                    i64::try_from(image::image_tokens(img, fmt.images)).unwrap_or(i64::MAX)
                }
            })
            .sum(),
    }
}

/// Tokens one message adds to a request, overheads included.
pub fn message_tokens(m: &Message, fmt: &ChatFormat, enc: &Encoding) -> i64 {
    let mut n = fmt.tokens_per_message + small_count(enc, m.role.as_str());
    n += content_tokens(&m.content, fmt, enc);
    if let Some(name) = &m.name {
        n += small_count(enc, name) + fmt.tokens_per_name;
    }
    for c in &m.calls {
        n += small_count(enc, &c.name) + small_count(enc, &c.arguments) + fmt.tokens_per_call;
    }
    if m.role == Role::Function {
        n -= 2;
    }
    n
}

/// Per-message token costs, in order; counted on all cores for long inputs.
pub fn per_message_tokens(messages: &[Message], fmt: &ChatFormat) -> Vec<i64> {
    let enc = fmt.encoder();
    let total: usize = messages.iter().map(text_bytes).sum();
    if total >= PARALLEL_BYTES && messages.len() > 1 {
        messages
            .par_iter()
            .with_min_len(1)
            .map(|m| message_tokens(m, fmt, enc))
            .collect()
    } else {
        messages
            .iter()
            .map(|m| message_tokens(m, fmt, enc))
            .collect()
    }
}

/// The fixed cost of a request besides its messages: reply priming and tools.
pub fn request_overhead(tools: &[ToolDef], fmt: &ChatFormat) -> i64 {
    fmt.reply_priming + tools::tools_tokens(tools, fmt.tools, fmt.encoder())
}

/// Prompt tokens of a whole request.
pub fn count_messages(messages: &[Message], tools: &[ToolDef], fmt: &ChatFormat) -> u64 {
    let total: i64 =
        per_message_tokens(messages, fmt).iter().sum::<i64>() + request_overhead(tools, fmt);
    u64::try_from(total).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::models;

    fn fmt(model: &str) -> ChatFormat {
        ChatFormat::for_model(&models::lookup(model).unwrap())
    }

    /// The cookbook's example conversation; the API reported 129 prompt
    /// tokens on gpt-3.5-turbo / gpt-4 and 124 on gpt-4o / gpt-4o-mini.
    fn cookbook() -> Vec<Message> {
        let sys = |name: Option<&str>, content: &str| Message {
            name: name.map(str::to_string),
            ..Message::text(Role::System, content)
        };
        vec![
            sys(None, "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."),
            sys(Some("example_user"), "New synergies will help drive top-line growth."),
            sys(Some("example_assistant"), "Things working well together will increase revenue."),
            sys(Some("example_user"), "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."),
            sys(Some("example_assistant"), "Let's talk later when we're less busy about how to do better."),
            Message::text(Role::User, "This late pivot means we don't have time to boil the ocean for the client deliverable."),
        ]
    }

    #[test]
    fn cookbook_example_matches_the_api() {
        let msgs = cookbook();
        assert_eq!(count_messages(&msgs, &[], &fmt("gpt-3.5-turbo")), 129);
        assert_eq!(count_messages(&msgs, &[], &fmt("gpt-4-0613")), 129);
        assert_eq!(count_messages(&msgs, &[], &fmt("gpt-4o")), 124);
        assert_eq!(
            count_messages(&msgs, &[], &fmt("gpt-4o-mini-2024-07-18")),
            124
        );
    }

    #[test]
    fn cookbook_tools_example_matches_the_api() {
        let tools = vec![ToolDef {
            name: "get_current_weather".into(),
            description: "Get the current weather in a given location".into(),
            properties: vec![
                ToolParam {
                    name: "location".into(),
                    type_name: "string".into(),
                    description: "The city and state, e.g. San Francisco, CA".into(),
                    ..Default::default()
                },
                ToolParam {
                    name: "unit".into(),
                    type_name: "string".into(),
                    description: "The unit of temperature to return".into(),
                    enum_items: Some(vec!["celsius".into(), "fahrenheit".into()]),
                    ..Default::default()
                },
            ],
        }];
        let msgs = vec![
            Message::text(
                Role::System,
                "You are a helpful assistant that can answer to questions about the weather.",
            ),
            Message::text(Role::User, "What's the weather like in San Francisco?"),
        ];
        assert_eq!(count_messages(&msgs, &tools, &fmt("gpt-3.5-turbo")), 105);
        assert_eq!(count_messages(&msgs, &tools, &fmt("gpt-4")), 105);
        assert_eq!(count_messages(&msgs, &tools, &fmt("gpt-4o")), 101);
        assert_eq!(count_messages(&msgs, &tools, &fmt("gpt-4o-mini")), 101);
    }

    #[test]
    fn legacy_0301_overheads() {
        let f = fmt("gpt-3.5-turbo-0301");
        assert_eq!((f.tokens_per_message, f.tokens_per_name), (4, -1));
        // 4 + "user"(1) + "hello"(1) + 3 priming
        assert_eq!(
            count_messages(&[Message::text(Role::User, "hello")], &[], &f),
            9
        );
    }

    #[test]
    fn function_call_rule_matches_hmarr_measurements() {
        // measured on gpt-3.5-turbo by hmarr/openai-chat-tokens: 26 tokens
        let m = Message {
            calls: vec![FunctionCall {
                name: "do_stuff".into(),
                arguments: "{\"foo\": \"bar\", \"baz\": 1.5}".into(),
            }],
            ..Message::text(Role::Assistant, "")
        };
        assert_eq!(count_messages(&[m], &[], &fmt("gpt-3.5-turbo")), 26);
    }

    #[test]
    fn function_results_match_hmarr_measurements() {
        let f = fmt("gpt-3.5-turbo");
        let result = |content: &str| Message {
            name: Some("do_stuff".into()),
            ..Message::text(Role::Function, content)
        };
        let user = Message::text(Role::User, "hello world");
        assert_eq!(count_messages(&[user.clone(), result("{}")], &[], &f), 15);
        let r = result("{\"foo\": \"bar\", \"baz\": 1.5}");
        assert_eq!(count_messages(&[user, r], &[], &f), 28);
    }

    #[test]
    fn parallel_and_serial_counts_agree() {
        let long: Vec<Message> = (0..200)
            .map(|i| Message::text(Role::User, &format!("message {i} ").repeat(40)))
            .collect();
        let f = fmt("gpt-4o");
        let enc = f.encoder();
        let serial: i64 = long.iter().map(|m| message_tokens(m, &f, enc)).sum();
        assert_eq!(per_message_tokens(&long, &f).iter().sum::<i64>(), serial);
    }
}
