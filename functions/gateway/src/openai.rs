//! OpenAI Chat Completions over the Messages API: `POST /v1/chat/completions`
//! for Anthropic models, translated on the way in and out, so the official
//! `openai` SDKs work against the gateway.
//!
//! Request: `messages` (`system`/`developer` turns become the Messages API's
//! `system`; `user` and `assistant` turns keep their order; content as a
//! string or text parts), `max_completion_tokens` or `max_tokens` (default:
//! the model's output limit, since the Messages API requires one),
//! `temperature`, `top_p`, `stop` (as `stop_sequences`), `stream`,
//! `stream_options.include_usage`. Other fields are refused naming the
//! field, rather than silently dropped.
//!
//! Answer: `chat.completion` (or `chat.completion.chunk` events ending with
//! `data: [DONE]`), `finish_reason` from `stop_reason` (`end_turn` and
//! `stop_sequence` → `stop`, `max_tokens` → `length`, `tool_use` →
//! `tool_calls`), and OpenAI's usage: `prompt_tokens` = input + cache
//! writes + cache reads, `prompt_tokens_details.cached_tokens` = cache
//! reads, `completion_tokens` = output. Billing reads the provider's own
//! usage, not this translation.

use crate::Failure;
use billing_core::Usage;
use serde_json::{json, Value};

/// Fields of a Chat Completions request this translation honours.
const KNOWN: [&str; 10] = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "user",
];

/// Fields accepted only with the value that changes nothing (what common
/// clients send by default); any other value is refused by name.
fn neutral(key: &str, v: &Value) -> bool {
    match key {
        "n" => v == &json!(1),
        "presence_penalty" | "frequency_penalty" => v.as_f64() == Some(0.0),
        "logprobs" | "store" => v == &json!(false),
        "response_format" => v["type"] == "text",
        "metadata" | "seed" | "service_tier" | "parallel_tool_calls" => true,
        _ => false,
    }
}

fn text_of(content: &Value, field: &str) -> Result<String, Failure> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t.to_owned()),
                _ => Err(Failure::new(
                    400,
                    format!("{field}: only text parts are supported"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("")),
        _ => Err(Failure::new(
            400,
            format!("{field}: must be a string or text parts"),
        )),
    }
}

/// The Messages API request for a Chat Completions request.
pub fn to_messages_request(v: &Value, default_max_tokens: u64) -> Result<Value, Failure> {
    let obj = v
        .as_object()
        .ok_or_else(|| Failure::new(400, "the body must be a JSON object"))?;
    if let Some((k, v)) = obj
        .iter()
        .find(|(k, v)| !KNOWN.contains(&k.as_str()) && !v.is_null() && !neutral(k, v))
    {
        return Err(Failure::new(
            400,
            format!("{k}: {v} is not supported by this gateway's Chat Completions"),
        ));
    }
    if v["temperature"].as_f64().is_some_and(|t| t > 1.0) {
        return Err(Failure::new(
            400,
            "temperature: at most 1 for Anthropic models (OpenAI allows 2)",
        ));
    }
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for (i, m) in v["messages"]
        .as_array()
        .ok_or_else(|| Failure::new(400, "messages: must be an array"))?
        .iter()
        .enumerate()
    {
        let field = format!("messages.{i}.content");
        match m["role"].as_str() {
            Some("system" | "developer") => system.push(text_of(&m["content"], &field)?),
            Some(role @ ("user" | "assistant")) => {
                messages.push(json!({"role": role, "content": text_of(&m["content"], &field)?}))
            }
            other => {
                return Err(Failure::new(
                    400,
                    format!("messages.{i}.role: {other:?} is not supported (system, developer, user, assistant)"),
                ))
            }
        }
    }
    let max_tokens = v["max_completion_tokens"]
        .as_u64()
        .or_else(|| v["max_tokens"].as_u64())
        .unwrap_or(default_max_tokens);
    let mut out = json!({"model": v["model"], "max_tokens": max_tokens, "messages": messages});
    if let Some(user) = v["user"].as_str() {
        out["metadata"] = json!({"user_id": user});
    }
    if !system.is_empty() {
        out["system"] = json!(system.join("\n\n"));
    }
    for k in ["temperature", "top_p"] {
        if !v[k].is_null() {
            out[k] = v[k].clone();
        }
    }
    match &v["stop"] {
        Value::Null => {}
        Value::String(s) => out["stop_sequences"] = json!([s]),
        Value::Array(a) => out["stop_sequences"] = json!(a),
        _ => {
            return Err(Failure::new(
                400,
                "stop: must be a string or an array of strings",
            ))
        }
    }
    if v["stream"].as_bool() == Some(true) {
        out["stream"] = json!(true);
    }
    Ok(out)
}

fn finish_reason(stop_reason: &Value) -> Value {
    match stop_reason.as_str() {
        Some("max_tokens" | "model_context_window_exceeded") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(_) => json!("stop"),
        None => Value::Null,
    }
}

