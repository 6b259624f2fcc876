//! One chat turn, from request to committed rows and events.
//!
//! A turn sent with an `Idempotency-Key` header (1–255 visible ASCII
//! characters, unique per user) is stored with its answer in the turn's own
//! transaction; the same key again answers the stored 201 body (header
//! `idempotent-replayed: true`) without calling the model or billing again.
//! The key reused for another request is refused (422). The key is claimed
//! before the model is called (table `idempotency_claims`, in the same
//! transaction as the look for a stored answer): a second request with the
//! key while the first is in flight gets 409 with `retry-after` and never
//! reaches the model; once the first is answered, a retry replays it. A
//! failed call releases the claim; the claim of a request whose process
//! died expires after `idempotency_claim_s` (default 300) seconds.

use crate::provider::{self, Reply, Settings, Turn};
use billing_core::events::{CloudEvent, EventData, LlmResponse, MessageSent, TokenMetrics};
use billing_core::{ModelName, Usage};
use billing_fn_common::cache::Cache;
use billing_fn_common::db::{col, int, opt_text, text};
use billing_fn_common::input::{json_body, text_field};
use billing_fn_common::prices::{
    model_by_id_cached, model_by_name_cached, price_in_force_cached, quote_at, Model,
};
use billing_fn_common::{clock, json, ApiError, ApiResult, Caller, Db};
use serde::Deserialize;
use serde_json::json;
use spin_sdk::http::{Request, Response};

/// Longest message accepted, in characters; larger bodies are refused as too large.
pub const MAX_CONTENT_CHARS: usize = 100_000;
const MAX_BODY_BYTES: usize = 512 * 1024;
/// How many earlier messages are sent with a new one.
const HISTORY_TURNS: i64 = 100;
const HISTORY_TTL_S: i64 = 3600;
pub const EVENT_SOURCE: &str = "/functions/messages";
/// Channel the bridge listens on to relay the outbox at once.
pub const OUTBOX_NUDGE: &str = "billing:outbox";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    content: String,
    #[serde(default)]
    model: Option<String>,
    /// Stream the answer as server-sent events (see [`crate::stream`]).
    #[serde(default)]
    stream: bool,
}

fn history_key(thread_id: i64) -> String {
    format!("thread:{thread_id}:history")
}

/// The thread's answered turns, oldest first: from Redis, else SQLite.
fn history(db: &Db, cache: &Cache, thread_id: i64) -> ApiResult<Vec<Turn>> {
    if let Some(turns) = cache.get_json::<Vec<Turn>>(&history_key(thread_id)) {
        return Ok(turns);
    }
    let r = db.query(
        "SELECT role, content FROM (
             SELECT message_id, role, content FROM user_thread_messages
             WHERE thread_id = ?1 AND status = 'ok' ORDER BY message_id DESC LIMIT ?2
         ) ORDER BY message_id",
        &[int(thread_id), int(HISTORY_TURNS)],
    )?;
    let turns = r
        .rows()
        .map(|row| {
            Ok(Turn {
                role: col::<&str>(&row, "role")?.to_owned(),
                content: col::<&str>(&row, "content")?.to_owned(),
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    cache.set_json(&history_key(thread_id), &turns, HISTORY_TTL_S);
    Ok(turns)
}

/// The request's `Idempotency-Key`, if it has one.
fn idempotency_key(req: &Request) -> ApiResult<Option<String>> {
    let Some(h) = req.header("idempotency-key") else {
        return Ok(None);
    };
    let k = h.as_str().unwrap_or("");
    if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters (no spaces)"
                .into(),
        ));
    }
    Ok(Some(k.to_owned()))
}

/// What a key stands for: the thread, the content and the model asked for.
fn request_hash(thread_id: i64, body: &NewMessage) -> String {
    billing_fn_common::auth::sha256_hex(&json!([thread_id, body.content, body.model]).to_string())
}

/// What a request with an Idempotency-Key found.
enum Claim {
    /// The stored answer of an earlier request with the key.
    Replay(Response),
    /// The key, claimed for this request until `expires_ms` (Unix ms), which
    /// also tells this claim from a later one that took it over.
    Claimed { expires_ms: i64 },
}

