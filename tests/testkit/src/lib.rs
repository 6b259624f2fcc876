//! `billing-testkit`: what integration tests need to run real servers of
//! their own — a free port, and a redis-server that stops when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// A server process on a port, killed (SIGKILL, as a crash would) when
/// stopped or dropped.
struct Process(Option<Child>);

impl Process {
    fn spawn(cmd: &mut Command, port: u16, what: &str, install_hint: &str) -> Self {
        Self::spawn_logged(cmd, port, what, install_hint, None)
    }

    /// Like [`Process::spawn`], appending the server's output to `log`.
    fn spawn_logged(
        cmd: &mut Command,
        port: u16,
        what: &str,
        install_hint: &str,
        log: Option<&std::path::Path>,
    ) -> Self {
        let (out, err) = match log.and_then(|p| {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        }) {
            Some(f) => (
                Stdio::from(f.try_clone().expect("log file")),
                Stdio::from(f),
            ),
            None => (Stdio::null(), Stdio::null()),
        };
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{what} did not start ({e}); {install_hint}"));
        let p = Self(Some(child));
        wait_for_port(port, what);
        p
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A redis-server of its own on a free port, without persistence.
pub struct Redis {
    pub port: u16,
    process: Process,
}

impl Redis {
    pub fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            process: Process(None),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port after [`Redis::stop`].
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ]);
        self.process = Process::spawn(&mut cmd, self.port, "redis-server", "make test installs it");
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// The Tansu binary: `$TANSU`, else the one `scripts/ensure-deps.sh tansu`
/// installs under `~/.cache/llm-billing/tools/bin`, else `tansu` on PATH.
pub fn tansu_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TANSU") {
        return p.into();
    }
    let cached = std::path::Path::new(&std::env::var("HOME").unwrap_or_default())
        .join(".cache/llm-billing/tools/bin/tansu");
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
    process: Process,
}

impl Tansu {
    pub fn start(dir: &std::path::Path) -> Self {
        let mut t = Self {
            port: free_port(),
            dir: dir.to_owned(),
            process: Process(None),
        };
        t.restart();
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(tansu_bin());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        // Tansu resolves a sqlite:// path against its working directory.
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(&self.dir);
        let log = self.dir.join("tansu.log");
        self.process = Process::spawn_logged(
            &mut cmd,
            self.port,
            "tansu",
            "make test installs it: scripts/ensure-deps.sh tansu",
            Some(&log),
        );
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.process.stop();
    }
}
