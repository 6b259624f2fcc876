//! Billing: what I spent today and this month, the cost of each message of a
//! thread with a chart over its turns, and invoices — list, viewer, CSV
//! download; admin generates and finalizes.

use crate::api::{self, usd};
use crate::charts::Lines;
use crate::use_session;
use dioxus::prelude::*;
use serde_json::{json, Value};

/// Today's and this month's start (UTC) and now, RFC 3339.
pub fn today_and_month() -> (String, String, String) {
    let now = js_sys::Date::new_0()
        .to_iso_string()
        .as_string()
        .unwrap_or_default();
    let day = format!("{}T00:00:00Z", &now[..10.min(now.len())]);
    let month = format!("{}-01T00:00:00Z", &now[..7.min(now.len())]);
    (day, month, now)
}

#[component]
pub fn Billing() -> Element {
    let session = use_session();
    let key = session.key.clone();
    let summaries = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            async move {
                let (day, month, now) = today_and_month();
                let today =
                    api::get(&key, &format!("/api/metrics/summary?from={day}&to={now}")).await?;
                let this_month =
                    api::get(&key, &format!("/api/metrics/summary?from={month}&to={now}")).await?;
                Ok::<_, String>((today, this_month))
            }
        }
    });
    rsx! {
        main { class: "billing",
            section { class: "cards",
                match &*summaries.read() {
                    None => rsx! { p { class: "muted", "Loading costs…" } },
                    Some(Err(e)) => rsx! { p { class: "error", "{e}" } },
                    Some(Ok((today, month))) => rsx! {
                        Card { id: "cost-today", title: "Today", value: usd(api::nanos(&today["cost_nanos"])), note: format!("{} turns · {} requests", today["turns"], today["requests"]) }
                        Card { id: "cost-month", title: "This month", value: usd(api::nanos(&month["cost_nanos"])), note: format!("{} turns · {} requests", month["turns"], month["requests"]) }
                    },
                }
            }
            ThreadCosts {}
            Invoices {}
        }
    }
}

#[component]
pub fn Card(id: String, title: String, value: String, note: String) -> Element {
    rsx! {
        div { class: "card", id: "{id}",
            div { class: "muted small", "{title}" }
            div { class: "big", "{value}" }
            div { class: "muted small", "{note}" }
        }
    }
}

