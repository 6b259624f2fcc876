//! The accounts component end to end: authentication, users, API keys and
//! threads, with the authorization rules and the "bad input changes
//! nothing" rule checked against the SQLite file.

use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::json;

// Missing, malformed, unknown and revoked keys get 401 problem+json; the bootstrap admin key works; a disabled user gets 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication() {
    let s = Stack::start().await;
    assert!(s
        .call("GET", "/api/users/me", None, None)
        .await
        .problem(401)
        .contains("Authorization: Bearer"));
    assert_eq!(
        s.call("GET", "/api/users/me", Some("lcb_nope"), None)
            .await
            .problem(401),
        "the API key is not valid or has been revoked"
    );
    let me = s.call("GET", "/api/users/me", Some(ADMIN_KEY), None).await;
    assert_eq!(
        (
            me.status,
            me.body["role"].as_str(),
            me.body["user_id"].as_i64()
        ),
        (200, Some("admin"), Some(1))
    );

    let (ada, key) = s.user("Ada Two", "ada2@example.com").await;
    assert!(key.starts_with("lcb_") && key.len() == 44);
    assert_eq!(
        s.call("GET", "/api/users/me", Some(&key), None).await.body["user_id"],
        ada
    );

    let stored: String = s
        .db()
        .query_row(
            "SELECT key_hash FROM api_keys WHERE user_id = ?1",
            [ada],
            |r| r.get(0),
        )
        .unwrap();
    assert_ne!(stored, key, "keys are stored hashed");
    assert_eq!(stored.len(), 64);

    let keys = s.call("GET", "/api/keys", Some(&key), None).await;
    let listed = &keys.body["items"][0];
    assert!(
        listed.get("key").is_none() && listed["prefix"].as_str().unwrap().len() == 12,
        "lists show the prefix only"
    );
    let key_id = listed["key_id"].as_i64().unwrap();
    assert_eq!(
        s.call("DELETE", &format!("/api/keys/{key_id}"), Some(&key), None)
            .await
            .status,
        204
    );
    s.call("GET", "/api/users/me", Some(&key), None)
        .await
        .problem(401);

    let (grace, gkey) = s.user("Grace Two", "grace2@example.com").await;
    assert_eq!(
        s.call(
            "POST",
            &format!("/api/users/{grace}/disable"),
            Some(ADMIN_KEY),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        s.call("GET", "/api/users/me", Some(&gkey), None)
            .await
            .problem(403),
        "this account is disabled"
    );
}

// Only an admin manages users; bad input gets 422 listing every problem and writes nothing; duplicate emails conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_admin_only_and_validated() {
    let s = Stack::start().await;
    let (_, key) = s.user("Plain User", "plain@example.com").await;
    s.call("GET", "/api/users", Some(&key), None)
        .await
        .problem(403);
    s.call(
        "POST",
        "/api/users",
        Some(&key),
        Some(json!({"name": "X", "email": "x@example.com"})),
    )
    .await
    .problem(403);

    let before = s.count("dim_users");
    let bad = s
        .call(
            "POST",
            "/api/users",
            Some(ADMIN_KEY),
            Some(json!({"name": " ", "email": "nope", "role": "boss"})),
        )
        .await;
    bad.problem(422);
    let fields: Vec<&str> = bad.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "email", "role"]);
    s.call(
        "POST",
        "/api/users",
        Some(ADMIN_KEY),
        Some(json!({"name": "Dup", "email": "PLAIN@example.com"})),
    )
    .await
    .problem(409);
    s.call(
        "POST",
        "/api/users",
        Some(ADMIN_KEY),
        Some(json!({"name": "X", "email": "y@example.com", "extra": 1})),
    )
    .await
    .problem(422);
    s.call_raw(
        "POST",
        "/api/users",
        Some(ADMIN_KEY),
        "application/json",
        b"{not json".to_vec(),
    )
    .await
    .problem(400);
    s.call_raw(
        "POST",
        "/api/users",
        Some(ADMIN_KEY),
        "text/plain",
        b"hi".to_vec(),
    )
    .await
    .problem(415);
    assert_eq!(s.count("dim_users"), before, "no bad request wrote a row");

    let list = s
        .call("GET", "/api/users?limit=2&offset=1", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(
        (
            list.body["total"].as_i64(),
            list.body["items"].as_array().unwrap().len()
        ),
        (Some(before), 2)
    );
    s.call("GET", "/api/users?limit=0", Some(ADMIN_KEY), None)
        .await
        .problem(422);
}

