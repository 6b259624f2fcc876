//! `billing-bridge`: the native service between SQLite, Kafka and Redis.
//!
//! - [`config`]: the strict configuration (file and environment).
//! - [`topics`]: creates the topics that are missing, with the configured
//!   partitions and retention, through the Kafka admin API.
//! - [`relay`]: the transactional-outbox relay — produces outbox rows in
//!   order with an idempotent producer (acks=all) and deletes a row only
//!   after its delivery report says the broker has it.
//!
//! - [`consumer`]: the `token-metrics` consumer — line items priced at the
//!   event's time, idempotent on the event identity, poison to dead-letter,
//!   offsets stored only after the writes they cover.
//!
//! Still to come: the inference-events and analytics consumers, Redis
//! aggregates, processed-events, live updates (SSE), metrics, `rebuild-redis`.

pub mod config;
pub mod consumer;
pub mod relay;
pub mod topics;

pub use config::Config;
