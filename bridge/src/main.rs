//! `billing-bridge`: `run` relays the outbox to Kafka; `migrate` applies the
//! schema; `topics` creates the missing topics.

use anyhow::Context;
use billing_bridge::{consumer, relay, topics, Config};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Relays the billing outbox between SQLite, Kafka and Redis")]
struct Cli {
    /// Configuration file (TOML); environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create missing topics, then relay the outbox until SIGINT/SIGTERM.
    Run,
    /// Apply pending migrations to the database.
    Migrate,
    /// Create missing topics and exit.
    Topics,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Cmd::Migrate => {
            let (_, report) = billing_migrations::open_and_migrate(&cfg.database).with_context(|| format!("migrating {}", cfg.database.display()))?;
            println!("{}: {} applied now, {} already applied", cfg.database.display(), report.applied.len(), report.already.len());
            Ok(())
        }
        Cmd::Topics => tokio::runtime::Runtime::new()?.block_on(async {
            let created = topics::ensure(&cfg.brokers, &cfg.topics).await?;
            println!("created: {created:?}");
            Ok(())
        }),
        Cmd::Run => tokio::runtime::Runtime::new()?.block_on(async {
            billing_migrations::open_and_migrate(&cfg.database)?;
            topics::ensure(&cfg.brokers, &cfg.topics).await?;
            let relay = relay::Relay::new(&cfg)?;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(relay::listen_for_nudges(cfg.redis_url.clone(), tx));
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let mut conn = billing_migrations::open(&cfg.database)?;
            let dead_letters = relay::producer(&cfg.brokers, cfg.relay.delivery_timeout_ms)?;
            tracing::info!(brokers = %cfg.brokers, database = %cfg.database.display(), "Relaying the outbox and billing token metrics.");
            let brokers = cfg.brokers.clone();
            let consumer = tokio::spawn({
                let rx = stop_rx.clone();
                async move { consumer::run(&brokers, "billing-bridge", &mut conn, &dead_letters, stopped(rx)).await }
            });
            let relayed = relay.run(rx, async {
                shutdown().await;
                let _ = stop_tx.send(true);
            });
            relayed.await?;
            consumer.await??;
            Ok(())
        }),
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
