//! The pricing component: models, the version rules, quotes with cache
//! tokens, a new version taking effect at its start (and reaching the chat
//! through the cache invalidation), resource prices, and who may change them.

use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::json;

fn future(days: i64) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + days * 86_400_000;
    let secs = ms / 1000;
    // Whole days from now at midnight UTC, in RFC 3339.
    let day = secs / 86_400;
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}T00:00:00Z")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// Models list active and retired ones with their price now; a quote with cache tokens matches a hand-computed figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_quote() {
    let s = Stack::start().await;
    let (_, key) = s.user("Quoter", "quoter@example.com").await;
    let models = s.call("GET", "/api/models", Some(&key), None).await;
    let items = models.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    let opus3 = items
        .iter()
        .find(|m| m["model"] == "claude-3-opus-20240229")
        .unwrap();
    assert_eq!(opus3["active"], false);
    let sonnet = items
        .iter()
        .find(|m| m["model"] == "claude-sonnet-4-5-20250929")
        .unwrap();
    assert_eq!(
        sonnet["price_now"]["prices"]["display"]["cache_write_1h"],
        "$6.00"
    );

    let q = s
        .call("POST", "/api/price/quote", Some(&key), Some(json!({"model": "claude-sonnet-4-5-20250929", "usage": {"input": 1200, "output": 850, "cache_write_5m": 3000, "cache_write_1h": 500, "cache_read": 12000}})))
        .await;
    assert_eq!(q.status, 200, "{:?}", q.body);
    // 1200×$3 + 850×$15 + 3000×$3.75 + 500×$6 + 12000×$0.30 per million
    // = 3,600,000 + 12,750,000 + 11,250,000 + 3,000,000 + 3,600,000 nano-USD
    assert_eq!(q.body["total_nanos"], 34_200_000);
    assert_eq!(q.body["total"], "$0.0342");
    assert_eq!(q.body["lines"][3]["cost_nanos"], 3_000_000);
    s.call(
        "POST",
        "/api/price/quote",
        Some(&key),
        Some(json!({"model": "nope", "usage": {}})),
    )
    .await
    .problem(422);
    s.call(
        "POST",
        "/api/price/quote",
        Some(&key),
        Some(json!({"model": "claude-sonnet-4-5-20250929", "usage": {"input": -1}})),
    )
    .await
    .problem(422);
    s.call("POST", "/api/price/quote", Some(&key), Some(json!({"model": "claude-sonnet-4-5-20250929", "usage": {}, "at": "2020-01-01T00:00:00Z"}))).await.problem(422);
}

