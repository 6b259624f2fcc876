//! CloudEvents 1.0 (JSON format) envelope and the typed payloads that flow
//! through the topics.
//!
//! An event's identity is (`source`, `id`): every consumer write is
//! idempotent on it. The Kafka key is the payload's `user_id`, so one user's
//! events stay in order. Each payload type names its CloudEvents `type`, its
//! topic and its schema version (in `dataschema`, e.g.
//! `urn:llm-billing:token-metrics:1`).

use crate::error::FieldError;
use crate::model::ModelName;
use crate::money::Nanos;
use crate::time::Timestamp;
use crate::usage::Usage;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SPEC_VERSION: &str = "1.0";
pub const SCHEMA_VERSION: u32 = 1;
pub const MAX_ID_LEN: usize = 256;
pub const MAX_SOURCE_LEN: usize = 512;
/// Longest message text an event may carry, in bytes.
pub const MAX_CONTENT_BYTES: usize = 512 * 1024;
/// Longest latency or compute time an event may claim: one day.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// The topics, as the seed names them.
pub mod topics {
    pub const RAW_MESSAGES: &str = "raw-messages";
    pub const LLM_RESPONSES: &str = "llm-responses";
    pub const TOKEN_METRICS: &str = "token-metrics";
    pub const INFERENCE_EVENTS: &str = "inference-events";
    pub const PROCESSED_EVENTS: &str = "processed-events";
    pub const DEAD_LETTER: &str = "dead-letter";
    pub const ALL: [&str; 6] = [
        RAW_MESSAGES,
        LLM_RESPONSES,
        TOKEN_METRICS,
        INFERENCE_EVENTS,
        PROCESSED_EVENTS,
        DEAD_LETTER,
    ];
}

/// A payload type: its CloudEvents `type`, topic, schema name and rules.
pub trait EventData: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const TOPIC: &'static str;
    const SCHEMA: &'static str;
    /// The user the event belongs to; the Kafka key.
    fn user_id(&self) -> i64;
    /// Pushes every problem found, with paths under `data.`.
    fn check(&self, errors: &mut Vec<FieldError>);
}

/// The schema URI carried in `dataschema`.
pub fn schema_uri(schema: &str) -> String {
    format!("urn:llm-billing:{schema}:{SCHEMA_VERSION}")
}

/// A CloudEvents 1.0 event in JSON format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent<T> {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    pub data: T,
}

impl<T: EventData> CloudEvent<T> {
    /// A new event of `T`'s type.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        time: Timestamp,
        subject: Option<String>,
        data: T,
    ) -> Self {
        Self {
            specversion: SPEC_VERSION.into(),
            id: id.into(),
            source: source.into(),
            event_type: T::TYPE.into(),
            time,
            subject,
            datacontenttype: Some("application/json".into()),
            dataschema: Some(schema_uri(T::SCHEMA)),
            data,
        }
    }

    /// The one serialisation every producer uses.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise")
    }

    pub fn key(&self) -> String {
        self.data.user_id().to_string()
    }

    /// Parses and validates an event of type `T` from JSON; every problem is
    /// reported, not only the first.
    pub fn from_value(v: Value) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        check_envelope(&v, Some(T::TYPE), &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let ev: Self =
            serde_json::from_value(v).map_err(|e| vec![FieldError::new("data", e.to_string())])?;
        ev.data.check(&mut errors);
        if errors.is_empty() {
            Ok(ev)
        } else {
            Err(errors)
        }
    }

    /// Reads and checks an event. The usual valid event is read in one
    /// pass ([`plain_event`]); anything else takes the full path, which
    /// names every problem (field, reason).
    pub fn from_json(s: &str) -> Result<Self, Vec<FieldError>> {
        if let Some(ev) = serde_json::from_str::<ObjectOnly<Plain<'_, T>>>(s)
            .ok()
            .and_then(|p| plain_event(p.0))
        {
            return Ok(ev);
        }
        let v: Value = serde_json::from_str(s)
            .map_err(|e| vec![FieldError::new("event", format!("not JSON: {e}"))])?;
        Self::from_value(v)
    }
}

