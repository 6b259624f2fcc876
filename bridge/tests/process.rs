//! The `billing-bridge` binary as operators run it, against its own Apache Kafka
//! and redis-server: killed mid-batch and restarted, two processes in one
//! consumer group, Redis flushed and rebuilt, the live stream and the
//! operations endpoints, SIGTERM.

use billing_core::events::{CloudEvent, TokenMetrics};
use billing_core::{ModelName, Timestamp, Usage};
use billing_testkit::{free_port, wait_for_port, Kafka, Redis};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ADMIN_KEY: &str = "lcb_admin_test_key";
const USER2_KEY: &str = "lcb_0000000000000000000000000000000000000002";

/// A running `billing-bridge run`.
struct Bridge {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Bridge {
    /// `member` is the static group member name: a restart under the same
    /// name takes the partitions back, as a restarted service would.
    fn start(dir: &Path, name: &str, member: &str, kafka: &Kafka, redis: &Redis) -> Self {
        let port = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"database = "{db}"
brokers = "{brokers}"
redis_url = "{redis}"
admin_api_key = "{ADMIN_KEY}"
[relay]
poll_interval_ms = 100
delivery_timeout_ms = 3000
lease_ms = 4000
[topics]
partitions = 4
[consumer]
group = "bridge-under-test"
batch_size = 200
instance_id = "{member}"
[aggregates]
check_interval_s = 1
[http]
listen = "127.0.0.1:{port}"
sse_heartbeat_s = 1
"#,
                db = dir.join("billing.db").display(),
                brokers = kafka.brokers(),
                redis = redis.url(),
            ),
        )
        .unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_billing-bridge"))
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(port, "billing-bridge");
        Self {
            child,
            port,
            log: log_path,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status (within 20 s).
    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("billing-bridge did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("SHOW_BRIDGE_LOGS").is_some() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            // librdkafka repeats its global errors every few ms while a broker is away; they would hide
            // the rest, so the tail shows the other lines, then how many of those there were and the last.
            let (global, other): (Vec<&str>, Vec<&str>) =
                log.lines().partition(|l| l.contains("Global error"));
            let tail = &other[other.len().saturating_sub(40)..];
            eprintln!(
                "--- {} (last lines) ---\n{}\n--- {} librdkafka global-error lines left out; the last: {}",
                self.log.display(),
                tail.join("\n"),
                global.len(),
                global.last().unwrap_or(&"none")
            );
        }
    }
}

/// A migrated database with users 10..10+n and their API keys where asked.
fn database(dir: &Path, users: i64) -> PathBuf {
    let db = dir.join("billing.db");
    let (conn, _) = billing_migrations::open_and_migrate(&db).unwrap();
    for u in 10..10 + users {
        conn.execute(
            "INSERT INTO dim_users (user_id, name, email, role) VALUES (?1, ?2, ?3, 'user')",
            rusqlite::params![u, format!("User {u}"), format!("u{u}@example.com")],
        )
        .unwrap();
    }
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(USER2_KEY.as_bytes()));
    conn.execute(
        "INSERT INTO api_keys (user_id, key_prefix, key_hash) VALUES (2, 'lcb_0000', ?1)",
        [hash],
    )
    .unwrap();
    db
}

/// Haiku 4.5: $1 input, $5 output per million tokens = 1,000 and 5,000 nano-USD a token.
fn event(i: i64, user: i64) -> CloudEvent<TokenMetrics> {
    CloudEvent::new(
        format!("ev-{i}"),
        "/test/load",
        Timestamp::from_millis(
            Timestamp::parse("2026-06-01T00:00:00Z").unwrap().millis() + i * 997,
        )
        .unwrap(),
        None,
        TokenMetrics {
            user_id: user,
            thread_id: 1_000 + user,
            message_id: i + 1,
            model: ModelName::parse("claude-haiku-4-5-20251001").unwrap(),
            usage: Usage {
                input_tokens: (i % 50 + 1) as u64,
                output_tokens: (i % 7 + 1) as u64,
                ..Default::default()
            },
            latency_ms: 100,
        },
    )
}

