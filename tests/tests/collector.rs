//! The event collector: the validation matrix (all-or-nothing, every bad
//! event by index), duplicate replay (billed once, same answer), caps and
//! the per-key rate limit.

use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::{json, Value};

fn event(id: &str, user: i64) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/services/batch-runner", "type": "llm-billing.inference",
        "time": "2026-11-01T10:00:00Z",
        "data": {"user_id": user, "model": "claude-haiku-4-5-20251001", "request_id": format!("req-{id}"), "status": "succeeded",
                 "latency_ms": 420, "compute_ms": 380, "usage": {"input_tokens": 100, "output_tokens": 50}}
    })
}

/// A 400's errors as (index, field, reason).
fn errors(r: &billing_e2e::Reply) -> Vec<(i64, String, String)> {
    r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_i64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn post(s: &Stack, key: &str, ct: &str, body: &Value) -> billing_e2e::Reply {
    s.call_raw(
        "POST",
        "/api/events",
        Some(key),
        ct,
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

const BATCH: &str = "application/cloudevents-batch+json";

// One bad event refuses the whole batch; the 400 lists every problem by index; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_matrix() {
    let s = Stack::start().await;
    let (uid, key) = s.user("Reporter", "reporter@example.com").await;
    let mut bad_spec = event("e2", uid);
    bad_spec["specversion"] = json!("0.3");
    let mut no_user = event("e3", uid);
    no_user["data"].as_object_mut().unwrap().remove("user_id");
    let mut unknown_model = event("e4", uid);
    unknown_model["data"]["model"] = json!("gpt-17");
    let mut negative = event("e5", uid);
    negative["data"]["latency_ms"] = json!(-3);
    let someone_else = event("e6", 2);
    let mut bad_time = event("e7", uid);
    bad_time["time"] = json!("last tuesday");
    let batch = json!([
        event("e1", uid),
        bad_spec,
        no_user,
        unknown_model,
        negative,
        someone_else,
        bad_time
    ]);
    let r = post(&s, &key, BATCH, &batch).await;
    assert!(r.problem(400).contains("nothing was stored"));
    let errs: Vec<(i64, String)> = errors(&r).into_iter().map(|(i, f, _)| (i, f)).collect();
    let indexes: Vec<i64> = errs.iter().map(|e| e.0).collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5, 6], "{errs:?}");
    assert_eq!(errs[0].1, "specversion");
    assert_eq!(errs[2].1, "data.model");
    assert_eq!(errs[4].1, "data.user_id");
    assert_eq!(errs[5].1, "time");
    assert_eq!((s.count("outbox"), s.count("collected_events")), (0, 0));

    // The admin's key may report for any user.
    let ok = post(
        &s,
        ADMIN_KEY,
        BATCH,
        &json!([event("e1", uid), event("e6", 2)]),
    )
    .await;
    assert_eq!(
        (ok.status, ok.body["accepted"].as_i64()),
        (202, Some(2)),
        "{:?}",
        ok.body
    );
}

