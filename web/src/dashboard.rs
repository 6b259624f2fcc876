//! The dashboard: cost (total, by model, by token class, over time), users
//! (top, active), threads (turns, tokens, cost, latency). Every refresh is
//! the same four requests whatever the data size; it refreshes every 15 s
//! and at once when the bridge's live stream says something was billed.

use crate::api::{self, usd};
use crate::billing::Card;
use crate::charts::{Bars, Lines};
use crate::{use_session, WebConfig};
use dioxus::prelude::*;
use serde_json::Value;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

const RANGES: [(&str, i64, &str); 4] = [
    ("Last hour", 3_600_000, "minute"),
    ("Last 24 hours", 86_400_000, "hour"),
    ("Last 7 days", 7 * 86_400_000, "hour"),
    ("Last 30 days", 30 * 86_400_000, "day"),
];

fn iso(ms: f64) -> String {
    js_sys::Date::new(&JsValue::from_f64(ms))
        .to_iso_string()
        .as_string()
        .unwrap_or_default()
}

/// The dashboard's connection to the bridge's live stream and the
/// listeners it calls; dropping it closes the connection first, so a
/// listener is never called once dropped.
struct LiveStream {
    source: web_sys::EventSource,
    _listeners: (
        Closure<dyn FnMut(web_sys::MessageEvent)>,
        [Closure<dyn FnMut(web_sys::Event)>; 2],
    ),
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.source.close();
    }
}

#[component]
pub fn Dashboard() -> Element {
    let session = use_session();
    let key = session.key.clone();
    let admin = session.is_admin();
    let mut range = use_signal(|| 1usize);
    let mut model = use_signal(String::new);
    let mut tick = use_signal(|| 0u32);
    let mut live = use_signal(|| None::<String>);
    // The live stream is connected (EventSource `open`; an `error` means it
    // is reconnecting, and a notice sent meanwhile reaches only the 15 s tick).
    let mut live_open = use_signal(|| false);
    let config = use_context::<Resource<Option<WebConfig>>>();

    // Every 15 s.
    use_future(move || async move {
        loop {
            gloo_timers::future::TimeoutFuture::new(15_000).await;
            tick += 1;
        }
    });
    // Live: the bridge's SSE stream; a billed event refreshes at once.
    let live_url = config
        .read()
        .clone()
        .flatten()
        .map(|c| c.live_url)
        .unwrap_or_default();
    let stream_key = key.clone();
    // Switching tabs takes the dashboard off the page and back: its stream
    // is closed then, so no listener of a removed dashboard is called.
    let stream = use_hook(|| std::rc::Rc::new(std::cell::RefCell::new(None::<LiveStream>)));
    use_drop({
        let stream = stream.clone();
        move || drop(stream.borrow_mut().take())
    });
    use_effect(use_reactive!(|live_url| {
        // A new address replaces (and closes) the stream to the old one.
        drop(stream.borrow_mut().take());
        if live_url.is_empty() {
            return;
        }
        let url = format!(
            "{live_url}/events/stream?access_token={}",
            crate::chat::encode(&stream_key)
        );
        let Ok(source) = web_sys::EventSource::new(&url) else {
            return;
        };
        let on_billed =
            Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
                let data = e.data().as_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&data).unwrap_or_default();
                live.set(Some(format!(
                    "{} billed {} for user {}",
                    v["event_type"].as_str().unwrap_or("event"),
                    usd(v["cost_nanos"].as_i64().unwrap_or(0)),
                    v["user_id"]
                )));
                tick += 1;
            });
        let _ =
            source.add_event_listener_with_callback("billed", on_billed.as_ref().unchecked_ref());
        let on_state = [("open", true), ("error", false)].map(|(event, open)| {
            let listener = Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| {
                live_open.set(open);
            });
            let _ =
                source.add_event_listener_with_callback(event, listener.as_ref().unchecked_ref());
            listener
        });
        *stream.borrow_mut() = Some(LiveStream {
            source,
            _listeners: (on_billed, on_state),
        });
    }));

    let data = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let (_, span, bucket) = RANGES[range()];
            let m = model();
            let _ = tick();
            async move {
                let now = js_sys::Date::now();
                let (from, to) = (iso(now - span as f64), iso(now + 1.0));
                let filter = if m.is_empty() {
                    String::new()
                } else {
                    format!("&model={m}")
                };
                let summary = api::get(
                    &key,
                    &format!("/api/metrics/summary?from={from}&to={to}{filter}"),
                )
                .await?;
                let series = api::get(&key, &format!("/api/metrics/timeseries?from={from}&to={to}&bucket={bucket}&by=model{filter}")).await?;
                let top = if admin {
                    Some(
                        api::get(
                            &key,
                            &format!("/api/metrics/top-users?from={from}&to={to}&limit=10"),
                        )
                        .await?,
                    )
                } else {
                    None
                };
                let threads = api::get(
                    &key,
                    &format!("/api/metrics/threads?from={from}&to={to}&limit=10"),
                )
                .await?;
                Ok::<_, String>((summary, series, top, threads))
            }
        }
    });
    let models = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            async move { api::items(&key, "/api/models").await }
        }
    });

    rsx! {
        main { class: "dashboard",
            div { class: "row filters",
                select { id: "range", onchange: move |e| range.set(e.value().parse().unwrap_or(1)),
                    for (i, (label, _, _)) in RANGES.iter().enumerate() {
                        option { value: "{i}", selected: i == range(), "{label}" }
                    }
                }
                select { id: "model-filter", onchange: move |e| model.set(e.value()),
                    option { value: "", "All models" }
                    if let Some(Ok(list)) = &*models.read() {
                        for m in list.iter() { option { value: "{m[\"model\"].as_str().unwrap_or(\"\")}", "{m[\"display_name\"].as_str().unwrap_or(\"\")}" } }
                    }
                }
                button { id: "refresh", onclick: move |_| tick += 1, "Refresh" }
                span { class: "muted small", id: "live", "data-state": if live_open() { "open" } else { "connecting" },
                    match (live(), live_open()) {
                        (Some(l), _) => rsx! { "Live: {l}" },
                        (None, true) => rsx! { "Live updates on" },
                        (None, false) => rsx! { "Connecting to live updates…" },
                    }
                }
            }
            match &*data.read() {
                None => rsx! { p { class: "muted", "Loading the dashboard…" } },
                Some(Err(e)) => rsx! { p { class: "error", role: "alert", "{e}" } },
                Some(Ok((summary, series, top, threads))) => rsx! { Panels { summary: summary.clone(), series: series.clone(), top: top.clone(), threads: threads.clone() } },
            }
        }
    }
}

