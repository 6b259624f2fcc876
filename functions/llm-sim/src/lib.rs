//! `llm-sim`: speaks the Anthropic Messages API at `/sim/v1/messages` and
//! `/sim/v1/messages/count_tokens`, deterministically, so the real client
//! path can be exercised without the vendor.
//!
//! - Answers are a function of the model and the prompt.
//! - `usage` comes from the local tokenizer: the prompt's text plus a small
//!   framing overhead per message; blocks up to the last `cache_control`
//!   mark are cache tokens — written (5-minute, or 1-hour with
//!   `"ttl": "1h"`) the first time that prefix is seen, read afterwards
//!   (remembered in Redis for the TTL; without Redis every time is a write).
//! - `"stream": true` answers with the SSE event sequence, usage cumulative;
//!   with `x-sim-stream-delay-ms: N` the events are written N ms apart;
//!   `x-sim-fail: cut-stream` ends it after the first text delta.
//! - A model that does not start with `claude-` is 404 `not_found_error`;
//!   a `web_search_*` server tool in `tools` is reported as one search
//!   (`usage.server_tool_use.web_search_requests`).
//! - Injection, by request header (or the `sim_*` variables):
//!   `x-sim-latency-ms: N`; `x-sim-fail: 400|401|429|529|500|503|malformed|spend-limit`
//!   with `x-sim-fail-times: N` (fail only the first N calls, counted per
//!   `x-sim-fail-key`). `GET /sim/v1/calls?key=K` tells how many calls a key saw.
//! - `/sim/openai/v1/chat/completions` answers in the OpenAI-compatible
//!   shape (`usage.prompt_tokens`, `prompt_tokens_details.cached_tokens`,
//!   `completion_tokens`), for models whose provider is openai-compatible;
//!   a system prompt of 1,024 tokens or more is cached as OpenAI caches a
//!   long prefix (read, as `cached_tokens`, once seen);
//!   with `"stream": true` as OpenAI streams (`chat.completion.chunk`s, the
//!   usage chunk only with `stream_options.include_usage`, then `[DONE]`;
//!   `x-sim-fail: cut-stream` ends it after the first content).

use billing_core::tokenizer::count_text;
use billing_fn_common::cache::Cache;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use spin_sdk::http::{
    Fields, IncomingRequest, Method, OutgoingResponse, Request, Response, ResponseOutparam,
};
use spin_sdk::http_component;
use spin_sdk::redis::{RedisParameter, RedisResult};

/// Framing tokens per message and per request, so counts resemble the API's.
const PER_MESSAGE: u64 = 3;
const PER_REQUEST: u64 = 4;

const WORDS: [&str; 32] = [
    "tokens", "billing", "cache", "invoice", "model", "price", "usage", "stream", "exact",
    "ledger", "cents", "rounding", "event", "thread", "answer", "prompt", "latency", "budget",
    "credit", "meter", "daily", "window", "context", "reply", "summary", "detail", "record",
    "signal", "total", "period", "report", "cost",
];

fn anthropic_error(status: u16, kind: &str, message: &str, request_id: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", request_id)
        .body(json!({"type": "error", "error": {"type": kind, "message": message}}).to_string())
        .build()
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.header(name).and_then(|h| h.as_str())
}

fn setting(req: &Request, name: &str) -> Option<String> {
    header(req, &format!("x-sim-{}", name.replace('_', "-")))
        .map(str::to_owned)
        .or_else(|| {
            spin_sdk::variables::get(&format!("sim_{name}"))
                .ok()
                .filter(|v| !v.is_empty())
        })
}

