//! Consumers: from topic messages to billed rows, exactly once in effect.
//!
//! [`bill_token_metrics`] turns one `token-metrics` event into
//! `user_invoice_line_item` rows (one per token class with tokens), priced
//! with the version in force at the event's `time`, and records the event
//! in `processed_events` — all in one SQLite transaction, so a redelivered
//! event finds itself in the ledger and changes nothing. An event that can
//! never be billed (bad JSON, failed validation, unknown model, no price in
//! force) is [`Outcome::Poison`]: it goes to the dead-letter topic and the
//! consumer moves on. Database trouble is an `Err`: retried, never skipped.
//!
//! [`run`] is the Kafka loop: it stores a message's offset only after the
//! writes it covers committed (or after the dead letter was delivered).

use anyhow::{Context, Result};
use billing_core::events::{topics, CloudEvent, EventData, InferenceEvent, InferenceStatus, TokenMetrics};
use billing_core::pricing::{quote, PriceVersion, Quote, TokenPrices};
use billing_core::{PricePerMillion, Timestamp, Usage};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::time::Duration;

pub const TOKEN_METRICS_CONSUMER: &str = "token-metrics";
pub const INFERENCE_CONSUMER: &str = "inference-events";

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Billed now: the line items written and their cost in nano-USD.
    Billed { line_items: usize, cost_nanos: i64 },
    /// Seen before: nothing changed.
    Duplicate,
    /// Can never be billed, and why.
    Poison(String),
}

fn price(v: i64) -> Result<PricePerMillion> {
    PricePerMillion::new(v).map_err(|e| anyhow::anyhow!("stored price: {e}"))
}

/// The token prices of `model` in force at `at`.
fn token_price_at(tx: &Transaction<'_>, model_id: i64, model: &str, at: Timestamp) -> Result<Option<PriceVersion>> {
    let row = tx
        .query_row(
            "SELECT pricing_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price
             FROM dim_token_pricing WHERE model_id = ?1 AND effective_from <= ?2 ORDER BY effective_from DESC LIMIT 1",
            (model_id, at.to_rfc3339()),
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, [r.get::<_, i64>(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?])),
        )
        .optional()?;
    let Some((pricing_id, from, p)) = row else { return Ok(None) };
    Ok(Some(PriceVersion {
        pricing_id,
        model: model.to_owned(),
        effective_from: Timestamp::parse(&from).map_err(|e| anyhow::anyhow!("stored timestamp: {e}"))?,
        prices: TokenPrices { input: price(p[0])?, output: price(p[1])?, cache_write_5m: price(p[2])?, cache_write_1h: price(p[3])?, cache_read: price(p[4])? },
    }))
}

/// Parses a payload as an event of type `T`, or says why it never will be one.
fn parse<T: EventData>(payload: &[u8]) -> Result<CloudEvent<T>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8".to_owned())?;
    CloudEvent::<T>::from_json(text).map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
}

/// Who an event is: its identity and the user it bills.
struct EventKey<'a> {
    source: &'a str,
    id: &'a str,
    user_id: i64,
}

/// An event's tokens, priced: what both consumers share.
struct Priced {
    model_id: i64,
    pricing_id: i64,
    quote: Quote,
}

/// The steps every billed event takes inside its transaction: the ledger
/// (already billed?), the user, the model, the price in force at `at`, the
/// quote. `Ok(Err(outcome))` ends the event there (duplicate or poison).
fn price_event(tx: &Transaction<'_>, consumer: &str, key: &EventKey<'_>, model: &str, at: Timestamp, usage: &Usage) -> Result<Result<Priced, Outcome>> {
    let user_id = key.user_id;
    let seen: Option<i64> = tx
        .query_row("SELECT 1 FROM processed_events WHERE consumer = ?1 AND source = ?2 AND event_id = ?3", (consumer, key.source, key.id), |r| r.get(0))
        .optional()?;
    if seen.is_some() {
        return Ok(Err(Outcome::Duplicate));
    }
    let user_exists: bool = tx.query_row("SELECT count(*) FROM dim_users WHERE user_id = ?1", [user_id], |r| r.get(0))?;
    if !user_exists {
        return Ok(Err(Outcome::Poison(format!("there is no user {user_id}"))));
    }
    let Some(model_id) = tx.query_row("SELECT model_id FROM dim_models WHERE model_name = ?1", [model], |r| r.get::<_, i64>(0)).optional()? else {
        return Ok(Err(Outcome::Poison(format!("unknown model `{model}`"))));
    };
    let Some(version) = token_price_at(tx, model_id, model, at)? else {
        return Ok(Err(Outcome::Poison(format!("no price of `{model}` is in force at {at}"))));
    };
    match quote(&version, usage) {
        Ok(quote) => Ok(Ok(Priced { model_id, pricing_id: version.pricing_id, quote })),
        Err(e) => Ok(Err(Outcome::Poison(e.to_string()))),
    }
}