/// Writes events `range` to the outbox for users 10..10+users; returns the cost they must bill.
fn enqueue(db: &Path, range: std::ops::Range<i64>, users: i64) -> i64 {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    let mut cost = 0;
    for i in range {
        let ev = event(i, 10 + i % users);
        cost +=
            ev.data.usage.input_tokens as i64 * 1_000 + ev.data.usage.output_tokens as i64 * 5_000;
        tx.execute(
            "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES ('token-metrics', ?1, ?2, ?3, ?4)",
            rusqlite::params![ev.key(), ev.source, ev.id, ev.to_json()],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    cost
}

fn count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

async fn redis_conn(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Σ `*|cost` and `*|turns` over the day buckets.
async fn redis_totals(redis: &Redis) -> (i64, i64) {
    let mut r = redis_conn(redis).await;
    let got: Vec<Option<i64>> = redis::cmd("HMGET")
        .arg("billing:agg:d:2026-06-01")
        .arg("*|cost")
        .arg("*|turns")
        .query_async(&mut r)
        .await
        .unwrap();
    (got[0].unwrap_or(0), got[1].unwrap_or(0))
}

/// Waits (120 s at most) until every event is billed and aggregated and the outbox is empty.
/// Generous: a Kafka node restarted after SIGKILL first waits out its old incarnation's 9 s
/// session, and in one CI run a restarted node served no client for the 60 s this used to wait
/// (cause unknown then; the node's log, shown when a test fails, now names its fencing).
async fn drained(db: &Path, redis: &Redis, events: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = count(db, "SELECT count(*) FROM processed_events") == events
            && count(db, "SELECT count(*) FROM outbox") == 0
            && redis_totals(redis).await.1 == events;
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained: {} processed, {} in the outbox, aggregates {:?}",
            count(db, "SELECT count(*) FROM processed_events"),
            count(db, "SELECT count(*) FROM outbox"),
            redis_totals(redis).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Line items, their cost and the aggregates are exactly what was sent.
async fn assert_exact(db: &Path, redis: &Redis, events: i64, cost: i64) {
    assert_eq!(count(db, "SELECT count(*) FROM processed_events"), events);
    assert_eq!(
        count(db, "SELECT count(*) FROM user_invoice_line_item"),
        events * 2,
        "one input and one output line per event"
    );
    assert_eq!(
        count(
            db,
            "SELECT coalesce(sum(cost_nanos), 0) FROM user_invoice_line_item"
        ),
        cost,
        "billed exactly once"
    );
    assert_eq!(
        redis_totals(redis).await,
        (cost, events),
        "the aggregates count every event once"
    );
}

/// Every `billing:agg:*` key and its contents, sorted.
async fn dump(redis: &Redis) -> BTreeMap<String, Vec<String>> {
    let mut r = redis_conn(redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("billing:agg:*")
        .query_async(&mut r)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut r)
            .await
            .unwrap();
        let mut v: Vec<String> = match kind.as_str() {
            "hash" => redis::cmd("HGETALL")
                .arg(&k)
                .query_async(&mut r)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&k)
                .query_async(&mut r)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut r)
                .await
                .unwrap(),
            other => panic!("unexpected {other} at {k}"),
        };
        if kind != "zset" {
            let mut pairs: Vec<String> = if kind == "hash" {
                v.chunks(2).map(|p| format!("{}={}", p[0], p[1])).collect()
            } else {
                v
            };
            pairs.sort();
            v = pairs;
        }
        out.insert(k, v);
    }
    out
}

// SIGKILL while batches are in flight (relay and consumers), then a restart: every event billed and aggregated exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_then_restarted_totals_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (kafka, redis) = (Kafka::start(dir.path()), Redis::start());
    let db = database(dir.path(), 20);
    let events = 4_000;
    let cost = enqueue(&db, 0..events, 20);

    let bridge = Bridge::start(dir.path(), "first", "solo", &kafka, &redis);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM processed_events") < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was processed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bridge.kill();
    let at_kill = count(&db, "SELECT count(*) FROM processed_events");
    assert!(
        at_kill < events,
        "the kill came after everything was done ({at_kill}); the test proves nothing"
    );

    let bridge = Bridge::start(dir.path(), "second", "solo", &kafka, &redis);
    drained(&db, &redis, events).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exact(&db, &redis, events, cost).await;
    assert!(bridge.terminate().success());
}

