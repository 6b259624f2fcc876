//! `billing::process` on a migrated SQLite file, one message at a time: the
//! price dimensions reach the rows (an alias billed as its model, a batch
//! discount, a web-search fee line) and a usage beyond the model's limits
//! is poison that writes nothing; one batch's events each priced at the
//! resource and fee versions in force at their own times.

use billing_bridge::billing::{process, Lookups, Origin, Outcome};
use billing_core::events::{CloudEvent, InferenceEvent, InferenceStatus, TokenMetrics};
use billing_core::{ModelName, Timestamp, Usage};

fn turn(id: &str, model: &str, usage: serde_json::Value) -> Vec<u8> {
    CloudEvent::new(
        id.to_owned(),
        "/test/dimensions",
        Timestamp::parse("2026-11-01T00:00:00Z").unwrap(),
        None,
        TokenMetrics {
            user_id: 2,
            thread_id: 1,
            message_id: 1,
            model: ModelName::parse(model).unwrap(),
            usage: serde_json::from_value::<Usage>(usage).unwrap(),
            latency_ms: 100,
        },
    )
    .to_json()
    .into_bytes()
}

fn run(conn: &mut rusqlite::Connection, payload: &[u8]) -> Outcome {
    let tx = conn.transaction().unwrap();
    let out = process(
        &tx,
        &mut Lookups::default(),
        "token-metrics",
        payload,
        Origin {
            partition: 0,
            offset: 0,
        },
    )
    .unwrap();
    tx.commit().unwrap();
    out
}

// An alias, batch and three web searches: billed as the dated model at half the token rates plus $0.03 on a fee line.
// The alias was retired after the event was accepted: the event is still billed as the model it named.
#[test]
fn dimensions_reach_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut conn, _) = billing_migrations::open_and_migrate(&dir.path().join("b.db")).unwrap();
    conn.execute("UPDATE dim_model_aliases SET retired_at = '2026-11-30T00:00:00.000Z' WHERE alias = 'claude-haiku-4-5'", [])
        .unwrap();
    let out = run(
        &mut conn,
        &turn(
            "t1",
            "claude-haiku-4-5",
            serde_json::json!({"input_tokens": 1000, "output_tokens": 200,
            "service_tier": "batch", "server_tool_use": {"web_search_requests": 3}}),
        ),
    );
    let Outcome::Billed { fact, line_items } = out else {
        panic!("not billed: {out:?}")
    };
    // 1,000 × $0.50 + 200 × $2.50 per million + 3 × $0.01
    assert_eq!(fact.cost_nanos, 500_000 + 500_000 + 30_000_000);
    assert_eq!(fact.model, "claude-haiku-4-5-20251001");
    assert_eq!(line_items, 3);
    let fee: (String, i64, i64) = conn
        .query_row("SELECT resource, quantity, cost_nanos FROM resource_invoice_line_item WHERE event_id = 't1'", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(fee, ("web_search_request".to_owned(), 3, 30_000_000));
    let tokens: i64 = conn
        .query_row(
            "SELECT sum(cost_nanos) FROM user_invoice_line_item WHERE event_id = 't1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tokens, 1_000_000);
}

// A prompt beyond Haiku 4.5's 200,000-token window is poison naming the field, and nothing is written.
#[test]
fn beyond_the_window_is_poison() {
    let dir = tempfile::tempdir().unwrap();
    let (mut conn, _) = billing_migrations::open_and_migrate(&dir.path().join("b.db")).unwrap();
    let out = run(
        &mut conn,
        &turn(
            "t2",
            "claude-haiku-4-5-20251001",
            serde_json::json!({"input_tokens": 150000, "cache_read_input_tokens": 60000, "output_tokens": 1}),
        ),
    );
    let Outcome::Poison { code, reason } = out else {
        panic!("billed: {out:?}")
    };
    assert_eq!(code, "invalid_usage");
    assert!(reason.contains("usage.input_tokens"), "{reason}");
    let rows: i64 = conn
        .query_row("SELECT (SELECT count(*) FROM user_invoice_line_item) + (SELECT count(*) FROM processed_events)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

fn inference_at(id: &str, at: &str) -> Vec<u8> {
    CloudEvent::new(
        id.to_owned(),
        "/test/resources",
        Timestamp::parse(at).unwrap(),
        None,
        InferenceEvent {
            user_id: 2,
            model: ModelName::parse("claude-haiku-4-5-20251001").unwrap(),
            request_id: format!("req-{id}"),
            status: InferenceStatus::Succeeded,
            http_status: Some(200),
            latency_ms: 100,
            compute_ms: 10,
            usage: serde_json::from_value::<Usage>(
                serde_json::json!({"input_tokens": 10, "output_tokens": 1,
                "server_tool_use": {"web_search_requests": 1}}),
            )
            .unwrap(),
        },
    )
    .to_json()
    .into_bytes()
}

// One batch (one transaction, one Lookups) holds events on both sides of new resource and fee
// versions, out of time order: each event's request, compute and web-search lines are priced at
// the versions in force at its own time, whichever version an earlier event of the batch chose.
#[test]
fn a_batch_prices_each_event_at_its_own_resource_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (mut conn, _) = billing_migrations::open_and_migrate(&dir.path().join("b.db")).unwrap();
    // From 2026-06-01: $0.20 per thousand requests (seed $0.10), $2 per million ms (seed $1),
    // $20 per thousand web searches (seed $10).
    conn.execute_batch(
        "INSERT INTO dim_resource_pricing (resource, unit, effective_from, unit_price) VALUES
             ('inference_request', 'request', '2026-06-01T00:00:00.000Z', 200000000),
             ('compute_time', 'millisecond', '2026-06-01T00:00:00.000Z', 2000000),
             ('web_search_request', 'request', '2026-06-01T00:00:00.000Z', 20000000000);",
    )
    .unwrap();
    let events = [
        ("before", "2026-05-31T23:59:59.999Z"),
        ("at", "2026-06-01T00:00:00.000Z"),
        ("after", "2026-06-02T00:00:00Z"),
        ("long-before", "2026-01-01T00:00:00Z"),
    ];
    let tx = conn.transaction().unwrap();
    let mut lookups = Lookups::default();
    for (offset, (id, at)) in events.iter().enumerate() {
        let out = process(
            &tx,
            &mut lookups,
            "inference-events",
            &inference_at(id, at),
            Origin {
                partition: 0,
                offset: offset as i64,
            },
        )
        .unwrap();
        assert!(matches!(out, Outcome::Billed { .. }), "{id}: {out:?}");
    }
    tx.commit().unwrap();
    let lines = |id: &str| -> Vec<(String, i64)> {
        conn.prepare("SELECT resource, cost_nanos FROM resource_invoice_line_item WHERE event_id = ?1 ORDER BY resource")
            .unwrap()
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    // 10 ms of compute, one request, one web search.
    let old = vec![
        ("compute_time".to_owned(), 10_000),
        ("inference_request".to_owned(), 100_000),
        ("web_search_request".to_owned(), 10_000_000),
    ];
    let new = vec![
        ("compute_time".to_owned(), 20_000),
        ("inference_request".to_owned(), 200_000),
        ("web_search_request".to_owned(), 20_000_000),
    ];
    assert_eq!(lines("before"), old);
    assert_eq!(
        lines("at"),
        new,
        "a version holds from its first millisecond"
    );
    assert_eq!(lines("after"), new);
    assert_eq!(lines("long-before"), old);
}
