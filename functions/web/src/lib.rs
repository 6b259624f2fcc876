//! `web`: serves the web app — the files the web build put in the
//! component's `files` mount (`/`), and `GET /web-config.json`: where the
//! bridge's live stream is (`live_url`) and, on a local run, the demo keys
//! (`demo_keys`, lines of `label=key`). Any other path without a file is
//! the app itself (`index.html`), which routes on the client.

use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(req: Request) -> Response {
    if !matches!(req.method(), Method::Get | Method::Head) {
        return text(405, "only GET is allowed here");
    }
    let path = req.path();
    if path == "/web-config.json" {
        return config();
    }
    let rel = path.trim_start_matches('/');
    if rel
        .split('/')
        .any(|seg| seg == ".." || seg.starts_with('.'))
    {
        return text(404, "no such file");
    }
    let file = if rel.is_empty() { "index.html" } else { rel };
    match std::fs::read(format!("/{file}")) {
        Ok(bytes) => serve(file, bytes),
        Err(_) if !file.contains('.') => match std::fs::read("/index.html") {
            Ok(bytes) => serve("index.html", bytes),
            Err(_) => text(503, "the web app is not built: run `make web`"),
        },
        Err(_) => text(404, "no such file"),
    }
}

fn serve(file: &str, bytes: Vec<u8>) -> Response {
    let kind = match file.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => "application/octet-stream",
    };
    // The app's files change with every build; index.html must be fresh, the rest may be revalidated.
    let cache = if file == "index.html" {
        "no-cache"
    } else {
        "public, max-age=60"
    };
    Response::builder()
        .status(200)
        .header("content-type", kind)
        .header("cache-control", cache)
        .body(bytes)
        .build()
}

fn config() -> Response {
    let live_url = spin_sdk::variables::get("live_url").unwrap_or_default();
    let demo = spin_sdk::variables::get("demo_keys").unwrap_or_default();
    let keys: Vec<serde_json::Value> = demo
        .split([';', '\n'])
        .filter_map(|l| l.split_once('='))
        .map(|(label, key)| serde_json::json!({"label": label.trim(), "key": key.trim()}))
        .collect();
    let body = serde_json::json!({ "live_url": live_url, "demo_keys": keys });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache")
        .body(body.to_string())
        .build()
}

fn text(status: u16, msg: &str) -> Response {
    let body = serde_json::json!({"type": "about:blank", "status": status, "title": "Not served", "detail": msg});
    Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .body(body.to_string())
        .build()
}
