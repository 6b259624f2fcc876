//! Token usage as the providers report it, and the token classes we price
//! separately.
//!
//! [`Usage`] has Anthropic's shape: `input_tokens` excludes cache tokens.
//! `cache_creation_input_tokens` is the total of cache writes; when the
//! response carries the `cache_creation` breakdown, 5-minute and 1-hour
//! writes are priced apart. Without the breakdown every write is a 5-minute
//! write (the API's default TTL). A breakdown that does not explain its total
//! is not refused: the unexplained remainder is priced as 5-minute writes,
//! and a breakdown larger than its total raises the total to the breakdown's
//! sum (the provider charged for every write it itemised).
//!
//! OpenAI's usage objects count cached tokens *inside* the prompt;
//! [`Usage::from_api_json`] reads them too (Chat Completions'
//! `prompt_tokens`/`completion_tokens`/`prompt_tokens_details.cached_tokens`,
//! the Responses API's `input_tokens_details.cached_tokens`) and moves the
//! cached part to `cache_read_input_tokens`, so both price alike.
//!
//! Besides tokens a usage object says how the request was served, which
//! selects price modifiers: `service_tier` (Anthropic: `standard`,
//! `priority`, `batch`; OpenAI: `default`, `flex`, `priority`, `scale`),
//! `inference_geo` (Anthropic's data residency, e.g. `us`) and `speed`
//! (`fast` mode); and it counts server-tool calls priced per request
//! (`server_tool_use.web_search_requests`).
//!
//! In a stream, `message_start` carries the initial usage and each
//! `message_delta` carries *cumulative* counts: the last value of each field
//! wins and deltas are never added ([`StreamUsage`]).

use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most tokens one usage field may claim; far above any real request,
/// low enough that no sum of a few of them overflows.
pub const MAX_TOKENS_PER_FIELD: u64 = 1_000_000_000_000;

/// A separately priced kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenClass {
    Input,
    Output,
    #[serde(rename = "cache_write_5m")]
    CacheWrite5m,
    #[serde(rename = "cache_write_1h")]
    CacheWrite1h,
    CacheRead,
}

impl TokenClass {
    pub const ALL: [TokenClass; 5] = [
        Self::Input,
        Self::Output,
        Self::CacheWrite5m,
        Self::CacheWrite1h,
        Self::CacheRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
            Self::CacheWrite5m => "cache_write_5m",
            Self::CacheWrite1h => "cache_write_1h",
            Self::CacheRead => "cache_read",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        Self::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            FieldError::new("token_class", format!("`{s}` is not a token class; expected one of input, output, cache_write_5m, cache_write_1h, cache_read"))
        })
    }
}

impl std::fmt::Display for TokenClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The 5-minute / 1-hour split of cache writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheCreation {
    #[serde(default)]
    pub ephemeral_5m_input_tokens: u64,
    #[serde(default)]
    pub ephemeral_1h_input_tokens: u64,
}

/// Server-side tool calls of one request, billed per call
/// (`usage.server_tool_use` in Anthropic's Messages API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerToolUse {
    /// Web searches run by the server tool; $10 per 1,000 at Anthropic's list price.
    #[serde(default)]
    pub web_search_requests: u64,
}

impl ServerToolUse {
    pub fn is_zero(&self) -> bool {
        self.web_search_requests == 0
    }
}

/// Anthropic's `usage` object, the fields we bill. Read it with
/// [`Usage::from_api_json`] (serde deserialisation goes through it too), so
/// `null` means absent everywhere and OpenAI's shapes are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation: Option<CacheCreation>,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default, skip_serializing_if = "ServerToolUse::is_zero")]
    pub server_tool_use: ServerToolUse,
    /// How the request was served (`standard`, `priority`, `batch`, `flex`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// Where inference ran, for data-residency pricing (`global`, `us`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_geo: Option<String>,
    /// `standard` or `fast` (fast mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<String>,
}

impl TryFrom<Value> for Usage {
    type Error = FieldError;
    fn try_from(v: Value) -> Result<Self, FieldError> {
        Usage::from_api_json(&v)
    }
}