/// An event as it is usually sent, read without building a JSON tree:
/// strings borrowed from the body (one with an escape does not fit, and
/// the batch takes the full path), `datacontenttype` kept apart from
/// `null` (which the full path refuses).
#[derive(Deserialize)]
struct Plain<'a, T> {
    specversion: &'a str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: &'a str,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default, deserialize_with = "present")]
    datacontenttype: Option<Option<&'a str>>,
    #[serde(default)]
    dataschema: Option<String>,
    data: T,
}

/// `T` read only from a JSON object: a derived struct would also take an
/// array of its fields in order, which the full path refuses ("must be a
/// JSON object").
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

/// `Some(None)` for an explicit `null`, so it is told from an absent attribute.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<&'de str>>, D::Error> {
    Option::<&'de str>::deserialize(d).map(Some)
}

/// A string attribute the full path ([`check_envelope`]) accepts.
fn plain_attr(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

/// The events of a JSON array when every one of them is valid, read in one
/// pass; `None` when anything is unusual or wrong — then
/// [`CloudEvent::from_value`] on each element, which names every problem,
/// decides. What this accepts, that accepts too, as the same events.
pub fn plain_batch<T: EventData>(body: &[u8]) -> Option<Vec<CloudEvent<T>>> {
    let plain: Vec<ObjectOnly<Plain<T>>> = serde_json::from_slice(body).ok()?;
    plain.into_iter().map(|p| plain_event(p.0)).collect()
}

/// One event read in one pass, when it is usual and valid; `None` sends it
/// to the full path. What this accepts, the full path accepts too, as the
/// same event.
fn plain_event<T: EventData>(p: Plain<'_, T>) -> Option<CloudEvent<T>> {
    let fits = p.specversion == SPEC_VERSION
        && plain_attr(p.id, MAX_ID_LEN)
        && plain_attr(p.source, MAX_SOURCE_LEN)
        && p.event_type == T::TYPE
        && plain_attr(p.time, 64)
        && matches!(p.datacontenttype, None | Some(Some("application/json")));
    if !fits {
        return None;
    }
    let time = Timestamp::parse(p.time).ok()?;
    let mut errors = Vec::new();
    p.data.check(&mut errors);
    if !errors.is_empty() {
        return None;
    }
    Some(CloudEvent {
        specversion: p.specversion.to_owned(),
        id: p.id.to_owned(),
        source: p.source.to_owned(),
        event_type: p.event_type.to_owned(),
        time,
        subject: p.subject,
        datacontenttype: p.datacontenttype.flatten().map(str::to_owned),
        dataschema: p.dataschema,
        data: p.data,
    })
}

/// Checks the envelope attributes of a JSON event: required attributes,
/// their types and lengths, the spec version and (when given) the type.
pub fn check_envelope(v: &Value, expected_type: Option<&str>, errors: &mut Vec<FieldError>) {
    let Some(obj) = v.as_object() else {
        errors.push(FieldError::new("event", "must be a JSON object"));
        return;
    };
    if let Some(sv) = string_attr(obj, errors, "specversion", 16) {
        if sv != SPEC_VERSION {
            errors.push(FieldError::new(
                "specversion",
                format!("`{sv}` is not supported; use \"1.0\""),
            ));
        }
    }
    string_attr(obj, errors, "id", MAX_ID_LEN);
    string_attr(obj, errors, "source", MAX_SOURCE_LEN);
    if let (Some(t), Some(want)) = (string_attr(obj, errors, "type", 256), expected_type) {
        if t != want {
            errors.push(FieldError::new("type", format!("`{t}` is not `{want}`")));
        }
    }
    if let Some(t) = string_attr(obj, errors, "time", 64) {
        if let Err(e) = Timestamp::parse(&t) {
            errors.push(FieldError::new("time", e.reason));
        }
    }
    if let Some(ct) = obj.get("datacontenttype") {
        if ct != "application/json" {
            errors.push(FieldError::new(
                "datacontenttype",
                format!("{ct} is not supported; use \"application/json\""),
            ));
        }
    }
    if !obj.contains_key("data") {
        errors.push(FieldError::new("data", "is required"));
    }
}

fn string_attr(
    obj: &serde_json::Map<String, Value>,
    errors: &mut Vec<FieldError>,
    name: &str,
    max: usize,
) -> Option<String> {
    match obj.get(name) {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(name, "is required"));
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            errors.push(FieldError::new(name, "must not be empty"));
            None
        }
        Some(Value::String(s)) if s.len() > max => {
            errors.push(FieldError::new(
                name,
                format!("is {} bytes long; at most {max} are allowed", s.len()),
            ));
            None
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            errors.push(FieldError::new(name, "must not contain control characters"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(FieldError::new(
                name,
                format!("must be a string, got {other}"),
            ));
            None
        }
    }
}

fn check_id(errors: &mut Vec<FieldError>, field: &str, id: i64) {
    if id <= 0 {
        errors.push(FieldError::new(
            format!("data.{field}"),
            format!("{id} is not a valid id; ids are positive"),
        ));
    }
}

fn check_ms(errors: &mut Vec<FieldError>, field: &str, ms: u64) {
    if ms > MAX_DURATION_MS {
        errors.push(FieldError::new(
            format!("data.{field}"),
            format!("{ms} ms is longer than a day"),
        ));
    }
}

fn check_usage(errors: &mut Vec<FieldError>, usage: &Usage) {
    if let Err(mut e) = usage.validate() {
        e.field = format!("data.{}", e.field);
        errors.push(e);
    }
}

fn check_content(errors: &mut Vec<FieldError>, content: &str) {
    if content.len() > MAX_CONTENT_BYTES {
        errors.push(FieldError::new(
            "data.content",
            format!(
                "is {} bytes; at most {MAX_CONTENT_BYTES} are allowed",
                content.len()
            ),
        ));
    }
}

/// A user's message as sent, on `raw-messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSent {
    pub user_id: i64,
    pub thread_id: i64,
    pub message_id: i64,
    pub model: ModelName,
    pub content: String,
}