// Version rules: admin only; not in the past, not at an existing start, not inside a finalized invoice period; prices non-negative integers. Nothing is written when refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_rules() {
    let s = Stack::start().await;
    let (uid, key) = s.user("Pricer", "pricer@example.com").await;
    let body = |from: &str, input: serde_json::Value| json!({"model": "claude-haiku-4-5-20251001", "effective_from": from, "prices": {"input": input, "output": 4000000, "cache_write_5m": 1000000, "cache_write_1h": 1600000, "cache_read": 80000}});
    s.call(
        "POST",
        "/api/pricing",
        Some(&key),
        Some(body(&future(10), json!(800000))),
    )
    .await
    .problem(403);
    let before = s.count("dim_token_pricing");
    let past = s
        .call(
            "POST",
            "/api/pricing",
            Some(ADMIN_KEY),
            Some(body("2025-01-01T00:00:00Z", json!(800000))),
        )
        .await;
    assert!(past.problem(422).contains("in the past"));
    let neg = s
        .call(
            "POST",
            "/api/pricing",
            Some(ADMIN_KEY),
            Some(body(&future(10), json!(-5))),
        )
        .await;
    assert!(neg.problem(422).contains("negative"));
    s.call(
        "POST",
        "/api/pricing",
        Some(ADMIN_KEY),
        Some(body(&future(10), json!(1.5))),
    )
    .await
    .problem(422);
    let missing = s.call("POST", "/api/pricing", Some(ADMIN_KEY), Some(json!({"model": "claude-haiku-4-5-20251001", "effective_from": future(10), "prices": {"input": 1, "bogus": 2}}))).await;
    assert_eq!(
        missing.problem(422).matches("prices.").count(),
        5,
        "every missing and unknown class is listed"
    );
    assert_eq!(s.count("dim_token_pricing"), before);

    let ok = s
        .call(
            "POST",
            "/api/pricing",
            Some(ADMIN_KEY),
            Some(body(&future(10), json!(800000))),
        )
        .await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    s.call(
        "POST",
        "/api/pricing",
        Some(ADMIN_KEY),
        Some(body(&future(10), json!(700000))),
    )
    .await
    .problem(422);

    s.db()
        .execute(
            "INSERT INTO user_invoices (user_id, period_start, period_end, status, invoice_number, total_nanos, total_cents, rounding_nanos, finalized_at)
             VALUES (?1, '2026-01-01T00:00:00.000Z', ?2, 'final', 1, 0, 0, 0, '2026-01-01T00:00:00.000Z')",
            rusqlite::params![uid, format!("{}.000Z", future(40).trim_end_matches('Z'))],
        )
        .unwrap();
    let inside = s
        .call(
            "POST",
            "/api/pricing",
            Some(ADMIN_KEY),
            Some(body(&future(20), json!(700000))),
        )
        .await;
    assert!(inside.problem(422).contains("finalized invoice period"));
    assert_eq!(
        s.call(
            "POST",
            "/api/pricing",
            Some(ADMIN_KEY),
            Some(body(&future(41), json!(700000)))
        )
        .await
        .status,
        201
    );

    let history = s
        .call(
            "GET",
            "/api/pricing?model=claude-haiku-4-5-20251001",
            Some(&key),
            None,
        )
        .await;
    let item = &history.body["items"][0];
    assert_eq!(item["history"].as_array().unwrap().len(), 3);
    assert_eq!(
        item["in_force"]["pricing_id"], 5,
        "the seed price is still in force now"
    );
    let later = s
        .call(
            "GET",
            &format!(
                "/api/pricing?model=claude-haiku-4-5-20251001&at={}",
                future(15)
            ),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        later.body["items"][0]["in_force"]["prices"]["input"],
        800000
    );
}

// A version starting now reaches the chat at once: the pricing component drops the cached prices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_price_reaches_chat() {
    let s = Stack::start().await;
    let (_, key) = s.user("Chatter", "chatter@example.com").await;
    let t = s.call("POST", "/api/threads", Some(&key), None).await.body["thread_id"]
        .as_i64()
        .unwrap();
    let first = s
        .call(
            "POST",
            &format!("/api/threads/{t}/messages"),
            Some(&key),
            Some(json!({"content": "one"})),
        )
        .await;
    assert_eq!(first.body["cost"]["pricing_id"], 5);
    let soon = {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 4000;
        let secs = (ms / 1000) as i64;
        let (y, m, d) = civil(secs / 86_400);
        let rem = secs % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            ms % 1000
        )
    };
    let v = s
        .call("POST", "/api/pricing", Some(ADMIN_KEY), Some(json!({"model": "claude-haiku-4-5-20251001", "effective_from": soon, "prices": {"input": 2000000, "output": 10000000, "cache_write_5m": 2500000, "cache_write_1h": 4000000, "cache_read": 200000}})))
        .await;
    assert_eq!(v.status, 201, "{:?}", v.body);
    // Until the version is in force (4 s: room for a slow POST, as a start in the past is refused).
    tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
    let second = s
        .call(
            "POST",
            &format!("/api/threads/{t}/messages"),
            Some(&key),
            Some(json!({"content": "two"})),
        )
        .await;
    assert_eq!(second.body["cost"]["pricing_id"], v.body["pricing_id"]);
    let u = &second.body["usage"];
    assert_eq!(
        second.body["cost"]["nanos"].as_i64().unwrap(),
        u["input"].as_i64().unwrap() * 2000 + u["output"].as_i64().unwrap() * 10000
    );
}

