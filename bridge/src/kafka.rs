//! Everything that speaks Kafka's client settings, in one place: the
//! idempotent producer (relay, dead letters, processed-events), the group
//! consumer with its lag and rebalance telemetry, and the metadata client
//! behind `/readyz`. Nothing here depends on one broker's quirks; any
//! Kafka-protocol cluster works through `brokers`.

use crate::metrics::{global as metrics, labels};
use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, ClientContext, Statistics};

/// An idempotent producer: acks from all in-sync replicas, ordered retries;
/// a message not delivered within `delivery_timeout_ms` fails.
pub fn producer(brokers: &str, delivery_timeout_ms: u64) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", delivery_timeout_ms.to_string())
        .set("linger.ms", "5")
        .create()
        .context("creating the Kafka producer")
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

/// A member of `m.group`: offsets stored only by the caller after the
/// writes they cover (`enable.auto.offset.store=false`), committed in the
/// background.
pub fn group_consumer(brokers: &str, m: &Membership<'_>) -> Result<StreamConsumer<LagContext>> {
    let mut config = ClientConfig::new();
    if let Some(id) = m.instance_id {
        config.set("group.instance.id", id);
    }
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", m.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", m.fetch_wait_ms.to_string())
        .set("session.timeout.ms", m.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (m.session_timeout_ms / 3).clamp(100, 3000).to_string(),
        )
        .create_with_context(LagContext)
        .context("creating the Kafka consumer")
}

/// A client kept for readiness probes (one per probe would start
/// librdkafka's threads and connections every few seconds).
pub fn metadata_client(brokers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka client for /readyz")
}

/// Feeds consumer lag per partition into the metrics from librdkafka's statistics.
pub struct LagContext;

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics().set(
                        "billing_bridge_consumer_lag",
                        labels(&[("topic", topic), ("partition", &partition.to_string())]),
                        p.consumer_lag,
                    );
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {
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
                metrics().set(
                    "billing_bridge_assigned_partitions",
                    String::new(),
                    tpl.count() as i64,
                );
                tracing::info!(partitions = list(tpl), "Partitions assigned.")
            }
            rdkafka::consumer::Rebalance::Revoke(tpl) => {
                // The eager protocol (range) revokes the whole assignment.
                metrics().set("billing_bridge_assigned_partitions", String::new(), 0);
                tracing::info!(partitions = list(tpl), "Partitions revoked.")
            }
            rdkafka::consumer::Rebalance::Error(e) => {
                tracing::warn!(error = %e, "Rebalance failed.")
            }
        }
    }
}