impl EventData for MessageSent {
    const TYPE: &'static str = "llm-billing.message.sent";
    const TOPIC: &'static str = topics::RAW_MESSAGES;
    const SCHEMA: &'static str = "message-sent";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    fn check(&self, e: &mut Vec<FieldError>) {
        check_id(e, "user_id", self.user_id);
        check_id(e, "thread_id", self.thread_id);
        check_id(e, "message_id", self.message_id);
        check_content(e, &self.content);
    }
}

/// The model's answer to a message, on `llm-responses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmResponse {
    pub user_id: i64,
    pub thread_id: i64,
    /// The assistant message.
    pub message_id: i64,
    /// The user message it answers.
    pub reply_to_message_id: i64,
    pub model: ModelName,
    pub provider: String,
    #[serde(default)]
    pub provider_message_id: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    pub latency_ms: u64,
    pub content: String,
    pub usage: Usage,
}

impl EventData for LlmResponse {
    const TYPE: &'static str = "llm-billing.llm.response";
    const TOPIC: &'static str = topics::LLM_RESPONSES;
    const SCHEMA: &'static str = "llm-response";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    fn check(&self, e: &mut Vec<FieldError>) {
        check_id(e, "user_id", self.user_id);
        check_id(e, "thread_id", self.thread_id);
        check_id(e, "message_id", self.message_id);
        check_id(e, "reply_to_message_id", self.reply_to_message_id);
        check_ms(e, "latency_ms", self.latency_ms);
        check_content(e, &self.content);
        check_usage(e, &self.usage);
    }
}

/// The tokens of one chat turn, on `token-metrics`: what gets billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenMetrics {
    pub user_id: i64,
    pub thread_id: i64,
    /// The assistant message whose call used these tokens.
    pub message_id: i64,
    pub model: ModelName,
    pub usage: Usage,
    /// Latency of the provider call.
    pub latency_ms: u64,
}