// Resource prices are listed and versioned with the same rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_prices() {
    let s = Stack::start().await;
    let list = s
        .call("GET", "/api/resource-pricing", Some(ADMIN_KEY), None)
        .await;
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["compute_time", "inference_request", "web_search_request"]
    );
    let body = |from: String, price: i64| json!({"resource": "inference_request", "unit": "request", "effective_from": from, "unit_price": price});
    assert_eq!(
        s.call(
            "POST",
            "/api/resource-pricing",
            Some(ADMIN_KEY),
            Some(body(future(5), 50_000_000))
        )
        .await
        .status,
        201
    );
    s.call(
        "POST",
        "/api/resource-pricing",
        Some(ADMIN_KEY),
        Some(body(future(5), 40_000_000)),
    )
    .await
    .problem(422);
    s.call(
        "POST",
        "/api/resource-pricing",
        Some(ADMIN_KEY),
        Some(body("2020-01-01T00:00:00Z".into(), 1)),
    )
    .await
    .problem(422);
    s.call(
        "POST",
        "/api/resource-pricing",
        Some(ADMIN_KEY),
        Some(body(future(6), -1)),
    )
    .await
    .problem(422);
    let later = s
        .call(
            "GET",
            &format!("/api/resource-pricing?at={}", future(7)),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(later.body["items"][1]["in_force"]["unit_price"], 50_000_000);
}

