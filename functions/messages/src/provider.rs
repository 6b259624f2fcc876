//! Model providers over outbound HTTP: Anthropic's Messages API (also the
//! path to llm-sim) and OpenAI-compatible chat completions, with retries.
//!
//! Retried, with exponential backoff and jitter: 429 (after `retry-after`
//! when given), 529, 500-class answers and failures to connect. Never
//! retried: 400/401/403/404/413, a malformed answer, and a 429 saying the
//! spend limit was reached. What is left after the retries surfaces as 502
//! (provider error), 503 (overloaded, rate-limited, out of budget) or 504
//! (timed out), carrying the provider's request id.

use billing_core::Usage;
use billing_fn_common::ApiError;
use serde_json::{json, Value};
use spin_sdk::http::{IncomingResponse, Method, Request, Response};
use std::future::Future;

/// One turn of the conversation as the provider sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

pub struct Reply {
    pub text: String,
    pub usage: Usage,
    pub provider_message_id: Option<String>,
    pub stop_reason: Option<String>,
    pub attempts: u32,
}

pub struct Settings {
    pub base_url: String,
    pub api_key: String,
    pub version: String,
    pub max_tokens: u64,
    pub max_retries: u32,
    pub retry_base_ms: u64,
    /// Extra headers passed through (llm-sim's `x-sim-*` controls).
    pub passthrough: Vec<(String, String)>,
}

fn var(name: &str, default: &str) -> String {
    spin_sdk::variables::get(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Settings {
    /// Anthropic settings; with no key configured the same client talks to
    /// llm-sim on this app (`/sim`).
    pub fn anthropic(req: &Request) -> Self {
        let api_key = var("anthropic_api_key", "");
        let base_url = match (api_key.is_empty(), var("anthropic_base_url", "")) {
            (_, b) if !b.is_empty() => b,
            (true, _) => "/sim".into(),
            (false, _) => "https://api.anthropic.com".into(),
        };
        let sim = base_url.starts_with('/');
        let passthrough = if sim {
            req.headers()
                .filter(|(k, _)| k.starts_with("x-sim-"))
                .filter_map(|(k, v)| Some((k.to_owned(), v.as_str()?.to_owned())))
                .collect()
        } else {
            Vec::new()
        };
        Self::common(base_url, api_key, passthrough)
    }

    pub fn openai() -> Self {
        Self::common(
            var("openai_base_url", "https://api.openai.com"),
            var("openai_api_key", ""),
            Vec::new(),
        )
    }

    fn common(base_url: String, api_key: String, passthrough: Vec<(String, String)>) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            version: var("anthropic_version", "2023-06-01"),
            max_tokens: var("max_tokens", "1024").parse().unwrap_or(1024),
            max_retries: var("provider_max_retries", "3").parse().unwrap_or(3),
            retry_base_ms: var("provider_retry_base_ms", "250").parse().unwrap_or(250),
            passthrough,
        }
    }
}

enum Outcome<T> {
    Done(T),
    /// Worth another try, after at least this many ms.
    Retry {
        status: u16,
        detail: String,
        request_id: Option<String>,
        wait_ms: Option<u64>,
    },
    Fail(ApiError),
}

fn request_id(r: &Response) -> Option<String> {
    r.header("request-id")
        .or_else(|| r.header("x-request-id"))
        .and_then(|h| h.as_str())
        .map(str::to_owned)
}

fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

fn jitter_ms(max: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    if max == 0 {
        0
    } else {
        u64::from_le_bytes(b) % max
    }
}