impl EventData for TokenMetrics {
    const TYPE: &'static str = "llm-billing.token.metrics";
    const TOPIC: &'static str = topics::TOKEN_METRICS;
    const SCHEMA: &'static str = "token-metrics";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    fn check(&self, e: &mut Vec<FieldError>) {
        check_id(e, "user_id", self.user_id);
        check_id(e, "thread_id", self.thread_id);
        check_id(e, "message_id", self.message_id);
        check_ms(e, "latency_ms", self.latency_ms);
        check_usage(e, &self.usage);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceStatus {
    Succeeded,
    Failed,
}

/// The ledger's source of a customer's event: `/users/{user_id}:{source}`.
///
/// CloudEvents makes (source, id) unique per producer; our producers are
/// customers, who do not coordinate, so two of them may send the same pair
/// and both must be billed. The ledger (processed events, line items,
/// `api_events`, the dashboard's marks, `processed-events` records) keys a
/// collected event by this scoped source with its id: the same customer's
/// same (source, id) is a duplicate, another customer's is not. The map is
/// one-to-one (the user id ends at the first `:`) and never yields a
/// system source (those start with `/functions/`, which clients may not use).
pub fn customer_source(user_id: i64, source: &str) -> String {
    format!("/users/{user_id}:{source}")
}

/// One call to an inference API made outside the chat (batch jobs, other
/// services), collected by the `collector` component, on `inference-events`.
/// Billed per token class and per resource (requests, compute time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceEvent {
    pub user_id: i64,
    pub model: ModelName,
    /// The caller's request id, for tracing; not the identity (that is the envelope's source + id).
    pub request_id: String,
    pub status: InferenceStatus,
    #[serde(default)]
    pub http_status: Option<u16>,
    pub latency_ms: u64,
    #[serde(default)]
    pub compute_ms: u64,
    #[serde(default)]
    pub usage: Usage,
}

/// The event source of calls through the LLM gateway (reserved: clients cannot send it).
pub const GATEWAY_SOURCE: &str = "/functions/gateway";

/// What a gateway call is billed as, whoever writes it (the gateway when
/// the call ends, the bridge for a call left open): an
/// `llm-billing.inference` event with source [`GATEWAY_SOURCE`], id = the
/// call id (so the ledger bills a call once whoever is first), subject
/// `gateway/{call_id}`, at `at`; `partial` (cut, or ended by an error)
/// makes it `failed`, billed for what it used; compute time is the
/// provider's (0 ms).
#[allow(clippy::too_many_arguments)]
pub fn gateway_call_event(
    call_id: &str,
    at: Timestamp,
    user_id: i64,
    model: ModelName,
    provider_request_id: Option<&str>,
    partial: bool,
    latency_ms: u64,
    usage: Usage,
) -> CloudEvent<InferenceEvent> {
    CloudEvent::new(
        call_id.to_owned(),
        GATEWAY_SOURCE,
        at,
        Some(format!("gateway/{call_id}")),
        InferenceEvent {
            user_id,
            model,
            request_id: provider_request_id.unwrap_or(call_id).to_owned(),
            status: if partial {
                InferenceStatus::Failed
            } else {
                InferenceStatus::Succeeded
            },
            http_status: Some(200),
            latency_ms,
            compute_ms: 0,
            usage,
        },
    )
}

impl EventData for InferenceEvent {
    const TYPE: &'static str = "llm-billing.inference";
    const TOPIC: &'static str = topics::INFERENCE_EVENTS;
    const SCHEMA: &'static str = "inference-event";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    fn check(&self, e: &mut Vec<FieldError>) {
        check_id(e, "user_id", self.user_id);
        if self.request_id.is_empty() || self.request_id.len() > MAX_ID_LEN {
            e.push(FieldError::new(
                "data.request_id",
                format!("must be 1 to {MAX_ID_LEN} bytes"),
            ));
        }
        if let Some(s) = self.http_status {
            if !(100..=599).contains(&s) {
                e.push(FieldError::new(
                    "data.http_status",
                    format!("{s} is not an HTTP status"),
                ));
            }
        }
        check_ms(e, "latency_ms", self.latency_ms);
        check_ms(e, "compute_ms", self.compute_ms);
        check_usage(e, &self.usage);
    }
}

/// What a consumer did with an event, on `processed-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessedEvent {
    pub user_id: i64,
    pub original_source: String,
    pub original_id: String,
    pub original_type: String,
    pub cost: Nanos,
    pub line_items: u32,
}

