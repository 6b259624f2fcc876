//! billing-host serving behaviour over real HTTP: the routing table and
//! Spin's headers, the three per-request limits, 200 concurrent requests,
//! and graceful shutdown with a request in flight.

mod support;

use billing_host::Limits;
use std::time::{Duration, Instant};
use support::*;

const ROUTES_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "routes"
[[trigger.http]]
route = "/api/..."
component = "probe"
[[trigger.http]]
route = "/api/exact"
component = "exact-probe"
[[trigger.http]]
route = "/items/:id/parts/:part_no"
component = "probe"
[[trigger.http]]
route = { private = true }
component = "private-probe"
[component.probe]
source = "{probe}"
[component.exact-probe]
source = "{probe}"
[component.private-probe]
source = "{probe}"
"#;

fn header_map(body: &str) -> std::collections::BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

// Exact routes beat wildcards, captures become spin-path-match-* headers, unrouted paths are 404, health answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_headers() {
    let app = serve(ROUTES_APP, None, Limits::default()).await;

    let h = header_map(&get(&app.url("/api/headers?x=1")).await.1);
    assert_eq!(h["spin-matched-route"], "/api/...");
    assert_eq!(h["spin-raw-component-route"], "/api/...");
    assert_eq!(h["spin-component-route"], "/api");
    assert_eq!(h["spin-path-info"], "/headers");
    assert_eq!(h["spin-base-path"], "/");
    assert_eq!(
        h["spin-full-url"],
        format!("http://{}/api/headers?x=1", app.addr)
    );
    assert!(h["spin-client-addr"].starts_with("127.0.0.1:"));

    let h = header_map(&get(&app.url("/api/exact")).await.1);
    assert_eq!(
        h["spin-matched-route"], "/api/exact",
        "the exact route wins over /api/..."
    );
    assert_eq!(h["spin-path-info"], "");

    let h = header_map(&get(&app.url("/items/42/parts/a-7")).await.1);
    assert_eq!(h["spin-path-match-id"], "42");
    assert_eq!(h["spin-path-match-part-no"], "a-7");
    assert_eq!(h["spin-matched-route"], "/items/:id/parts/:part_no");

    assert_eq!(get(&app.url("/nowhere")).await.0, 404);
    assert_eq!(
        get(&app.url("/.well-known/spin/health")).await,
        (200, "OK".into())
    );
    assert_eq!(get(&app.url("/.well-known/spin/other")).await.0, 404);
}

const PROBE_ONLY: &str = "spin_manifest_version = 2\n[application]\nname = \"p\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"probe\"\n[component.probe]\nsource = \"{probe}\"\nsqlite_databases = [\"default\"]\n";

// A guest spinning forever is stopped at the time limit with 504, and the host keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_limit() {
    let limits = Limits {
        timeout: Duration::from_millis(700),
        ..Limits::default()
    };
    let app = serve(PROBE_ONLY, None, limits).await;
    let started = Instant::now();
    let (status, _) = get(&app.url("/spin-loop")).await;
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(690) && took < Duration::from_secs(5),
        "stopped after {took:?}"
    );
    let (status, _) = get(&app.url("/sleep?ms=5000")).await;
    assert_eq!(status, 504, "time awaiting the host counts too");
    assert_eq!(
        get(&app.url("/hello")).await,
        (200, "hello from probe".into())
    );
}

// A guest growing past the memory cap fails (the allocation is refused) while one under it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit() {
    let limits = Limits {
        memory_bytes: 48 << 20,
        ..Limits::default()
    };
    let app = serve(PROBE_ONLY, None, limits).await;
    let (status, body) = get(&app.url("/alloc?mb=8")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, format!("ok:{}", 8u64 << 20).as_str())
    );
    let (status, body) = get(&app.url("/alloc?mb=64")).await;
    assert!(
        status == 500 || body.starts_with("err:alloc"),
        "64 MiB over a 48 MiB cap: {status} {body}"
    );
    assert_eq!(get(&app.url("/hello")).await.0, 200);
}

// Bodies over the cap get 413 whether declared by content-length or streamed chunked; the component never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit() {
    let limits = Limits {
        max_body_bytes: 64 * 1024,
        ..Limits::default()
    };
    let app = serve(PROBE_ONLY, None, limits).await;
    assert_eq!(
        post(&app.url("/body"), vec![b'x'; 64 * 1024]).await,
        (200, format!("ok:{}", 64 * 1024))
    );
    assert_eq!(
        post(&app.url("/body"), vec![b'x'; 64 * 1024 + 1]).await.0,
        413
    );
    let chunks = tokio_stream::iter(vec![
        Ok::<_, std::io::Error>(vec![b'y'; 40 * 1024]),
        Ok(vec![b'y'; 40 * 1024]),
    ]);
    let r = reqwest::Client::new()
        .post(app.url("/body"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
}

// 200 concurrent requests, each a fresh instance writing to one SQLite file, all succeed and all rows land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent() {
    let app = serve(PROBE_ONLY, None, Limits::default()).await;
    post(
        &app.url("/sqlite/default"),
        r#"{"sql": "CREATE TABLE hits (n INTEGER)"}"#,
    )
    .await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (client, url) = (client.clone(), app.url("/sqlite/default"));
            tokio::spawn(async move {
                let body = format!(r#"{{"sql": "INSERT INTO hits VALUES (?)", "params": [{i}]}}"#);
                let r = client.post(url).body(body).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (200, "ok:|".to_string()));
    }
    let (_, count) = post(
        &app.url("/sqlite/default"),
        r#"{"sql": "SELECT count(*), sum(n) FROM hits"}"#,
    )
    .await;
    assert_eq!(
        count,
        format!("ok:count(*),sum(n)|i200,i{}", (0..200).sum::<i32>())
    );
}

// Shutdown lets a request in flight finish with its answer, then refuses new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown() {
    let mut app = serve(PROBE_ONLY, None, Limits::default()).await;
    let url = app.url("/sleep?ms=1500");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        reqwest::get(app.url("/hello")).await.is_err(),
        "no new connections after shutdown began"
    );
    assert_eq!(in_flight.await.unwrap(), (200, "ok:slept 1500".into()));
    server.await.unwrap().unwrap();
}
