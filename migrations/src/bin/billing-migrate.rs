//! `billing-migrate`: apply the schema and seed to a SQLite file, or show
//! what is applied.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

/// Apply pending migrations to the billing database.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The SQLite file; created when missing.
    #[arg(long, env = "BILLING_DB", default_value = "data/billing.db")]
    db: PathBuf,
    /// Read the SQL files from this directory instead of the ones built in.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only list the applied migrations.
    #[arg(long)]
    status: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut conn = billing_migrations::open(&args.db)
        .with_context(|| format!("opening {}", args.db.display()))?;
    if args.status {
        for (version, file, at) in billing_migrations::status(&conn)? {
            println!("{version:04}  {file}  applied {at}");
        }
        return Ok(());
    }
    let list = match &args.dir {
        Some(dir) => billing_migrations::from_dir(dir)?,
        None => billing_migrations::embedded(),
    };
    let report = billing_migrations::migrate(&mut conn, &list)
        .with_context(|| format!("migrating {}", args.db.display()))?;
    for f in &report.applied {
        println!("applied {f}");
    }
    println!(
        "{}: {} applied now, {} already applied",
        args.db.display(),
        report.applied.len(),
        report.already.len()
    );
    Ok(())
}
