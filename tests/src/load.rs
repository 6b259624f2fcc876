//! The load generator behind `billing-load`: simulated users chatting
//! through the messages component (llm-sim behind the real Anthropic client)
//! and a steady stream of inference events through the collector, against a
//! running system. Every request is retried until it is answered — chat
//! turns with their `Idempotency-Key`, event batches with their CloudEvent
//! ids — so a server killed mid-request costs time, never a lost or doubled
//! charge. Afterwards it waits for the bridge to drain and reconciles what
//! it expects from its own records with the SQLite line items, the Redis
//! aggregates (through the metrics API) and draft invoices, to the nano-USD.

use billing_core::pricing::{
    quote, resource_cost, PriceVersion, ResourcePriceVersion, TokenPrices,
};
use billing_core::{Timestamp, Usage};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The model every simulated user talks to and every event names.
pub const MODEL: &str = "claude-haiku-4-5-20251001";
const EVENT_SOURCE: &str = "/load";
const CHAT_SOURCE: &str = "/functions/messages";

/// Where the system under load answers.
#[derive(Debug, Clone)]
pub struct Target {
    /// billing-host, e.g. `http://127.0.0.1:3000`.
    pub url: String,
    /// The bridge's HTTP side for the live stream, e.g. `http://127.0.0.1:3100`.
    pub live_url: Option<String>,
    pub admin_key: String,
    /// The SQLite file the system writes, read for the reconciliation.
    pub db: PathBuf,
}

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Simulated users, each chatting in a thread of its own, one turn at a time.
    pub users: usize,
    /// Pause between a user's turns.
    pub think: Duration,
    /// Inference events offered per second through the collector (0: none).
    pub events_per_s: u32,
    /// Events per collector request.
    pub batch: usize,
    /// Concurrent senders of event batches (each one request at a time).
    pub lanes: usize,
    pub duration: Duration,
    /// How long a request is retried before the run is failed.
    pub give_up: Duration,
    /// How long the system has to bill everything after the load stops.
    pub drain_timeout: Duration,
    /// A progress line on stderr, refreshed every second.
    pub progress: bool,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            users: 10,
            think: Duration::from_millis(100),
            events_per_s: 500,
            batch: 50,
            lanes: 2,
            duration: Duration::from_secs(30),
            give_up: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(300),
            progress: false,
        }
    }
}

/// What the generator knows from its own records.
#[derive(Default)]
struct Books {
    expected_nanos: BTreeMap<i64, i64>,
    turns: BTreeMap<i64, u64>,
    events: BTreeMap<i64, u64>,
    /// When each billed event was answered with 2xx (wall clock), by (source, id).
    sent: HashMap<(String, String), SystemTime>,
    /// When each event's live notice arrived.
    seen_live: HashMap<String, SystemTime>,
    latency: BTreeMap<&'static str, Vec<Duration>>,
    retries: u64,
    /// Answers that were neither success nor retryable, and results that
    /// disagree with the generator's own pricing.
    failures: Vec<String>,
}

type Shared = Arc<Mutex<Books>>;

/// Prices the generator computes its expectations with (read once at the start).
struct Prices {
    model: PriceVersion,
    resources: BTreeMap<String, ResourcePriceVersion>,
}

impl Prices {
    async fn load(http: &reqwest::Client, t: &Target) -> Result<Self, String> {
        let p = get_json(
            http,
            &format!("{}/api/pricing?model={MODEL}", t.url),
            &t.admin_key,
        )
        .await?;
        let v = &p["items"][0]["in_force"];
        let mut prices = v["prices"].clone();
        prices
            .as_object_mut()
            .ok_or("no prices in force")?
            .remove("display");
        let model = PriceVersion {
            pricing_id: v["pricing_id"].as_i64().ok_or("no pricing_id")?,
            model: MODEL.into(),
            effective_from: serde_json::from_value(v["effective_from"].clone())
                .map_err(|e| e.to_string())?,
            prices: serde_json::from_value::<TokenPrices>(prices).map_err(|e| e.to_string())?,
            rules: serde_json::from_value(v.get("rules").cloned().unwrap_or(json!({})))
                .map_err(|e| e.to_string())?,
        };
        let r = get_json(
            http,
            &format!("{}/api/resource-pricing", t.url),
            &t.admin_key,
        )
        .await?;
        let mut resources = BTreeMap::new();
        for item in r["items"].as_array().into_iter().flatten() {
            if !item["in_force"].is_null() {
                let v: ResourcePriceVersion =
                    serde_json::from_value(item["in_force"].clone()).map_err(|e| e.to_string())?;
                resources.insert(v.resource.clone(), v);
            }
        }
        Ok(Self { model, resources })
    }

