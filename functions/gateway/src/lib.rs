//! `gateway`: the Anthropic Messages API, metered as it passes.
//!
//! A team points the official SDK at us (`base_url` = this app, `api_key` =
//! one of our API keys) and every call is billed:
//!
//! - `POST /v1/messages`, same request and response bodies as Anthropic's.
//!   Our key as `x-api-key` or `Authorization: Bearer`; `anthropic-version`
//!   and `anthropic-beta` are passed on. Forwarded to Anthropic when
//!   `anthropic_api_key` is set, else to llm-sim (`anthropic_base_url`
//!   overrides both). The model must be one we price (an alias resolves);
//!   otherwise 400 `invalid_request_error` before any provider call.
//! - Plain answers come back unchanged with `x-billing-cost-nanos` (what the
//!   call costs, nano-USD) and `x-billing-call-id`. With `"stream": true`
//!   the provider's server-sent events pass through as they arrive; usage
//!   is read from `message_start` and each `message_delta` (the cumulative
//!   usage: the last value of each field wins, so input, cache and
//!   server-tool counts may arrive late), and the cost follows the last
//!   event as an SSE comment, `: x-billing-cost-nanos=N`, which SDKs ignore.
//! - A provider error comes back with the provider's status and body; it is
//!   recorded and billed nothing. A stream cut after `message_start` is
//!   billed for what the provider reported until then, marked partial.
//! - Metered exactly once: the call's `gateway_calls` row and its
//!   `llm-billing.inference` event (source `/functions/gateway`, id = the
//!   call id) are one SQLite transaction, priced at the answer's time by
//!   billing-core's price function plus the `inference_request` resource
//!   price, as the bridge bills every inference call. The user billed is
//!   the key's owner.
//!
//! - `POST /v1/messages/count_tokens`: the provider's count, passed through
//!   (not billed: Anthropic does not charge for it).
//! - `GET /v1/models`: the models this gateway bills (active, with a price
//!   in force), in a list both SDKs read (Anthropic's and OpenAI's fields).
//! - `x-billing-user: <user id>` on an admin's (service) key bills that
//!   user; on a user's key it is 403 `permission_error`.
//!
//! - `POST /v1/chat/completions`: OpenAI's Chat Completions, plain and
//!   streamed, billed the same way: for Anthropic models translated to and
//!   from the Messages API ([`openai`]); for models of an OpenAI-compatible
//!   provider passed through to it ([`passthrough`]).
//!
//! Errors of our own use Anthropic's shape, `{"type": "error", "error":
//! {"type", "message"}}` (OpenAI's, `{"error": {"message", "type"}}`, on
//! `/v1/chat/completions`), so the SDKs raise their usual exceptions.

use billing_core::events::{gateway_call_event, EventData, InferenceEvent, GATEWAY_SOURCE};
use billing_core::pricing::{inference_call_cost, inference_resources};
use billing_core::sse::MessageStream;
use billing_core::{ModelName, Nanos, Usage};
use billing_fn_common::cache::Cache;
use billing_fn_common::db::{int, opt_text, text};
use billing_fn_common::prices::{self, Model};
use billing_fn_common::{auth, clock, ApiError, Caller, Db};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use spin_sdk::http::{
    Fields, IncomingRequest, IncomingResponse, Method, OutgoingResponse, Request, ResponseOutparam,
};
use spin_sdk::http_component;

mod openai;
mod passthrough;

/// Which API shape a call speaks: the Messages API as is, or OpenAI's Chat
/// Completions translated to and from it ([`openai`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Anthropic,
    OpenAi,
}

const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
const DEFAULT_VERSION: &str = "2023-06-01";
/// A stream still going this long after the call was sent (ms) is recorded
/// open at its next chunk (migration 0013). Shorter streams are billed
/// before this would pay off: the write would only add to every call's
/// latency, for a window (process killed within the first quarter second)
/// no wider than a plain call's.
const OPEN_AFTER_MS: u64 = 250;

fn var(name: &str) -> String {
    spin_sdk::variables::get(name).unwrap_or_default()
}