// Threads: create, list with filters and pages, rename, archive; another user's thread is 404 everywhere; admin sees all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_and_isolation() {
    let s = Stack::start().await;
    let (a, akey) = s.user("User A", "a@example.com").await;
    let (_b, bkey) = s.user("User B", "b@example.com").await;

    let t = s
        .call(
            "POST",
            "/api/threads",
            Some(&akey),
            Some(json!({"title": "Budget planning"})),
        )
        .await;
    assert_eq!(t.status, 201, "{:?}", t.body);
    assert_eq!(
        (
            t.body["user_id"].as_i64(),
            t.body["model"].as_str(),
            t.body["message_count"].as_i64()
        ),
        (Some(a), Some("claude-haiku-4-5-20251001"), Some(0))
    );
    assert_eq!(t.body["cost"], "$0.00");
    let tid = t.body["thread_id"].as_i64().unwrap();
    for title in ["Trip to Lisbon", "Budget review", "100% done_"] {
        s.call(
            "POST",
            "/api/threads",
            Some(&akey),
            Some(json!({"title": title, "model": "claude-sonnet-4-5-20250929"})),
        )
        .await;
    }

    let found = s
        .call("GET", "/api/threads?q=budget", Some(&akey), None)
        .await;
    assert_eq!(found.body["total"], 2);
    let literal = s
        .call("GET", "/api/threads?q=0%25%20done_", Some(&akey), None)
        .await;
    assert_eq!(
        literal.body["total"], 1,
        "% and _ in the filter are literal"
    );
    let page = s
        .call("GET", "/api/threads?limit=3&offset=3", Some(&akey), None)
        .await;
    assert_eq!(
        (
            page.body["total"].as_i64(),
            page.body["items"].as_array().unwrap().len()
        ),
        (Some(4), 1)
    );

    let renamed = s
        .call(
            "PATCH",
            &format!("/api/threads/{tid}"),
            Some(&akey),
            Some(json!({"title": "Budget 2027", "archived": true})),
        )
        .await;
    assert_eq!(
        (
            renamed.body["title"].as_str(),
            renamed.body["archived"].as_bool()
        ),
        (Some("Budget 2027"), Some(true))
    );
    assert_eq!(
        s.call("GET", "/api/threads", Some(&akey), None).await.body["total"],
        3,
        "archived threads are hidden by default"
    );
    assert_eq!(
        s.call("GET", "/api/threads?archived=true", Some(&akey), None)
            .await
            .body["total"],
        1
    );

    let path = format!("/api/threads/{tid}");
    s.call("GET", &path, Some(&bkey), None).await.problem(404);
    s.call(
        "PATCH",
        &path,
        Some(&bkey),
        Some(json!({"title": "mine now"})),
    )
    .await
    .problem(404);
    assert_eq!(
        s.call("GET", "/api/threads?archived=all", Some(&bkey), None)
            .await
            .body["total"],
        0
    );
    s.call(
        "GET",
        &format!("/api/threads?user_id={a}"),
        Some(&bkey),
        None,
    )
    .await
    .problem(403);
    assert_eq!(
        s.call("GET", &path, Some(ADMIN_KEY), None).await.status,
        200
    );
    assert_eq!(
        s.call(
            "GET",
            &format!("/api/threads?user_id={a}&archived=all"),
            Some(ADMIN_KEY),
            None
        )
        .await
        .body["total"],
        4
    );

    let before = s.count("user_threads");
    let bad = s
        .call(
            "POST",
            "/api/threads",
            Some(&akey),
            Some(json!({"title": "", "model": "gpt-9"})),
        )
        .await;
    bad.problem(422);
    assert_eq!(bad.body["errors"].as_array().unwrap().len(), 2);
    s.call("PATCH", &path, Some(&akey), Some(json!({})))
        .await
        .problem(422);
    s.call("GET", "/api/threads/abc", Some(&akey), None)
        .await
        .problem(404);
    s.call("GET", "/api/threads?from=yesterday", Some(&akey), None)
        .await
        .problem(422);
    assert_eq!(s.count("user_threads"), before);
    let title: String = s
        .db()
        .query_row(
            "SELECT title FROM user_threads WHERE thread_id = ?1",
            [tid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(title, "Budget 2027");
}
