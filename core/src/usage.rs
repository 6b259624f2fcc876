//! Token usage as Anthropic's Messages API reports it, and the token classes
//! we price separately.
//!
//! `input_tokens` excludes cache tokens. `cache_creation_input_tokens` is the
//! total of cache writes; when the response carries the `cache_creation`
//! breakdown, 5-minute and 1-hour writes are priced apart. Without the
//! breakdown every write is a 5-minute write (the API's default TTL).
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

/// Anthropic's `usage` object, the fields we bill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

const FIELDS: [&str; 4] = [
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
];

impl Usage {
    /// Reads a `usage` object as the API sends it: absent or `null` counts
    /// are zero, other fields (`service_tier`, `server_tool_use`, …) are not
    /// billed here and ignored. Counts must be non-negative integers.
    pub fn from_api_json(v: &Value) -> Result<Self, FieldError> {
        let obj = v
            .as_object()
            .ok_or_else(|| FieldError::new("usage", "must be an object"))?;
        let mut u = Usage::default();
        for name in FIELDS {
            let n = count_field(obj.get(name), name)?.unwrap_or(0);
            *u.field_mut(name) = n;
        }
        match obj.get("cache_creation") {
            None | Some(Value::Null) => {}
            Some(Value::Object(cc)) => {
                u.cache_creation = Some(CacheCreation {
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
                })
            }
            Some(_) => return Err(FieldError::new("usage.cache_creation", "must be an object")),
        }
        u.validate()?;
        Ok(u)
    }

    /// Reads the `usage` of a whole (non-streaming) Messages API response body.
    pub fn from_response_json(body: &Value) -> Result<Self, FieldError> {
        let usage = body
            .get("usage")
            .ok_or_else(|| FieldError::new("usage", "the response has no usage object"))?;
        Self::from_api_json(usage)
    }

    /// Bounds every field and checks that a breakdown adds up to its total.
    pub fn validate(&self) -> Result<(), FieldError> {
        for name in FIELDS {
            let n = self.field(name);
            if n > MAX_TOKENS_PER_FIELD {
                return Err(FieldError::new(
                    format!("usage.{name}"),
                    format!("{n} is above the limit of {MAX_TOKENS_PER_FIELD} tokens"),
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

    pub fn total_tokens(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
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
                if let Some(Value::Object(_)) = obj.get("cache_creation") {
                    current.cache_creation = Usage::from_api_json(&serde_json::json!({
                        "cache_creation_input_tokens": current.cache_creation_input_tokens,
                        "cache_creation": obj["cache_creation"].clone(),
                    }))?
                    .cache_creation;
                }
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
        let e = Usage::from_api_json(&json!({"cache_creation_input_tokens": 10, "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 3}})).unwrap_err();
        assert!(e.reason.contains("add up to 6"), "{e}");
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
