//! A chat turn streamed: `POST /api/threads/{id}/messages` with
//! `"stream": true` answers `200 text/event-stream` as the model writes.
//!
//! Events (`event:` name, `data:` JSON):
//! - `message_start` `{thread_id, model}`: the provider accepted the turn;
//! - `text_delta` `{text}`: the next piece of the answer, in order;
//! - `message_stop`: the turn stored and billed: the same body a plain send
//!   answers with 201 (message, usage, cost in nano-USD, event ids);
//! - `error`: an RFC 9457 problem (`status`, `detail`). When the stream
//!   broke after the provider accepted the turn, the provider charges for
//!   it: the problem's `turn` member is the stored, billed turn (both
//!   messages `failed`, the partial answer kept), priced as `message_stop`
//!   would be.
//!
//! Whatever fails before the provider's stream begins (validation, the
//! provider refusing or away after the retries) is an ordinary problem
//! response with its status, as without `stream`. A client that goes away
//! mid-answer does not stop the billing: the stream is read to its end and
//! stored. Models of an OpenAI-compatible provider answer whole (one
//! `text_delta`); a replayed Idempotency-Key answers its stored turn as one
//! `text_delta` and its `message_stop`.

use crate::provider::{self, Reply};
use crate::send::PreparedTurn;
use billing_core::sse::MessageStream;
use billing_fn_common::{clock, respond, ApiError, Db};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use spin_sdk::http::{Fields, OutgoingResponse, Response, ResponseOutparam};

/// A prepared turn to be answered as a stream.
pub struct StreamTurn {
    db: Db,
    turn: PreparedTurn,
}

fn sse(event: &str, data: &Value) -> Vec<u8> {
    format!("event: {event}\ndata: {data}\n\n").into_bytes()
}

/// A stored answer (a replayed Idempotency-Key) as the stream it stood for.
pub fn replayed(stored: Response) -> Response {
    let body: Value = serde_json::from_slice(stored.body()).unwrap_or(Value::Null);
    let mut out = sse(
        "message_start",
        &json!({"thread_id": body["thread_id"], "model": body["message"]["model"]}),
    );
    out.extend(sse(
        "text_delta",
        &json!({"text": body["message"]["content"]}),
    ));
    out.extend(sse("message_stop", &body));
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("idempotent-replayed", "true")
        .body(out)
        .build()
}

/// Writes a whole response (the plain path and every refusal).
pub async fn write_whole(out: ResponseOutparam, mut response: Response) {
    let body = std::mem::take(response.body_mut());
    match OutgoingResponse::try_from(response) {
        Ok(r) => {
            if let Err(e) = out.set_with_body(r, body).await {
                eprintln!("messages: could not write the response: {e}");
            }
        }
        Err(e) => eprintln!("messages: could not build the response: {e}"),
    }
}

impl StreamTurn {
    pub fn new(db: Db, turn: PreparedTurn) -> Self {
        Self { db, turn }
    }

    pub async fn run(self, out: ResponseOutparam) {
        let Self { db, turn } = self;
        let t0 = clock::monotonic_ms();
        let opened = match turn.model.provider.as_str() {
            "anthropic" => {
                provider::anthropic_stream(&turn.settings, &turn.model.name, &turn.turns)
                    .await
                    .map(Opened::Stream)
            }
            _ => provider::openai(&turn.settings, &turn.model.name, &turn.turns)
                .await
                .map(Opened::Whole),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                turn.record_failed(&db, &e);
                turn.release(&db);
                return write_whole(out, respond(Err(e))).await;
            }
        };

        let headers = Fields::from_list(&[
            ("content-type".to_owned(), b"text/event-stream".to_vec()),
            ("cache-control".to_owned(), b"no-cache".to_vec()),
        ])
        .unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(200);
        let mut client = Client {
            sink: response.take_body(),
            open: true,
        };
        out.set(response);
        let start = json!({"thread_id": turn.thread_id, "model": turn.model.name});
        client.send(sse("message_start", &start)).await;