/// Classifies an HTTP answer that is not a success.
fn classify<T>(status: u16, r: &Response) -> Outcome<T> {
    let rid = request_id(r);
    let msg = error_message(r.body());
    match status {
        429 if msg.to_ascii_lowercase().contains("spend limit") => {
            Outcome::Fail(ApiError::Upstream {
                status: 503,
                detail: format!("the model provider's spend limit is reached: {msg}"),
                request_id: rid,
            })
        }
        429 => {
            let wait = r
                .header("retry-after")
                .and_then(|h| h.as_str())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|s| s * 1000);
            Outcome::Retry {
                status: 503,
                detail: format!("the model provider is rate-limiting us: {msg}"),
                request_id: rid,
                wait_ms: wait,
            }
        }
        529 => Outcome::Retry {
            status: 503,
            detail: format!("the model provider is overloaded: {msg}"),
            request_id: rid,
            wait_ms: None,
        },
        503 => Outcome::Retry {
            status: 503,
            detail: format!("the model provider is unavailable: {msg}"),
            request_id: rid,
            wait_ms: None,
        },
        504 => Outcome::Retry {
            status: 504,
            detail: format!("the model provider timed out: {msg}"),
            request_id: rid,
            wait_ms: None,
        },
        s if s >= 500 => Outcome::Retry {
            status: 502,
            detail: format!("the model provider failed ({s}): {msg}"),
            request_id: rid,
            wait_ms: None,
        },
        s => Outcome::Fail(ApiError::Upstream {
            status: 502,
            detail: format!("the model provider refused the request ({s}): {msg}"),
            request_id: rid,
        }),
    }
}

/// Calls the provider, retrying what is worth retrying.
pub async fn call(
    settings: &Settings,
    build: impl Fn() -> Request,
    parse: impl Fn(&Response, u32) -> Result<Reply, ApiError>,
) -> Result<Reply, ApiError> {
    retrying(settings, |attempt| {
        let request = build();
        let parse = &parse;
        async move {
            match spin_sdk::http::send::<_, Response>(request).await {
                Err(e) => unreachable_provider(e),
                Ok(r) => match *r.status() {
                    200 => match parse(&r, attempt) {
                        Ok(reply) => Outcome::Done(reply),
                        Err(e) => Outcome::Fail(e),
                    },
                    s => classify(s, &r),
                },
            }
        }
    })
    .await
}

fn unreachable_provider<T>(e: impl std::fmt::Display) -> Outcome<T> {
    Outcome::Retry {
        status: 502,
        detail: format!("could not reach the model provider: {e}"),
        request_id: None,
        wait_ms: None,
    }
}

/// Runs `attempt` (given its number, from 1) until it is done, fails, or
/// the retries are spent, sleeping between tries as the module says.
async fn retrying<T, F, Fut>(settings: &Settings, attempt: F) -> Result<T, ApiError>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Outcome<T>>,
{
    let mut n = 0u32;
    loop {
        n += 1;
        match attempt(n).await {
            Outcome::Done(v) => return Ok(v),
            Outcome::Fail(e) => return Err(e),
            Outcome::Retry {
                status,
                detail,
                request_id,
                wait_ms,
            } => {
                if n > settings.max_retries {
                    return Err(ApiError::Upstream {
                        status,
                        detail: format!("{detail} (after {n} attempts)"),
                        request_id,
                    });
                }
                let backoff = settings.retry_base_ms.saturating_mul(1 << (n - 1).min(10));
                let wait = wait_ms
                    .unwrap_or(0)
                    .max(backoff / 2 + jitter_ms(backoff / 2 + 1))
                    .min(20_000);
                std::thread::sleep(std::time::Duration::from_millis(wait));
            }
        }
    }
}

fn messages_request(settings: &Settings, model: &str, turns: &[Turn], stream: bool) -> Request {
    let mut body = json!({ "model": model, "max_tokens": settings.max_tokens, "messages": turns });
    if stream {
        body["stream"] = json!(true);
    }
    let mut b = Request::builder();
    b.method(Method::Post)
        .uri(format!("{}/v1/messages", settings.base_url))
        .header("content-type", "application/json")
        .header("anthropic-version", settings.version.clone());
    if !settings.api_key.is_empty() {
        b.header("x-api-key", settings.api_key.clone());
    }
    for (k, v) in &settings.passthrough {
        b.header(k.clone(), v.clone());
    }
    b.body(body.to_string()).build()
}

