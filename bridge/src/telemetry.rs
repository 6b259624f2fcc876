//! The bridge's telemetry as small typed events: each is a struct naming
//! what happened with its facts, and [`Event::emit`] both logs it (at its
//! level, with its fields) and counts it in the Prometheus registry
//! ([`crate::metrics`]), so a log line and its metric never drift apart —
//! the pattern of Vector's `internal_events`. Call sites say
//! `telemetry::emit(BatchWriteFailed { .. })`; no module outside this one
//! pairs a log with a counter by hand.
//!
//! Metric names (all `billing_bridge_*`): `kafka_errors_total`,
//! `sqlite_errors_total`, `redis_errors_total`, `dead_letters_total{reason}`,
//! `events_total{topic,outcome}`, `second_stage_backlog_facts`,
//! `assigned_partitions`, `revocations_total{group,drained}`,
//! `consumer_fatal_total{rejoin}`, `relay_delivered_total`,
//! `relay_failed_total`, `sse_clients`.

use crate::metrics::{global as metrics, labels};

/// Something that happened, logged and counted together.
pub trait Event {
    fn emit(self);
}

/// Emits `event`: its log line and its metrics.
pub fn emit(event: impl Event) {
    event.emit()
}

/// Receiving from Kafka failed (the consumer retries).
pub struct KafkaReceiveFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
    /// True inside a batch being gathered (the batch is cut short there).
    pub in_batch: bool,
}

impl Event for KafkaReceiveFailed<'_> {
    fn emit(self) {
        metrics().inc("billing_bridge_kafka_errors_total", String::new(), 1);
        if self.in_batch {
            tracing::warn!(error = %self.error, "Kafka receive failed inside a batch.");
        } else {
            tracing::warn!(error = %self.error, "Kafka receive failed; retrying.");
        }
    }
}

/// Producing records failed; they are sent again with a fresh producer.
pub struct KafkaDeliveryFailed<'a> {
    /// What was produced: "dead-letter" or "processed-events".
    pub what: &'static str,
    pub records: usize,
    pub error: &'a dyn std::fmt::Display,
}

impl Event for KafkaDeliveryFailed<'_> {
    fn emit(self) {
        metrics().inc("billing_bridge_kafka_errors_total", String::new(), 1);
        tracing::warn!(what = self.what, records = self.records, error = %self.error, "Producing to Kafka failed; retrying.");
    }
}

/// A batch's SQLite transaction failed (rolled back; retried).
pub struct BatchWriteFailed<'a> {
    pub error: &'a anyhow::Error,
    pub messages: usize,
}

impl Event for BatchWriteFailed<'_> {
    fn emit(self) {
        metrics().inc("billing_bridge_sqlite_errors_total", String::new(), 1);
        tracing::warn!(
            error = format!("{:#}", self.error),
            messages = self.messages,
            "Writing the batch failed; retrying."
        );
    }
}

/// Updating the Redis aggregates failed (nothing changed; retried).
pub struct AggregatesFailed<'a> {
    pub error: &'a anyhow::Error,
}

impl Event for AggregatesFailed<'_> {
    fn emit(self) {
        metrics().inc("billing_bridge_redis_errors_total", String::new(), 1);
        tracing::warn!(
            error = format!("{:#}", self.error),
            "Updating the aggregates failed; retrying."
        );
    }
}

/// Redis went away under the live-notice subscription.
pub struct NoticeSubscriptionLost<'a> {
    pub error: &'a anyhow::Error,
}

impl Event for NoticeSubscriptionLost<'_> {
    fn emit(self) {
        metrics().inc("billing_bridge_redis_errors_total", String::new(), 1);
        tracing::warn!(
            error = format!("{:#}", self.error),
            "Live notices: Redis subscription lost; retrying in 1 s."
        );
    }
}

/// An event that can never be handled went to `dead-letter`.
pub struct DeadLettered<'a> {
    pub code: &'static str,
    pub reason: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl Event for DeadLettered<'_> {
    fn emit(self) {
        metrics().inc(
            "billing_bridge_dead_letters_total",
            labels(&[("reason", self.code)]),
            1,
        );
        tracing::warn!(
            reason = self.reason,
            code = self.code,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "Sent an event that can never be handled to dead-letter."
        );
    }
}

/// `count` messages of `topic` handled with one outcome ("billed",
/// "duplicate", "dead_letter") in a batch; counted, not logged.
pub struct EventsHandled<'a> {
    pub topic: &'a str,
    pub outcome: &'static str,
    pub count: u64,
}

impl Event for EventsHandled<'_> {
    fn emit(self) {
        metrics().inc(
            "billing_bridge_events_total",
            labels(&[("topic", self.topic), ("outcome", self.outcome)]),
            self.count,
        );
    }
}

/// Facts of written batches waiting for their second stage; a gauge.
pub struct SecondStageBacklog {
    pub facts: usize,
}

impl Event for SecondStageBacklog {
    fn emit(self) {
        metrics().set(
            "billing_bridge_second_stage_backlog_facts",
            String::new(),
            self.facts as i64,
        );
    }
}

/// The group gave this member partitions (`list`: `topic/partition ...`).
pub struct PartitionsAssigned<'a> {
    pub count: usize,
    pub list: &'a str,
}

impl Event for PartitionsAssigned<'_> {
    fn emit(self) {
        metrics().set(
            "billing_bridge_assigned_partitions",
            String::new(),
            self.count as i64,
        );
        tracing::info!(partitions = self.list, "Partitions assigned.");
    }
}

