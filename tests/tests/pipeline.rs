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

// A price version that starts while the model is answering: the turn is priced once, at the answer's time, and the
// cost the user is shown is the cost the bridge bills and the invoice totals (before, the invoice was twice it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_change_during_the_call_bills_what_was_shown() {
    let s = Stack::start().await;
    let bridge = Bridge::start(&s).await;
    let (uid, key) = s.user("Mid-call", "midcall@example.com").await;
    let t = s.call("POST", "/api/threads", Some(&key), None).await.body["thread_id"]
        .as_i64()
        .unwrap();
    // Far enough ahead for a slow POST (a start in the past is refused), and
    // the model answers after it.
    let starts = billing_e2e::now_plus(4000).to_rfc3339();
    let version = s
        .call("POST", "/api/pricing", Some(ADMIN_KEY), Some(json!({
            "model": "claude-haiku-4-5-20251001", "effective_from": starts,
            "prices": {"input": 2000000, "output": 10000000, "cache_write_5m": 2500000, "cache_write_1h": 4000000, "cache_read": 200000}
        })))
        .await;
    assert_eq!(version.status, 201, "{:?}", version.body);
    assert!(
        billing_e2e::now_plus(0).to_rfc3339() < starts,
        "the turn is sent before the change (the POSTs were slow; raise the 4 s)"
    );
    let turn = s
        .call_with(
            "POST",
            &format!("/api/threads/{t}/messages"),
            &key,
            &[("x-sim-latency-ms", "6000")],
            json!({"content": "Answer slowly", "model": "claude-haiku-4-5-20251001"}),
        )
        .await;
    assert_eq!(turn.status, 201, "{:?}", turn.body);
    assert!(
        turn.body["message"]["created_at"].as_str().unwrap() >= starts.as_str(),
        "answered after the change"
    );
    let (input, output) = (
        turn.body["usage"]["input"].as_i64().unwrap(),
        turn.body["usage"]["output"].as_i64().unwrap(),
    );
    let shown = turn.body["cost"]["nanos"].as_i64().unwrap();
    // The new version's $2 / $10 per million: 2,000 and 10,000 nano-USD per token.
    assert_eq!(
        shown,
        input * 2000 + output * 10000,
        "{:?}",
        turn.body["cost"]
    );
    assert_eq!(turn.body["cost"]["pricing_id"], version.body["pricing_id"]);

    bridge.wait_for(&s, 3).await;
    bridge.stop().await;
    let (billed, pricing): (i64, i64) = s
        .db()
        .query_row("SELECT sum(cost_nanos), max(pricing_id) FROM user_invoice_line_item WHERE user_id = ?1", [uid], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(
        (billed, json!(pricing)),
        (shown, version.body["pricing_id"].clone())
    );
    let inv = s.invoice_until_now(uid).await;
    assert_eq!(
        inv.body["total_nanos"].as_i64(),
        Some(shown),
        "the invoice is what the answer said"
    );
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

// One price function everywhere: for random usage objects (tiers, cache writes of both TTLs, batch, web searches,
// an alias), what the quote says equals what the bridge bills for the collected event, the chat's shown cost
// equals the quote of its usage at its answer's time, and the invoice totals exactly the lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quote_chat_collector_and_invoice_agree() {
    let s = Stack::start().await;
    let bridge = Bridge::start(&s).await;
    let (uid, key) = s.user("Property", "property@example.com").await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    // (model, largest prompt it takes)
    let models = [
        ("claude-sonnet-4-5-20250929", 400_000),
        ("claude-haiku-4-5", 190_000),
        ("claude-haiku-5-5", 190_000),
        ("claude-opus-4-6", 400_000),
    ];
    let mut events = Vec::new();
    let mut quoted = std::collections::BTreeMap::new();
    for i in 0..40u64 {
        let (model, max_prompt) = models[rng.below(models.len() as u64) as usize];
        let prompt = 1 + rng.below(max_prompt);
        let read = rng.below(prompt / 2 + 1);
        let write = rng.below((prompt - read) / 2 + 1);
        let w1h = rng.below(write + 1);
        let mut usage = json!({
            "input_tokens": prompt - read - write, "output_tokens": 1 + rng.below(8000),
            "cache_read_input_tokens": read, "cache_creation_input_tokens": write,
            "cache_creation": {"ephemeral_5m_input_tokens": write - w1h, "ephemeral_1h_input_tokens": w1h},
        });
        if rng.below(3) == 0 {
            usage["service_tier"] = json!("batch");
        }
        if rng.below(4) == 0 {
            usage["server_tool_use"] = json!({"web_search_requests": 1 + rng.below(5)});
        }
        let time = format!("2026-11-20T10:{:02}:00.000Z", i);
        let id = format!("prop-{i}");
        let q = s
            .call(
                "POST",
                "/api/price/quote",
                Some(&key),
                Some(json!({"model": model, "at": time, "provider_usage": usage})),
            )
            .await;
        assert_eq!(q.status, 200, "{model} {usage}: {:?}", q.body);
        quoted.insert(id.clone(), q.body["total_nanos"].as_i64().unwrap());
        events.push(json!({
            "specversion": "1.0", "id": id, "source": "/property", "type": "llm-billing.inference", "time": time,
            "data": {"user_id": uid, "model": model, "request_id": format!("r{i}"), "status": "succeeded", "latency_ms": 100, "usage": usage}
        }));
    }
    let r = s
        .call_raw(
            "POST",
            "/api/events",
            Some(&key),
            "application/cloudevents-batch+json",
            serde_json::to_vec(&events).unwrap(),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"accepted": 40, "duplicates": 0}),
        "{:?}",
        r.body
    );

    // Chat turns: the cost shown is the quote of the turn's usage at its answer's time.
    let t = s.call("POST", "/api/threads", Some(&key), None).await.body["thread_id"]
        .as_i64()
        .unwrap();
    let mut shown_total = 0;
    for content in [
        "A short question",
        "A somewhat longer question about the price of tokens",
        "And a third",
    ] {
        let turn = s
            .call(
                "POST",
                &format!("/api/threads/{t}/messages"),
                Some(&key),
                Some(json!({"content": content})),
            )
            .await;
        assert_eq!(turn.status, 201, "{:?}", turn.body);
        let u = &turn.body["usage"];
        let q = s
            .call("POST", "/api/price/quote", Some(&key), Some(json!({
                "model": turn.body["message"]["model"], "at": turn.body["message"]["created_at"], "usage": u
            })))
            .await;
        assert_eq!(q.status, 200, "{:?}", q.body);
        let shown = turn.body["cost"]["nanos"].as_i64().unwrap();
        assert_eq!(q.body["total_nanos"].as_i64(), Some(shown), "usage {u}");
        shown_total += shown;
    }

    // 40 collected events and 3 turns of 3 events each.
    bridge.wait_for(&s, 49).await;
    bridge.stop().await;
    let db = s.db();
    let source = billing_core::events::customer_source(uid, "/property");
    for (id, total) in &quoted {
        let billed: i64 = db
            .query_row(
                "SELECT (SELECT coalesce(sum(cost_nanos), 0) FROM user_invoice_line_item WHERE source = ?1 AND event_id = ?2)
                      + (SELECT coalesce(sum(cost_nanos), 0) FROM resource_invoice_line_item WHERE source = ?1 AND event_id = ?2 AND resource = 'web_search_request')",
                [&source, id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(billed, *total, "event {id}: billed vs quoted");
    }
    let lines: i64 = db
        .query_row(
            "SELECT (SELECT sum(cost_nanos) FROM user_invoice_line_item WHERE user_id = ?1) + (SELECT coalesce(sum(cost_nanos), 0) FROM resource_invoice_line_item WHERE user_id = ?1)",
            [uid],
            |r| r.get(0),
        )
        .unwrap();
    let chat_lines: i64 = db
        .query_row("SELECT sum(cost_nanos) FROM user_invoice_line_item WHERE user_id = ?1 AND source = '/functions/messages'", [uid], |r| r.get(0))
        .unwrap();
    assert_eq!(
        chat_lines, shown_total,
        "the chat's lines are what its answers showed"
    );
    let inv = s.invoice_until_now(uid).await;
    assert_eq!(
        inv.body["total_nanos"].as_i64(),
        Some(lines),
        "{:?}",
        inv.body
    );
}
