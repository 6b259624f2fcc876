//! `collector`: `POST /api/events` takes inference-API events as one
//! CloudEvent (`application/cloudevents+json`) or a batch
//! (`application/cloudevents-batch+json`, a JSON array).
//!
//! - Validation is all-or-nothing: a 400 lists every bad event by index,
//!   field and reason, and nothing is stored.
//! - Identity is the customer's: an event whose user sent the same
//!   (source, id) with the same content before — in an earlier request or
//!   earlier in the same batch — is a duplicate: counted, not stored again.
//!   The answer is 202 {accepted, duplicates} either way, so a client may
//!   always retry. The same (source, id) with other content is 409 naming
//!   the event it collides with, and nothing is stored. Another customer's
//!   (source, id) is theirs: both are billed.
//! - Accepted events enter the outbox (topic inference-events, key = user
//!   id) in one transaction per batch; the bridge bills them.
//! - Caps: `collector_max_batch` events per request and the body size (413);
//!   `collector_requests_per_second` per API key (429 with retry-after,
//!   counted in Redis; without Redis there is no limit).
//! - A user's key may report only that user's events; an admin's key any
//!   user's (a service reporting for its users).
//! - Refused, naming the field: a `time` more than 5 minutes ahead, older
//!   than the horizon (`collector_horizon_days`, default 35), or before the
//!   model's first price; counts beyond the model's context window or
//!   output limit; a source under `/functions/` (the system's own components).
//! - `model` may be an alias (undated id, cloud-provider id); it is billed
//!   as the model it names.

use billing_core::events::{schema_uri, CloudEvent, EventData, InferenceEvent};
use billing_core::{FieldError, Timestamp};
use billing_fn_common::cache::Cache;
use billing_fn_common::db::{col, text, Value as Sql};
use billing_fn_common::{auth, json, respond, ApiError, ApiResult, Caller, Db};
use billing_fn_common::{clock, prices};
use serde_json::{json, Value};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use std::collections::HashSet;

const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// How far ahead of the server's clock an event's `time` may be (clock skew).
const MAX_AHEAD_MS: i64 = 5 * 60 * 1000;
/// Sources the system's own components use; clients may not send them.
pub const RESERVED_SOURCE_PREFIX: &str = "/functions/";
/// Rows per multi-row INSERT, under SQLite's limit on bound parameters.
const ROWS_PER_INSERT: usize = 1000;

fn setting(name: &str, default: u64) -> u64 {
    spin_sdk::variables::get(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[http_component]
fn handle(req: Request) -> Response {
    respond(route(&req))
}

fn route(req: &Request) -> ApiResult<Response> {
    if req.path() != "/api/events" {
        return Err(ApiError::NotFound(format!(
            "no such endpoint: {}",
            req.path()
        )));
    }
    if *req.method() != Method::Post {
        return Err(ApiError::MethodNotAllowed("send events with POST".into()));
    }
    let (db, caller) = billing_fn_common::authenticated(req)?;
    let cache = Cache::open();
    rate_limit(req, &cache)?;
    let batch = match parse(req)? {
        Parsed::Plain(events) => check(
            &db,
            &caller,
            events.into_iter().enumerate().collect(),
            Vec::new(),
        )?,
        Parsed::Values(values) => validate(&db, &caller, values)?,
    };
    let (accepted, duplicates) = store(&db, &batch)?;
    if accepted > 0 {
        cache.publish("billing:outbox", b"collector");
    }
    Ok(json(
        202,
        &json!({ "accepted": accepted, "duplicates": duplicates }),
    ))
}

/// Fixed one-second windows per key, in Redis.
fn rate_limit(req: &Request, cache: &Cache) -> ApiResult<()> {
    let limit = setting("collector_requests_per_second", 50) as i64;
    let key = req
        .header("authorization")
        .and_then(|h| h.as_str())
        .unwrap_or("");
    let second = billing_fn_common::clock::now().millis() / 1000;
    let bucket = format!(
        "ratelimit:collector:{}:{second}",
        &auth::hash_key(key)[..16]
    );
    if let Some(n) = cache.incr(&bucket) {
        if n == 1 {
            cache.execute(
                "EXPIRE",
                &[
                    spin_sdk::redis::RedisParameter::Binary(bucket.into_bytes()),
                    spin_sdk::redis::RedisParameter::Int64(2),
                ],
            );
        }
        if n > limit {
            return Err(ApiError::RateLimited { retry_after_s: 1 });
        }
    }
    Ok(())
}

/// A request's events: typed already (a batch of usual events, read in one
/// pass), or JSON values to type one by one, naming every problem.
enum Parsed {
    Plain(Vec<CloudEvent<InferenceEvent>>),
    Values(Vec<Value>),
}

fn parse(req: &Request) -> ApiResult<Parsed> {
    let ct = req
        .header("content-type")
        .and_then(|h| h.as_str())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let batch = match ct.as_str() {
        "application/cloudevents-batch+json" => true,
        "application/cloudevents+json" | "application/json" => false,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "send application/cloudevents+json (one event) or application/cloudevents-batch+json (a batch), not `{other}`"
            )))
        }
    };
    let body = req.body();
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body is {} bytes; at most {MAX_BODY_BYTES} are accepted",
            body.len()
        )));
    }
    let max = setting("collector_max_batch", 1000) as usize;
    if batch || ct == "application/json" {
        if let Some(events) = billing_core::events::plain_batch::<InferenceEvent>(body) {
            if !events.is_empty() && events.len() <= max {
                return Ok(Parsed::Plain(events));
            }
        }
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let events = match (batch, v) {
        (true, Value::Array(a)) => a,
        (true, _) => {
            return Err(ApiError::BadRequest(
                "a batch must be a JSON array of events".into(),
            ))
        }
        (false, Value::Array(a)) if ct == "application/json" => a,
        (false, Value::Object(o)) => vec![Value::Object(o)],
        (false, _) => {
            return Err(ApiError::BadRequest(
                "a single event must be a JSON object".into(),
            ))
        }
    };
    if events.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch has {} events; at most {max} are accepted per request",
            events.len()
        )));
    }
    if events.is_empty() {
        return Err(ApiError::BadRequest("the batch is empty".into()));
    }
    Ok(Parsed::Values(events))
}

