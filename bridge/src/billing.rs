//! From one topic message to its rows in SQLite, exactly once in effect.
//!
//! [`process`] handles one message inside the caller's transaction:
//! - `token-metrics`: `user_invoice_line_item` rows (one per token class
//!   with tokens), priced with the version in force at the event's `time`;
//! - `inference-events`: an `api_events` row, token lines, and resource
//!   lines (one request, the compute milliseconds) at the resource prices
//!   in force at the event's time;
//! - `raw-messages`, `llm-responses`: nothing but their facts (message
//!   analytics).
//!
//! Every handled event gets a `processed_events` row holding its [`Fact`]:
//! who, which model, when, tokens per class, cost, latency. A redelivered
//! event finds that row, changes nothing and reads its fact back, so the
//! Redis aggregates it may not have reached yet can still be finished. An
//! event that can never be handled (bad JSON, failed validation, unknown
//! user or model, no price in force) is [`Outcome::Poison`] and writes
//! nothing. Database trouble is an `Err`: retried, never skipped.

use anyhow::Result;
use billing_core::events::{
    customer_source, CloudEvent, EventData, InferenceEvent, InferenceStatus, LlmResponse,
    MessageSent, TokenMetrics,
};
use billing_core::pricing::{
    fee_quantities, inference_call_cost, inference_resources, quote, FeeLine, PriceVersion, Quote,
    ResourcePriceVersion,
};
use billing_core::{PricePerMillion, Timestamp, Usage};
use rusqlite::{OptionalExtension, Transaction};

pub use billing_core::aggregates::{Fact, Kind};

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled now: its fact and the line items written.
    Billed { fact: Fact, line_items: usize },
    /// Handled before: nothing changed; the fact as it was recorded, its
    /// line items, and where it was first consumed (its topic is the fact's).
    Duplicate {
        fact: Fact,
        line_items: usize,
        first: Origin,
    },
    /// Can never be handled: a short code (the dead-letter metric's label) and why.
    Poison { code: &'static str, reason: String },
}

fn poison(code: &'static str, reason: impl Into<String>) -> Outcome {
    Outcome::Poison {
        code,
        reason: reason.into(),
    }
}

fn price(v: i64) -> Result<PricePerMillion> {
    PricePerMillion::new(v).map_err(|e| anyhow::anyhow!("stored price: {e}"))
}

/// A stored price version as read, parsed when first chosen and then kept
/// for the batch (so one unreadable row fails only the events it would
/// price, as a query per event did, and its rules' JSON is parsed once).
struct StoredPrice {
    pricing_id: i64,
    /// The canonical text form, which orders as time does.
    effective_from: String,
    prices: [i64; 5],
    rules: String,
    parsed: std::cell::OnceCell<Result<PriceVersion, String>>,
}

