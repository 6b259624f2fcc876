//! The bridge benchmark: see `billing-bench bridge` in main.rs.

use billing_bridge::config::{RelayConfig, TopicsConfig};
use billing_bridge::consumer::Settings;
use billing_bridge::relay;
use billing_bridge::workers::Workers;
use billing_core::events::{CloudEvent, TokenMetrics};
use billing_core::{ModelName, Timestamp, Usage};
use billing_testkit::{Kafka, Redis};
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::path::Path;
use std::time::{Duration, Instant};

const USERS: i64 = 50;

fn event(i: i64, at: Timestamp) -> CloudEvent<TokenMetrics> {
    let user = 10 + i % USERS;
    CloudEvent::new(
        format!("bench-{i}"),
        "/bench/bridge",
        at,
        None,
        TokenMetrics {
            user_id: user,
            thread_id: 100_000 + user,
            message_id: i + 1,
            model: ModelName::parse("claude-haiku-4-5-20251001").unwrap(),
            usage: Usage {
                input_tokens: 200 + (i % 100) as u64,
                output_tokens: 50 + (i % 30) as u64,
                cache_read_input_tokens: (i % 4) as u64 * 1000,
                ..Default::default()
            },
            latency_ms: 300,
        },
    )
}

/// Expected cost in nano-USD (Haiku 4.5: $1 input, $5 output, $0.10 cache read per million tokens).
fn cost(ev: &CloudEvent<TokenMetrics>) -> i64 {
    let u = &ev.data.usage;
    u.input_tokens as i64 * 1_000
        + u.output_tokens as i64 * 5_000
        + u.cache_read_input_tokens as i64 * 100
}

fn enqueue(
    conn: &mut rusqlite::Connection,
    range: std::ops::Range<i64>,
    at: impl Fn(i64) -> Timestamp,
) -> i64 {
    let tx = conn.transaction().unwrap();
    let mut total = 0;
    {
        let mut stmt = tx.prepare_cached("INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES ('token-metrics', ?1, ?2, ?3, ?4)").unwrap();
        for i in range {
            let ev = event(i, at(i));
            total += cost(&ev);
            stmt.execute(rusqlite::params![ev.key(), ev.source, ev.id, ev.to_json()])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    total
}

fn now() -> Timestamp {
    Timestamp::from_millis(billing_bridge::now_ms()).unwrap()
}

fn count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// A bridge in this process: the relay (nudged through Redis) and one consumer.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    workers: Workers,
}

fn start_bridge(db: &Path, brokers: &str, redis: &str, group: &str) -> Running {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let relay = RelayConfig {
        poll_interval_ms: 50,
        batch_size: super::arg("--relay-batch", RelayConfig::default().batch_size as u64) as usize,
        ..RelayConfig::default()
    };
    let settings = Settings {
        group: group.to_owned(),
        batch_size: super::arg(
            "--consumer-batch",
            billing_bridge::config::ConsumerConfig::default().batch_size as u64,
        ) as usize,
        batch_wait_ms: super::arg("--batch-wait", 5),
        fetch_wait_ms: super::arg(
            "--fetch-wait",
            billing_bridge::config::ConsumerConfig::default().fetch_wait_ms,
        ),
        session_timeout_ms: 45_000,
        instance_id: None,
    };
    let workers = Workers::spawn(db, brokers, redis, relay, settings, 8 * 24 * 3600, rx).unwrap();
    Running { stop, workers }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.workers.join().await.unwrap();
    }
}

async fn redis_day_totals(redis: &Redis, day: &str) -> (i64, i64) {
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: Vec<Option<i64>> = redis::cmd("HMGET")
        .arg(format!("billing:agg:d:{day}"))
        .arg("*|cost")
        .arg("*|turns")
        .query_async(&mut r)
        .await
        .unwrap();
    (v[0].unwrap_or(0), v[1].unwrap_or(0))
}

/// The broker's own ceiling: `n` messages of the payload size produced
/// (idempotent, acks=all, as the relay does) and consumed, concurrently.
async fn raw_rate(brokers: &str, n: i64, payload: &str) -> f64 {
    billing_bridge::kafka::ensure_topics(
        brokers,
        &TopicsConfig {
            partitions: 6,
            ..TopicsConfig::default()
        },
    )
    .await
    .unwrap();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
    admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                "bench-raw",
                6,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-raw")
        .set(
            "fetch.wait.max.ms",
            super::arg(
                "--fetch-wait",
                billing_bridge::config::ConsumerConfig::default().fetch_wait_ms,
            )
            .to_string(),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["bench-raw"]).unwrap();
    let producer = billing_bridge::kafka::producer(brokers, 30_000).unwrap();
    let started = Instant::now();
    let produce = tokio::spawn({
        let payload = payload.to_owned();
        async move {
            // Up to 10,000 sends in flight: the producer batches them as it
            // would under load, so this is the broker's rate, not a round trip's.
            for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
                let sends = chunk.iter().map(|i| {
                    let key = (i % USERS).to_string();
                    let p = producer.clone();
                    let payload = payload.clone();
                    async move {
                        p.send("bench-raw", key.as_bytes(), payload.as_bytes(), &[])
                            .await
                    }
                });
                for r in futures::future::join_all(sends).await {
                    r.unwrap();
                }
            }
        }
    });
    let mut got = 0;
    while got < n {
        tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("raw consume stalled")
            .unwrap();
        got += 1;
    }
    produce.await.unwrap();
    n as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