#[http_component]
async fn handle(incoming: IncomingRequest, out: ResponseOutparam) {
    use futures::SinkExt;
    use spin_sdk::http::conversions::TryFromIncomingRequest;
    let req = match Request::try_from_incoming_request(incoming).await {
        Ok(r) => r,
        Err(_) => return,
    };
    let response = route(&req);
    let headers: Vec<(String, Vec<u8>)> = response
        .headers()
        .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
        .collect();
    let outgoing =
        OutgoingResponse::new(Fields::from_list(&headers).unwrap_or_else(|_| Fields::new()));
    let _ = outgoing.set_status_code(*response.status());
    let mut body = outgoing.take_body();
    out.set(outgoing);
    // `x-sim-stream-delay-ms: N`: a stream's events are written one at a
    // time, N ms apart, as a provider generating tokens sends them.
    let pace = setting(&req, "stream_delay_ms").and_then(|v| v.parse::<u64>().ok());
    let streamed = headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with(b"text/event-stream"));
    match pace {
        Some(ms) if streamed => {
            let text = String::from_utf8_lossy(response.body()).into_owned();
            for event in text.split_inclusive("\n\n") {
                if body.send(event.as_bytes().to_vec()).await.is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
            }
        }
        _ => {
            let _ = body.send(response.into_body()).await;
        }
    }
    let _ = body.close().await;
}

fn route(req: &Request) -> Response {
    let digest = hex::encode(Sha256::digest(req.body()));
    let request_id = format!("req_sim_{}", &digest[..24]);
    match (req.method(), req.path()) {
        (Method::Post, "/sim/v1/messages") => messages(req, &request_id, false),
        (Method::Post, "/sim/v1/messages/count_tokens") => messages(req, &request_id, true),
        (Method::Post, "/sim/openai/v1/chat/completions") => chat_completions(req, &request_id),
        (Method::Get, "/sim/v1/calls") => {
            let key = req.query().strip_prefix("key=").unwrap_or("");
            let n = Cache::open()
                .get_json::<i64>(&format!("sim:calls:{key}"))
                .unwrap_or(0);
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(json!({"key": key, "calls": n}).to_string())
                .build()
        }
        _ => anthropic_error(
            404,
            "not_found_error",
            &format!(
                "{} {} is not part of the simulated API",
                req.method(),
                req.path()
            ),
            &request_id,
        ),
    }
}

/// Counts this call for `x-sim-fail-key` and decides whether to fail it.
fn injected_failure(req: &Request, cache: &Cache) -> Option<String> {
    let key = setting(req, "fail_key");
    let call_no = key.as_ref().map(|k| incr(cache, &format!("sim:calls:{k}")));
    let fail = setting(req, "fail")?;
    let times: Option<i64> = setting(req, "fail_times").and_then(|t| t.parse().ok());
    match (times, call_no) {
        (Some(t), Some(Some(n))) if n > t => None,
        _ => Some(fail),
    }
}

fn incr(cache: &Cache, key: &str) -> Option<i64> {
    cache.incr(key)
}