        let (reply, cut) = match opened {
            Opened::Whole(reply) => {
                // An OpenAI-compatible answer: all of it at once.
                client
                    .send(sse("text_delta", &json!({"text": reply.text})))
                    .await;
                (Some(reply), None)
            }
            Opened::Stream((response, attempts)) => {
                let mut stream = MessageStream::new();
                let mut body = response.take_body_stream();
                let mut broken = false;
                loop {
                    let (events, end) = match body.next().await {
                        Some(Ok(chunk)) => (stream.feed(&chunk), false),
                        Some(Err(_)) => {
                            broken = true;
                            (stream.finish(), true)
                        }
                        None => (stream.finish(), true),
                    };
                    let mut bytes = Vec::new();
                    for e in &events {
                        if e["type"] == "content_block_delta" && e["delta"]["type"] == "text_delta"
                        {
                            bytes.extend(sse("text_delta", &json!({"text": e["delta"]["text"]})));
                        }
                    }
                    if !bytes.is_empty() {
                        client.send(bytes).await;
                    }
                    if end {
                        break;
                    }
                }
                let cut = if let Some(e) = &stream.error {
                    Some(format!(
                        "the model provider's stream failed: {}",
                        e["message"].as_str().unwrap_or("an error event")
                    ))
                } else if broken {
                    Some("the connection to the model provider broke mid-answer".to_owned())
                } else if !stream.stopped {
                    Some("the model provider's stream ended before message_stop".to_owned())
                } else {
                    None
                };
                let reply = match (stream.started, stream.usage.clone().finish()) {
                    (true, Ok(usage)) => Some(Reply {
                        text: stream.text.clone(),
                        usage,
                        provider_message_id: stream.message_id.clone(),
                        stop_reason: stream.stop_reason.clone(),
                        attempts,
                    }),
                    _ => None,
                };
                (reply, cut)
            }
        };
        let latency_ms = clock::monotonic_ms() - t0;

        let last = match (reply, cut) {
            (Some(reply), cut) => match turn.record(&db, &reply, latency_ms, cut.as_deref()) {
                Ok(body) if cut.is_none() => sse("message_stop", &body),
                Ok(body) => {
                    turn.release(&db);
                    problem(
                        ApiError::Upstream {
                            status: 502,
                            detail: cut.unwrap_or_default(),
                            request_id: None,
                        },
                        Some(body),
                    )
                }
                Err(e) => {
                    turn.release(&db);
                    problem(e, None)
                }
            },
            (None, cut) => {
                // Nothing the provider charges for was reported: billed nothing.
                let e = ApiError::Upstream {
                    status: 502,
                    detail: cut.unwrap_or_else(|| {
                        "the model provider's stream reported no usage".to_owned()
                    }),
                    request_id: None,
                };
                turn.record_failed(&db, &e);
                turn.release(&db);
                problem(e, None)
            }
        };
        client.send(last).await;
        let _ = client.sink.close().await;
    }
}

/// The client's side of the stream; once a write fails (the client went
/// away) nothing more is written, while the provider's stream is still read
/// to its end to bill it.
struct Client<S> {
    sink: S,
    open: bool,
}

impl<S: futures::Sink<Vec<u8>> + Unpin> Client<S> {
    async fn send(&mut self, bytes: Vec<u8>) {
        if self.open && self.sink.send(bytes).await.is_err() {
            self.open = false;
        }
    }
}

enum Opened {
    Stream((spin_sdk::http::IncomingResponse, u32)),
    Whole(Reply),
}

/// An `error` event: the problem a plain send would answer, with the billed turn.
fn problem(e: ApiError, turn: Option<Value>) -> Vec<u8> {
    let mut v = e.body();
    if let Some(t) = turn {
        v["turn"] = t;
    }
    sse("error", &v)
}
