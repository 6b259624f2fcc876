//! `billing-bench`: benchmarks of the HTTP components through billing-host,
//! each against its own migrated SQLite file and redis-server.
//!
//!   cargo run --release -p billing-e2e --bin billing-bench -- collector [--seconds 10] [--batch 500] [--clients 4]
//!   cargo run --release -p billing-e2e --bin billing-bench -- invoice [--lines 1000000]
//!
//!   cargo run --release -p billing-e2e --bin billing-bench -- sqlite [--events 200000] [--batch 500]
//!   cargo run --release -p billing-e2e --bin billing-bench -- metrics [--line-items 10000000] [--requests 500]
//!   cargo run --release -p billing-e2e --bin billing-bench -- tokens [--requests 200]
//!   cargo run --release -p billing-e2e --bin billing-bench -- gateway [--requests 100]
//!   cargo run --release -p billing-e2e --bin billing-bench -- bridge [--events 20000] [--rate 1000] [--seconds 20] [--relay-batch 500] [--consumer-batch 500] [--batch-wait 5]
//!
//! `collector`: accepted events/s posting batches of fresh inference events.
//! `sqlite`: the baseline of `collector` — the same rows (a dedup row and an
//! outbox row per event, one transaction per batch) written natively with
//! rusqlite into a migrated file, no HTTP and no WebAssembly.
//! `invoice`: the time to draft one invoice over a user's line items.
//! `metrics`: dashboard summary latency (p50/p99) through billing-host over
//! the aggregates of a ledger representing that many line items (three
//! token classes per event), rebuilt into Redis by the bridge's own code;
//! and the SQLite fallback's latency on the same data.
//! `tokens`: `POST /api/tokens/count` latency (p50/p99) for about 2,000 and
//! 100,000 tokens through billing-host, beside the same count done natively
//! by billing-core in the same run (the limit); and llm-sim's answer to a
//! chat turn's request (`POST /sim/v1/messages`), its share of a turn.
//! `gateway`: the latency the LLM gateway adds over llm-sim, beside
//! LiteLLM's proxy ([`gateway`]).
//! `bridge`: the bridge end to end (outbox → Kafka → consumers → line items
//! and Redis aggregates) against its own Apache Kafka and redis-server: sustained
//! events/s draining a preloaded outbox, event→billed latency at a fixed
//! offered load, and the raw produce+consume rate of the same broker in
//! the same run (the ceiling).

mod bridge;
mod gateway;

use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::json;
use std::time::{Duration, Instant};

/// The value after `name` on the command line.
fn arg_text(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn arg(name: &str, default: u64) -> u64 {
    arg_text(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's CPU time (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line (11, 12 here).
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / 100.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    format!(
        "{} cores, {model}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

#[tokio::main]
async fn main() {
    // The in-process host's warnings go to stderr, apart from the figures on
    // stdout (Stack's own subscriber, for tests, would print to stdout).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match std::env::args().nth(1).as_deref() {
        Some("collector") => collector().await,
        Some("invoice") => invoice().await,
        Some("metrics") => {
            metrics(
                arg("--line-items", 10_000_000) as i64,
                arg("--requests", 500) as usize,
            )
            .await
        }
        Some("sqlite") => {
            sqlite(arg("--events", 200_000), arg("--batch", 500));
        }
        Some("tokens") => tokens(arg("--requests", 200) as usize).await,
        Some("gateway") => gateway::run(arg("--requests", 100) as usize).await,
        Some("bridge") => {
            bridge::run(
                arg("--events", 20_000) as i64,
                arg("--rate", 1_000) as i64,
                arg("--seconds", 20) as i64,
            )
            .await
        }
        _ => {
            eprintln!(
                "usage: billing-bench collector|invoice|metrics|sqlite|tokens|bridge|gateway [options]"
            );
            std::process::exit(2);
        }
    }
}

async fn collector() {
    let (seconds, batch, clients) = (
        arg("--seconds", 10),
        arg("--batch", 500) as usize,
        arg("--clients", 4) as usize,
    );
    let s = Stack::start_with(&[("COLLECTOR_REQUESTS_PER_SECOND", "1000000")]).await;
    let client = reqwest::Client::new();
    let url = s.url("/api/events");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let cpu0 = cpu_seconds();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let (mut accepted, mut requests, mut n) = (0u64, 0u64, 0u64);
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    // The same JSON serde_json would write, formatted directly so
                    // the clients take less of the two cores from the server.
                    let mut body = String::with_capacity(batch * 320);
                    body.push('[');
                    for i in 0..batch {
                        n += 1;
                        if i > 0 {
                            body.push(',');
                        }
                        use std::fmt::Write as _;
                        let _ = write!(body, r#"{{"specversion":"1.0","id":"c{c}-{n}","source":"/bench","type":"llm-billing.inference","time":"2026-11-01T10:00:00Z","data":{{"user_id":2,"model":"claude-haiku-4-5-20251001","request_id":"r{n}","status":"succeeded","latency_ms":300,"compute_ms":250,"usage":{{"input_tokens":120,"output_tokens":40}}}}}}"#);
                    }
                    body.push(']');
                    let t = Instant::now();
                    let r = client.post(&url).bearer_auth(ADMIN_KEY).header("content-type", "application/cloudevents-batch+json").body(body).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
                    let v: serde_json::Value = r.json().await.unwrap();
                    latencies.push(t.elapsed());
                    accepted += v["accepted"].as_u64().unwrap();
                    requests += 1;
                }
                (accepted, requests, latencies)
            })
        })
        .collect();
    let (mut accepted, mut requests, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (a, r, l) = t.await.unwrap();
        accepted += a;
        requests += r;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    lat.sort();
    let p =
        |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    let stored = s.count("outbox");
    assert_eq!(
        stored as u64, accepted,
        "every accepted event is in the outbox"
    );
    println!("machine: {}", machine());
    let rate = accepted as f64 / secs;
    println!("collector: {accepted} events in {requests} batches of {batch} from {clients} clients in {secs:.1} s = {rate:.0} events/s; batch latency p50 {:.1} ms, p99 {:.1} ms", p(0.5), p(0.99));
    println!(
        "collector CPU: {:.1} µs per event (server and clients, user + system)",
        cpu * 1e6 / accepted as f64
    );
    drop(s);
    let raw = sqlite(200_000, batch as u64);
    println!(
        "collector / raw SQLite in the same run: {:.0}%",
        rate / raw * 100.0
    );
}

