//! The whole system as separate processes — Kafka, redis-server,
//! `billing-bridge run` and `billing-host up` with the repository's
//! spin.toml — each of which can be SIGKILLed and started again, for the
//! fault runs of `billing-load faults` and the fault test.

use crate::load::Target;
use crate::{repo_root, ADMIN_KEY};
use billing_testkit::{free_port, Kafka, Redis};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The processes a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Bridge,
    Host,
    Kafka,
    Redis,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Bridge, Part::Host, Part::Kafka, Part::Redis];

    pub fn name(self) -> &'static str {
        match self {
            Part::Bridge => "billing-bridge",
            Part::Host => "billing-host",
            Part::Kafka => "kafka",
            Part::Redis => "redis-server",
        }
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub kafka: Kafka,
    pub redis: Redis,
    pub host_port: u16,
    pub bridge_port: u16,
    bins: PathBuf,
    host: Option<Child>,
    bridge: Option<Child>,
}

/// Where this build's binaries are (`target/<profile>`), built first if
/// they are missing or older than the sources (cargo decides).
fn binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "billing-host", "-p", "billing-bridge"])
        .current_dir(repo_root());
    if release {
        cmd.arg("--release");
    }
    let ok = cmd.status().is_ok_and(|s| s.success());
    assert!(ok, "cargo build -p billing-host -p billing-bridge failed");
    dir
}

impl Cluster {
    /// Starts every part in `dir` (a migrated database is made there).
    pub fn start(dir: &Path) -> Self {
        crate::build_components();
        let bins = binaries();
        billing_migrations::open_and_migrate(&dir.join("billing.db")).expect("migrations apply");
        std::fs::write(
            dir.join("runtime-config.toml"),
            format!(
                "[sqlite_database.default]\ntype = \"spin\"\npath = \"{}\"\n",
                dir.join("billing.db").display()
            ),
        )
        .unwrap();
        let kafka = Kafka::start(dir);
        let redis = Redis::start();
        let bridge_port = free_port();
        std::fs::write(
            dir.join("bridge.toml"),
            format!(
                r#"database = "{db}"
brokers = "{brokers}"
redis_url = "{redis}"
admin_api_key = "{ADMIN_KEY}"
[relay]
poll_interval_ms = 200
[topics]
partitions = 2
[consumer]
group = "billing-load"
[aggregates]
check_interval_s = 1
[http]
listen = "127.0.0.1:{bridge_port}"
"#,
                db = dir.join("billing.db").display(),
                brokers = kafka.brokers(),
                redis = redis.url(),
            ),
        )
        .unwrap();
        let mut c = Self {
            dir: dir.to_owned(),
            kafka,
            redis,
            host_port: free_port(),
            bridge_port,
            bins,
            host: None,
            bridge: None,
        };
        c.start_part(Part::Bridge);
        c.start_part(Part::Host);
        c.wait_for_partitions();
        c
    }