/// Anthropic Messages API with `"stream": true`: the provider's answer once
/// it is 200 (its body is the event stream, read by the caller) and the
/// attempts it took. What fails before the stream begins is retried as
/// [`call`] retries it; nothing is retried once the stream has begun.
pub async fn anthropic_stream(
    settings: &Settings,
    model: &str,
    turns: &[Turn],
) -> Result<(IncomingResponse, u32), ApiError> {
    retrying(settings, |attempt| {
        let request = messages_request(settings, model, turns, true);
        async move {
            match spin_sdk::http::send::<_, IncomingResponse>(request).await {
                Err(e) => unreachable_provider(e),
                Ok(r) if r.status() == 200 => Outcome::Done((r, attempt)),
                Ok(r) => {
                    // Not a stream: the provider's error, read whole and classified.
                    let status = r.status();
                    let mut b = Response::builder();
                    b.status(status);
                    for (k, v) in r.headers().entries() {
                        if let Ok(v) = String::from_utf8(v) {
                            b.header(k, v);
                        }
                    }
                    let body = r.into_body().await.unwrap_or_default();
                    classify(status, &b.body(body).build())
                }
            }
        }
    })
    .await
}

/// Anthropic Messages API.
pub async fn anthropic(
    settings: &Settings,
    model: &str,
    turns: &[Turn],
) -> Result<Reply, ApiError> {
    let build = || messages_request(settings, model, turns, false);
    call(settings, build, |r, attempts| {
        let malformed = |what: &str| ApiError::Upstream {
            status: 502,
            detail: format!("the model provider sent a malformed answer: {what}"),
            request_id: request_id(r),
        };
        let v: Value = serde_json::from_slice(r.body()).map_err(|e| malformed(&e.to_string()))?;
        let usage = Usage::from_response_json(&v).map_err(|e| malformed(&e.to_string()))?;
        let text = v["content"]
            .as_array()
            .ok_or_else(|| malformed("no content"))?
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("");
        Ok(Reply {
            text,
            usage,
            provider_message_id: v["id"].as_str().map(str::to_owned),
            stop_reason: v["stop_reason"].as_str().map(str::to_owned),
            attempts,
        })
    })
    .await
}

/// OpenAI-compatible chat completions; its usage is mapped onto our classes:
/// `prompt_tokens` minus cached ones is input, `prompt_tokens_details.cached_tokens`
/// is a cache read, `completion_tokens` is output.
pub async fn openai(settings: &Settings, model: &str, turns: &[Turn]) -> Result<Reply, ApiError> {
    let body =
        json!({ "model": model, "max_tokens": settings.max_tokens, "messages": turns }).to_string();
    let url = format!("{}/v1/chat/completions", settings.base_url);
    let build = || {
        let mut b = Request::builder();
        b.method(Method::Post)
            .uri(url.clone())
            .header("content-type", "application/json");
        if !settings.api_key.is_empty() {
            b.header("authorization", format!("Bearer {}", settings.api_key));
        }
        b.body(body.clone()).build()
    };
    call(settings, build, |r, attempts| {
        let malformed = |what: &str| ApiError::Upstream {
            status: 502,
            detail: format!("the model provider sent a malformed answer: {what}"),
            request_id: request_id(r),
        };
        let v: Value = serde_json::from_slice(r.body()).map_err(|e| malformed(&e.to_string()))?;
        // billing-core reads OpenAI's shape (cached tokens inside the
        // prompt) and the response's service_tier.
        let usage = Usage::from_response_json(&v).map_err(|e| malformed(&e.to_string()))?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Reply {
            text,
            usage,
            provider_message_id: v["id"].as_str().map(str::to_owned),
            stop_reason: v
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            attempts,
        })
    })
    .await
}
