//! The metrics component through billing-host, fed by the real bridge
//! (Kafka, consumers, Redis aggregates): hand-computed figures; users see
//! only their own; the SQLite fallback answers the same numbers when Redis
//! lacks the aggregates or is down.

use billing_e2e::{Bridge, Stack, ADMIN_KEY};
use serde_json::{json, Value};

fn inference(
    id: &str,
    user: i64,
    model: &str,
    time: &str,
    usage: Value,
    latency: u64,
    compute: u64,
) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/svc", "type": "llm-billing.inference", "time": time,
        "data": {"user_id": user, "model": model, "request_id": id, "status": "succeeded", "latency_ms": latency, "compute_ms": compute, "usage": usage}
    })
}

const DAY: &str = "from=2026-05-10T00:00:00Z&to=2026-05-11T00:00:00Z";

/// The answer without `source` (and the range, which defaults to "now"), to compare Redis and SQLite.
fn numbers(v: &Value) -> Value {
    let mut v = v.clone();
    for k in ["source", "from", "to"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_numbers_from_redis_and_from_sqlite() {
    let mut s = Stack::start().await;
    let bridge = Bridge::start(&s).await;
    let (a, key_a) = s.user("Ada", "ada@metrics.example").await;
    let (b, key_b) = s.user("Bob", "bob@metrics.example").await;
    let haiku = "claude-haiku-4-5-20251001";
    let sonnet = "claude-sonnet-4-5-20250929";
    let events = json!([
        inference(
            "e1",
            a,
            haiku,
            "2026-05-10T10:15:00Z",
            json!({"input_tokens": 1000, "output_tokens": 200}),
            400,
            300
        ),
        inference(
            "e2",
            a,
            sonnet,
            "2026-05-10T10:45:00Z",
            json!({"input_tokens": 2000, "output_tokens": 100, "cache_read_input_tokens": 10000}),
            800,
            700
        ),
        inference(
            "e3",
            b,
            haiku,
            "2026-05-10T11:30:00Z",
            json!({"input_tokens": 500, "output_tokens": 50}),
            300,
            0
        ),
    ]);
    let r = s
        .call_raw(
            "POST",
            "/api/events",
            Some(ADMIN_KEY),
            "application/cloudevents-batch+json",
            serde_json::to_vec(&events).unwrap(),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let thread = s
        .call("POST", "/api/threads", Some(&key_a), None)
        .await
        .body["thread_id"]
        .as_i64()
        .unwrap();
    let turn = s
        .call(
            "POST",
            &format!("/api/threads/{thread}/messages"),
            Some(&key_a),
            Some(json!({"content": "How much is this?"})),
        )
        .await;
    assert_eq!(turn.status, 201, "{:?}", turn.body);
    let chat_cost = turn.body["cost"]["nanos"].as_i64().unwrap();
    bridge.wait_for(&s, 3 + 3).await;

    // By hand. e1, Haiku 4.5 ($1/$5): 1,000 × 1,000 + 200 × 5,000 = 2,000,000; a request 100,000; 300 ms × 1,000 = 300,000 → 2,400,000.
    // e2, Sonnet 4.5 ($3/$15/$0.30 cache read): 6,000,000 + 1,500,000 + 3,000,000 + 100,000 + 700,000 = 11,300,000.
    // e3, Haiku 4.5: 500,000 + 250,000 + 100,000 (no compute) = 850,000.
    // The ledger has the events; the Redis aggregates follow in the
    // bridge's second stage, just after.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let day = loop {
        let day = s
            .call(
                "GET",
                &format!("/api/metrics/summary?{DAY}"),
                Some(ADMIN_KEY),
                None,
            )
            .await;
        assert_eq!(day.status, 200, "{:?}", day.body);
        if (day.body["source"] == "redis" && day.body["cost_nanos"] == 14_550_000)
            || tokio::time::Instant::now() > deadline
        {
            break day;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(day.body["source"], "redis");
    assert_eq!(day.body["cost_nanos"], 14_550_000);
    assert_eq!(
        day.body["tokens"],
        json!({"input": 3500, "output": 350, "cache_write_5m": 0, "cache_write_1h": 0, "cache_read": 10000})
    );
    assert_eq!(
        (
            day.body["requests"].as_i64(),
            day.body["turns"].as_i64(),
            day.body["active_users"].as_i64()
        ),
        (Some(3), Some(0), Some(2))
    );
    assert_eq!(day.body["avg_latency_ms"], 500.0);
    assert_eq!(
        (day.body["from"].as_str(), day.body["to"].as_str()),
        (
            Some("2026-05-10T00:00:00.000Z"),
            Some("2026-05-11T00:00:00.000Z")
        )
    );

    // A user sees their own; another's id is refused.
    let own = s
        .call(
            "GET",
            &format!("/api/metrics/summary?{DAY}"),
            Some(&key_a),
            None,
        )
        .await;
    assert_eq!(
        (
            own.body["cost_nanos"].as_i64(),
            own.body["user_id"].as_i64(),
            own.body["active_users"].as_i64()
        ),
        (Some(13_700_000), Some(a), Some(1))
    );
    assert_eq!(
        s.call(
            "GET",
            &format!("/api/metrics/summary?{DAY}&user={a}"),
            Some(&key_b),
            None
        )
        .await
        .status,
        403
    );
    let haiku_only = s
        .call(
            "GET",
            &format!("/api/metrics/summary?{DAY}&model={haiku}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(
        (
            haiku_only.body["cost_nanos"].as_i64(),
            haiku_only.body["active_users"].as_i64()
        ),
        (Some(3_250_000), Some(2))
    );
    let ada_sonnet = s
        .call(
            "GET",
            &format!("/api/metrics/summary?{DAY}&user={a}&model={sonnet}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(ada_sonnet.body["cost_nanos"], 11_300_000);
    // Ranges are aligned to whole hours: 10:20–10:50 covers 10:00–11:00.
    let hour = s
        .call(
            "GET",
            "/api/metrics/summary?from=2026-05-10T10:20:00Z&to=2026-05-10T10:50:00Z",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(
        (hour.body["cost_nanos"].as_i64(), hour.body["from"].as_str()),
        (Some(13_700_000), Some("2026-05-10T10:00:00.000Z"))
    );

    let series = s.call("GET", "/api/metrics/timeseries?from=2026-05-10T10:00:00Z&to=2026-05-10T12:00:00Z&bucket=hour&by=model", Some(ADMIN_KEY), None).await;
    assert_eq!(series.status, 200, "{:?}", series.body);
    let cost_of = |body: &Value, key: &str| -> Vec<i64> {
        body["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["key"] == key)
            .unwrap()["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["cost_nanos"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(cost_of(&series.body, haiku), vec![2_400_000, 850_000]);
    assert_eq!(cost_of(&series.body, sonnet), vec![11_300_000, 0]);
    let minutes = s.call("GET", "/api/metrics/timeseries?from=2026-05-10T10:15:00Z&to=2026-05-10T10:16:00Z&bucket=minute", Some(&key_a), None).await;
    assert_eq!(cost_of(&minutes.body, "all"), vec![2_400_000]);
    assert_eq!(s.call("GET", "/api/metrics/timeseries?from=2026-05-01T00:00:00Z&to=2026-05-10T00:00:00Z&bucket=minute", Some(ADMIN_KEY), None).await.status, 422, "too many points");
    assert_eq!(
        s.call("GET", "/api/metrics/timeseries?by=user", Some(&key_a), None)
            .await
            .status,
        403
    );

    let top = s
        .call(
            "GET",
            &format!("/api/metrics/top-users?{DAY}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    let ranked: Vec<(i64, i64)> = top.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_i64().unwrap(),
                u["cost_nanos"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranked, vec![(a, 13_700_000), (b, 850_000)]);
    assert_eq!(top.body["users"][0]["name"], "Ada");
    assert_eq!(
        s.call("GET", "/api/metrics/top-users", Some(&key_a), None)
            .await
            .status,
        403
    );

    let threads = s
        .call("GET", "/api/metrics/threads", Some(&key_a), None)
        .await;
    assert_eq!(threads.status, 200, "{:?}", threads.body);
    let t = &threads.body["threads"][0];
    assert_eq!(
        (
            t["thread_id"].as_i64(),
            t["turns"].as_i64(),
            t["messages"].as_i64(),
            t["cost_nanos"].as_i64()
        ),
        (Some(thread), Some(1), Some(1), Some(chat_cost))
    );
    assert_eq!(
        s.call("GET", "/api/metrics/threads", Some(&key_b), None)
            .await
            .body["threads"],
        json!([]),
        "Bob has no threads"
    );

    // Redis without the aggregates: the same numbers from the SQLite ledger.
    let queries = [
        (format!("/api/metrics/summary?{DAY}"), ADMIN_KEY.to_owned()),
        (format!("/api/metrics/summary?{DAY}&model={haiku}"), ADMIN_KEY.to_owned()),
        (format!("/api/metrics/summary?{DAY}"), key_a.clone()),
        ("/api/metrics/timeseries?from=2026-05-10T10:00:00Z&to=2026-05-10T12:00:00Z&bucket=hour&by=model".to_owned(), ADMIN_KEY.to_owned()),
        ("/api/metrics/timeseries?from=2026-05-10T10:00:00Z&to=2026-05-10T12:00:00Z&bucket=hour&by=user".to_owned(), ADMIN_KEY.to_owned()),
        (format!("/api/metrics/top-users?{DAY}"), ADMIN_KEY.to_owned()),
        ("/api/metrics/threads".to_owned(), key_a.clone()),
    ];
    let mut from_redis = Vec::new();
    for (q, k) in &queries {
        let r = s.call("GET", q, Some(k), None).await;
        assert_eq!(
            (r.status, r.body["source"].as_str()),
            (200, Some("redis")),
            "{q}: {:?}",
            r.body
        );
        from_redis.push(r.body);
    }
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
    for ((q, k), expected) in queries.iter().zip(&from_redis) {
        let got = s.call("GET", q, Some(k), None).await;
        assert_eq!(got.body["source"], "sqlite", "{q}");
        assert_eq!(
            numbers(&got.body),
            numbers(expected),
            "{q}: SQLite and Redis disagree"
        );
    }
    bridge.stop().await;
    // Redis down: the dashboard still answers, from SQLite.
    s.redis.stop();
    let down = s.call("GET", &queries[0].0, Some(ADMIN_KEY), None).await;
    assert_eq!(
        (down.status, down.body["source"].as_str()),
        (200, Some("sqlite"))
    );
    assert_eq!(numbers(&down.body), numbers(&from_redis[0]));
}