// The same batch twice is stored once and answered the same way; duplicates inside one batch count too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_replay() {
    let s = Stack::start().await;
    let (uid, key) = s.user("Replayer", "replayer@example.com").await;
    let batch = json!([event("a", uid), event("b", uid), event("c", uid)]);
    let first = post(&s, &key, BATCH, &batch).await;
    assert_eq!(
        (first.status, first.body.clone()),
        (202, json!({"accepted": 3, "duplicates": 0}))
    );
    let again = post(&s, &key, BATCH, &batch).await;
    assert_eq!(
        (again.status, again.body.clone()),
        (202, json!({"accepted": 0, "duplicates": 3}))
    );
    let inner = post(
        &s,
        &key,
        BATCH,
        &json!([event("d", uid), event("d", uid), event("a", uid)]),
    )
    .await;
    assert_eq!(inner.body, json!({"accepted": 1, "duplicates": 2}));
    assert_eq!(s.count("outbox"), 4);
    let single = post(&s, &key, "application/cloudevents+json", &event("e", uid)).await;
    assert_eq!(single.body, json!({"accepted": 1, "duplicates": 0}));

    let payload: String = s
        .db()
        .query_row("SELECT payload FROM outbox WHERE event_id = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let stored: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(stored["dataschema"], "urn:llm-billing:inference-event:1");
    assert_eq!(
        stored["time"], "2026-11-01T10:00:00.000Z",
        "stored in the canonical form"
    );
    let topic_key: (String, String) = s
        .db()
        .query_row(
            "SELECT topic, event_key FROM outbox WHERE event_id = 'a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(topic_key, ("inference-events".to_string(), uid.to_string()));
}

// Too many events or the wrong media type are refused whole; past the per-key rate a 429 says when to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_and_rate_limit() {
    let s = Stack::start_with(&[
        ("COLLECTOR_MAX_BATCH", "5"),
        ("COLLECTOR_REQUESTS_PER_SECOND", "2"),
    ])
    .await;
    let (uid, key) = s.user("Flooder", "flooder@example.com").await;
    // Spaced out, so these stay under the rate limit of 2 a second.
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(600));
    let six: Vec<Value> = (0..6).map(|i| event(&format!("x{i}"), uid)).collect();
    post(&s, &key, BATCH, &json!(six)).await.problem(413);
    pause().await;
    post(&s, &key, "text/csv", &json!([])).await.problem(415);
    pause().await;
    post(&s, &key, BATCH, &json!([])).await.problem(400);
    pause().await;
    s.call_raw("POST", "/api/events", Some(&key), BATCH, b"[{".to_vec())
        .await
        .problem(400);
    pause().await;
    assert_eq!(s.count("outbox"), 0);

    // Eight at once: the limit counts per whole second, so a burst is
    // refused however slow each request is on a loaded machine.
    let bodies: Vec<Value> = (0..8)
        .map(|i| json!([event(&format!("r{i}"), uid)]))
        .collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| post(&s, &key, BATCH, b))).await;
    let accepted = answers.iter().filter(|r| r.status == 202).count();
    let r = answers
        .into_iter()
        .find(|r| r.status == 429)
        .expect("the rate limit answers 429");
    r.problem(429);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(
        s.count("outbox"),
        accepted as i64,
        "refused requests store nothing"
    );
}

/// `now` plus `ms`, in the canonical text form.
fn now_plus(ms: i64) -> String {
    billing_e2e::now_plus(ms).to_rfc3339()
}

// The ingest edge refuses, naming the field: a time ahead, past the horizon, or before the model's first price; counts beyond the model's limits; the system's own source. An alias and SDK nulls are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_edge_refusals() {
    let s = Stack::start_with(&[("COLLECTOR_HORIZON_DAYS", "35")]).await;
    let (uid, key) = s.user("Reporter", "reporter@example.com").await;
    let at = |id: &str, time: String| {
        let mut e = event(id, uid);
        e["time"] = json!(time);
        e
    };
    let ahead = at("a1", now_plus(10 * 60 * 1000));
    let old = at("a2", now_plus(-40 * 86_400_000));
    let mut wide = at("a4", now_plus(-60_000));
    wide["data"]["usage"] =
        json!({"input_tokens": 150000, "cache_read_input_tokens": 60000, "output_tokens": 10});
    let mut long_out = at("a5", now_plus(-60_000));
    long_out["data"]["usage"] = json!({"input_tokens": 10, "output_tokens": 64001});
    let mut reserved = at("a6", now_plus(-60_000));
    reserved["source"] = json!("/functions/messages");
    let r = post(
        &s,
        &key,
        BATCH,
        &json!([ahead, old, wide, long_out, reserved]),
    )
    .await;
    r.problem(400);
    let errs = errors(&r);
    let fields: Vec<(i64, &str)> = errs.iter().map(|e| (e.0, e.1.as_str())).collect();
    assert_eq!(
        fields,
        [
            (0, "time"),
            (1, "time"),
            (2, "data.usage.input_tokens"),
            (3, "data.usage.output_tokens"),
            (4, "source")
        ],
        "{errs:?}"
    );
    assert!(errs[0].2.contains("5 minutes ahead"), "{errs:?}");
    assert!(errs[1].2.contains("35-day horizon"), "{errs:?}");
    assert!(errs[2].2.contains("context window of 200000"), "{errs:?}");
    assert_eq!(s.count("outbox"), 0);

    // An alias and the Python SDK's nulls are accepted and stored under the event as sent.
    let mut ok = at("a7", now_plus(-60_000));
    ok["data"]["model"] = json!("claude-haiku-4-5");
    ok["data"]["usage"] = json!({"input_tokens": 100, "output_tokens": 50, "cache_creation_input_tokens": null, "cache_read_input_tokens": null, "cache_creation": null, "server_tool_use": null});
    let r = post(&s, &key, BATCH, &json!([ok])).await;
    assert_eq!(
        (r.status, r.body["accepted"].as_i64()),
        (202, Some(1)),
        "{:?}",
        r.body
    );
}

