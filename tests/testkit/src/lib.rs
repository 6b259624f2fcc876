//! `billing-testkit`: what integration tests need to run real servers of
//! their own — a free port, a redis-server and an Apache Kafka node that
//! stop when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nothing listens on right now, below Linux's ephemeral range
/// (32768–60999 by default). A port the OS picks (`bind` to port 0) comes
/// from that range, where outgoing connections — the tests' many Kafka and
/// Redis clients — also get their local ports, so one could take it before
/// the server meant for it binds; and two picks in a row may repeat. Each
/// process walks 20000–32767 from its own starting point, never handing
/// out a port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 32_768 - LOW;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        (std::process::id().wrapping_mul(7_919) ^ nanos) % SPAN
    };
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}–32767")
}

/// Waits until something accepts TCP connections on `port`, at most 60 s
/// (a bridge creates its topics first, against a broker that may still be
/// warming up on a loaded machine).
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not start listening on {port} within 60 s");
}

/// A server process on a port, killed (SIGKILL, as a crash would) when
/// stopped or dropped.
struct Process(Option<Child>);

impl Process {
    fn spawn(cmd: &mut Command, port: u16, what: &str, install_hint: &str) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} did not start ({e}); {install_hint}"));
        let p = Self(Some(child));
        wait_for_port(port, what);
        p
    }

    /// Starts `cmd` with its output appended to `log` and waits until a line
    /// after the first `skip` lines contains `ready`.
    fn spawn_logged_until(
        cmd: &mut Command,
        log: &std::path::Path,
        skip: usize,
        ready: &str,
        timeout: Duration,
        what: &str,
        install_hint: &str,
    ) -> Self {
        let f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = cmd
            .stdout(Stdio::from(f.try_clone().expect("log file")))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap_or_else(|e| panic!("{what} did not start ({e}); {install_hint}"));
        let mut p = Self(Some(child));
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.lines().skip(skip).any(|l| l.contains(ready)) {
                return p;
            }
            let exited = p.exited();
            if exited.is_some() || std::time::Instant::now() > deadline {
                p.stop();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                panic!(
                    "{what} did not start ({}); {install_hint}; its log {}:\n{}",
                    exited.map_or("timed out".to_string(), |s| s.to_string()),
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How the process ended, if it did (reaped then; `None` while it runs).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
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

    /// Waits (at most `within`) until a client subscribes to `channel`
    /// (`PUBSUB NUMSUB`): a message published before is lost to it.
    pub async fn subscribed(&self, channel: &str, within: Duration) {
        let mut c = redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, listeners): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut c)
                .await
                .unwrap();
            if listeners > 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nobody subscribed to {channel} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `scripts/kafka-broker.sh` of this checkout: found from the directory of
/// the crate whose tests run (cargo sets `CARGO_MANIFEST_DIR` for them), else
/// from where this crate was built.
pub fn kafka_broker_script() -> std::path::PathBuf {
    let runtime = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let built = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for start in runtime.iter().chain([&built]) {
        for dir in start.ancestors() {
            let script = dir.join("scripts/kafka-broker.sh");
            if script.is_file() {
                return script;
            }
        }
    }
    panic!(
        "scripts/kafka-broker.sh not found above {}",
        built.display()
    )
}

/// An Apache Kafka node of its own (KRaft, broker and controller in one
/// process, `scripts/kafka-broker.sh`) on free ports, storing under `dir`
/// so it can be killed and started again without losing data.
pub struct Kafka {
    pub port: u16,
    controller_port: u16,
    dir: std::path::PathBuf,
    process: Process,
}

impl Kafka {
    /// Formats a new node's storage in `dir/kafka-<port>` and starts it;
    /// returns once it serves (a minute at most).
    pub fn start(dir: &std::path::Path) -> Self {
        let port = free_port();
        let mut k = Self {
            port,
            controller_port: free_port(),
            dir: dir.join(format!("kafka-{port}")),
            process: Process(None),
        };
        k.restart();
        k
    }

    /// `HOST:PORT` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same ports and storage, after [`Kafka::kill`].
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("the broker's directory");
        let log = self.dir.join("kafka.log");
        let lines_before = std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        let mut cmd = Command::new("bash");
        cmd.arg(kafka_broker_script())
            .arg(&self.dir)
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m");
        self.process = Process::spawn_logged_until(
            &mut cmd,
            &log,
            lines_before,
            "Kafka Server started",
            Duration::from_secs(90),
            "Apache Kafka",
            "make test installs it: scripts/ensure-deps.sh kafka",
        );
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.process.stop();
    }
}

impl Drop for Kafka {
    /// Stops the node; when a test failed, shows the last lines of its log
    /// (a broker that died or would not serve after a restart says why there).
    fn drop(&mut self) {
        let exited = self.process.exited();
        self.process.stop();
        if std::thread::panicking() {
            if let Some(status) = exited {
                eprintln!(
                    "--- the Kafka node on port {} had exited: {status}",
                    self.port
                );
            }
            let log = self.dir.join("kafka.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The controller's replay of every partition record would crowd out the node's lifecycle.
            let tail: Vec<&str> = text
                .lines()
                .filter(|l| {
                    !l.contains("Replayed PartitionRecord") && !l.contains("Replayed TopicRecord")
                })
                .rev()
                .take(40)
                .collect();
            eprintln!(
                "--- {} (last lines) ---\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
