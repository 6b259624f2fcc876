//! Hostile input beyond the fuzzer: huge headers, slow and abandoned
//! bodies, unicode edge cases, negative and overflowing numbers, SQL-looking
//! strings and another user's ids. Every refusal is a 4xx problem in words
//! (never a 500) and leaves every table exactly as it was; what is accepted
//! comes back byte for byte.

use billing_e2e::{Reply, Stack, ADMIN_KEY};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Every row of every table, as text, by table: equal digests mean nothing changed.
fn digest(s: &Stack) -> std::collections::BTreeMap<String, String> {
    let db = s.db();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut all = std::collections::BTreeMap::new();
    for t in tables {
        let mut out = String::new();
        let mut st = db
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))
            .unwrap();
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap();
        for r in rows {
            out.push_str(&r.unwrap());
            out.push('\n');
        }
        all.insert(t, out);
    }
    all
}

fn assert_unchanged(s: &Stack, before: &std::collections::BTreeMap<String, String>) {
    let after = digest(s);
    let changed: Vec<&String> = after
        .iter()
        .filter(|(t, v)| before.get(*t) != Some(v))
        .map(|(t, _)| t)
        .collect();
    assert!(
        changed.is_empty(),
        "a refused request changed the tables {changed:?}"
    );
}

/// A refusal: a 4xx problem+json that names the problem.
fn refused(r: &Reply, what: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: {} {:?}",
        r.status,
        r.body
    );
    assert_eq!(
        r.content_type, "application/problem+json",
        "{what}: {:?}",
        r.body
    );
    assert!(
        !r.body["detail"].as_str().unwrap_or("").is_empty() || !r.body["errors"].is_null(),
        "{what}: a refusal says why: {:?}",
        r.body
    );
}

