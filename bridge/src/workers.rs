//! The bridge's two loops as tasks: the outbox relay (woken by the
//! components' Redis nudges, polling meanwhile) and one consumer of the
//! event topics. `billing-bridge run` starts them beside its HTTP side; the
//! end-to-end tests and the benchmark start them in their own process.

use crate::aggregates::Aggregates;
use crate::config::RelayConfig;
use crate::{consumer, relay};
use anyhow::Result;
use std::path::Path;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Workers {
    pub relayed: JoinHandle<Result<()>>,
    pub consumed: JoinHandle<Result<()>>,
}

impl Workers {
    /// Starts both loops; they end when `stop` is raised.
    pub fn spawn(
        database: &Path,
        brokers: &str,
        redis_url: &str,
        relay_cfg: RelayConfig,
        settings: consumer::Settings,
        mark_ttl_s: u64,
        stop: watch::Receiver<bool>,
    ) -> Result<Self> {
        let relay = relay::Relay::with(database, brokers, relay_cfg)?;
        let (nudge_tx, nudge_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(relay::listen_for_nudges(redis_url.to_owned(), nudge_tx));
        let relayed = tokio::spawn({
            let mut stop = stop.clone();
            async move {
                relay
                    .run(nudge_rx, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }
        });
        let mut conn = billing_migrations::open(database)?;
        let mut aggregates = Aggregates::new(redis_url, mark_ttl_s);
        let brokers = brokers.to_owned();
        let consumed = tokio::spawn(async move {
            consumer::run(&brokers, &settings, &mut conn, &mut aggregates, stop).await
        });
        Ok(Self { relayed, consumed })
    }

    /// Waits for both loops to end (raise `stop` first).
    pub async fn join(self) -> Result<()> {
        self.relayed.await??;
        self.consumed.await??;
        Ok(())
    }
}
