//! The money path end to end: a chat turn and a collected inference event
//! go through the API, the outbox, Apache Kafka and
//! the bridge's consumers into line items, and an invoice drafted through
//! the API totals exactly what the two answers said they cost.

use billing_e2e::{Bridge, Stack, ADMIN_KEY};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_collected_event_reach_the_invoice() {
    let s = Stack::start().await;
    let bridge = Bridge::start(&s).await;

    let (uid, key) = s.user("Paying", "paying@example.com").await;
    let t = s.call("POST", "/api/threads", Some(&key), None).await.body["thread_id"]
        .as_i64()
        .unwrap();
    let turn = s
        .call(
            "POST",
            &format!("/api/threads/{t}/messages"),
            Some(&key),
            Some(json!({"content": "What will this cost me?"})),
        )
        .await;
    assert_eq!(turn.status, 201, "{:?}", turn.body);
    let chat_cost = turn.body["cost"]["nanos"].as_i64().unwrap();
    let event = json!([{
        "specversion": "1.0", "id": "batch-job-1", "source": "/services/batch", "type": "llm-billing.inference",
        "time": "2026-01-15T08:00:00Z",
        "data": {"user_id": uid, "model": "claude-sonnet-4-5-20250929", "request_id": "r1", "status": "succeeded", "latency_ms": 900, "compute_ms": 750,
                 "usage": {"input_tokens": 2000, "output_tokens": 400, "cache_read_input_tokens": 10000}}
    }]);
    let collected = s
        .call_raw(
            "POST",
            "/api/events",
            Some(&key),
            "application/cloudevents-batch+json",
            serde_json::to_vec(&event).unwrap(),
        )
        .await;
    assert_eq!(collected.body, json!({"accepted": 1, "duplicates": 0}));
    // Sonnet 4.5: 2000 × $3 + 400 × $15 + 10000 × $0.30 per million = 6,000,000 + 6,000,000 + 3,000,000;
    // one request at $100 per million = 100,000; 750 ms at $1 per million ms = 750,000 nano-USD.
    let inference_cost = 15_850_000;

    // The turn's three events (message, answer, tokens) and the collected one.
    bridge.wait_for(&s, 4).await;
    bridge.stop().await;

    let inv = s.call("POST", "/api/invoices", Some(ADMIN_KEY), Some(json!({"user_id": uid, "period_start": "2026-01-01T00:00:00Z", "period_end": "2100-01-01T00:00:00Z"}))).await;
    assert_eq!(inv.status, 201, "{:?}", inv.body);
    assert_eq!(
        inv.body["total_nanos"].as_i64(),
        Some(chat_cost + inference_cost),
        "the invoice is what the answers said"
    );
}