/// One `user_invoice_line_item` per token class with tokens; a class already
/// written for this event is left as it is. Returns the rows written.
fn insert_token_lines(tx: &Transaction<'_>, key: &EventKey<'_>, thread: Option<i64>, message: Option<i64>, p: &Priced, at: &str) -> Result<usize> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO user_invoice_line_item (source, event_id, user_id, thread_id, message_id, model_id, pricing_id, token_class, tokens, unit_price, cost_nanos, occurred_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT (source, event_id, token_class) DO NOTHING",
    )?;
    let mut written = 0;
    for line in p.quote.lines.iter().filter(|l| l.tokens > 0) {
        written += stmt.execute(rusqlite::params![
            key.source, key.id, key.user_id, thread, message, p.model_id, p.pricing_id,
            line.class.as_str(), line.tokens as i64, line.unit_price.micros(), line.cost.0, at,
        ])?;
    }
    Ok(written)
}

/// The ledger entry that makes a redelivery a no-op; written last, in the same transaction.
fn record_processed(tx: &Transaction<'_>, consumer: &str, key: &EventKey<'_>, topic: &str, partition: i32, offset: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO processed_events (consumer, source, event_id, topic, partition, kafka_offset) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        (consumer, key.source, key.id, topic, partition, offset),
    )?;
    Ok(())
}

/// Bills one `token-metrics` message. `Err` means try again later.
pub fn bill_token_metrics(conn: &mut Connection, payload: &[u8], partition: i32, offset: i64) -> Result<Outcome> {
    let ev = match parse::<TokenMetrics>(payload) {
        Ok(ev) => ev,
        Err(reason) => return Ok(Outcome::Poison(reason)),
    };
    let d = &ev.data;
    let key = EventKey { source: &ev.source, id: &ev.id, user_id: d.user_id };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let priced = match price_event(&tx, TOKEN_METRICS_CONSUMER, &key, d.model.as_str(), ev.time, &d.usage)? {
        Ok(p) => p,
        Err(outcome) => return Ok(outcome),
    };
    // The thread and message are referenced when they exist here (they do
    // unless the event came from elsewhere); the bill does not depend on them.
    let thread_exists: bool = tx.query_row("SELECT count(*) FROM user_threads WHERE thread_id = ?1", [d.thread_id], |r| r.get(0))?;
    let message_exists: bool = tx.query_row("SELECT count(*) FROM user_thread_messages WHERE message_id = ?1", [d.message_id], |r| r.get(0))?;
    let at = ev.time.to_rfc3339();
    let written = insert_token_lines(&tx, &key, thread_exists.then_some(d.thread_id), message_exists.then_some(d.message_id), &priced, &at)?;
    record_processed(&tx, TOKEN_METRICS_CONSUMER, &key, topics::TOKEN_METRICS, partition, offset)?;
    tx.commit()?;
    Ok(Outcome::Billed { line_items: written, cost_nanos: priced.quote.total.0 })
}

