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

    // Billed once each by the bridge; the dashboard and the invoice total what the gateway told.
    bridge.wait_for(&s, 7).await;
    let told_so_far: i64 = db
        .query_row(
            "SELECT sum(cost_nanos) FROM gateway_calls WHERE user_id = ?1",
            [uid],
            |r| r.get(0),
        )
        .unwrap();
    let hour = 3_600_000;
    let now = billing_e2e::now_plus(0).millis();
    let range = |ms: i64| {
        billing_core::Timestamp::from_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let summary_path = format!(
        "/api/metrics/summary?from={}&to={}",
        range(now / hour * hour - hour),
        range(now / hour * hour + hour)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let dashboard = loop {
        let d = s.call("GET", &summary_path, Some(&key), None).await;
        assert_eq!(d.status, 200, "{:?}", d.body);
        if d.body["cost_nanos"].as_i64() == Some(told_so_far)
            || std::time::Instant::now() > deadline
        {
            break d.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        (
            dashboard["source"].as_str(),
            dashboard["cost_nanos"].as_i64(),
            dashboard["requests"].as_i64()
        ),
        (Some("redis"), Some(told_so_far), Some(7)),
        "the dashboard: {dashboard}"
    );
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

/// What the openai SDK script saw for one model, the database checked against it: every streamed call's text and
/// usage, each billed call's recorded usage equal to the SDK's and its cost to `price(input, output, cache read)`.
async fn openai_sdk(s: &Stack, key: &str, model: &str) -> Vec<Value> {
    let seen = run_sdk(
        "openai_gateway.py",
        vec![
            ("APP", s.url("")),
            ("KEY", key.to_owned()),
            ("MODEL", model.into()),
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
    // Not asked for: no usage chunk reaches the client, yet the call is billed.
    let quiet = by("stream-no-usage");
    assert_eq!(
        (
            quiet["usage_seen"].as_bool(),
            quiet["empty_choices"].as_i64()
        ),
        (Some(false), Some(0)),
        "{quiet}"
    );
    assert!(quiet["text"].as_str().is_some_and(|t| !t.is_empty()));
    let cut = by("cut");
    assert_eq!(cut["error"], "APIError", "the SDK raised: {cut}");
    let listed = by("models");
    assert!(
        listed["ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|id| id == "claude-haiku-4-5-20251001"),
        "{listed}"
    );
    assert_eq!(cut["seen"].as_array().unwrap().len(), 1, "{cut}");

    let db = s.db();
    for v in [&plain, &streamed] {
        let (input, output, w5, w1, read): (i64, i64, i64, i64, i64) = db
            .query_row(
                "SELECT input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens FROM gateway_calls WHERE call_id = ?1",
                [v["call_id"].as_str().unwrap()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
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
    }
    let told: i64 = db
        .query_row(
            "SELECT cost_nanos FROM gateway_calls WHERE call_id = ?1",
            [plain["call_id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        plain["cost_nanos"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        told
    );
    seen
}

/// A call's recorded (input, output, cache write 5m + 1h, cache read, cost, partial, billing_error).
fn recorded(s: &Stack, call_id: &str) -> (i64, i64, i64, i64, Option<i64>, i64, Option<String>) {
    s.db()
        .query_row(
            "SELECT coalesce(input_tokens, 0), coalesce(output_tokens, 0), coalesce(cache_write_5m_tokens + cache_write_1h_tokens, 0),
                    coalesce(cache_read_tokens, 0), cost_nanos, partial, billing_error FROM gateway_calls WHERE call_id = ?1",
            [call_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )
        .unwrap()
}

/// The ledger's and the invoice's total for a user, against what the gateway told.
async fn reconcile(s: &Stack, uid: i64) {
    let (told, billed): (i64, i64) = s
        .db()
        .query_row(
            "SELECT (SELECT sum(cost_nanos) FROM gateway_calls WHERE user_id = ?1),
                    (SELECT sum(cost_nanos) FROM user_invoice_line_item WHERE user_id = ?1) + (SELECT sum(cost_nanos) FROM resource_invoice_line_item WHERE user_id = ?1)",
            [uid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(billed, told);
    let inv = s.invoice_until_now(uid).await;
    assert_eq!(inv.body["total_nanos"].as_i64(), Some(told));
}

// The official `openai` SDK's Chat Completions for an Anthropic model, translated to the Messages API: OpenAI's
// shapes and usage (prompt = input + cache, completion = output), plain and streamed, a cut stream raised by the SDK
// and billed as partial; each call billed once, as told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_chat_completions_through_the_gateway() {
    let s = Stack::start().await;
    let bridge = Bridge::start(&s).await;
    let (uid, key) = s
        .user("OpenAI-shaped team", "openai-shaped@example.com")
        .await;
    let seen = openai_sdk(&s, &key, "claude-sonnet-4-5").await;
    let by = |kind: &str| seen.iter().find(|v| v["kind"] == kind).unwrap().clone();
    for kind in ["plain", "stream", "stream-no-usage", "cut"] {
        let (input, output, write, read, cost, partial, error) =
            recorded(&s, by(kind)["call_id"].as_str().unwrap());
        // Sonnet 4.5 at $3 / $15 per million (no cache here) plus $100 per million requests.
        assert_eq!(
            cost,
            Some(input * 3_000 + output * 15_000 + write * 3_750 + read * 300 + 100_000),
            "{kind}"
        );
        assert_eq!((partial, error), ((kind == "cut") as i64, None), "{kind}");
    }
    bridge.wait_for(&s, 6).await;
    bridge.stop().await;
    reconcile(&s, uid).await;
}

// The same SDK for a model of an OpenAI-compatible provider: passed through to it (llm-sim's OpenAI shape here),
// billed from OpenAI's usage; the usage chunk asked of the provider is not passed to a client that did not ask for it;
// a stream broken before its usage chunk cannot be priced and is kept with billing_error, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_models_pass_through() {
    let s = Stack::start_with(&[("OPENAI_BASE_URL", "/sim/openai")]).await;
    {
        let db = s.db();
        db.execute("INSERT INTO dim_models (model_id, model_name, display_name, provider, family, context_window, max_output_tokens) VALUES (100, 'gpt-4o-mini', 'GPT-4o mini', 'openai-compatible', 'gpt', 128000, 16384)", []).unwrap();
        // $0.15 input, $0.60 output, $0.075 cached input per million tokens (OpenAI's list price for gpt-4o-mini).
        db.execute("INSERT INTO dim_token_pricing (model_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price) VALUES (100, '2024-07-18T00:00:00.000Z', 150000, 600000, 150000, 150000, 75000)", []).unwrap();
    }
    let bridge = Bridge::start(&s).await;
    let (uid, key) = s.user("OpenAI team", "openai-team@example.com").await;
    let seen = openai_sdk(&s, &key, "gpt-4o-mini").await;
    let by = |kind: &str| seen.iter().find(|v| v["kind"] == kind).unwrap().clone();
    for kind in ["plain", "stream", "stream-no-usage"] {
        let (input, output, _, read, cost, partial, error) =
            recorded(&s, by(kind)["call_id"].as_str().unwrap());
        assert!(input > 0 && output > 0, "{kind}");
        assert_eq!(
            (cost, partial, error),
            (
                Some(input * 150 + output * 600 + read * 75 + 100_000),
                0,
                None
            ),
            "{kind}"
        );
    }
    // The long prefix sent again is read from the provider's cache: billed at the cached-input price.
    let calls = by("cache")["calls"].clone();
    let second = &calls[1];
    let (input, output, _, read, cost, _, _) = recorded(&s, second["call_id"].as_str().unwrap());
    assert!(read >= 1024, "{second}");
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"].as_i64(),
        Some(read)
    );
    assert_eq!(cost, Some(input * 150 + output * 600 + read * 75 + 100_000));
    assert_eq!(
        second["cost_nanos"]
            .as_str()
            .map(|c| c.parse::<i64>().unwrap()),
        cost
    );
    let (_, _, _, _, cost, _, error) = recorded(&s, by("cut")["call_id"].as_str().unwrap());
    assert_eq!(cost, Some(0), "kept unpriced");
    // stream_options that is not an object: refused naming the field, not a crash.
    let bad = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(
            &json!({"model": "gpt-4o-mini", "stream": true, "stream_options": true,
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("stream_options"));
    assert!(
        error.as_deref().is_some_and(|e| e.contains("usage chunk")),
        "{error:?}"
    );
    bridge.wait_for(&s, 5).await;
    bridge.stop().await;
    reconcile(&s, uid).await;
}

// The host's limits per component: with an app-wide limit of 1 s, the gateway (and llm-sim behind it) run under their
// own 20 s, so a streamed call of several seconds and a slow plain call finish and are billed, while the chat turn,
// under the app-wide limit, is stopped at 1 s. The gateway's own body limit admits a body the app-wide 2 MiB refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_calls_run_under_the_gateways_own_limits() {
    use billing_host::runtime::ComponentLimits;
    use std::time::{Duration, Instant};
    let own = ComponentLimits {
        timeout: Some(Duration::from_secs(20)),
        max_body_bytes: Some(32 << 20),
    };
    let limits = billing_host::Limits {
        timeout: Duration::from_secs(1),
        components: [
            ("gateway".to_owned(), own.clone()),
            ("llm-sim".to_owned(), own),
        ]
        .into(),
        ..billing_host::Limits::default()
    };
    let s = Stack::start_with_limits(&[], limits).await;
    let (uid, key) = s.user("Patient team", "patient@example.com").await;
    let client = reqwest::Client::new();
    let call = |extra: (&'static str, &'static str), stream: bool| {
        client
            .post(s.url("/v1/messages"))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .header(extra.0, extra.1)
            .json(&json!({"model": "claude-haiku-4-5", "max_tokens": 256, "stream": stream,
                          "messages": [{"role": "user", "content": "Write a long answer about billing streams."}]}))
            .send()
    };

    let t0 = Instant::now();
    let r = call(("x-sim-stream-delay-ms", "250"), true).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let took = t0.elapsed();
    assert!(
        took > Duration::from_millis(1500),
        "the stream took {took:?}"
    );
    assert!(
        body.contains("event: message_stop") && body.contains(": x-billing-cost-nanos="),
        "{body}"
    );

    let t0 = Instant::now();
    let r = call(("x-sim-latency-ms", "1500"), false).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(t0.elapsed() > Duration::from_millis(1500));
    assert!(r.headers().contains_key("x-billing-cost-nanos"));

    let billed: Vec<(i64, i64)> = s
        .db()
        .prepare(
            "SELECT partial, cost_nanos FROM gateway_calls WHERE user_id = ?1 ORDER BY occurred_at",
        )
        .unwrap()
        .query_map([uid], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(billed.len(), 2, "{billed:?}");
    assert!(
        billed
            .iter()
            .all(|(partial, cost)| *partial == 0 && *cost > 0),
        "{billed:?}"
    );

    // The chat turn runs under the app-wide second: stopped, 504.
    let tid = s
        .call(
            "POST",
            "/api/threads",
            Some(&key),
            Some(json!({"title": "Slow"})),
        )
        .await
        .body["thread_id"]
        .as_i64()
        .unwrap();
    let r = s
        .call_with(
            "POST",
            &format!("/api/threads/{tid}/messages"),
            &key,
            &[("x-sim-latency-ms", "1500")],
            json!({"content": "Slowly, please."}),
        )
        .await;
    assert_eq!(r.status, 504, "{:?}", r.body);

    // 3 MiB: within the gateway's own body limit (refused by the gateway itself, as not JSON)...
    let big = vec![b'x'; 3 << 20];
    let r = client
        .post(s.url("/v1/messages"))
        .header("x-api-key", &key)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not JSON"));
    // ...elsewhere refused by the host from the declared length, before the body is read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /api/tokens/count HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = conn.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

// A stream whose gateway instance ends before the stream does (stopped here by its 1.5 s time limit, as a killed
// process would be) was recorded open at message_start: the bridge bills it with what the provider had reported
// (input and one output token), once, and the invoice holds it. Without the open record it would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlived_by_its_gateway_is_billed_by_the_bridge() {
    use billing_host::runtime::ComponentLimits;
    use std::time::Duration;
    let limits = billing_host::Limits {
        components: [(
            "gateway".to_owned(),
            ComponentLimits {
                timeout: Some(Duration::from_millis(1500)),
                max_body_bytes: None,
            },
        )]
        .into(),
        ..billing_host::Limits::default()
    };
    let s = Stack::start_with_limits(&[], limits).await;
    let bridge = Bridge::start_billing_open_calls_after(&s, 1).await;
    let (uid, key) = s.user("Abandoned", "abandoned@example.com").await;
    let r = reqwest::Client::new()
        .post(s.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .header("x-sim-stream-delay-ms", "400")
        .json(&json!({"model": "claude-haiku-4-5", "max_tokens": 256, "stream": true,
                      "messages": [{"role": "user", "content": "A long answer, please, about open streams."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let call_id = r.headers()["x-billing-call-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = r.text().await.unwrap_or_default();
    assert!(
        body.contains("message_start") && !body.contains("message_stop"),
        "{body}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let row = loop {
        let row: (i64, i64, i64, i64, Option<String>) = s
            .db()
            .query_row(
                "SELECT input_tokens, output_tokens, cost_nanos, partial, open_usage FROM gateway_calls WHERE call_id = ?1",
                [&call_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        if row.4.is_none() || std::time::Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (input, output, cost, partial, open) = row;
    assert_eq!((output, partial, open), (1, 1, None), "billed, as partial");
    // Haiku 4.5: $1 / $5 per million tokens, plus $100 per million requests.
    assert_eq!(cost, input * 1_000 + 5_000 + 100_000);
    bridge.wait_for(&s, 1).await;
    bridge.stop().await;
    let inv = s.invoice_until_now(uid).await;
    assert_eq!(inv.body["total_nanos"].as_i64(), Some(cost));
}
