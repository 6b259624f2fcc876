//! The Kafka adapter: every use of the Kafka client library (rdkafka, on
//! librdkafka) is in this module, behind small types of our own — the
//! idempotent [`Producer`] (relay, dead letters, processed-events), the
//! [`GroupConsumer`] with its lag and rebalance telemetry and its
//! [`Drain`], the [`Received`] record, the [`MetadataClient`] behind
//! `/readyz`, and [`ensure_topics`] through the admin API. Nothing here
//! depends on one broker's quirks; any Kafka-protocol cluster works
//! through `brokers`.

use crate::config::TopicsConfig;
use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext, Statistics};
use std::time::Duration;

/// An idempotent producer: acks from all in-sync replicas, ordered
/// retries; a record not delivered within the delivery timeout fails.
/// Cheap to clone (the clones share one client).
#[derive(Clone)]
pub struct Producer(FutureProducer);

/// An idempotent producer whose records fail when not delivered within
/// `delivery_timeout_ms` (librdkafka's `message.timeout.ms`).
pub fn producer(brokers: &str, delivery_timeout_ms: u64) -> Result<Producer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", delivery_timeout_ms.to_string())
        .set("linger.ms", "5")
        .create()
        .map(Producer)
        .context("creating the Kafka producer")
}

impl Producer {
    /// Sends one record of `topic` with `key`, `payload` and `headers`
    /// (name, value); resolves once the broker acknowledged it, or with
    /// why not. Waits up to 30 s for room in the client's queue.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), String> {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if !headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(headers.len());
            for (k, v) in headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(*v),
                });
            }
            record = record.headers(h);
        }
        self.0
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }
}

/// One record as the group consumer received it.
pub struct Received<'a>(BorrowedMessage<'a>);

impl Received<'_> {
    pub fn topic(&self) -> &str {
        self.0.topic()
    }
    pub fn partition(&self) -> i32 {
        self.0.partition()
    }
    pub fn offset(&self) -> i64 {
        self.0.offset()
    }
    /// The key, empty when there is none.
    pub fn key(&self) -> &[u8] {
        self.0.key().unwrap_or_default()
    }
    /// The payload, empty when there is none.
    pub fn payload(&self) -> &[u8] {
        self.0.payload().unwrap_or_default()
    }
}

/// How a group member joins and fetches.
pub struct Membership<'a> {
    pub group: &'a str,
    /// Static membership under this name (`group.instance.id`), if any.
    pub instance_id: Option<&'a str>,
    /// `fetch.wait.max.ms`, in ms.
    pub fetch_wait_ms: u64,
    /// `session.timeout.ms`, in ms; heartbeats every third of it, at most every 3 s.
    pub session_timeout_ms: u64,
}

/// A member of a consumer group. Offsets are stored only by the caller,
/// after the writes they cover (`enable.auto.offset.store=false`), and
/// committed by the caller ([`GroupConsumer::commit_stored_in_background`]);
/// before partitions are revoked, the [`Drain`] is waited for.
pub struct GroupConsumer(StreamConsumer<LagContext>);

/// A member of `m.group`, sharing `drain` with its rebalance callback.
pub fn group_consumer(
    brokers: &str,
    m: &Membership<'_>,
    drain: std::sync::Arc<Drain>,
) -> Result<GroupConsumer> {
    let mut config = ClientConfig::new();
    if let Some(id) = m.instance_id {
        config.set("group.instance.id", id);
    }
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", m.group)
        // Committed by the consumer loop (`commit_stored_in_background`,
        // every second) and before a revocation, never by librdkafka
        // itself: its revoke-time auto-commit also sends the offsets of an
        // assignment already lost to a session timeout, which the broker
        // answers FENCED_INSTANCE_ID for a static member — a fatal error
        // that stopped the bridge in `make faults` (librdkafka PR #5585,
        // "Don't commit offsets of a lost assignment", after 2.12.1).
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", m.fetch_wait_ms.to_string())
        .set("session.timeout.ms", m.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (m.session_timeout_ms / 3).clamp(100, 3000).to_string(),
        )
        .create_with_context(LagContext {
            drain,
            group: m.group.to_owned(),
            assigned: std::sync::atomic::AtomicBool::new(false),
            rebalances: std::sync::atomic::AtomicU64::new(0),
        })
        .map(GroupConsumer)
        .context("creating the Kafka consumer")
}

impl GroupConsumer {
    pub fn subscribe(&self, topics: &[&str]) -> Result<()> {
        Ok(self.0.subscribe(topics)?)
    }