    /// Waits (a minute at most) until the bridge's consumer holds partitions
    /// (its `billing_bridge_assigned_partitions` gauge), so a measured run
    /// does not count the group's first join.
    fn wait_for_partitions(&self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let mut page = String::new();
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.bridge_port)) {
                let _ = c.write_all(b"GET /metrics HTTP/1.0\r\nhost: bridge\r\n\r\n");
                let _ = c.read_to_string(&mut page);
            }
            let held = page
                .lines()
                .find_map(|l| l.strip_prefix("billing_bridge_assigned_partitions "))
                .and_then(|v| v.trim().parse::<i64>().ok());
            if held.is_some_and(|n| n > 0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the bridge's consumer got no partitions within 60 s:\n{}",
            self.tail("bridge", 20)
        );
    }

    pub fn target(&self) -> Target {
        Target {
            url: format!("http://127.0.0.1:{}", self.host_port),
            live_url: Some(format!("http://127.0.0.1:{}", self.bridge_port)),
            admin_key: ADMIN_KEY.into(),
            db: self.dir.join("billing.db"),
        }
    }

    fn log(&self, name: &str) -> Stdio {
        let f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file");
        Stdio::from(f)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self, part: Part) {
        let child = match part {
            Part::Bridge => self.bridge.take(),
            Part::Host => self.host.take(),
            Part::Kafka => return self.kafka.kill(),
            Part::Redis => return self.redis.stop(),
        };
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_part(&mut self, part: Part) {
        match part {
            Part::Kafka => self.kafka.restart(),
            Part::Redis => self.redis.restart(),
            Part::Bridge => {
                let child = Command::new(self.bins.join("billing-bridge"))
                    .args([
                        "--config",
                        self.dir.join("bridge.toml").to_str().unwrap(),
                        "run",
                    ])
                    .env("RUST_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(self.log("bridge"))
                    .spawn()
                    .expect("billing-bridge starts");
                self.bridge = Some(child);
                self.wait(Part::Bridge);
            }
            Part::Host => {
                let child = Command::new(self.bins.join("billing-host"))
                    .args([
                        "up",
                        "--runtime-config-file",
                        self.dir.join("runtime-config.toml").to_str().unwrap(),
                        "--listen",
                        &format!("127.0.0.1:{}", self.host_port),
                    ])
                    .current_dir(repo_root())
                    .env("SPIN_VARIABLE_ADMIN_API_KEY", ADMIN_KEY)
                    .env("SPIN_VARIABLE_REDIS_URL", self.redis.url())
                    .env("SPIN_VARIABLE_PROVIDER_RETRY_BASE_MS", "5")
                    .env("SPIN_VARIABLE_COLLECTOR_REQUESTS_PER_SECOND", "1000")
                    // A host killed mid-turn leaves that turn's Idempotency-Key
                    // claimed; its client's retries get 409 until the claim
                    // expires. A turn against llm-sim lasts well under a second,
                    // so 10 s (not the default 300, sized for slow models) lets
                    // the retry through within the clients' 120 s patience.
                    .env("SPIN_VARIABLE_IDEMPOTENCY_CLAIM_S", "10")
                    .stdout(Stdio::null())
                    .stderr(self.log("host"))
                    .spawn()
                    .expect("billing-host starts");
                self.host = Some(child);
                self.wait(Part::Host);
            }
        }
    }

    /// Starts again a bridge or host that ended by itself, as a supervisor
    /// would (`restart: unless-stopped` in docker-compose; the bridge ends
    /// with status 1 on a fatal error so that it is restarted). Returns a
    /// line per restart, with the end of its log.
    pub fn revive(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for part in [Part::Bridge, Part::Host] {
            let child = match part {
                Part::Bridge => self.bridge.as_mut(),
                _ => self.host.as_mut(),
            };
            let Some(Ok(Some(status))) = child.map(|c| c.try_wait()) else {
                continue;
            };
            let log = if part == Part::Bridge {
                "bridge"
            } else {
                "host"
            };
            lines.push(format!(
                "{} ended by itself ({status}); started again. Its last log lines:\n{}",
                part.name(),
                self.tail(log, 3)
            ));
            self.start_part(part);
        }
        lines
    }

    /// Waits up to two minutes (a first start compiles the components) for
    /// the part to listen; fails at once, with its log, if it exits.
    fn wait(&mut self, part: Part) {
        let (port, child, log) = match part {
            Part::Bridge => (self.bridge_port, self.bridge.as_mut(), "bridge"),
            _ => (self.host_port, self.host.as_mut(), "host"),
        };
        let child = child.expect("started");
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited ({status}):\n{}", part.name(), self.tail(log, 20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not listen on {port} within 120 s:\n{}",
            part.name(),
            self.tail(log, 20)
        );
    }

    /// The last lines of a part's log, for a failure message.
    pub fn tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let v: Vec<&str> = log.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill(Part::Host);
        self.kill(Part::Bridge);
    }
}

/// A small deterministic random source (xorshift), so a fault schedule is
/// repeatable from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `lo..hi` milliseconds.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// One step of a fault schedule: SIGKILL these parts together, wait
/// `down`, start them again.
#[derive(Debug, Clone)]
pub struct Fault {
    pub parts: Vec<Part>,
    pub down: Duration,
}

