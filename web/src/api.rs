//! Talking to the API: every call with the session's key; problems turned
//! into plain words.

use gloo_net::http::{Request, RequestBuilder};
use serde_json::Value;

/// Who is signed in.
#[derive(Clone, PartialEq, Debug)]
pub struct Session {
    pub key: String,
    pub user_id: i64,
    pub name: String,
    pub role: String,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}

fn builder(method: &str, path: &str) -> RequestBuilder {
    match method {
        "POST" => Request::post(path),
        "PATCH" => Request::patch(path),
        "DELETE" => Request::delete(path),
        _ => Request::get(path),
    }
}

/// An RFC 9457 problem in words: its detail, then each field and why.
pub fn problem_words(status: u16, body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return format!("The server answered {status}.");
    };
    let mut words = v["detail"]
        .as_str()
        .or(v["title"].as_str())
        .unwrap_or("Something went wrong")
        .to_owned();
    if let Some(errors) = v["errors"].as_array() {
        let list: Vec<String> = errors
            .iter()
            .map(|e| {
                let at = match e["index"].as_i64() {
                    Some(i) => format!("event {i}, "),
                    None => String::new(),
                };
                format!(
                    "{at}{}: {}",
                    e["field"].as_str().unwrap_or("input"),
                    e["reason"].as_str().unwrap_or("")
                )
            })
            .collect();
        if !list.is_empty() {
            words = list.join("; ");
        }
    }
    words
}

/// Calls the API; `Err` is a sentence for the user.
pub async fn call(
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let req = builder(method, path).header("authorization", &format!("Bearer {key}"));
    let sent = match body {
        Some(b) => req.json(&b).map_err(|e| e.to_string())?.send().await,
        None => req.send().await,
    };
    let resp = sent.map_err(|_| "The server cannot be reached. Is it running?".to_owned())?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status >= 400 {
        return Err(problem_words(status, &text));
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| format!("The server's answer was not JSON: {e}"))
}

/// POSTs `body` to an endpoint answering server-sent events and calls
/// `on_event(name, data)` for each event as it arrives (events split by
/// billing-core's reader, the one the server uses). `Err` is a sentence for
/// the user: the refusal before any stream, or a broken connection.
pub async fn stream(
    key: &str,
    path: &str,
    body: Value,
    mut on_event: impl FnMut(&str, Value),
) -> Result<(), String> {
    use futures::StreamExt;
    let resp = Request::post(path)
        .header("authorization", &format!("Bearer {key}"))
        .header("accept", "text/event-stream")
        .json(&body)
        .map_err(|e| e.to_string())?
        .send()
        .await
        .map_err(|_| "The server cannot be reached. Is it running?".to_owned())?;
    let status = resp.status();
    if status >= 400 {
        let text = resp.text().await.unwrap_or_default();
        return Err(problem_words(status, &text));
    }
    let raw = resp
        .body()
        .ok_or_else(|| "The server's answer had no body.".to_owned())?;
    let mut chunks = wasm_streams::ReadableStream::from_raw(raw).into_stream();
    let mut reader = billing_core::sse::SseReader::new();
    let mut deliver = |events: Vec<billing_core::sse::SseEvent>| {
        for e in events {
            on_event(
                &e.event,
                serde_json::from_str(&e.data).unwrap_or(Value::Null),
            );
        }
    };
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|_| "The connection broke while the answer was arriving.".to_owned())?;
        deliver(reader.feed(&js_sys::Uint8Array::new(&chunk).to_vec()));
    }
    deliver(reader.finish().into_iter().collect());
    Ok(())
}

pub async fn get(key: &str, path: &str) -> Result<Value, String> {
    call(key, "GET", path, None).await
}

/// The `items` of a list answer (empty when it has none).
pub async fn items(key: &str, path: &str) -> Result<Vec<Value>, String> {
    let v = get(key, path).await?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// A text resource (CSV export).
pub async fn text(key: &str, path: &str) -> Result<String, String> {
    let resp = Request::get(path)
        .header("authorization", &format!("Bearer {key}"))
        .send()
        .await
        .map_err(|_| "The server cannot be reached.".to_owned())?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status >= 400 {
        return Err(problem_words(status, &text));
    }
    Ok(text)
}

/// nano-USD as dollars, exactly: billing-core's one formatter (every nano
/// shown, trailing zeros trimmed to two decimals), as the API's `*_usd` fields.
pub fn usd(nanos: i64) -> String {
    billing_core::Nanos(nanos).display_usd()
}

/// A value's nano-USD figure (`cost_nanos`, or `{nanos}`).
pub fn nanos(v: &Value) -> i64 {
    v.as_i64().or_else(|| v["nanos"].as_i64()).unwrap_or(0)
}

pub fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

/// Offers `content` as a file download.
pub fn download(name: &str, content: &str, mime: &str) {
    let Some(window) = web_sys::window() else {
        return;
    };
    let parts = js_sys_array(content);
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts) else {
        return;
    };
    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else {
        return;
    };
    if let Some(doc) = window.document() {
        if let Ok(a) = doc.create_element("a") {
            let _ = a.set_attribute("href", &url);
            let _ = a.set_attribute("download", name);
            use wasm_bindgen::JsCast;
            if let Ok(a) = a.dyn_into::<web_sys::HtmlAnchorElement>() {
                a.click();
            }
        }
    }
    let _ = web_sys::Url::revoke_object_url(&url);
}

fn js_sys_array(s: &str) -> wasm_bindgen::JsValue {
    let arr = js_sys::Array::new();
    arr.push(&wasm_bindgen::JsValue::from_str(s));
    arr.into()
}