    fn inference_cost(&self, usage: &Usage, compute_ms: u64) -> i64 {
        let mut c = quote(&self.model, &[], usage).expect("valid usage").total.0;
        for (resource, q) in [("inference_request", 1), ("compute_time", compute_ms)] {
            if let Some(v) = self.resources.get(resource) {
                c += resource_cost(v, q).expect("in range").0;
            }
        }
        c
    }
}

async fn get_json(http: &reqwest::Client, url: &str, key: &str) -> Result<Value, String> {
    let r = http
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status} {v}"));
    }
    Ok(v)
}

/// An error with its causes (reqwest's own text leaves out, say, the
/// refused connection).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

/// Sends until answered: 2xx returns, 429 waits its retry-after, 409 and
/// 5xx and lost connections back off and send the same request again;
/// any other answer is a failure.
async fn send(
    books: &Shared,
    label: &'static str,
    give_up: Duration,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Value, String> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    // What the last try got, for the message when giving up.
    let mut last: String;
    loop {
        let t = Instant::now();
        let wait = match request().send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let body = r.bytes().await;
                last = match &body {
                    Ok(b) => format!(
                        "{status} {}",
                        String::from_utf8_lossy(&b[..b.len().min(500)])
                    ),
                    Err(e) => format!("{status}, body cut: {}", with_causes(e)),
                };
                match (status, body) {
                    (200..=299, Ok(b)) => {
                        books
                            .lock()
                            .unwrap()
                            .latency
                            .entry(label)
                            .or_default()
                            .push(t.elapsed());
                        return Ok(if b.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_slice(&b).map_err(|e| format!("{label}: {e}"))?
                        });
                    }
                    (429, _) => Duration::from_secs(retry_after.unwrap_or(1)),
                    (409 | 500..=599, _) | (_, Err(_)) => backoff,
                    (s, Ok(b)) => {
                        return Err(format!("{label}: {s} {}", String::from_utf8_lossy(&b)))
                    }
                }
            }
            Err(e) => {
                last = with_causes(&e);
                backoff
            }
        };
        if started.elapsed() > give_up {
            return Err(format!(
                "{label}: no answer for {} s; the last try got: {last}",
                give_up.as_secs()
            ));
        }
        books.lock().unwrap().retries += 1;
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

struct User {
    id: i64,
    key: String,
    thread: i64,
}

async fn make_user(
    http: &reqwest::Client,
    t: &Target,
    books: &Shared,
    run: &str,
    i: usize,
    give_up: Duration,
) -> Result<User, String> {
    let admin = &t.admin_key;
    let email = format!("load-{run}-{i}@example.com");
    // Users are made before any fault is injected: a create is not retried
    // into a conflict with itself.
    let u = send(books, "POST /api/users", give_up, || {
        http.post(format!("{}/api/users", t.url))
            .bearer_auth(admin)
            .json(&json!({"name": format!("Load user {i}"), "email": email}))
    })
    .await?;
    let id = u["user_id"].as_i64().ok_or("no user_id")?;
    let k = send(books, "POST /api/keys", give_up, || {
        http.post(format!("{}/api/keys", t.url))
            .bearer_auth(admin)
            .json(&json!({"user_id": id, "label": "load"}))
    })
    .await?;
    let key = k["key"].as_str().ok_or("no key")?.to_owned();
    let th = send(books, "POST /api/threads", give_up, || {
        http.post(format!("{}/api/threads", t.url))
            .bearer_auth(&key)
            .json(&json!({"title": format!("Load {run}"), "model": MODEL}))
    })
    .await?;
    Ok(User {
        id,
        key,
        thread: th["thread_id"].as_i64().ok_or("no thread_id")?,
    })
}

const WORDS: [&str; 12] = [
    "price", "cache", "tokens", "invoice", "latency", "model", "budget", "thread", "summary",
    "exact", "ledger", "cents",
];