/// Every event typed and checked; any problem anywhere refuses the whole batch.
fn validate(
    db: &Db,
    caller: &Caller,
    raw: Vec<Value>,
) -> ApiResult<Vec<CloudEvent<InferenceEvent>>> {
    let mut errors: Vec<(usize, FieldError)> = Vec::new();
    let mut events = Vec::with_capacity(raw.len());
    for (i, v) in raw.into_iter().enumerate() {
        match CloudEvent::<InferenceEvent>::from_value(v) {
            Ok(ev) => events.push((i, ev)),
            Err(errs) => errors.extend(errs.into_iter().map(|e| (i, e))),
        }
    }
    check(db, caller, events, errors)
}

/// The checks against the database and the caller, on typed events; any
/// problem here or in `errors` refuses the whole batch.
fn check(
    db: &Db,
    caller: &Caller,
    mut events: Vec<(usize, CloudEvent<InferenceEvent>)>,
    mut errors: Vec<(usize, FieldError)>,
) -> ApiResult<Vec<CloudEvent<InferenceEvent>>> {
    for (_, ev) in &mut events {
        // Stored with the schema it was validated against.
        ev.dataschema
            .get_or_insert_with(|| schema_uri(InferenceEvent::SCHEMA));
        ev.datacontenttype
            .get_or_insert_with(|| "application/json".into());
    }
    let users: HashSet<i64> = events.iter().map(|(_, e)| e.data.user_id).collect();
    let models: HashSet<String> = events
        .iter()
        .map(|(_, e)| e.data.model.as_str().to_owned())
        .collect();
    let known_users = existing(
        db,
        "SELECT user_id AS k FROM dim_users WHERE user_id IN",
        users.iter().map(|u| Sql::Integer(*u)).collect(),
    )?;
    // Each model named (by its own name or an alias) with its limits and
    // the start of its first price.
    let mut known_models = std::collections::HashMap::new();
    for name in &models {
        if let Some(m) = prices::model_by_name(db, name)? {
            let first = db
                .query(
                    "SELECT min(effective_from) AS f FROM dim_token_pricing WHERE model_id = ?1",
                    &[Sql::Integer(m.model_id)],
                )?
                .rows()
                .next()
                .and_then(|r| billing_fn_common::db::col_opt::<&str>(&r, "f").map(str::to_owned))
                .and_then(|f| Timestamp::parse(&f).ok());
            known_models.insert(name.clone(), (m, first));
        }
    }
    let now = clock::now();
    let ahead = Timestamp::from_millis(now.millis() + MAX_AHEAD_MS).expect("in range");
    let horizon_days = setting("collector_horizon_days", 35);
    // A horizon reaching before the earliest representable instant bounds nothing.
    let horizon = now
        .millis()
        .checked_sub((horizon_days as i64).saturating_mul(86_400_000))
        .and_then(|ms| Timestamp::from_millis(ms).ok());
    for (i, ev) in &events {
        let uid = ev.data.user_id;
        if !caller.is_admin() && uid != caller.user_id {
            errors.push((
                *i,
                FieldError::new(
                    "data.user_id",
                    format!("{uid} is not you; a user's key reports only that user's events"),
                ),
            ));
        } else if !known_users.contains(&uid.to_string()) {
            errors.push((
                *i,
                FieldError::new("data.user_id", format!("there is no user {uid}")),
            ));
        }
        if ev.source.starts_with(RESERVED_SOURCE_PREFIX) {
            errors.push((
                *i,
                FieldError::new(
                    "source",
                    format!("`{}` is reserved for the system's own events (sources starting with {RESERVED_SOURCE_PREFIX})", ev.source),
                ),
            ));
        }
        if ev.time > ahead {
            errors.push((
                *i,
                FieldError::new(
                    "time",
                    format!(
                        "{} is more than 5 minutes ahead of the server's clock ({now})",
                        ev.time
                    ),
                ),
            ));
        } else if let Some(horizon) = horizon.filter(|h| ev.time < *h) {
            errors.push((
                *i,
                FieldError::new(
                    "time",
                    format!("{} is older than the {horizon_days}-day horizon ({horizon}); such late events are not billed", ev.time),
                ),
            ));
        }
        match known_models.get(ev.data.model.as_str()) {
            None => errors.push((
                *i,
                FieldError::new(
                    "data.model",
                    format!("`{}` is not a known model", ev.data.model),
                ),
            )),
            Some((m, first)) => {
                if first.is_none_or(|f| ev.time < f) {
                    errors.push((
                        *i,
                        FieldError::new(
                            "time",
                            format!(
                                "no price of `{}` is in force at {}{}",
                                m.name,
                                ev.time,
                                first
                                    .map(|f| format!(" (its first price starts {f})"))
                                    .unwrap_or_default()
                            ),
                        ),
                    ));
                }
                if let Err(mut e) = billing_core::usage::check_limits(
                    &ev.data.usage,
                    m.context_window,
                    m.max_output_tokens,
                ) {
                    e.field = format!("data.{}", e.field);
                    errors.push((*i, e));
                }
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|(i, _)| *i);
        return Err(ApiError::InvalidBatch(errors));
    }
    Ok(events.into_iter().map(|(_, e)| e).collect())
}

/// The values of column `k` that `sql … IN (params)` finds.
fn existing(db: &Db, sql: &str, params: Vec<Sql>) -> ApiResult<HashSet<String>> {
    let mut found = HashSet::new();
    for chunk in params.chunks(ROWS_PER_INSERT) {
        let placeholders = (1..=chunk.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let r = db.query(&format!("{sql} ({placeholders})"), chunk)?;
        for row in r.rows() {
            let k = match row.get::<i64>("k") {
                Some(i) => i.to_string(),
                None => col::<&str>(&row, "k")?.to_owned(),
            };
            found.insert(k);
        }
    }
    Ok(found)
}

/// An event's identity: its user's (source, id).
type Identity<'a> = (i64, &'a str, &'a str);

fn identity(e: &CloudEvent<InferenceEvent>) -> Identity<'_> {
    (e.data.user_id, e.source.as_str(), e.id.as_str())
}

/// Stores the new events in one transaction; returns (accepted, duplicates).
///
/// An event is a duplicate when its user sent the same (source, id) with
/// the same content before (in an earlier request or earlier in this
/// batch): a retry. The same identity with other content is 409, naming
/// the event it collides with, and nothing of the batch is stored.
///
/// Everything that does not depend on which events are new — the outbox
/// rows' values, the statements' text — is made before the transaction:
/// the write lock is held only for the INSERTs, so concurrent batches
/// queue for as short a time as possible.
fn store(db: &Db, events: &[CloudEvent<InferenceEvent>]) -> ApiResult<(usize, usize)> {
    let payloads: Vec<String> = events.iter().map(|e| e.to_json()).collect();
    let hashes: Vec<String> = payloads.iter().map(|p| auth::sha256_hex(p)).collect();
    // Duplicates inside the batch keep their first occurrence.
    let mut first: std::collections::HashMap<Identity, usize> = std::collections::HashMap::new();
    let mut conflicts = Vec::new();
    let mut unique = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        match first.entry(identity(e)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
                unique.push(i);
            }
            std::collections::hash_map::Entry::Occupied(o) if hashes[*o.get()] != hashes[i] => {
                conflicts.push(format!(
                    "event {i} (source `{}`, id `{}`) has the identity of event {} of this batch with other content",
                    e.source, e.id, o.get()
                ));
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
        }
    }
    if !conflicts.is_empty() {
        return Err(reused(conflicts));
    }
    struct Chunk {
        dedup_sql: String,
        dedup: Vec<Sql>,
        /// Indexes into `events`, in the order of `rows`.
        events: Vec<usize>,
        /// Five values per event.
        rows: Vec<[Sql; 5]>,
    }
    let chunks: Vec<Chunk> = unique
        .chunks(ROWS_PER_INSERT / 4)
        .map(|chunk| {
            let mut dedup = Vec::with_capacity(chunk.len() * 4);
            let mut rows = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let e = &events[i];
                dedup.push(Sql::Integer(e.data.user_id));
                dedup.push(text(e.source.clone()));
                dedup.push(text(e.id.clone()));
                dedup.push(text(hashes[i].clone()));
                rows.push([
                    text(InferenceEvent::TOPIC),
                    text(e.key()),
                    text(e.source.clone()),
                    text(e.id.clone()),
                    text(payloads[i].clone()),
                ]);
            }
            Chunk {
                dedup_sql: format!(
                    "INSERT INTO collected_events (user_id, source, event_id, payload_sha256) VALUES {} ON CONFLICT DO NOTHING RETURNING user_id, source, event_id",
                    placeholders(chunk.len(), 4)
                ),
                dedup,
                events: chunk.to_vec(),
                rows,
            }
        })
        .collect();
    let accepted = db.transaction(move |db| {
        let mut accepted = 0;
        let mut conflicts = Vec::new();
        for chunk in chunks {
            let inserted = db.query(&chunk.dedup_sql, &chunk.dedup)?;
            let new: HashSet<Identity> = inserted
                .rows()
                .map(|r| {
                    Ok((
                        col::<i64>(&r, "user_id")?,
                        col::<&str>(&r, "source")?,
                        col::<&str>(&r, "event_id")?,
                    ))
                })
                .collect::<ApiResult<_>>()?;
            let mut fresh: Vec<Sql> = Vec::with_capacity(chunk.rows.len() * 5);
            for (&i, row) in chunk.events.iter().zip(chunk.rows) {
                let e = &events[i];
                if new.contains(&identity(e)) {
                    fresh.extend(row);
                } else if let Some(accepted_at) = collides(db, e, &hashes[i])? {
                    conflicts.push(format!(
                        "event {i} (source `{}`, id `{}`) has the identity of an event you sent at {accepted_at} with other content",
                        e.source, e.id
                    ));
                }
            }
            let n = fresh.len() / 5;
            if n == 0 {
                continue;
            }
            db.exec(
                &format!(
                    "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES {}",
                    placeholders(n, 5)
                ),
                &fresh,
            )?;
            accepted += n;
        }
        if !conflicts.is_empty() {
            return Err(reused(conflicts));
        }
        Ok(accepted)
    })?;
    Ok((accepted, events.len() - accepted))
}

