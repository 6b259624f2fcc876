//! The outbox relay against Apache Kafka (a node of its own, storing in a
//! temporary directory) and a real SQLite outbox: delivery and deletion, the broker
//! going away and coming back, and the Redis nudge.

use billing_bridge::config::{RelayConfig, TopicsConfig};
use billing_bridge::relay::Relay;
use billing_testkit::{Kafka, Redis};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;

fn outbox(db: &std::path::Path, n: std::ops::Range<i64>, topic: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    for i in n {
        let payload = format!(
            r#"{{"specversion":"1.0","id":"ev-{i}","source":"/test","type":"llm-billing.token.metrics","time":"2026-11-01T10:00:00.000Z","data":{{"n":{i}}}}}"#
        );
        conn.execute(
            "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES (?1, ?2, '/test', ?3, ?4)",
            rusqlite::params![topic, (i % 3 + 1).to_string(), format!("ev-{i}"), payload],
        )
        .unwrap();
    }
}

/// Every message on `topic`, by event id, read from the start by a fresh group.
async fn consume(brokers: &str, topic: &str, expect: usize) -> BTreeMap<String, (String, String)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", billing_testkit::free_port()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < expect && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            let payload: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let ct = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "content-type"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
            seen.insert(
                payload["id"].as_str().unwrap().to_owned(),
                (key, ct.unwrap_or_default()),
            );
        }
    }
    seen
}

fn relay(db: &std::path::Path, brokers: &str) -> Relay {
    Relay::with(
        db,
        brokers,
        RelayConfig {
            batch_size: 100,
            poll_interval_ms: 10_000,
            delivery_timeout_ms: 3_000,
            ..RelayConfig::default()
        },
    )
    .unwrap()
}

// Outbox rows become Kafka messages (key = user id, CloudEvents content type) and are deleted only once delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_then_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = Kafka::start(dir.path());
    let db = dir.path().join("billing.db");
    billing_migrations::open_and_migrate(&db).unwrap();
    let created = billing_bridge::kafka::ensure_topics(
        &kafka.brokers(),
        &TopicsConfig {
            partitions: 3,
            ..TopicsConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(created.len(), 6, "{created:?}");
    assert!(
        billing_bridge::kafka::ensure_topics(&kafka.brokers(), &TopicsConfig::default())
            .await
            .unwrap()
            .is_empty(),
        "a second start creates nothing"
    );

    outbox(&db, 0..5, "token-metrics");
    let r = relay(&db, &kafka.brokers());
    assert_eq!(r.backlog().unwrap(), 5);
    let round = r.round().await.unwrap();
    assert_eq!((round.read, round.delivered, round.failed), (5, 5, 0));
    assert_eq!(r.backlog().unwrap(), 0);
    let seen = consume(&kafka.brokers(), "token-metrics", 5).await;
    assert_eq!(seen.len(), 5);
    assert_eq!(
        seen["ev-4"],
        (
            "2".to_string(),
            "application/cloudevents+json; charset=utf-8".to_string()
        )
    );
}

// With the broker gone, rows stay in the outbox (attempt noted); when it returns they drain, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_away_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::start(dir.path());
    let db = dir.path().join("billing.db");
    billing_migrations::open_and_migrate(&db).unwrap();
    billing_bridge::kafka::ensure_topics(&kafka.brokers(), &TopicsConfig::default())
        .await
        .unwrap();
    let r = relay(&db, &kafka.brokers());
    outbox(&db, 0..3, "raw-messages");
    assert_eq!(r.round().await.unwrap().delivered, 3);

    kafka.kill();
    outbox(&db, 3..7, "raw-messages");
    let round = r.round().await.unwrap();
    assert_eq!((round.delivered, round.failed), (0, 4));
    assert_eq!(r.backlog().unwrap(), 4);
    let (attempts, err): (i64, Option<String>) = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT attempts, last_error FROM outbox LIMIT 1", [], |x| {
            Ok((x.get(0)?, x.get(1)?))
        })
        .unwrap();
    assert_eq!(attempts, 1);
    assert!(err.is_some());

    kafka.restart();
    let mut delivered = 0;
    for _ in 0..20 {
        delivered += r.round().await.unwrap().delivered;
        if r.backlog().unwrap() == 0 {
            break;
        }
    }
    let last: Option<String> = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT max(last_error) FROM outbox", [], |x| x.get(0))
        .unwrap();
    assert_eq!(
        (delivered, r.backlog().unwrap()),
        (4, 0),
        "last error: {last:?}"
    );
    let seen = consume(&kafka.brokers(), "raw-messages", 7).await;
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        (0..7).map(|i| format!("ev-{i}")).collect::<Vec<_>>(),
        "nothing lost across the outage"
    );
}

// A nudge on Redis wakes the relay at once, long before its poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nudge_wakes_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = Kafka::start(dir.path());
    let redis = Redis::start();
    let db = dir.path().join("billing.db");
    billing_migrations::open_and_migrate(&db).unwrap();
    billing_bridge::kafka::ensure_topics(&kafka.brokers(), &TopicsConfig::default())
        .await
        .unwrap();
    let r = std::sync::Arc::new(relay(&db, &kafka.brokers()));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(billing_bridge::relay::listen_for_nudges(redis.url(), tx));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn({
        let r = r.clone();
        async move {
            r.run(rx, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    // A nudge published before the listener subscribed is lost: wait for it.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis
        .subscribed("billing:outbox", Duration::from_secs(30))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // A first row, relayed by a round of the relay's own; once it is gone
    // the relay sleeps its 10 s poll interval, and only a nudge wakes it.
    outbox(&db, 100..101, "llm-responses");
    while r.backlog().unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first row was not relayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outbox(&db, 0..2, "llm-responses");
    let started = tokio::time::Instant::now();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("billing:outbox")
        .arg("test")
        .query_async(&mut c)
        .await
        .unwrap();
    while r.backlog().unwrap() > 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        r.backlog().unwrap(),
        0,
        "relayed within {:?}, well inside the 10 s poll interval",
        started.elapsed()
    );
    let _ = stop_tx.send(());
    runner.await.unwrap().unwrap();
}