// The broker killed mid-stream while events keep coming, then restarted: the backlog waits in the outbox, nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_then_restarted_totals_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kafka, redis) = (Kafka::start(dir.path()), Redis::start());
    let db = database(dir.path(), 20);
    let bridge = Bridge::start(dir.path(), "broker", "solo", &kafka, &redis);
    let mut cost = enqueue(&db, 0..2_000, 20);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM processed_events") < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was processed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kafka.kill();
    cost += enqueue(&db, 2_000..3_000, 20);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        count(&db, "SELECT count(*) FROM outbox") > 0,
        "the backlog waits in the outbox while the broker is away"
    );
    let backlog = || async {
        reqwest::get(bridge.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .lines()
            .any(|l| l.starts_with("billing_bridge_outbox_backlog ") && !l.ends_with(" 0"))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !backlog().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog never showed in /metrics"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = reqwest::get(bridge.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without the broker");
    kafka.restart();
    drained(&db, &redis, 3_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exact(&db, &redis, 3_000, cost).await;
    assert!(bridge.terminate().success());
}

// Fenced once (another client took its static name for a moment, as the bridge's own rejoin does after a long
// broker outage), the bridge rejoins with a new client under its name and bills on, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_member_rejoins_and_bills_on() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let dir = tempfile::tempdir().unwrap();
    let (kafka, redis) = (Kafka::start(dir.path()), Redis::start());
    let db = database(dir.path(), 20);
    let bridge = Bridge::start(dir.path(), "solo", "solo", &kafka, &redis);
    held_within(&bridge, Duration::from_secs(60)).await;
    let before = 300;
    let cost = enqueue(&db, 0..before, 20);
    drained(&db, &redis, before).await;
    // Another client joins under the bridge's name while events flow: the broker fences the bridge's membership.
    let during = 3_000;
    let cost = cost + enqueue(&db, before..before + during, 20);
    let before = before + during;
    let usurper: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", "bridge-under-test")
        .set("group.instance.id", "solo")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    usurper
        .subscribe(&[
            "token-metrics",
            "inference-events",
            "raw-messages",
            "llm-responses",
        ])
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&bridge.log)
        .unwrap()
        .contains("rejoining with a new client")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge was not fenced by a client under its name"
        );
        let _ = usurper.poll(Duration::from_millis(100));
    }
    drop(usurper);
    let mut bridge = bridge;
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "a bridge fenced once runs on"
    );
    held_within(&bridge, Duration::from_secs(60)).await;
    let after = 500;
    let cost = cost + enqueue(&db, before..before + after, 20);
    drained(&db, &redis, before + after).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exact(&db, &redis, before + after, cost).await;
    let metrics = metrics_text(&bridge).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"billing_bridge_consumer_fatal_total{rejoin="true"} 1"#),
        "one rejoin counted: {metrics}"
    );
    assert!(bridge.terminate().success());
}

