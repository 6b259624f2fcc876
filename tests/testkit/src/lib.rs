//! `billing-testkit`: what integration tests need to run real servers of
//! their own — a free port, and a redis-server that stops when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not start listening on {port}");
}

/// A redis-server of its own on a free port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        let port = free_port();
        let mut r = Self { port, child: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port after [`Redis::stop`].
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Tansu binary: `$TANSU`, else the one `scripts/ensure-deps.sh tansu`
/// installs under `~/.cache/llm-billing/tools/bin`, else `tansu` on PATH.
pub fn tansu_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TANSU") {
        return p.into();
    }
    let cached = std::path::Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/llm-billing/tools/bin/tansu");
    if cached.exists() {
        cached
    } else {
        "tansu".into()
    }
}

/// A Kafka-protocol broker of its own (Tansu) on a free port, storing in a
/// SQLite file so it can be stopped and started again without losing data.
pub struct Tansu {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Tansu {
    pub fn start(dir: &std::path::Path) -> Self {
        let mut t = Self { port: free_port(), dir: dir.to_owned(), child: None };
        t.restart();
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // Tansu resolves a sqlite:// path against its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu is installed (make test installs it: scripts/ensure-deps.sh tansu)");
        self.child = Some(child);
        wait_for_port(self.port, "tansu");
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}
