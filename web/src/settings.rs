//! Settings: the default model of new threads (kept in this browser), and
//! for admin the prices: what is in force, each model's history, a new
//! effective-dated version, and a quote at any time.

use crate::api::{self, usd};
use crate::use_session;
use dioxus::prelude::*;
use serde_json::{json, Value};

pub const DEFAULT_MODEL: &str = "billing.default_model";

#[component]
pub fn Settings() -> Element {
    let session = use_session();
    let key = session.key.clone();
    let mut reload = use_signal(|| 0u32);
    let mut default_model = use_signal(|| {
        api::local_storage()
            .and_then(|s| s.get_item(DEFAULT_MODEL).ok().flatten())
            .unwrap_or_default()
    });
    let pricing = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let _ = reload();
            async move { api::items(&key, "/api/pricing").await }
        }
    });
    let models: Vec<String> = match &*pricing.read() {
        Some(Ok(list)) => list
            .iter()
            .filter(|m| m["active"].as_bool().unwrap_or(false))
            .filter_map(|m| m["model"].as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    rsx! {
        main { class: "settings",
            section { class: "panel",
                h2 { "Default model" }
                p { class: "muted small", "New threads start with this model." }
                select { id: "default-model", onchange: move |e| {
                        default_model.set(e.value());
                        if let Some(s) = api::local_storage() { let _ = s.set_item(DEFAULT_MODEL, &e.value()); }
                    },
                    option { value: "", "The account's default" }
                    for m in models.iter() { option { value: "{m}", selected: *m == default_model(), "{m}" } }
                }
            }
            section { class: "panel",
                h2 { "Prices" }
                p { class: "muted small", "Micro-USD per million tokens; $1 per million tokens is 1000000." }
                match &*pricing.read() {
                    None => rsx! { p { class: "muted", "Loading prices…" } },
                    Some(Err(e)) => rsx! { p { class: "error", "{e}" } },
                    Some(Ok(list)) => rsx! {
                        table { class: "grid", id: "price-table",
                            thead { tr { th { "model" } th { "since" } th { "input" } th { "output" } th { "cache write 5m" } th { "cache write 1h" } th { "cache read" } th { "versions" } } }
                            tbody {
                                for m in list.iter() {
                                    PriceRow { key: "{m[\"model\"]}", model: m.clone() }
                                }
                            }
                        }
                    },
                }
            }
            if session.is_admin() {
                NewVersion { models: models.clone(), on_added: move |_| reload += 1 }
            }
            Quote { models }
        }
    }
}

#[component]
fn PriceRow(model: Value) -> Element {
    let mut open = use_signal(|| false);
    let p = &model["in_force"]["prices"];
    let cell = |c: &str| p["display"][c].as_str().unwrap_or("—").to_owned();
    let history = model["history"].as_array().cloned().unwrap_or_default();
    rsx! {
        tr {
            td { "{model[\"model\"].as_str().unwrap_or(\"\")}" if !model["active"].as_bool().unwrap_or(true) { span { class: "badge", "retired" } } }
            td { "{model[\"in_force\"][\"effective_from\"].as_str().unwrap_or(\"—\")}" }
            td { class: "num", "{cell(\"input\")}" } td { class: "num", "{cell(\"output\")}" } td { class: "num", "{cell(\"cache_write_5m\")}" }
            td { class: "num", "{cell(\"cache_write_1h\")}" } td { class: "num", "{cell(\"cache_read\")}" }
            td { button { class: "link small", onclick: move |_| open.toggle(), "{history.len()} versions" } }
        }
        if open() {
            for h in history.iter() {
                tr { class: "history-row",
                    td {} td { "{h[\"effective_from\"].as_str().unwrap_or(\"\")}" }
                    for c in ["input", "output", "cache_write_5m", "cache_write_1h", "cache_read"] {
                        td { class: "num", "{h[\"prices\"][\"display\"][c].as_str().unwrap_or(\"\")}" }
                    }
                    td {}
                }
            }
        }
    }
}

#[component]
fn NewVersion(models: Vec<String>, on_added: EventHandler<()>) -> Element {
    let key = use_session().key;
    let mut model = use_signal(String::new);
    let mut from = use_signal(String::new);
    let mut prices = use_signal(|| {
        [
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]
    });
    let mut message = use_signal(|| None::<Result<String, String>>);
    let names = [
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
    ];
    let first = models.first().cloned().unwrap_or_default();
    let submit = move |e: FormEvent| {
        e.prevent_default();
        let key = key.clone();
        let p = prices();
        let mut body_prices = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            let v = p[i].trim();
            let parsed: Value = v
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(v.to_owned()));
            body_prices.insert(n.to_string(), parsed);
        }
        let body = json!({"model": if model().is_empty() { first.clone() } else { model() }, "effective_from": from(), "prices": body_prices});
        spawn(async move {
            match api::call(&key, "POST", "/api/pricing", Some(body)).await {
                Ok(v) => {
                    message.set(Some(Ok(format!(
                        "Added: in force from {}.",
                        v["effective_from"].as_str().unwrap_or("")
                    ))));
                    on_added.call(());
                }
                Err(e) => message.set(Some(Err(e))),
            }
        });
    };
    rsx! {
        section { class: "panel",
            h2 { "Add a price version" }
            form { id: "new-price", onsubmit: submit,
                div { class: "row",
                    select { id: "price-model", onchange: move |e| model.set(e.value()),
                        for m in models.iter() { option { value: "{m}", "{m}" } }
                    }
                    input { id: "price-from", placeholder: "effective from, e.g. 2027-01-01T00:00:00Z", value: "{from}", oninput: move |e| from.set(e.value()) }
                }
                div { class: "row",
                    for (i, n) in names.iter().enumerate() {
                        label { "{n} " input { id: "price-{n}", size: "9", value: "{prices()[i]}", oninput: move |e| prices.with_mut(|p| p[i] = e.value()) } }
                    }
                }
                button { r#type: "submit", id: "add-price", "Add version" }
            }
            match message() {
                Some(Ok(m)) => rsx! { p { class: "ok", id: "price-result", "{m}" } },
                Some(Err(e)) => rsx! { p { class: "error", id: "price-result", role: "alert", "{e}" } },
                None => rsx! {},
            }
        }
    }
}

