//! `billing-bridge run` as a library call: [`run`] migrates, creates the
//! missing topics, starts the workers (relay, consumer), the HTTP side and
//! the aggregates' keeper, and runs until `shutdown` resolves or a worker
//! stops on its own.
//!
//! A worker that stops on its own (an error it cannot retry, a panic) is
//! never left behind a healthy-looking process: `/readyz` fails from that
//! moment, the other parts are stopped, and [`run`] returns the error, so
//! `billing-bridge run` exits non-zero and its supervisor restarts it.

use crate::workers::Workers;
use crate::{aggregates, consumer, live, Config};
use anyhow::{Context, Result};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the parts get to finish the batch in hand and commit after a stop.
const DRAIN: Duration = Duration::from_secs(20);

/// Serves until `shutdown` resolves (then drains: the batch in hand is
/// finished and its offsets committed) or until a worker stops on its own
/// (then returns that worker's error).
///
/// Errors: start-up failures (database, broker metadata, listen address)
/// and a worker that ended by itself. After a drain that did not finish
/// within 20 s (a broker that is away never answers the group's leave),
/// it returns `Ok` without waiting further: offsets not committed are
/// replayed on the next start, and replays change nothing. The caller
/// should exit the process rather than drop the runtime, whose Kafka
/// clients would wait for that broker.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    billing_migrations::open_and_migrate(&cfg.database)
        .with_context(|| format!("migrating {}", cfg.database.display()))?;
    crate::kafka::ensure_topics(&cfg.brokers, &cfg.topics).await?;
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.http.listen))?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);

    let mut workers = Workers::spawn(
        &cfg.database,
        &cfg.brokers,
        &cfg.redis_url,
        cfg.relay.clone(),
        consumer_settings(&cfg),
        cfg.aggregates.mark_ttl_s,
        stop.clone(),
    )?;

    let (notices, _) = tokio::sync::broadcast::channel(1024);
    tokio::spawn(live::relay_notices(
        cfg.redis_url.clone(),
        notices.clone(),
        stop.clone(),
    ));
    let workers_running = Arc::new(AtomicBool::new(true));
    let live = Arc::new(live::Live {
        database: cfg.database.clone(),
        redis_url: cfg.redis_url.clone(),
        kafka: crate::kafka::metadata_client(&cfg.brokers)?,
        admin_api_key: cfg.admin_api_key.clone(),
        heartbeat: Duration::from_secs(cfg.http.sse_heartbeat_s),
        notices,
        workers_running: workers_running.clone(),
    });
    let served = tokio::spawn(live::serve(listener, live, stop.clone()));
    tokio::spawn(keep_aggregates_complete(cfg.clone(), stop.clone()));
    tracing::info!(brokers = %cfg.brokers, database = %cfg.database.display(), http = %cfg.http.listen, group = %cfg.consumer.group, "Relaying the outbox, consuming, serving /events/stream and /metrics.");

    let failed = tokio::select! {
        _ = shutdown => None,
        (worker, ended) = workers.first_to_end() => Some((worker, ended)),
    };
    let outcome = match failed {
        None => {
            tracing::info!("Stopping: finishing the batch in hand, storing offsets.");
            Ok(())
        }
        Some((worker, ended)) => {
            workers_running.store(false, Ordering::SeqCst);
            let why = match ended {
                Ok(Ok(())) => anyhow::anyhow!("the {worker} stopped without being asked to"),
                Ok(Err(e)) => e.context(format!("the {worker} stopped")),
                Err(e) => anyhow::anyhow!("the {worker} panicked: {e}"),
            };
            tracing::error!(
                worker,
                error = format!("{why:#}"),
                "A worker stopped; stopping the bridge so that it is restarted."
            );
            Err(why)
        }
    };
    let _ = stop_tx.send(true);
    let finished = tokio::time::timeout(DRAIN, async {
        let joined = workers.join().await;
        served.await??;
        joined
    });
    match finished.await {
        Ok(r) => outcome.and(r)?,
        Err(_) => {
            tracing::warn!("Stopped without closing cleanly: the broker did not answer within 20 s. Offsets not committed are replayed on the next start; replays change nothing.");
            return outcome;
        }
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// The consumer's settings from the configuration; an empty
/// `consumer.instance_id` becomes the host name and `http.listen`.
pub fn consumer_settings(cfg: &Config) -> consumer::Settings {
    consumer::Settings {
        group: cfg.consumer.group.clone(),
        batch_size: cfg.consumer.batch_size,
        batch_wait_ms: cfg.consumer.batch_wait_ms,
        fetch_wait_ms: cfg.consumer.fetch_wait_ms,
        session_timeout_ms: cfg.consumer.session_timeout_ms,
        instance_id: match cfg.consumer.instance_id.as_str() {
            "-" => None,
            "" => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "bridge".into());
                Some(format!("{host}-{}", cfg.http.listen))
            }
            id => Some(id.to_owned()),
        },
    }
}

/// Rebuilds the aggregates at start-up when Redis has none, and whenever
/// Redis is found to have lost them (checked every `aggregates.check_interval_s`).
async fn keep_aggregates_complete(cfg: Config, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let checked = async {
            let now = billing_core::Timestamp::from_millis(crate::now_ms())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            aggregates::ensure_complete(
                &cfg.database,
                &cfg.redis_url,
                cfg.aggregates.mark_ttl_s,
                now,
            )
            .await
        };
        match checked.await {
            Ok(Some(r)) => tracing::info!(
                events = r.events,
                keys_removed = r.keys_removed,
                "Redis lacked the aggregates; rebuilt them from SQLite."
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "Could not check the aggregates in Redis; trying again later."
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(cfg.aggregates.check_interval_s)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