const FIELDS: [&str; 4] = [
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
];

/// The request attributes that select price modifiers, as named in the usage object.
pub const MODE_FIELDS: [&str; 3] = ["service_tier", "inference_geo", "speed"];

impl Usage {
    /// Reads a `usage` object as a provider sends it: absent or `null`
    /// counts are zero, unknown fields are ignored. Counts must be
    /// non-negative integers. Three shapes are read (module docs):
    /// Anthropic's, OpenAI Chat Completions' (`prompt_tokens` present) and
    /// the Responses API's (`input_tokens_details` present).
    pub fn from_api_json(v: &Value) -> Result<Self, FieldError> {
        let obj = v
            .as_object()
            .ok_or_else(|| FieldError::new("usage", "must be an object"))?;
        let mut u = if obj.contains_key("prompt_tokens") || obj.contains_key("completion_tokens") {
            Self::from_openai(
                obj,
                "prompt_tokens",
                "completion_tokens",
                "prompt_tokens_details",
            )?
        } else if obj
            .get("input_tokens_details")
            .is_some_and(|d| !d.is_null())
        {
            Self::from_openai(obj, "input_tokens", "output_tokens", "input_tokens_details")?
        } else {
            let mut u = Usage::default();
            for name in FIELDS {
                *u.field_mut(name) = count_field(obj.get(name), name)?.unwrap_or(0);
            }
            u.cache_creation = cache_creation(obj.get("cache_creation"))?;
            u
        };
        match obj.get("server_tool_use") {
            None | Some(Value::Null) => {}
            Some(Value::Object(t)) => {
                u.server_tool_use.web_search_requests = count_field(
                    t.get("web_search_requests"),
                    "server_tool_use.web_search_requests",
                )?
                .unwrap_or(0)
            }
            Some(_) => {
                return Err(FieldError::new(
                    "usage.server_tool_use",
                    "must be an object",
                ))
            }
        }
        u.service_tier = label(obj.get("service_tier"), "service_tier")?;
        u.inference_geo = label(obj.get("inference_geo"), "inference_geo")?;
        u.speed = label(obj.get("speed"), "speed")?;
        u.explain_cache_writes();
        u.validate()?;
        Ok(u)
    }

    /// OpenAI's shapes: the prompt count includes the cached tokens.
    fn from_openai(
        obj: &serde_json::Map<String, Value>,
        prompt: &str,
        completion: &str,
        details: &str,
    ) -> Result<Self, FieldError> {
        let prompt_tokens = count_field(obj.get(prompt), prompt)?.unwrap_or(0);
        let output_tokens = count_field(obj.get(completion), completion)?.unwrap_or(0);
        let cached_name = format!("{details}.cached_tokens");
        let cached = match obj.get(details) {
            None | Some(Value::Null) => 0,
            Some(Value::Object(d)) => {
                count_field(d.get("cached_tokens"), &cached_name)?.unwrap_or(0)
            }
            Some(_) => {
                return Err(FieldError::new(
                    format!("usage.{details}"),
                    "must be an object",
                ))
            }
        };
        let input_tokens = prompt_tokens.checked_sub(cached).ok_or_else(|| {
            FieldError::new(
                format!("usage.{cached_name}"),
                format!("{cached} cached tokens are more than the {prompt_tokens} {prompt} that include them"),
            )
        })?;
        Ok(Usage {
            input_tokens,
            output_tokens,
            cache_read_input_tokens: cached,
            ..Usage::default()
        })
    }

    /// Reads the `usage` of a whole (non-streaming) response body. OpenAI
    /// puts `service_tier` beside `usage`; it is read from there when the
    /// usage object has none.
    pub fn from_response_json(body: &Value) -> Result<Self, FieldError> {
        let usage = body
            .get("usage")
            .ok_or_else(|| FieldError::new("usage", "the response has no usage object"))?;
        let mut u = Self::from_api_json(usage)?;
        if u.service_tier.is_none() {
            u.service_tier = label(body.get("service_tier"), "service_tier")?;
        }
        Ok(u)
    }