    /// The next record; rebalances (and their [`Drain`]) happen inside.
    pub async fn recv(&self) -> Result<Received<'_>, rdkafka::error::KafkaError> {
        self.0.recv().await.map(Received)
    }

    /// A fatal client error: it never clears on this client, so retrying
    /// with it would bill nothing for good.
    pub fn fatal_error(&self) -> Option<Fatal> {
        self.0.client().fatal_error().map(|(code, reason)| Fatal {
            fenced: code == rdkafka::types::RDKafkaErrorCode::FencedInstanceId,
            description: format!("{code:?}: {reason}"),
        })
    }

    /// Stores `offset` of (`topic`, `partition`) as consumed (committed
    /// as `offset + 1` in the background); fails when the partition is no
    /// longer this member's.
    pub fn store_offset(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        Ok(self.0.store_offset(topic, partition, offset)?)
    }

    /// Commits the stored offsets now and waits for the broker; nothing
    /// when the assignment was lost (its offsets are no longer this
    /// member's to commit).
    pub fn commit_stored(&self) -> Result<()> {
        if !self.may_commit() {
            anyhow::bail!("no assignment held; nothing committed");
        }
        Ok(self.0.commit_consumer_state(CommitMode::Sync)?)
    }

    /// Sends the stored offsets to the broker without waiting (errors are
    /// the next commit's to fix); nothing when the assignment was lost.
    pub fn commit_stored_in_background(&self) {
        if self.may_commit() {
            let _ = self.0.commit_consumer_state(CommitMode::Async);
        }
    }

    /// How many revocations and assignments this member has been through;
    /// a message received after it changed belongs to the new assignment.
    pub fn rebalances(&self) -> u64 {
        self.0
            .context()
            .rebalances
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this member holds an assignment it has not lost.
    fn may_commit(&self) -> bool {
        self.0
            .context()
            .assigned
            .load(std::sync::atomic::Ordering::SeqCst)
            && !self.0.assignment_lost()
    }
}

/// A consumer's fatal error ([`GroupConsumer::fatal_error`]).
#[derive(Debug, Clone)]
pub struct Fatal {
    /// FENCED_INSTANCE_ID: the broker gave this member's static name
    /// (`group.instance.id`) to a newer member — another process under
    /// the same name, or this client's own rejoin after an assignment lost
    /// to a long broker outage, with a commit or heartbeat of the old
    /// membership answered after it (seen in `make faults`; librdkafka PR
    /// #5585 fixes a related case after 2.12.1). A new client under the
    /// same name takes the membership back.
    pub fenced: bool,
    /// The error code and librdkafka's reason.
    pub description: String,
}

/// A client kept for readiness probes (one per probe would start
/// librdkafka's threads and connections every few seconds).
pub struct MetadataClient(std::sync::Arc<BaseConsumer>);

pub fn metadata_client(brokers: &str) -> Result<MetadataClient> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map(|c| MetadataClient(std::sync::Arc::new(c)))
        .context("creating the Kafka client for /readyz")
}

impl MetadataClient {
    /// Whether the cluster's metadata comes back within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> Result<()> {
        let client = self.0.clone();
        tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout).map(|_| ()))
            .await
            .context("the metadata probe panicked")?
            .context("reading the cluster's metadata")
    }
}

/// Creates each of the billing topics that does not exist yet, with the
/// configured partitions, replication and retention; returns the ones
/// created.
pub async fn ensure_topics(brokers: &str, cfg: &TopicsConfig) -> Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .context("reading topic metadata from the broker")?;
    let existing: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    let retention = cfg.retention_ms.to_string();
    let missing: Vec<NewTopic> = billing_core::events::topics::ALL
        .iter()
        .filter(|t| !existing.contains(t))
        .map(|t| {
            NewTopic::new(t, cfg.partitions, TopicReplication::Fixed(cfg.replication))
                .set("retention.ms", &retention)
        })
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let results = admin
        .create_topics(
            missing.iter(),
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("creating topics")?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "Topic appeared meanwhile.")
            }
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    for t in &created {
        tracing::info!(topic = %t, partitions = cfg.partitions, "Created topic.");
    }
    Ok(created)
}

/// Feeds consumer lag per partition into the metrics from librdkafka's
/// statistics, and drains the second stages before partitions go.
pub struct LagContext {
    drain: std::sync::Arc<Drain>,
    group: String,
    /// Between an assignment and the revocation that ends it: the only
    /// time offsets may be committed. After an assignment lost to a
    /// session timeout librdkafka clears its own "lost" flag while it
    /// still unassigns, and a commit sent then carries no member id; the
    /// broker answers FENCED_INSTANCE_ID for a static member, which is
    /// fatal (seen in `make faults` with the broker away for 60 s).
    assigned: std::sync::atomic::AtomicBool,
    /// Revocations and assignments so far (see [`GroupConsumer::rebalances`]).
    rebalances: std::sync::atomic::AtomicU64,
}

/// Offsets of one (topic, partition): (topic, partition, offset).
pub type Offset = (String, i32, i64);