/// The group took this member's partitions (the eager protocol takes all).
pub struct PartitionsRevoked<'a> {
    pub list: &'a str,
}

impl Event for PartitionsRevoked<'_> {
    fn emit(self) {
        metrics().set("billing_bridge_assigned_partitions", String::new(), 0);
        tracing::info!(partitions = self.list, "Partitions revoked.");
    }
}

/// The consumer's client failed for good; `rejoin`: a new client takes
/// its place (fenced, within the rejoin budget), else the loop stops.
pub struct ConsumerFatal<'a> {
    pub error: &'a str,
    pub rejoin: bool,
}

impl Event for ConsumerFatal<'_> {
    fn emit(self) {
        metrics().inc(
            "billing_bridge_consumer_fatal_total",
            labels(&[("rejoin", if self.rejoin { "true" } else { "false" })]),
            1,
        );
        // The old client's partitions are gone (librdkafka unassigns a
        // fenced client without a rebalance callback).
        metrics().set("billing_bridge_assigned_partitions", String::new(), 0);
        if self.rejoin {
            tracing::warn!(
                error = self.error,
                "Fenced out of the group; rejoining with a new client under the same name."
            );
        } else {
            tracing::error!(
                error = self.error,
                "Fatal Kafka consumer error; the consumer stops."
            );
        }
    }
}

/// A rebalance failed.
pub struct RebalanceFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl Event for RebalanceFailed<'_> {
    fn emit(self) {
        metrics().inc("billing_bridge_kafka_errors_total", String::new(), 1);
        tracing::warn!(error = %self.error, "Rebalance failed.");
    }
}

/// Before a revocation: whether the queued second stages finished within
/// the wait (else the next member replays them), how long it waited, and
/// whether the finished offsets were committed.
pub struct RevokeDrained<'a> {
    pub group: &'a str,
    pub drained: bool,
    pub waited_ms: u64,
    pub committed: bool,
}

impl Event for RevokeDrained<'_> {
    fn emit(self) {
        metrics().inc(
            "billing_bridge_revocations_total",
            labels(&[
                ("group", self.group),
                ("drained", if self.drained { "true" } else { "false" }),
            ]),
            1,
        );
        if self.drained {
            tracing::info!(
                waited_ms = self.waited_ms,
                committed = self.committed,
                "Second stages finished before the partitions went."
            );
        } else {
            tracing::warn!(
                waited_ms = self.waited_ms,
                committed = self.committed,
                "Second stages still queued when the partitions went; the next member replays them (replays change nothing)."
            );
        }
    }
}

/// Consumer lag of one partition, from librdkafka's statistics; a gauge.
pub struct ConsumerLag<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub lag: i64,
}

impl Event for ConsumerLag<'_> {
    fn emit(self) {
        metrics().set(
            "billing_bridge_consumer_lag",
            labels(&[
                ("topic", self.topic),
                ("partition", &self.partition.to_string()),
            ]),
            self.lag,
        );
    }
}

/// A relay round's deliveries: rows the broker took and rows it did not
/// (those stay in the outbox for the next round); `backlog` is what is
/// left in the outbox.
pub struct RelayRound<'a> {
    pub delivered: usize,
    pub failed: usize,
    pub backlog: i64,
    pub first_error: Option<&'a str>,
}

impl Event for RelayRound<'_> {
    fn emit(self) {
        let m = metrics();
        m.inc(
            "billing_bridge_relay_delivered_total",
            String::new(),
            self.delivered as u64,
        );
        m.inc(
            "billing_bridge_relay_failed_total",
            String::new(),
            self.failed as u64,
        );
        m.set("billing_bridge_outbox_backlog", String::new(), self.backlog);
        if self.failed > 0 {
            tracing::warn!(
                failed = self.failed,
                error = self.first_error.unwrap_or(""),
                "The broker did not take some outbox rows; they stay for the next round."
            );
        } else if self.delivered > 0 {
            tracing::debug!(delivered = self.delivered, "Relayed outbox rows.");
        }
    }
}

/// Rows waiting in the outbox, read at the start of a round; a gauge.
pub struct OutboxBacklog {
    pub rows: i64,
}

impl Event for OutboxBacklog {
    fn emit(self) {
        metrics().set("billing_bridge_outbox_backlog", String::new(), self.rows);
    }
}

/// A live-update (SSE) client connected (`+1`) or left (`-1`).
pub struct SseClients {
    pub change: i64,
}

impl Event for SseClients {
    fn emit(self) {
        metrics().add("billing_bridge_sse_clients", String::new(), self.change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each emit of an event moves its counter, under the event's own label
    // (the log line is written by the same `emit`; not captured here).
    #[test]
    fn each_emit_counts_under_its_label() {
        let count = |name: &str| -> i64 {
            metrics()
                .render()
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let key = "billing_bridge_dead_letters_total{reason=\"telemetry_test\"}";
        let before = count(key);
        emit(DeadLettered {
            code: "telemetry_test",
            reason: "a test",
            topic: "token-metrics",
            partition: 1,
            offset: 7,
        });
        emit(DeadLettered {
            code: "telemetry_test",
            reason: "a test",
            topic: "token-metrics",
            partition: 1,
            offset: 8,
        });
        assert_eq!(count(key), before + 2);
    }
}
