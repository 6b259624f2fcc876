//! `billing-host`: `up` serves a Spin app, `build` builds its components.

use anyhow::Context;
use billing_host::{App, Limits};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Run a Spin application (spin.toml) locally on wasmtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the application, like `spin up`.
    Up {
        /// The application manifest.
        #[arg(
            short = 'f',
            long = "manifest",
            alias = "from",
            default_value = "spin.toml"
        )]
        manifest: PathBuf,
        /// Spin runtime configuration (SQLite databases, variable providers).
        #[arg(long)]
        runtime_config_file: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
        /// Most memory one instance may use, in MiB.
        #[arg(long, env = "BILLING_HOST_MEMORY_MIB", default_value_t = 256)]
        memory_mib: usize,
        /// Longest a request may take, in milliseconds.
        #[arg(long, env = "BILLING_HOST_TIMEOUT_MS", default_value_t = 30_000)]
        timeout_ms: u64,
        /// Largest request body, in bytes.
        #[arg(long, env = "BILLING_HOST_MAX_BODY_BYTES", default_value_t = 2 << 20)]
        max_body_bytes: usize,
        /// One component's own limits, `ID:timeout_ms=N,max_body_bytes=N`
        /// (repeatable; `;`-separated in the environment variable).
        #[arg(
            long = "component-limits",
            env = "BILLING_HOST_COMPONENT_LIMITS",
            value_delimiter = ';'
        )]
        component_limits: Vec<String>,
    },
    /// Run each component's build command, like `spin build`.
    Build {
        #[arg(
            short = 'f',
            long = "manifest",
            alias = "from",
            default_value = "spin.toml"
        )]
        manifest: PathBuf,
        /// Build only these components.
        #[arg(short = 'c', long = "component-id")]
        component: Vec<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Build {
            manifest,
            component,
        } => billing_host::build::build(&manifest, &component),
        Cmd::Up {
            manifest,
            runtime_config_file,
            listen,
            memory_mib,
            timeout_ms,
            max_body_bytes,
            component_limits,
        } => {
            let limits = Limits {
                memory_bytes: memory_mib << 20,
                timeout: Duration::from_millis(timeout_ms),
                max_body_bytes,
                components: billing_host::runtime::parse_component_limits(&component_limits)
                    .map_err(|e| anyhow::anyhow!("--component-limits: {e}"))?,
                ..Limits::default()
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let app = App::load(&manifest, runtime_config_file.as_deref(), limits)?;
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let addr = listener.local_addr()?;
                println!("Serving http://{addr}");
                let mut routes: Vec<_> = app.components.keys().cloned().collect();
                routes.sort();
                println!("Available components: {}", routes.join(", "));
                billing_host::server::serve(app, listener, shutdown_signal()).await
            })
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