/// An error in Anthropic's shape, with its status.
#[derive(Debug)]
struct Failure {
    status: u16,
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        let kind = match status {
            400 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        Self {
            status: if status == 422 { 400 } else { status },
            kind,
            message: message.into(),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::new(e.status(), e.detail())
    }
}

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let method = req.method();
    let path = req.path_with_query().unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .entries()
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), String::from_utf8(v).ok()?)))
        .collect();
    let body = match req.into_body().await {
        Ok(b) => b,
        Err(e) => {
            return whole(
                out,
                error_response(
                    &Failure::new(400, format!("the body could not be read: {e}")),
                    Dialect::Anthropic,
                ),
            )
            .await
        }
    };
    let result = match (method, path.split('?').next().unwrap_or("")) {
        (Method::Post, "/v1/messages") => messages(&headers, body, out, Dialect::Anthropic).await,
        (Method::Post, "/v1/chat/completions") => {
            messages(&headers, body, out, Dialect::OpenAi).await
        }
        (Method::Post, "/v1/messages/count_tokens") => count_tokens(&headers, body, out).await,
        (Method::Get, "/v1/models") => models(&headers, out).await,
        (_, "/v1/messages") => Err((out, Failure::new(405, "send messages with POST"))),
        (_, p) => Err((out, Failure::new(404, format!("no such endpoint: {p}")))),
    };
    if let Err((out, failure)) = result {
        let dialect = if path.starts_with("/v1/chat/") {
            Dialect::OpenAi
        } else {
            Dialect::Anthropic
        };
        whole(out, error_response(&failure, dialect)).await;
    }
}

