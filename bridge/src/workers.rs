//! The bridge's two loops as tasks: the outbox relay (woken by the
//! components' Redis nudges, polling meanwhile) and one consumer of the
//! event topics. `billing-bridge run` starts them beside its HTTP side; the
//! end-to-end tests and the benchmark start them in their own process.
//! Beside them, a small task bills gateway calls left open ([`crate::open_calls`]).

use crate::aggregates::Aggregates;
use crate::config::RelayConfig;
use crate::{consumer, relay};
use anyhow::Result;
use std::path::Path;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The consumer's SQLite page cache, in KiB (`PRAGMA cache_size`).
pub const CONSUMER_CACHE_KIB: u32 = 32 * 1024;

/// The running loops; a loop already reported by [`Workers::first_to_end`] is gone.
pub struct Workers {
    relayed: Option<JoinHandle<Result<()>>>,
    consumed: Option<JoinHandle<Result<()>>>,
}

/// How a loop ended: its own result, or the panic that ended it.
pub type Ended = Result<Result<()>, tokio::task::JoinError>;

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
        tokio::spawn(bill_open_calls(
            database.to_owned(),
            relay_cfg.open_gateway_calls_after_s,
            stop.clone(),
        ));
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
        // A batch dirties pages all over the line-item and ledger indexes;
        // with SQLite's default 2 MiB cache they spilled to the WAL in the
        // middle of the transaction. 32 MiB holds a 2,000-event batch.
        conn.pragma_update(None, "cache_size", -(CONSUMER_CACHE_KIB as i64))?;
        let mut aggregates = Aggregates::new(redis_url, mark_ttl_s);
        let brokers = brokers.to_owned();
        let consumed = tokio::spawn(async move {
            consumer::run(&brokers, &settings, &mut conn, &mut aggregates, stop).await
        });
        Ok(Self {
            relayed: Some(relayed),
            consumed: Some(consumed),
        })
    }

    /// Resolves when either loop ends (which it should only do after
    /// `stop`), naming it ("relay" or "consumer") with how it ended; never
    /// resolves once both were reported.
    pub async fn first_to_end(&mut self) -> (&'static str, Ended) {
        let (relay_ended, ended) = match (&mut self.relayed, &mut self.consumed) {
            (Some(r), Some(c)) => tokio::select! {
                e = r => (true, e),
                e = c => (false, e),
            },
            (Some(r), None) => (true, r.await),
            (None, Some(c)) => (false, c.await),
            (None, None) => std::future::pending().await,
        };
        if relay_ended {
            self.relayed = None;
            ("relay", ended)
        } else {
            self.consumed = None;
            ("consumer", ended)
        }
    }

    /// Waits for the loops still running to end (raise `stop` first);
    /// the first error or panic among them is returned.
    pub async fn join(self) -> Result<()> {
        for handle in [self.relayed, self.consumed].into_iter().flatten() {
            handle.await??;
        }
        Ok(())
    }
}

/// Every `after_s` (at most 30 s), bills the gateway calls open longer than
/// `after_s`; a failed round is logged and tried again next time.
async fn bill_open_calls(
    database: std::path::PathBuf,
    after_s: u64,
    mut stop: watch::Receiver<bool>,
) {
    let every = std::time::Duration::from_secs(after_s.clamp(1, 30));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let database = database.clone();
        let round = tokio::task::spawn_blocking(move || -> Result<usize> {
            let mut conn = billing_migrations::open(&database)?;
            let before =
                billing_core::Timestamp::from_millis(crate::now_ms() - after_s as i64 * 1000)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            crate::open_calls::bill_stale(&mut conn, before, 100)
        })
        .await;
        match round {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                error = format!("{e:#}"),
                "Billing open gateway calls failed; trying again later."
            ),
            Err(e) => tracing::error!(error = %e, "Billing open gateway calls panicked."),
        }
    }
}
