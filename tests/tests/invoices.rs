//! Invoices end to end: a draft across a mid-period price change matching
//! a hand-computed total to the nano-USD and to the cent, late lines going
//! on the next invoice, no line on two invoices, gapless numbers,
//! idempotent finalisation, immutability, exports and who may see what.
//! Line items are written straight into SQLite, as the bridge writes them.

use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::json;

#[allow(clippy::too_many_arguments)] // one argument per column of the row it writes
fn token_line(
    s: &Stack,
    user: i64,
    event: &str,
    class: &str,
    tokens: i64,
    pricing_id: i64,
    unit_price: i64,
    at: &str,
) {
    s.db()
        .execute(
            "INSERT INTO user_invoice_line_item (source, event_id, user_id, model_id, pricing_id, token_class, tokens, unit_price, cost_nanos, occurred_at)
             VALUES ('/test', ?1, ?2, 5, ?3, ?4, ?5, ?6, ?5 * ?6 / 1000, ?7)",
            rusqlite::params![event, user, pricing_id, class, tokens, unit_price, at],
        )
        .unwrap();
}

#[allow(clippy::too_many_arguments)] // one argument per column of the row it writes
fn resource_line(
    s: &Stack,
    user: i64,
    event: &str,
    resource: &str,
    pricing_id: i64,
    quantity: i64,
    unit_price: i64,
    at: &str,
) {
    s.db()
        .execute(
            "INSERT INTO resource_invoice_line_item (source, event_id, user_id, resource_pricing_id, resource, quantity, unit_price, cost_nanos, occurred_at)
             VALUES ('/test', ?1, ?2, ?3, ?4, ?5, ?6, ?5 * ?6 / 1000, ?7)",
            rusqlite::params![event, user, pricing_id, resource, quantity, unit_price, at],
        )
        .unwrap();
}

