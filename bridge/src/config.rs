//! Configuration: a TOML file (unknown keys are errors) and environment
//! overrides. Every setting has a default suited to the local run.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The SQLite file the components write (`BILLING_DB`). Example: `data/billing.db`.
    pub database: PathBuf,
    /// Kafka bootstrap servers (`BILLING_KAFKA_BROKERS`). Example: `127.0.0.1:9092`.
    pub brokers: String,
    /// Redis, for nudges and aggregates (`BILLING_REDIS_URL`). Example: `redis://127.0.0.1:6379`.
    pub redis_url: String,
    pub relay: RelayConfig,
    pub topics: TopicsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Most outbox rows produced per round. Example: 500.
    pub batch_size: usize,
    /// How often the outbox is read when no nudge arrives, in ms. Example: 500.
    pub poll_interval_ms: u64,
    /// How long a message may wait for the broker before the round gives up
    /// on it (it stays in the outbox), in ms. Example: 10000.
    pub delivery_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Partitions of each topic created at start-up. Example: 6.
    pub partitions: i32,
    /// Replication factor of each topic created at start-up. Example: 1.
    pub replication: i32,
    /// `retention.ms` of each topic created at start-up; -1 keeps forever. Example: 604800000.
    pub retention_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database: PathBuf::from("data/billing.db"),
            brokers: "127.0.0.1:9092".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            relay: RelayConfig::default(),
            topics: TopicsConfig::default(),
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { batch_size: 500, poll_interval_ms: 500, delivery_timeout_ms: 10_000 }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self { partitions: 6, replication: 1, retention_ms: 7 * 24 * 3600 * 1000 }
    }
}

impl Config {
    /// Reads `path` (when given), then applies environment overrides, then checks.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut c = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end())).with_context(|| format!("invalid config {}", p.display()))?
            }
            None => Config::default(),
        };
        if let Ok(v) = std::env::var("BILLING_DB") {
            c.database = v.into();
        }
        if let Ok(v) = std::env::var("BILLING_KAFKA_BROKERS") {
            c.brokers = v;
        }
        if let Ok(v) = std::env::var("BILLING_REDIS_URL") {
            c.redis_url = v;
        }
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            bail!("brokers: give at least one host:port");
        }
        if self.relay.batch_size == 0 || self.relay.batch_size > 10_000 {
            bail!("relay.batch_size = {}: use 1 to 10000", self.relay.batch_size);
        }
        if self.relay.poll_interval_ms == 0 {
            bail!("relay.poll_interval_ms must be positive");
        }
        if self.topics.partitions < 1 || self.topics.replication < 1 {
            bail!("topics.partitions and topics.replication must be at least 1");
        }
        if self.topics.retention_ms < -1 || self.topics.retention_ms == 0 {
            bail!("topics.retention_ms = {}: use a positive number of ms, or -1 to keep forever", self.topics.retention_ms);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Unknown keys and bad values are refused with the key in the message; omitted keys take defaults.
    #[test]
    fn strict() {
        let c: Config = toml::from_str("brokers = \"k:9092\"\n[relay]\nbatch_size = 10\n").unwrap();
        assert_eq!((c.brokers.as_str(), c.relay.batch_size, c.relay.poll_interval_ms), ("k:9092", 10, 500));
        assert!(toml::from_str::<Config>("broker = \"x\"").unwrap_err().to_string().contains("unknown field `broker`"));
        let mut c = Config::default();
        c.topics.retention_ms = 0;
        assert!(c.check().unwrap_err().to_string().contains("retention_ms"));
    }
}