/// The schedule: each part killed once at a random moment, one at a time,
/// then all together; `rounds` times.
pub fn schedule(rng: &mut Rng, rounds: usize) -> Vec<(Duration, Fault)> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        for p in Part::ALL {
            out.push((
                rng.between(Duration::from_secs(2), Duration::from_secs(5)),
                Fault {
                    parts: vec![p],
                    down: rng.between(Duration::from_millis(200), Duration::from_secs(2)),
                },
            ));
        }
        out.push((
            rng.between(Duration::from_secs(2), Duration::from_secs(5)),
            Fault {
                parts: Part::ALL.to_vec(),
                down: rng.between(Duration::from_millis(500), Duration::from_secs(2)),
            },
        ));
    }
    out
}

/// The cluster, even after a panic while it was held (a part that would not
/// start again): the run then fails with the bridge's and host's logs
/// instead of a poisoned lock.
fn held(c: &std::sync::Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `plan`'s load against a fresh cluster in `dir` while `steps` kill
/// and restart its parts; the load's own duration is stretched to cover the
/// schedule. Returns the report and what was done when.
pub async fn fault_run(
    dir: &Path,
    mut plan: crate::load::Plan,
    steps: Vec<(Duration, Fault)>,
) -> Result<(crate::load::Report, Vec<String>), String> {
    let cluster = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || Cluster::start(&dir))
            .await
            .map_err(|e| e.to_string())?
    };
    let target = cluster.target();
    let cluster = std::sync::Arc::new(std::sync::Mutex::new(cluster));
    let busy: Duration = steps
        .iter()
        .map(|(d, Fault { down, .. })| *d + *down + Duration::from_secs(1))
        .sum();
    plan.duration = plan.duration.max(busy + Duration::from_secs(3));
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let during = {
        let (cluster, log) = (cluster.clone(), log.clone());
        async move {
            let t0 = Instant::now();
            for (delay, fault) in steps {
                tokio::time::sleep(delay).await;
                let Fault { parts, down } = fault;
                let at = t0.elapsed().as_secs_f64();
                let c = cluster.clone();
                let names: Vec<&str> = parts.iter().map(|p| p.name()).collect();
                let restarted = tokio::task::spawn_blocking(move || {
                    let mut c = held(&c);
                    for p in &parts {
                        c.kill(*p);
                    }
                    std::thread::sleep(down);
                    // Storage first, then the services that use it.
                    for p in [Part::Redis, Part::Kafka, Part::Bridge, Part::Host] {
                        if parts.contains(&p) {
                            c.start_part(p);
                        }
                    }
                })
                .await;
                if let Err(e) = restarted {
                    // The supervisor tries the part again; the run reports it.
                    log.lock()
                        .unwrap()
                        .push(format!("a part did not start again after its fault: {e}"));
                }
                let line = format!(
                    "t={at:6.1} s  SIGKILL {}; down {:.1} s; started again ({:.1} s later)",
                    names.join(" + "),
                    down.as_secs_f64(),
                    t0.elapsed().as_secs_f64() - at
                );
                log.lock().unwrap().push(line);
            }
        }
    };
    // The supervisor: a part that ended by itself is started again.
    let supervising = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let supervisor = tokio::spawn({
        let (cluster, log, on) = (cluster.clone(), log.clone(), supervising.clone());
        async move {
            while on.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let c = cluster.clone();
                // A part that will not start again is reported, and tried again.
                let lines = match tokio::task::spawn_blocking(move || held(&c).revive()).await {
                    Ok(lines) => lines,
                    Err(e) => vec![format!("a part could not be started again: {e}")],
                };
                log.lock().unwrap().extend(lines);
            }
        }
    });
    let report = crate::load::run(target, plan, during).await;
    supervising.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = supervisor.await;
    let log = log.lock().unwrap().clone();
    match report {
        Ok(r) => Ok((r, log)),
        Err(e) => {
            let c = held(&cluster);
            Err(format!(
                "{e}\n--- bridge log ---\n{}\n--- host log ---\n{}",
                c.tail("bridge", 30),
                c.tail("host", 30)
            ))
        }
    }
}
