//! `billing-bridge`: the native service between SQLite, Kafka and Redis.
//! [`run`] is the whole service (`billing-bridge run` calls it); the
//! modules below are its parts.
//!
//! - [`service`]: [`run`] — start-up, the workers, the HTTP side, drain on
//!   shutdown, and a non-zero end when a worker stops on its own.
//! - [`config`]: the strict configuration (file and environment).
//! - [`kafka`]: the Kafka adapter, the only user of the client library —
//!   the idempotent producer, the group consumer with its rebalance drain,
//!   the readiness client, topic creation through the admin API.
//! - [`relay`]: the transactional-outbox relay — produces outbox rows in
//!   order with an idempotent producer (acks=all) and deletes a row only
//!   after its delivery report says the broker has it.
//! - [`billing`]: one message to its SQLite rows (line items, api events,
//!   the ledger with the event's facts), idempotent on the event identity.
//! - [`aggregates`]: the Redis dashboard aggregates, marked and
//!   incremented together by one script; `rebuild-redis`.
//! - [`consumer`]: the consumer-group loop — batches, dead letters,
//!   aggregates, processed-events, offsets stored last.
//! - [`live`]: `/healthz`, `/readyz`, `/metrics` and the SSE live updates.
//! - [`metrics`]: the Prometheus registry.
//! - [`telemetry`]: typed events that log and count together.
//! - [`workers`]: the relay and a consumer as tasks, however they are hosted.

pub mod aggregates;
pub mod billing;
pub mod config;
pub mod consumer;
pub mod kafka;
pub mod live;
pub mod metrics;
pub mod open_calls;
pub mod relay;
pub mod service;
pub mod telemetry;
pub mod workers;

pub use config::Config;
pub use service::run;

/// Milliseconds since the Unix epoch, from the system clock (0 before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
