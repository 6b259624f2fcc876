//! `billing-e2e`: starts the whole HTTP side as a user would run it — the
//! repository's own spin.toml and components on billing-host — against a
//! freshly migrated SQLite file and a redis-server of its own, and talks to
//! it over real HTTP.

pub mod cluster;
pub mod load;

use billing_host::{App, Limits};
use billing_testkit::Redis;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

pub fn repo_root() -> PathBuf {
    // At run time cargo names the checkout it runs in; the compile-time value
    // names whichever checkout built this binary (a shared target directory).
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The instant `ms` milliseconds from now (negative: ago), as the API writes instants.
pub fn now_plus(ms: i64) -> billing_core::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64;
    billing_core::Timestamp::from_millis(now + ms).expect("now is representable")
}

/// Runs every component's build command from spin.toml, once per test binary.
pub fn build_components() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        billing_host::build::build(&repo_root().join("spin.toml"), &[]).expect("components build")
    });
}

/// One running stack.
pub struct Stack {
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    pub redis: Redis,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts with extra application variables (`("NAME", "value")` for
    /// `SPIN_VARIABLE_NAME`; later lines of the .env win). The collector's
    /// horizon is 100 years here, so tests may use fixed historical dates;
    /// the horizon itself is tested with `COLLECTOR_HORIZON_DAYS` set.
    pub async fn start_with(vars: &[(&str, &str)]) -> Self {
        Self::start_with_limits(vars, Limits::default()).await
    }

    /// [`Stack::start_with`] under the given host limits.
    pub async fn start_with_limits(vars: &[(&str, &str)], limits: Limits) -> Self {
        // The host's log (warnings and errors, or RUST_LOG) goes to the test's
        // output, which the harness shows when the test fails: a 500 from the
        // host says why only there. A binary that set its own subscriber first
        // (billing-bench: stderr) keeps it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .with_ansi(false)
            .try_init();
        build_components();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("billing.db");
        billing_migrations::open_and_migrate(&db).expect("migrations apply");
        let redis = Redis::start();
        std::fs::write(
            dir.path().join(".env"),
            format!("SPIN_VARIABLE_ADMIN_API_KEY={ADMIN_KEY}\nSPIN_VARIABLE_REDIS_URL={}\nSPIN_VARIABLE_PROVIDER_RETRY_BASE_MS=5\nSPIN_VARIABLE_COLLECTOR_HORIZON_DAYS=36500\n", redis.url())
                + vars.iter().map(|(k, v)| format!("SPIN_VARIABLE_{k}={v}\n")).collect::<String>().as_str(),
        )
        .unwrap();
        let rc = dir.path().join("runtime-config.toml");
        std::fs::write(
            &rc,
            "[sqlite_database.default]\ntype = \"spin\"\npath = \"billing.db\"\n[[config_provider]]\ntype = \"env\"\ndotenv_path = \".env\"\n",
        )
        .unwrap();
        let app = App::load(&repo_root().join("spin.toml"), Some(&rc), limits).expect("app loads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(billing_host::server::serve(app, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            dir,
            redis,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The database file, for checking what was (not) written.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("billing.db")).unwrap()
    }

    pub fn count(&self, table: &str) -> i64 {
        self.db()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Sends a request with an optional key and JSON body; returns the
    /// status, the content type and the body as JSON (Null when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let client = reqwest::Client::new();
        let mut rb = client.request(method.parse().unwrap(), self.url(path));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Reply::from(rb.send().await.unwrap()).await
    }

    /// Sends a JSON body with extra headers.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> Reply {
        let client = reqwest::Client::new();
        let mut rb = client
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(key)
            .json(&body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        Reply::from(rb.send().await.unwrap()).await
    }

    /// Sends raw bytes as the body.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let client = reqwest::Client::new();
        let mut rb = client
            .request(method.parse().unwrap(), self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        Reply::from(rb.send().await.unwrap()).await
    }

    /// Drafts (as admin) the invoice of `user_id`'s lines from 2026-01-01 until now.
    pub async fn invoice_until_now(&self, user_id: i64) -> Reply {
        self.call(
            "POST",
            "/api/invoices",
            Some(ADMIN_KEY),
            Some(serde_json::json!({"user_id": user_id, "period_start": "2026-01-01T00:00:00Z", "period_end": now_plus(0).to_rfc3339()})),
        )
        .await
    }

    /// Creates a user as admin and returns (user_id, api key).
    pub async fn user(&self, name: &str, email: &str) -> (i64, String) {
        let u = self
            .call(
                "POST",
                "/api/users",
                Some(ADMIN_KEY),
                Some(serde_json::json!({"name": name, "email": email})),
            )
            .await;
        assert_eq!(u.status, 201, "{:?}", u.body);
        let id = u.body["user_id"].as_i64().unwrap();
        let k = self
            .call(
                "POST",
                "/api/keys",
                Some(ADMIN_KEY),
                Some(serde_json::json!({"user_id": id, "label": "test"})),
            )
            .await;
        assert_eq!(k.status, 201, "{:?}", k.body);
        (id, k.body["key"].as_str().unwrap().to_owned())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let header = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (content_type, retry_after) = (
            header("content-type").unwrap_or_default(),
            header("retry-after"),
        );
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Self {
            status,
            content_type,
            retry_after,
            headers,
            body,
        }
    }

    /// Asserts an RFC 9457 problem with this status, and returns its detail.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{:?}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        assert!(self.body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("/problems/")));
        self.body["detail"].as_str().unwrap_or_default().to_owned()
    }
}