/// The events/s written natively.
fn sqlite(events: u64, batch: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("billing.db");
    billing_migrations::open_and_migrate(&path).unwrap();
    let mut db = rusqlite::Connection::open(&path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    while n < events {
        let tx = db.transaction().unwrap();
        {
            let mut dedup = tx.prepare_cached("INSERT INTO collected_events (user_id, source, event_id, payload_sha256) VALUES (2, ?1, ?2, ?3) ON CONFLICT DO NOTHING RETURNING source, event_id").unwrap();
            let mut outbox = tx.prepare_cached("INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES ('inference-events', '2', ?1, ?2, ?3)").unwrap();
            for _ in 0..batch {
                n += 1;
                let id = format!("s-{n}");
                let payload = json!({"specversion": "1.0", "id": id, "source": "/bench", "type": "llm-billing.inference", "time": "2026-11-01T10:00:00Z",
                    "data": {"user_id": 2, "model": "claude-haiku-4-5-20251001", "request_id": format!("r{n}"), "status": "succeeded",
                             "latency_ms": 300, "compute_ms": 250, "usage": {"input_tokens": 120, "output_tokens": 40}}}).to_string();
                // The collector keeps each event's SHA-256 to tell a retry from a reused id.
                let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(payload.as_bytes()));
                let fresh = dedup
                    .query_map(("/bench", &id, &hash), |_| Ok(()))
                    .unwrap()
                    .count();
                if fresh == 1 {
                    outbox.execute(("/bench", &id, payload)).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let stored: i64 = db
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored as u64, n);
    println!("machine: {}", machine());
    println!("sqlite: {n} events (a dedup row and an outbox row each) in transactions of {batch}, natively, in {secs:.1} s = {:.0} events/s", n as f64 / secs);
    n as f64 / secs
}

async fn invoice() {
    let lines = arg("--lines", 1_000_000) as i64;
    let s = Stack::start().await;
    let setup = Instant::now();
    {
        let mut db = s.db();
        let tx = db.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO user_invoice_line_item (source, event_id, user_id, model_id, pricing_id, token_class, tokens, unit_price, cost_nanos, occurred_at)
                     VALUES ('/bench', ?1, 2, 5, 5, ?2, ?3, ?4, ?3 * ?4 / 1000, ?5)",
                )
                .unwrap();
            let classes = ["input", "output", "cache_read"];
            let prices = [1_000_000i64, 5_000_000, 100_000];
            for i in 0..lines {
                let c = (i % 3) as usize;
                let ms = 1_772_323_200_000i64 + i * 2; // from 2026-03-01, 2 ms apart
                let at = billing_core::Timestamp::from_millis(ms)
                    .unwrap()
                    .to_rfc3339();
                stmt.execute(rusqlite::params![
                    format!("e{}", i / 3),
                    classes[c],
                    100 + i % 900,
                    prices[c],
                    at
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let expected: i64 = s
        .db()
        .query_row(
            "SELECT sum(cost_nanos) FROM user_invoice_line_item",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!("machine: {}", machine());
    println!(
        "inserted {lines} line items in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let r = s.call("POST", "/api/invoices", Some(ADMIN_KEY), Some(json!({"user_id": 2, "period_start": "2026-03-01T00:00:00Z", "period_end": "2026-04-01T00:00:00Z"}))).await;
    let took = t.elapsed();
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["total_nanos"].as_i64(), Some(expected));
    assert_eq!(r.body["line_count"].as_i64(), Some(lines));
    println!("invoice: drafted over {lines} line items in {:.0} ms (total {} nano-USD, checked against SQLite)", took.as_secs_f64() * 1000.0, expected);
    let id = r.body["invoice_id"].as_i64().unwrap();
    let t = Instant::now();
    let f = s
        .call(
            "POST",
            &format!("/api/invoices/{id}/finalize"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    let took = t.elapsed();
    assert_eq!(f.status, 200, "{:?}", f.body);
    assert_eq!(f.body["total_nanos"].as_i64(), Some(expected));
    let claimed: i64 = s
        .db()
        .query_row(
            "SELECT count(*) FROM user_invoice_line_item WHERE invoice_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(claimed, lines, "finalizing put every line on the invoice");
    println!(
        "invoice: finalized (every line claimed) in {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
}

async fn metrics(line_items: i64, requests: usize) {
    let events = line_items / 3;
    let users = 200i64;
    let s = Stack::start().await;
    let setup = Instant::now();
    {
        let mut db = s.db();
        let tx = db.transaction().unwrap();
        {
            let mut u = tx.prepare("INSERT INTO dim_users (user_id, name, email, role) VALUES (?1, ?2, ?3, 'user')").unwrap();
            for i in 0..users {
                u.execute(rusqlite::params![
                    1000 + i,
                    format!("Bench {i}"),
                    format!("bench{i}@example.com")
                ])
                .unwrap();
            }
            let mut stmt = tx
                .prepare(
                    "INSERT INTO processed_events (consumer, source, event_id, topic, partition, kafka_offset, user_id, model, thread_id, occurred_at, latency_ms, cost_nanos,
                         input_tokens, output_tokens, cache_read_tokens)
                     VALUES ('token-metrics', '/bench', ?1, 'token-metrics', 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .unwrap();
            let models = [
                "claude-haiku-4-5-20251001",
                "claude-sonnet-4-5-20250929",
                "claude-opus-4-5-20251101",
            ];
            let start = 1_772_323_200_000i64; // 2026-03-01
            let span = 30 * 86_400_000i64;
            for i in 0..events {
                let user = 1000 + i % users;
                let at = billing_core::Timestamp::from_millis(start + i * span / events)
                    .unwrap()
                    .to_rfc3339();
                let (input, output, cached) = (100 + i % 900, 20 + i % 300, (i % 5) * 1000);
                stmt.execute(rusqlite::params![
                    format!("e{i}"),
                    i,
                    user,
                    models[(i % 3) as usize],
                    10_000 + user,
                    at,
                    200 + i % 800,
                    input * 1000 + output * 5000 + cached * 100,
                    input,
                    output,
                    cached
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    println!("machine: {}", machine());
    println!("ledger: {events} events (= {line_items} line items of three token classes) over 30 days and {users} users, written in {:.1} s", setup.elapsed().as_secs_f64());
    let t = Instant::now();
    let now = billing_core::Timestamp::from_millis(billing_bridge::now_ms()).unwrap();
    let r = billing_bridge::aggregates::rebuild(
        &s.dir.path().join("billing.db"),
        &s.redis.url(),
        3600,
        now,
    )
    .await
    .unwrap();
    println!(
        "rebuild-redis: {} events into {} aggregate changes in {:.1} s",
        r.events,
        r.commands,
        t.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::new();
    let queries = [
        (
            "the whole 30 days, everyone",
            "from=2026-03-01T00:00:00Z&to=2026-03-31T00:00:00Z".to_owned(),
        ),
        (
            "one day, one user",
            "from=2026-03-10T00:00:00Z&to=2026-03-11T00:00:00Z&user=1007".to_owned(),
        ),
        (
            "366 days, one model",
            "from=2025-11-01T00:00:00Z&to=2026-11-02T00:00:00Z&model=claude-sonnet-4-5-20250929"
                .to_owned(),
        ),
    ];
    let mut redis_totals = Vec::new();
    for (what, q) in &queries {
        let url = s.url(&format!("/api/metrics/summary?{q}"));
        let mut lat = Vec::with_capacity(requests);
        let mut body = serde_json::Value::Null;
        for _ in 0..requests {
            let t = Instant::now();
            let r = client
                .get(&url)
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            body = r.json().await.unwrap();
            lat.push(t.elapsed());
        }
        assert_eq!(body["source"], "redis");
        lat.sort();
        let p = |q: f64| {
            lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0
        };
        println!("summary from Redis, {what}: p50 {:.2} ms, p99 {:.2} ms over {requests} requests (cost {} nano-USD)", p(0.5), p(0.99), body["cost_nanos"]);
        redis_totals.push(body["cost_nanos"].clone());
    }
    // The same answers from the SQLite fallback (Redis without the aggregates).
    let mut r = redis::Client::open(s.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("billing:aggregates-complete")
        .query_async(&mut r)
        .await
        .unwrap();
    for ((what, q), expected) in queries.iter().zip(&redis_totals) {
        let t = Instant::now();
        let body: serde_json::Value = client
            .get(s.url(&format!("/api/metrics/summary?{q}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (&body["source"], &body["cost_nanos"]),
            (&json!("sqlite"), expected),
            "SQLite and Redis agree"
        );
        println!(
            "summary from the SQLite fallback, {what}: {:.0} ms (one request; same figures)",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// p50 and p99 of `samples`, in ms.
fn p50_p99(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50).as_secs_f64() * 1e3, at(0.99).as_secs_f64() * 1e3)
}

async fn tokens(requests: usize) {
    use billing_core::tokenizer::count_text;
    let s = Stack::start().await;
    let client = reqwest::Client::new();
    let model = "claude-haiku-4-5-20251001";
    println!("machine: {}", machine());
    println!("| text | tokens | through billing-host p50 / p99 | inside the component p50 | native p50 / p99 | host p50 / native p50 |");
    println!("|---|---|---|---|---|---|");
    let sentence =
        "The invoice total is rounded to cents once, half to even; 12 línea items, 東京 ✓. ";
    for (label, repeats, n) in [
        ("~2,000 tokens", 80, requests),
        ("~100,000 tokens", 4330, requests / 4),
    ] {
        let text = sentence.repeat(repeats);
        let (mut host, mut inside, mut native) = (Vec::new(), Vec::new(), Vec::new());
        let mut counted = 0;
        for _ in 0..n.max(10) {
            let t = Instant::now();
            let r = client
                .post(s.url("/api/tokens/count"))
                .bearer_auth(ADMIN_KEY)
                .json(&json!({"model": model, "text": text}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            host.push(t.elapsed());
            inside.push(Duration::from_millis(v["elapsed_ms"].as_u64().unwrap_or(0)));
            counted = v["input_tokens"].as_u64().unwrap();
            let t = Instant::now();
            let local = count_text(model, &text).tokens;
            native.push(t.elapsed());
            // The component adds 4 per request and 3 per message to the text's own count.
            assert_eq!(local + 7, counted, "the component and billing-core agree");
        }
        let ((hp50, hp99), (ip50, _), (np50, np99)) = (
            p50_p99(&mut host),
            p50_p99(&mut inside),
            p50_p99(&mut native),
        );
        println!(
            "| {label} | {counted} | {hp50:.2} / {hp99:.2} ms | {ip50:.0} ms | {np50:.3} / {np99:.3} ms | {:.1}x |",
            hp50 / np50
        );
    }
    let turn = json!({"model": model, "max_tokens": 400, "messages": [
        {"role": "user", "content": "How is a cache read priced, and when does the long-context tier apply to a request?"}
    ]});
    let mut sim = Vec::new();
    for _ in 0..requests.max(10) {
        let t = Instant::now();
        let r = client
            .post(s.url("/sim/v1/messages"))
            .header("x-api-key", "bench")
            .header("anthropic-version", "2023-06-01")
            .json(&turn)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        r.bytes().await.unwrap();
        sim.push(t.elapsed());
    }
    let (p50, p99) = p50_p99(&mut sim);
    println!("llm-sim, one chat turn's request (POST /sim/v1/messages): p50 {p50:.2} ms, p99 {p99:.2} ms over {} requests", sim.len());
}