// The whole life of two invoices, checked against figures computed by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoice_lifecycle() {
    let s = Stack::start().await;
    let (uid, key) = s.user("Billed", "billed@example.com").await;
    let (_, other) = s.user("Other", "other@example.com").await;
    // Haiku 4.5 gets cheaper on 16 March: $0.80 input, $4 output.
    s.db()
        .execute("INSERT INTO dim_token_pricing (pricing_id, model_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price) VALUES (50, 5, '2026-03-16T00:00:00.000Z', 800000, 4000000, 1000000, 1600000, 80000)", [])
        .unwrap();
    token_line(
        &s,
        uid,
        "late-feb",
        "input",
        5_000,
        5,
        1_000_000,
        "2026-02-27T10:00:00.000Z",
    ); //   5,000,000 (late for February)
    token_line(
        &s,
        uid,
        "e1",
        "input",
        120_000,
        5,
        1_000_000,
        "2026-03-02T09:00:00.000Z",
    ); //     120,000,000
    token_line(
        &s,
        uid,
        "e1",
        "output",
        80_000,
        5,
        5_000_000,
        "2026-03-02T09:00:00.000Z",
    ); //     400,000,000
    token_line(
        &s,
        uid,
        "e2",
        "input",
        120_000,
        50,
        800_000,
        "2026-03-20T14:30:00.000Z",
    ); //       96,000,000
    token_line(
        &s,
        uid,
        "e2",
        "output",
        33_300,
        50,
        4_000_000,
        "2026-03-20T14:30:00.000Z",
    ); //    133,200,000
    resource_line(
        &s,
        uid,
        "r1",
        "inference_request",
        1,
        1,
        100_000_000,
        "2026-03-20T14:30:00.000Z",
    ); // 100,000
    resource_line(
        &s,
        uid,
        "r1",
        "compute_time",
        2,
        1_251,
        1_000_000,
        "2026-03-20T14:30:00.000Z",
    ); //  1,251,000
    token_line(
        &s,
        uid,
        "april",
        "input",
        10_000,
        50,
        800_000,
        "2026-04-02T08:00:00.000Z",
    ); //      8,000,000
    let march = json!({"user_id": uid, "period_start": "2026-03-01T00:00:00Z", "period_end": "2026-04-01T00:00:00Z"});

    s.call("POST", "/api/invoices", Some(&key), Some(march.clone()))
        .await
        .problem(403);
    let draft = s
        .call(
            "POST",
            "/api/invoices",
            Some(ADMIN_KEY),
            Some(march.clone()),
        )
        .await;
    assert_eq!(draft.status, 201, "{:?}", draft.body);
    // 5,000,000 + 120,000,000 + 400,000,000 + 96,000,000 + 133,200,000 + 100,000 + 1,251,000
    assert_eq!(draft.body["total_nanos"], 755_551_000);
    assert_eq!(
        (
            draft.body["status"].as_str(),
            draft.body["line_count"].as_i64()
        ),
        (Some("draft"), Some(7))
    );
    let haiku = &draft.body["models"][0];
    assert_eq!(
        (haiku["model"].as_str(), haiku["cost_nanos"].as_i64()),
        (Some("claude-haiku-4-5-20251001"), Some(754_200_000))
    );
    assert_eq!(draft.body["resources"][0]["cost_nanos"], 1_251_000);
    let id = draft.body["invoice_id"].as_i64().unwrap();

    // One draft per user at a time: a second is refused and changes nothing.
    let second = s
        .call(
            "POST",
            "/api/invoices",
            Some(ADMIN_KEY),
            Some(march.clone()),
        )
        .await;
    assert!(
        second
            .problem(409)
            .contains(&format!("already has draft invoice {id}")),
        "{:?}",
        second.body
    );
    assert_eq!(s.count("user_invoices"), 1);
    // The draft holds its lines by reference: none carries its id until it is final.
    assert_eq!(
        s.db()
            .query_row(
                "SELECT count(*) FROM user_invoice_line_item WHERE invoice_id IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
        0
    );

    let fin = s
        .call(
            "POST",
            &format!("/api/invoices/{id}/finalize"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(fin.status, 200, "{:?}", fin.body);
    // $0.755551 is 75.5551 cents: 76 cents, rounded up by 4,449,000 nano-USD.
    assert_eq!(
        (
            fin.body["total_cents"].as_i64(),
            fin.body["rounding_nanos"].as_i64(),
            fin.body["total"].as_str()
        ),
        (Some(76), Some(4_449_000), Some("$0.76"))
    );
    assert_eq!(fin.body["invoice_number"], 1);
    assert_eq!(
        s.db()
            .query_row(
                "SELECT (SELECT count(*) FROM user_invoice_line_item WHERE invoice_id = ?1) + (SELECT count(*) FROM resource_invoice_line_item WHERE invoice_id = ?1)",
                [id],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
        7,
        "finalizing wrote the invoice's id into exactly its seven lines"
    );
    let again = s
        .call(
            "POST",
            &format!("/api/invoices/{id}/finalize"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(
        (
            again.body["invoice_number"].as_i64(),
            again.body["finalized_at"].clone()
        ),
        (Some(1), fin.body["finalized_at"].clone()),
        "finalize is idempotent"
    );
    s.call(
        "DELETE",
        &format!("/api/invoices/{id}"),
        Some(ADMIN_KEY),
        None,
    )
    .await
    .problem(409);

    // A March event arriving after March is final goes on the next invoice.
    token_line(
        &s,
        uid,
        "late-march",
        "output",
        1_000,
        50,
        4_000_000,
        "2026-03-31T23:59:59.999Z",
    ); // 4,000,000
    let april = s.call("POST", "/api/invoices", Some(ADMIN_KEY), Some(json!({"user_id": uid, "period_start": "2026-04-01T00:00:00Z", "period_end": "2026-05-01T00:00:00Z"}))).await;
    assert_eq!(
        (
            april.body["total_nanos"].as_i64(),
            april.body["line_count"].as_i64()
        ),
        (Some(12_000_000), Some(2))
    );
    let april_id = april.body["invoice_id"].as_i64().unwrap();
    let fin2 = s
        .call(
            "POST",
            &format!("/api/invoices/{april_id}/finalize"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(
        (
            fin2.body["invoice_number"].as_i64(),
            fin2.body["total_cents"].as_i64()
        ),
        (Some(2), Some(1)),
        "numbers without gaps; 1.2 cents rounds to 1"
    );

    let frozen = s
        .call("GET", &format!("/api/invoices/{id}"), Some(&key), None)
        .await;
    assert_eq!(
        (
            frozen.body["total_nanos"].as_i64(),
            frozen.body["line_count"].as_i64()
        ),
        (Some(755_551_000), Some(7)),
        "a final invoice never changes"
    );
    s.call("GET", &format!("/api/invoices/{id}"), Some(&other), None)
        .await
        .problem(404);
    assert_eq!(
        s.call("GET", "/api/invoices", Some(&other), None)
            .await
            .body["total"],
        0
    );
    let mine = s
        .call("GET", "/api/invoices?status=final", Some(&key), None)
        .await;
    assert_eq!(mine.body["total"], 2);
    s.call("GET", "/api/invoices?status=paid", Some(&key), None)
        .await
        .problem(422);

    let csv = reqwest::Client::new()
        .get(s.url(&format!("/api/invoices/{id}.csv")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("line_item_id,kind,occurred_at,item"));
    assert_eq!(rows.len(), 1 + 7 + 3);
    assert!(rows[1].contains("late-feb") && rows[1].contains(",5000000,"));
    assert!(
        text.contains(",total,,,,,,755551000,$0.755551,,")
            && text.contains(",total_charged,,,,,,,$0.76,,")
    );
    let exported = s
        .call("GET", &format!("/api/invoices/{id}.json"), Some(&key), None)
        .await;
    assert_eq!(exported.body["lines"].as_array().unwrap().len(), 7);

    let unclaimed: i64 = s
        .db()
        .query_row(
            "SELECT count(*) FROM user_invoice_line_item WHERE invoice_id IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unclaimed, 0);
    s.call("POST", "/api/invoices", Some(ADMIN_KEY), Some(json!({"user_id": uid, "period_start": "2026-05-01T00:00:00Z", "period_end": "2026-04-01T00:00:00Z"}))).await.problem(422);
}

// A period that has not ended may still receive events: its draft can be read but not finalized (409), and stays a
// draft. A period that has ended is finalized with every line of it there is, those that arrived after the draft too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizing_a_running_period_is_refused() {
    let s = Stack::start().await;
    let (uid, _) = s.user("Running", "running@example.com").await;
    let draft = s
        .call("POST", "/api/invoices", Some(ADMIN_KEY), Some(json!({"user_id": uid, "period_start": "2026-01-01T00:00:00Z", "period_end": "2100-01-01T00:00:00Z"})))
        .await;
    assert_eq!(draft.status, 201, "{:?}", draft.body);
    let id = draft.body["invoice_id"].as_i64().unwrap();
    let r = s
        .call(
            "POST",
            &format!("/api/invoices/{id}/finalize"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert!(r.problem(409).contains("may still arrive"), "{:?}", r.body);
    let after = s
        .call("GET", &format!("/api/invoices/{id}"), Some(ADMIN_KEY), None)
        .await;
    assert_eq!(
        (
            after.body["status"].clone(),
            after.body["invoice_number"].clone()
        ),
        (json!("draft"), json!(null))
    );
    s.call(
        "DELETE",
        &format!("/api/invoices/{id}"),
        Some(ADMIN_KEY),
        None,
    )
    .await;

    token_line(
        &s,
        uid,
        "early",
        "input",
        1_000,
        5,
        1_000_000,
        "2026-03-10T00:00:00.000Z",
    ); // 1,000,000
    let march = s
        .call("POST", "/api/invoices", Some(ADMIN_KEY), Some(json!({"user_id": uid, "period_start": "2026-03-01T00:00:00Z", "period_end": "2026-04-01T00:00:00Z"})))
        .await;
    assert_eq!(march.body["total_nanos"], 1_000_000);
    token_line(
        &s,
        uid,
        "arrived-after-the-draft",
        "output",
        500,
        5,
        4_000_000,
        "2026-03-20T00:00:00.000Z",
    ); // 2,000,000
    let fin = s
        .call(
            "POST",
            &format!("/api/invoices/{}/finalize", march.body["invoice_id"]),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(
        (
            fin.status,
            fin.body["total_nanos"].clone(),
            fin.body["line_count"].clone()
        ),
        (200, json!(3_000_000), json!(2)),
        "{:?}",
        fin.body
    );
}