#[component]
fn Quote(models: Vec<String>) -> Element {
    let key = use_session().key;
    let mut model = use_signal(String::new);
    let mut at = use_signal(String::new);
    let mut input = use_signal(|| "1000".to_owned());
    let mut output = use_signal(|| "1000".to_owned());
    let mut cache_read = use_signal(|| "0".to_owned());
    let mut result = use_signal(|| None::<Result<Value, String>>);
    let first = models.first().cloned().unwrap_or_default();
    let submit = move |e: FormEvent| {
        e.prevent_default();
        let key = key.clone();
        let n = |s: String| {
            s.trim()
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or(Value::from(s))
        };
        let mut body = json!({"model": if model().is_empty() { first.clone() } else { model() },
            "usage": {"input": n(input()), "output": n(output()), "cache_read": n(cache_read())}});
        if !at().trim().is_empty() {
            body["at"] = Value::from(at().trim().to_owned());
        }
        spawn(async move {
            result.set(Some(
                api::call(&key, "POST", "/api/price/quote", Some(body)).await,
            ))
        });
    };
    rsx! {
        section { class: "panel",
            h2 { "Quote" }
            form { id: "quote", onsubmit: submit, class: "row",
                select { id: "quote-model", onchange: move |e| model.set(e.value()),
                    for m in models.iter() { option { value: "{m}", "{m}" } }
                }
                label { "input " input { id: "quote-input", size: "8", value: "{input}", oninput: move |e| input.set(e.value()) } }
                label { "output " input { id: "quote-output", size: "8", value: "{output}", oninput: move |e| output.set(e.value()) } }
                label { "cache read " input { id: "quote-cache-read", size: "8", value: "{cache_read}", oninput: move |e| cache_read.set(e.value()) } }
                label { "at " input { id: "quote-at", placeholder: "now", value: "{at}", oninput: move |e| at.set(e.value()) } }
                button { r#type: "submit", id: "get-quote", "Quote" }
            }
            match result() {
                Some(Ok(q)) => rsx! { p { id: "quote-result", "Total " strong { id: "quote-total", "{usd(q[\"total_nanos\"].as_i64().unwrap_or(0))}" } " (price version {q[\"pricing_id\"]}, from {q[\"effective_from\"].as_str().unwrap_or(\"\")})" } },
                Some(Err(e)) => rsx! { p { class: "error", id: "quote-result", role: "alert", "{e}" } },
                None => rsx! {},
            }
        }
    }
}
