//! The consumer loop: Kafka batches to SQLite, dead letters, Redis
//! aggregates, processed-events — exactly once in effect.
//!
//! One consumer (group member) reads `token-metrics`, `inference-events`,
//! `raw-messages` and `llm-responses`. For each batch of messages it:
//! 1. handles every message in ONE SQLite transaction ([`crate::billing`]);
//!    each message runs in a savepoint, so one the database rejects for
//!    good (a constraint) becomes poison without spoiling the batch;
//! 2. sends poison to `dead-letter` with `dlq-reason`, `dlq-code`,
//!    `dlq-topic`, `dlq-partition`, `dlq-offset` headers;
//! 3. then, in a second stage that runs while the next batches are
//!    written to SQLite, applies the facts to the Redis aggregates
//!    ([`crate::aggregates`]), guarded by each event's mark, which also
//!    sends the live notices, and produces a `processed-events` record per
//!    billed event of the stage (a replay produces them again: no record is
//!    lost when the bridge dies between Redis and the broker);
//! 4. only once that stage is done stores the batch's offsets (committed
//!    in the background and on shutdown) and raises its partitions'
//!    watermarks (`aggregated_offsets`, written with the next batch).
//!    Second stages run one batch at a time, in order, so offsets are
//!    stored in order; batches wait for theirs in a queue of at most
//!    [`MAX_PENDING_FACTS`] facts. So while Redis (or the broker's
//!    processed-events) is away, billing into SQLite goes on and the
//!    aggregates catch up when it returns; only a longer outage makes the
//!    first stage wait. A redelivered event first consumed at or below its
//!    partition's watermark skips the second stage, whatever its age; one
//!    above it runs it again, its mark guarding the aggregates.
//!
//! A transient failure at any step (SQLite busy, Redis away, broker away)
//! is retried with backoff; nothing is skipped. A crash anywhere replays
//! the batch, and every step is idempotent on the event identity.

use crate::aggregates::Aggregates;
use crate::billing::{self, Fact, Origin, Outcome};
use crate::kafka::{Drain, GroupConsumer, Offset, Producer, Received};
use crate::metrics::global as metrics;
use crate::telemetry::{self, emit};
use anyhow::{Context, Result};
use billing_core::events::{
    topics, CloudEvent, EventData, InferenceEvent, LlmResponse, MessageSent, ProcessedEvent,
    TokenMetrics,
};
use billing_core::{Nanos, Timestamp};
use rusqlite::{Connection, TransactionBehavior};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a dead letter or processed-events record may wait for the broker, in ms.
const PRODUCE_TIMEOUT_MS: u64 = 10_000;

/// How often stored offsets are committed while consuming.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Most facts of written batches waiting for their second stage (Redis,
/// processed-events); above it the first stage waits. About 60 s of
/// 5,000 events/s, a few hundred bytes each.
pub const MAX_PENDING_FACTS: usize = 300_000;

/// The topics the consumers read.
pub const TOPICS: [&str; 4] = [
    topics::TOKEN_METRICS,
    topics::INFERENCE_EVENTS,
    topics::RAW_MESSAGES,
    topics::LLM_RESPONSES,
];

/// Settings of the consumer loop.
#[derive(Debug, Clone)]
pub struct Settings {
    pub group: String,
    /// Most messages handled in one transaction.
    pub batch_size: usize,
    /// How long a batch waits for more messages after its first, in ms.
    pub batch_wait_ms: u64,
    /// How long the broker may hold a fetch while it has nothing new, in ms
    /// (librdkafka's `fetch.wait.max.ms`).
    pub fetch_wait_ms: u64,
    /// How long the group waits for a silent member before rebalancing, in ms.
    pub session_timeout_ms: u64,
    /// Static group membership under this name, if any.
    pub instance_id: Option<String>,
}

/// Whether `stop` has been raised.
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Sleeps for the backoff (doubling it up to 5 s), or returns false at once if stopping.
async fn back_off(backoff: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    let stopped = tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    !stopped && !stopping(stop)
}