/// The bridge's `/metrics` page.
async fn metrics_text(bridge: &Bridge) -> String {
    reqwest::get(bridge.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until `bridge` reports assigned partitions.
async fn held_within(bridge: &Bridge, wait: Duration) {
    let url = bridge.url("/metrics");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.text()
                .await
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("billing_bridge_assigned_partitions ") && !l.ends_with(" 0"))
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge got no partitions within {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Two processes under one static name fence each other in turn; each rejoins at most twice in ten minutes, then
// one stops with a non-zero status and says why, instead of running on without billing; the other keeps billing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_member_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (kafka, redis) = (Kafka::start(dir.path()), Redis::start());
    let db = database(dir.path(), 20);
    let mut first = Bridge::start(dir.path(), "first", "twin", &kafka, &redis);
    held_within(&first, Duration::from_secs(60)).await;
    let mut second = Bridge::start(dir.path(), "second", "twin", &kafka, &redis);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (fenced, survivor) = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break ((status, &first.log), &mut second);
        }
        if let Some(status) = second.child.try_wait().unwrap() {
            break ((status, &second.log), &mut first);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "neither bridge stopped although they share one static member name"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        fenced.0.code(),
        Some(1),
        "a fenced bridge exits with status 1"
    );
    let log = std::fs::read_to_string(fenced.1).unwrap();
    assert!(
        log.contains("the consumer stopped") && log.contains("fatal Kafka consumer error"),
        "the log says why: {log}"
    );
    assert_eq!(
        log.matches("rejoining with a new client").count(),
        2,
        "it rejoined twice before it stopped: {log}"
    );
    assert!(
        survivor.child.try_wait().unwrap().is_none(),
        "the other bridge runs on"
    );
    let events = 500;
    let cost = enqueue(&db, 0..events, 20);
    drained(&db, &redis, events).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exact(&db, &redis, events, cost).await;
}

// Two processes in one group share the partitions; then Redis is flushed and the aggregates come back exactly,
// rebuilt by the bridges themselves and by `rebuild-redis`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_share_partitions_and_redis_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let (kafka, redis) = (Kafka::start(dir.path()), Redis::start());
    let db = database(dir.path(), 20);
    let a = Bridge::start(dir.path(), "a", "a", &kafka, &redis);
    let b = Bridge::start(dir.path(), "b", "b", &kafka, &redis);
    // Both members hold partitions before the load arrives (a fixed wait
    // was not enough on a loaded machine: the one that joined first
    // billed everything before the other had any).
    split_between(&a, &b).await;
    let events = 3_000;
    let cost = enqueue(&db, 0..events, 20);
    drained(&db, &redis, events).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exact(&db, &redis, events, cost).await;

    let (ma, mb) = split_between(&a, &b).await;
    let handled = |metrics: &str| {
        metric_sum(
            metrics,
            "billing_bridge_events_total{topic=\"token-metrics\"",
        )
    };
    let (ha, hb) = (handled(&ma), handled(&mb));
    assert!(ha > 0 && hb > 0, "both processes consumed: {ha} and {hb}");
    assert!(ha + hb >= events as u64);
    // One relay at a time (the lease): every outbox row was produced once, by one of them.
    let (ra, rb) = (
        metric_sum(&ma, "billing_bridge_relay_delivered_total"),
        metric_sum(&mb, "billing_bridge_relay_delivered_total"),
    );
    assert_eq!(
        (ra + rb, ra.min(rb)),
        (events as u64, 0),
        "relayed by a: {ra}, by b: {rb}"
    );

    let before = dump(&redis).await;
    assert!(before.len() > 10, "{:?}", before.keys());
    let mut r = redis_conn(&redis).await;
    // Redis loses everything: the bridges notice and rebuild by themselves.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut r).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dump(&redis).await != before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridges did not rebuild the aggregates by themselves"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And once more, by hand.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut r).await.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_billing-bridge"))
        .args([
            "--config",
            dir.path().join("a.toml").to_str().unwrap(),
            "rebuild-redis",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("rebuilt from {events} events")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = dump(&redis).await;
    let differ: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "the rebuilt aggregates differ from the live ones at {differ:?}: {:?} vs {:?}",
        differ.first().map(|k| before.get(*k)),
        differ.first().map(|k| after.get(*k))
    );
    // The rebuild marked the events: a redelivered one changes nothing.
    let duplicates = || async {
        let series = "billing_bridge_events_total{topic=\"token-metrics\",outcome=\"duplicate\"}";
        metric_sum(&metrics_text(&a).await, series) + metric_sum(&metrics_text(&b).await, series)
    };
    let seen_before = duplicates().await;
    let again = event(7, 17);
    rdkafka::producer::FutureProducer::send(
        &rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.brokers())
            .create::<rdkafka::producer::FutureProducer>()
            .unwrap(),
        rdkafka::producer::FutureRecord::to("token-metrics")
            .key(&again.key())
            .payload(&again.to_json()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Once one of them has handled it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while duplicates().await == seen_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no bridge counted the redelivered event a duplicate within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dump(&redis).await, before);
    a.kill();
    b.kill();
}

/// The sum of every sample of `series` (a name, or a name and the start of
/// its labels) on a /metrics page.
fn metric_sum(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until the four topics' four partitions are split between the two
/// members (a rebalance in progress, on a loaded machine, has settled);
/// returns both /metrics pages.
async fn split_between(a: &Bridge, b: &Bridge) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ma, mb) = (metrics_text(a).await, metrics_text(b).await);
        let (pa, pb) = (
            metric_sum(&ma, "billing_bridge_assigned_partitions"),
            metric_sum(&mb, "billing_bridge_assigned_partitions"),
        );
        if pa > 0 && pb > 0 && pa + pb == 16 {
            return (ma, mb);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions held: a {pa}, b {pb}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads SSE `data:` events (with their ids) from `url` for `window`, or until `max` arrived.
async fn sse(
    url: &str,
    key: &str,
    last_event_id: Option<&str>,
    window: Duration,
    max: usize,
) -> (Vec<(String, serde_json::Value)>, String) {
    let mut req = reqwest::Client::new().get(url).bearer_auth(key);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    read_sse(resp, window, max).await
}

/// Opens the live stream and returns once its headers came: the bridge
/// subscribes before it answers, so every notice from then on is in it.
async fn open_sse(url: &str, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Reads an opened live stream's `data:` events (with their ids) for
/// `window`, or until `max` arrived; also returns the raw text.
async fn read_sse(
    resp: reqwest::Response,
    window: Duration,
    max: usize,
) -> (Vec<(String, serde_json::Value)>, String) {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut raw = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while events.len() < max {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => raw.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
        events = raw
            .split("\n\n")
            .filter_map(|frame| {
                let id = frame.lines().find_map(|l| l.strip_prefix("id: "))?;
                let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((id.to_owned(), serde_json::from_str(data).ok()?))
            })
            .collect();
    }
    (events, raw)
}

// The live stream: each user only their own notices, admin all, heartbeats, replay after Last-Event-ID; health, readiness, metrics; SIGTERM stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_and_operations() {
    let dir = tempfile::tempdir().unwrap();
    let (kafka, redis) = (Kafka::start(dir.path()), Redis::start());
    let db = database(dir.path(), 0);
    let bridge = Bridge::start(dir.path(), "live", "solo", &kafka, &redis);

    assert_eq!(
        reqwest::get(bridge.url("/healthz")).await.unwrap().status(),
        200
    );
    // Ready once its checks of the broker and Redis pass (at most 60 s on a loaded machine).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready: serde_json::Value = reqwest::get(bridge.url("/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["ready"] == true {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    held_within(&bridge, Duration::from_secs(60)).await;
    // Notices reach a stream through the bridge's subscription to the Redis
    // channel: it must be in place before the events are billed.
    redis
        .subscribed("billing:notices", Duration::from_secs(60))
        .await;
    let denied = reqwest::Client::new()
        .get(bridge.url("/events/stream"))
        .bearer_auth("lcb_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["content-type"], "application/problem+json");

    let stream_url = bridge.url("/events/stream");
    let user = tokio::spawn(read_sse(
        open_sse(&stream_url, USER2_KEY).await,
        Duration::from_secs(60),
        2,
    ));
    let admin = tokio::spawn(read_sse(
        open_sse(&stream_url, ADMIN_KEY).await,
        Duration::from_secs(60),
        3,
    ));
    // Users 2, 3, 2.
    for (i, u) in [(1, 2), (2, 3), (3, 2)] {
        let ev = event(i, u);
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute("INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES ('token-metrics', ?1, ?2, ?3, ?4)", rusqlite::params![ev.key(), ev.source, ev.id, ev.to_json()])
            .unwrap();
    }
    let (admin_events, _) = admin.await.unwrap();
    let (user_events, user_raw) = user.await.unwrap();
    let users = |evs: &[(String, serde_json::Value)]| {
        evs.iter()
            .map(|(_, v)| v["user_id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    let mut all = users(&admin_events);
    all.sort();
    assert_eq!(all, vec![2, 2, 3], "admin sees everyone's");
    assert_eq!(
        users(&user_events),
        vec![2, 2],
        "a user sees only their own"
    );
    assert!(user_events
        .iter()
        .all(|(_, v)| v["cost_nanos"].as_i64().unwrap() > 0 && v["event_type"] == "token-metrics"));
    // The stream opens by telling the browser how soon to reconnect.
    assert!(user_raw.starts_with("retry: 2000\n"), "{user_raw}");

    // Reconnecting after the first notice replays the rest, in order.
    let (replayed, _) = sse(
        &stream_url,
        ADMIN_KEY,
        Some(&admin_events[0].0),
        Duration::from_secs(3),
        2,
    )
    .await;
    assert_eq!(
        replayed
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        admin_events[1..]
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    );
    // An idle stream gets heartbeats.
    let (_, idle) = sse(&stream_url, USER2_KEY, None, Duration::from_millis(2500), 1).await;
    assert!(idle.contains(": heartbeat"), "{idle}");

    let metrics = metrics_text(&bridge).await;
    for series in [
        "billing_bridge_outbox_backlog 0",
        "billing_bridge_events_total{topic=\"token-metrics\",outcome=\"billed\"} 3",
        "billing_bridge_event_billed_latency_seconds_count 3",
        "billing_bridge_assigned_partitions 16",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }

    // A burst billed in one batch is published a hundred notices to a channel message: every one arrives,
    // once, in stream order.
    let burst = 250;
    let admin = tokio::spawn(read_sse(
        open_sse(&stream_url, ADMIN_KEY).await,
        Duration::from_secs(60),
        burst,
    ));
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 10..10 + burst as i64 {
            let ev = event(i, 2);
            tx.execute("INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES ('token-metrics', ?1, ?2, ?3, ?4)", rusqlite::params![ev.key(), ev.source, ev.id, ev.to_json()])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let (burst_events, _) = admin.await.unwrap();
    let ids: Vec<(u64, u64)> = burst_events
        .iter()
        .map(|(id, _)| {
            let (ms, seq) = id.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        })
        .collect();
    assert_eq!(ids.len(), burst, "every notice of the burst arrives");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "once each, in stream order"
    );
    let mut events: Vec<String> = burst_events
        .iter()
        .map(|(_, v)| v["event_id"].as_str().unwrap().to_owned())
        .collect();
    events.sort();
    events.dedup();
    assert_eq!(events.len(), burst, "one notice per event");
    let status = bridge.terminate();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("live.log")).unwrap();
    assert!(log.contains("Stopped."), "{log}");
}