/// The stored answer of an earlier request with this key, or the key
/// claimed for this request: one transaction, so a request that finishes
/// meanwhile is either seen here or sees this claim. A key reused for a
/// different request is 422; a key whose request is in flight is 409 with
/// `retry-after` (the seconds its claim has left, at most 5).
fn replay_or_claim(db: &Db, user_id: i64, key: &str, hash: &str) -> ApiResult<Claim> {
    let lease_ms = spin_sdk::variables::get("idempotency_claim_s")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(300)
        .clamp(1, 86_400)
        * 1000;
    let now_ms = clock::now().millis();
    let reused = || {
        ApiError::invalid(
            "Idempotency-Key",
            format!(
                "`{key}` was already used for a different request; use a new key for a new message"
            ),
        )
    };
    db.transaction(|db| {
        let r = db.query(
            "SELECT request_hash, response FROM idempotent_turns WHERE user_id = ?1 AND idempotency_key = ?2",
            &[int(user_id), text(key)],
        )?;
        if let Some(row) = r.rows().next() {
            if col::<&str>(&row, "request_hash")? != hash {
                return Err(reused());
            }
            return Ok(Claim::Replay(
                Response::builder()
                    .status(201)
                    .header("content-type", "application/json")
                    .header("idempotent-replayed", "true")
                    .body(col::<&str>(&row, "response")?.as_bytes().to_vec())
                    .build(),
            ));
        }
        let r = db.query(
            "SELECT request_hash, expires_ms FROM idempotency_claims WHERE user_id = ?1 AND idempotency_key = ?2",
            &[int(user_id), text(key)],
        )?;
        if let Some(row) = r.rows().next() {
            let expires_ms = col::<i64>(&row, "expires_ms")?;
            if expires_ms > now_ms {
                if col::<&str>(&row, "request_hash")? != hash {
                    return Err(reused());
                }
                return Err(ApiError::InProgress {
                    detail: format!(
                        "a request with Idempotency-Key `{key}` is being answered now; retry to get its answer"
                    ),
                    retry_after_s: ((expires_ms - now_ms) as u64).div_ceil(1000).min(5),
                });
            }
        }
        db.exec(
            "INSERT INTO idempotency_claims (user_id, idempotency_key, request_hash, expires_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id, idempotency_key) DO UPDATE SET request_hash = excluded.request_hash, expires_ms = excluded.expires_ms,
                 claimed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            &[int(user_id), text(key), text(hash), int(now_ms + lease_ms)],
        )?;
        Ok(Claim::Claimed {
            expires_ms: now_ms + lease_ms,
        })
    })
}

/// Gives up this request's claim after a failed call (a retry may call the
/// model), unless a later request took the expired claim over.
fn release(db: &Db, user_id: i64, claim: &Idempotency) {
    let _ = db.exec(
        "DELETE FROM idempotency_claims WHERE user_id = ?1 AND idempotency_key = ?2 AND expires_ms = ?3",
        &[int(user_id), text(claim.key.clone()), int(claim.expires_ms)],
    );
}

fn event_id() -> ApiResult<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

fn outbox<T: EventData>(db: &Db, ev: &CloudEvent<T>) -> ApiResult<()> {
    db.exec(
        "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[text(T::TOPIC), text(ev.key()), text(ev.source.clone()), text(ev.id.clone()), text(ev.to_json())],
    )
}

/// What a `POST /api/threads/{id}/messages` becomes once its input is
/// checked: an answer to write whole, or a turn to stream.
pub enum Answer {
    Whole(Response),
    Stream(Box<crate::stream::StreamTurn>),
}