fn messages(req: &Request, request_id: &str, count_only: bool) -> Response {
    let cache = Cache::open();
    if let Some(ms) = setting(req, "latency_ms").and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
    }
    if !count_only {
        // A cut stream fails later, in the stream itself.
        if let Some(fail) = injected_failure(req, &cache).filter(|f| f != "cut-stream") {
            return match fail.as_str() {
                "429" => {
                    let mut r = anthropic_error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit (simulated)", request_id);
                    r.set_header("retry-after", "0");
                    r
                }
                "spend-limit" => anthropic_error(
                    429,
                    "rate_limit_error",
                    "You have reached your spend limit for this billing period (simulated)",
                    request_id,
                ),
                "529" => anthropic_error(
                    529,
                    "overloaded_error",
                    "Overloaded (simulated)",
                    request_id,
                ),
                "503" => anthropic_error(
                    503,
                    "api_error",
                    "Service unavailable (simulated)",
                    request_id,
                ),
                "400" => anthropic_error(
                    400,
                    "invalid_request_error",
                    "messages: invalid request (simulated)",
                    request_id,
                ),
                "401" => anthropic_error(
                    401,
                    "authentication_error",
                    "invalid x-api-key (simulated)",
                    request_id,
                ),
                "malformed" => Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .header("request-id", request_id)
                    .body("{\"type\": \"message\", \"content\": [")
                    .build(),
                _ => anthropic_error(
                    500,
                    "api_error",
                    "Internal server error (simulated)",
                    request_id,
                ),
            };
        }
    }
    let (body, prompt) = match parse_request(req, count_only, request_id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Anthropic refuses a model it does not serve: 404 not_found_error naming it.
    if !prompt.model.starts_with("claude-") {
        return anthropic_error(
            404,
            "not_found_error",
            &format!("model: {}", prompt.model),
            request_id,
        );
    }
    let (input, cache_5m, cache_1h, cache_read) = prompt.usage(&cache);
    if count_only {
        let total = input + cache_5m + cache_1h + cache_read;
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(json!({"input_tokens": total}).to_string())
            .build();
    }
    let (text, output_tokens, stop_reason) = answer(&prompt);
    let id = format!("msg_sim_{}", &request_id[8..]);
    let mut usage = json!({
        "input_tokens": input,
        "cache_creation_input_tokens": cache_5m + cache_1h,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_5m, "ephemeral_1h_input_tokens": cache_1h},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    });
    // The server web-search tool offered: one search, as Anthropic reports it.
    let searches = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("web_search"))
        })
        .count();
    if searches > 0 {
        usage["server_tool_use"] = json!({"web_search_requests": searches});
    }
    if body["stream"].as_bool() == Some(true) {
        let cut = setting(req, "fail").as_deref() == Some("cut-stream");
        return stream(
            &id,
            &prompt.model,
            &text,
            stop_reason,
            &usage,
            request_id,
            cut,
        );
    }
    let msg = json!({
        "id": id, "type": "message", "role": "assistant", "model": prompt.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason, "stop_sequence": null, "usage": usage,
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("request-id", request_id)
        .body(msg.to_string())
        .build()
}

/// The JSON body and the prompt in it, or the 400 to answer.
fn parse_request(
    req: &Request,
    count_only: bool,
    request_id: &str,
) -> Result<(Value, Prompt), Response> {
    let bad = |m: &str| anthropic_error(400, "invalid_request_error", m, request_id);
    let body: Value = serde_json::from_slice(req.body())
        .map_err(|e| bad(&format!("request body is not valid JSON: {e}")))?;
    let prompt = Prompt::parse(&body, count_only).map_err(|m| bad(&m))?;
    Ok((body, prompt))
}

struct Block {
    text: String,
    /// `Some("5m")` / `Some("1h")` when this block ends a cached prefix.
    cache: Option<String>,
}

struct Prompt {
    model: String,
    max_tokens: u64,
    messages: usize,
    /// System blocks first, then message blocks, in order.
    blocks: Vec<Block>,
}

fn blocks_of(v: &Value, field: &str, out: &mut Vec<Block>) -> Result<(), String> {
    match v {
        Value::String(s) => out.push(Block {
            text: s.clone(),
            cache: None,
        }),
        Value::Array(items) => {
            for (i, b) in items.iter().enumerate() {
                if b["type"] != "text" {
                    return Err(format!("{field}.{i}.type: only text blocks are simulated"));
                }
                let text = b["text"]
                    .as_str()
                    .ok_or_else(|| format!("{field}.{i}.text: Field required"))?;
                let cache = match &b["cache_control"] {
                    Value::Null => None,
                    cc if cc["type"] == "ephemeral" => Some(if cc["ttl"] == "1h" {
                        "1h".to_owned()
                    } else {
                        "5m".to_owned()
                    }),
                    _ => return Err(format!("{field}.{i}.cache_control: type must be ephemeral")),
                };
                out.push(Block {
                    text: text.to_owned(),
                    cache,
                });
            }
        }
        _ => return Err(format!("{field}: Input should be a valid string or list")),
    }
    Ok(())
}

impl Prompt {
    fn parse(body: &Value, count_only: bool) -> Result<Self, String> {
        let model = body["model"]
            .as_str()
            .ok_or("model: Field required")?
            .to_owned();
        let max_tokens = match body["max_tokens"].as_u64() {
            Some(n) if n > 0 => n,
            _ if count_only => u64::MAX,
            _ => return Err("max_tokens: Field required (a positive integer)".into()),
        };
        let mut blocks = Vec::new();
        if !body["system"].is_null() {
            blocks_of(&body["system"], "system", &mut blocks)?;
        }
        let messages = body["messages"]
            .as_array()
            .ok_or("messages: Field required")?;
        if messages.is_empty() {
            return Err("messages: at least one message is required".into());
        }
        for (i, m) in messages.iter().enumerate() {
            let role = m["role"].as_str().unwrap_or("");
            if role != "user" && role != "assistant" {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ));
            }
            blocks_of(&m["content"], &format!("messages.{i}.content"), &mut blocks)?;
        }
        if messages[0]["role"] != "user" {
            return Err("messages.0.role: the first message must use the user role".into());
        }
        Ok(Self {
            model,
            max_tokens,
            messages: messages.len(),
            blocks,
        })
    }

    /// (uncached input, 5-minute writes, 1-hour writes, reads).
    fn usage(&self, cache: &Cache) -> (u64, u64, u64, u64) {
        let tokens: Vec<u64> = self
            .blocks
            .iter()
            .map(|b| count_text(&self.model, &b.text).tokens)
            .collect();
        let framing = PER_REQUEST + PER_MESSAGE * self.messages as u64;
        let Some(last) = self.blocks.iter().rposition(|b| b.cache.is_some()) else {
            return (tokens.iter().sum::<u64>() + framing, 0, 0, 0);
        };
        let cached: u64 = tokens[..=last].iter().sum();
        let rest: u64 = tokens[last + 1..].iter().sum::<u64>() + framing;
        let ttl = self.blocks[last].cache.as_deref().unwrap_or("5m");
        let mut h = Sha256::new();
        h.update(self.model.as_bytes());
        for b in &self.blocks[..=last] {
            h.update(b.text.as_bytes());
            h.update([0]);
        }
        let key = format!("sim:cache:{}", hex::encode(h.finalize()));
        let ttl_s = if ttl == "1h" { 3600 } else { 300 };
        // SET NX answers OK to the first writer and nil to everyone after.
        let reply = cache.execute(
            "SET",
            &[
                RedisParameter::Binary(key.into_bytes()),
                RedisParameter::Binary(b"1".to_vec()),
                RedisParameter::Binary(b"NX".to_vec()),
                RedisParameter::Binary(b"EX".to_vec()),
                RedisParameter::Int64(ttl_s),
            ],
        );
        let seen = matches!(reply.as_deref(), Some([RedisResult::Nil]));
        match (seen, ttl) {
            (true, _) => (rest, 0, 0, cached),
            (false, "1h") => (rest, 0, cached, 0),
            (false, _) => (rest, cached, 0, 0),
        }
    }
}