    /// Makes the cache-write total and its split agree (module docs): the
    /// unexplained remainder becomes 5-minute writes; a split larger than
    /// the total raises the total.
    fn explain_cache_writes(&mut self) {
        if let Some(cc) = self.cache_creation.as_mut() {
            let split = cc
                .ephemeral_5m_input_tokens
                .saturating_add(cc.ephemeral_1h_input_tokens);
            if split < self.cache_creation_input_tokens {
                cc.ephemeral_5m_input_tokens += self.cache_creation_input_tokens - split;
            } else {
                self.cache_creation_input_tokens = split;
            }
        }
    }

    /// Bounds every field and checks that a breakdown adds up to its total.
    pub fn validate(&self) -> Result<(), FieldError> {
        let mut counts: Vec<(&str, u64)> = FIELDS.iter().map(|n| (*n, self.field(n))).collect();
        if let Some(cc) = self.cache_creation {
            counts.push((
                "cache_creation.ephemeral_5m_input_tokens",
                cc.ephemeral_5m_input_tokens,
            ));
            counts.push((
                "cache_creation.ephemeral_1h_input_tokens",
                cc.ephemeral_1h_input_tokens,
            ));
        }
        counts.push((
            "server_tool_use.web_search_requests",
            self.server_tool_use.web_search_requests,
        ));
        for (name, n) in counts {
            if n > MAX_TOKENS_PER_FIELD {
                return Err(FieldError::new(
                    format!("usage.{name}"),
                    format!("{n} is above the limit of {MAX_TOKENS_PER_FIELD}"),
                ));
            }
        }
        if let Some(cc) = self.cache_creation {
            let sum = cc.ephemeral_5m_input_tokens as u128 + cc.ephemeral_1h_input_tokens as u128;
            if sum != self.cache_creation_input_tokens as u128 {
                return Err(FieldError::new(
                    "usage.cache_creation",
                    format!(
                        "5-minute ({}) and 1-hour ({}) writes add up to {sum}, but cache_creation_input_tokens is {}",
                        cc.ephemeral_5m_input_tokens, cc.ephemeral_1h_input_tokens, self.cache_creation_input_tokens
                    ),
                ));
            }
        }
        for (name, v) in [
            ("service_tier", &self.service_tier),
            ("inference_geo", &self.inference_geo),
            ("speed", &self.speed),
        ] {
            if let Some(v) = v {
                check_label(v, name)?;
            }
        }
        Ok(())
    }

    /// Tokens per priced class, in [`TokenClass::ALL`] order.
    pub fn by_class(&self) -> [(TokenClass, u64); 5] {
        let (w5, w1) = match self.cache_creation {
            Some(cc) => (cc.ephemeral_5m_input_tokens, cc.ephemeral_1h_input_tokens),
            None => (self.cache_creation_input_tokens, 0),
        };
        [
            (TokenClass::Input, self.input_tokens),
            (TokenClass::Output, self.output_tokens),
            (TokenClass::CacheWrite5m, w5),
            (TokenClass::CacheWrite1h, w1),
            (TokenClass::CacheRead, self.cache_read_input_tokens),
        ]
    }

    /// The request's prompt: input + cache writes + cache reads, the count
    /// prompt-length tiers compare with (Anthropic's long-context rule).
    /// Summed in 128 bits: no input makes it wrap.
    pub fn prompt_tokens(&self) -> u128 {
        self.input_tokens as u128
            + self.cache_creation_input_tokens as u128
            + self.cache_read_input_tokens as u128
    }

    /// Every token of the request, in 128 bits.
    pub fn total_tokens(&self) -> u128 {
        self.prompt_tokens() + self.output_tokens as u128
    }

    /// The value of a modifier attribute ([`MODE_FIELDS`]), if the usage says.
    pub fn mode(&self, name: &str) -> Option<&str> {
        match name {
            "service_tier" => self.service_tier.as_deref(),
            "inference_geo" => self.inference_geo.as_deref(),
            "speed" => self.speed.as_deref(),
            _ => None,
        }
    }