pub async fn send(db: Db, caller: &Caller, req: &Request, thread: &str) -> ApiResult<Answer> {
    let (thread_id, owner, thread_model, archived) = crate::visible_thread(&db, caller, thread)?;
    if owner != caller.user_id {
        return Err(ApiError::Forbidden(
            "only the thread's owner can send messages to it".into(),
        ));
    }
    if archived {
        return Err(ApiError::Conflict(format!(
            "thread {thread_id} is archived; unarchive it to send messages"
        )));
    }
    let body: NewMessage = json_body(req, MAX_BODY_BYTES)?;
    let content = text_field("content", &body.content, MAX_CONTENT_CHARS)?;
    let idem = match idempotency_key(req)? {
        Some(key) => {
            let hash = request_hash(thread_id, &body);
            match replay_or_claim(&db, caller.user_id, &key, &hash)? {
                Claim::Replay(stored) if body.stream => {
                    return Ok(Answer::Whole(crate::stream::replayed(stored)))
                }
                Claim::Replay(stored) => return Ok(Answer::Whole(stored)),
                Claim::Claimed { expires_ms } => Some(Idempotency {
                    key,
                    hash,
                    expires_ms,
                }),
            }
        }
        None => None,
    };
    let prepared = prepare(
        &db,
        caller,
        req,
        thread_id,
        thread_model,
        content,
        body.model,
    );
    let turn = match prepared {
        Ok(t) => t,
        Err(e) => {
            if let Some(i) = &idem {
                release(&db, caller.user_id, i);
            }
            return Err(e);
        }
    };
    let turn = PreparedTurn { idem, ..turn };
    if body.stream {
        return Ok(Answer::Stream(Box::new(crate::stream::StreamTurn::new(
            db, turn,
        ))));
    }
    let t0 = clock::monotonic_ms();
    let result = match turn.model.provider.as_str() {
        "anthropic" => provider::anthropic(&turn.settings, &turn.model.name, &turn.turns).await,
        _ => provider::openai(&turn.settings, &turn.model.name, &turn.turns).await,
    };
    let latency_ms = clock::monotonic_ms() - t0;
    let answered = match result {
        Ok(reply) => turn.record(&db, &reply, latency_ms, None),
        Err(e) => {
            turn.record_failed(&db, &e);
            Err(e)
        }
    };
    match answered {
        Ok(body) => Ok(Answer::Whole(json(201, &body))),
        Err(e) => {
            turn.release(&db);
            Err(e)
        }
    }
}

/// The request's Idempotency-Key, claimed for it.
pub struct Idempotency {
    key: String,
    hash: String,
    expires_ms: i64,
}

/// A turn ready for the model: checked, its model resolved and priced now,
/// its key (if any) claimed, the conversation to send.
pub struct PreparedTurn {
    pub user_id: i64,
    pub thread_id: i64,
    pub content: String,
    pub model: Model,
    model_name: ModelName,
    /// The conversation sent: the thread's answered turns and this message.
    pub turns: Vec<Turn>,
    pub settings: Settings,
    idem: Option<Idempotency>,
}

/// Resolves the model (asked for, or the thread's), refuses one that cannot
/// be billed now, and loads the conversation.
fn prepare(
    db: &Db,
    caller: &Caller,
    req: &Request,
    thread_id: i64,
    thread_model: i64,
    content: String,
    asked_model: Option<String>,
) -> ApiResult<PreparedTurn> {
    let cache = Cache::open();
    let model = match &asked_model {
        Some(name) => model_by_name_cached(db, &cache, name)?
            .filter(|m| m.active)
            .ok_or_else(|| {
                ApiError::invalid("model", format!("`{name}` is not an active model"))
            })?,
        None => model_by_id_cached(db, &cache, thread_model)?
            .filter(|m| m.active)
            .ok_or_else(|| {
                ApiError::invalid(
                    "model",
                    "the thread's model is retired; choose another model",
                )
            })?,
    };
    let model_name = ModelName::parse(&model.name)?;
    // Refuse before paying the provider when the model cannot be billed now;
    // the turn itself is priced at the answer's time (`record`).
    price_in_force_cached(db, &cache, &model, clock::now())?.ok_or_else(|| {
        ApiError::invalid(
            "model",
            format!(
                "`{}` has no price in force now, so it cannot be billed",
                model.name
            ),
        )
    })?;
    let settings = match model.provider.as_str() {
        "anthropic" => Settings::anthropic(req),
        "openai-compatible" => Settings::openai(),
        other => {
            return Err(ApiError::Internal(format!(
                "model `{}` has an unknown provider `{other}`",
                model.name
            )))
        }
    };
    let mut turns = history(db, &cache, thread_id)?;
    turns.push(Turn {
        role: "user".into(),
        content: content.clone(),
    });
    Ok(PreparedTurn {
        user_id: caller.user_id,
        thread_id,
        content,
        model,
        model_name,
        turns,
        settings,
        idem: None,
    })
}

impl PreparedTurn {
    /// Gives up the turn's Idempotency-Key claim (a retry may call the model again).
    pub fn release(&self, db: &Db) {
        if let Some(i) = &self.idem {
            release(db, self.user_id, i);
        }
    }

