//! The tokens component: local counts (and which kind), the provider's
//! count when a key is configured, the estimated cost, and bad input.

use billing_e2e::Stack;
use serde_json::json;

// Without a key, Claude counts are local estimates and cost the input price; bad input is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_counts() {
    let s = Stack::start().await;
    let (_, key) = s.user("Counter", "counter@example.com").await;
    let r = s
        .call(
            "POST",
            "/api/tokens/count",
            Some(&key),
            Some(json!({"model": "claude-haiku-4-5-20251001", "text": "hello world"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // "hello world" is 2 cl100k tokens, plus 4 per request and 3 per message; Haiku 4.5 input is 1000 nano-USD a token.
    assert_eq!(
        (r.body["input_tokens"].as_i64(), r.body["method"].as_str()),
        (Some(9), Some("local-estimate"))
    );
    assert_eq!(r.body["estimated_cost"]["nanos"], 9000);

    let prompt = json!({"model": "claude-sonnet-4-5-20250929", "system": "Be brief.", "messages": [{"role": "user", "content": "Price a cache read."}, {"role": "assistant", "content": "Ten percent of input."}, {"role": "user", "content": "And a write?"}]});
    let ours = s
        .call(
            "POST",
            "/api/tokens/count",
            Some(&key),
            Some(prompt.clone()),
        )
        .await;
    let sim = s
        .call("POST", "/sim/v1/messages/count_tokens", None, Some(prompt))
        .await;
    assert_eq!(
        ours.body["input_tokens"], sim.body["input_tokens"],
        "the same counting rules as llm-sim"
    );

    let text: String = "The invoice total is rounded to cents once, half to even. ".repeat(160);
    let long = s
        .call(
            "POST",
            "/api/tokens/count",
            Some(&key),
            Some(json!({"model": "claude-haiku-4-5-20251001", "text": text})),
        )
        .await;
    let n = long.body["input_tokens"].as_i64().unwrap();
    assert!((1900..2200).contains(&n), "{n}");
    println!(
        "counted {n} tokens in {} ms inside the component",
        long.body["elapsed_ms"]
    );

    s.call(
        "POST",
        "/api/tokens/count",
        None,
        Some(json!({"model": "claude-haiku-4-5-20251001", "text": "x"})),
    )
    .await
    .problem(401);
    s.call(
        "POST",
        "/api/tokens/count",
        Some(&key),
        Some(json!({"model": "nope", "text": "x"})),
    )
    .await
    .problem(422);
    s.call(
        "POST",
        "/api/tokens/count",
        Some(&key),
        Some(json!({"model": "claude-haiku-4-5-20251001"})),
    )
    .await
    .problem(422);
    s.call("POST", "/api/tokens/count", Some(&key), Some(json!({"model": "claude-haiku-4-5-20251001", "messages": [{"role": "robot", "content": "x"}]}))).await.problem(422);
}

// With a key configured, the provider's count_tokens answers (here llm-sim through the same client path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_count() {
    let s = Stack::start_with(&[
        ("ANTHROPIC_API_KEY", "sk-test"),
        ("ANTHROPIC_BASE_URL", "/sim"),
    ])
    .await;
    let (_, key) = s.user("Counter", "counter@example.com").await;
    let r = s
        .call(
            "POST",
            "/api/tokens/count",
            Some(&key),
            Some(json!({"model": "claude-haiku-4-5-20251001", "text": "hello world"})),
        )
        .await;
    assert_eq!(
        (r.body["input_tokens"].as_i64(), r.body["method"].as_str()),
        (Some(9), Some("provider")),
        "{:?}",
        r.body
    );
}