/// A whole response: status, headers and body.
struct Whole {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn error_response(f: &Failure, dialect: Dialect) -> Whole {
    let body = match dialect {
        Dialect::Anthropic => {
            json!({"type": "error", "error": {"type": f.kind, "message": f.message}})
        }
        Dialect::OpenAi => openai::error_body(f.kind, &f.message),
    };
    Whole {
        status: f.status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn fields(headers: &[(String, String)]) -> Fields {
    let list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    Fields::from_list(&list).unwrap_or_else(|_| Fields::new())
}

async fn whole(out: ResponseOutparam, w: Whole) {
    let response = OutgoingResponse::new(fields(&w.headers));
    let _ = response.set_status_code(w.status);
    let mut body = response.take_body();
    out.set(response);
    let _ = body.send(w.body).await;
    let _ = body.close().await;
}

type Refused = (ResponseOutparam, Failure);

/// The value of header `name` (names are lower-case).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The caller from `x-api-key` or `Authorization: Bearer`.
fn caller(headers: &[(String, String)], db: &Db) -> Result<Caller, Failure> {
    let authorization = match (
        header(headers, "x-api-key"),
        header(headers, "authorization"),
    ) {
        (Some(k), _) => format!("Bearer {}", k.trim()),
        (None, Some(a)) => a.to_owned(),
        (None, None) => {
            return Err(Failure::new(
                401,
                "send one of your API keys as x-api-key (or Authorization: Bearer)",
            ))
        }
    };
    let probe = Request::builder()
        .method(Method::Post)
        .uri("/v1/messages")
        .header("authorization", authorization)
        .build();
    Ok(auth::authenticate(&probe, db)?)
}

/// The user a call is billed to: the key's owner, or the user an admin's
/// (service) key names in `x-billing-user`; a user's key may not name one.
fn billed_user(headers: &[(String, String)], caller: &Caller, db: &Db) -> Result<i64, Failure> {
    let Some(named) = header(headers, "x-billing-user") else {
        return Ok(caller.user_id);
    };
    if !caller.is_admin() {
        return Err(Failure::new(
            403,
            "x-billing-user: only an admin's (service) key may bill another user",
        ));
    }
    let id: i64 = named
        .trim()
        .parse()
        .map_err(|_| Failure::new(400, format!("x-billing-user: `{named}` is not a user id")))?;
    match db.scalar_i64(
        "SELECT user_id FROM dim_users WHERE user_id = ?1",
        &[int(id)],
    )? {
        Some(id) => Ok(id),
        None => Err(Failure::new(
            400,
            format!("x-billing-user: there is no user {id}"),
        )),
    }
}

/// `POST /v1/messages/count_tokens`: the provider's count, passed through
/// (Anthropic does not charge for it; nothing is billed).
async fn count_tokens(
    headers: &[(String, String)],
    body: Vec<u8>,
    out: ResponseOutparam,
) -> Result<(), Refused> {
    let db = match Db::open() {
        Ok(db) => db,
        Err(e) => return Err((out, e.into())),
    };
    if let Err(f) = caller(headers, &db) {
        return Err((out, f));
    }
    let response = match send(to_provider(headers, "/v1/messages/count_tokens", body)).await {
        Ok(r) => r,
        Err(f) => return Err((out, f)),
    };
    let status = response.status();
    let bytes = response.into_body().await.unwrap_or_default();
    whole(
        out,
        Whole {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: bytes,
        },
    )
    .await;
    Ok(())
}

/// `GET /v1/models`: the models this gateway bills (active, with a price
/// in force), in Anthropic's list shape.
async fn models(headers: &[(String, String)], out: ResponseOutparam) -> Result<(), Refused> {
    let listed = (|| -> Result<Value, Failure> {
        let db = Db::open()?;
        caller(headers, &db)?;
        let now = clock::now().to_rfc3339();
        let r = db.query(
            "SELECT model_name, display_name, coalesce(released_at, created_at) AS created_at FROM dim_models m
             WHERE is_active = 1 AND EXISTS (SELECT 1 FROM dim_token_pricing t WHERE t.model_id = m.model_id AND t.effective_from <= ?1)
             ORDER BY released_at DESC, model_name",
            &[text(now)],
        )?;
        // Each item carries both vendors' fields (Anthropic's type,
        // display_name, created_at; OpenAI's object, created, owned_by), so
        // `models.list()` reads in either official SDK.
        let data: Vec<Value> = r
            .rows()
            .map(|row| {
                let created_at = row.get::<&str>("created_at").unwrap_or_default();
                let created = billing_core::Timestamp::parse(created_at)
                    .map(|t| t.millis() / 1000)
                    .unwrap_or(0);
                json!({"type": "model", "id": row.get::<&str>("model_name"), "display_name": row.get::<&str>("display_name"),
                       "created_at": created_at, "object": "model", "created": created, "owned_by": "llm-billing"})
            })
            .collect();
        Ok(
            json!({"object": "list", "data": data, "has_more": false, "first_id": data.first().map(|m| m["id"].clone()), "last_id": data.last().map(|m| m["id"].clone())}),
        )
    })();
    match listed {
        Ok(v) => {
            whole(
                out,
                Whole {
                    status: 200,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: v.to_string().into_bytes(),
                },
            )
            .await;
            Ok(())
        }
        Err(f) => Err((out, f)),
    }
}

/// Where calls go and with which key: Anthropic with a key, else llm-sim.
fn provider() -> (String, String) {
    let key = var("anthropic_api_key");
    let base = match (key.is_empty(), var("anthropic_base_url")) {
        (_, b) if !b.is_empty() => b,
        (true, _) => "/sim".into(),
        (false, _) => "https://api.anthropic.com".into(),
    };
    (base.trim_end_matches('/').to_owned(), key)
}

/// The client's request for the provider's `path`: its body unchanged, the
/// provider's key instead of ours, `anthropic-version` and
/// `anthropic-beta` passed on (and llm-sim's `x-sim-*` test knobs).
fn to_provider(headers: &[(String, String)], path: &str, body: Vec<u8>) -> Request {
    let (base, key) = provider();
    let mut forward = Request::builder();
    forward
        .method(Method::Post)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header(
            "anthropic-version",
            header(headers, "anthropic-version").unwrap_or(DEFAULT_VERSION),
        );
    if let Some(beta) = header(headers, "anthropic-beta") {
        forward.header("anthropic-beta", beta);
    }
    if !key.is_empty() {
        forward.header("x-api-key", key);
    }
    if base.starts_with('/') {
        for (k, v) in headers.iter().filter(|(k, _)| k.starts_with("x-sim-")) {
            forward.header(k.as_str(), v.as_str());
        }
    }
    forward.body(body).build()
}

/// The provider's response headers a tenant gets (`names`, lower-case);
/// the rest (its rate limits, say) stay here.
fn passed_on(response: &IncomingResponse, names: &[&str]) -> Vec<(String, String)> {
    response
        .headers()
        .entries()
        .into_iter()
        .filter_map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            names
                .contains(&k.as_str())
                .then(|| Some((k, String::from_utf8(v).ok()?)))
                .flatten()
        })
        .collect()
}

/// Sends a request to the provider; its response streams.
async fn send(request: Request) -> Result<IncomingResponse, Failure> {
    spin_sdk::http::send(request)
        .await
        .map_err(|e| Failure::new(502, format!("the model provider could not be reached: {e}")))
}

fn call_id() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    format!("gw_{}", hex::encode(b))
}