/// When the stored event of `e`'s identity has other content: the time it
/// was accepted. Events stored before hashes were kept count as the same.
fn collides(db: &Db, e: &CloudEvent<InferenceEvent>, hash: &str) -> ApiResult<Option<String>> {
    let r = db.query(
        "SELECT payload_sha256, accepted_at FROM collected_events WHERE user_id = ?1 AND source = ?2 AND event_id = ?3",
        &[Sql::Integer(e.data.user_id), text(e.source.clone()), text(e.id.clone())],
    )?;
    let Some(row) = r.rows().next() else {
        return Ok(None);
    };
    let stored = billing_fn_common::db::col_opt::<&str>(&row, "payload_sha256");
    Ok(match stored {
        Some(h) if h != hash => Some(col::<&str>(&row, "accepted_at")?.to_owned()),
        _ => None,
    })
}

/// 409: an id reused for another event; the batch is refused whole.
fn reused(conflicts: Vec<String>) -> ApiError {
    ApiError::Conflict(format!(
        "{}; nothing of this batch was stored. A retry must resend the event unchanged; another event needs its own id",
        conflicts.join("; ")
    ))
}

/// `(?1, ?2), (?3, ?4), …`: `rows` groups of `width` numbered parameters.
fn placeholders(rows: usize, width: usize) -> String {
    let mut s = String::with_capacity(rows * width * 6);
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..width {
            if c > 0 {
                s.push_str(", ");
            }
            use std::fmt::Write as _;
            let _ = write!(s, "?{}", r * width + c + 1);
        }
        s.push(')');
    }
    s
}
