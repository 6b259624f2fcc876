//! `billing-bridge`: `run` relays the outbox to Kafka, consumes the topics
//! into SQLite and Redis and serves live updates; `migrate` applies the
//! schema; `topics` creates the missing topics; `rebuild-redis` rebuilds
//! the dashboard aggregates from SQLite.

use anyhow::Context;
use billing_bridge::aggregates;
use billing_bridge::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
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
            let created = billing_bridge::kafka::ensure_topics(&cfg.brokers, &cfg.topics).await?;
            println!("created: {created:?}");
            Ok(())
        }),
        Cmd::RebuildRedis => rt.block_on(async {
            // A bridge may be rebuilding already (it does when Redis lost its data): wait for it, then rebuild.
            let mut waited = 0;
            let r = loop {
                let now = billing_core::Timestamp::from_millis(billing_bridge::now_ms())
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
        Cmd::Run => {
            // Exit here rather than drop the runtime: Kafka clients still
            // held by a task would wait for a broker that may be away.
            let code = match rt.block_on(billing_bridge::run(cfg, shutdown())) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    1
                }
            };
            std::process::exit(code)
        }
    }
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
