//! `tokens`: `POST /api/tokens/count` {model, text | messages, system?} →
//! {input_tokens, method, estimated_cost}.
//!
//! With an Anthropic key configured, Anthropic's `count_tokens` endpoint is
//! asked first (`method: "provider"`); when there is no key or it does not
//! answer, the local tokenizer counts: `"local-estimate"` for Claude (its
//! tokenizer is not public), `"local-exact"` for OpenAI BPE models. The
//! estimated cost is the input tokens at the input price in force now.

use billing_core::money::line_cost;
use billing_core::tokenizer::{count_text, CountMethod};
use billing_core::Nanos;
use billing_fn_common::input::json_body;
use billing_fn_common::prices::{model_by_name, price_in_force};
use billing_fn_common::{clock, json, respond, ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct Msg {
    role: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountRequest {
    model: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Msg>>,
    #[serde(default)]
    system: Option<String>,
}

/// Framing tokens per message and per request, as llm-sim counts them.
const PER_MESSAGE: u64 = 3;
const PER_REQUEST: u64 = 4;
/// Largest request body, in bytes: a prompt as long as a long-context
/// window (2 MiB is about 500,000 tokens of English), the host's own
/// default body limit; other endpoints keep the 256 KiB JSON limit.
const MAX_PROMPT_BYTES: usize = 2 << 20;

#[http_component]
async fn handle(req: Request) -> Response {
    respond(route(&req).await)
}

async fn route(req: &Request) -> ApiResult<Response> {
    if (req.method(), req.path()) != (&Method::Post, "/api/tokens/count") {
        return Err(ApiError::NotFound(format!(
            "no such endpoint: {} {}",
            req.method(),
            req.path()
        )));
    }
    let (db, _) = billing_fn_common::authenticated(req)?;
    let started = clock::monotonic_ms();
    let body: CountRequest = json_body(req, MAX_PROMPT_BYTES)?;
    let model = model_by_name(&db, &body.model)?
        .filter(|m| m.active)
        .ok_or_else(|| {
            ApiError::invalid("model", format!("`{}` is not an active model", body.model))
        })?;
    let messages = match (&body.text, &body.messages) {
        (Some(t), None) => vec![Msg {
            role: "user".into(),
            content: t.clone(),
        }],
        (None, Some(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ApiError::invalid(
                "body",
                "give either `text` or a non-empty `messages` list",
            ))
        }
    };
    if let Some(bad) = messages
        .iter()
        .position(|m| m.role != "user" && m.role != "assistant")
    {
        return Err(ApiError::invalid(
            format!("messages.{bad}.role"),
            "must be user or assistant",
        ));
    }

    let provider_count = if model.provider == "anthropic" {
        provider_count(&model.name, &messages, body.system.as_deref()).await
    } else {
        None
    };
    let (tokens, method) = match provider_count {
        Some(n) => (n, "provider"),
        None => {
            let mut n = PER_REQUEST + PER_MESSAGE * messages.len() as u64;
            let mut exact = true;
            for text in messages
                .iter()
                .map(|m| m.content.as_str())
                .chain(body.system.as_deref())
            {
                let c = count_text(&model.name, text);
                exact &= c.method == CountMethod::Exact;
                n += c.tokens;
            }
            (
                n,
                if exact {
                    "local-exact"
                } else {
                    "local-estimate"
                },
            )
        }
    };
    let price = price_in_force(&db, &model, clock::now())?;
    let cost = price
        .map(|p| line_cost(tokens, p.prices.input))
        .transpose()?
        .unwrap_or(Nanos::ZERO);
    Ok(json(
        200,
        &json!({
            "model": model.name,
            "input_tokens": tokens,
            "method": method,
            "estimated_cost": {"nanos": cost, "display": cost.display_usd()},
            "elapsed_ms": clock::monotonic_ms() - started,
        }),
    ))
}

/// Anthropic's count, when a key is configured and the endpoint answers.
async fn provider_count(model: &str, messages: &[Msg], system: Option<&str>) -> Option<u64> {
    let key = spin_sdk::variables::get("anthropic_api_key")
        .ok()
        .filter(|k| !k.is_empty())?;
    let base = spin_sdk::variables::get("anthropic_base_url")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "https://api.anthropic.com".into());
    let mut body = json!({ "model": model, "messages": messages });
    if let Some(s) = system {
        body["system"] = json!(s);
    }
    let req = Request::builder()
        .method(Method::Post)
        .uri(format!(
            "{}/v1/messages/count_tokens",
            base.trim_end_matches('/')
        ))
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .header(
            "anthropic-version",
            spin_sdk::variables::get("anthropic_version").unwrap_or_else(|_| "2023-06-01".into()),
        )
        .body(body.to_string())
        .build();
    let resp: Response = spin_sdk::http::send(req).await.ok()?;
    if *resp.status() != 200 {
        return None;
    }
    serde_json::from_slice::<Value>(resp.body()).ok()?["input_tokens"].as_u64()
}