/// The bridge, in this process, for a [`Stack`]: its own Kafka, the relay
/// woken by the components' Redis nudges, and one consumer.
pub struct Bridge {
    pub kafka: billing_testkit::Kafka,
    stop: tokio::sync::watch::Sender<bool>,
    workers: billing_bridge::workers::Workers,
}

impl Bridge {
    pub async fn start(stack: &Stack) -> Self {
        Self::start_billing_open_calls_after(stack, 1800).await
    }

    /// [`Bridge::start`], billing gateway calls left open for `open_after_s`.
    pub async fn start_billing_open_calls_after(stack: &Stack, open_after_s: u64) -> Self {
        use billing_bridge::config::{RelayConfig, TopicsConfig};
        let kafka = billing_testkit::Kafka::start(stack.dir.path());
        let db = stack.dir.path().join("billing.db");
        billing_bridge::kafka::ensure_topics(
            &kafka.brokers(),
            &TopicsConfig {
                partitions: 2,
                ..TopicsConfig::default()
            },
        )
        .await
        .unwrap();
        let now = billing_core::Timestamp::from_millis(billing_bridge::now_ms()).unwrap();
        billing_bridge::aggregates::ensure_complete(&db, &stack.redis.url(), 3600, now)
            .await
            .unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let relay = RelayConfig {
            batch_size: 100,
            poll_interval_ms: 200,
            delivery_timeout_ms: 5000,
            open_gateway_calls_after_s: open_after_s,
            ..RelayConfig::default()
        };
        let settings = billing_bridge::consumer::Settings {
            group: "e2e".into(),
            batch_size: 100,
            batch_wait_ms: 5,
            fetch_wait_ms: 50,
            session_timeout_ms: 45_000,
            instance_id: None,
        };
        let workers = billing_bridge::workers::Workers::spawn(
            &db,
            &kafka.brokers(),
            &stack.redis.url(),
            relay,
            settings,
            3600,
            rx,
        )
        .unwrap();
        Self {
            kafka,
            stop,
            workers,
        }
    }

    /// Waits (30 s at most) until the ledger holds `n` events and the outbox is empty.
    pub async fn wait_for(&self, stack: &Stack, n: i64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while stack.count("processed_events") < n || stack.count("outbox") > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bridge handled {} of {n} events; {} left in the outbox",
                stack.count("processed_events"),
                stack.count("outbox")
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.workers.join().await.unwrap();
    }
}