/// One user's turns until `until`.
async fn chat(
    http: reqwest::Client,
    t: Arc<Target>,
    books: Shared,
    prices: Arc<Prices>,
    run: Arc<str>,
    user: User,
    plan: Arc<Plan>,
    until: Instant,
) -> Result<(), String> {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let words: Vec<&str> = (0..(3 + (n as usize * 7 + user.id as usize) % 40))
            .map(|w| WORDS[(w * 5 + n as usize) % WORDS.len()])
            .collect();
        let content = format!("Turn {n}: {}", words.join(" "));
        let key = format!("{run}-{}-{n}", user.id);
        let url = format!("{}/api/threads/{}/messages", t.url, user.thread);
        let r = send(
            &books,
            "POST /api/threads/{id}/messages",
            plan.give_up,
            || {
                http.post(&url)
                    .bearer_auth(&user.key)
                    .header("idempotency-key", &key)
                    .json(&json!({"content": content}))
            },
        )
        .await?;
        let answered = SystemTime::now();
        let usage: Usage = serde_json::from_value(json!({
            "input_tokens": r["usage"]["input"], "output_tokens": r["usage"]["output"],
            "cache_read_input_tokens": r["usage"]["cache_read"],
            "cache_creation": {"ephemeral_5m_input_tokens": r["usage"]["cache_write_5m"], "ephemeral_1h_input_tokens": r["usage"]["cache_write_1h"]},
            "cache_creation_input_tokens": r["usage"]["cache_write_5m"].as_u64().unwrap_or(0) + r["usage"]["cache_write_1h"].as_u64().unwrap_or(0),
        }))
        .map_err(|e| format!("usage of a turn: {e}: {}", r["usage"]))?;
        let mine = quote(&prices.model, &[], &usage)
            .map_err(|e| e.to_string())?
            .total
            .0;
        {
            let mut b = books.lock().unwrap();
            if r["cost"]["nanos"].as_i64() != Some(mine)
                || r["cost"]["pricing_id"].as_i64() != Some(prices.model.pricing_id)
            {
                b.failures.push(format!("turn {key}: the server charged {} (price {}), the generator computes {mine} (price {})", r["cost"]["nanos"], r["cost"]["pricing_id"], prices.model.pricing_id));
            }
            *b.expected_nanos.entry(user.id).or_default() += mine;
            *b.turns.entry(user.id).or_default() += 1;
            if let Some(id) = r["events"][2].as_str() {
                b.sent.insert((CHAT_SOURCE.into(), id.into()), answered);
            }
        }
        if n.is_multiple_of(5) {
            // What the user's dashboard asks for.
            let url = format!("{}/api/metrics/summary?user={}", t.url, user.id);
            send(&books, "GET /api/metrics/summary", plan.give_up, || {
                http.get(&url).bearer_auth(&user.key)
            })
            .await?;
        }
        tokio::time::sleep(plan.think).await;
    }
    Ok(())
}

/// Inference events at `rate` per second in batches, spread over the users.
async fn events(
    http: reqwest::Client,
    t: Arc<Target>,
    books: Shared,
    prices: Arc<Prices>,
    run: Arc<str>,
    users: Vec<i64>,
    rate: f64,
    lane: usize,
    plan: Arc<Plan>,
    until: Instant,
) -> Result<(), String> {
    let url = format!("{}/api/events", t.url);
    let started = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < until {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        if due < sent + plan.batch as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let mut batch = Vec::with_capacity(plan.batch);
        let mut costs = Vec::with_capacity(plan.batch);
        let now = Timestamp::from_millis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        )
        .unwrap();
        for _ in 0..plan.batch {
            sent += 1;
            let user = users[(sent as usize * 7 + lane) % users.len()];
            let usage = Usage {
                input_tokens: 50 + sent % 450,
                output_tokens: 10 + sent % 190,
                cache_read_input_tokens: if sent.is_multiple_of(3) {
                    sent % 1000
                } else {
                    0
                },
                ..Usage::default()
            };
            let compute_ms = 100 + sent % 900;
            let id = format!("{run}-{lane}-{sent}");
            costs.push((user, id.clone(), prices.inference_cost(&usage, compute_ms)));
            batch.push(json!({
                "specversion": "1.0", "id": id, "source": EVENT_SOURCE, "type": "llm-billing.inference", "time": now.to_rfc3339(),
                "data": {"user_id": user, "model": MODEL, "request_id": format!("req-{id}"), "status": "succeeded", "latency_ms": 200 + sent % 300,
                         "compute_ms": compute_ms, "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "cache_read_input_tokens": usage.cache_read_input_tokens}},
            }));
        }
        let body = serde_json::to_vec(&batch).unwrap();
        let r = send(&books, "POST /api/events", plan.give_up, || {
            http.post(&url)
                .bearer_auth(&t.admin_key)
                .header("content-type", "application/cloudevents-batch+json")
                .body(body.clone())
        })
        .await?;
        let answered = SystemTime::now();
        let mut b = books.lock().unwrap();
        let (accepted, duplicates) = (
            r["accepted"].as_u64().unwrap_or(0),
            r["duplicates"].as_u64().unwrap_or(0),
        );
        if accepted + duplicates != plan.batch as u64 {
            b.failures.push(format!(
                "a batch of {} was answered accepted {accepted} + duplicates {duplicates}",
                plan.batch
            ));
        }
        for (user, id, cost) in costs {
            *b.expected_nanos.entry(user).or_default() += cost;
            *b.events.entry(user).or_default() += 1;
            // Keyed as the ledger keys a customer's event.
            b.sent.insert(
                (
                    billing_core::events::customer_source(user, EVENT_SOURCE),
                    id,
                ),
                answered,
            );
        }
    }
    Ok(())
}

