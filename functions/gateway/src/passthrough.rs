//! `POST /v1/chat/completions` for a model of an OpenAI-compatible
//! provider: passed through unchanged to `openai_base_url`
//! (`/v1/chat/completions`, with `openai_api_key` as the bearer token) and
//! billed from OpenAI's usage (`prompt_tokens` less
//! `prompt_tokens_details.cached_tokens` is input, the cached ones a cache
//! read, `completion_tokens` output: billing-core's reading of that shape).
//!
//! A stream is asked of the provider with `stream_options.include_usage`
//! (its usage comes only in that last chunk); a client that did not ask
//! for it does not get that chunk (an SDK iterating `choices[0]` would
//! break on its empty `choices`). The cost follows `[DONE]` as an SSE
//! comment. OpenAI reports no usage before a stream's end, so a stream
//! that breaks before its usage chunk cannot be priced: the call is kept
//! with `billing_error` for reconciliation, and the client's stream ends
//! in an error chunk (the SDKs raise it).

use crate::{fields, whole, Call, Failure, Refused, Whole};
use billing_core::sse::SseReader;
use billing_core::Usage;
use billing_fn_common::cache::Cache;
use billing_fn_common::Db;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use spin_sdk::http::{Method, OutgoingResponse, Request, ResponseOutparam};

fn var(name: &str, default: &str) -> String {
    spin_sdk::variables::get(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

pub(crate) async fn chat_completions(
    headers: &[(String, String)],
    mut request: Value,
    out: ResponseOutparam,
    db: &Db,
    cache: &Cache,
    mut call: Call<'_>,
) -> Result<(), Refused> {
    if !(request["stream_options"].is_null() || request["stream_options"].is_object()) {
        return Err((out, Failure::new(400, "stream_options: must be an object")));
    }
    let client_wants_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    if call.streamed {
        request["stream_options"]["include_usage"] = json!(true);
    }
    let base = var("openai_base_url", "https://api.openai.com");
    let base = base.trim_end_matches('/');
    let key = var("openai_api_key", "");
    let mut forward = Request::builder();
    forward
        .method(Method::Post)
        .uri(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json");
    if !key.is_empty() {
        forward.header("authorization", format!("Bearer {key}"));
    }
    if base.starts_with('/') {
        for (k, v) in headers.iter().filter(|(k, _)| k.starts_with("x-sim-")) {
            forward.header(k.as_str(), v.as_str());
        }
    }
    let response = match crate::send(forward.body(request.to_string()).build()).await {
        Ok(r) => r,
        Err(f) => return Err((out, f)),
    };
    let status = response.status();
    let mut passed = crate::passed_on(&response, &["content-type", "x-request-id", "retry-after"]);
    passed.push(("x-billing-call-id".into(), call.id.clone()));

    if status != 200 || !call.streamed {
        let bytes = response.into_body().await.unwrap_or_default();
        if status == 200 {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            match Usage::from_response_json(&v) {
                Ok(u) => match call.bill_with_retries(db, cache, &u, v["id"].as_str(), false) {
                    Ok(cost) => passed.push(("x-billing-cost-nanos".into(), cost.0.to_string())),
                    Err(e) => call.unbilled(db, &e.message, Some(&u)),
                },
                Err(e) => call.unbilled(db, &format!("the provider's usage: {e}"), None),
            }
        } else {
            call.status = status;
            let _ = call.record_refused(db);
        }
        whole(
            out,
            Whole {
                status,
                headers: passed,
                body: bytes,
            },
        )
        .await;
        return Ok(());
    }

    passed.retain(|(k, _)| k != "content-type");
    passed.push(("content-type".into(), "text/event-stream".into()));
    passed.push(("cache-control".into(), "no-cache".into()));
    let outgoing = OutgoingResponse::new(fields(&passed));
    let _ = outgoing.set_status_code(200);
    let mut sink = outgoing.take_body();
    out.set(outgoing);
    let mut client_open = true;
    let mut reader = SseReader::new();
    let mut body = response.take_body_stream();
    let (mut usage, mut done, mut error, mut broken) = (None, false, None::<Value>, false);
    let mut completion_id = None;
    loop {
        let (events, end) = match body.next().await {
            Some(Ok(chunk)) => (reader.feed(&chunk), false),
            Some(Err(_)) => {
                broken = true;
                (reader.finish().into_iter().collect(), true)
            }
            None => (reader.finish().into_iter().collect(), true),
        };
        let mut bytes = Vec::new();
        for e in events {
            if e.data == "[DONE]" {
                done = true;
            } else if let Ok(v) = serde_json::from_str::<Value>(&e.data) {
                if !v["error"].is_null() {
                    error = Some(v["error"].clone());
                }
                if completion_id.is_none() {
                    completion_id = v["id"].as_str().map(str::to_owned);
                }
                if !v["usage"].is_null() {
                    match Usage::from_response_json(&v) {
                        Ok(u) => usage = Some(u),
                        Err(err) => eprintln!(
                            "gateway call {}: the usage chunk is invalid: {err}",
                            call.id
                        ),
                    }
                    let only_usage = v["choices"].as_array().is_none_or(|c| c.is_empty());
                    if only_usage && !client_wants_usage {
                        continue;
                    }
                }
            }
            bytes.extend(e.to_frame().into_bytes());
        }
        if client_open && !bytes.is_empty() && sink.send(bytes).await.is_err() {
            // The client went away; the provider goes on and charges: read on to bill it.
            client_open = false;
        }
        if end {
            break;
        }
    }
    let complete = done && error.is_none() && !broken;
    if client_open && !complete && error.is_none() {
        let why = if broken {
            "the connection to the model provider broke mid-answer"
        } else {
            "the model provider's stream ended before [DONE]"
        };
        let chunk = crate::openai::error_body("api_error", why);
        let _ = sink.send(format!("data: {chunk}\n\n").into_bytes()).await;
    }
    match usage {
        Some(u) => {
            match call.bill_with_retries(db, cache, &u, completion_id.as_deref(), !complete) {
                Ok(cost) => {
                    if client_open {
                        let comment =
                            format!(": x-billing-cost-nanos={} x-billing-call-id={}\n\n", cost.0, call.id);
                        let _ = sink.send(comment.into_bytes()).await;
                    }
                }
                Err(e) => call.unbilled(db, &e.message, Some(&u)),
            }
        }
        None => call.unbilled(
            db,
            "the stream ended before its usage chunk, so it cannot be priced; the provider may charge for it",
            None,
        ),
    }
    let _ = sink.close().await;
    Ok(())
}
