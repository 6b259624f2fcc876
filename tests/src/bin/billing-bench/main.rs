//! `billing-bench`: benchmarks of the HTTP components through billing-host,
//! each against its own migrated SQLite file and redis-server.
//!
//!   cargo run --release -p billing-e2e --bin billing-bench -- collector [--seconds 10] [--batch 500] [--clients 4]
//!   cargo run --release -p billing-e2e --bin billing-bench -- invoice [--lines 1000000]
//!
//!   cargo run --release -p billing-e2e --bin billing-bench -- bridge [--events 20000] [--rate 1000] [--seconds 20]
//!
//! `collector`: accepted events/s posting batches of fresh inference events.
//! `invoice`: the time to draft one invoice over a user's line items.
//! `bridge`: the bridge end to end (outbox → Kafka → consumers → line items
//! and Redis aggregates) against its own Tansu and redis-server: sustained
//! events/s draining a preloaded outbox, event→billed latency at a fixed
//! offered load, and the raw produce+consume rate of the same broker in
//! the same run (the ceiling).

mod bridge;

use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::json;
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim().to_owned();
    format!("{} cores, {model}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("collector") => collector().await,
        Some("invoice") => invoice().await,
        Some("bridge") => bridge::run(arg("--events", 20_000) as i64, arg("--rate", 1_000) as i64, arg("--seconds", 20) as i64).await,
        _ => {
            eprintln!("usage: billing-bench collector|invoice|bridge [options]");
            std::process::exit(2);
        }
    }
}

async fn collector() {
    let (seconds, batch, clients) = (arg("--seconds", 10), arg("--batch", 500) as usize, arg("--clients", 4) as usize);
    let s = Stack::start_with(&[("COLLECTOR_REQUESTS_PER_SECOND", "1000000")]).await;
    let client = reqwest::Client::new();
    let url = s.url("/api/events");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let (mut accepted, mut requests, mut n) = (0u64, 0u64, 0u64);
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let events: Vec<_> = (0..batch)
                        .map(|_| {
                            n += 1;
                            json!({"specversion": "1.0", "id": format!("c{c}-{n}"), "source": "/bench", "type": "llm-billing.inference",
                                   "time": "2026-11-01T10:00:00Z",
                                   "data": {"user_id": 2, "model": "claude-haiku-4-5-20251001", "request_id": format!("r{n}"), "status": "succeeded",
                                            "latency_ms": 300, "compute_ms": 250, "usage": {"input_tokens": 120, "output_tokens": 40}}})
                        })
                        .collect();
                    let body = serde_json::to_vec(&events).unwrap();
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
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    let stored = s.count("outbox");
    assert_eq!(stored as u64, accepted, "every accepted event is in the outbox");
    println!("machine: {}", machine());
    println!("collector: {accepted} events in {requests} batches of {batch} from {clients} clients in {secs:.1} s = {:.0} events/s; batch latency p50 {:.1} ms, p99 {:.1} ms", accepted as f64 / secs, p(0.5), p(0.99));
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
                let at = billing_core::Timestamp::from_millis(ms).unwrap().to_rfc3339();
                stmt.execute(rusqlite::params![format!("e{}", i / 3), classes[c], 100 + i % 900, prices[c], at]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let expected: i64 = s.db().query_row("SELECT sum(cost_nanos) FROM user_invoice_line_item", [], |r| r.get(0)).unwrap();
    println!("machine: {}", machine());
    println!("inserted {lines} line items in {:.1} s", setup.elapsed().as_secs_f64());
    let t = Instant::now();
    let r = s.call("POST", "/api/invoices", Some(ADMIN_KEY), Some(json!({"user_id": 2, "period_start": "2026-03-01T00:00:00Z", "period_end": "2026-04-01T00:00:00Z"}))).await;
    let took = t.elapsed();
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["total_nanos"].as_i64(), Some(expected));
    assert_eq!(r.body["line_count"].as_i64(), Some(lines));
    println!("invoice: drafted over {lines} line items in {:.0} ms (total {} nano-USD, checked against SQLite)", took.as_secs_f64() * 1000.0, expected);
}