// An event dated before its model's first price is refused at ingest (not dead-lettered later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_first_price_refused() {
    let s = Stack::start().await;
    let (uid, key) = s.user("Reporter", "reporter@example.com").await;
    let mut e = event("p1", uid);
    e["data"]["model"] = json!("claude-haiku-5-5");
    e["time"] = json!("2026-10-13T23:59:59Z");
    let r = post(&s, &key, BATCH, &json!([e])).await;
    r.problem(400);
    assert_eq!(r.body["errors"][0]["field"], "time");
    assert!(
        r.body["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("first price starts 2026-10-14"),
        "{:?}",
        r.body
    );
}

// Identity is the customer's: two customers' same (source, id) are both billed; one customer's retry is a duplicate; the same id with other content is 409 naming it, and nothing of that batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_scoped_to_the_customer() {
    let s = Stack::start().await;
    let bridge = billing_e2e::Bridge::start(&s).await;
    let (a, key_a) = s.user("Tenant A", "tenant-a@example.com").await;
    let (b, key_b) = s.user("Tenant B", "tenant-b@example.com").await;
    for (uid, key) in [(a, &key_a), (b, &key_b)] {
        let r = post(&s, key, BATCH, &json!([event("shared-1", uid)])).await;
        assert_eq!(
            r.body,
            json!({"accepted": 1, "duplicates": 0}),
            "user {uid}"
        );
    }
    let retry = post(&s, &key_a, BATCH, &json!([event("shared-1", a)])).await;
    assert_eq!(retry.body, json!({"accepted": 0, "duplicates": 1}));

    let mut changed = event("shared-1", a);
    changed["data"]["usage"]["output_tokens"] = json!(51);
    let before = s.count("collected_events");
    let r = post(
        &s,
        &key_a,
        BATCH,
        &json!([event("fresh-1", a), changed.clone()]),
    )
    .await;
    let detail = r.problem(409);
    assert!(
        detail.contains("event 1")
            && detail.contains("`shared-1`")
            && detail.contains("other content"),
        "{detail}"
    );
    assert_eq!(
        s.count("collected_events"),
        before,
        "nothing of the batch stored"
    );
    // Inside one batch too.
    let mut other = event("twice", a);
    other["data"]["latency_ms"] = json!(421);
    let r = post(&s, &key_a, BATCH, &json!([event("twice", a), other])).await;
    assert!(r.problem(409).contains("event 0 of this batch"));

    bridge.wait_for(&s, 2).await;
    bridge.stop().await;
    let db = s.db();
    let billed = |uid: i64| -> (i64, i64) {
        db.query_row(
            "SELECT count(*), coalesce(sum(cost_nanos), 0) FROM user_invoice_line_item WHERE user_id = ?1",
            [uid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let (lines_a, cost_a) = billed(a);
    assert!(
        lines_a == 2 && cost_a > 0,
        "A billed: {lines_a} lines, {cost_a}"
    );
    assert_eq!(
        billed(b),
        (lines_a, cost_a),
        "B billed the same event the same"
    );
    let sources: Vec<String> = db
        .prepare("SELECT source FROM api_events ORDER BY user_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        sources,
        [
            billing_core::events::customer_source(a, "/services/batch-runner"),
            billing_core::events::customer_source(b, "/services/batch-runner")
        ]
    );
}
