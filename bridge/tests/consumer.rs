//! The token-metrics consumer against a real broker (Apache Kafka) and SQLite:
//! an outbox row becomes priced line items; the same event delivered twice
//! bills once; a poison message lands in dead-letter with its reason and
//! origin, and the next good message is billed.

use billing_bridge::aggregates::Aggregates;
use billing_bridge::config::{RelayConfig, TopicsConfig};
use billing_bridge::consumer::Settings;
use billing_bridge::relay::Relay;
use billing_core::events::{CloudEvent, InferenceEvent, InferenceStatus, TokenMetrics};
use billing_core::{ModelName, Timestamp, Usage};
use billing_testkit::{Kafka, Redis};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::ClientConfig;
use std::time::Duration;

fn metrics(id: &str, input: u64, output: u64, cache_read: u64) -> CloudEvent<TokenMetrics> {
    CloudEvent::new(
        id,
        "/functions/messages",
        Timestamp::parse("2026-03-10T12:00:00Z").unwrap(),
        None,
        TokenMetrics {
            user_id: 2,
            thread_id: 999,
            message_id: 999,
            model: ModelName::parse("claude-sonnet-4-5-20250929").unwrap(),
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                cache_read_input_tokens: cache_read,
                ..Default::default()
            },
            latency_ms: 300,
        },
    )
}

/// A collector's inference event of user 2 on Haiku 4.5 (100 input, 50
/// output tokens), dated 2026-03-10T12:00Z.
fn inference(id: &str, latency_ms: u64, compute_ms: u64) -> CloudEvent<InferenceEvent> {
    CloudEvent::new(
        id,
        "/services/batch",
        Timestamp::parse("2026-03-10T12:00:00Z").unwrap(),
        None,
        InferenceEvent {
            user_id: 2,
            model: ModelName::parse("claude-haiku-4-5-20251001").unwrap(),
            request_id: format!("req-{id}"),
            status: InferenceStatus::Succeeded,
            http_status: Some(200),
            latency_ms,
            compute_ms,
            usage: Usage {
                input_tokens: 100,
                output_tokens: 50,
                ..Default::default()
            },
        },
    )
}

fn enqueue(db: &std::path::Path, ev: &CloudEvent<TokenMetrics>) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute(
            "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES ('token-metrics', ?1, ?2, ?3, ?4)",
            rusqlite::params![ev.key(), ev.source, ev.id, ev.to_json()],
        )
        .unwrap();
}

/// A Kafka node with the billing topics (`partitions` each) and a migrated
/// database, in a temporary directory that lives as long as the returned guard.
async fn broker_and_database(partitions: i32) -> (tempfile::TempDir, Kafka, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let kafka = Kafka::start(dir.path());
    let db = dir.path().join("billing.db");
    billing_migrations::open_and_migrate(&db).unwrap();
    billing_bridge::kafka::ensure_topics(
        &kafka.brokers(),
        &TopicsConfig {
            partitions,
            ..TopicsConfig::default()
        },
    )
    .await
    .unwrap();
    (dir, kafka, db)
}

/// A test's own idempotent producer (rdkafka directly, as any client of
/// the topics would), whose records fail after `timeout_ms`.
fn producer(brokers: &str, timeout_ms: u64) -> anyhow::Result<rdkafka::producer::FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", timeout_ms.to_string())
        .create()?)
}