// The quote prices every dimension through billing-core's one function: an alias, the long-context tier, batch, a web-search fee, SDK nulls; bad input names its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quote_every_dimension() {
    let s = Stack::start().await;
    let (_, key) = s.user("Quoter", "quoter@example.com").await;
    let quote = |body: serde_json::Value| {
        let s = &s;
        let key = key.clone();
        async move {
            s.call("POST", "/api/price/quote", Some(&key), Some(body))
                .await
        }
    };
    // 260,000 prompt tokens > 200,000: all at $6 / $0.60 / $22.50 per million.
    let q = quote(json!({"model": "claude-sonnet-4-5", "at": "2026-06-01T00:00:00Z",
        "provider_usage": {"input_tokens": 210000, "cache_read_input_tokens": 50000, "output_tokens": 2000}})).await;
    assert_eq!(q.status, 200, "{:?}", q.body);
    assert_eq!(q.body["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(q.body["tier_above_prompt_tokens"], 200000);
    assert_eq!(q.body["total_nanos"], 1_335_000_000i64);
    // Batch halves the tokens, not the searches: 1,000 × $0.05 + 100 × $0.25 per million + 2 × $0.01.
    let q = quote(json!({"model": "claude-haiku-5-5", "at": "2026-11-01T00:00:00Z",
        "provider_usage": {"input_tokens": 1000, "output_tokens": 100, "service_tier": "batch", "server_tool_use": {"web_search_requests": 2}}})).await;
    assert_eq!(q.status, 200, "{:?}", q.body);
    assert_eq!(q.body["total_nanos"], 20_075_000);
    assert_eq!(q.body["modifiers"][0]["value"], "batch");
    assert_eq!(q.body["fees"][0]["cost_nanos"], 20_000_000);
    // The Python SDK's model_dump(): nulls are absent fields.
    let q = quote(json!({"model": "claude-haiku-4-5-20251001", "at": "2026-11-01T00:00:00Z",
        "provider_usage": {"input_tokens": 12, "output_tokens": 6, "cache_creation_input_tokens": null, "cache_read_input_tokens": null, "cache_creation": null, "server_tool_use": null, "service_tier": null}})).await;
    assert_eq!(q.body["total_nanos"], 42_000, "{:?}", q.body);
    let both = quote(json!({"model": "claude-haiku-4-5", "usage": {}, "provider_usage": {}})).await;
    both.problem(422);
    assert_eq!(both.body["errors"][0]["field"], "usage");
    let bad = quote(json!({"model": "claude-haiku-4-5", "provider_usage": {"speed": 3}})).await;
    bad.problem(422);
    assert_eq!(bad.body["errors"][0]["field"], "provider_usage.speed");
}

// A new version may carry tiers and modifiers; rules that cannot apply unambiguously are refused, naming the field, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_with_rules() {
    let s = Stack::start().await;
    let prices = json!({"input": 1000000, "output": 5000000, "cache_write_5m": 1250000, "cache_write_1h": 2000000, "cache_read": 100000});
    let tier = |above: i64| json!({"above_prompt_tokens": above, "prices": prices});
    let before = s.count("dim_token_pricing");
    let r = s
        .call(
            "POST",
            "/api/pricing",
            Some(ADMIN_KEY),
            Some(
                json!({"model": "claude-haiku-4-5-20251001", "effective_from": future(2),
        "prices": prices, "rules": {"tiers": [tier(200000), tier(100000)]}}),
            ),
        )
        .await;
    r.problem(422);
    assert_eq!(
        r.body["errors"][0]["field"],
        "rules.tiers[1].above_prompt_tokens"
    );
    let r = s.call("POST", "/api/pricing", Some(ADMIN_KEY), Some(json!({"model": "claude-haiku-4-5-20251001", "effective_from": future(2),
        "prices": prices, "rules": {"modifiers": [{"attribute": "service_tier", "value": "batch", "multiplier": "0"}]}}))).await;
    r.problem(422);
    assert_eq!(s.count("dim_token_pricing"), before);
    let r = s.call("POST", "/api/pricing", Some(ADMIN_KEY), Some(json!({"model": "claude-haiku-4-5-20251001", "effective_from": future(2),
        "prices": prices, "rules": {"tiers": [tier(100000)], "modifiers": [{"attribute": "speed", "value": "fast", "multiplier": "6"}]}}))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let h = s
        .call(
            "GET",
            "/api/pricing?model=claude-haiku-4-5-20251001",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    let history = h.body["items"][0]["history"].as_array().unwrap();
    assert_eq!(
        history.last().unwrap()["rules"]["modifiers"][0]["multiplier"],
        "6"
    );
}

// The catalogue kept by an admin: a new model with its first price (in the past: no invoice can hold it), an alias
// billed as the model, a retirement the chat honours while collected events are still priced; every refusal names
// its field and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_models_aliases_retirement() {
    let s = Stack::start().await;
    let (_, key) = s.user("Catalogue reader", "reader@example.com").await;
    let new_model = json!({
        "model": "claude-test-9-20261101", "display_name": "Claude Test 9", "provider": "anthropic",
        "family": "test", "context_window": 200000, "max_output_tokens": 64000,
        "released_at": "2026-11-01T00:00:00Z", "effective_from": "2026-11-01T00:00:00Z",
        "prices": {"input": 2000000, "output": 8000000, "cache_write_5m": 2500000, "cache_write_1h": 4000000, "cache_read": 200000},
        "rules": {"modifiers": [{"attribute": "service_tier", "value": "batch", "multiplier": "0.5"}]}
    });
    let models_before = s.count("dim_models");
    s.call("POST", "/api/models", Some(&key), Some(new_model.clone()))
        .await
        .problem(403);
    let mut bad = new_model.clone();
    bad["model"] = json!("claude-sonnet-4-5-20250929");
    bad["provider"] = json!("acme");
    bad["max_output_tokens"] = json!(300000);
    bad["prices"]["output"] = json!(-1);
    let r = s
        .call("POST", "/api/models", Some(ADMIN_KEY), Some(bad))
        .await;
    r.problem(422);
    let fields: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["model", "provider", "max_output_tokens", "prices.output"],
        "{:?}",
        r.body
    );
    assert_eq!(
        s.count("dim_models"),
        models_before,
        "a refusal changes nothing"
    );

    let made = s
        .call("POST", "/api/models", Some(ADMIN_KEY), Some(new_model))
        .await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    assert_eq!(
        (
            made.body["active"].clone(),
            made.body["price"]["effective_from"].clone()
        ),
        (json!(true), json!("2026-11-01T00:00:00.000Z"))
    );

    // Aliases: of the model's own name only, never a name taken, never a model without a price.
    for (alias, model, field) in [
        ("claude-test-9-20261101", "claude-test-9-20261101", "alias"),
        ("claude-haiku-4-5", "claude-test-9-20261101", "alias"),
        ("claude-test-9-latest", "claude-haiku-4-5", "model"),
        ("claude-test-9-latest", "no-such-model", "model"),
    ] {
        let r = s
            .call(
                "POST",
                "/api/models/aliases",
                Some(ADMIN_KEY),
                Some(json!({"alias": alias, "model": model})),
            )
            .await;
        r.problem(422);
        assert_eq!(
            r.body["errors"][0]["field"], field,
            "{alias} → {model}: {:?}",
            r.body
        );
    }
    let aliased = s
        .call(
            "POST",
            "/api/models/aliases",
            Some(ADMIN_KEY),
            Some(json!({"alias": "claude-test-9", "model": "claude-test-9-20261101"})),
        )
        .await;
    assert_eq!(aliased.status, 201, "{:?}", aliased.body);
    let quote = |model: &'static str| {
        let s = &s;
        let key = key.clone();
        async move {
            s.call("POST", "/api/price/quote", Some(&key), Some(json!({
                "model": model, "at": "2026-11-15T00:00:00Z",
                "provider_usage": {"input_tokens": 1000, "output_tokens": 500, "service_tier": "batch"}
            })))
            .await
        }
    };
    let by_alias = quote("claude-test-9").await;
    // Batch halves both rates: 1,000 × 1,000 + 500 × 4,000 nano-USD.
    assert_eq!(
        by_alias.body["total_nanos"], 3_000_000,
        "{:?}",
        by_alias.body
    );
    assert_eq!(by_alias.body["model"], "claude-test-9-20261101");
    assert_eq!(
        quote("claude-test-9-20261101").await.body["total_nanos"],
        3_000_000
    );
    let listed = s.call("GET", "/api/models", Some(&key), None).await;
    let item = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "claude-test-9-20261101")
        .unwrap()
        .clone();
    assert_eq!(item["aliases"], json!(["claude-test-9"]));
    let all = s.call("GET", "/api/models/aliases", Some(&key), None).await;
    assert!(all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["alias"] == "claude-test-9"));

    // Retired by its own name: the chat refuses it under every name (a turn before cached the alias as active),
    // a quote (and so the collector's events) still prices it.
    let t = s
        .call(
            "POST",
            "/api/threads",
            Some(&key),
            Some(json!({"title": "Old model"})),
        )
        .await;
    let turn_path = format!("/api/threads/{}/messages", t.body["thread_id"]);
    let ask = json!({"content": "hi", "model": "claude-test-9"});
    let before = s
        .call("POST", &turn_path, Some(&key), Some(ask.clone()))
        .await;
    assert_eq!(before.status, 201, "{:?}", before.body);
    let retired = s
        .call(
            "PATCH",
            "/api/models/claude-test-9-20261101",
            Some(ADMIN_KEY),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(
        (retired.status, retired.body["active"].clone()),
        (200, json!(false)),
        "{:?}",
        retired.body
    );
    assert!(retired.body["retired_at"].is_string());
    let turn = s.call("POST", &turn_path, Some(&key), Some(ask)).await;
    assert!(
        turn.problem(422).contains("not an active model"),
        "{:?}",
        turn.body
    );
    assert_eq!(quote("claude-test-9").await.body["total_nanos"], 3_000_000);
    let back = s
        .call(
            "PATCH",
            "/api/models/claude-test-9",
            Some(ADMIN_KEY),
            Some(json!({"active": true})),
        )
        .await;
    assert_eq!(
        (back.body["active"].clone(), back.body["retired_at"].clone()),
        (json!(true), json!(null))
    );
    // Names in paths are percent-decoded (Vertex-style `model@date` ids).
    let vertex = s
        .call(
            "PATCH",
            "/api/models/claude-sonnet-4-5%4020250929",
            Some(ADMIN_KEY),
            Some(json!({"active": true})),
        )
        .await;
    assert_eq!(
        (vertex.status, vertex.body["model"].clone()),
        (200, json!("claude-sonnet-4-5-20250929")),
        "{:?}",
        vertex.body
    );

    // Removing an alias retires it: it resolves no more, a second removal is 404, its name is not reused.
    let gone = s
        .call(
            "DELETE",
            "/api/models/aliases/claude-test-9",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(gone.status, 204);
    quote("claude-test-9").await.problem(422);
    s.call(
        "DELETE",
        "/api/models/aliases/claude-test-9",
        Some(ADMIN_KEY),
        None,
    )
    .await
    .problem(404);
    let reuse = s
        .call(
            "POST",
            "/api/models/aliases",
            Some(ADMIN_KEY),
            Some(json!({"alias": "claude-test-9", "model": "claude-haiku-4-5-20251001"})),
        )
        .await;
    assert!(
        reuse.problem(422).contains("retired alias"),
        "{:?}",
        reuse.body
    );
}