pub async fn run(events: i64, rate: i64, seconds: i64) {
    let dir = tempfile::tempdir().unwrap();
    // `--brokers HOST:PORT`: an external broker (a fresh one: the bench's
    // topics and groups must start empty), e.g. the docker-compose Kafka;
    // else an Apache Kafka node of its own.
    let external = super::arg_text("--brokers");
    let kafka = external.is_none().then(|| Kafka::start(dir.path()));
    let brokers = external.unwrap_or_else(|| kafka.as_ref().unwrap().brokers());
    println!(
        "broker: {}",
        if kafka.is_some() {
            "Apache Kafka (one KRaft node, scripts/kafka-broker.sh), started by the bench"
        } else {
            &brokers
        }
    );
    let redis = Redis::start();
    let db = dir.path().join("billing.db");
    let (mut conn, _) = billing_migrations::open_and_migrate(&db).unwrap();
    for u in 10..10 + USERS {
        conn.execute(
            "INSERT INTO dim_users (user_id, name, email, role) VALUES (?1, ?2, ?3, 'user')",
            rusqlite::params![u, format!("Bench {u}"), format!("b{u}@example.com")],
        )
        .unwrap();
    }
    billing_bridge::kafka::ensure_topics(
        &brokers,
        &TopicsConfig {
            partitions: 6,
            ..TopicsConfig::default()
        },
    )
    .await
    .unwrap();
    println!("machine: {}", super::machine());

    // 1. The ceiling: raw produce+consume of the same broker.
    let payload = event(0, now()).to_json();
    let raw = raw_rate(&brokers, events, &payload).await;
    println!("raw broker: {events} messages of {} bytes produced (idempotent, acks=all) and consumed: {raw:.0} messages/s", payload.len());

    // 2. Sustained: drain a preloaded outbox of `events` events.
    let day = "2026-07-01";
    let base = Timestamp::parse(&format!("{day}T00:00:00Z"))
        .unwrap()
        .millis();
    let expected = enqueue(&mut conn, 0..events, |i| {
        Timestamp::from_millis(base + i).unwrap()
    });
    let started = Instant::now();
    let bridge = start_bridge(&db, &brokers, &redis.url(), "bench-sustained");
    loop {
        let (_, turns) = redis_day_totals(&redis, day).await;
        if turns >= events {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the bridge did not drain {events} events in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let e2e = events as f64 / secs;
    let billed: i64 = count(&db, &format!("SELECT coalesce(sum(cost_nanos), 0) FROM user_invoice_line_item WHERE occurred_at LIKE '{day}%'"));
    let (agg_cost, agg_turns) = redis_day_totals(&redis, day).await;
    assert_eq!(
        (billed, agg_cost, agg_turns),
        (expected, expected, events),
        "billed and aggregated exactly"
    );
    println!("end to end: {events} events from the outbox to line items and aggregates in {secs:.1} s = {e2e:.0} events/s ({:.0}% of the raw broker rate); totals exact: {expected} nano-USD", e2e / raw * 100.0);

    // 3. Latency at a fixed offered load: `rate` events/s for `seconds`, stamped when written.
    let offered = rate * seconds;
    let first = events;
    let writer = tokio::task::spawn_blocking({
        let (db, url) = (db.clone(), redis.url());
        move || {
            let mut conn = billing_migrations::open(&db).unwrap();
            let mut r = redis::Client::open(url).unwrap().get_connection().unwrap();
            let tick = Duration::from_millis(10);
            let per_tick = (rate / 100).max(1);
            let t0 = Instant::now();
            let mut written = 0;
            let mut total = 0;
            while written < offered {
                let n = per_tick.min(offered - written);
                total += enqueue(&mut conn, first + written..first + written + n, |_| now());
                let _: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(relay::NUDGE_CHANNEL)
                    .arg("bench")
                    .query(&mut r);
                written += n;
                let due = tick * (written / per_tick) as u32;
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            (total, t0.elapsed().as_secs_f64())
        }
    });
    let (_, took) = writer.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&db, "SELECT count(*) FROM processed_events") < events + offered {
        assert!(Instant::now() < deadline, "the offered load did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bridge.stop().await;
    let mut lat: Vec<i64> = rusqlite::Connection::open(&db)
        .unwrap()
        .prepare("SELECT occurred_at, processed_at FROM processed_events WHERE event_id >= 'bench-' AND occurred_at NOT LIKE ?1")
        .unwrap()
        .query_map([format!("{day}%")], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (a, b) = r.unwrap();
            Timestamp::parse(&b).unwrap().millis() - Timestamp::parse(&a).unwrap().millis()
        })
        .collect();
    lat.sort();
    println!(
        "fixed load: {offered} events offered at {:.0} events/s; event→billed (written to the outbox → its line items committed) p50 {} ms, p99 {} ms, max {} ms",
        offered as f64 / took,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().unwrap()
    );
    // The bridge runs in this process, so its peak resident memory is at
    // most the process's (which also holds the bench's own data).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap_or("?")
        .trim();
    println!("peak resident memory of this process (bridge + bench): {peak}");
}
