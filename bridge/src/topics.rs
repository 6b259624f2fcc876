//! Topic set-up through the Kafka admin API: nothing broker-specific.

use crate::config::TopicsConfig;
use anyhow::{Context, Result};
use billing_core::events::topics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::time::Duration;

/// Creates each of the billing topics that does not exist yet; returns the ones created.
pub async fn ensure(brokers: &str, cfg: &TopicsConfig) -> Result<Vec<String>> {
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
    let missing: Vec<NewTopic> = topics::ALL
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