/// A thread's messages, each answer's cost and tokens, and its cost per turn as a chart.
#[component]
fn ThreadCosts() -> Element {
    let key = use_session().key;
    let mut thread = use_signal(|| None::<i64>);
    let threads = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            async move { api::items(&key, "/api/threads?limit=100&archived=all").await }
        }
    });
    let messages = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let t = thread();
            async move {
                match t {
                    None => Ok(Vec::new()),
                    Some(id) => {
                        api::items(&key, &format!("/api/threads/{id}/messages?limit=200")).await
                    }
                }
            }
        }
    });
    let answers: Vec<Value> = match &*messages.read() {
        Some(Ok(list)) => list
            .iter()
            .filter(|m| m["role"] == "assistant" && !m["cost"].is_null())
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let x: Vec<String> = (1..=answers.len()).map(|i| format!("#{i}")).collect();
    let costs: Vec<f64> = answers
        .iter()
        .map(|m| api::nanos(&m["cost"]) as f64 / 1e9)
        .collect();
    rsx! {
        section { class: "panel",
            h2 { "Cost per message" }
            select { id: "cost-thread", onchange: move |e| thread.set(e.value().parse().ok()),
                option { value: "", "Choose a thread" }
                if let Some(Ok(list)) = &*threads.read() {
                    for t in list.iter() {
                        option { value: "{t[\"thread_id\"]}", "{t[\"title\"].as_str().unwrap_or(\"\")} ({usd(api::nanos(&t[\"cost_nanos\"]))})" }
                    }
                }
            }
            if thread().is_some() {
                Lines { id: "thread-cost-chart", title: "Cost of each turn (USD)", x: x.clone(), series: vec![("cost".to_string(), costs)], unit: "$" }
                table { class: "grid",
                    thead { tr { th { "#" } th { "tokens in / out / cache write / cache read" } th { "latency" } th { "cost" } } }
                    tbody {
                        for (i, m) in answers.iter().enumerate() {
                            tr {
                                td { "{i + 1}" }
                                td { "{m[\"tokens\"][\"input\"]} / {m[\"tokens\"][\"output\"]} / {m[\"tokens\"][\"cache_write_5m\"].as_i64().unwrap_or(0) + m[\"tokens\"][\"cache_write_1h\"].as_i64().unwrap_or(0)} / {m[\"tokens\"][\"cache_read\"]}" }
                                td { "{m[\"latency_ms\"]} ms" }
                                td { class: "num", "{usd(api::nanos(&m[\"cost\"]))}" }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[component]
fn Invoices() -> Element {
    let session = use_session();
    let key = session.key.clone();
    let mut reload = use_signal(|| 0u32);
    let mut open = use_signal(|| None::<i64>);
    let mut error = use_signal(|| None::<String>);
    let mut user = use_signal(|| session.user_id.to_string());
    let (_, month, _) = today_and_month();
    let mut start = use_signal(|| "2026-01-01T00:00:00Z".to_owned());
    let mut end = use_signal(move || month.clone());
    let list = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let _ = reload();
            async move { api::items(&key, "/api/invoices?limit=50").await }
        }
    });
    let generate = {
        let key = key.clone();
        move |e: FormEvent| {
            e.prevent_default();
            let key = key.clone();
            spawn(async move {
                let body = json!({"user_id": user().trim().parse::<i64>().unwrap_or(0), "period_start": start(), "period_end": end()});
                match api::call(&key, "POST", "/api/invoices", Some(body)).await {
                    Ok(inv) => {
                        error.set(None);
                        open.set(inv["invoice_id"].as_i64());
                        reload += 1;
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };
    rsx! {
        section { class: "panel",
            h2 { "Invoices" }
            if session.is_admin() {
                form { class: "row", id: "generate-invoice", onsubmit: generate,
                    label { "User " input { id: "invoice-user", size: "5", value: "{user}", oninput: move |e| user.set(e.value()) } }
                    label { "From " input { id: "invoice-start", value: "{start}", oninput: move |e| start.set(e.value()) } }
                    label { "To " input { id: "invoice-end", value: "{end}", oninput: move |e| end.set(e.value()) } }
                    button { r#type: "submit", id: "generate", "Generate draft" }
                }
            }
            if let Some(e) = error() { p { class: "error", role: "alert", "{e}" } }
            match &*list.read() {
                None => rsx! { p { class: "muted", "Loading invoices…" } },
                Some(Err(e)) => rsx! { p { class: "error", "{e}" } },
                Some(Ok(items)) if items.is_empty() => rsx! { p { class: "muted", "No invoices yet." } },
                Some(Ok(items)) => rsx! {
                    table { class: "grid", id: "invoice-list",
                        thead { tr { th { "number" } th { "user" } th { "period" } th { "status" } th { "total" } th {} } }
                        tbody {
                            for inv in items.clone() {
                                tr { key: "{inv[\"invoice_id\"]}",
                                    td { "{inv[\"invoice_number\"].as_i64().map(|n| n.to_string()).unwrap_or_else(|| \"draft\".into())}" }
                                    td { "{inv[\"user_id\"]}" }
                                    td { "{&inv[\"period_start\"].as_str().unwrap_or(\"\")[..10]} → {&inv[\"period_end\"].as_str().unwrap_or(\"\")[..10]}" }
                                    td { "{inv[\"status\"].as_str().unwrap_or(\"\")}" }
                                    td { class: "num", "{inv[\"total\"].as_str().map(str::to_owned).unwrap_or_else(|| usd(api::nanos(&inv[\"total_nanos\"])))}" }
                                    td { button { class: "link open-invoice", onclick: move |_| open.set(inv["invoice_id"].as_i64()), "Open" } }
                                }
                            }
                        }
                    }
                },
            }
            if let Some(id) = open() {
                InvoiceView { key: "{id}", id, on_changed: move |_| reload += 1 }
            }
        }
    }
}

#[component]
fn InvoiceView(id: i64, on_changed: EventHandler<()>) -> Element {
    let session = use_session();
    let key = session.key.clone();
    let mut reload = use_signal(|| 0u32);
    let mut error = use_signal(|| None::<String>);
    let inv = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let _ = reload();
            async move { api::get(&key, &format!("/api/invoices/{id}?limit=100")).await }
        }
    });
    let finalize = {
        let key = key.clone();
        move |_| {
            let key = key.clone();
            spawn(async move {
                match api::call(&key, "POST", &format!("/api/invoices/{id}/finalize"), None).await {
                    Ok(_) => {
                        reload += 1;
                        on_changed.call(());
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };
    let csv = {
        let key = key.clone();
        move |_| {
            let key = key.clone();
            spawn(async move {
                match api::text(&key, &format!("/api/invoices/{id}.csv")).await {
                    Ok(text) => api::download(&format!("invoice-{id}.csv"), &text, "text/csv"),
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };
    rsx! {
        div { class: "invoice", id: "invoice-view",
            match &*inv.read() {
                None => rsx! { p { class: "muted", "Loading the invoice…" } },
                Some(Err(e)) => rsx! { p { class: "error", "{e}" } },
                Some(Ok(v)) => rsx! {
                    h3 { "Invoice {invoice_name(v, id)} · user {v[\"user_id\"]} · " span { id: "invoice-status", "{v[\"status\"].as_str().unwrap_or(\"\")}" } }
                    p { "Exact total " strong { id: "invoice-exact", "{v[\"total_exact\"].as_str().unwrap_or(\"\")}" }
                        if let Some(t) = v["total"].as_str() { " · billed " strong { id: "invoice-total", "{t}" } " · rounding " span { id: "invoice-rounding", "{v[\"rounding\"].as_str().unwrap_or(\"\")}" } }
                    }
                    h4 { "By model" }
                    table { class: "grid",
                        tbody {
                            for m in v["models"].as_array().cloned().unwrap_or_default() {
                                tr { td { "{m[\"model\"].as_str().unwrap_or(\"\")}" } td { class: "num", "{m[\"cost\"].as_str().unwrap_or(\"\")}" } }
                            }
                            for r in v["resources"].as_array().cloned().unwrap_or_default() {
                                tr { td { "{r[\"resource\"].as_str().unwrap_or(\"\")} × {r[\"quantity\"]}" } td { class: "num", "{r[\"cost\"].as_str().unwrap_or(\"\")}" } }
                            }
                        }
                    }
                    h4 { "Lines ({v[\"line_count\"]})" }
                    table { class: "grid lines",
                        thead { tr { th { "when" } th { "item" } th { "class" } th { "quantity" } th { "cost" } } }
                        tbody {
                            for l in v["lines"].as_array().cloned().unwrap_or_default() {
                                tr {
                                    td { "{l[\"occurred_at\"].as_str().unwrap_or(\"\")}" }
                                    td { "{l[\"item\"].as_str().unwrap_or(\"\")}" }
                                    td { "{l[\"token_class\"].as_str().unwrap_or(\"\")}" }
                                    td { class: "num", "{l[\"quantity\"]}" }
                                    td { class: "num", "{l[\"cost\"].as_str().unwrap_or(\"\")}" }
                                }
                            }
                        }
                    }
                    div { class: "row",
                        button { id: "download-csv", onclick: csv, "Download CSV" }
                        if session.is_admin() && v["status"] == "draft" {
                            button { id: "finalize", onclick: finalize, "Finalize" }
                        }
                    }
                },
            }
            if let Some(e) = error() { p { class: "error", role: "alert", "{e}" } }
        }
    }
}

fn invoice_name(v: &Value, id: i64) -> String {
    match v["invoice_number"].as_i64() {
        Some(n) => format!("no. {n}"),
        None => format!("draft {id}"),
    }
}