fn raw(port: u16, bytes: &[u8]) -> std::net::TcpStream {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(bytes).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_change_nothing() {
    let s = Stack::start().await;
    let (alice, alice_key) = s.user("Alice", "alice@example.com").await;
    let (bob, bob_key) = s.user("Bob", "bob@example.com").await;
    let t = s
        .call(
            "POST",
            "/api/threads",
            Some(&alice_key),
            Some(json!({"title": "Mine"})),
        )
        .await;
    let alice_thread = t.body["thread_id"].as_i64().unwrap();
    let turn = s
        .call(
            "POST",
            &format!("/api/threads/{alice_thread}/messages"),
            Some(&alice_key),
            Some(json!({"content": "hello"})),
        )
        .await;
    assert_eq!(turn.status, 201);
    let draft = s.call("POST", "/api/invoices", Some(ADMIN_KEY), Some(json!({"user_id": alice, "period_start": "2020-01-01T00:00:00Z", "period_end": "2100-01-01T00:00:00Z"}))).await;
    assert_eq!(draft.status, 201, "{:?}", draft.body);
    let alice_invoice = draft.body["invoice_id"].as_i64().unwrap();
    let before = digest(&s);
    let big = "9".repeat(400);
    let event = |data: Value| json!({"specversion": "1.0", "id": "h-1", "source": "/hostile", "type": "llm-billing.inference", "time": "2026-11-01T10:00:00Z", "data": data});
    let good_data = json!({"user_id": alice, "model": "claude-haiku-4-5-20251001", "request_id": "r", "status": "succeeded", "latency_ms": 1});

    // Negative, overflowing and non-integer numbers.
    let numbers: Vec<(&str, &str, Value)> = vec![
        (
            "POST",
            "/api/events",
            event(
                json!({"user_id": alice, "model": "claude-haiku-4-5-20251001", "request_id": "r", "status": "succeeded", "latency_ms": -1}),
            ),
        ),
        (
            "POST",
            "/api/events",
            event(
                json!({"user_id": alice, "model": "claude-haiku-4-5-20251001", "request_id": "r", "status": "succeeded", "latency_ms": 1, "usage": {"output_tokens": 1.5}}),
            ),
        ),
        (
            "POST",
            "/api/events",
            event(
                json!({"user_id": -1, "model": "claude-haiku-4-5-20251001", "request_id": "r", "status": "succeeded", "latency_ms": 1}),
            ),
        ),
        (
            "POST",
            "/api/events",
            event(
                json!({"user_id": 9223372036854775807i64, "model": "claude-haiku-4-5-20251001", "request_id": "r", "status": "succeeded", "latency_ms": 1}),
            ),
        ),
        (
            "POST",
            "/api/price/quote",
            json!({"model": "claude-haiku-4-5-20251001", "usage": {"input": -5}}),
        ),
        (
            "POST",
            "/api/price/quote",
            json!({"model": "claude-haiku-4-5-20251001", "usage": {"input": 18446744073709551615u64, "output": 18446744073709551615u64}}),
        ),
        (
            "POST",
            "/api/pricing",
            json!({"model": "claude-haiku-4-5-20251001", "effective_from": "2099-01-01T00:00:00Z", "prices": {"input": -1, "output": 1, "cache_write_5m": 1, "cache_write_1h": 1, "cache_read": 1}}),
        ),
        (
            "POST",
            "/api/pricing",
            json!({"model": "claude-haiku-4-5-20251001", "effective_from": "2099-01-01T00:00:00Z", "prices": {"input": 1e300, "output": 1, "cache_write_5m": 1, "cache_write_1h": 1, "cache_read": 1}}),
        ),
        (
            "POST",
            "/api/invoices",
            json!({"user_id": -7, "period_start": "2026-01-01T00:00:00Z", "period_end": "2026-02-01T00:00:00Z"}),
        ),
        (
            "POST",
            "/api/invoices",
            json!({"user_id": alice, "period_start": "0000-01-01T00:00:00Z", "period_end": "99999-01-01T00:00:00Z"}),
        ),
    ];
    for (method, path, body) in numbers {
        let r = s
            .call(method, path, Some(ADMIN_KEY), Some(body.clone()))
            .await;
        refused(&r, &format!("{method} {path} {body}"));
    }
    for path in [
        "/api/threads?limit=-1",
        "/api/threads?offset=99999999999999999999999",
        &format!("/api/threads/{big}"),
        "/api/threads/-1",
        "/api/invoices/18446744073709551616",
        "/api/metrics/summary?from=-271821-04-20T00:00:00Z",
        "/api/metrics/timeseries?bucket=minute&from=1970-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        "/api/pricing?at=9999999-01-01T00:00:00Z",
    ] {
        let r = s.call("GET", path, Some(ADMIN_KEY), None).await;
        refused(&r, path);
    }
    let r = s.call_raw("POST", "/api/events", Some(ADMIN_KEY), "application/cloudevents+json", serde_json::to_vec(&event(json!({"user_id": alice, "model": "claude-haiku-4-5-20251001", "request_id": "r", "status": "succeeded", "latency_ms": 1}))).unwrap().into_iter().chain(std::iter::once(b'x')).collect()).await;
    refused(&r, "trailing garbage after the JSON");

    let overflow = format!(
        r#"{{"specversion": "1.0", "id": "h-2", "source": "/hostile", "type": "llm-billing.inference", "time": "2026-11-01T10:00:00Z",
        "data": {{"user_id": {alice}, "model": "claude-haiku-4-5-20251001", "request_id": "r", "status": "succeeded", "latency_ms": 1, "usage": {{"input_tokens": 18446744073709551616}}}}}}"#
    );
    refused(
        &s.call_raw(
            "POST",
            "/api/events",
            Some(ADMIN_KEY),
            "application/cloudevents+json",
            overflow.into_bytes(),
        )
        .await,
        "2^64 tokens",
    );

    // SQL-looking strings are data, never SQL.
    for text in [
        "'; DROP TABLE user_threads; --",
        "\" OR 1=1 --",
        "%' OR '1'='1",
        "x'); DELETE FROM outbox; --",
    ] {
        let r = s
            .call(
                "GET",
                &format!("/api/threads?q={}", urlencode(text)),
                Some(&alice_key),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{text}: {:?}", r.body);
        assert_eq!(
            r.body["items"].as_array().unwrap().len(),
            0,
            "{text} matched nothing"
        );
        refused(
            &s.call(
                "POST",
                "/api/price/quote",
                Some(&alice_key),
                Some(json!({"model": text, "usage": {"input": 1}})),
            )
            .await,
            text,
        );
        refused(&s.call("POST", "/api/events", Some(ADMIN_KEY), Some(event(json!({"user_id": alice, "model": text, "request_id": "r", "status": "succeeded", "latency_ms": 1})))).await, text);
        refused(
            &s.call(
                "POST",
                "/api/users",
                Some(ADMIN_KEY),
                Some(json!({"name": "x", "email": text})),
            )
            .await,
            text,
        );
        refused(
            &s.call(
                "GET",
                &format!("/api/invoices?status={}", urlencode(text)),
                Some(ADMIN_KEY),
                None,
            )
            .await,
            text,
        );
    }

    // Another user's ids everywhere: the same "no such" answer as a missing one.
    for (method, path, body) in [
        ("GET", format!("/api/threads/{alice_thread}"), None),
        (
            "PATCH",
            format!("/api/threads/{alice_thread}"),
            Some(json!({"title": "taken"})),
        ),
        ("GET", format!("/api/threads/{alice_thread}/messages"), None),
        (
            "POST",
            format!("/api/threads/{alice_thread}/messages"),
            Some(json!({"content": "mine now"})),
        ),
        ("GET", format!("/api/invoices/{alice_invoice}"), None),
        ("GET", format!("/api/invoices/{alice_invoice}.csv"), None),
        ("GET", format!("/api/invoices?user_id={alice}"), None),
        ("GET", format!("/api/keys?user_id={alice}"), None),
        ("GET", format!("/api/metrics/summary?user={alice}"), None),
        (
            "POST",
            format!("/api/invoices/{alice_invoice}/finalize"),
            None,
        ),
        ("DELETE", format!("/api/invoices/{alice_invoice}"), None),
        (
            "POST",
            "/api/events".to_string(),
            Some(event(good_data.clone())),
        ),
    ] {
        let r = s.call(method, &path, Some(&bob_key), body).await;
        refused(&r, &format!("bob: {method} {path}"));
    }
    assert_ne!(alice, bob);

    // Huge headers: refused by the server before any component runs.
    let huge = "a".repeat(1 << 20);
    let c = reqwest::Client::new();
    let r = c
        .get(s.url("/api/users/me"))
        .bearer_auth(&huge)
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| r.status().is_client_error()),
        "a 1 MiB authorization header: {:?}",
        r.map(|r| r.status())
    );
    let r = c
        .get(s.url("/api/users/me"))
        .bearer_auth(&alice_key)
        .header("x-filler", &huge)
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| r.status().is_client_error()),
        "a 1 MiB header: {:?}",
        r.map(|r| r.status())
    );
    let many = (0..2000).fold(
        c.get(s.url("/api/users/me")).bearer_auth(&alice_key),
        |rb, i| rb.header(format!("x-h{i}"), "v"),
    );
    let r = many.send().await;
    assert!(
        r.as_ref().map_or(true, |r| r.status().is_client_error()),
        "2,000 headers: {:?}",
        r.map(|r| r.status())
    );

    // A body abandoned halfway: nothing is written; a slow honest body is served,
    // and nobody waits behind either.
    let port = s.addr.port();
    let body = serde_json::to_vec(&json!({"content": "slowly"})).unwrap();
    let head = format!("POST /api/threads/{alice_thread}/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {alice_key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len() + 1000);
    let abandoned = raw(port, &[head.as_bytes(), &body[..5]].concat());
    let mut stalled = raw(port, b"GET /api/users/me HTTP/1.1\r\nhost: x\r\n"); // headers never finish
                                                                               // The server drops it once billing_host::server::HEADER_READ_TIMEOUT (15 s) has passed.
    let dropped = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut buf = Vec::new();
        stalled
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let _ = stalled.read_to_end(&mut buf);
        (t0.elapsed(), String::from_utf8_lossy(&buf).into_owned())
    });
    let t0 = Instant::now();
    let me = s.call("GET", "/api/users/me", Some(&alice_key), None).await;
    assert_eq!(me.status, 200);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "served beside stalled connections"
    );
    drop(abandoned);
    let slow_head = format!("POST /api/tokens/count HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {alice_key}\r\ncontent-type: application/json\r\nconnection: close\r\n");
    let patch = serde_json::to_vec(
        &json!({"model": "claude-haiku-4-5-20251001", "text": "counted slowly"}),
    )
    .unwrap();
    let mut slow = raw(port, slow_head.as_bytes());
    slow.write_all(format!("content-length: {}\r\n\r\n", patch.len()).as_bytes())
        .unwrap();
    for b in &patch {
        slow.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a slow body is still served: {answer}"
    );

    let (after, answer) = dropped.join().unwrap();
    assert!(
        after >= Duration::from_secs(14) && after < Duration::from_secs(25),
        "stalled headers dropped after {after:?}: {answer}"
    );

    // Nothing refused above changed a row.
    assert_unchanged(&s, &before);

    // Unicode edge cases are stored and returned exactly.
    for text in [
        "\u{202e}txet desrever\u{202c} and \u{200d}\u{200b}zero widths",
        "👩‍👩‍👧‍👦 family, 🇺🇦 flag, e\u{301} combining",
        "\u{10ffff} last code point, \u{fffd} replacement",
        "𝕳𝖊𝖑𝖑𝖔 ﷽ ᄀᄀᄀ각ᆨᆨ",
    ] {
        let t = s
            .call(
                "POST",
                "/api/threads",
                Some(&alice_key),
                Some(json!({"title": text})),
            )
            .await;
        assert_eq!(t.status, 201, "{text:?}: {:?}", t.body);
        assert_eq!(t.body["title"].as_str(), Some(text));
        let id = t.body["thread_id"].as_i64().unwrap();
        let m = s
            .call(
                "POST",
                &format!("/api/threads/{id}/messages"),
                Some(&alice_key),
                Some(json!({"content": text})),
            )
            .await;
        assert_eq!(m.status, 201, "{text:?}: {:?}", m.body);
        let h = s
            .call(
                "GET",
                &format!("/api/threads/{id}/messages"),
                Some(&alice_key),
                None,
            )
            .await;
        assert_eq!(
            h.body["items"][0]["content"].as_str(),
            Some(text),
            "{text:?} round trip"
        );
    }
    let before = digest(&s);
    refused(
        &s.call(
            "POST",
            "/api/threads",
            Some(&alice_key),
            Some(json!({"title": "NUL \u{0} inside"})),
        )
        .await,
        "a NUL in a title",
    );
    assert_unchanged(&s, &before);
    let lone = s
        .call_raw(
            "POST",
            "/api/threads",
            Some(&alice_key),
            "application/json",
            br#"{"title": "\ud800 lone surrogate"}"#.to_vec(),
        )
        .await;
    refused(&lone, "a lone surrogate");
    let bad_utf8 = s
        .call_raw(
            "POST",
            "/api/threads",
            Some(&alice_key),
            "application/json",
            b"{\"title\": \"\xff\xfe\"}".to_vec(),
        )
        .await;
    refused(&bad_utf8, "invalid UTF-8");
    assert_unchanged(&s, &before);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