/// The deterministic answer, truncated to `max_tokens`.
fn answer(p: &Prompt) -> (String, u64, &'static str) {
    let mut h = Sha256::new();
    h.update(p.model.as_bytes());
    for b in &p.blocks {
        h.update(b.text.as_bytes());
    }
    let d = h.finalize();
    let n = 12 + (d[0] as usize % 40);
    let last_user = p
        .blocks
        .last()
        .map(|b| b.text.chars().take(40).collect::<String>())
        .unwrap_or_default();
    let mut words: Vec<String> = vec![format!("(llm-sim) About \"{last_user}\":")];
    words.extend((0..n).map(|i| WORDS[d[(i + 1) % d.len()] as usize % WORDS.len()].to_owned()));
    let mut text = words.join(" ") + ".";
    let mut tokens = count_text(&p.model, &text).tokens;
    let mut stop = "end_turn";
    while tokens > p.max_tokens && words.len() > 1 {
        words.pop();
        text = words.join(" ");
        tokens = count_text(&p.model, &text).tokens;
        stop = "max_tokens";
    }
    (text, tokens, stop)
}

/// The event stream of an answer; `cut`: it ends after the first text
/// delta, without `message_delta` or `message_stop` (a connection lost mid-answer).
fn stream(
    id: &str,
    model: &str,
    text: &str,
    stop: &str,
    usage: &Value,
    request_id: &str,
    cut: bool,
) -> Response {
    // As Anthropic streams: message_start carries the input side and one
    // output token; server-tool counts come only with the final message_delta.
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    if let Some(u) = start_usage.as_object_mut() {
        u.remove("server_tool_use");
    }
    let mut delta_usage = json!({"output_tokens": usage["output_tokens"]});
    if !usage["server_tool_use"].is_null() {
        delta_usage["server_tool_use"] = usage["server_tool_use"].clone();
    }
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    let chunks: Vec<&str> = text.split_inclusive(' ').collect();
    for c in chunks.chunks(4) {
        events.push(("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c.concat()}})));
    }
    if cut {
        events.truncate(3);
    } else {
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    if !cut {
        events.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": delta_usage})));
        events.push(("message_stop", json!({"type": "message_stop"})));
    }
    let body: String = events
        .iter()
        .map(|(e, d)| format!("event: {e}\ndata: {d}\n\n"))
        .collect();
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("request-id", request_id)
        .body(body)
        .build()
}

/// The OpenAI-compatible shape of the same simulation: cached prompt tokens
/// are the ones a cache_control prefix would read.
fn chat_completions(req: &Request, request_id: &str) -> Response {
    let cache = Cache::open();
    let bad = |m: &str| {
        Response::builder()
            .status(400)
            .header("content-type", "application/json")
            .header("x-request-id", request_id)
            .body(json!({"error": {"message": m, "type": "invalid_request_error", "param": null, "code": null}}).to_string())
            .build()
    };
    let body: Value = match serde_json::from_slice(req.body()) {
        Ok(v) => v,
        Err(e) => return bad(&format!("request body is not valid JSON: {e}")),
    };
    // OpenAI's request as the Messages API sees it: system and developer
    // messages are the system prompt; max_tokens is optional.
    let mut as_messages = json!({"model": body["model"], "max_tokens": body["max_completion_tokens"].as_u64().or(body["max_tokens"].as_u64()).unwrap_or(4096)});
    let (system, turns): (Vec<&Value>, Vec<&Value>) = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .partition(|m| m["role"] == "system" || m["role"] == "developer")
        })
        .unwrap_or_default();
    if !system.is_empty() {
        let text = system
            .iter()
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        // OpenAI caches a prompt prefix of 1,024 tokens or more by itself; here
        // the system prompt is that prefix: read from the cache once seen.
        let cached = count_text(body["model"].as_str().unwrap_or(""), &text).tokens >= 1024;
        as_messages["system"] = if cached {
            json!([{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}])
        } else {
            json!(text)
        };
    }
    as_messages["messages"] = json!(turns);
    let prompt = match Prompt::parse(&as_messages, false) {
        Ok(p) => p,
        Err(m) => return bad(&m),
    };
    let (input, w5, w1, read) = prompt.usage(&cache);
    let (text, output_tokens, stop) = answer(&prompt);
    let id = format!("chatcmpl-sim-{}", &request_id[8..]);
    let finish = if stop == "end_turn" { "stop" } else { "length" };
    let usage = json!({"prompt_tokens": input + w5 + w1 + read, "completion_tokens": output_tokens, "total_tokens": input + w5 + w1 + read + output_tokens,
                       "prompt_tokens_details": {"cached_tokens": read}});
    if body["stream"].as_bool() == Some(true) {
        // As OpenAI streams: a role chunk, content chunks, the finish chunk,
        // the usage chunk (empty choices) only with stream_options.include_usage, then [DONE].
        let cut = setting(req, "fail").as_deref() == Some("cut-stream");
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_760_000_000, "model": prompt.model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        for c in words.chunks(4) {
            events.push(chunk(json!({"content": c.concat()}), Value::Null));
        }
        if cut {
            events.truncate(2);
        } else {
            events.push(chunk(json!({}), json!(finish)));
            if body["stream_options"]["include_usage"].as_bool() == Some(true) {
                events.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1_760_000_000, "model": prompt.model,
                                   "choices": [], "usage": usage}));
            }
        }
        let mut out: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        if !cut {
            out.push_str("data: [DONE]\n\n");
        }
        return Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("x-request-id", request_id)
            .body(out)
            .build();
    }
    let reply = json!({
        "id": id,
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": prompt.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage,
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .body(reply.to_string())
        .build()
}