async fn messages(
    headers: &[(String, String)],
    body: Vec<u8>,
    out: ResponseOutparam,
    dialect: Dialect,
) -> Result<(), Refused> {
    macro_rules! refuse {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(f) => return Err((out, f.into())),
            }
        };
    }
    if body.len() > MAX_BODY_BYTES {
        return Err((
            out,
            Failure::new(413, format!("the body is over {MAX_BODY_BYTES} bytes")),
        ));
    }
    let db = refuse!(Db::open());
    let caller = refuse!(caller(headers, &db));
    let billed_user = refuse!(billed_user(headers, &caller, &db));
    let request: Value = refuse!(serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}"))));
    let requested = request["model"].as_str().unwrap_or_default().to_owned();
    let streamed = request["stream"].as_bool() == Some(true);
    let cache = Cache::open();
    let model = refuse!(prices::model_by_name_cached(&db, &cache, &requested)).filter(|m| m.active);
    let Some(model) = model else {
        return Err((
            out,
            // As the providers answer an unknown model: 404 (the SDKs' NotFoundError).
            Failure::new(
                404,
                format!("model: `{requested}` is not a model this gateway bills"),
            ),
        ));
    };
    let now = clock::now();
    if refuse!(prices::price_in_force_cached(&db, &cache, &model, now)).is_none() {
        return Err((
            out,
            Failure::new(
                400,
                format!("model: `{}` has no price in force now", model.name),
            ),
        ));
    }
    match (model.provider.as_str(), dialect) {
        ("anthropic", _) => {}
        ("openai-compatible", Dialect::OpenAi) => {
            let call = Call {
                id: call_id(),
                user_id: billed_user,
                key_id: caller.key_id,
                model: &model,
                requested: &requested,
                streamed,
                status: 200,
                t0: clock::monotonic_ms(),
            };
            return passthrough::chat_completions(headers, request, out, &db, &cache, call).await;
        }
        _ => {
            return Err((
                out,
                Failure::new(400, format!("model: `{}` is served by an OpenAI-compatible provider; call it through /v1/chat/completions", model.name)),
            ))
        }
    }

    let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    let body = match dialect {
        Dialect::Anthropic => body,
        Dialect::OpenAi => refuse!(openai::to_messages_request(
            &request,
            model.max_output_tokens
        ))
        .to_string()
        .into_bytes(),
    };
    let created = now.millis() / 1000;
    let forward = to_provider(headers, "/v1/messages", body);
    let id = call_id();
    let t0 = clock::monotonic_ms();
    let response = match send(forward).await {
        Ok(r) => r,
        Err(f) => return Err((out, f)),
    };
    let status = response.status();
    let mut provider_headers = passed_on(&response, &["content-type", "request-id", "retry-after"]);
    if dialect == Dialect::OpenAi {
        // The openai SDKs read the request id from x-request-id.
        if let Some(rid) = provider_headers
            .iter()
            .find(|(k, _)| k == "request-id")
            .map(|(_, v)| v.clone())
        {
            provider_headers.push(("x-request-id".into(), rid));
        }
    }
    let mut call = Call {
        id: id.clone(),
        user_id: billed_user,
        key_id: caller.key_id,
        model: &model,
        requested: &requested,
        streamed,
        status,
        t0,
    };

    if status != 200 || !streamed {
        let mut bytes = response.into_body().await.unwrap_or_default();
        let mut headers = provider_headers;
        headers.push(("x-billing-call-id".into(), id.clone()));
        if status == 200 {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if dialect == Dialect::OpenAi {
                bytes = openai::to_completion(&v, created).to_string().into_bytes();
            }
            let usage = Usage::from_response_json(&v)
                .map_err(|e| Failure::new(502, format!("the provider's usage: {e}")));
            match &usage {
                Ok(u) => match call.bill_with_retries(&db, &cache, u, v["id"].as_str(), false) {
                    Ok(cost) => headers.push(("x-billing-cost-nanos".into(), cost.0.to_string())),
                    Err(e) => call.unbilled(&db, &e.message, Some(u)),
                },
                Err(e) => call.unbilled(&db, &e.message, None),
            }
        } else {
            call.status = status;
            let _ = call.record_refused(&db);
            if dialect == Dialect::OpenAi {
                // The provider's error, in OpenAI's shape.
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let message = v["error"]["message"]
                    .as_str()
                    .unwrap_or("the model provider refused the request");
                bytes =
                    openai::error_body(v["error"]["type"].as_str().unwrap_or("api_error"), message)
                        .to_string()
                        .into_bytes();
                headers.retain(|(k, _)| k != "content-type");
                headers.push(("content-type".into(), "application/json".into()));
            }
        }
        whole(
            out,
            Whole {
                status,
                headers,
                body: bytes,
            },
        )
        .await;
        return Ok(());
    }

    // Streamed: pass every chunk on as it arrives, reading usage on the way.
    let mut headers = provider_headers;
    headers.retain(|(k, _)| k != "content-type");
    headers.push(("content-type".into(), "text/event-stream".into()));
    headers.push(("cache-control".into(), "no-cache".into()));
    headers.push(("x-billing-call-id".into(), id.clone()));
    let outgoing = OutgoingResponse::new(fields(&headers));
    let _ = outgoing.set_status_code(200);
    let mut sink = outgoing.take_body();
    out.set(outgoing);
    let mut reader = MessageStream::new();
    let mut client_open = true;
    let mut chunks = response.take_body_stream();
    let mut translate = openai::Chunks {
        id: format!("chatcmpl-{id}"),
        model: json!(requested),
        created,
        include_usage,
    };
    let mut broken = false;
    let mut opened = false;
    loop {
        let (events, raw) = match chunks.next().await {
            Some(Ok(chunk)) => (reader.feed(&chunk), chunk),
            Some(Err(_)) => {
                broken = true;
                (reader.finish(), Vec::new())
            }
            None => (reader.finish(), Vec::new()),
        };
        let end = raw.is_empty();
        let out_bytes = match dialect {
            Dialect::Anthropic => raw,
            Dialect::OpenAi => translate.events(&events),
        };
        if client_open && !out_bytes.is_empty() && sink.send(out_bytes).await.is_err() {
            // The client went away; the provider goes on and charges: keep reading to bill it.
            client_open = false;
        }
        if reader.started && !opened && !end && clock::monotonic_ms() - call.t0 >= OPEN_AFTER_MS {
            // A stream still going: recorded open, so it is billed even if this instance ends first.
            opened = true;
            if let Ok(u) = reader.usage.clone().finish() {
                call.open(&db, &u);
            }
        }
        if end {
            break;
        }
    }
    // A stream that failed (an `error` event, or the connection to the
    // provider broke) ends in an error the SDKs raise, never as if complete.
    let failure = reader.error.clone().or_else(|| {
        let why = if broken {
            "the connection to the model provider broke mid-answer"
        } else if reader.started && !reader.stopped {
            "the model provider's stream ended before message_stop"
        } else {
            return None;
        };
        Some(json!({"type": "api_error", "message": why}))
    });
    if client_open {
        let tail = match (&failure, dialect) {
            (Some(e), Dialect::OpenAi) => format!(
                "data: {}\n\n",
                openai::error_body(
                    e["type"].as_str().unwrap_or("api_error"),
                    e["message"].as_str().unwrap_or("")
                )
            )
            .into_bytes(),
            (Some(e), Dialect::Anthropic) if reader.error.is_none() => format!(
                "event: error\ndata: {}\n\n",
                json!({"type": "error", "error": e})
            )
            .into_bytes(),
            (Some(_), Dialect::Anthropic) => Vec::new(), // the provider's own error event was passed on
            (None, Dialect::OpenAi) => {
                translate.finish(&reader.usage.clone().finish().unwrap_or_default())
            }
            (None, Dialect::Anthropic) => Vec::new(),
        };
        if !tail.is_empty() {
            let _ = sink.send(tail).await;
        }
    }
    if let Some(e) = &reader.usage_error {
        eprintln!("gateway: call {id}: a stream event's usage is invalid: {e}");
    }
    if reader.started {
        let partial = !reader.stopped || failure.is_some();
        let usage = reader
            .usage
            .clone()
            .finish()
            .map_err(|e| Failure::new(502, format!("the provider's usage: {e}")));
        let billed = match &usage {
            Ok(u) => call
                .bill_with_retries(&db, &cache, u, reader.message_id.as_deref(), partial)
                .map_err(|e| (e, Some(u))),
            Err(e) => Err((Failure::new(e.status, e.message.clone()), None)),
        };
        match billed {
            Ok(cost) => {
                if client_open {
                    let _ = sink
                        .send(
                            format!(
                                ": x-billing-cost-nanos={} x-billing-call-id={id}\n\n",
                                cost.0
                            )
                            .into_bytes(),
                        )
                        .await;
                }
            }
            Err((e, u)) => call.unbilled(&db, &e.message, u),
        }
    } else {
        call.status = 502;
        let _ = call.record_refused(&db);
    }
    let _ = sink.close().await;
    Ok(())
}

