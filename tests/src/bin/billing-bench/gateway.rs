//! `billing-bench gateway`: the latency the LLM gateway adds over calling
//! llm-sim directly, plain and streamed (first byte and last byte), at
//! concurrency 1 and 32, beside LiteLLM's proxy forwarding to the same
//! llm-sim, all in the same run on the same machine.
//!
//! The three paths send the same Messages API request:
//! - direct: `POST /sim/v1/messages` (llm-sim through billing-host);
//! - gateway: `POST /v1/messages` (authenticated, priced, recorded and
//!   billed in SQLite, then forwarded to the same llm-sim);
//! - LiteLLM: its proxy's `POST /v1/messages`, configured with an
//!   `anthropic/` model whose `api_base` is the same llm-sim. It runs when
//!   `$CACHE_DIR/tools/litellm` holds it (`scripts/ensure-deps.sh litellm`).

use super::{machine, p50_p99};
use billing_e2e::{Stack, ADMIN_KEY};
use serde_json::json;
use std::time::{Duration, Instant};

/// One path's samples: whole answers, and streams' first and last bytes.
#[derive(Default)]
struct Samples {
    plain: Vec<Duration>,
    first: Vec<Duration>,
    last: Vec<Duration>,
}

async fn one(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    stream: bool,
    s: &mut Samples,
) {
    let body = json!({"model": "claude-haiku-4-5-20251001", "max_tokens": 400, "stream": stream, "messages": [
        {"role": "user", "content": "How is a cache read priced, and when does the long-context tier apply to a request?"}
    ]});
    let mut rb = client
        .post(url)
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    for (k, v) in headers {
        rb = rb.header(*k, v);
    }
    let t = Instant::now();
    let mut r = rb.send().await.expect("the path answers");
    assert_eq!(r.status().as_u16(), 200, "{url}");
    if stream {
        let mut first = None;
        while let Some(chunk) = r.chunk().await.expect("the stream reads") {
            if first.is_none() && !chunk.is_empty() {
                first = Some(t.elapsed());
            }
        }
        s.first.push(first.unwrap_or_else(|| t.elapsed()));
        s.last.push(t.elapsed());
    } else {
        r.bytes().await.expect("the body reads");
        s.plain.push(t.elapsed());
    }
}

/// `requests` plain and `requests` streamed calls on `url`, `concurrency` at a time.
async fn measure(
    url: &str,
    headers: Vec<(&'static str, String)>,
    concurrency: usize,
    requests: usize,
) -> Samples {
    let client = reqwest::Client::new();
    // Warm-up: connections, compiled components, caches.
    let mut warm = Samples::default();
    for stream in [false, true] {
        one(&client, url, &headers, stream, &mut warm).await;
    }
    let per = requests.div_ceil(concurrency);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, headers) = (client.clone(), url.to_owned(), headers.clone());
            tokio::spawn(async move {
                let mut s = Samples::default();
                for _ in 0..per {
                    one(&client, &url, &headers, false, &mut s).await;
                    one(&client, &url, &headers, true, &mut s).await;
                }
                s
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.plain.extend(s.plain);
        all.first.extend(s.first);
        all.last.extend(s.last);
    }
    all
}

/// LiteLLM's proxy in front of `sim_base`, on a free port, if installed.
fn litellm(sim_base: &str, dir: &std::path::Path) -> Option<(std::process::Child, String)> {
    let cache = std::env::var("CACHE_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/llm-billing",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let bin = format!("{cache}/tools/litellm/bin/litellm");
    if !std::path::Path::new(&bin).exists() {
        println!("LiteLLM: not installed ({bin}); run scripts/ensure-deps.sh litellm");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: claude-haiku-4-5-20251001\n    litellm_params:\n      model: anthropic/claude-haiku-4-5-20251001\n      api_base: {sim_base}\n      api_key: sim\ngeneral_settings:\n  master_key: sk-bench\n"
        ),
    )
    .ok()?;
    let child = std::process::Command::new(bin)
        .args([
            "--config",
            config.to_str()?,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("LITELLM_LOG", "ERROR")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("litellm.log")).ok()?)
        .spawn()
        .ok()?;
    Some((child, format!("http://127.0.0.1:{port}")))
}

pub async fn run(requests: usize) {
    let s = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    println!("machine: {}", machine());
    let mut paths: Vec<(&str, String, Vec<(&'static str, String)>)> = vec![
        (
            "llm-sim direct",
            s.url("/sim/v1/messages"),
            vec![("x-api-key", "bench".into())],
        ),
        (
            "gateway",
            s.url("/v1/messages"),
            vec![("x-api-key", ADMIN_KEY.into())],
        ),
    ];
    let mut lite = litellm(&s.url("/sim"), dir.path());
    if let Some((_, base)) = &lite {
        // Ready when it answers a call (it starts in several seconds).
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        let headers = vec![("x-api-key", "sk-bench".to_owned())];
        loop {
            let r = client
                .post(format!("{base}/v1/messages"))
                .header("x-api-key", "sk-bench")
                .header("anthropic-version", "2023-06-01")
                .json(&json!({"model": "claude-haiku-4-5-20251001", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(dir.path().join("litellm.log")).unwrap_or_default();
                panic!(
                    "LiteLLM did not answer in 180 s: {r:?}\n{}",
                    &log[log.len().saturating_sub(3000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        paths.push(("LiteLLM proxy", format!("{base}/v1/messages"), headers));
    }
    println!("| path | concurrency | plain p50 / p99 | stream first byte p50 | stream last byte p50 / p99 | added over direct (plain p50, stream last p50) |");
    println!("|---|---|---|---|---|---|");
    for concurrency in [1usize, 32] {
        let n = if concurrency == 1 {
            requests
        } else {
            requests * 4
        };
        let mut direct = (0.0, 0.0);
        for (label, url, headers) in &paths {
            let mut m = measure(url, headers.clone(), concurrency, n).await;
            let ((pp50, pp99), (fp50, _), (lp50, lp99)) = (
                p50_p99(&mut m.plain),
                p50_p99(&mut m.first),
                p50_p99(&mut m.last),
            );
            if *label == "llm-sim direct" {
                direct = (pp50, lp50);
            }
            println!(
                "| {label} | {concurrency} | {pp50:.2} / {pp99:.2} ms | {fp50:.2} ms | {lp50:.2} / {lp99:.2} ms | {:+.2} ms, {:+.2} ms |",
                pp50 - direct.0,
                lp50 - direct.1
            );
        }
    }
    if let Some((child, _)) = lite.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