impl StoredPrice {
    fn parse(&self, model: &str) -> Result<PriceVersion> {
        self.parsed
            .get_or_init(|| {
                PriceVersion::from_stored(
                    self.pricing_id,
                    model,
                    &self.effective_from,
                    self.prices,
                    &self.rules,
                )
                .map_err(|e| format!("stored price version {}: {e}", self.pricing_id))
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }
}

/// Every token price version of `model`, newest first.
fn token_prices(tx: &Transaction<'_>, model_id: i64) -> Result<Vec<StoredPrice>> {
    let mut stmt = tx.prepare_cached(
        "SELECT pricing_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price, rules
         FROM dim_token_pricing WHERE model_id = ?1 ORDER BY effective_from DESC",
    )?;
    let rows = stmt.query_map([model_id], |r| {
        Ok(StoredPrice {
            pricing_id: r.get(0)?,
            effective_from: r.get(1)?,
            prices: [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
            rules: r.get(7)?,
            parsed: std::cell::OnceCell::new(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A stored resource price version as read (`dim_resource_pricing`),
/// turned into a [`ResourcePriceVersion`] when chosen (its time and price
/// checked then). Every version of a resource is read for the batch, so a
/// row of the wrong SQL type fails the batch, as it does for token prices.
struct StoredResourcePrice {
    resource_pricing_id: i64,
    unit: String,
    /// The canonical text form, which orders as time does.
    effective_from: String,
    unit_price: i64,
}

impl StoredResourcePrice {
    fn version(&self, resource: &str) -> Result<ResourcePriceVersion> {
        Ok(ResourcePriceVersion {
            resource_pricing_id: self.resource_pricing_id,
            resource: resource.to_owned(),
            unit: self.unit.clone(),
            effective_from: Timestamp::parse(&self.effective_from)
                .map_err(|e| anyhow::anyhow!("stored timestamp: {e}"))?,
            unit_price: price(self.unit_price)?,
        })
    }
}

/// Every price version of `resource`, newest first.
fn resource_prices(tx: &Transaction<'_>, resource: &str) -> Result<Vec<StoredResourcePrice>> {
    let mut stmt = tx.prepare_cached(
        "SELECT resource_pricing_id, unit, effective_from, unit_price FROM dim_resource_pricing
         WHERE resource = ?1 ORDER BY effective_from DESC",
    )?;
    let rows = stmt.query_map([resource], |r| {
        Ok(StoredResourcePrice {
            resource_pricing_id: r.get(0)?,
            unit: r.get(1)?,
            effective_from: r.get(2)?,
            unit_price: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Lookups {
    fn user_exists(&mut self, tx: &Transaction<'_>, user_id: i64) -> Result<bool> {
        if let Some(&known) = self.users.get(&user_id) {
            return Ok(known);
        }
        let exists = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM dim_users WHERE user_id = ?1)")?
            .query_row([user_id], |r| r.get(0))?;
        self.users.insert(user_id, exists);
        Ok(exists)
    }

    fn model(&mut self, tx: &Transaction<'_>, model: &str) -> Result<Option<ModelRow>> {
        if let Some(known) = self.models.get(model) {
            return Ok(known.clone());
        }
        // A model's own name, else one of its aliases (dim_model_aliases),
        // retired ones included: the collector accepted the event while
        // the alias was in use.
        let id = tx
            .prepare_cached(
                "SELECT model_id, model_name, context_window, max_output_tokens FROM dim_models WHERE model_name = ?1
                 UNION ALL SELECT model_id, model_name, context_window, max_output_tokens FROM dim_model_aliases JOIN dim_models USING (model_id) WHERE alias = ?1
                 LIMIT 1",
            )?
            .query_row([model], |r| {
                Ok(ModelRow {
                    model_id: r.get(0)?,
                    name: r.get(1)?,
                    context_window: r.get::<_, i64>(2)? as u64,
                    max_output_tokens: r.get::<_, i64>(3)? as u64,
                })
            })
            .optional()?;
        self.models.insert(model.to_owned(), id.clone());
        Ok(id)
    }

    /// The version of `resource` in force at `at` (canonical text), if any:
    /// the newest whose start is not after it (the comparison the SQL made
    /// before, per event).
    fn resource_price_at(
        &mut self,
        tx: &Transaction<'_>,
        resource: &str,
        at: &str,
    ) -> Result<Option<ResourcePriceVersion>> {
        if !self.resource_prices.contains_key(resource) {
            let versions = resource_prices(tx, resource)?;
            self.resource_prices.insert(resource.to_owned(), versions);
        }
        self.resource_prices[resource]
            .iter()
            .find(|v| v.effective_from.as_str() <= at)
            .map(|v| v.version(resource))
            .transpose()
    }

    /// The id of the event type named `event_type` (`dim_event_types`).
    fn event_type_id(&mut self, tx: &Transaction<'_>, event_type: &'static str) -> Result<i64> {
        if let Some(&id) = self.event_types.get(event_type) {
            return Ok(id);
        }
        let id = tx
            .prepare_cached("SELECT event_type_id FROM dim_event_types WHERE event_type = ?1")?
            .query_row([event_type], |r| r.get(0))?;
        self.event_types.insert(event_type, id);
        Ok(id)
    }

    /// The token prices of `model` in force at `at`: the newest version
    /// whose start is not after it (the comparison the SQL made before).
    fn price_at(
        &mut self,
        tx: &Transaction<'_>,
        model_id: i64,
        name: &str,
        at: Timestamp,
    ) -> Result<Option<PriceVersion>> {
        let versions = match self.prices.entry(model_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(token_prices(tx, model_id)?),
        };
        let at = at.to_rfc3339();
        versions
            .iter()
            .find(|v| v.effective_from <= at)
            .map(|v| v.parse(name))
            .transpose()
    }
}

/// Parses a payload as an event of type `T`, or says why it never will be one.
fn parse<T: EventData>(payload: &[u8]) -> Result<CloudEvent<T>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8".to_owned())?;
    CloudEvent::<T>::from_json(text).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// What one batch has already read of the dimension tables: users, model
/// ids, each model's and each resource's price versions, event type ids.
/// Made anew for every batch, which holds SQLite's write lock for its whole
/// transaction, so it sees exactly what a query per event would, and a new
/// price is seen by the next batch.
#[derive(Default)]
pub struct Lookups {
    users: std::collections::HashMap<i64, bool>,
    models: std::collections::HashMap<String, Option<ModelRow>>,
    /// A model's versions, newest first.
    prices: std::collections::HashMap<i64, Vec<StoredPrice>>,
    /// A resource's versions, newest first.
    resource_prices: std::collections::HashMap<String, Vec<StoredResourcePrice>>,
    event_types: std::collections::HashMap<&'static str, i64>,
}

/// What pricing needs of a model row.
#[derive(Debug, Clone)]
struct ModelRow {
    model_id: i64,
    /// The model's own name (what an alias stands for).
    name: String,
    context_window: u64,
    max_output_tokens: u64,
}

/// Where a message was read from, for the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
}

/// The recorded fact of (`kind`, `source`, `id`) and where it was first
/// consumed, if the event was handled before.
pub fn recorded(
    tx: &Transaction<'_>,
    kind: Kind,
    source: &str,
    id: &str,
) -> Result<Option<(Fact, Origin)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT user_id, model, thread_id, occurred_at, latency_ms, cost_nanos, input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens,
                partition, kafka_offset
         FROM processed_events WHERE consumer = ?1 AND source = ?2 AND event_id = ?3",
    )?;
    let row = stmt
        .query_row((kind.topic(), source, id), |r| {
            let origin = Origin {
                partition: r.get(11)?,
                offset: r.get(12)?,
            };
            Ok(fact_from_row(r, kind, source.to_owned(), id.to_owned(), 0)?.map(|f| (f, origin)))
        })
        .optional()?;
    row.transpose()
}

/// A [`Fact`] from a ledger row whose columns start at `at` in the order
/// user_id, model, thread_id, occurred_at, latency_ms, cost_nanos, then the five token classes.
pub fn fact_from_row(
    r: &rusqlite::Row<'_>,
    kind: Kind,
    source: String,
    id: String,
    at: usize,
) -> rusqlite::Result<Result<Fact>> {
    let occurred: String = r.get(at + 3)?;
    let tokens = [
        r.get::<_, i64>(at + 6)?,
        r.get(at + 7)?,
        r.get(at + 8)?,
        r.get(at + 9)?,
        r.get(at + 10)?,
    ]
    .map(|t| t as u64);
    let (user_id, model, thread_id, latency_ms, cost_nanos) = (
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        r.get::<_, i64>(at + 4)? as u64,
        r.get(at + 5)?,
    );
    Ok(Timestamp::parse(&occurred)
        .map_err(|e| anyhow::anyhow!("ledger row {source}/{id}: {e}"))
        .map(|occurred_at| Fact {
            kind,
            source,
            id,
            user_id,
            model,
            thread_id,
            occurred_at,
            latency_ms,
            cost_nanos,
            tokens,
        }))
}

/// The ledger entry that makes a redelivery a no-op, with the event's fact;
/// written last, in the same transaction as the event's rows.
fn record(tx: &Transaction<'_>, fact: &Fact, origin: Origin) -> Result<()> {
    let t = fact.tokens.map(|t| t as i64);
    tx.prepare_cached(
        "INSERT INTO processed_events (consumer, source, event_id, topic, partition, kafka_offset, user_id, model, thread_id, occurred_at, latency_ms, cost_nanos,
             input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, processed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(rusqlite::params![
        fact.kind.topic(), fact.source, fact.id, fact.kind.topic(), origin.partition, origin.offset, fact.user_id, fact.model, fact.thread_id,
        fact.occurred_at.to_rfc3339(), fact.latency_ms as i64, fact.cost_nanos, t[0], t[1], t[2], t[3], t[4], now_text(),
    ])?;
    Ok(())
}

/// An event's tokens, priced.
struct Priced {
    model_id: i64,
    pricing_id: i64,
    quote: Quote,
}

/// The user, the model, the price in force at `at`, the quote; or why the
/// event can never be billed.
fn price_event(
    tx: &Transaction<'_>,
    lookups: &mut Lookups,
    user_id: i64,
    model: &str,
    at: Timestamp,
    usage: &Usage,
) -> Result<Result<Priced, Outcome>> {
    if !lookups.user_exists(tx, user_id)? {
        return Ok(Err(poison(
            "unknown_user",
            format!("there is no user {user_id}"),
        )));
    }
    let Some(row) = lookups.model(tx, model)? else {
        return Ok(Err(poison(
            "unknown_model",
            format!("unknown model `{model}`"),
        )));
    };
    let model_id = row.model_id;
    // The collector refuses these at ingest; an event written to the topic
    // some other way is stopped here, before it reaches any sum.
    if let Err(e) =
        billing_core::usage::check_limits(usage, row.context_window, row.max_output_tokens)
    {
        return Ok(Err(poison("invalid_usage", e.to_string())));
    }
    let Some(version) = lookups.price_at(tx, model_id, &row.name, at)? else {
        return Ok(Err(poison(
            "no_price",
            format!("no price of `{model}` is in force at {at}"),
        )));
    };
    let at_text = at.to_rfc3339();
    let mut fees = Vec::new();
    for (resource, _) in fee_quantities(usage) {
        match lookups.resource_price_at(tx, resource, &at_text)? {
            Some(v) => fees.push(v),
            None => {
                return Ok(Err(poison(
                    "no_price",
                    format!("no price of `{resource}` is in force at {at}"),
                )))
            }
        }
    }
    match quote(&version, &fees, usage) {
        Ok(quote) => Ok(Ok(Priced {
            model_id,
            pricing_id: version.pricing_id,
            quote,
        })),
        Err(e) => Ok(Err(poison("invalid_usage", e.to_string()))),
    }
}

/// What an inference call of `usage` on `model` at `at` costs when billed
/// as [`process`] bills an `llm-billing.inference` event (the token quote
/// and its fees, plus the request's resource price; compute time 0 ms),
/// in nano-USD; `Err(reason)` when it can never be priced.
pub fn inference_cost(
    tx: &Transaction<'_>,
    user_id: i64,
    model: &str,
    at: Timestamp,
    usage: &Usage,
) -> Result<std::result::Result<billing_core::Nanos, String>> {
    let mut lookups = Lookups::default();
    let priced = match price_event(tx, &mut lookups, user_id, model, at, usage)? {
        Ok(p) => p,
        Err(Outcome::Poison { reason, .. }) => return Ok(Err(reason)),
        Err(_) => return Ok(Err("cannot be priced".into())),
    };
    let versions = inference_resource_versions(tx, &mut lookups, 0, &at.to_rfc3339())?;
    Ok(inference_call_cost(&priced.quote, &versions)
        .map(|(_, cost)| cost)
        .map_err(|e| e.to_string()))
}

/// The resource price versions in force at `at` for an inference call's
/// resources (billing-core `inference_resources`: one request, `compute_ms`
/// of compute), with their quantities; a resource without a price then is
/// not billed (and logged).
fn inference_resource_versions(
    tx: &Transaction<'_>,
    lookups: &mut Lookups,
    compute_ms: u64,
    at: &str,
) -> Result<Vec<(Option<ResourcePriceVersion>, u64)>> {
    let mut versions = Vec::new();
    for (resource, quantity) in inference_resources(compute_ms) {
        let version = if quantity == 0 {
            None
        } else {
            lookups.resource_price_at(tx, resource, at)?
        };
        if quantity > 0 && version.is_none() {
            tracing::warn!(
                resource,
                at,
                "No resource price in force; the resource is not billed."
            );
        }
        versions.push((version, quantity));
    }
    Ok(versions)
}

/// Whether the thread and the message exist here (one statement for both).
fn thread_and_message(
    tx: &Transaction<'_>,
    thread_id: i64,
    message_id: i64,
) -> Result<(bool, bool)> {
    Ok(tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM user_threads WHERE thread_id = ?1),
                    EXISTS (SELECT 1 FROM user_thread_messages WHERE message_id = ?2)",
        )?
        .query_row((thread_id, message_id), |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// The current time as the schema's timestamps are written
/// (`strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`, milliseconds, UTC), bound by
/// the bridge's inserts instead of that column default: evaluating it was
/// about a tenth of a line-item insert (perf, 2026-12-01).
fn now_text() -> String {
    Timestamp::from_millis(crate::now_ms())
        .map(Timestamp::to_rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

/// The line-item insert for `rows` (1 to 5) token lines of one event,
/// built once per row count: one statement (a multi-row `VALUES`), so an
/// event's lines cost one statement run instead of one each.
fn token_lines_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    &SQL.get_or_init(|| {
        (1..=billing_core::usage::TokenClass::ALL.len())
            .map(build_token_lines_sql)
            .collect()
    })[rows - 1]
}

/// `?1`–`?7` and `?8` (occurred_at), `?9` (created_at) are shared; each
/// row adds its token class, tokens, unit price and cost.
fn build_token_lines_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO user_invoice_line_item (source, event_id, user_id, thread_id, message_id, model_id, pricing_id, occurred_at, created_at, token_class, tokens, unit_price, cost_nanos) VALUES ",
    );
    for i in 0..rows {
        let p = 10 + 4 * i;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?{}, ?{}, ?{}, ?{})",
            p,
            p + 1,
            p + 2,
            p + 3
        ));
    }
    sql.push_str(" ON CONFLICT (source, event_id, token_class) DO NOTHING");
    sql
}

/// One `user_invoice_line_item` per token class with tokens, in one
/// statement. Returns the rows written.
fn insert_token_lines(
    tx: &Transaction<'_>,
    ev: (&str, &str, i64),
    thread: Option<i64>,
    message: Option<i64>,
    p: &Priced,
    at: &str,
) -> Result<usize> {
    let lines: Vec<_> = p.quote.lines.iter().filter(|l| l.tokens > 0).collect();
    if lines.is_empty() {
        return Ok(0);
    }
    let mut stmt = tx.prepare_cached(token_lines_sql(lines.len()))?;
    let created = now_text();
    let shared: [&dyn rusqlite::ToSql; 9] = [
        &ev.0,
        &ev.1,
        &ev.2,
        &thread,
        &message,
        &p.model_id,
        &p.pricing_id,
        &at,
        &created,
    ];
    for (i, v) in shared.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, v)?;
    }
    for (i, line) in lines.iter().enumerate() {
        let at = 10 + 4 * i;
        stmt.raw_bind_parameter(at, line.class.as_str())?;
        stmt.raw_bind_parameter(at + 1, line.tokens as i64)?;
        stmt.raw_bind_parameter(at + 2, line.unit_price.micros())?;
        stmt.raw_bind_parameter(at + 3, line.cost.0)?;
    }
    Ok(stmt.raw_execute()?)
}

/// One `resource_invoice_line_item` per line: a quote's server-tool fees,
/// an inference event's request and compute time. Returns the rows written.
fn insert_resource_lines(
    tx: &Transaction<'_>,
    ev: (&str, &str, i64),
    api_event_id: Option<i64>,
    lines: &[FeeLine],
    at: &str,
) -> Result<usize> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO resource_invoice_line_item (source, event_id, user_id, api_event_id, resource_pricing_id, resource, quantity, unit_price, cost_nanos, occurred_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (source, event_id, resource) DO NOTHING",
    )?;
    let mut written = 0;
    for f in lines {
        written += stmt.execute(rusqlite::params![
            ev.0,
            ev.1,
            ev.2,
            api_event_id,
            f.resource_pricing_id,
            f.resource,
            f.quantity as i64,
            f.unit_price.micros(),
            f.cost.0,
            at,
        ])?;
    }
    Ok(written)
}

/// The line items billed for an event (token and resource lines).
fn line_items_of(tx: &Transaction<'_>, source: &str, id: &str) -> Result<usize> {
    let n: i64 = tx
        .prepare_cached(
            "SELECT (SELECT count(*) FROM user_invoice_line_item WHERE source = ?1 AND event_id = ?2)
                  + (SELECT count(*) FROM resource_invoice_line_item WHERE source = ?1 AND event_id = ?2)",
        )?
        .query_row((source, id), |r| r.get(0))?;
    Ok(n as usize)
}

fn tokens_of(usage: &Usage) -> [u64; 5] {
    usage.by_class().map(|(_, n)| n)
}

/// Handles one message of `topic` inside `tx`. `Err` means try again later
/// (roll back); the caller commits.
pub fn process(
    tx: &Transaction<'_>,
    lookups: &mut Lookups,
    topic: &str,
    payload: &[u8],
    origin: Origin,
) -> Result<Outcome> {
    let Some(kind) = Kind::from_topic(topic) else {
        return Ok(poison(
            "unknown_topic",
            format!("no consumer handles topic `{topic}`"),
        ));
    };
    macro_rules! parse_or_poison {
        ($t:ty) => {
            match parse::<$t>(payload) {
                Ok(ev) => ev,
                Err(reason) => return Ok(poison("invalid_event", reason)),
            }
        };
    }
    macro_rules! seen_before {
        ($ev:expr) => {
            if let Some((fact, first)) = recorded(tx, kind, &$ev.source, &$ev.id)? {
                let line_items = line_items_of(tx, &$ev.source, &$ev.id)?;
                return Ok(Outcome::Duplicate {
                    fact,
                    line_items,
                    first,
                });
            }
        };
    }
    match kind {
        Kind::Turn => {
            let ev = parse_or_poison!(TokenMetrics);
            seen_before!(ev);
            bill_turn(tx, lookups, &ev, origin)
        }
        Kind::Inference => {
            let mut ev = parse_or_poison!(InferenceEvent);
            // A customer's (source, id) is unique only within that customer.
            ev.source = customer_source(ev.data.user_id, &ev.source);
            seen_before!(ev);
            bill_inference(tx, lookups, &ev, origin)
        }
        Kind::Message => {
            let ev = parse_or_poison!(MessageSent);
            seen_before!(ev);
            let d = &ev.data;
            analytics(
                tx,
                lookups,
                kind,
                &ev,
                d.model.as_str(),
                d.thread_id,
                0,
                origin,
            )
        }
        Kind::Response => {
            let ev = parse_or_poison!(LlmResponse);
            seen_before!(ev);
            let d = &ev.data;
            analytics(
                tx,
                lookups,
                kind,
                &ev,
                d.model.as_str(),
                d.thread_id,
                d.latency_ms,
                origin,
            )
        }
    }
}

/// An event's fact: its identity, user and time from the envelope, the rest as given.
fn fact<T: EventData>(
    kind: Kind,
    ev: &CloudEvent<T>,
    model: &str,
    thread_id: Option<i64>,
    latency_ms: u64,
    cost_nanos: i64,
    tokens: [u64; 5],
) -> Fact {
    Fact {
        kind,
        source: ev.source.clone(),
        id: ev.id.clone(),
        user_id: ev.data.user_id(),
        model: model.to_owned(),
        thread_id,
        occurred_at: ev.time,
        latency_ms,
        cost_nanos,
        tokens,
    }
}

#[allow(clippy::too_many_arguments)]
fn analytics<T: EventData>(
    tx: &Transaction<'_>,
    lookups: &mut Lookups,
    kind: Kind,
    ev: &CloudEvent<T>,
    model: &str,
    thread_id: i64,
    latency_ms: u64,
    origin: Origin,
) -> Result<Outcome> {
    let user_id = ev.data.user_id();
    if !lookups.user_exists(tx, user_id)? {
        return Ok(poison(
            "unknown_user",
            format!("there is no user {user_id}"),
        ));
    }
    let fact = fact(kind, ev, model, Some(thread_id), latency_ms, 0, [0; 5]);
    record(tx, &fact, origin)?;
    Ok(Outcome::Billed {
        fact,
        line_items: 0,
    })
}

fn bill_turn(
    tx: &Transaction<'_>,
    lookups: &mut Lookups,
    ev: &CloudEvent<TokenMetrics>,
    origin: Origin,
) -> Result<Outcome> {
    let d = &ev.data;
    let priced = match price_event(tx, lookups, d.user_id, d.model.as_str(), ev.time, &d.usage)? {
        Ok(p) => p,
        Err(outcome) => return Ok(outcome),
    };
    // The thread and message are referenced when they exist here (they do
    // unless the event came from elsewhere); the bill does not depend on them.
    let (thread, message) = thread_and_message(tx, d.thread_id, d.message_id)?;
    let (thread, message) = (
        thread.then_some(d.thread_id),
        message.then_some(d.message_id),
    );
    let at = ev.time.to_rfc3339();
    let line_items = insert_token_lines(
        tx,
        (&ev.source, &ev.id, d.user_id),
        thread,
        message,
        &priced,
        &at,
    )? + insert_resource_lines(
        tx,
        (&ev.source, &ev.id, d.user_id),
        None,
        &priced.quote.fees,
        &at,
    )?;
    let fact = fact(
        Kind::Turn,
        ev,
        &priced.quote.model,
        Some(d.thread_id),
        d.latency_ms,
        priced.quote.total.0,
        tokens_of(&d.usage),
    );
    record(tx, &fact, origin)?;
    Ok(Outcome::Billed { fact, line_items })
}

/// An inference event's resource lines are priced at the resource prices in
/// force at its time; a resource without a price then is not billed.
fn bill_inference(
    tx: &Transaction<'_>,
    lookups: &mut Lookups,
    ev: &CloudEvent<InferenceEvent>,
    origin: Origin,
) -> Result<Outcome> {
    let d = &ev.data;
    let priced = match price_event(tx, lookups, d.user_id, d.model.as_str(), ev.time, &d.usage)? {
        Ok(p) => p,
        Err(outcome) => return Ok(outcome),
    };
    let at = ev.time.to_rfc3339();
    // Priced before anything is written, so an event that cannot be priced
    // leaves no rows behind.
    let versions = inference_resource_versions(tx, lookups, d.compute_ms, &at)?;
    let (mut resources, cost) = match inference_call_cost(&priced.quote, &versions) {
        Ok(x) => x,
        Err(e) => return Ok(poison("invalid_usage", e.to_string())),
    };
    let tokens = tokens_of(&d.usage);
    let event_type_id = lookups.event_type_id(tx, InferenceEvent::TYPE)?;
    let api_event_id: i64 = tx
        .prepare_cached(
            "INSERT INTO api_events (source, event_id, event_type_id, user_id, model_id, request_id, status, http_status, latency_ms, compute_ms,
                 input_tokens, output_tokens, cache_creation_input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_input_tokens, occurred_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) RETURNING api_event_id",
        )?
        .query_row(
            rusqlite::params![
                ev.source, ev.id, event_type_id, d.user_id, priced.model_id, d.request_id,
                match d.status { InferenceStatus::Succeeded => "succeeded", InferenceStatus::Failed => "failed" },
                d.http_status, d.latency_ms as i64, d.compute_ms as i64,
                d.usage.input_tokens as i64, d.usage.output_tokens as i64, d.usage.cache_creation_input_tokens as i64,
                tokens[2] as i64, tokens[3] as i64, d.usage.cache_read_input_tokens as i64, at,
            ],
            |r| r.get(0),
        )?;
    let mut line_items = insert_token_lines(
        tx,
        (&ev.source, &ev.id, d.user_id),
        None,
        None,
        &priced,
        &at,
    )?;
    resources.extend(priced.quote.fees.iter().cloned());
    line_items += insert_resource_lines(
        tx,
        (&ev.source, &ev.id, d.user_id),
        Some(api_event_id),
        &resources,
        &at,
    )?;
    let fact = fact(
        Kind::Inference,
        ev,
        &priced.quote.model,
        None,
        d.latency_ms,
        cost.0,
        tokens,
    );
    record(tx, &fact, origin)?;
    Ok(Outcome::Billed { fact, line_items })
}
