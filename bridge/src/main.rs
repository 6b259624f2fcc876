//! `billing-bridge`: `run` relays the outbox to Kafka, consumes the topics
//! into SQLite and Redis and serves live updates; `migrate` applies the
//! schema; `topics` creates the missing topics; `rebuild-redis` rebuilds
//! the dashboard aggregates from SQLite.

use anyhow::Context;
use billing_bridge::aggregates;
use billing_bridge::workers::Workers;
use billing_bridge::{consumer, live, topics, Config};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Relays the billing outbox between SQLite, Kafka and Redis"
)]
struct Cli {
    /// Configuration file (TOML); environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Migrate, create missing topics, then relay, consume and serve until SIGINT/SIGTERM.
    Run,
    /// Apply pending migrations to the database.
    Migrate,
    /// Create missing topics and exit.
    Topics,
    /// Rebuild every dashboard aggregate in Redis from SQLite (after Redis lost its data).
    RebuildRedis,
}

fn main() {
    // Logs: `key=value` text, or one JSON object per line with BILLING_LOG_FORMAT=json; RUST_LOG filters.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    if std::env::var("BILLING_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Cmd::Migrate => {
            let (_, report) = billing_migrations::open_and_migrate(&cfg.database)
                .with_context(|| format!("migrating {}", cfg.database.display()))?;
            println!(
                "{}: {} applied now, {} already applied",
                cfg.database.display(),
                report.applied.len(),
                report.already.len()
            );
            Ok(())
        }
        Cmd::Topics => rt.block_on(async {
            let created = topics::ensure(&cfg.brokers, &cfg.topics).await?;
            println!("created: {created:?}");
            Ok(())
        }),
        Cmd::RebuildRedis => rt.block_on(async {
            // A bridge may be rebuilding already (it does when Redis lost its data): wait for it, then rebuild.
            let mut waited = 0;
            let r = loop {
                let now = billing_core::Timestamp::from_millis(consumer::now_ms())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                match aggregates::rebuild(
                    &cfg.database,
                    &cfg.redis_url,
                    cfg.aggregates.mark_ttl_s,
                    now,
                )
                .await
                {
                    Err(e)
                        if e.to_string().contains("another rebuild is running") && waited < 120 =>
                    {
                        if waited == 0 {
                            eprintln!("Another rebuild is running; waiting for it to finish.");
                        }
                        waited += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    r => break r?,
                }
            };
            println!(
                "rebuilt from {} events: {} keys removed, {} changes written, {} events marked",
                r.events, r.keys_removed, r.commands, r.marks
            );
            Ok(())
        }),
        Cmd::Run => rt.block_on(serve(cfg)),
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    billing_migrations::open_and_migrate(&cfg.database)
        .with_context(|| format!("migrating {}", cfg.database.display()))?;
    topics::ensure(&cfg.brokers, &cfg.topics).await?;
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.http.listen))?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);

    let settings = consumer::Settings {
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
    };
    let workers = Workers::spawn(
        &cfg.database,
        &cfg.brokers,
        &cfg.redis_url,
        cfg.relay.clone(),
        settings,
        cfg.aggregates.mark_ttl_s,
        stop.clone(),
    )?;

    let (notices, _) = tokio::sync::broadcast::channel(1024);
    tokio::spawn(live::relay_notices(
        cfg.redis_url.clone(),
        notices.clone(),
        stop.clone(),
    ));
    let live = Arc::new(live::Live {
        database: cfg.database.clone(),
        redis_url: cfg.redis_url.clone(),
        kafka: Arc::new(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &cfg.brokers)
                .create()
                .context("creating the Kafka client for /readyz")?,
        ),
        admin_api_key: cfg.admin_api_key.clone(),
        heartbeat: Duration::from_secs(cfg.http.sse_heartbeat_s),
        notices,
    });
    let served = tokio::spawn(live::serve(listener, live, stop.clone()));
    tokio::spawn(keep_aggregates_complete(cfg.clone(), stop.clone()));
    tracing::info!(brokers = %cfg.brokers, database = %cfg.database.display(), http = %cfg.http.listen, group = %cfg.consumer.group, "Relaying the outbox, consuming, serving /events/stream and /metrics.");

    shutdown().await;
    tracing::info!("Stopping: finishing the batch in hand, storing offsets.");
    let _ = stop_tx.send(true);
    let finished = tokio::time::timeout(Duration::from_secs(20), async {
        workers.join().await?;
        served.await??;
        anyhow::Ok(())
    });
    match finished.await {
        Ok(r) => r?,
        // Closing a consumer waits for its group coordinator; with the broker gone that never ends.
        Err(_) => {
            tracing::warn!("Stopped without closing cleanly: the broker did not answer within 20 s. Offsets not committed are replayed on the next start; replays change nothing.");
            std::process::exit(0);
        }
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// Rebuilds the aggregates at start-up when Redis has none, and whenever
/// Redis is found to have lost them (checked every `aggregates.check_interval_s`).
async fn keep_aggregates_complete(cfg: Config, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let checked = async {
            let now = billing_core::Timestamp::from_millis(consumer::now_ms())
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

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