#[component]
fn Panels(summary: Value, series: Value, top: Option<Value>, threads: Value) -> Element {
    let s = &summary;
    let tokens = &s["tokens"];
    let classes = [
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
    ];
    let token_bars: Vec<(String, f64, String)> = classes
        .iter()
        .map(|c| {
            (
                c.to_string(),
                tokens[*c].as_f64().unwrap_or(0.0),
                format!("{}", tokens[*c]),
            )
        })
        .collect();
    let list = series["series"].as_array().cloned().unwrap_or_default();
    let x: Vec<String> = list
        .first()
        .and_then(|f| f["points"].as_array())
        .map(|pts| {
            pts.iter()
                .map(|p| short_time(p["t"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    let lines: Vec<(String, Vec<f64>)> = list
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap_or("").to_owned(),
                s["points"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .map(|x| x["cost_nanos"].as_f64().unwrap_or(0.0) / 1e9)
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect();
    let by_model: Vec<(String, f64, String)> = list
        .iter()
        .map(|s| {
            let total: i64 = s["points"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .map(|x| x["cost_nanos"].as_i64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0);
            (
                s["key"].as_str().unwrap_or("").to_owned(),
                total as f64,
                usd(total),
            )
        })
        .filter(|b| b.1 > 0.0)
        .collect();
    let top_bars: Vec<(String, f64, String)> = top
        .as_ref()
        .and_then(|t| t["users"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap_or("?").to_owned(),
                u["cost_nanos"].as_f64().unwrap_or(0.0),
                usd(u["cost_nanos"].as_i64().unwrap_or(0)),
            )
        })
        .collect();
    let thread_rows = threads["threads"].as_array().cloned().unwrap_or_default();
    let thread_bars: Vec<(String, f64, String)> = thread_rows
        .iter()
        .map(|t| {
            (
                t["title"].as_str().unwrap_or("").chars().take(22).collect(),
                t["cost_nanos"].as_f64().unwrap_or(0.0),
                usd(t["cost_nanos"].as_i64().unwrap_or(0)),
            )
        })
        .collect();
    let avg = s["avg_latency_ms"]
        .as_f64()
        .map(|v| format!("{v:.0} ms avg latency"))
        .unwrap_or_else(|| "no latency yet".into());
    rsx! {
        section { class: "cards",
            Card { id: "dash-cost", title: "Cost", value: usd(api::nanos(&s["cost_nanos"])), note: format!("{} turns · {} API requests · {avg}", s["turns"], s["requests"]) }
            Card { id: "dash-users", title: "Active users", value: format!("{}", s["active_users"]), note: format!("{} messages sent", s["messages"]) }
            Card { id: "dash-tokens", title: "Tokens", value: format!("{}", classes.iter().map(|c| tokens[*c].as_i64().unwrap_or(0)).sum::<i64>()), note: "all classes".to_string() }
        }
        div { class: "charts",
            Lines { id: "chart-cost-time", title: "Cost over time by model (USD)", x, series: lines, unit: "$" }
            Bars { id: "chart-by-model", title: "Cost by model", bars: by_model }
            Bars { id: "chart-by-class", title: "Tokens by class", bars: token_bars }
            if top.is_some() { Bars { id: "chart-top-users", title: "Top users by cost", bars: top_bars } }
            Bars { id: "chart-threads", title: "Threads by cost", bars: thread_bars }
        }
        section { class: "panel",
            h2 { "Thread performance" }
            table { class: "grid", id: "thread-table",
                thead { tr { th { "thread" } th { "turns" } th { "tokens in/out" } th { "avg latency" } th { "cost" } } }
                tbody {
                    for t in thread_rows.iter() {
                        tr {
                            td { "{t[\"title\"].as_str().unwrap_or(\"\")}" }
                            td { class: "num", "{t[\"turns\"]}" }
                            td { class: "num", "{t[\"tokens\"][\"input\"]} / {t[\"tokens\"][\"output\"]}" }
                            td { class: "num", "{latency(t)}" }
                            td { class: "num", "{usd(t[\"cost_nanos\"].as_i64().unwrap_or(0))}" }
                        }
                    }
                }
            }
        }
    }
}

fn latency(t: &Value) -> String {
    t["avg_latency_ms"]
        .as_f64()
        .map(|v| format!("{v:.0} ms"))
        .unwrap_or_default()
}

fn short_time(t: &str) -> String {
    if t.len() >= 16 {
        t[5..16].replace('T', " ")
    } else {
        t.to_owned()
    }
}