/// Follows the bridge's live stream as admin, noting when each event's notice arrives.
async fn follow(http: reqwest::Client, live: String, key: String, books: Shared, until: Instant) {
    use futures::StreamExt;
    let mut last_id: Option<String> = None;
    while Instant::now() < until {
        let mut rb = http.get(format!("{live}/events/stream")).bearer_auth(&key);
        if let Some(id) = &last_id {
            rb = rb.header("last-event-id", id);
        }
        let Ok(resp) = rb.send().await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let chunk = match tokio::time::timeout(left, stream.next()).await {
                Ok(Some(Ok(c))) => c,
                Ok(_) => break,
                Err(_) => return,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                for line in frame.lines() {
                    if let Some(id) = line.strip_prefix("id:") {
                        last_id = Some(id.trim().to_owned());
                    } else if let Some(data) = line.strip_prefix("data:") {
                        if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                            if let Some(id) = v["event_id"].as_str() {
                                books
                                    .lock()
                                    .unwrap()
                                    .seen_live
                                    .entry(id.to_owned())
                                    .or_insert_with(SystemTime::now);
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn progress(books: Shared, plan: Arc<Plan>, started: Instant, until: Instant) {
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = books.lock().unwrap();
        let (turns, events): (u64, u64) = (b.turns.values().sum(), b.events.values().sum());
        let secs = started.elapsed().as_secs_f64();
        let done = (secs / plan.duration.as_secs_f64()).min(1.0);
        let bar: String = (0..30)
            .map(|i| if (i as f64) < done * 30.0 { '#' } else { '.' })
            .collect();
        eprint!(
            "\r[{bar}] {:>4.0}/{} s  turns {turns} ({:.1}/s)  events {events} ({:.0}/s)  retries {}   ",
            secs,
            plan.duration.as_secs(),
            turns as f64 / secs,
            events as f64 / secs,
            b.retries
        );
    }
    eprintln!();
}

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        Self {
            n: v.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n {:>7}  p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
            self.n, self.p50, self.p99, self.max
        )
    }
}

/// Four views of the same money, and of the same counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub cost_nanos: i64,
    pub turns: u64,
    pub events: u64,
}

/// What a run did and whether everything adds up.
#[derive(Debug)]
pub struct Report {
    pub seconds: f64,
    pub users: usize,
    pub latency: BTreeMap<&'static str, Percentiles>,
    pub retries: u64,
    pub failures: Vec<String>,
    pub billed: Percentiles,
    pub live: Percentiles,
    pub expected: Tally,
    pub sqlite: Tally,
    pub redis: Tally,
    pub invoices_nanos: i64,
    pub drained_in: f64,
    /// How long after the drain the Redis aggregates agreed with the ledger.
    pub redis_trailed: f64,
    /// Per user, where the views disagree.
    pub mismatches: Vec<String>,
}

impl Report {
    pub fn reconciled(&self) -> bool {
        self.failures.is_empty()
            && self.mismatches.is_empty()
            && self.expected == self.sqlite
            && self.expected == self.redis
            && self.invoices_nanos == self.expected.cost_nanos
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t, e) = (self.expected.turns, self.expected.events);
        writeln!(f, "load: {} users for {:.1} s: {t} chat turns ({:.1}/s), {e} inference events ({:.0}/s); {} retried requests", self.users, self.seconds, t as f64 / self.seconds, e as f64 / self.seconds, self.retries)?;
        for (label, p) in &self.latency {
            writeln!(f, "  {label:<36} {p}")?;
        }
        writeln!(f, "  event -> billed (SQLite ledger)     {}", self.billed)?;
        writeln!(f, "  event -> dashboard (live notice)    {}", self.live)?;
        writeln!(
            f,
            "drained {:.1} s after the load stopped; the Redis aggregates agreed with the ledger {:.1} s later",
            self.drained_in, self.redis_trailed
        )?;
        writeln!(f, "reconciliation (nano-USD; turns; events):")?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, x: &Tally| {
            writeln!(
                f,
                "  {name:<26} {:>16}  {:>7}  {:>8}",
                x.cost_nanos, x.turns, x.events
            )
        };
        row(f, "expected (own records)", &self.expected)?;
        row(f, "SQLite line items", &self.sqlite)?;
        row(f, "Redis aggregates", &self.redis)?;
        writeln!(f, "  {:<26} {:>16}", "draft invoices", self.invoices_nanos)?;
        let lost = e as i64 + t as i64 - (self.sqlite.events + self.sqlite.turns) as i64;
        writeln!(
            f,
            "  lost events: {}, double-counted: {}",
            lost.max(0),
            (-lost).max(0)
        )?;
        for m in self.mismatches.iter().chain(&self.failures) {
            writeln!(f, "  MISMATCH {m}")?;
        }
        write!(
            f,
            "{}",
            if self.reconciled() {
                "RECONCILED: every view agrees to the nano-USD"
            } else {
                "NOT RECONCILED"
            }
        )
    }
}

/// Runs the load (while `during` runs beside it, e.g. a fault schedule),
/// drains and reconciles.
pub async fn run<F: std::future::Future<Output = ()>>(
    t: Target,
    plan: Plan,
    during: F,
) -> Result<Report, String> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let books: Shared = Arc::default();
    let prices = Arc::new(Prices::load(&http, &t).await?);
    let run_id: Arc<str> = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
    .into();
    let mut users = Vec::new();
    for i in 0..plan.users {
        users.push(make_user(&http, &t, &books, &run_id, i, plan.give_up).await?);
    }
    let user_ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let (t, plan) = (Arc::new(t), Arc::new(plan));
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let until = started + plan.duration;
    let follower = t.live_url.as_ref().map(|live| {
        tokio::spawn(follow(
            http.clone(),
            live.clone(),
            t.admin_key.clone(),
            books.clone(),
            until + plan.drain_timeout,
        ))
    });
    if plan.progress {
        tokio::spawn(progress(books.clone(), plan.clone(), started, until));
    }
    let mut tasks = Vec::new();
    for u in users {
        tasks.push(tokio::spawn(chat(
            http.clone(),
            t.clone(),
            books.clone(),
            prices.clone(),
            run_id.clone(),
            u,
            plan.clone(),
            until,
        )));
    }
    let lanes = if plan.events_per_s > 0 {
        plan.lanes.max(1)
    } else {
        0
    };
    for lane in 0..lanes {
        let rate = plan.events_per_s as f64 / lanes as f64;
        tasks.push(tokio::spawn(events(
            http.clone(),
            t.clone(),
            books.clone(),
            prices.clone(),
            run_id.clone(),
            user_ids.clone(),
            rate,
            lane,
            plan.clone(),
            until,
        )));
    }
    let ((), results) = tokio::join!(during, futures::future::join_all(tasks));
    for r in results {
        r.map_err(|e| e.to_string())??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stopped = Instant::now();
    let drained = drain(&t, &books, &user_ids, plan.drain_timeout).await;
    let drained_in = stopped.elapsed().as_secs_f64();
    if let Err(e) = drained {
        books.lock().unwrap().failures.push(e);
    }
    let report = reconcile(
        &http,
        &t,
        &books,
        &user_ids,
        started_wall,
        seconds,
        drained_in,
        plan.drain_timeout,
    )
    .await;
    if let Some(f) = follower {
        f.abort();
    }
    report
}

/// The system's SQLite file, read only.
fn open_db(db: &std::path::Path) -> Result<rusqlite::Connection, String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// What SQLite holds for one user: line items' cost and ledger rows by consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ledger {
    cost: i64,
    turns: u64,
    events: u64,
    messages: u64,
}

