//! The chat path end to end with llm-sim behind the real Anthropic client:
//! a full turn priced to the nano-USD, the outbox holding exactly its three
//! events, provider failures retried and billed nothing, isolation, bad
//! input, and Redis going away mid-test.

use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::{json, Value};

/// Claude Haiku 4.5 list prices in nano-USD per token ($1, $5, $1.25, $2, $0.10 per million).
fn haiku_cost(u: &Value) -> i64 {
    let t = |k: &str| u[k].as_i64().unwrap();
    t("input") * 1000
        + t("output") * 5000
        + t("cache_write_5m") * 1250
        + t("cache_write_1h") * 2000
        + t("cache_read") * 100
}

async fn thread(s: &Stack, key: &str) -> i64 {
    let t = s
        .call(
            "POST",
            "/api/threads",
            Some(key),
            Some(json!({"title": "Chat"})),
        )
        .await;
    assert_eq!(t.status, 201, "{:?}", t.body);
    t.body["thread_id"].as_i64().unwrap()
}

// A full turn: the reply, usage per class, the hand-computed cost, the rows, and exactly three outbox events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_turn() {
    let s = Stack::start().await;
    let (uid, key) = s.user("Chatty", "chatty@example.com").await;
    let tid = thread(&s, &key).await;
    let r = s
        .call(
            "POST",
            &format!("/api/threads/{tid}/messages"),
            Some(&key),
            Some(json!({"content": "What does a cache read cost?"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(r.body["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("(llm-sim) About \"What does a cache read cost?\""));
    let usage = &r.body["usage"];
    assert!(
        usage["input"].as_i64().unwrap() > 5 && usage["output"].as_i64().unwrap() > 5,
        "{usage}"
    );
    let cost = haiku_cost(usage);
    assert_eq!(r.body["cost"]["nanos"].as_i64(), Some(cost));
    assert_eq!(r.body["provider_attempts"], 1);
    let answer_id = r.body["message"]["message_id"].as_i64().unwrap();

    let (row_cost, row_in, row_out): (i64, i64, i64) = s
        .db()
        .query_row("SELECT cost_nanos, input_tokens, output_tokens FROM message_tokens WHERE message_id = ?1", [answer_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    assert_eq!(
        (row_cost, row_in, row_out),
        (
            cost,
            usage["input"].as_i64().unwrap(),
            usage["output"].as_i64().unwrap()
        )
    );

    let db = s.db();
    let mut stmt = db
        .prepare("SELECT topic, event_key, payload FROM outbox ORDER BY outbox_id")
        .unwrap();
    let rows: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let topics: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(topics, ["raw-messages", "llm-responses", "token-metrics"]);
    assert!(
        rows.iter().all(|r| r.1 == uid.to_string()),
        "the Kafka key is the user id"
    );
    let metrics: Value = serde_json::from_str(&rows[2].2).unwrap();
    assert_eq!(
        (metrics["specversion"].as_str(), metrics["type"].as_str()),
        (Some("1.0"), Some("llm-billing.token.metrics"))
    );
    assert_eq!(metrics["data"]["usage"]["output_tokens"], usage["output"]);
    assert_eq!(metrics["data"]["message_id"], answer_id);

    let second = s
        .call(
            "POST",
            &format!("/api/threads/{tid}/messages"),
            Some(&key),
            Some(json!({"content": "And a write?"})),
        )
        .await;
    assert!(
        second.body["usage"]["input"].as_i64() > usage["input"].as_i64(),
        "the history is sent along"
    );
    let hist = s
        .call(
            "GET",
            &format!("/api/threads/{tid}/messages"),
            Some(&key),
            None,
        )
        .await;
    let items = hist.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[1]["cost"]["nanos"].as_i64(), Some(cost));
    assert!(items[0]["cost"].is_null(), "user messages carry no cost");
    let thread = s
        .call("GET", &format!("/api/threads/{tid}"), Some(&key), None)
        .await;
    assert_eq!(thread.body["message_count"], 4);
    assert_eq!(
        thread.body["cost_nanos"].as_i64(),
        Some(cost + haiku_cost(&second.body["usage"]))
    );
}

// Each injected provider error: the retries llm-sim counted, the status we return, and nothing billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors() {
    let s = Stack::start().await;
    let (_, key) = s.user("Unlucky", "unlucky@example.com").await;
    let tid = thread(&s, &key).await;
    let path = format!("/api/threads/{tid}/messages");
    for (fail, status, calls) in [
        ("429", 503, 4),
        ("529", 503, 4),
        ("500", 502, 4),
        ("503", 503, 4),
        ("spend-limit", 503, 1),
        ("malformed", 502, 1),
        ("400", 502, 1),
        ("401", 502, 1),
    ] {
        let fail_key = format!("k-{fail}");
        let r = s
            .call_with(
                "POST",
                &path,
                &key,
                &[("x-sim-fail", fail), ("x-sim-fail-key", &fail_key)],
                json!({"content": "hi"}),
            )
            .await;
        let detail = r.problem(status);
        assert!(
            r.body["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("req_sim_")),
            "{fail}: {:?}",
            r.body
        );
        let seen = s
            .call("GET", &format!("/sim/v1/calls?key={fail_key}"), None, None)
            .await;
        assert_eq!(seen.body["calls"], calls, "{fail}: {detail}");
    }
    assert_eq!(
        (s.count("message_tokens"), s.count("outbox")),
        (0, 0),
        "failures bill nothing"
    );
    let failed: i64 = s
        .db()
        .query_row(
            "SELECT count(*) FROM user_thread_messages WHERE status = 'failed' AND role = 'user'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(failed, 8, "the user's messages are kept, marked failed");

    let r = s
        .call_with(
            "POST",
            &path,
            &key,
            &[
                ("x-sim-fail", "529"),
                ("x-sim-fail-times", "2"),
                ("x-sim-fail-key", "transient"),
            ],
            json!({"content": "again"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["provider_attempts"].as_i64()),
        (201, Some(3)),
        "{:?}",
        r.body
    );
    assert_eq!(
        (s.count("message_tokens"), s.count("outbox")),
        (1, 3),
        "billed once after the retries"
    );
}

// Another user's thread is 404 to read and to post; a revoked key is 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation() {
    let s = Stack::start().await;
    let (_, akey) = s.user("A", "a@example.com").await;
    let (_, bkey) = s.user("B", "b@example.com").await;
    let tid = thread(&s, &akey).await;
    let path = format!("/api/threads/{tid}/messages");
    s.call(
        "POST",
        &path,
        Some(&bkey),
        Some(json!({"content": "let me in"})),
    )
    .await
    .problem(404);
    s.call("GET", &path, Some(&bkey), None).await.problem(404);
    s.call(
        "POST",
        &path,
        Some(ADMIN_KEY),
        Some(json!({"content": "as admin"})),
    )
    .await
    .problem(403);
    let keys = s.call("GET", "/api/keys", Some(&akey), None).await;
    let kid = keys.body["items"][0]["key_id"].as_i64().unwrap();
    s.call("DELETE", &format!("/api/keys/{kid}"), Some(&akey), None)
        .await;
    s.call("POST", &path, Some(&akey), Some(json!({"content": "hi"})))
        .await
        .problem(401);
    assert_eq!(s.count("user_thread_messages"), 0);
}

// Bad JSON, a missing field, an unknown model and a 1 MB message get 400/422/413 and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_writes_nothing() {
    let s = Stack::start().await;
    let (_, key) = s.user("Careless", "careless@example.com").await;
    let tid = thread(&s, &key).await;
    let path = format!("/api/threads/{tid}/messages");
    s.call_raw(
        "POST",
        &path,
        Some(&key),
        "application/json",
        b"{\"content\": ".to_vec(),
    )
    .await
    .problem(400);
    s.call(
        "POST",
        &path,
        Some(&key),
        Some(json!({"text": "wrong field"})),
    )
    .await
    .problem(422);
    s.call("POST", &path, Some(&key), Some(json!({"content": "   "})))
        .await
        .problem(422);
    let unknown = s
        .call(
            "POST",
            &path,
            Some(&key),
            Some(json!({"content": "hi", "model": "claude-9"})),
        )
        .await;
    assert!(unknown
        .problem(422)
        .contains("`claude-9` is not an active model"));
    s.call(
        "POST",
        &path,
        Some(&key),
        Some(json!({"content": "hi", "model": "claude-3-opus-20240229"})),
    )
    .await
    .problem(422);
    let big = "x".repeat(1 << 20);
    s.call("POST", &path, Some(&key), Some(json!({"content": big})))
        .await
        .problem(413);
    assert_eq!(
        (
            s.count("user_thread_messages"),
            s.count("message_tokens"),
            s.count("outbox")
        ),
        (0, 0, 0)
    );
}

// Redis stopped mid-test: chats keep working, history comes from SQLite; Redis back: the cache is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down() {
    let mut s = Stack::start().await;
    let (_, key) = s.user("Resilient", "resilient@example.com").await;
    let tid = thread(&s, &key).await;
    let path = format!("/api/threads/{tid}/messages");
    let first = s
        .call("POST", &path, Some(&key), Some(json!({"content": "one"})))
        .await;
    assert_eq!(first.status, 201);
    s.redis.stop();
    let second = s
        .call("POST", &path, Some(&key), Some(json!({"content": "two"})))
        .await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    assert!(
        second.body["usage"]["input"].as_i64() > first.body["usage"]["input"].as_i64(),
        "history read from SQLite"
    );
    assert_eq!(
        s.call("GET", &path, Some(&key), None).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(s.count("outbox"), 6);

    // Redis back (empty, on the same port): the host's shared connection to it failed and is made again, so the
    // cache is used again (the thread's history written to the new Redis).
    s.redis.restart();
    let third = s
        .call("POST", &path, Some(&key), Some(json!({"content": "three"})))
        .await;
    assert_eq!(third.status, 201, "{:?}", third.body);
    let fourth = s
        .call("POST", &path, Some(&key), Some(json!({"content": "four"})))
        .await;
    assert_eq!(fourth.status, 201, "{:?}", fourth.body);
    let client = redis::Client::open(s.redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let history: Option<String> = redis::cmd("GET")
        .arg(format!("thread:{tid}:history"))
        .query_async(&mut c)
        .await
        .unwrap();
    let turns: Vec<Value> =
        serde_json::from_str(&history.expect("the history is cached again")).unwrap();
    assert_eq!(turns.len(), 8, "{turns:?}");
}

// A model whose provider is openai-compatible goes through the chat-completions client; its usage maps onto our classes and is priced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_provider() {
    let s = Stack::start_with(&[("OPENAI_BASE_URL", "/sim/openai")]).await;
    {
        let db = s.db();
        db.execute("INSERT INTO dim_models (model_id, model_name, display_name, provider, family, context_window, max_output_tokens) VALUES (100, 'gpt-4o-mini', 'GPT-4o mini', 'openai-compatible', 'gpt', 128000, 16384)", []).unwrap();
        // $0.15 input, $0.60 output, $0.075 cached input per million tokens.
        db.execute("INSERT INTO dim_token_pricing (model_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price) VALUES (100, '2024-07-18T00:00:00.000Z', 150000, 600000, 150000, 150000, 75000)", []).unwrap();
    }
    let (_, key) = s.user("Polyglot", "poly@example.com").await;
    let t = s
        .call(
            "POST",
            "/api/threads",
            Some(&key),
            Some(json!({"model": "gpt-4o-mini"})),
        )
        .await;
    let tid = t.body["thread_id"].as_i64().unwrap();
    let r = s
        .call(
            "POST",
            &format!("/api/threads/{tid}/messages"),
            Some(&key),
            Some(json!({"content": "Hello from the other provider"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(r.body["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("(llm-sim)"));
    let u = &r.body["usage"];
    assert_eq!(
        (u["cache_write_5m"].as_i64(), u["cache_read"].as_i64()),
        (Some(0), Some(0))
    );
    // 150 nano-USD per input token and 600 per output token (price / 1000).
    let expected = u["input"].as_i64().unwrap() * 150 + u["output"].as_i64().unwrap() * 600;
    assert_eq!(r.body["cost"]["nanos"].as_i64(), Some(expected));
}

// Models, prices and thread history are cached in Redis with TTLs; the history is rewritten after each turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_caches() {
    let s = Stack::start().await;
    let (_, key) = s.user("Cached", "cached@example.com").await;
    let tid = thread(&s, &key).await;
    s.call(
        "POST",
        &format!("/api/threads/{tid}/messages"),
        Some(&key),
        Some(json!({"content": "first"})),
    )
    .await;
    s.call(
        "POST",
        &format!("/api/threads/{tid}/messages"),
        Some(&key),
        Some(json!({"content": "second"})),
    )
    .await;
    let client = redis::Client::open(s.redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for (k, max) in [
        ("model:id:5", 300),
        ("prices:5", 300),
        (&format!("thread:{tid}:history") as &str, 3600),
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(k).query_async(&mut c).await.unwrap();
        assert!(ttl > 0 && ttl <= max, "{k}: ttl {ttl}");
    }
    let history: String = redis::cmd("GET")
        .arg(format!("thread:{tid}:history"))
        .query_async(&mut c)
        .await
        .unwrap();
    let turns: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    let roles: Vec<&str> = turns.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(turns[2]["content"], "second");
}

// A turn retried with its Idempotency-Key is answered from the first and billed once; the key reused for another request, and a malformed key, are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry() {
    let s = Stack::start().await;
    let (_, key) = s.user("Retry", "retry@example.com").await;
    let tid = thread(&s, &key).await;
    let path = format!("/api/threads/{tid}/messages");
    let ask = json!({"content": "Bill me once"});
    let first = s
        .call_with(
            "POST",
            &path,
            &key,
            &[("idempotency-key", "turn-1")],
            ask.clone(),
        )
        .await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = s
        .call_with(
            "POST",
            &path,
            &key,
            &[("idempotency-key", "turn-1")],
            ask.clone(),
        )
        .await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(
        again.body, first.body,
        "the replay is the first answer (the same JSON)"
    );
    let counts = |s: &Stack| {
        (
            s.count("user_thread_messages"),
            s.count("message_tokens"),
            s.count("outbox"),
            s.count("idempotent_turns"),
        )
    };
    assert_eq!(
        counts(&s),
        (2, 1, 3, 1),
        "one turn stored and billed, three events"
    );

    let other = s
        .call_with(
            "POST",
            &path,
            &key,
            &[("idempotency-key", "turn-1")],
            json!({"content": "Something else"}),
        )
        .await;
    assert!(
        other
            .problem(422)
            .contains("already used for a different request"),
        "{:?}",
        other.body
    );
    for bad in ["", "has space", &"k".repeat(256)] {
        let r = s
            .call_with(
                "POST",
                &path,
                &key,
                &[("idempotency-key", bad)],
                ask.clone(),
            )
            .await;
        assert!(
            r.problem(400).contains("Idempotency-Key"),
            "{bad:?}: {:?}",
            r.body
        );
    }
    assert_eq!(counts(&s), (2, 1, 3, 1), "refused requests changed nothing");

    // Keys are per user: another user's identical key is a different turn.
    let (_, key2) = s.user("Other", "other@example.com").await;
    let tid2 = thread(&s, &key2).await;
    let theirs = s
        .call_with(
            "POST",
            &format!("/api/threads/{tid2}/messages"),
            &key2,
            &[("idempotency-key", "turn-1")],
            ask.clone(),
        )
        .await;
    assert_eq!(theirs.status, 201, "{:?}", theirs.body);
    assert!(theirs.headers.get("idempotent-replayed").is_none());
    // A new key on the first thread is a new turn.
    let second = s
        .call_with("POST", &path, &key, &[("idempotency-key", "turn-2")], ask)
        .await;
    assert_eq!(second.status, 201);
    assert_ne!(
        second.body["message"]["message_id"],
        first.body["message"]["message_id"]
    );
    assert_eq!(s.count("message_tokens"), 3);
}

// One Idempotency-Key sent twice at once reaches the model once: the second request finds the key claimed and gets
// 409 with retry-after; retried after the first is answered, it replays that answer. A failed call releases the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retry_pays_the_model_once() {
    let s = Stack::start().await;
    let (_, key) = s.user("Impatient", "impatient@example.com").await;
    let tid = thread(&s, &key).await;
    let path = format!("/api/threads/{tid}/messages");
    let ask = json!({"content": "Only once, please"});
    let headers = [
        ("idempotency-key", "same-turn"),
        ("x-sim-latency-ms", "8000"),
        ("x-sim-fail-key", "concurrent-idem"),
    ];
    let first = s.call_with("POST", &path, &key, &headers, ask.clone());
    // Sent once the first holds the key (and well within its model's 8 s).
    let second = async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while s.count("idempotency_claims") == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first request claimed no key"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        s.call_with("POST", &path, &key, &headers, ask.clone())
            .await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert!(
        second.problem(409).contains("being answered now"),
        "{:?}",
        second.body
    );
    let wait: u64 = second.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "retry-after {wait}");
    let calls = s
        .call("GET", "/sim/v1/calls?key=concurrent-idem", None, None)
        .await;
    assert_eq!(calls.body["calls"], 1, "the provider was called once");

    let retried = s
        .call_with("POST", &path, &key, &headers, ask.clone())
        .await;
    assert_eq!(retried.status, 201);
    assert_eq!(retried.body, first.body, "the retry replays the answer");
    assert_eq!(
        (s.count("message_tokens"), s.count("idempotency_claims")),
        (1, 0)
    );

    // A failed call bills nothing and leaves the key free: the retry calls the model.
    let failing = [
        ("idempotency-key", "fails-first"),
        ("x-sim-fail", "400"),
        ("x-sim-fail-times", "1"),
        ("x-sim-fail-key", "idem-fail"),
    ];
    let failed = s
        .call_with("POST", &path, &key, &failing, ask.clone())
        .await;
    assert!(failed.status >= 400, "{:?}", failed.body);
    let ok = s.call_with("POST", &path, &key, &failing, ask).await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    assert_eq!(
        (s.count("message_tokens"), s.count("idempotency_claims")),
        (2, 0)
    );
}

/// One event of a streamed turn: its name, its data and when it arrived.
struct Seen {
    event: String,
    data: Value,
    at: std::time::Duration,
}

/// Sends a turn with `"stream": true`; returns the HTTP status, the content type and the events as they arrived.
async fn streamed(
    s: &Stack,
    key: &str,
    tid: i64,
    headers: &[(&str, &str)],
    content: &str,
) -> (u16, String, Vec<Seen>) {
    let mut rb = reqwest::Client::new()
        .post(s.url(&format!("/api/threads/{tid}/messages")))
        .bearer_auth(key)
        .json(&json!({"content": content, "stream": true}));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let t0 = std::time::Instant::now();
    let mut resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut reader = billing_core::sse::SseReader::new();
    let mut seen = Vec::new();
    let mut take = |events: Vec<billing_core::sse::SseEvent>| {
        for e in events {
            seen.push(Seen {
                event: e.event,
                data: serde_json::from_str(&e.data).unwrap(),
                at: t0.elapsed(),
            });
        }
    };
    while let Some(chunk) = resp.chunk().await.unwrap() {
        take(reader.feed(&chunk));
    }
    take(reader.finish().into_iter().collect());
    (status, ctype, seen)
}

// A streamed turn: the text arrives in pieces while the model writes; the last event is the stored turn, priced to
// the nano-USD as a plain turn is, the same in the history and on the invoice. A stream cut after the provider
// accepted the turn is billed for what the provider reported and ends in an error event carrying that billed turn;
// a provider refusal before any stream is the usual problem response, billed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_turn() {
    let s = Stack::start().await;
    let bridge = billing_e2e::Bridge::start(&s).await;
    let (uid, key) = s.user("Streamer", "streamer@example.com").await;
    let tid = thread(&s, &key).await;

    let (status, ctype, seen) = streamed(
        &s,
        &key,
        tid,
        &[("x-sim-stream-delay-ms", "150")],
        "Explain how a prompt-cache write is priced, with an example.",
    )
    .await;
    assert_eq!((status, ctype.as_str()), (200, "text/event-stream"));
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
    let deltas: Vec<&Seen> = seen.iter().filter(|e| e.event == "text_delta").collect();
    assert!(deltas.len() >= 2, "the answer came in pieces: {names:?}");
    let stop = &seen.last().unwrap().data;
    // Passed on as written: with the provider's events 150 ms apart the first piece arrives long before the end.
    let (first, last) = (deltas[0].at, seen.last().unwrap().at);
    assert!(
        last - first >= std::time::Duration::from_millis(400),
        "first text after {first:?}, the end after {last:?}: the answer was held back"
    );
    let text: String = deltas
        .iter()
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(stop["message"]["content"].as_str(), Some(text.as_str()));
    assert!(text.starts_with("(llm-sim) About"), "{text}");
    let cost = haiku_cost(&stop["usage"]);
    assert!(cost > 0);
    assert_eq!(stop["cost"]["nanos"].as_i64(), Some(cost), "{stop}");
    assert_eq!(stop["message"]["status"], "ok");

    // Cut after the first text: billed for the input and the one output token message_start reported.
    let (status, _, cut) = streamed(
        &s,
        &key,
        tid,
        &[("x-sim-fail", "cut-stream")],
        "This answer will break.",
    )
    .await;
    assert_eq!(status, 200);
    let error = &cut.last().unwrap();
    assert_eq!(
        error.event,
        "error",
        "{:?}",
        cut.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    assert_eq!(error.data["status"], 502, "{}", error.data);
    let turn = &error.data["turn"];
    assert_eq!(turn["usage"]["output"], 1, "{turn}");
    let cut_cost = haiku_cost(&turn["usage"]);
    assert_eq!(turn["cost"]["nanos"].as_i64(), Some(cut_cost));
    assert_eq!(turn["message"]["status"], "failed");

    // Refused before any stream: a plain problem, nothing stored as billed.
    let (status, ctype, _) = streamed(
        &s,
        &key,
        tid,
        &[("x-sim-fail", "400")],
        "This one is refused.",
    )
    .await;
    assert_eq!((status, ctype.as_str()), (502, "application/problem+json"));

    // The history: the streamed answer with its cost; the cut turn failed, with its cost; the refused message failed, unbilled.
    let hist = s
        .call(
            "GET",
            &format!("/api/threads/{tid}/messages"),
            Some(&key),
            None,
        )
        .await;
    let items = hist.body["items"].as_array().unwrap();
    let summary: Vec<(String, String, Option<i64>)> = items
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
                m["cost"]["nanos"].as_i64(),
            )
        })
        .collect();
    let row = |r: &str, st: &str, c: Option<i64>| (r.to_owned(), st.to_owned(), c);
    assert_eq!(
        summary,
        vec![
            row("user", "ok", None),
            row("assistant", "ok", Some(cost)),
            row("user", "failed", None),
            row("assistant", "failed", Some(cut_cost)),
            row("user", "failed", None),
        ]
    );

    // The failed turns are not sent as conversation: with the cached history gone, the next turn's conversation is
    // read from SQLite and holds only the answered turn and the new message.
    let client = redis::Client::open(s.redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let history_key = format!("thread:{tid}:history");
    let _: i64 = redis::cmd("DEL")
        .arg(&history_key)
        .query_async(&mut c)
        .await
        .unwrap();
    let next = s
        .call(
            "POST",
            &format!("/api/threads/{tid}/messages"),
            Some(&key),
            Some(json!({"content": "Thanks."})),
        )
        .await;
    assert_eq!(next.status, 201, "{:?}", next.body);
    let sent: String = redis::cmd("GET")
        .arg(&history_key)
        .query_async(&mut c)
        .await
        .unwrap();
    let sent: Vec<Value> = serde_json::from_str(&sent).unwrap();
    let contents: Vec<&str> = sent
        .iter()
        .map(|t| t["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 4, "{contents:?}");
    assert_eq!(contents[1], text);
    assert_eq!(contents[2], "Thanks.");

    // Billed once each: the ledger and the invoice hold exactly the shown costs.
    let next_cost = next.body["cost"]["nanos"].as_i64().unwrap();
    bridge.wait_for(&s, 9).await;
    bridge.stop().await;
    let inv = s.invoice_until_now(uid).await;
    assert_eq!(
        inv.body["total_nanos"].as_i64(),
        Some(cost + cut_cost + next_cost),
        "{:?}",
        inv.body
    );
}