/// OpenAI's usage for the Messages API's usage (as billing-core reads it).
pub fn usage(u: &Usage) -> Value {
    let prompt = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens;
    json!({
        "prompt_tokens": prompt, "completion_tokens": u.output_tokens, "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
    })
}

/// A `chat.completion` for a Messages API answer.
pub fn to_completion(msg: &Value, created: i64) -> Value {
    let text: String = msg["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect();
    json!({
        "id": format!("chatcmpl-{}", msg["id"].as_str().unwrap_or("")), "object": "chat.completion", "created": created,
        "model": msg["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                     "finish_reason": finish_reason(&msg["stop_reason"]), "logprobs": null}],
        "usage": Usage::from_api_json(&msg["usage"]).map(|u| usage(&u)).unwrap_or(Value::Null),
    })
}

/// An error body in OpenAI's shape.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

/// Messages API stream events to `chat.completion.chunk` events.
pub struct Chunks {
    pub id: String,
    pub model: Value,
    pub created: i64,
    pub include_usage: bool,
}

impl Chunks {
    fn chunk(&self, delta: Value, finish: Value) -> String {
        let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
        format!("data: {c}\n\n")
    }

    /// The chunks for some Messages API events (their `data` objects).
    pub fn events(&mut self, events: &[Value]) -> Vec<u8> {
        let mut out = String::new();
        for e in events {
            match e["type"].as_str() {
                Some("message_start") => {
                    if let Some(id) = e["message"]["id"].as_str() {
                        self.id = format!("chatcmpl-{id}");
                    }
                    self.model = e["message"]["model"].clone();
                    out += &self.chunk(json!({"role": "assistant", "content": ""}), Value::Null);
                }
                Some("content_block_delta") if e["delta"]["type"] == "text_delta" => {
                    out += &self.chunk(json!({"content": e["delta"]["text"]}), Value::Null);
                }
                Some("message_delta") => {
                    out += &self.chunk(json!({}), finish_reason(&e["delta"]["stop_reason"]));
                }
                _ => {}
            }
        }
        out.into_bytes()
    }

    /// The end of the stream: the usage chunk if asked for, then `[DONE]`.
    pub fn finish(&self, u: &Usage) -> Vec<u8> {
        let mut out = String::new();
        if self.include_usage {
            let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                           "choices": [], "usage": usage(u)});
            out += &format!("data: {c}\n\n");
        }
        out += "data: [DONE]\n\n";
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // System and developer turns become `system`; the rest keep their order; stop becomes stop_sequences.
    #[test]
    fn request_translation() {
        let v = json!({"model": "claude-haiku-4-5", "max_completion_tokens": 50, "stop": "END", "stream": true,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
                         {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Cost?"}]});
        assert_eq!(
            to_messages_request(&v, 64000).unwrap(),
            json!({"model": "claude-haiku-4-5", "max_tokens": 50, "system": "Be brief.\n\nNo lists.", "stop_sequences": ["END"], "stream": true,
                   "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Cost?"}]})
        );
        // Without a limit, the model's output limit (the Messages API requires one).
        assert_eq!(
            to_messages_request(&json!({"model": "m", "messages": []}), 64000).unwrap()
                ["max_tokens"],
            64000
        );
    }

    // What the translation cannot honour is refused naming the field, never dropped.
    #[test]
    fn unsupported_fields_are_refused() {
        let f = to_messages_request(&json!({"model": "m", "messages": [], "tools": []}), 1)
            .unwrap_err();
        assert_eq!((f.status, f.message.starts_with("tools:")), (400, true));
        // Defaults common clients send pass; a value that would change the answer does not.
        let with = |extra: Value| {
            let mut v = json!({"model": "m", "messages": []});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            to_messages_request(&v, 1)
        };
        assert!(
            with(json!({"n": 1, "presence_penalty": 0, "logprobs": false, "user": "u-1"})).is_ok()
        );
        assert!(with(json!({"n": 2})).unwrap_err().message.starts_with("n:"));
        assert!(with(json!({"temperature": 1.5}))
            .unwrap_err()
            .message
            .starts_with("temperature:"));
        let f = to_messages_request(
            &json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            1,
        )
        .unwrap_err();
        assert!(f.message.starts_with("messages.0.role"), "{}", f.message);
    }

    // OpenAI's prompt_tokens counts every input token, cache writes and reads included; cached_tokens the reads.
    #[test]
    fn usage_translation() {
        let u = json!({"input_tokens": 10, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 3000, "output_tokens": 7});
        assert_eq!(
            usage(&Usage::from_api_json(&u).unwrap()),
            json!({"prompt_tokens": 3210, "completion_tokens": 7, "total_tokens": 3217, "prompt_tokens_details": {"cached_tokens": 3000}})
        );
    }
}