/// Sends an inference event `id` (100 ms latency, no compute time) keyed by `key`.
async fn send_inference(raw: &rdkafka::producer::FutureProducer, id: &str, key: &str) {
    let ev = inference(id, 100, 0);
    raw.send(
        FutureRecord::to("inference-events")
            .key(key)
            .payload(&ev.to_json()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
}

/// A consumer of `topic` from its start, in a group of its own.
fn reader(brokers: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// Starts one consumer of `group` (batches of 100); stop it with the sender.
fn spawn_consumer(
    db: &std::path::Path,
    brokers: &str,
    redis: &Redis,
    group: &str,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut conn = billing_migrations::open(db).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let settings = Settings {
        group: group.to_owned(),
        batch_size: 100,
        batch_wait_ms: 5,
        fetch_wait_ms: 50,
        session_timeout_ms: 45_000,
        instance_id: None,
    };
    let mut aggregates = Aggregates::new(&redis.url(), 3600);
    let brokers = brokers.to_owned();
    let consumer = tokio::spawn(async move {
        billing_bridge::consumer::run(&brokers, &settings, &mut conn, &mut aggregates, stop_rx)
            .await
    });
    (stop_tx, consumer)
}

/// Runs the consumers in `group` until `processed_events` holds `n` rows (30 s at most)
/// and `settle` more has passed, then stops them, which commits their offsets.
async fn consume_until(
    db: &std::path::Path,
    brokers: &str,
    redis: &Redis,
    group: &str,
    n: i64,
    settle: Duration,
) {
    let (stop_tx, consumer) = spawn_consumer(db, brokers, redis, group);
    let check = rusqlite::Connection::open(db).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while check
        .query_row("SELECT count(*) FROM processed_events", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
        < n
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settle).await;
    let _ = stop_tx.send(true);
    consumer.await.unwrap().unwrap();
}

/// The offset `probe`'s group has committed for `partition` of `topic`, if any.
fn committed(probe: &StreamConsumer, (topic, partition): (&str, i32)) -> Option<i64> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = tokio::task::block_in_place(|| probe.committed_offsets(tpl, Duration::from_secs(10)))
        .ok()?;
    got.elements()
        .first()?
        .offset()
        .to_raw()
        .filter(|o| *o >= 0)
}

/// Runs one consumer of `group` until the group has committed `next` (or
/// more) for `at`, at most 60 s; then stops it cleanly.
async fn consume_through(
    db: &std::path::Path,
    brokers: &str,
    redis: &Redis,
    group: &str,
    at: (&str, i32),
    next: i64,
) {
    let (stop_tx, consumer) = spawn_consumer(db, brokers, redis, group);
    // Reads the group's offsets without joining it.
    let probe: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while committed(&probe, at).is_none_or(|o| o < next) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} did not commit {next} for {at:?} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop_tx.send(true);
    consumer.await.unwrap().unwrap();
}

// The whole path: outbox → Kafka → consumer → line items, with a duplicate and a poison message in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bills_once_and_dead_letters_poison() {
    let (_dir, kafka, db) = broker_and_database(1).await;
    let relay = Relay::with(
        &db,
        &kafka.brokers(),
        RelayConfig {
            batch_size: 100,
            poll_interval_ms: 1000,
            delivery_timeout_ms: 5000,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let raw = producer(&kafka.brokers(), 5000).unwrap();

    let first = metrics("m1", 1_000, 500, 2_000);
    enqueue(&db, &first);
    relay.round().await.unwrap();
    // The same event again (a redelivery), a poison message, then a good one.
    raw.send(
        FutureRecord::to("token-metrics")
            .key("2")
            .payload(&first.to_json()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    raw.send(
        FutureRecord::to("token-metrics")
            .key("2")
            .payload("{not json"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let second = metrics("m2", 10, 20, 0);
    enqueue(&db, &second);
    relay.round().await.unwrap();

    let redis = Redis::start();
    consume_until(
        &db,
        &kafka.brokers(),
        &redis,
        "bridge-test",
        2,
        Duration::ZERO,
    )
    .await;
    let check = rusqlite::Connection::open(&db).unwrap();
    let processed = || {
        check
            .query_row("SELECT count(*) FROM processed_events", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
    };

    assert_eq!(processed(), 2);
    let lines: Vec<(String, String, i64, i64)> = check
        .prepare("SELECT event_id, token_class, tokens, cost_nanos FROM user_invoice_line_item ORDER BY event_id, token_class")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Sonnet 4.5 on 2026-03-10: $3 input, $15 output, $0.30 cache read per million tokens.
    let expected = vec![
        ("m1".to_string(), "cache_read".to_string(), 2_000, 600_000),
        ("m1".into(), "input".into(), 1_000, 3_000_000),
        ("m1".into(), "output".into(), 500, 7_500_000),
        ("m2".into(), "input".into(), 10, 30_000),
        ("m2".into(), "output".into(), 20, 300_000),
    ];
    assert_eq!(lines, expected, "billed once, priced at the event's time");
    assert_eq!(
        check
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        0,
        "the outbox rows are gone"
    );

    // The aggregates: both events once, in every resolution and dimension.
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let hget = |key: &'static str, field: &'static str| {
        let mut r = r.clone();
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg(field)
                .query_async::<Option<i64>>(&mut r)
                .await
                .unwrap()
        }
    };
    let cost = 3_000_000 + 7_500_000 + 600_000 + 30_000 + 300_000;
    assert_eq!(hget("billing:agg:d:2026-03-10", "*|cost").await, Some(cost));
    assert_eq!(
        hget("billing:agg:h:2026-03-10T12", "u:2|cost").await,
        Some(cost)
    );
    assert_eq!(
        hget(
            "billing:agg:m:2026-03-10T12:00",
            "m:claude-sonnet-4-5-20250929|tok:input"
        )
        .await,
        Some(1_010)
    );
    assert_eq!(
        hget(
            "billing:agg:d:2026-03-10",
            "um:2:claude-sonnet-4-5-20250929|turns"
        )
        .await,
        Some(2)
    );
    assert_eq!(
        hget("billing:agg:d:2026-03-10", "*|lat_sum").await,
        Some(600)
    );
    let top: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg("billing:agg:top:d:2026-03-10")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(top, vec![("2".to_string(), cost)]);
    // One live notice per billed event, in the stream the SSE endpoint replays.
    let notices: i64 = redis::cmd("XLEN")
        .arg("billing:notices")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(notices, 2);

    let dlq = reader(&kafka.brokers(), "dead-letter");
    let m = tokio::time::timeout(Duration::from_secs(20), dlq.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(m.payload().unwrap(), b"{not json");
    let header = |k: &str| {
        m.headers()
            .unwrap()
            .iter()
            .find(|h| h.key == k)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap()
    };
    assert!(
        header("dlq-reason").contains("not JSON"),
        "{}",
        header("dlq-reason")
    );
    assert_eq!(header("dlq-code"), "invalid_event");

    // A processed-events record per billed event, naming the original. The redelivered m1 may send its record
    // again (its first batch's second stage was not known to be done); a repeat carries the same id.
    let processed = reader(&kafka.brokers(), "processed-events");
    let mut originals = std::collections::BTreeMap::new();
    while originals.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(20), processed.recv())
            .await
            .expect("processed-events records")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let original = (
            v["data"]["original_id"].as_str().unwrap().to_owned(),
            v["data"]["cost"].as_i64().unwrap(),
        );
        let id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(id, format!("token-metrics:{}", original.0));
        originals.insert(id, original);
    }
    assert_eq!(
        originals.into_values().collect::<Vec<_>>(),
        vec![("m1".to_string(), 11_100_000), ("m2".to_string(), 330_000)]
    );
    assert_eq!(
        (
            header("dlq-topic").as_str(),
            header("dlq-partition").as_str(),
            header("dlq-offset").as_str()
        ),
        ("token-metrics", "0", "2")
    );
}

// An inference event from the collector becomes an api_events row, token lines and resource lines, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bills_inference_events() {
    let (_dir, kafka, db) = broker_and_database(2).await;
    let ev = inference("inf-1", 420, 380);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES ('inference-events', '2', ?1, ?2, ?3)",
            rusqlite::params![ev.source, ev.id, ev.to_json()],
        )
        .unwrap();
    let relay = Relay::with(
        &db,
        &kafka.brokers(),
        RelayConfig {
            batch_size: 100,
            poll_interval_ms: 1000,
            delivery_timeout_ms: 5000,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    relay.round().await.unwrap();
    producer(&kafka.brokers(), 5000)
        .unwrap()
        .send(
            FutureRecord::to("inference-events")
                .key("2")
                .payload(&ev.to_json()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    // The redelivered copy adds no ledger row; the settle time lets it arrive (the offsets below prove it did).
    let redis = Redis::start();
    consume_until(
        &db,
        &kafka.brokers(),
        &redis,
        "bridge-test-inference",
        1,
        Duration::from_secs(2),
    )
    .await;
    let check = rusqlite::Connection::open(&db).unwrap();

    let api: (String, i64, i64) = check
        .query_row(
            "SELECT status, latency_ms, compute_ms FROM api_events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(api, ("succeeded".to_string(), 420, 380));
    let tokens: Vec<(String, i64)> = check
        .prepare("SELECT token_class, cost_nanos FROM user_invoice_line_item ORDER BY token_class")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Haiku 4.5: 100 × 1,000 + 50 × 5,000 nano-USD.
    assert_eq!(
        tokens,
        vec![
            ("input".to_string(), 100_000),
            ("output".to_string(), 250_000)
        ]
    );
    let resources: Vec<(String, i64, i64)> = check.prepare("SELECT resource, quantity, cost_nanos FROM resource_invoice_line_item ORDER BY resource").unwrap().query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    // $1 per million ms of compute: 380 ms = 380,000 nano-USD; $100 per million requests: 100,000 nano-USD.
    assert_eq!(
        resources,
        vec![
            ("compute_time".to_string(), 380, 380_000),
            ("inference_request".to_string(), 1, 100_000)
        ]
    );
    assert_eq!(
        check
            .query_row("SELECT count(*) FROM processed_events", [], |r| r
                .get::<_, i64>(0))
            .unwrap(),
        1,
        "the redelivered copy changed nothing"
    );
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let agg: Vec<Option<i64>> = redis::cmd("HMGET")
        .arg("billing:agg:h:2026-03-10T12")
        .arg("*|requests")
        .arg("*|cost")
        .arg("u:2|lat_sum")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        agg,
        vec![
            Some(1),
            Some(100_000 + 250_000 + 380_000 + 100_000),
            Some(420)
        ],
        "the aggregates count the event once"
    );

    // Both copies were consumed: the group's committed offsets add up to 2.
    let probe: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", "bridge-test-inference")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition("inference-events", 0);
    tpl.add_partition("inference-events", 1);
    let committed = probe
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw())
        .filter(|o| *o > 0)
        .sum();
    assert_eq!(total, 2, "{committed:?}");
}

// The marking script: a fact applied twice counts once, and a batch mixing
// applied and new facts applies only the new ones.
#[tokio::test]
async fn aggregates_are_marked_and_incremented_together() {
    use billing_core::aggregates::{Fact, Kind};
    let redis = Redis::start();
    let fact = |id: &str, cost: i64| Fact {
        kind: Kind::Turn,
        source: "/t".into(),
        id: id.into(),
        user_id: 2,
        model: "claude-haiku-4-5-20251001".into(),
        thread_id: Some(4),
        occurred_at: Timestamp::parse("2026-05-01T08:00:00Z").unwrap(),
        latency_ms: 10,
        cost_nanos: cost,
        tokens: [1, 2, 0, 0, 0],
    };
    let mut aggs = Aggregates::new(&redis.url(), 3600);
    assert_eq!(aggs.apply(&[fact("a", 100)]).await.unwrap(), vec![0]);
    assert_eq!(
        aggs.apply(&[fact("a", 100)]).await.unwrap(),
        Vec::<usize>::new(),
        "already applied"
    );
    assert_eq!(
        aggs.apply(&[fact("a", 100), fact("b", 5), fact("c", 7)])
            .await
            .unwrap(),
        vec![1, 2]
    );
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let got: Vec<i64> = redis::cmd("HMGET")
        .arg("billing:agg:d:2026-05-01")
        .arg("*|cost")
        .arg("*|turns")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(got, vec![112, 3]);
    let thread: Vec<i64> = redis::cmd("HMGET")
        .arg("billing:agg:thread:4")
        .arg("turns")
        .arg("tok:output")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(thread, vec![3, 6]);
    // While a rebuild holds the flag, nothing is applied and the caller is told to retry.
    let _: () = redis::cmd("SET")
        .arg("billing:rebuilding")
        .arg(1)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(aggs
        .apply(&[fact("d", 1)])
        .await
        .unwrap_err()
        .to_string()
        .contains("aggregates"));
    let _: () = redis::cmd("DEL")
        .arg("billing:rebuilding")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(aggs.apply(&[fact("d", 1)]).await.unwrap(), vec![0]);

    // A counter about to pass i64::MAX saturates; the batch is applied, the other counters move.
    let _: () = redis::cmd("HSET")
        .arg("billing:agg:d:2026-05-01")
        .arg("*|cost")
        .arg(i64::MAX - 10)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(aggs.apply(&[fact("e", 1_000)]).await.unwrap(), vec![0]);
    let got: Vec<i64> = redis::cmd("HMGET")
        .arg("billing:agg:d:2026-05-01")
        .arg("*|cost")
        .arg("*|turns")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(got, vec![i64::MAX, 5]);
}

// A message the database rejects for good (here an api_events row with its identity already there, written by no
// consumer) is dead-lettered as rejected_by_database; the other messages of its batch are billed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_rejection_spoils_nothing_else() {
    let (_dir, kafka, db) = broker_and_database(1).await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO api_events (source, event_id, event_type_id, user_id, model_id, request_id, status, latency_ms, compute_ms,
             input_tokens, output_tokens, cache_creation_input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_input_tokens, occurred_at)
         SELECT '/users/2:/services/batch', 'inf-b', event_type_id, 2, model_id, 'elsewhere', 'succeeded', 1, 0, 0, 0, 0, 0, 0, 0, '2026-03-10T12:00:00.000Z'
         FROM dim_event_types, dim_models WHERE event_type = 'llm-billing.inference' AND model_name = 'claude-haiku-4-5-20251001'",
        [],
    )
    .unwrap();
    let raw = producer(&kafka.brokers(), 5000).unwrap();
    for id in ["inf-a", "inf-b", "inf-c"] {
        raw.send(
            FutureRecord::to("inference-events")
                .key("2")
                .payload(&inference(id, 100, 0).to_json()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }
    let redis = Redis::start();
    consume_until(
        &db,
        &kafka.brokers(),
        &redis,
        "bridge-test-rejection",
        2,
        Duration::from_secs(1),
    )
    .await;
    let billed: Vec<String> = conn
        .prepare("SELECT event_id FROM processed_events ORDER BY event_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(billed, ["inf-a", "inf-c"]);
    let lines: i64 = conn
        .query_row("SELECT count(*) FROM user_invoice_line_item", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(lines, 4, "input and output of the two events, once each");
    let dlq = reader(&kafka.brokers(), "dead-letter");
    let m = tokio::time::timeout(Duration::from_secs(20), dlq.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    let code = m
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "dlq-code")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(code.as_deref(), Some("rejected_by_database"));
    let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert_eq!(v["id"], "inf-b");
}

// One application of 250 billed facts appends 250 notices to the stream and publishes them a hundred to a
// channel message: three messages, 100 + 100 + 50, every notice once, in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_are_published_a_hundred_to_a_message() {
    use billing_core::aggregates::{Fact, Kind};
    use futures::StreamExt;
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("billing:notices").await.unwrap();
    let facts: Vec<Fact> = (0..250)
        .map(|i| Fact {
            kind: Kind::Turn,
            source: "/t".into(),
            id: format!("n-{i}"),
            user_id: 2 + i % 3,
            model: "claude-haiku-4-5-20251001".into(),
            thread_id: Some(4),
            occurred_at: Timestamp::parse("2026-05-01T08:00:00Z").unwrap(),
            latency_ms: 10,
            cost_nanos: 100,
            tokens: [1, 2, 0, 0, 0],
        })
        .collect();
    let mut aggs = Aggregates::new(&redis.url(), 3600);
    assert_eq!(aggs.apply(&facts).await.unwrap().len(), 250);
    let mut messages = pubsub.on_message();
    let mut sizes = Vec::new();
    let mut notices = Vec::new();
    while notices.len() < 250 {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("the notices are published")
            .unwrap();
        let got = billing_bridge::live::published_notices(&m.get_payload::<String>().unwrap());
        sizes.push(got.len());
        notices.extend(got);
    }
    assert_eq!(sizes, vec![100, 100, 50]);
    let ids: Vec<&str> = notices.iter().map(|n| n.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    sorted.dedup();
    assert_eq!(ids, sorted, "once each, in stream order");
    let events: Vec<String> = notices
        .iter()
        .map(|n| {
            serde_json::from_str::<serde_json::Value>(&n.data).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        events,
        (0..250).map(|i| format!("n-{i}")).collect::<Vec<_>>()
    );
    assert!(notices
        .iter()
        .enumerate()
        .all(|(i, n)| n.user_id == 2 + i as i64 % 3));
}

/// `billing:agg:h:2026-03-10T12`'s request count (the events the dashboard counts that hour).
async fn requests_counted(redis: &Redis) -> Option<i64> {
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("HGET")
        .arg("billing:agg:h:2026-03-10T12")
        .arg("*|requests")
        .query_async(&mut r)
        .await
        .unwrap()
}

/// Waits (at most `wait`) until the aggregates count `n` requests; fails naming `what` otherwise.
async fn counted_within(redis: &Redis, n: i64, wait: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + wait;
    while requests_counted(redis).await != Some(n) {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// A redelivery counts once in the dashboard however late it comes (its mark expired: the partition's watermark
// says it was applied), and a replay whose second stage was cut short sends its processed-events record again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_redelivery_counts_once_and_records_are_not_lost() {
    let (_dir, kafka, db) = broker_and_database(1).await;
    let redis = Redis::start();
    let raw = producer(&kafka.brokers(), 5000).unwrap();
    let ev = inference("late-1", 100, 0);
    let deliver = || async {
        raw.send(
            FutureRecord::to("inference-events")
                .key("2")
                .payload(&ev.to_json()),
            Duration::from_secs(5),
        )
        .await
        .unwrap()
    };
    let group = "bridge-test-late";
    let brokers = kafka.brokers();
    // Each consumer runs until the group has committed past the copy just
    // delivered (the offset is stored only once the batch's second stage
    // finished), however long joining the group takes.
    let consume =
        |next: i64| consume_through(&db, &brokers, &redis, group, ("inference-events", 0), next);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let watermark = || -> Option<i64> {
        conn.query_row(
            "SELECT kafka_offset FROM aggregated_offsets WHERE topic = 'inference-events' AND partition = 0",
            [],
            |r| r.get(0),
        )
        .ok()
    };

    deliver().await;
    consume(1).await;
    assert_eq!(requests_counted(&redis).await, Some(1));
    assert_eq!(
        watermark(),
        Some(0),
        "the finished batch raised its partition's watermark"
    );

    // As if the bridge died after Redis and before the broker took the record: no watermark.
    conn.execute("DELETE FROM aggregated_offsets", []).unwrap();
    deliver().await;
    consume(2).await;
    assert_eq!(
        requests_counted(&redis).await,
        Some(1),
        "the mark kept the replay out"
    );
    assert_eq!(watermark(), Some(1));

    // Its mark expired (older than the marks' TTL): the watermark alone keeps it out.
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg("billing:seen:*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!marks.is_empty());
    let _: i64 = redis::cmd("DEL")
        .arg(&marks)
        .query_async(&mut r)
        .await
        .unwrap();
    deliver().await;
    consume(3).await;
    assert_eq!(
        requests_counted(&redis).await,
        Some(1),
        "counted once, however late"
    );
    assert_eq!(watermark(), Some(2));

    // processed-events: the first record, and the replay's again (same id); none for the settled copy.
    // They were all delivered before the consumers stopped: read until two
    // came (joining a group may take long), then a quiet spell for a third.
    let records = reader(&kafka.brokers(), "processed-events");
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wait = if ids.len() < 2 {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::from_secs(3)
        };
        let Ok(m) = tokio::time::timeout(wait, records.recv()).await else {
            break;
        };
        let m = m.unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
        assert_eq!(v["data"]["original_source"], "/users/2:/services/batch");
    }
    assert_eq!(ids, ["inference-events:late-1", "inference-events:late-1"]);
}

// Redis away: billing into SQLite goes on, batch after batch (ledger and line items for every event), and when Redis
// is back (empty here, a restarted server) the aggregates take every event billed meanwhile, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_goes_on_while_redis_is_away() {
    let (_dir, kafka, db) = broker_and_database(1).await;
    let mut redis = Redis::start();
    let raw = producer(&kafka.brokers(), 5000).unwrap();
    let (stop_tx, consumer) =
        spawn_consumer(&db, &kafka.brokers(), &redis, "bridge-test-redis-away");
    let check = rusqlite::Connection::open(&db).unwrap();
    let billed = || -> (i64, i64) {
        check
            .query_row(
                "SELECT (SELECT count(*) FROM processed_events), (SELECT count(*) FROM resource_invoice_line_item)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let wait_for = |n: i64| {
        let billed = &billed;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while billed().0 < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "only {} of {n} events billed",
                    billed().0
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let send = |id: String| {
        let raw = &raw;
        async move { send_inference(raw, &id, "2").await }
    };

    send("before".into()).await;
    wait_for(1).await;
    // The aggregates follow the SQLite commit in the second stage: wait for them.
    counted_within(
        &redis,
        1,
        Duration::from_secs(10),
        "the first event reached the aggregates",
    )
    .await;

    // Away: five rounds of four events, each round a batch of its own, all billed in SQLite.
    redis.stop();
    for round in 0..5 {
        for i in 0..4 {
            send(format!("away-{round}-{i}")).await;
        }
        wait_for(1 + 4 * (round + 1)).await;
    }
    let (events, lines) = billed();
    assert_eq!(events, 21);
    assert!(lines >= 21, "every event has its line items: {lines}");

    // Back: the twenty billed meanwhile reach the aggregates, once each.
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counted = tokio::time::timeout(Duration::from_secs(1), requests_counted(&redis))
            .await
            .ok()
            .flatten();
        if counted == Some(20) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the aggregates hold {counted:?} of the 20 events billed while Redis was away"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send("after".into()).await;
    wait_for(22).await;
    counted_within(
        &redis,
        21,
        Duration::from_secs(10),
        "the next event counted once",
    )
    .await;
    let _ = stop_tx.send(true);
    consumer.await.unwrap().unwrap();
}

// A member that loses its partitions first lets the batches it wrote to
// SQLite finish their second stage (Redis, processed-events) and commits
// them, so the member that gets the partitions next does not replay them:
// every billed event has exactly one processed-events record. Without the
// drain the new member replays the batches whose second stage was still
// waiting (Redis paused here) and sends their records a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waits_for_the_queued_second_stages() {
    let (_dir, kafka, db) = broker_and_database(2).await;
    let redis = Redis::start();
    let raw = producer(&kafka.brokers(), 5000).unwrap();
    let group = "bridge-test-revoke-drain";
    let check = rusqlite::Connection::open(&db).unwrap();
    let billed = || -> i64 {
        check
            .query_row("SELECT count(*) FROM processed_events", [], |r| r.get(0))
            .unwrap()
    };
    let send = |id: String| {
        let raw = &raw;
        async move { send_inference(raw, &id, &id).await }
    };
    let counted_to = |n: i64| {
        let redis = &redis;
        async move {
            let what = format!("the aggregates never counted {n} requests");
            counted_within(redis, n, Duration::from_secs(40), &what).await
        }
    };
    let revocations = || {
        billing_bridge::metrics::global().counter(
            "billing_bridge_revocations_total",
            &format!("{{group=\"{group}\",drained=\"true\"}}"),
        )
    };

    let (stop_a, a) = spawn_consumer(&db, &kafka.brokers(), &redis, group);
    send("first".into()).await;
    counted_to(1).await;

    // Redis pauses every client for 4 s: the next batches are written to
    // SQLite, and their second stages wait in the queue.
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("ALL")
        .query_async(&mut r)
        .await
        .unwrap();
    for i in 0..10 {
        send(format!("queued-{i}")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while billed() < 11 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not written to SQLite"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_before = revocations();

    // A second member joins: the first one's partitions are revoked, after its queue finished.
    let (stop_b, b) = spawn_consumer(&db, &kafka.brokers(), &redis, group);
    counted_to(11).await;
    // The rebalance done (drained or not), and time for the members to fetch.
    let all = || {
        revocations()
            + billing_bridge::metrics::global().counter(
                "billing_bridge_revocations_total",
                &format!("{{group=\"{group}\",drained=\"false\"}}"),
            )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while all() == drained_before {
        assert!(tokio::time::Instant::now() < deadline, "no revocation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_rebalance = revocations();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // After the rebalance, more events, on both members' partitions.
    for i in 0..6 {
        send(format!("after-{i}")).await;
    }
    counted_to(17).await;
    assert_eq!(billed(), 17);

    // processed-events: one record per billed event, none repeated.
    let reader = reader(&kafka.brokers(), "processed-events");
    let mut ids = std::collections::BTreeMap::<String, usize>::new();
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(8), reader.recv()).await {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        *ids.entry(v["data"]["original_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let _ = stop_a.send(true);
    let _ = stop_b.send(true);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(ids.len(), 17, "a record per billed event: {ids:?}");
    assert!(repeated.is_empty(), "records sent twice: {repeated:?}");
    assert_eq!(
        at_rebalance,
        drained_before + 1,
        "the revocation found the queue drained"
    );
}