    fn mode_mut(&mut self, name: &str) -> &mut Option<String> {
        match name {
            "service_tier" => &mut self.service_tier,
            "inference_geo" => &mut self.inference_geo,
            "speed" => &mut self.speed,
            _ => unreachable!("not a modifier attribute: {name}"),
        }
    }

    fn field(&self, name: &str) -> u64 {
        match name {
            "input_tokens" => self.input_tokens,
            "output_tokens" => self.output_tokens,
            "cache_creation_input_tokens" => self.cache_creation_input_tokens,
            "cache_read_input_tokens" => self.cache_read_input_tokens,
            _ => unreachable!("not a usage field: {name}"),
        }
    }

    fn field_mut(&mut self, name: &str) -> &mut u64 {
        match name {
            "input_tokens" => &mut self.input_tokens,
            "output_tokens" => &mut self.output_tokens,
            "cache_creation_input_tokens" => &mut self.cache_creation_input_tokens,
            "cache_read_input_tokens" => &mut self.cache_read_input_tokens,
            _ => unreachable!("not a usage field: {name}"),
        }
    }
}

/// Refuses a usage that no request to a model with this context window and
/// output limit can have: a prompt (input + cache writes + cache reads)
/// above `context_window` or output above `max_output_tokens`. The error
/// names the field.
pub fn check_limits(
    usage: &Usage,
    context_window: u64,
    max_output_tokens: u64,
) -> Result<(), FieldError> {
    if usage.prompt_tokens() > context_window as u128 {
        return Err(FieldError::new(
            "usage.input_tokens",
            format!(
                "the prompt (input + cache writes + cache reads) is {} tokens, above the model's context window of {context_window}",
                usage.prompt_tokens()
            ),
        ));
    }
    if usage.output_tokens > max_output_tokens {
        return Err(FieldError::new(
            "usage.output_tokens",
            format!(
                "{} is above the model's output limit of {max_output_tokens} tokens",
                usage.output_tokens
            ),
        ));
    }
    Ok(())
}

fn cache_creation(v: Option<&Value>) -> Result<Option<CacheCreation>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(cc)) => Ok(Some(CacheCreation {
            ephemeral_5m_input_tokens: count_field(
                cc.get("ephemeral_5m_input_tokens"),
                "cache_creation.ephemeral_5m_input_tokens",
            )?
            .unwrap_or(0),
            ephemeral_1h_input_tokens: count_field(
                cc.get("ephemeral_1h_input_tokens"),
                "cache_creation.ephemeral_1h_input_tokens",
            )?
            .unwrap_or(0),
        })),
        Some(_) => Err(FieldError::new("usage.cache_creation", "must be an object")),
    }
}

/// A modifier attribute: 1 to 32 of `a-z 0-9 _ -`; `null` is absent.
fn label(v: Option<&Value>, name: &str) -> Result<Option<String>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_label(s, name)?;
            Ok(Some(s.clone()))
        }
        Some(other) => Err(FieldError::new(
            format!("usage.{name}"),
            format!("must be a string, got {other}"),
        )),
    }
}

/// Checks a modifier attribute's value (1 to 32 of `a-z 0-9 _ -`).
pub(crate) fn check_label(s: &str, name: &str) -> Result<(), FieldError> {
    if s.is_empty()
        || s.len() > 32
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(FieldError::new(
            format!("usage.{name}"),
            format!("`{s}` is not a valid value: 1 to 32 of a-z, 0-9, _ and -"),
        ));
    }
    Ok(())
}

fn count_field(v: Option<&Value>, name: &str) -> Result<Option<u64>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            FieldError::new(
                format!("usage.{name}"),
                format!("{n} is not a non-negative whole number of tokens"),
            )
        }),
        Some(other) => Err(FieldError::new(
            format!("usage.{name}"),
            format!("must be a number, got {other}"),
        )),
    }
}

/// Usage of a streamed response, folded from its events.
///
/// `message_start` sets every field; each `message_delta` replaces the
/// fields it carries (they are cumulative). Other events are ignored.
#[derive(Debug, Clone, Default)]
pub struct StreamUsage {
    usage: Option<Usage>,
}

