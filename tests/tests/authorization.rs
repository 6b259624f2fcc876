//! The authorization matrix: every endpoint, called with no key, by
//! another user, by the owner and by admin (in that order), answers the
//! status the rules say — and a refused call changes nothing.

use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::{json, Value};

/// Expected statuses for: no key, another user, the owner, admin.
type Row = (&'static str, String, Option<Value>, [u16; 4]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_by_every_caller() {
    let s = Stack::start().await;
    let (a, key_a) = s.user("Owner", "owner@authz.example").await;
    let (_b, key_b) = s.user("Other", "other@authz.example").await;
    let (c, _) = s.user("Throwaway", "throwaway@authz.example").await;
    let thread = s
        .call(
            "POST",
            "/api/threads",
            Some(&key_a),
            Some(json!({"title": "Owner's thread"})),
        )
        .await
        .body["thread_id"]
        .as_i64()
        .unwrap();
    let turn = s
        .call(
            "POST",
            &format!("/api/threads/{thread}/messages"),
            Some(&key_a),
            Some(json!({"content": "hello"})),
        )
        .await;
    assert_eq!(turn.status, 201, "{:?}", turn.body);
    let spare_key = s
        .call(
            "POST",
            "/api/keys",
            Some(&key_a),
            Some(json!({"label": "spare"})),
        )
        .await
        .body["key_id"]
        .as_i64()
        .unwrap();
    let inv = |period: &str| json!({"user_id": a, "period_start": format!("{period}-01T00:00:00Z"), "period_end": format!("{period}-28T00:00:00Z")});
    let invoice = s
        .call(
            "POST",
            "/api/invoices",
            Some(ADMIN_KEY),
            Some(inv("2026-01")),
        )
        .await
        .body["invoice_id"]
        .as_i64()
        .unwrap();
    // One draft per user at a time: the January invoice is made final first.
    let fin = s
        .call(
            "POST",
            &format!("/api/invoices/{invoice}/finalize"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(fin.status, 200, "{:?}", fin.body);
    let draft = s
        .call(
            "POST",
            "/api/invoices",
            Some(ADMIN_KEY),
            Some(inv("2026-02")),
        )
        .await
        .body["invoice_id"]
        .as_i64()
        .unwrap();
    let event = |id: &str| {
        json!({"specversion": "1.0", "id": id, "source": "/authz", "type": "llm-billing.inference", "time": "2026-03-01T00:00:00Z",
        "data": {"user_id": a, "model": "claude-haiku-4-5-20251001", "request_id": id, "status": "succeeded", "latency_ms": 5, "compute_ms": 5, "usage": {"input_tokens": 1, "output_tokens": 1}}})
    };
    let price = json!({"model": "claude-haiku-4-5-20251001", "effective_from": "2099-01-01T00:00:00Z",
        "prices": {"input": 1, "output": 1, "cache_write_5m": 1, "cache_write_1h": 1, "cache_read": 1}});
    let resource_price = json!({"resource": "compute_time", "unit": "ms", "unit_price": 1, "effective_from": "2099-01-01T00:00:00Z"});
    let quote = json!({"model": "claude-haiku-4-5-20251001", "usage": {"input": 10}});

    let rows: Vec<Row> = vec![
        ("GET", "/api/users/me".into(), None, [401, 200, 200, 200]),
        ("GET", "/api/users".into(), None, [401, 403, 403, 200]),
        (
            "POST",
            "/api/users".into(),
            Some(json!({"name": "New", "email": "new@authz.example"})),
            [401, 403, 403, 201],
        ),
        (
            "POST",
            format!("/api/users/{c}/disable"),
            None,
            [401, 403, 403, 200],
        ),
        ("GET", "/api/keys".into(), None, [401, 200, 200, 200]),
        (
            "GET",
            format!("/api/keys?user_id={a}"),
            None,
            [401, 403, 200, 200],
        ),
        (
            "POST",
            "/api/keys".into(),
            Some(json!({"user_id": a, "label": "made"})),
            [401, 403, 201, 201],
        ),
        (
            "DELETE",
            format!("/api/keys/{spare_key}"),
            None,
            [401, 404, 204, 204],
        ),
        (
            "POST",
            "/api/threads".into(),
            Some(json!({"title": "t"})),
            [401, 201, 201, 201],
        ),
        ("GET", "/api/threads".into(), None, [401, 200, 200, 200]),
        (
            "GET",
            format!("/api/threads?user_id={a}"),
            None,
            [401, 403, 200, 200],
        ),
        (
            "GET",
            format!("/api/threads/{thread}"),
            None,
            [401, 404, 200, 200],
        ),
        (
            "PATCH",
            format!("/api/threads/{thread}"),
            Some(json!({"title": "renamed"})),
            [401, 404, 200, 200],
        ),
        (
            "GET",
            format!("/api/threads/{thread}/messages"),
            None,
            [401, 404, 200, 200],
        ),
        (
            "POST",
            format!("/api/threads/{thread}/messages"),
            Some(json!({"content": "again"})),
            [401, 404, 201, 403],
        ),
        (
            "POST",
            "/api/tokens/count".into(),
            Some(json!({"model": "claude-haiku-4-5-20251001", "text": "count me"})),
            [401, 200, 200, 200],
        ),
        ("GET", "/api/models".into(), None, [401, 200, 200, 200]),
        ("GET", "/api/pricing".into(), None, [401, 200, 200, 200]),
        (
            "POST",
            "/api/pricing".into(),
            Some(price),
            [401, 403, 403, 201],
        ),
        (
            "POST",
            "/api/price/quote".into(),
            Some(quote),
            [401, 200, 200, 200],
        ),
        (
            "GET",
            "/api/resource-pricing".into(),
            None,
            [401, 200, 200, 200],
        ),
        (
            "POST",
            "/api/resource-pricing".into(),
            Some(resource_price),
            [401, 403, 403, 201],
        ),
        (
            "POST",
            "/api/events".into(),
            Some(json!([event("authz-1")])),
            [401, 400, 202, 202],
        ),
        (
            "POST",
            "/api/invoices".into(),
            // For the throwaway user: the owner already has a draft (one at a time).
            Some(
                json!({"user_id": c, "period_start": "2026-03-01T00:00:00Z", "period_end": "2026-03-28T00:00:00Z"}),
            ),
            [401, 403, 403, 201],
        ),
        ("GET", "/api/invoices".into(), None, [401, 200, 200, 200]),
        (
            "GET",
            format!("/api/invoices?user_id={a}"),
            None,
            [401, 403, 200, 200],
        ),
        (
            "GET",
            format!("/api/invoices/{invoice}"),
            None,
            [401, 404, 200, 200],
        ),
        (
            "GET",
            format!("/api/invoices/{invoice}.csv"),
            None,
            [401, 404, 200, 200],
        ),
        (
            "GET",
            format!("/api/invoices/{invoice}.json"),
            None,
            [401, 404, 200, 200],
        ),
        (
            "POST",
            format!("/api/invoices/{invoice}/finalize"),
            None,
            [401, 403, 403, 200],
        ),
        (
            "DELETE",
            format!("/api/invoices/{draft}"),
            None,
            [401, 403, 403, 204],
        ),
        (
            "GET",
            "/api/metrics/summary".into(),
            None,
            [401, 200, 200, 200],
        ),
        (
            "GET",
            format!("/api/metrics/summary?user={a}"),
            None,
            [401, 403, 200, 200],
        ),
        (
            "GET",
            "/api/metrics/timeseries".into(),
            None,
            [401, 200, 200, 200],
        ),
        (
            "GET",
            "/api/metrics/timeseries?by=user".into(),
            None,
            [401, 403, 403, 200],
        ),
        (
            "GET",
            "/api/metrics/top-users".into(),
            None,
            [401, 403, 403, 200],
        ),
        (
            "GET",
            "/api/metrics/threads".into(),
            None,
            [401, 200, 200, 200],
        ),
        (
            "GET",
            format!("/api/metrics/threads?user={a}"),
            None,
            [401, 403, 200, 200],
        ),
    ];

    let callers: [Option<&str>; 4] = [None, Some(&key_b), Some(&key_a), Some(ADMIN_KEY)];
    let names = ["no key", "another user", "the owner", "admin"];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &rows {
        for (i, caller) in callers.iter().enumerate() {
            let r = if path == "/api/events" {
                let bytes = serde_json::to_vec(body.as_ref().unwrap()).unwrap();
                s.call_raw(
                    method,
                    path,
                    *caller,
                    "application/cloudevents-batch+json",
                    bytes,
                )
                .await
            } else {
                s.call(method, path, *caller, body.clone()).await
            };
            if r.status != expected[i] {
                wrong.push(format!(
                    "{method} {path} by {}: {} (expected {}) {:?}",
                    names[i], r.status, expected[i], r.body
                ));
            }
            if r.status >= 400 {
                assert_eq!(
                    r.content_type, "application/problem+json",
                    "{method} {path} by {}",
                    names[i]
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} calls answered wrongly:\n{}",
        wrong.len(),
        rows.len() * 4,
        wrong.join("\n")
    );

    // What another user can list holds nothing of the owner's.
    let theirs = |v: &Value, field: &str| {
        v[field]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["user_id"].as_i64() == Some(a))
            .count()
    };
    assert_eq!(
        theirs(
            &s.call("GET", "/api/threads", Some(&key_b), None).await.body,
            "items"
        ),
        0
    );
    assert_eq!(
        theirs(
            &s.call("GET", "/api/invoices", Some(&key_b), None)
                .await
                .body,
            "items"
        ),
        0
    );
    assert!(
        theirs(
            &s.call("GET", "/api/threads", Some(&key_a), None).await.body,
            "items"
        ) > 0,
        "the owner's threads exist"
    );
    assert!(
        theirs(
            &s.call(
                "GET",
                &format!("/api/invoices?user_id={a}"),
                Some(ADMIN_KEY),
                None
            )
            .await
            .body,
            "items"
        ) > 0,
        "the owner's invoices exist"
    );
    // Refused calls changed nothing: one disabled user, the throwaway; the owner's thread renamed only by its owner and admin.
    assert_eq!(
        s.db()
            .query_row(
                "SELECT count(*) FROM dim_users WHERE disabled_at IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
        1
    );
    assert_eq!(
        s.db()
            .query_row(
                "SELECT count(*) FROM dim_token_pricing WHERE effective_from LIKE '2099%'",
                [],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
        1
    );
}