    /// A call that failed before the provider answered: billed nothing, the
    /// user's message kept, marked failed with the reason.
    pub fn record_failed(&self, db: &Db, e: &ApiError) {
        let now = clock::now();
        let _ = db.exec(
            "INSERT INTO user_thread_messages (thread_id, user_id, role, content, model_id, status, error, created_at) VALUES (?1, ?2, 'user', ?3, ?4, 'failed', ?5, ?6)",
            &[int(self.thread_id), int(self.user_id), text(self.content.clone()), int(self.model.model_id), text(e.detail()), text(now.to_rfc3339())],
        );
    }

    /// Stores and bills an answer, priced once at the answer's time (the
    /// instant the token-metrics event carries, so the cost shown is the
    /// cost the bridge invoices): the user message, the answer, its
    /// `message_tokens` row and the three outbox events in ONE transaction,
    /// with the key's stored answer. Returns the 201 body.
    ///
    /// `cut`: the provider's stream broke after it accepted the request
    /// (the reason). The provider charges for it, so it is billed for the
    /// usage reported; both messages are stored `failed` with the reason
    /// (the answer's partial text kept), left out of the conversation sent
    /// next, and the key is not stored (a retry asks the model again).
    pub fn record(
        &self,
        db: &Db,
        reply: &Reply,
        latency_ms: u64,
        cut: Option<&str>,
    ) -> ApiResult<serde_json::Value> {
        let cache = Cache::open();
        let now = clock::now();
        let model = &self.model;
        let (thread_id, user_id) = (self.thread_id, self.user_id);
        let q = quote_at(db, &cache, model, &reply.usage, now)?.ok_or_else(|| {
            ApiError::Internal(format!("`{}` has no price in force at {now}", model.name))
        })?;
        let classes = reply.usage.by_class();
        let status = if cut.is_some() { "failed" } else { "ok" };
        let error = cut.map(str::to_owned);
        let idem = if cut.is_some() {
            None
        } else {
            self.idem.as_ref()
        };
        let body = db.transaction(|db| {
            let ts = text(now.to_rfc3339());
            let user_msg_id = db
                .scalar_i64(
                    "INSERT INTO user_thread_messages (thread_id, user_id, role, content, model_id, status, error, created_at) VALUES (?1, ?2, 'user', ?3, ?4, ?5, ?6, ?7) RETURNING message_id",
                    &[int(thread_id), int(user_id), text(self.content.clone()), int(model.model_id), text(status), opt_text(error.clone()), ts.clone()],
                )?
                .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
            let answer_id = db
                .scalar_i64(
                    "INSERT INTO user_thread_messages (thread_id, user_id, role, content, model_id, status, error, reply_to_message_id, provider_message_id, stop_reason, latency_ms, created_at)
                     VALUES (?1, ?2, 'assistant', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING message_id",
                    &[
                        int(thread_id),
                        int(user_id),
                        text(reply.text.clone()),
                        int(model.model_id),
                        text(status),
                        opt_text(error.clone()),
                        int(user_msg_id),
                        opt_text(reply.provider_message_id.clone()),
                        opt_text(reply.stop_reason.clone()),
                        int(latency_ms as i64),
                        ts.clone(),
                    ],
                )?
                .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
            let u = &reply.usage;
            db.exec(
                "INSERT INTO message_tokens (message_id, thread_id, user_id, model_id, pricing_id, input_tokens, output_tokens, cache_creation_input_tokens,
                     cache_write_5m_tokens, cache_write_1h_tokens, cache_read_input_tokens, cost_nanos, occurred_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                &[
                    int(answer_id),
                    int(thread_id),
                    int(user_id),
                    int(model.model_id),
                    int(q.pricing_id),
                    int(u.input_tokens as i64),
                    int(u.output_tokens as i64),
                    int(u.cache_creation_input_tokens as i64),
                    int(classes[2].1 as i64),
                    int(classes[3].1 as i64),
                    int(u.cache_read_input_tokens as i64),
                    int(q.total.0),
                    ts.clone(),
                ],
            )?;
            db.exec("UPDATE user_threads SET updated_at = ?1 WHERE thread_id = ?2", &[ts, int(thread_id)])?;
            let subject = Some(format!("threads/{thread_id}"));
            let sent = CloudEvent::new(event_id()?, EVENT_SOURCE, now, subject.clone(), MessageSent {
                user_id,
                thread_id,
                message_id: user_msg_id,
                model: self.model_name.clone(),
                content: self.content.clone(),
            });
            let response = CloudEvent::new(event_id()?, EVENT_SOURCE, now, subject.clone(), LlmResponse {
                user_id,
                thread_id,
                message_id: answer_id,
                reply_to_message_id: user_msg_id,
                model: self.model_name.clone(),
                provider: model.provider.clone(),
                provider_message_id: reply.provider_message_id.clone(),
                stop_reason: reply.stop_reason.clone(),
                latency_ms,
                content: reply.text.clone(),
                usage: reply.usage.clone(),
            });
            let metrics = CloudEvent::new(event_id()?, EVENT_SOURCE, now, subject, TokenMetrics {
                user_id,
                thread_id,
                message_id: answer_id,
                model: self.model_name.clone(),
                usage: reply.usage.clone(),
                latency_ms,
            });
            outbox(db, &sent)?;
            outbox(db, &response)?;
            outbox(db, &metrics)?;
            let body = json!({
                "thread_id": thread_id,
                "user_message_id": user_msg_id,
                "message": {
                    "message_id": answer_id,
                    "role": "assistant",
                    "content": reply.text,
                    "model": model.name,
                    "status": status,
                    "error": error,
                    "stop_reason": reply.stop_reason,
                    "latency_ms": latency_ms,
                    "created_at": now.to_rfc3339(),
                },
                "usage": usage_json(&reply.usage),
                "cost": cost_json(&q),
                "provider_attempts": reply.attempts,
                "events": [sent.id, response.id, metrics.id],
            });
            if let Some(Idempotency { key, hash, .. }) = idem {
                // Inside the write transaction: a request with the same key that
                // committed first (one that took over this request's expired
                // claim) is seen here, and this one bills nothing.
                if db.scalar_i64("SELECT 1 FROM idempotent_turns WHERE user_id = ?1 AND idempotency_key = ?2", &[int(user_id), text(key.clone())])?.is_some() {
                    return Err(ApiError::Conflict(format!(
                        "another request with Idempotency-Key `{key}` was answered meanwhile; retry to get its answer"
                    )));
                }
                db.exec(
                    "INSERT INTO idempotent_turns (user_id, idempotency_key, thread_id, request_hash, response) VALUES (?1, ?2, ?3, ?4, ?5)",
                    &[int(user_id), text(key.clone()), int(thread_id), text(hash.clone()), text(body.to_string())],
                )?;
                db.exec(
                    "DELETE FROM idempotency_claims WHERE user_id = ?1 AND idempotency_key = ?2",
                    &[int(user_id), text(key.clone())],
                )?;
            }
            Ok(body)
        })?;

        if cut.is_none() {
            let mut turns = self.turns.clone();
            turns.push(Turn {
                role: "assistant".into(),
                content: reply.text.clone(),
            });
            cache.set_json(&history_key(thread_id), &turns, HISTORY_TTL_S);
        }
        cache.publish(OUTBOX_NUDGE, b"messages");
        Ok(body)
    }
}

pub fn usage_json(u: &Usage) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (class, tokens) in u.by_class() {
        m.insert(class.as_str().into(), json!(tokens));
    }
    serde_json::Value::Object(m)
}

fn cost_json(q: &billing_core::pricing::Quote) -> serde_json::Value {
    let by_class: serde_json::Map<String, serde_json::Value> = q
        .lines
        .iter()
        .map(|l| {
            (
                l.class.as_str().to_owned(),
                json!({"tokens": l.tokens, "unit_price": l.unit_price, "nanos": l.cost}),
            )
        })
        .collect();
    let fees: Vec<serde_json::Value> = q
        .fees
        .iter()
        .map(|f| json!({"resource": f.resource, "quantity": f.quantity, "unit_price": f.unit_price, "nanos": f.cost}))
        .collect();
    json!({
        "nanos": q.total, "display": q.total.display_usd(), "pricing_id": q.pricing_id, "by_class": by_class,
        "prompt_tokens": q.prompt_tokens, "tier_above_prompt_tokens": q.tier_above_prompt_tokens,
        "modifiers": q.modifiers, "fees": fees,
    })
}
