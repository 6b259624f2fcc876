//! `billing-load`: load, faults and reconciliation, with numbers anyone can
//! reproduce.
//!
//!   billing-load run [--url http://127.0.0.1:3000] [--live-url http://127.0.0.1:3100]
//!                    [--admin-key KEY] [--db data/billing.db] [--users 10]
//!                    [--events-per-s 500] [--seconds 30]
//!     against a running system (e.g. `make up`).
//!
//!   billing-load faults [--rounds 1] [--outage-s 0] [--seed N] [--users 4] [--events-per-s 100]
//!     starts its own Kafka, redis-server, billing-bridge and billing-host in
//!     a temporary directory and SIGKILLs each of them at random moments
//!     under load (one at a time, then all together, `--rounds` times), then
//!     takes the broker away and Redis away for `--outage-s` each; then
//!     drains and reconciles.
//!
//! Both print latency percentiles per endpoint, event→billed and
//! event→dashboard freshness, and the reconciliation (own records = SQLite
//! line items = Redis aggregates = draft invoices); the exit status is 1
//! when anything disagrees.

use billing_e2e::cluster::{fault_run, schedule, Fault, Part, Rng};
use billing_e2e::load::{run, Plan, Target};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Load, faults and reconciliation for LLM chat billing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Load {
    /// Simulated chat users, one thread each, one turn at a time.
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Pause between a user's turns, in ms.
    #[arg(long, default_value_t = 100)]
    think_ms: u64,
    /// Inference events per second through the collector.
    #[arg(long, default_value_t = 500)]
    events_per_s: u32,
    /// Events per collector request.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// Concurrent senders of event batches, each one request at a time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    lanes: u64,
    /// How long to load, in seconds (a fault run lasts at least its schedule).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Load a running system.
    Run {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// The bridge's HTTP address, for event→dashboard freshness ("" to skip).
        #[arg(long, default_value = "http://127.0.0.1:3100")]
        live_url: String,
        /// Default: the `admin-key` file `make up` writes beside the database.
        #[arg(long, env = "ADMIN_API_KEY")]
        admin_key: Option<String>,
        /// The system's SQLite file, read for the reconciliation.
        #[arg(long, default_value = "data/billing.db")]
        db: PathBuf,
        #[command(flatten)]
        load: Load,
    },
    /// Start a system of its own and kill its processes under load.
    Faults {
        /// Rounds of kills (each part once, then all together).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Then the broker, and then Redis, away for this many seconds each (0: skip).
        #[arg(long, default_value_t = 0)]
        outage_s: u64,
        /// Seed of the kill moments (printed; the same seed, the same schedule).
        #[arg(long)]
        seed: Option<u64>,
        /// Keep the run's directory (logs, databases) instead of removing it.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        load: Load,
    },
}

fn plan(l: &Load) -> Plan {
    Plan {
        users: l.users,
        think: Duration::from_millis(l.think_ms),
        events_per_s: l.events_per_s,
        batch: l.batch as usize,
        lanes: l.lanes as usize,
        duration: Duration::from_secs(l.seconds),
        progress: true,
        ..Plan::default()
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run {
            url,
            live_url,
            admin_key,
            db,
            load,
        } => {
            if !db.exists() {
                eprintln!(
                    "billing-load: {} does not exist; pass the system's SQLite file with --db",
                    db.display()
                );
                std::process::exit(2);
            }
            let Some(admin_key) = admin_key.or_else(|| {
                std::fs::read_to_string(db.with_file_name("admin-key"))
                    .ok()
                    .map(|k| k.trim().to_owned())
            }) else {
                eprintln!("billing-load: no admin key; pass --admin-key or ADMIN_API_KEY");
                std::process::exit(2);
            };
            let t = Target {
                url,
                live_url: Some(live_url).filter(|u| !u.is_empty()),
                admin_key,
                db,
            };
            run(t, plan(&load), async {}).await.map(|r| (r, Vec::new()))
        }
        Command::Faults {
            rounds,
            outage_s,
            seed,
            keep,
            load,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
            let mut steps = schedule(&mut Rng::new(seed), rounds);
            if outage_s > 0 {
                for p in [Part::Kafka, Part::Redis] {
                    steps.push((
                        Duration::from_secs(3),
                        Fault {
                            parts: vec![p],
                            down: Duration::from_secs(outage_s),
                        },
                    ));
                }
            }
            println!("fault schedule (seed {seed}): {} steps", steps.len());
            let dir = tempfile::Builder::new()
                .prefix("billing-faults-")
                .tempdir()
                .expect("a temporary directory");
            let r = fault_run(dir.path(), plan(&load), steps).await;
            if keep {
                println!("run directory kept: {}", dir.keep().display());
            }
            r
        }
    };
    match outcome {
        Ok((report, log)) => {
            for line in log {
                println!("{line}");
            }
            println!("{report}");
            std::process::exit(if report.reconciled() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("billing-load: {e}");
            std::process::exit(2);
        }
    }
}