/// Every user's [`Ledger`], and the outbox's length.
fn sqlite_view(
    conn: &rusqlite::Connection,
    users: &[i64],
) -> Result<(BTreeMap<i64, Ledger>, i64), String> {
    let list = users
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut per_user: BTreeMap<i64, Ledger> =
        users.iter().map(|u| (*u, Ledger::default())).collect();
    let err = |e: rusqlite::Error| e.to_string();
    let mut st = conn
        .prepare(&format!(
            "SELECT user_id, sum(cost_nanos) FROM (SELECT user_id, cost_nanos FROM user_invoice_line_item WHERE user_id IN ({list})
             UNION ALL SELECT user_id, cost_nanos FROM resource_invoice_line_item WHERE user_id IN ({list})) GROUP BY user_id"
        ))
        .map_err(err)?;
    let mut rows = st.query([]).map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        per_user.entry(r.get(0).map_err(err)?).or_default().cost = r.get(1).map_err(err)?;
    }
    let mut st = conn
        .prepare(&format!(
            "SELECT user_id, count(*) FILTER (WHERE consumer = 'token-metrics'), count(*) FILTER (WHERE consumer = 'inference-events'),
                    count(*) FILTER (WHERE consumer = 'raw-messages')
             FROM processed_events WHERE user_id IN ({list}) GROUP BY user_id"
        ))
        .map_err(err)?;
    let mut rows = st.query([]).map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let e = per_user.entry(r.get(0).map_err(err)?).or_default();
        (e.turns, e.events, e.messages) = (
            r.get(1).map_err(err)?,
            r.get(2).map_err(err)?,
            r.get(3).map_err(err)?,
        );
    }
    let outbox: i64 = conn
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .map_err(err)?;
    Ok((per_user, outbox))
}