impl EventData for ProcessedEvent {
    const TYPE: &'static str = "llm-billing.processed";
    const TOPIC: &'static str = topics::PROCESSED_EVENTS;
    const SCHEMA: &'static str = "processed-event";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    fn check(&self, e: &mut Vec<FieldError>) {
        check_id(e, "user_id", self.user_id);
        if self.cost.0 < 0 {
            e.push(FieldError::new("data.cost", "must not be negative"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Which way a batch (a valid event and a variant) goes.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Way {
        /// Read in one pass.
        Plain,
        /// Valid, but unusual (an escape, a duplicate key): the full path takes it.
        FullOnly,
        /// Invalid: the full path names the problem.
        Refused,
    }

    /// The one-pass reading of a batch accepts exactly the usual valid
    /// batches, as the same events the full path makes of them.
    #[test]
    fn plain_batch_agrees_with_the_full_path() {
        use Way::*;
        let base = r#"{"specversion":"1.0","id":"e-1","source":"/svc","type":"llm-billing.inference","time":"2026-11-01T10:00:00Z","data":{"user_id":2,"model":"claude-haiku-4-5-20251001","request_id":"r1","status":"succeeded","latency_ms":300,"compute_ms":250,"usage":{"input_tokens":120,"output_tokens":40}}}"#;
        let variants = [
            ("", "", Plain),
            (r#""id":"e-1""#, r#""id":"e\u0041""#, FullOnly),
            (r#""id":"e-1""#, r#""id":"""#, Refused),
            (r#""id":"e-1""#, r#""id":null"#, Refused),
            (r#""id":"e-1""#, r#""id":7"#, Refused),
            (r#""id":"e-1""#, r#""id":"e\u0007""#, Refused),
            (r#""specversion":"1.0""#, r#""specversion":"0.3""#, Refused),
            (
                r#""type":"llm-billing.inference""#,
                r#""type":"llm-billing.other""#,
                Refused,
            ),
            (
                r#""time":"2026-11-01T10:00:00Z""#,
                r#""time":"2026-02-30T10:00:00Z""#,
                Refused,
            ),
            (
                r#""time":"2026-11-01T10:00:00Z""#,
                r#""time":"2026-11-01T10:00:00.123456789Z""#,
                Plain,
            ),
            (
                r#""source":"/svc""#,
                r#""source":"/svc","datacontenttype":null"#,
                Refused,
            ),
            (
                r#""source":"/svc""#,
                r#""source":"/svc","datacontenttype":"text/plain""#,
                Refused,
            ),
            (
                r#""source":"/svc""#,
                r#""source":"/svc","datacontenttype":"application/json""#,
                Plain,
            ),
            (
                r#""source":"/svc""#,
                r#""source":"/svc","subject":"s","dataschema":"urn:x""#,
                Plain,
            ),
            (
                r#""source":"/svc""#,
                r#""source":"/svc","subject":null"#,
                Plain,
            ),
            (
                r#""source":"/svc""#,
                r#""source":"/svc","subject":3"#,
                Refused,
            ),
            (
                r#""source":"/svc""#,
                r#""source":"/svc","traceparent":"00-ab","ext":{"a":[1]}"#,
                Plain,
            ),
            (
                r#""source":"/svc""#,
                r#""source":"/svc","id":"e-2""#,
                FullOnly,
            ),
            (r#""user_id":2"#, r#""user_id":0"#, Refused),
            (r#""user_id":2"#, r#""user_id":2.0"#, Refused),
            (r#""latency_ms":300"#, r#""latency_ms":-1"#, Refused),
            (r#""latency_ms":300"#, r#""latency_ms":86400001"#, Refused),
            (r#""request_id":"r1""#, r#""request_id":"""#, Refused),
            (
                r#""model":"claude-haiku-4-5-20251001""#,
                r#""model":"""#,
                Refused,
            ),
            (r#""input_tokens":120"#, r#""input_tokens":-120"#, Refused),
            (r#""status":"succeeded""#, r#""status":"exploded""#, Refused),
            (r#""data":{"#, r#""data":{"extra":1,"#, Refused),
            (
                r#","data":{"user_id":2,"model":"claude-haiku-4-5-20251001","request_id":"r1","status":"succeeded","latency_ms":300,"compute_ms":250,"usage":{"input_tokens":120,"output_tokens":40}}"#,
                "",
                Refused,
            ),
        ];
        for (from, to, way) in variants {
            let v = if from.is_empty() {
                base.to_owned()
            } else {
                assert!(base.contains(from), "{from}");
                base.replacen(from, to, 1)
            };
            let body = format!("[{base},{v}]");
            let full: Result<Vec<CloudEvent<InferenceEvent>>, Vec<FieldError>> =
                serde_json::from_str::<Vec<Value>>(&body)
                    .unwrap()
                    .into_iter()
                    .map(CloudEvent::from_value)
                    .collect();
            let plain = plain_batch::<InferenceEvent>(body.as_bytes());
            // One event alone: `from_json` (one pass, else the full path)
            // reads it as the full path does.
            let one = CloudEvent::<InferenceEvent>::from_json(&v);
            let one_full =
                CloudEvent::<InferenceEvent>::from_value(serde_json::from_str(&v).unwrap());
            assert_eq!(one, one_full, "{v}");
            assert_eq!(
                serde_json::from_str::<super::ObjectOnly<super::Plain<'_, InferenceEvent>>>(&v)
                    .ok()
                    .and_then(|p| plain_event(p.0))
                    .is_some(),
                way == Plain,
                "{v}: read in one pass"
            );
            match (way, plain, full) {
                (Plain, Some(plain), Ok(full)) => assert_eq!(plain, full, "{v}"),
                (FullOnly, None, Ok(_)) | (Refused, None, Err(_)) => {}
                (way, plain, full) => panic!(
                    "{v}: expected {way:?}, got one-pass {:?}, full path {:?}",
                    plain.map(|p| p.len()),
                    full.map(|f| f.len())
                ),
            }
        }
    }

    /// An event written as an array of its attributes in order is not an
    /// event: the one-pass readers refuse it as the full path does.
    #[test]
    fn an_array_is_not_an_event() {
        let data = r#"{"user_id":2,"model":"claude-haiku-4-5-20251001","request_id":"r1","status":"succeeded","latency_ms":300,"compute_ms":250,"usage":{"input_tokens":120,"output_tokens":40}}"#;
        let array = format!(
            r#"["1.0","e-1","/svc","llm-billing.inference","2026-11-01T10:00:00Z",null,"application/json",null,{data}]"#
        );
        assert!(CloudEvent::<InferenceEvent>::from_json(&array).is_err());
        assert!(plain_batch::<InferenceEvent>(format!("[{array}]").as_bytes()).is_none());
        let object = format!(
            r#"{{"specversion":"1.0","id":"e-1","source":"/svc","type":"llm-billing.inference","time":"2026-11-01T10:00:00Z","data":{data}}}"#
        );
        assert!(CloudEvent::<InferenceEvent>::from_json(&object).is_ok());
        assert!(plain_batch::<InferenceEvent>(format!("[{object}]").as_bytes()).is_some());
    }

    fn metrics() -> CloudEvent<TokenMetrics> {
        CloudEvent::new(
            "evt-1",
            "/functions/messages",
            Timestamp::parse("2026-03-01T10:00:00Z").unwrap(),
            Some("thread/7".into()),
            TokenMetrics {
                user_id: 3,
                thread_id: 7,
                message_id: 11,
                model: ModelName::parse("claude-haiku-4-5-20251001").unwrap(),
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 20,
                    ..Default::default()
                },
                latency_ms: 350,
            },
        )
    }

    // An event serialises to CloudEvents JSON with its type, schema and key, and parses back equal.
    #[test]
    fn round_trip() {
        let ev = metrics();
        let json = ev.to_json();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "llm-billing.token.metrics");
        assert_eq!(v["dataschema"], "urn:llm-billing:token-metrics:1");
        assert_eq!(v["time"], "2026-03-01T10:00:00.000Z");
        assert_eq!(ev.key(), "3");
        assert_eq!(CloudEvent::<TokenMetrics>::from_json(&json).unwrap(), ev);
    }

    // Validation reports every problem at once, each with its path, in words.
    #[test]
    fn every_problem_reported() {
        let v = json!({"specversion": "0.3", "id": "", "source": "s", "type": "other", "time": "noon", "data": {}});
        let errs = CloudEvent::<TokenMetrics>::from_value(v).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["specversion", "id", "type", "time"]);

        let mut v: Value = serde_json::from_str(&metrics().to_json()).unwrap();
        v["data"]["user_id"] = json!(0);
        v["data"]["latency_ms"] = json!(100_000_000u64);
        let errs = CloudEvent::<TokenMetrics>::from_value(v).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0]
            .to_string()
            .contains("data.user_id: 0 is not a valid id"));

        let mut v: Value = serde_json::from_str(&metrics().to_json()).unwrap();
        v["data"]["tokens"] = json!(5);
        let errs = CloudEvent::<TokenMetrics>::from_value(v).unwrap_err();
        assert!(
            errs[0].reason.contains("unknown field `tokens`"),
            "{errs:?}"
        );
    }
}