/// The batches written to SQLite whose second stage (Redis aggregates,
/// processed-events) has not finished, and the offsets of those that
/// finished, not yet taken by the consumer loop. Shared by the loop, its
/// second stage and the rebalance callback: before partitions are revoked
/// the callback waits (at most [`DRAIN_WAIT`]) until nothing is queued,
/// stores the finished batches' offsets and commits them, so the member
/// that gets the partitions next starts after them instead of replaying
/// them (a replay changes nothing — every step is guarded — but repeats
/// the work and the processed-events records).
#[derive(Default)]
pub struct Drain {
    state: std::sync::Mutex<DrainState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct DrainState {
    queued: usize,
    finished: Vec<Offset>,
}

/// Longest a revocation waits for queued second stages (Redis or the
/// broker away makes them wait); the partitions then go anyway and the
/// next member replays what was not finished.
pub const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

impl Drain {
    /// A written batch was queued for its second stage.
    pub fn queued(&self) {
        self.state.lock().unwrap().queued += 1;
    }

    /// A queued batch's second stage finished (`offsets`), or gave up (none).
    pub fn finished(&self, offsets: Vec<Offset>) {
        let mut s = self.state.lock().unwrap();
        s.queued = s.queued.saturating_sub(1);
        s.finished.extend(offsets);
        self.changed.notify_all();
    }

    /// Nothing more will finish (the second stage ended): a revocation
    /// waits no longer.
    pub fn abandon(&self) {
        self.state.lock().unwrap().queued = 0;
        self.changed.notify_all();
    }

    /// The finished batches' offsets not yet taken.
    pub fn take_finished(&self) -> Vec<Offset> {
        std::mem::take(&mut self.state.lock().unwrap().finished)
    }

    /// Waits until nothing is queued or `wait` passed; returns whether it
    /// drained and a copy of the finished offsets (left for the loop,
    /// which also raises its watermarks from them).
    fn wait_drained(&self, wait: std::time::Duration) -> (bool, Vec<Offset>) {
        let s = self.state.lock().unwrap();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, wait, |s| s.queued > 0)
            .unwrap();
        (s.queued == 0, s.finished.clone())
    }
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    crate::telemetry::emit(crate::telemetry::ConsumerLag {
                        topic,
                        partition: *partition,
                        lag: p.consumer_lag,
                    });
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {
    /// Before partitions are revoked: the queued second stages finished
    /// and their offsets committed (see [`Drain`]). Runs inside the
    /// consumer loop's `recv`, so no SQLite write is in flight; messages
    /// of a batch being gathered are dropped by the loop when it sees
    /// [`GroupConsumer::rebalances`] change. The wait gives the runtime's
    /// worker to other tasks (`block_in_place`), as the second stage must
    /// run meanwhile.
    fn pre_rebalance(
        &self,
        base: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        let rdkafka::consumer::Rebalance::Revoke(_) = rebalance else {
            return;
        };
        let held = self
            .assigned
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        self.rebalances
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if base.assignment_lost() || !held {
            // Lost to a session timeout: the partitions are already
            // another member's, and a commit now would be refused as
            // fenced (fatal for a static member).
            crate::telemetry::emit(crate::telemetry::RevokeDrained {
                group: &self.group,
                drained: false,
                waited_ms: 0,
                committed: false,
            });
            return;
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let started = std::time::Instant::now();
        // The wait and the synchronous commit hand the runtime's worker to
        // other tasks (block_in_place); a single-threaded runtime would
        // run the second stage only after this returns, so it waits no time.
        let settle = |wait| {
            let (drained, finished) = self.drain.wait_drained(wait);
            for (topic, partition, offset) in &finished {
                let _ = base.store_offset(topic, *partition, *offset);
            }
            (drained, base.commit_consumer_state(CommitMode::Sync))
        };
        let (drained, committed) = if multi_thread {
            tokio::task::block_in_place(|| settle(DRAIN_WAIT))
        } else {
            settle(std::time::Duration::ZERO)
        };
        crate::telemetry::emit(crate::telemetry::RevokeDrained {
            group: &self.group,
            drained,
            waited_ms: started.elapsed().as_millis() as u64,
            committed: committed.is_ok(),
        });
    }

    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        let list = |tpl: &rdkafka::TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match rebalance {
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                self.assigned
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                self.rebalances
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                crate::telemetry::emit(crate::telemetry::PartitionsAssigned {
                    count: tpl.count(),
                    list: &list(tpl),
                })
            }
            rdkafka::consumer::Rebalance::Revoke(tpl) => {
                crate::telemetry::emit(crate::telemetry::PartitionsRevoked { list: &list(tpl) })
            }
            rdkafka::consumer::Rebalance::Error(e) => {
                // rdkafka unassigns after an error: nothing is held.
                self.assigned
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                crate::telemetry::emit(crate::telemetry::RebalanceFailed { error: e })
            }
        }
    }
}