/// Waits until the outbox is empty and the ledger holds every event the generator had answered.
async fn drain(t: &Target, books: &Shared, users: &[i64], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let conn = open_db(&t.db)?;
    loop {
        let (per_user, outbox) = sqlite_view(&conn, users)?;
        let b = books.lock().unwrap();
        let done = outbox == 0
            && users.iter().all(|u| {
                let l = per_user[u];
                let want_t = b.turns.get(u).copied().unwrap_or(0);
                l.turns >= want_t
                    && l.messages >= want_t
                    && l.events >= b.events.get(u).copied().unwrap_or(0)
            });
        drop(b);
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not drained after {} s: {outbox} events still in the outbox",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn hour_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(3_600_000)
}

#[allow(clippy::too_many_arguments)]
async fn reconcile(
    http: &reqwest::Client,
    t: &Target,
    books: &Shared,
    users: &[i64],
    started: SystemTime,
    seconds: f64,
    drained_in: f64,
    timeout: Duration,
) -> Result<Report, String> {
    let ms = |s: SystemTime| s.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let ts = |m: i64| Timestamp::from_millis(m).unwrap().to_rfc3339();
    let from = hour_floor(ms(started));
    let to = hour_floor(ms(SystemTime::now())) + 3_600_000;
    let conn = open_db(&t.db)?;
    let (sqlite_users, _) = sqlite_view(&conn, users)?;
    let b = books.lock().unwrap();
    let mut mismatches = Vec::new();
    let expected = Tally {
        cost_nanos: b.expected_nanos.values().sum(),
        turns: b.turns.values().sum(),
        events: b.events.values().sum(),
    };
    let mut sqlite = Tally::default();
    for u in users {
        let Ledger {
            cost: c,
            turns,
            events,
            ..
        } = sqlite_users[u];
        sqlite.cost_nanos += c;
        sqlite.turns += turns;
        sqlite.events += events;
        let want = (
            b.expected_nanos.get(u).copied().unwrap_or(0),
            b.turns.get(u).copied().unwrap_or(0),
            b.events.get(u).copied().unwrap_or(0),
        );
        if want != (c, turns, events) {
            mismatches.push(format!(
                "user {u}: expected {want:?} (nanos, turns, events), SQLite has {:?}",
                (c, turns, events)
            ));
        }
    }
    drop(b);
    // The Redis aggregates, as the dashboard reads them. After Redis lost
    // its data the bridge rebuilds them; until then the answer says "sqlite".
    let mut redis = Tally::default();
    let redis_started = Instant::now();
    for u in users {
        let url = format!(
            "{}/api/metrics/summary?user={u}&from={}&to={}",
            t.url,
            ts(from),
            ts(to)
        );
        let Ledger {
            cost: sc,
            turns: st,
            events: se,
            messages: sm,
        } = sqlite_users[u];
        let agrees = |v: &Value| {
            (
                v["cost_nanos"].as_i64(),
                v["turns"].as_u64(),
                v["requests"].as_u64(),
                v["messages"].as_u64(),
                v["responses"].as_u64(),
            ) == (Some(sc), Some(st), Some(se), Some(sm), Some(st))
        };
        // The bridge commits an event to the ledger before it applies it to
        // the aggregates (and retries that with backoff while Redis is away
        // or being rebuilt), so Redis may trail the ledger for a moment
        // after the drain: wait for it to agree, for the timeout at most.
        let deadline = Instant::now() + timeout;
        let v = loop {
            let v = get_json(http, &url, &t.admin_key).await;
            match v {
                Ok(v) if v["source"] == "redis" && agrees(&v) => break v,
                Ok(v) if v["source"] == "redis" && Instant::now() > deadline => break v,
                _ if Instant::now() > deadline => {
                    mismatches.push(format!(
                        "user {u}: the dashboard's summary never came from Redis: {v:?}"
                    ));
                    break Value::Null;
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        let (c, turns, events) = (
            v["cost_nanos"].as_i64().unwrap_or(0),
            v["turns"].as_u64().unwrap_or(0),
            v["requests"].as_u64().unwrap_or(0),
        );
        redis.cost_nanos += c;
        redis.turns += turns;
        redis.events += events;
        if !agrees(&v) {
            mismatches.push(format!(
                "user {u}: Redis {v}, SQLite cost {sc} turns {st} events {se} messages {sm}"
            ));
        }
    }
    let redis_trailed = redis_started.elapsed().as_secs_f64();
    // Draft invoices over the run, then dropped so the lines are free again.
    let mut invoices_nanos = 0;
    let day = 86_400_000;
    let (start, end) = (
        ms(started) - ms(started).rem_euclid(day),
        to - to.rem_euclid(day) + day,
    );
    for u in users {
        let r = http
            .post(format!("{}/api/invoices", t.url))
            .bearer_auth(&t.admin_key)
            .json(&json!({"user_id": u, "period_start": ts(start), "period_end": ts(end)}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        let total = v["total_nanos"]
            .as_i64()
            .ok_or_else(|| format!("no draft invoice for user {u}: {v}"))?;
        invoices_nanos += total;
        if total != sqlite_users[u].cost {
            mismatches.push(format!(
                "user {u}: draft invoice {total}, SQLite {}",
                sqlite_users[u].cost
            ));
        }
        http.delete(format!("{}/api/invoices/{}", t.url, v["invoice_id"]))
            .bearer_auth(&t.admin_key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
    }
    // Freshness: the ledger's processed_at, and the live notice, after the answer.
    let b = books.lock().unwrap();
    let mut billed = Vec::with_capacity(b.sent.len());
    let mut live = Vec::new();
    {
        let mut st = conn.prepare("SELECT processed_at FROM processed_events WHERE consumer IN ('token-metrics', 'inference-events') AND source = ?1 AND event_id = ?2").map_err(|e| e.to_string())?;
        for ((source, id), at) in &b.sent {
            let sent = ms(*at) as f64;
            if let Ok(p) = st.query_row((source, id), |r| r.get::<_, String>(0)) {
                if let Ok(p) = Timestamp::parse(&p) {
                    billed.push((p.millis() as f64 - sent).max(0.0));
                }
            }
            if let Some(seen) = b.seen_live.get(id) {
                live.push((ms(*seen) as f64 - sent).max(0.0));
            }
        }
    }
    let mut latency = BTreeMap::new();
    for (label, v) in &b.latency {
        latency.insert(
            *label,
            Percentiles::of(v.iter().map(|d| d.as_secs_f64() * 1000.0).collect()),
        );
    }
    let mut failures = b.failures.clone();
    if t.live_url.is_some() && live.is_empty() && !b.sent.is_empty() {
        failures.push("no live notice arrived".into());
    }
    Ok(Report {
        seconds,
        users: users.len(),
        latency,
        retries: b.retries,
        failures,
        billed: Percentiles::of(billed),
        live: Percentiles::of(live),
        expected,
        sqlite,
        redis,
        invoices_nanos,
        drained_in,
        redis_trailed,
        mismatches,
    })
}
