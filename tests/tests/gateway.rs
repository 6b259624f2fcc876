//! The LLM gateway driven by the official `anthropic` Python SDK (pinned in
//! tests/sdk/requirements.txt, installed by `make deps` into
//! `$SDK_PYTHON`'s virtualenv): plain and streamed calls answer as the SDK
//! expects, each is recorded and billed exactly once, and the cost the
//! gateway tells equals what the bridge bills and the invoice totals.

use billing_e2e::{Bridge, Stack};
use serde_json::{json, Value};

fn sdk_python() -> String {
    std::env::var("SDK_PYTHON").unwrap_or_else(|_| {
        let cache = std::env::var("CACHE_DIR")
            .unwrap_or_else(|_| format!("{}/.cache/llm-billing", std::env::var("HOME").unwrap()));
        format!("{cache}/tools/sdk-clients/bin/python")
    })
}

/// Runs `tests/sdk/{script}` with the SDK's Python and `env`; returns what it
/// printed, one JSON object per call, by `kind`.
async fn run_sdk(script: &str, env: Vec<(&'static str, String)>) -> Vec<Value> {
    let py = sdk_python();
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} is missing: run `make deps` (scripts/ensure-deps.sh sdk-clients)"
    );
    let path = format!("{}/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&py)
            .arg(path)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// The SDK's plain and streamed calls: answers in the SDK's types, usage read from the stream's events, errors as the
// SDK's exceptions; every call recorded, billed once, the told cost equal to the billed lines and the invoice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_through_the_gateway() {
    let s = Stack::start().await;
    let bridge = Bridge::start(&s).await;
    let (uid, key) = s.user("Gateway team", "gateway@example.com").await;
    let seen = run_sdk(
        "anthropic_gateway.py",
        vec![
            ("APP", s.url("")),
            ("KEY", key.clone()),
            ("MODEL", "claude-haiku-4-5".into()),
            ("ADMIN_KEY", billing_e2e::ADMIN_KEY.into()),
            ("USER_ID", uid.to_string()),
        ],
    )
    .await;
    let by = |kind: &str| seen.iter().find(|v| v["kind"] == kind).unwrap().clone();
    let (plain, streamed) = (by("plain"), by("stream"));
    assert!(
        plain["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{plain}"
    );
    assert!(
        streamed["pieces"].as_u64().unwrap() > 1,
        "the text arrived in pieces: {streamed}"
    );
    // Passed through as generated: with the provider's events 250 ms apart, the first text arrives well before the end.
    let paced = by("paced");
    let (first, last) = (
        paced["first_text_s"].as_f64().unwrap(),
        paced["last_s"].as_f64().unwrap(),
    );
    assert!(
        last - first >= 0.75,
        "first text after {first:.2} s, last after {last:.2} s: the stream was held back"
    );
    assert_eq!(by("unknown-model")["error"], "NotFoundError");
    assert_eq!(
        (
            by("bad-key")["error"].clone(),
            by("bad-key")["status"].clone()
        ),
        (json!("AuthenticationError"), json!(401))
    );

    assert!(by("count")["input_tokens"].as_i64().unwrap() > 0);
    let ids = by("models")["ids"].clone();
    assert!(
        ids.as_array()
            .unwrap()
            .iter()
            .any(|m| m == "claude-haiku-4-5-20251001"),
        "{ids}"
    );
    assert!(
        !ids.as_array()
            .unwrap()
            .iter()
            .any(|m| m == "claude-3-opus-20240229"),
        "a retired model is not listed: {ids}"
    );
    assert_eq!(
        (
            by("user-names-user")["error"].clone(),
            by("user-names-user")["status"].clone()
        ),
        (json!("PermissionDeniedError"), json!(403))
    );

    // Recorded: three billed calls (the refused ones never reached the provider), usage as the SDK saw it.
    let db = s.db();
    let call = |id: &str| -> (i64, i64, i64, i64, i64) {
        db.query_row(
            "SELECT input_tokens, output_tokens, cost_nanos, streamed, partial FROM gateway_calls WHERE call_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap()
    };
    let p = call(plain["call_id"].as_str().unwrap());
    let st = call(streamed["call_id"].as_str().unwrap());
    assert_eq!(
        (p.0, p.1, p.3, p.4),
        (
            plain["usage"]["input_tokens"].as_i64().unwrap(),
            plain["usage"]["output_tokens"].as_i64().unwrap(),
            0,
            0
        )
    );
    assert_eq!(
        (st.0, st.1, st.3, st.4),
        (
            streamed["usage"]["input_tokens"].as_i64().unwrap(),
            streamed["usage"]["output_tokens"].as_i64().unwrap(),
            1,
            0
        )
    );
    assert_eq!(
        plain["cost_nanos"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        p.2,
        "the header tells the recorded cost"
    );
    // Haiku 4.5 at $1 / $5 per million tokens plus $100 per million requests (100,000 nano-USD).
    assert_eq!(p.2, p.0 * 1_000 + p.1 * 5_000 + 100_000);
    assert_eq!(st.2, st.0 * 1_000 + st.1 * 5_000 + 100_000);
    // The service key's call is billed to the user it named.
    let service = by("service");
    let (service_user, service_cost): (i64, i64) = db
        .query_row(
            "SELECT user_id, cost_nanos FROM gateway_calls WHERE call_id = ?1",
            [service["call_id"].as_str().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (service_user, service_cost.to_string()),
        (uid, service["cost_nanos"].as_str().unwrap().to_owned())
    );
    // The web search is billed: its tokens plus one search at $10 per 1,000 (10,000,000 nano-USD).
    let search = by("web-search");
    assert_eq!(
        search["usage"]["server_tool_use"]["web_search_requests"], 1,
        "{search}"
    );
    let w = call(search["call_id"].as_str().unwrap());
    assert_eq!(w.2, w.0 * 1_000 + w.1 * 5_000 + 100_000 + 10_000_000);
    assert_eq!(
        search["cost_nanos"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        w.2
    );
    let ws = call(by("web-search-stream")["call_id"].as_str().unwrap());
    assert_eq!(
        ws.2,
        ws.0 * 1_000 + ws.1 * 5_000 + 100_000 + 10_000_000,
        "the late search count is billed"
    );
    // The cut stream: billed for the input and the one output token message_start reported, marked partial.
    let cut = call(by("cut")["call_id"].as_str().unwrap());
    assert_eq!((cut.1, cut.3, cut.4), (1, 1, 1), "{:?}", by("cut"));
    assert_eq!(cut.2, cut.0 * 1_000 + 5_000 + 100_000);
    // ...and the SDK sees it end in an error, not as a complete answer.
    let cut_seen = by("cut")["seen"].clone();
    assert!(
        cut_seen
            .as_array()
            .unwrap()
            .last()
            .and_then(Value::as_str)
            .is_some_and(|l| l.starts_with('<')),
        "{cut_seen}"
    );
    assert_eq!(s.count("gateway_calls"), 7);
    // Each call names the key it came with: the user's, or none for the bootstrap admin key.
    let keys: Vec<Option<i64>> = db
        .prepare("SELECT key_id FROM gateway_calls ORDER BY occurred_at")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let user_key: i64 = db
        .query_row(
            "SELECT key_id FROM api_keys WHERE user_id = ?1",
            [uid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        keys.iter().filter(|k| **k == Some(user_key)).count(),
        6,
        "{keys:?}"
    );
    assert_eq!(keys.iter().filter(|k| k.is_none()).count(), 1, "{keys:?}");

    // Billed once each by the bridge; the invoice totals what the gateway told.
    bridge.wait_for(&s, 7).await;
    bridge.stop().await;
    let billed: i64 = db
        .query_row(
            "SELECT (SELECT sum(cost_nanos) FROM user_invoice_line_item WHERE user_id = ?1) + (SELECT sum(cost_nanos) FROM resource_invoice_line_item WHERE user_id = ?1)",
            [uid],
            |r| r.get(0),
        )
        .unwrap();
    let told: i64 = db
        .query_row(
            "SELECT sum(cost_nanos) FROM gateway_calls WHERE user_id = ?1",
            [uid],
            |r| r.get(0),
        )
        .unwrap();
    assert!(told > p.2 + st.2 + service_cost, "and the paced stream's");
    assert_eq!(billed, told);
    let inv = s.invoice_until_now(uid).await;
    assert_eq!(inv.body["total_nanos"].as_i64(), Some(told));
}

// The official `openai` SDK's Chat Completions for an Anthropic model, plain and streamed (with include_usage):
// OpenAI's shapes and usage (prompt = input + cache, completion = output), each call billed once, as told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_chat_completions_through_the_gateway() {
    let s = Stack::start().await;
    let bridge = Bridge::start(&s).await;
    let (uid, key) = s
        .user("OpenAI-shaped team", "openai-shaped@example.com")
        .await;
    let seen = run_sdk(
        "openai_gateway.py",
        vec![
            ("APP", s.url("")),
            ("KEY", key),
            ("MODEL", "claude-sonnet-4-5".into()),
        ],
    )
    .await;
    let by = |kind: &str| seen.iter().find(|v| v["kind"] == kind).unwrap().clone();
    let (plain, streamed) = (by("plain"), by("stream"));
    assert!(
        plain["text"].as_str().is_some_and(|t| !t.is_empty()) && plain["finish"] == "stop",
        "{plain}"
    );
    assert!(
        streamed["pieces"].as_u64().unwrap() > 1 && streamed["finish"] == "stop",
        "{streamed}"
    );
    assert_eq!(by("unknown-model")["error"], "NotFoundError");

    let db = s.db();
    for v in [&plain, &streamed] {
        let (input, output, w5, w1, read, cost): (i64, i64, i64, i64, i64, i64) = db
            .query_row(
                "SELECT input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, cost_nanos FROM gateway_calls WHERE call_id = ?1",
                [v["call_id"].as_str().unwrap()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .unwrap();
        let u = &v["usage"];
        assert_eq!(
            (
                u["prompt_tokens"].as_i64(),
                u["completion_tokens"].as_i64(),
                u["prompt_tokens_details"]["cached_tokens"].as_i64()
            ),
            (Some(input + w5 + w1 + read), Some(output), Some(read)),
            "{v}"
        );
        // Sonnet 4.5 at $3 / $15 per million (no cache here) plus $100 per million requests.
        assert_eq!(
            cost,
            input * 3_000 + output * 15_000 + w5 * 3_750 + w1 * 6_000 + read * 300 + 100_000
        );
    }
    assert_eq!(
        plain["cost_nanos"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        {
            db.query_row(
                "SELECT cost_nanos FROM gateway_calls WHERE call_id = ?1",
                [plain["call_id"].as_str().unwrap()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
        }
    );
    bridge.wait_for(&s, 2).await;
    bridge.stop().await;
    let (told, billed): (i64, i64) = db
        .query_row(
            "SELECT (SELECT sum(cost_nanos) FROM gateway_calls WHERE user_id = ?1),
                    (SELECT sum(cost_nanos) FROM user_invoice_line_item WHERE user_id = ?1) + (SELECT sum(cost_nanos) FROM resource_invoice_line_item WHERE user_id = ?1)",
            [uid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(billed, told);
}