/// Bills one `inference-events` message: an `api_events` row, a token line
/// per class with tokens, and resource lines (one request, the compute
/// milliseconds) at the resource prices in force at the event's time — a
/// resource without a price then is not billed. `Err` means try again later.
pub fn bill_inference(conn: &mut Connection, payload: &[u8], partition: i32, offset: i64) -> Result<Outcome> {
    let ev = match parse::<InferenceEvent>(payload) {
        Ok(ev) => ev,
        Err(reason) => return Ok(Outcome::Poison(reason)),
    };
    let d = &ev.data;
    let key = EventKey { source: &ev.source, id: &ev.id, user_id: d.user_id };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let priced = match price_event(&tx, INFERENCE_CONSUMER, &key, d.model.as_str(), ev.time, &d.usage)? {
        Ok(p) => p,
        Err(outcome) => return Ok(outcome),
    };
    let by_class = d.usage.by_class();
    let event_type_id: i64 = tx.query_row("SELECT event_type_id FROM dim_event_types WHERE event_type = ?1", [InferenceEvent::TYPE], |r| r.get(0))?;
    let at = ev.time.to_rfc3339();
    let api_event_id: i64 = tx.query_row(
        "INSERT INTO api_events (source, event_id, event_type_id, user_id, model_id, request_id, status, http_status, latency_ms, compute_ms,
             input_tokens, output_tokens, cache_creation_input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_input_tokens, occurred_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) RETURNING api_event_id",
        rusqlite::params![
            ev.source, ev.id, event_type_id, d.user_id, priced.model_id, d.request_id,
            match d.status { InferenceStatus::Succeeded => "succeeded", InferenceStatus::Failed => "failed" },
            d.http_status, d.latency_ms as i64, d.compute_ms as i64,
            d.usage.input_tokens as i64, d.usage.output_tokens as i64, d.usage.cache_creation_input_tokens as i64,
            by_class[2].1 as i64, by_class[3].1 as i64, d.usage.cache_read_input_tokens as i64, at,
        ],
        |r| r.get(0),
    )?;
    let mut written = insert_token_lines(&tx, &key, None, None, &priced, &at)?;
    let mut cost = priced.quote.total.0;
    for (resource, quantity) in [("inference_request", 1u64), ("compute_time", d.compute_ms)] {
        if quantity == 0 {
            continue;
        }
        let in_force: Option<(i64, i64)> = tx
            .query_row(
                "SELECT resource_pricing_id, unit_price FROM dim_resource_pricing WHERE resource = ?1 AND effective_from <= ?2 ORDER BY effective_from DESC LIMIT 1",
                (resource, &at),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((resource_pricing_id, unit_price)) = in_force else {
            tracing::warn!(resource, at, "No resource price in force; the resource is not billed.");
            continue;
        };
        let line_cost = billing_core::money::line_cost(quantity, price(unit_price)?)?;
        cost += line_cost.0;
        written += tx.execute(
            "INSERT INTO resource_invoice_line_item (source, event_id, user_id, api_event_id, resource_pricing_id, resource, quantity, unit_price, cost_nanos, occurred_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (source, event_id, resource) DO NOTHING",
            rusqlite::params![ev.source, ev.id, d.user_id, api_event_id, resource_pricing_id, resource, quantity as i64, unit_price, line_cost.0, at],
        )?;
    }
    record_processed(&tx, INFERENCE_CONSUMER, &key, topics::INFERENCE_EVENTS, partition, offset)?;
    tx.commit()?;
    Ok(Outcome::Billed { line_items: written, cost_nanos: cost })
}

/// Consumes `token-metrics` and `inference-events` in consumer group `group` until `shutdown`.
pub async fn run(brokers: &str, group: &str, conn: &mut Connection, dead_letters: &FutureProducer, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the Kafka consumer")?;
    consumer.subscribe(&[topics::TOKEN_METRICS, topics::INFERENCE_EVENTS])?;
    tokio::pin!(shutdown);
    loop {
        let msg = tokio::select! {
            _ = &mut shutdown => break,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka receive failed; retrying.");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let payload = msg.payload().unwrap_or_default();
        let mut backoff = Duration::from_millis(50);
        let outcome = loop {
            let billed = if msg.topic() == topics::INFERENCE_EVENTS {
                bill_inference(conn, payload, msg.partition(), msg.offset())
            } else {
                bill_token_metrics(conn, payload, msg.partition(), msg.offset())
            };
            match billed {
                Ok(o) => break o,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), partition = msg.partition(), offset = msg.offset(), "Billing failed; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        match &outcome {
            Outcome::Billed { line_items, cost_nanos } => tracing::info!(topic = msg.topic(), line_items, cost_nanos, offset = msg.offset(), "Billed an event."),
            Outcome::Duplicate => tracing::debug!(offset = msg.offset(), "Event seen before; nothing to do."),
            Outcome::Poison(reason) => {
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "dlq-reason", value: Some(reason.as_str()) })
                    .insert(Header { key: "dlq-topic", value: Some(msg.topic()) })
                    .insert(Header { key: "dlq-partition", value: Some(&msg.partition().to_string()) })
                    .insert(Header { key: "dlq-offset", value: Some(&msg.offset().to_string()) });
                let key = msg.key().unwrap_or_default();
                let record = FutureRecord::to(topics::DEAD_LETTER).key(key).payload(payload).headers(headers);
                dead_letters.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow::anyhow!("dead-letter delivery failed: {e}"))?;
                tracing::warn!(reason, offset = msg.offset(), "Sent an event that can never be billed to dead-letter.");
            }
        }
        consumer.store_offset_from_message(&msg)?;
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
}