impl StreamUsage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one parsed SSE `data:` object.
    pub fn feed(&mut self, event: &Value) -> Result<(), FieldError> {
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let usage = event
                    .pointer("/message/usage")
                    .ok_or_else(|| FieldError::new("message_start.message.usage", "is missing"))?;
                self.usage = Some(Usage::from_api_json(usage)?);
            }
            Some("message_delta") => {
                let Some(delta) = event.get("usage") else {
                    return Ok(());
                };
                let current = self.usage.as_mut().ok_or_else(|| {
                    FieldError::new("message_delta", "arrived before message_start")
                })?;
                let obj = delta
                    .as_object()
                    .ok_or_else(|| FieldError::new("message_delta.usage", "must be an object"))?;
                for name in FIELDS {
                    if let Some(n) = count_field(obj.get(name), name)? {
                        *current.field_mut(name) = n;
                    }
                }
                if let Some(cc) = cache_creation(obj.get("cache_creation"))? {
                    current.cache_creation = Some(cc);
                }
                if let Some(Value::Object(t)) = obj.get("server_tool_use") {
                    if let Some(n) = count_field(
                        t.get("web_search_requests"),
                        "server_tool_use.web_search_requests",
                    )? {
                        current.server_tool_use.web_search_requests = n;
                    }
                }
                for name in MODE_FIELDS {
                    if let Some(v) = label(obj.get(name), name)? {
                        *current.mode_mut(name) = Some(v);
                    }
                }
                current.explain_cache_writes();
                current.validate()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Feeds a whole `text/event-stream` body.
    pub fn feed_sse(&mut self, body: &str) -> Result<(), FieldError> {
        for block in body.split("\n\n") {
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&data).map_err(|e| {
                FieldError::new("stream", format!("an event's data is not JSON: {e}"))
            })?;
            self.feed(&v)?;
        }
        Ok(())
    }

    /// The final usage, or an error when no `message_start` was seen.
    pub fn finish(self) -> Result<Usage, FieldError> {
        self.usage
            .ok_or_else(|| FieldError::new("stream", "ended without a message_start event"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // A real response body's usage (with the cache breakdown and extra fields) parses into the right classes.
    #[test]
    fn response_usage_with_breakdown() {
        let body = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 21, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 300,
                      "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500},
                      "output_tokens": 42, "service_tier": "standard"}
        });
        let u = Usage::from_response_json(&body).unwrap();
        assert_eq!(
            u.by_class(),
            [
                (TokenClass::Input, 21),
                (TokenClass::Output, 42),
                (TokenClass::CacheWrite5m, 1000),
                (TokenClass::CacheWrite1h, 500),
                (TokenClass::CacheRead, 300)
            ]
        );
    }

    // Without a breakdown every cache write is a 5-minute write; null counts are zero.
    #[test]
    fn usage_without_breakdown() {
        let u = Usage::from_api_json(&json!({"input_tokens": 5, "output_tokens": 7, "cache_creation_input_tokens": 9, "cache_read_input_tokens": null})).unwrap();
        assert_eq!(u.by_class()[2], (TokenClass::CacheWrite5m, 9));
        assert_eq!(u.by_class()[3], (TokenClass::CacheWrite1h, 0));
        assert_eq!(u.cache_read_input_tokens, 0);
    }

    // A split that does not explain its total: the remainder is priced as 5-minute writes; a larger split raises the total.
    #[test]
    fn unexplained_cache_writes() {
        let u = Usage::from_api_json(&json!({"cache_creation_input_tokens": 10, "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 3}})).unwrap();
        assert_eq!(u.by_class()[2], (TokenClass::CacheWrite5m, 7));
        assert_eq!(u.by_class()[3], (TokenClass::CacheWrite1h, 3));
        let u = Usage::from_api_json(&json!({"cache_creation_input_tokens": 4, "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 3}})).unwrap();
        assert_eq!(u.cache_creation_input_tokens, 6);
        assert_eq!(u.by_class()[2], (TokenClass::CacheWrite5m, 3));
    }

    // What the official Python SDK's usage.model_dump() emits (nulls everywhere) reads as absent fields, through serde too.
    #[test]
    fn sdk_model_dump_nulls() {
        let dumped = json!({"cache_creation": null, "cache_creation_input_tokens": null, "cache_read_input_tokens": null,
            "input_tokens": 12, "output_tokens": 6, "server_tool_use": null, "service_tier": null, "inference_geo": null});
        let u: Usage = serde_json::from_value(dumped).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens),
            (12, 6, 0)
        );
        assert_eq!(u.service_tier, None);
    }

    // OpenAI's shapes: cached tokens inside the prompt move to cache reads; service_tier beside usage is read.
    #[test]
    fn openai_shapes() {
        let body = json!({"model": "gpt-5", "service_tier": "flex", "usage": {"prompt_tokens": 1000, "completion_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 800, "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 30}}});
        let u = Usage::from_response_json(&body).unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_input_tokens, u.output_tokens),
            (200, 800, 50)
        );
        assert_eq!(u.service_tier.as_deref(), Some("flex"));
        let r = Usage::from_api_json(&json!({"input_tokens": 300, "input_tokens_details": {"cached_tokens": 100}, "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 309})).unwrap();
        assert_eq!((r.input_tokens, r.cache_read_input_tokens), (200, 100));
        let e = Usage::from_api_json(
            &json!({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}}),
        )
        .unwrap_err();
        assert_eq!(e.field, "usage.prompt_tokens_details.cached_tokens");
    }

    // Server-tool calls and the serving mode are read; a malformed mode names its field.
    #[test]
    fn server_tools_and_modes() {
        let u = Usage::from_api_json(&json!({"input_tokens": 1, "output_tokens": 1, "server_tool_use": {"web_search_requests": 3},
            "service_tier": "batch", "inference_geo": "us", "speed": "fast"})).unwrap();
        assert_eq!(u.server_tool_use.web_search_requests, 3);
        assert_eq!(
            (
                u.mode("service_tier"),
                u.mode("inference_geo"),
                u.mode("speed")
            ),
            (Some("batch"), Some("us"), Some("fast"))
        );
        assert_eq!(
            Usage::from_api_json(&json!({"service_tier": 5}))
                .unwrap_err()
                .field,
            "usage.service_tier"
        );
        assert_eq!(
            Usage::from_api_json(&json!({"speed": "Fast!"}))
                .unwrap_err()
                .field,
            "usage.speed"
        );
        let back: Usage = serde_json::from_value(serde_json::to_value(&u).unwrap()).unwrap();
        assert_eq!(back, u);
    }

    // Negative, fractional, string and inconsistent counts are refused and the message names the field.
    #[test]
    fn bad_usage() {
        let e = Usage::from_api_json(&json!({"input_tokens": -1})).unwrap_err();
        assert_eq!(e.field, "usage.input_tokens");
        assert!(Usage::from_api_json(&json!({"output_tokens": 1.5})).is_err());
        assert!(Usage::from_api_json(&json!({"output_tokens": "3"}))
            .unwrap_err()
            .reason
            .contains("must be a number"));
        assert!(Usage::from_api_json(&json!({"input_tokens": MAX_TOKENS_PER_FIELD + 1})).is_err());
    }

    // Streaming: message_delta counts are cumulative, so the last one wins and nothing is added up.
    #[test]
    fn stream_last_value_wins() {
        let sse = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":10}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":100,\"output_tokens\":15}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let mut s = StreamUsage::new();
        s.feed_sse(sse).unwrap();
        let u = s.finish().unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens),
            (25, 15, 100)
        );
    }

    // Token classes serialise to the same names as_str gives, and parse back.
    #[test]
    fn class_names() {
        for c in TokenClass::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert_eq!(TokenClass::parse(c.as_str()).unwrap(), c);
        }
        assert!(TokenClass::parse("cache").is_err());
    }

    // A delta before message_start, or a stream without one, is an error rather than a zero bill.
    #[test]
    fn stream_errors() {
        let mut s = StreamUsage::new();
        assert!(s
            .feed(&json!({"type": "message_delta", "usage": {"output_tokens": 3}}))
            .is_err());
        assert!(StreamUsage::new().finish().is_err());
    }
}