/// Handles a batch in one transaction. A message the database rejects for
/// good (a constraint) is poison; any other error rolls the batch back.
///
/// The batch first runs without a savepoint per message (they cost two
/// statements and a sub-journal per event); only if the database rejects a
/// message is it rolled back and run again message by message in
/// savepoints, so that one message's rejection spoils nothing else.
fn handle_batch(
    conn: &mut Connection,
    batch: &[Received<'_>],
    aggregated: &Watermarks,
) -> Result<(Vec<Outcome>, Watermarks)> {
    match run_batch(conn, batch, aggregated, false) {
        Err(e) if is_constraint(&e) => run_batch(conn, batch, aggregated, true),
        other => other,
    }
}

/// How far each (topic, partition) is known to be in the Redis aggregates
/// with its `processed-events` records delivered: the highest offset of a
/// batch whose second stage finished (table `aggregated_offsets`).
pub type Watermarks = std::collections::BTreeMap<(String, i32), i64>;

/// Raises the stored watermarks to `done` and reads them all back.
fn sync_watermarks(tx: &rusqlite::Transaction<'_>, done: &Watermarks) -> Result<Watermarks> {
    let mut raise = tx.prepare_cached(
        "INSERT INTO aggregated_offsets (topic, partition, kafka_offset) VALUES (?1, ?2, ?3)
         ON CONFLICT (topic, partition) DO UPDATE SET kafka_offset = max(kafka_offset, excluded.kafka_offset)",
    )?;
    for ((topic, partition), offset) in done {
        raise.execute((topic, partition, offset))?;
    }
    let mut read =
        tx.prepare_cached("SELECT topic, partition, kafka_offset FROM aggregated_offsets")?;
    let rows = read.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn run_batch(
    conn: &mut Connection,
    batch: &[Received<'_>],
    aggregated: &Watermarks,
    savepoints: bool,
) -> Result<(Vec<Outcome>, Watermarks)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let watermarks = sync_watermarks(&tx, aggregated)?;
    let mut lookups = billing::Lookups::default();
    let mut out = Vec::with_capacity(batch.len());
    for msg in batch {
        let origin = Origin {
            partition: msg.partition(),
            offset: msg.offset(),
        };
        let payload = msg.payload();
        if !savepoints {
            out.push(billing::process(
                &tx,
                &mut lookups,
                msg.topic(),
                payload,
                origin,
            )?);
            continue;
        }
        tx.execute_batch("SAVEPOINT message")?;
        match billing::process(&tx, &mut lookups, msg.topic(), payload, origin) {
            Ok(o) => {
                tx.execute_batch("RELEASE message")?;
                out.push(o);
            }
            Err(e) if is_constraint(&e) => {
                tx.execute_batch("ROLLBACK TO message; RELEASE message")?;
                out.push(Outcome::Poison {
                    code: "rejected_by_database",
                    reason: format!("the database refused the event: {e:#}"),
                });
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit()?;
    Ok((out, watermarks))
}

fn is_constraint(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<rusqlite::Error>(), Some(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The CloudEvents `type` of the event a fact came from.
fn original_type(f: &Fact) -> &'static str {
    match f.kind {
        billing::Kind::Turn => TokenMetrics::TYPE,
        billing::Kind::Inference => InferenceEvent::TYPE,
        billing::Kind::Message => MessageSent::TYPE,
        billing::Kind::Response => LlmResponse::TYPE,
    }
}

/// The `processed-events` record of a fact; its id is derived from the
/// original's identity, so a repeat is recognisable downstream.
pub fn processed_event(f: &Fact, line_items: usize, now: Timestamp) -> CloudEvent<ProcessedEvent> {
    CloudEvent::new(
        format!("{}:{}", f.kind.topic(), f.id),
        format!(
            "/bridge{}",
            if f.source.starts_with('/') {
                f.source.clone()
            } else {
                format!("/{}", f.source)
            }
        ),
        now,
        None,
        ProcessedEvent {
            user_id: f.user_id,
            original_source: f.source.clone(),
            original_id: f.id.clone(),
            original_type: original_type(f).to_owned(),
            cost: Nanos(f.cost_nanos),
            line_items: line_items as u32,
        },
    )
}

/// Consumes [`TOPICS`] in group `settings.group` until `stop` is raised;
/// then finishes the batch in hand, stores and commits its offsets.
pub async fn run(
    brokers: &str,
    settings: &Settings,
    conn: &mut Connection,
    aggregates: &mut Aggregates,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    // Dead letters and processed-events; replaced after a failed delivery,
    // like the relay's, so a broker that lost its producer state takes it.
    let mut producer = crate::kafka::producer(brokers, PRODUCE_TIMEOUT_MS)?;
    // The second stages in flight, shared with the rebalance callback,
    // which lets them finish before partitions go.
    let drain = Arc::new(Drain::default());
    let join = || -> Result<GroupConsumer> {
        let consumer = crate::kafka::group_consumer(
            brokers,
            &crate::kafka::Membership {
                group: &settings.group,
                instance_id: settings.instance_id.as_deref(),
                fetch_wait_ms: settings.fetch_wait_ms,
                session_timeout_ms: settings.session_timeout_ms,
            },
            drain.clone(),
        )?;
        consumer.subscribe(&TOPICS)?;
        Ok(consumer)
    };
    let mut consumer = join()?;
    let mut rejoins = Rejoins::default();
    // Dropped before the consumer (declared after it), whichever way this
    // returns: closing revokes the partitions, and nothing queued then
    // will finish any more.
    let _abandon = Abandon(drain.clone());
    // The second stage: one task for the life of the loop, fed in order.
    let (queue, queued) = tokio::sync::mpsc::unbounded_channel::<Staging>();
    let backlog = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_FACTS));
    let stage = tokio::spawn(second_stage(
        std::mem::replace(aggregates, aggregates.detached()),
        producer.clone(),
        brokers.to_owned(),
        stop.clone(),
        queued,
        drain.clone(),
        backlog.clone(),
    ));
    // Watermarks of finished second stages, stored with the next batch.
    let mut aggregated = Watermarks::new();
    let mut last_commit = std::time::Instant::now();
    loop {
        // A fatal error never clears on its client: retrying with it would
        // bill nothing for good (librdkafka reports it once, perhaps to a
        // `recv` inside a batch, so it is looked for on every turn).
        // Fenced, a new client under the same name takes the membership
        // back, unless that keeps happening (another process holds it).
        if let Some(fatal) = consumer.fatal_error() {
            let rejoin = fatal.fenced && rejoins.allow(std::time::Instant::now());
            emit(telemetry::ConsumerFatal {
                error: &fatal.description,
                rejoin,
            });
            if !rejoin {
                anyhow::bail!("fatal Kafka consumer error ({})", fatal.description);
            }
            // Second stages of the old client's batches that finish after
            // the new one's assignment store their offsets into it (the
            // same partitions, as a static member gets them back); those
            // finishing before it are not stored, and replayed, changing
            // nothing. The old client's close joins librdkafka's threads:
            // off the runtime's workers.
            let old = std::mem::replace(&mut consumer, join()?);
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
            continue;
        }
        let first = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            m = consumer.recv() => m,
            // Idle: what the second stage finished meanwhile is stored and committed.
            _ = tokio::time::sleep(COMMIT_INTERVAL) => {
                settle(&consumer, &drain.take_finished(), &mut aggregated);
                commit_due(&consumer, &mut last_commit);
                continue;
            }
        };
        let first = match first {
            Ok(m) => m,
            Err(e) => {
                // A fatal one is handled at the top of the loop.
                if consumer.fatal_error().is_none() {
                    emit(telemetry::KafkaReceiveFailed {
                        error: &e,
                        in_batch: false,
                    });
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        // A rebalance can happen inside any `recv` below: the messages
        // gathered before it may be of partitions now revoked (and their
        // offsets already committed up to before them), so they are
        // dropped, not billed here; their new owner (perhaps this member
        // again) fetches them from the committed offset.
        let mut generation = consumer.rebalances();
        let until = tokio::time::Instant::now() + Duration::from_millis(settings.batch_wait_ms);
        while batch.len() < settings.batch_size {
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(Ok(m)) => {
                    if consumer.rebalances() != generation {
                        generation = consumer.rebalances();
                        batch.clear();
                    }
                    batch.push(m)
                }
                Ok(Err(e)) => {
                    emit(telemetry::KafkaReceiveFailed {
                        error: &e,
                        in_batch: true,
                    });
                    break;
                }
                Err(_) => break,
            }
        }
        // Second stages finished meanwhile: their offsets stored, their
        // watermarks written with this batch.
        settle(&consumer, &drain.take_finished(), &mut aggregated);
        commit_due(&consumer, &mut last_commit);
        let Some((facts, items)) =
            write(&batch, &aggregated, conn, &mut producer, brokers, &mut stop).await?
        else {
            tracing::info!(
                messages = batch.len(),
                "Stopping before the batch was done; it will be delivered again."
            );
            break;
        };
        aggregated.clear();
        let offsets = batch
            .iter()
            .map(|m| (m.topic().to_owned(), m.partition(), m.offset()))
            .collect();
        // Room in the queue: waits only when the second stage is far behind.
        let permits = facts.len().clamp(1, MAX_PENDING_FACTS) as u32;
        // Room first: a batch already written goes to its second stage
        // whenever there is room, even with the stop raised (it is then
        // finished before the loop returns); only a full queue waits, and
        // the stop cuts that wait short (the batch is delivered again).
        let room = tokio::select! {
            biased;
            p = backlog.clone().acquire_many_owned(permits) => p.ok(),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(room) = room else { break };
        emit(telemetry::SecondStageBacklog {
            facts: MAX_PENDING_FACTS - backlog.available_permits(),
        });
        drain.queued();
        if queue
            .send(Staging {
                facts,
                items,
                offsets,
                _room: room,
            })
            .is_err()
        {
            anyhow::bail!("the aggregates and processed-events stage ended");
        }
    }
    // What is queued is finished if it can be (Redis and the broker up),
    // until the stop's own backoff gives up on it.
    drop(queue);
    let joined = stage.await;
    drain.abandon();
    let (returned, _) = joined.context("the aggregates and processed-events stage panicked")??;
    *aggregates = returned;
    settle(&consumer, &drain.take_finished(), &mut aggregated);
    if !aggregated.is_empty() {
        // Best effort: without it, the marks still guard a redelivery.
        let stored = tokio::task::block_in_place(|| -> Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            sync_watermarks(&tx, &aggregated)?;
            Ok(tx.commit()?)
        });
        if let Err(e) = stored {
            tracing::warn!(
                error = format!("{e:#}"),
                "Watermarks not stored at shutdown."
            );
        }
    }
    // A synchronous commit waits for the broker: off the runtime's worker.
    if let Err(e) = tokio::task::block_in_place(|| consumer.commit_stored()) {
        tracing::debug!(error = %e, "No offsets committed at shutdown.");
    }
    Ok(())
}

/// Commits the stored offsets in the background once [`COMMIT_INTERVAL`]
/// has passed since the last commit.
fn commit_due(consumer: &GroupConsumer, last: &mut std::time::Instant) {
    if last.elapsed() >= COMMIT_INTERVAL {
        consumer.commit_stored_in_background();
        *last = std::time::Instant::now();
    }
}

/// Most rejoins after being fenced within [`REJOIN_WINDOW`]; one more
/// means another process holds this member's name, and the loop stops.
pub const MAX_REJOINS: usize = 2;

/// See [`MAX_REJOINS`].
pub const REJOIN_WINDOW: Duration = Duration::from_secs(600);

/// When the consumer rejoined after being fenced, within [`REJOIN_WINDOW`].
#[derive(Default)]
struct Rejoins(std::collections::VecDeque<std::time::Instant>);

impl Rejoins {
    /// Whether one more rejoin at `now` stays within [`MAX_REJOINS`] per
    /// [`REJOIN_WINDOW`]; if so it is counted.
    fn allow(&mut self, now: std::time::Instant) -> bool {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) >= REJOIN_WINDOW)
        {
            self.0.pop_front();
        }
        if self.0.len() >= MAX_REJOINS {
            return false;
        }
        self.0.push_back(now);
        true
    }
}

/// Releases a revocation's wait on drop (see [`Drain::abandon`]).
struct Abandon(Arc<Drain>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// A written batch waiting for its second stage, holding its room in the queue.
struct Staging {
    facts: Vec<Fact>,
    items: Vec<usize>,
    offsets: Vec<Offset>,
    _room: tokio::sync::OwnedSemaphorePermit,
}

/// A batch whose second stage finished: its offsets stored (committed in
/// the background) and its partitions' watermarks raised.
fn settle(consumer: &GroupConsumer, offsets: &[Offset], aggregated: &mut Watermarks) {
    for (topic, partition, offset) in offsets {
        let w = aggregated
            .entry((topic.clone(), *partition))
            .or_insert(*offset);
        *w = (*w).max(*offset);
        if let Err(e) = consumer.store_offset(topic, *partition, *offset) {
            // The partition moved to another member; that member replays it.
            tracing::debug!(error = %e, partition, "Offset not stored.");
        }
    }
}

/// The second stage, batch after batch in the order written: each batch's
/// [`announce`], retried until it finishes; its offsets then reported as
/// done. Ends when the queue closes and is empty, or at the first batch
/// that could not finish before the stop (it and what follows are
/// delivered again). Hands back the aggregates and its producer.
async fn second_stage(
    mut aggregates: Aggregates,
    mut producer: Producer,
    brokers: String,
    stop: watch::Receiver<bool>,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Staging>,
    drain: Arc<Drain>,
    backlog: std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<(Aggregates, Producer)> {
    while let Some(Staging {
        facts,
        items,
        offsets,
        _room,
    }) = queued.recv().await
    {
        let (returned, fresh, finished) = announce(
            aggregates,
            facts,
            items,
            producer.clone(),
            brokers.clone(),
            stop.clone(),
        )
        .await?;
        aggregates = returned;
        if let Some(p) = fresh {
            producer = p;
        }
        if !finished {
            // Stopping: it and what is queued behind it are delivered again.
            drain.finished(Vec::new());
            while queued.try_recv().is_ok() {
                drain.finished(Vec::new());
            }
            break;
        }
        drain.finished(offsets);
        drop(_room);
        emit(telemetry::SecondStageBacklog {
            facts: MAX_PENDING_FACTS - backlog.available_permits(),
        });
    }
    Ok((aggregates, producer))
}

/// The first stage of a batch: its SQLite transaction, then its dead
/// letters. Returns the facts of the events handled (billed now or before)
/// with their line-item counts, or `None` when stopped first.
async fn write(
    batch: &[Received<'_>],
    aggregated: &Watermarks,
    conn: &mut Connection,
    producer: &mut Producer,
    brokers: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<(Vec<Fact>, Vec<usize>)>> {
    let mut backoff = Duration::from_millis(50);
    let (outcomes, watermarks) = loop {
        // SQLite blocks (and may wait for the write lock): the runtime moves
        // this worker's other tasks (the second stage, the relay) elsewhere.
        match tokio::task::block_in_place(|| handle_batch(conn, batch, aggregated)) {
            Ok(o) => break o,
            Err(e) => {
                emit(telemetry::BatchWriteFailed {
                    error: &e,
                    messages: batch.len(),
                });
                if !back_off(&mut backoff, stop).await {
                    return Ok(None);
                }
            }
        }
    };

    let mut facts = Vec::new();
    let mut items = Vec::new();
    let mut counted: Vec<((&str, &'static str), u64)> = Vec::new();
    for (msg, outcome) in batch.iter().zip(outcomes) {
        let outcome_label = match outcome {
            Outcome::Billed { fact, line_items } => {
                facts.push(fact);
                items.push(line_items);
                "billed"
            }
            Outcome::Duplicate {
                fact,
                line_items,
                first,
            } => {
                // First consumed at or below its partition's watermark: its
                // aggregates and processed-events record are done, however
                // long ago (the marks may have expired). Otherwise its
                // second stage may have been cut short: run it again, the
                // marks guarding the aggregates.
                let settled = watermarks
                    .get(&(fact.kind.topic().to_owned(), first.partition))
                    .is_some_and(|&w| first.offset <= w);
                tracing::debug!(offset = msg.offset(), settled, "Event seen before.");
                if !settled {
                    facts.push(fact);
                    items.push(line_items);
                }
                "duplicate"
            }
            Outcome::Poison { code, reason } => {
                let mut backoff = Duration::from_millis(50);
                while let Err(e) = dead_letter(producer, msg, code, &reason).await {
                    *producer = crate::kafka::producer(brokers, PRODUCE_TIMEOUT_MS)?;
                    emit(telemetry::KafkaDeliveryFailed {
                        what: "dead-letter",
                        records: 1,
                        error: &e,
                    });
                    if !back_off(&mut backoff, stop).await {
                        return Ok(None);
                    }
                }
                emit(telemetry::DeadLettered {
                    code,
                    reason: &reason,
                    topic: msg.topic(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                });
                "dead_letter"
            }
        };
        match counted
            .iter_mut()
            .find(|(k, _)| *k == (msg.topic(), outcome_label))
        {
            Some((_, n)) => *n += 1,
            None => counted.push(((msg.topic(), outcome_label), 1)),
        }
    }
    // Counted once per batch and label, not once per event under the registry's lock.
    for ((topic, outcome), count) in counted {
        emit(telemetry::EventsHandled {
            topic,
            outcome,
            count,
        });
    }
    Ok(Some((facts, items)))
}

/// The second stage of a batch: its facts applied to the Redis aggregates
/// (each guarded by its mark, so a replay adds nothing), then one
/// `processed-events` record per billed event of the stage, delivered. Returns the
/// aggregates (moved in for the stage), the fresh producer it made if
/// deliveries failed (as a broker that lost the old one's state needs), and
/// whether it finished: false when stopped first, and
/// then the batch's offsets must not be stored.
async fn announce(
    mut aggregates: Aggregates,
    facts: Vec<Fact>,
    items: Vec<usize>,
    mut producer: Producer,
    brokers: String,
    mut stop: watch::Receiver<bool>,
) -> Result<Staged> {
    let stop = &mut stop;
    let mut backoff = Duration::from_millis(50);
    let applied = loop {
        match aggregates.apply(&facts).await {
            Ok(a) => break a,
            Err(e) => {
                emit(telemetry::AggregatesFailed { error: &e });
                if !back_off(&mut backoff, stop).await {
                    return Ok((aggregates, None, false));
                }
            }
        }
    };
    let now = Timestamp::from_millis(crate::now_ms()).map_err(|e| anyhow::anyhow!("{e}"))?;
    for &i in &applied {
        if facts[i].kind.is_billed() {
            metrics().observe_latency(
                ((now.millis() - facts[i].occurred_at.millis()).max(0)) as f64 / 1000.0,
            );
        }
    }
    // A record for every billed fact of the stage, applied now or before:
    // a stage cut short between Redis and the broker left some undelivered,
    // and the replay cannot tell which. A record may thus repeat; its id
    // (derived from the event's) lets readers drop the repeat.
    let records: Vec<(String, String)> = facts
        .iter()
        .zip(&items)
        .filter(|(f, _)| f.kind.is_billed())
        .map(|(f, &n)| (f.user_id.to_string(), processed_event(f, n, now).to_json()))
        .collect();
    let mut replaced = false;
    let delivered = deliver(&records, &mut producer, &mut replaced, &brokers, stop).await?;
    Ok((aggregates, replaced.then_some(producer), delivered))
}

/// What a second stage hands back: the aggregates, a fresh producer if it
/// made one, and whether it finished.
type Staged = (Aggregates, Option<Producer>, bool);

/// Delivers a batch's `processed-events` records, all in flight at once;
/// what failed is sent again with a fresh producer (which then sets
/// `replaced`). Returns false when stopped first.
async fn deliver(
    records: &[(String, String)],
    producer: &mut Producer,
    replaced: &mut bool,
    brokers: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool> {
    let send = |producer: &Producer, i: usize| {
        let (key, payload) = &records[i];
        let producer = producer.clone();
        async move {
            producer
                .send(
                    topics::PROCESSED_EVENTS,
                    key.as_bytes(),
                    payload.as_bytes(),
                    &[],
                )
                .await
        }
    };
    let mut failed: Vec<usize> = (0..records.len()).collect();
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    while !failed.is_empty() {
        if !first {
            emit(telemetry::KafkaDeliveryFailed {
                what: "processed-events",
                records: failed.len(),
                error: &"the broker did not acknowledge them",
            });
            *producer = crate::kafka::producer(brokers, PRODUCE_TIMEOUT_MS)?;
            *replaced = true;
            if !back_off(&mut backoff, stop).await {
                return Ok(false);
            }
        }
        first = false;
        let results = futures::future::join_all(failed.iter().map(|&i| send(producer, i))).await;
        failed = failed
            .into_iter()
            .zip(results)
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
    }
    Ok(true)
}

async fn dead_letter(
    producer: &Producer,
    msg: &Received<'_>,
    code: &str,
    reason: &str,
) -> Result<()> {
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    producer
        .send(
            topics::DEAD_LETTER,
            msg.key(),
            msg.payload(),
            &[
                ("dlq-reason", reason),
                ("dlq-code", code),
                ("dlq-topic", msg.topic()),
                ("dlq-partition", &partition),
                ("dlq-offset", &offset),
            ],
        )
        .await
        .map_err(|e| anyhow::anyhow!("dead-letter delivery failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoins_are_allowed_twice_per_window() {
        let start = std::time::Instant::now();
        let mut r = Rejoins::default();
        assert!(r.allow(start));
        assert!(r.allow(start + Duration::from_secs(1)));
        assert!(
            !r.allow(start + Duration::from_secs(2)),
            "a third fencing within the window stops the loop"
        );
        assert!(
            r.allow(start + REJOIN_WINDOW),
            "the first rejoin has left the window"
        );
        assert!(!r.allow(start + REJOIN_WINDOW + Duration::from_secs(0)));
        assert!(r.allow(start + REJOIN_WINDOW + Duration::from_secs(1)));
    }
}
