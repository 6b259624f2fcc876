//! Shared pieces of the host tests: the test components (built once per
//! test binary), a real redis-server on a free port, and an app served on
//! 127.0.0.1:0 that stops when dropped.
#![allow(dead_code)]

use billing_host::{App, Limits};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// This package's directory in the checkout cargo runs the test in (the
/// compile-time value may name another checkout sharing the target directory).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../target"))
}

/// Builds the test components for wasm32-wasip2 once and returns the path of `name`.
pub fn wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                "billing-host-probe",
                "-p",
                "billing-host-hello",
                "-p",
                "billing-host-kv-probe",
            ])
            .current_dir(manifest_dir())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the test components failed");
    });
    let p = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(p.exists(), "{} missing", p.display());
    p
}

#[allow(unused_imports)]
pub use billing_testkit::{free_port, Redis};

/// An app being served.
pub struct Served {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Begins a graceful shutdown; returns the server task to await.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Writes `manifest` (with `{probe}`, `{hello}`, `{kv}` replaced by the
/// components' paths) and `runtime_config` into a fresh directory.
pub fn write_app(
    manifest: &str,
    runtime_config: Option<&str>,
) -> (tempfile::TempDir, PathBuf, Option<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let text = manifest
        .replace("{probe}", &wasm("billing_host_probe").display().to_string())
        .replace("{hello}", &wasm("billing_host_hello").display().to_string())
        .replace("{kv}", &wasm("billing_host_kv_probe").display().to_string());
    let m = dir.path().join("spin.toml");
    std::fs::write(&m, text).unwrap();
    let rc = runtime_config.map(|t| {
        let p = dir.path().join("runtime-config.toml");
        std::fs::write(&p, t).unwrap();
        p
    });
    (dir, m, rc)
}

pub async fn serve(manifest: &str, runtime_config: Option<&str>, limits: Limits) -> Served {
    let (dir, m, rc) = write_app(manifest, runtime_config);
    serve_in(dir, &m, rc.as_deref(), limits).await
}

pub async fn serve_in(
    dir: tempfile::TempDir,
    manifest: &Path,
    rc: Option<&Path>,
    limits: Limits,
) -> Served {
    let app = App::load(manifest, rc, limits).expect("app loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(billing_host::server::serve(app, listener, async move {
        let _ = rx.await;
    }));
    Served {
        addr,
        dir,
        shutdown: Some(tx),
        task: Some(task),
    }
}

pub async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
