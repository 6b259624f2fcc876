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
    /// The bootstrap admin key, the same value as the components'
    /// `admin_api_key` variable (`BILLING_ADMIN_API_KEY`); empty: only
    /// stored API keys open the live stream. Example: "" .
    pub admin_api_key: String,
    pub relay: RelayConfig,
    pub topics: TopicsConfig,
    pub consumer: ConsumerConfig,
    pub aggregates: AggregatesConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Kafka consumer group; every bridge process in it shares the partitions. Example: "billing-bridge".
    pub group: String,
    /// Most messages handled in one SQLite transaction. Example: 2000.
    pub batch_size: usize,
    /// How long a batch waits for more messages after its first, in ms. Example: 5.
    pub batch_wait_ms: u64,
    /// How long the broker may hold a fetch while it has nothing new, in ms
    /// (`fetch.wait.max.ms`); Kafka answers as soon as data arrives, so
    /// this bounds only idle polling. Example: 500.
    pub fetch_wait_ms: u64,
    /// How long the group waits for a silent member (a killed process)
    /// before its partitions go to the others, in ms (`session.timeout.ms`;
    /// heartbeats every third of it, at most every 3 s). Example: 45000.
    pub session_timeout_ms: u64,
    /// This process's static member name in the group (`group.instance.id`):
    /// restarted under the same name it takes its partitions back at once
    /// instead of waiting out the dead member's session. Empty: the host
    /// name and `http.listen`, stable across restarts of one installation;
    /// "-": none (dynamic membership). Two processes must not share one.
    pub instance_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatesConfig {
    /// How long Redis remembers that an event reached the aggregates, in
    /// seconds; keep it above the topics' retention. Example: 691200 (8 days).
    pub mark_ttl_s: u64,
    /// How often the bridge checks that Redis still holds the aggregates
    /// (and rebuilds them from SQLite if not), in seconds. Example: 30.
    pub check_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of /healthz, /readyz, /metrics and /events/stream (`BILLING_HTTP_LISTEN`). Example: "127.0.0.1:3100".
    pub listen: String,
    /// Seconds between heartbeat comments on an idle live stream. Example: 15.
    pub sse_heartbeat_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Most outbox rows produced per round. Example: 2000.
    pub batch_size: usize,
    /// How often the outbox is read when no nudge arrives, in ms. Example: 500.
    pub poll_interval_ms: u64,
    /// How long a message may wait for the broker before the round gives up
    /// on it (it stays in the outbox), in ms. Example: 10000.
    pub delivery_timeout_ms: u64,
    /// One bridge process relays at a time (in outbox order); it holds a
    /// lease in SQLite, renewed by the first round after half of it has
    /// passed. Another takes over when the lease is this old, in ms.
    /// Example: 15000.
    pub lease_ms: u64,
    /// A gateway call still open this long after its last write (its
    /// gateway instance ended before the stream did: killed, or stopped
    /// at its time limit) is billed by the bridge with the usage it
    /// recorded, in s; keep it above the gateway's time limit. Example: 1800.
    pub open_gateway_calls_after_s: u64,
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
            admin_api_key: String::new(),
            relay: RelayConfig::default(),
            topics: TopicsConfig::default(),
            consumer: ConsumerConfig::default(),
            aggregates: AggregatesConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            group: "billing-bridge".into(),
            batch_size: 2000,
            batch_wait_ms: 5,
            fetch_wait_ms: 500,
            session_timeout_ms: 45_000,
            instance_id: String::new(),
        }
    }
}

impl Default for AggregatesConfig {
    fn default() -> Self {
        Self {
            mark_ttl_s: 8 * 24 * 3600,
            check_interval_s: 30,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3100".into(),
            sse_heartbeat_s: 15,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 2000,
            poll_interval_ms: 500,
            delivery_timeout_ms: 10_000,
            lease_ms: 15_000,
            open_gateway_calls_after_s: 1800,
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            partitions: 6,
            replication: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

impl Config {
    /// Reads `path` (when given), then applies environment overrides, then checks.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut c = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
                    .with_context(|| format!("invalid config {}", p.display()))?
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
        if let Ok(v) = std::env::var("BILLING_ADMIN_API_KEY") {
            c.admin_api_key = v;
        }
        if let Ok(v) = std::env::var("BILLING_HTTP_LISTEN") {
            c.http.listen = v;
        }
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            bail!("brokers: give at least one host:port");
        }
        if self.relay.batch_size == 0 || self.relay.batch_size > 10_000 {
            bail!(
                "relay.batch_size = {}: use 1 to 10000",
                self.relay.batch_size
            );
        }
        if self.relay.poll_interval_ms == 0 {
            bail!("relay.poll_interval_ms must be positive");
        }
        if self.relay.lease_ms <= self.relay.poll_interval_ms
            || self.relay.lease_ms <= self.relay.delivery_timeout_ms
        {
            bail!("relay.lease_ms = {} must exceed relay.poll_interval_ms and relay.delivery_timeout_ms", self.relay.lease_ms);
        }
        if self.topics.partitions < 1 || self.topics.replication < 1 {
            bail!("topics.partitions and topics.replication must be at least 1");
        }
        if self.topics.retention_ms < -1 || self.topics.retention_ms == 0 {
            bail!(
                "topics.retention_ms = {}: use a positive number of ms, or -1 to keep forever",
                self.topics.retention_ms
            );
        }
        // Kafka's brokers refuse sessions outside group.min.session.timeout.ms
        // and group.max.session.timeout.ms (6 s and 30 min by default).
        if !(6_000..=1_800_000).contains(&self.consumer.session_timeout_ms) {
            bail!(
                "consumer.session_timeout_ms = {}: use 6000 to 1800000",
                self.consumer.session_timeout_ms
            );
        }
        if self.consumer.group.trim().is_empty() {
            bail!("consumer.group must not be empty");
        }
        if self.consumer.batch_size == 0 || self.consumer.batch_size > 10_000 {
            bail!(
                "consumer.batch_size = {}: use 1 to 10000",
                self.consumer.batch_size
            );
        }
        if self.aggregates.mark_ttl_s < 3600 {
            bail!("aggregates.mark_ttl_s = {}: use at least 3600, and more than the topics' retention", self.aggregates.mark_ttl_s);
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "http.listen = {:?}: give an address such as 127.0.0.1:3100",
                self.http.listen
            );
        }
        if self.aggregates.check_interval_s == 0 {
            bail!("aggregates.check_interval_s must be positive");
        }
        if self.http.sse_heartbeat_s == 0 {
            bail!("http.sse_heartbeat_s must be positive");
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
        assert_eq!(
            (
                c.brokers.as_str(),
                c.relay.batch_size,
                c.relay.poll_interval_ms
            ),
            ("k:9092", 10, 500)
        );
        assert!(toml::from_str::<Config>("broker = \"x\"")
            .unwrap_err()
            .to_string()
            .contains("unknown field `broker`"));
        let mut c = Config::default();
        c.topics.retention_ms = 0;
        assert!(c.check().unwrap_err().to_string().contains("retention_ms"));
    }
}