/// One call through the gateway, for its record.
struct Call<'a> {
    id: String,
    /// Who is billed: the key's owner, or the user an admin's key named.
    user_id: i64,
    /// The API key used.
    key_id: Option<i64>,
    model: &'a Model,
    requested: &'a str,
    streamed: bool,
    status: u16,
    t0: u64,
}

impl Call<'_> {
    fn key(&self) -> billing_fn_common::db::Value {
        self.key_id
            .map(int)
            .unwrap_or(billing_fn_common::db::Value::Null)
    }

    fn latency_ms(&self) -> i64 {
        clock::monotonic_ms().saturating_sub(self.t0) as i64
    }

    /// A call the provider refused (or that never started): recorded, billed nothing.
    fn record_refused(&self, db: &Db) -> Result<(), Failure> {
        db.exec(
            "INSERT INTO gateway_calls (call_id, user_id, model_id, requested_model, http_status, streamed, latency_ms, occurred_at, key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            &[text(self.id.clone()), int(self.user_id), int(self.model.model_id), text(self.requested), int(self.status as i64),
              int(self.streamed as i64), int(self.latency_ms()), text(clock::now().to_rfc3339()), self.key()],
        )?;
        Ok(())
    }

    /// [`Call::bill`], tried again (a busy database) before giving up: the
    /// provider has answered and charged.
    fn bill_with_retries(
        &self,
        db: &Db,
        cache: &Cache,
        usage: &Usage,
        provider_message_id: Option<&str>,
        partial: bool,
    ) -> Result<Nanos, Failure> {
        let mut last = None;
        for wait_ms in [0, 50, 200, 1000] {
            std::thread::sleep(std::time::Duration::from_millis(wait_ms));
            match self.bill(db, cache, usage, provider_message_id, partial) {
                Ok(cost) => return Ok(cost),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    /// A call the provider answered but that could not be billed: kept with
    /// why (`billing_error`), for an admin to reconcile, and loud in the
    /// logs. With its usage known, it is kept open (`open_usage`): the
    /// bridge bills it later (migration 0013).
    fn unbilled(&self, db: &Db, why: &str, usage: Option<&Usage>) {
        eprintln!("gateway call {}: answered but not billed: {why}", self.id);
        let open = usage.and_then(|u| serde_json::to_string(u).ok());
        let _ = db.exec(
            "INSERT INTO gateway_calls (call_id, user_id, model_id, requested_model, http_status, streamed, latency_ms, occurred_at, key_id, billing_error, open_usage)
             VALUES (?1, ?2, ?3, ?4, 200, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (call_id) DO UPDATE SET billing_error = excluded.billing_error, open_usage = coalesce(excluded.open_usage, open_usage)
             WHERE gateway_calls.open_usage IS NOT NULL",
            &[text(self.id.clone()), int(self.user_id), int(self.model.model_id), text(self.requested), int(self.streamed as i64),
              int(self.latency_ms()), text(clock::now().to_rfc3339()), self.key(), text(why), opt_text(open)],
        );
    }

    /// A stream the provider accepted (its `message_start` came): the call
    /// recorded open with the usage reported so far, so that it is billed
    /// even if this instance ends before the stream does (migration 0013).
    fn open(&self, db: &Db, usage: &Usage) {
        let classes = usage.by_class();
        let recorded = serde_json::to_string(usage).map_err(|e| e.to_string()).and_then(|open| {
            db.exec(
                "INSERT INTO gateway_calls (call_id, user_id, model_id, requested_model, http_status, streamed, partial, latency_ms,
                     input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, web_search_requests, occurred_at, key_id, open_usage)
                 VALUES (?1, ?2, ?3, ?4, 200, 1, 1, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                &[
                    text(self.id.clone()), int(self.user_id), int(self.model.model_id), text(self.requested), int(self.latency_ms()),
                    int(classes[0].1 as i64), int(classes[1].1 as i64), int(classes[2].1 as i64), int(classes[3].1 as i64), int(classes[4].1 as i64),
                    int(usage.server_tool_use.web_search_requests as i64), text(clock::now().to_rfc3339()), self.key(), text(open),
                ],
            )
            .map_err(|e| e.detail())
        });
        if let Err(e) = recorded {
            eprintln!(
                "gateway call {}: could not record the open stream: {e}",
                self.id
            );
        }
    }

    /// Prices the answer's usage at the answer's time and writes the call's
    /// row and its billing event in one transaction; returns the cost.
    fn bill(
        &self,
        db: &Db,
        cache: &Cache,
        usage: &Usage,
        provider_message_id: Option<&str>,
        partial: bool,
    ) -> Result<Nanos, Failure> {
        let usage = usage.clone();
        let now = clock::now();
        let latency_ms = self.latency_ms();
        let quote = prices::quote_at(db, cache, self.model, &usage, now)?.ok_or_else(|| {
            Failure::new(
                500,
                format!("`{}` has no price in force at {now}", self.model.name),
            )
        })?;
        // Priced as the bridge bills every inference call: the quote plus
        // its resources (compute time is the provider's here: 0 ms).
        let mut versions = Vec::new();
        for (resource, quantity) in inference_resources(0) {
            versions.push((
                prices::resource_price_in_force(db, resource, now)?,
                quantity,
            ));
        }
        let (_, cost) =
            inference_call_cost(&quote, &versions).map_err(|e| Failure::new(500, e.to_string()))?;
        let model =
            ModelName::parse(&self.model.name).map_err(|e| Failure::new(500, e.to_string()))?;
        let event = gateway_call_event(
            &self.id,
            now,
            self.user_id,
            model,
            provider_message_id,
            partial,
            latency_ms as u64,
            usage.clone(),
        );
        let classes = usage.by_class();
        let web_searches = usage.server_tool_use.web_search_requests;
        let billed = db.transaction(|db| {
            // A row still open (this stream's, or this call's failed write) is
            // completed; one the bridge already billed is left as it is.
            let written = db.scalar_i64(
                "INSERT INTO gateway_calls (call_id, user_id, model_id, requested_model, provider_message_id, http_status, streamed, partial, latency_ms,
                     input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, web_search_requests, cost_nanos, occurred_at, key_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, 200, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
                 ON CONFLICT (call_id) DO UPDATE SET provider_message_id = excluded.provider_message_id, partial = excluded.partial,
                     latency_ms = excluded.latency_ms, input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
                     cache_write_5m_tokens = excluded.cache_write_5m_tokens, cache_write_1h_tokens = excluded.cache_write_1h_tokens,
                     cache_read_tokens = excluded.cache_read_tokens, web_search_requests = excluded.web_search_requests,
                     cost_nanos = excluded.cost_nanos, occurred_at = excluded.occurred_at, billing_error = NULL, open_usage = NULL
                 WHERE gateway_calls.open_usage IS NOT NULL
                 RETURNING 1",
                &[
                    text(self.id.clone()), int(self.user_id), int(self.model.model_id), text(self.requested),
                    opt_text(provider_message_id.map(str::to_owned)), int(self.streamed as i64), int(partial as i64), int(latency_ms),
                    int(classes[0].1 as i64), int(classes[1].1 as i64), int(classes[2].1 as i64), int(classes[3].1 as i64), int(classes[4].1 as i64),
                    int(web_searches as i64), int(cost.0), text(now.to_rfc3339()), self.key(),
                ],
            )?;
            if written.is_none() {
                // Billed by the bridge meanwhile: what it billed stands.
                return Ok(Nanos(db.scalar_i64("SELECT cost_nanos FROM gateway_calls WHERE call_id = ?1", &[text(self.id.clone())])?.unwrap_or(0)));
            }
            db.exec(
                "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[text(InferenceEvent::TOPIC), text(event.key()), text(GATEWAY_SOURCE), text(self.id.clone()), text(event.to_json())],
            )?;
            Ok(cost)
        })?;
        cache.publish("billing:outbox", b"gateway");
        Ok(billed)
    }
}
