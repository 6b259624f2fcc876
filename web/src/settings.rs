//! Settings: the default model of new threads (kept in this browser); the
//! prices in force with their rules (prompt-length tiers, modifiers such as
//! batch), each model's history and a quote at any time; for admin a new
//! effective-dated version and the catalogue (new models, aliases,
//! retirements).

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
                            thead { tr { th { "model" } th { "since" } th { "input" } th { "output" } th { "cache write 5m" } th { "cache write 1h" } th { "cache read" } th { "rules" } th { "versions" } } }
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
                Catalogue { on_changed: move |_| reload += 1 }
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
            td { class: "rules small", "{rules_text(&model[\"in_force\"][\"rules\"])}" }
            td { button { class: "link small", onclick: move |_| open.toggle(), "{history.len()} versions" } }
        }
        if open() {
            for h in history.iter() {
                tr { class: "history-row",
                    td {} td { "{h[\"effective_from\"].as_str().unwrap_or(\"\")}" }
                    for c in ["input", "output", "cache_write_5m", "cache_write_1h", "cache_read"] {
                        td { class: "num", "{h[\"prices\"][\"display\"][c].as_str().unwrap_or(\"\")}" }
                    }
                    td { class: "rules small", "{rules_text(&h[\"rules\"])}" }
                    td {}
                }
            }
        }
    }
}

/// A version's rules in words: each prompt-length tier with its input and
/// output rates, then each modifier (e.g. `service_tier=batch ×0.5`).
pub fn rules_text(rules: &Value) -> String {
    let mut parts = Vec::new();
    for t in rules["tiers"].as_array().into_iter().flatten() {
        let rate = |c: &str| {
            t["prices"][c]
                .as_i64()
                .and_then(|m| billing_core::PricePerMillion::new(m).ok())
                .map(|p| p.display_usd())
                .unwrap_or_default()
        };
        parts.push(format!(
            "above {} prompt tokens: {} in / {} out",
            t["above_prompt_tokens"],
            rate("input"),
            rate("output")
        ));
    }
    for m in rules["modifiers"].as_array().into_iter().flatten() {
        parts.push(format!(
            "{}={} ×{}",
            m["attribute"].as_str().unwrap_or(""),
            m["value"].as_str().unwrap_or(""),
            m["multiplier"].as_str().unwrap_or("")
        ));
    }
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join("; ")
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

/// Admin: the catalogue's models with their aliases, retire or restore a
/// model, add an alias, add a model with its first price version.
#[component]
fn Catalogue(on_changed: EventHandler<()>) -> Element {
    let key = use_session().key;
    let mut reload = use_signal(|| 0u32);
    let mut message = use_signal(|| None::<Result<String, String>>);
    let models = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let _ = reload();
            async move { api::items(&key, "/api/models").await }
        }
    });
    let list: Vec<Value> = match &*models.read() {
        Some(Ok(l)) => l.clone(),
        _ => Vec::new(),
    };
    let names: Vec<String> = list
        .iter()
        .filter_map(|m| m["model"].as_str().map(str::to_owned))
        .collect();
    let act = move |key: String,
                    method: &'static str,
                    path: String,
                    body: Option<Value>,
                    done: String| {
        spawn(async move {
            match api::call(&key, method, &path, body).await {
                Ok(_) => {
                    message.set(Some(Ok(done)));
                    reload += 1;
                    on_changed.call(());
                }
                Err(e) => message.set(Some(Err(e))),
            }
        });
    };
    let mut alias = use_signal(String::new);
    let mut alias_model = use_signal(String::new);
    let first = names.first().cloned().unwrap_or_default();
    let add_alias = {
        let key = key.clone();
        move |e: FormEvent| {
            e.prevent_default();
            let target = if alias_model().is_empty() {
                first.clone()
            } else {
                alias_model()
            };
            act(
                key.clone(),
                "POST",
                "/api/models/aliases".into(),
                Some(json!({"alias": alias().trim(), "model": target})),
                format!("Alias {} added.", alias().trim()),
            );
        }
    };
    let fields = [
        "model",
        "display_name",
        "provider",
        "family",
        "context_window",
        "max_output_tokens",
        "effective_from",
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
    ];
    let mut new_model = use_signal(|| {
        let mut v = vec![String::new(); 12];
        v[2] = "anthropic".into();
        v
    });
    let add_model = {
        let key = key.clone();
        move |e: FormEvent| {
            e.prevent_default();
            let v = new_model();
            let num = |s: &str| {
                s.trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::from(s.trim().to_owned()))
            };
            let body = json!({
                "model": v[0].trim(), "display_name": v[1].trim(), "provider": v[2].trim(), "family": v[3].trim(),
                "context_window": num(&v[4]), "max_output_tokens": num(&v[5]), "effective_from": v[6].trim(),
                "prices": {"input": num(&v[7]), "output": num(&v[8]), "cache_write_5m": num(&v[9]), "cache_write_1h": num(&v[10]), "cache_read": num(&v[11])},
            });
            act(
                key.clone(),
                "POST",
                "/api/models".into(),
                Some(body),
                format!("Model {} added.", v[0].trim()),
            );
        }
    };
    rsx! {
        section { class: "panel", id: "catalogue",
            h2 { "Catalogue" }
            p { class: "muted small", "Aliases (undated names, cloud-provider ids) are billed as the model they name. A retired model is refused in chat; events of it are still billed." }
            table { class: "grid", id: "catalogue-table",
                thead { tr { th { "model" } th { "aliases" } th { "status" } th {} } }
                tbody {
                    for m in list.iter() {
                        {
                            let name = m["model"].as_str().unwrap_or("").to_owned();
                            let active = m["active"].as_bool().unwrap_or(true);
                            let key = key.clone();
                            let aliases: Vec<String> = m["aliases"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)).collect();
                            rsx! {
                                tr { key: "{name}", "data-model": "{name}",
                                    td { "{name}" }
                                    td { class: "small",
                                        for a in aliases.iter() {
                                            {
                                                let (a, key) = (a.clone(), key.clone());
                                                rsx! {
                                                    span { class: "badge", key: "{a}", "{a} "
                                                        button { class: "link small", title: "remove the alias {a}", "data-alias": "{a}",
                                                            onclick: move |_| act(key.clone(), "DELETE", format!("/api/models/aliases/{a}"), None, format!("Alias {a} removed.")),
                                                            "×" }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                    td { if active { "active" } else { span { class: "badge", "retired" } } }
                                    td {
                                        button { class: "link small retire",
                                            onclick: move |_| act(key.clone(), "PATCH", format!("/api/models/{name}"), Some(json!({"active": !active})), format!("{name} {}.", if active { "retired" } else { "restored" })),
                                            if active { "Retire" } else { "Restore" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form { id: "new-alias", class: "row", onsubmit: add_alias,
                input { id: "alias-name", placeholder: "alias, e.g. claude-haiku-4-5", value: "{alias}", oninput: move |e| alias.set(e.value()) }
                select { id: "alias-model", onchange: move |e| alias_model.set(e.value()),
                    for m in names.iter() { option { value: "{m}", "{m}" } }
                }
                button { r#type: "submit", id: "add-alias", "Add alias" }
            }
            form { id: "new-model", onsubmit: add_model,
                div { class: "row",
                    for (i, f) in fields.iter().enumerate() {
                        label { "{f} " input { id: "model-{f}", size: "12", value: "{new_model()[i]}", oninput: move |e| new_model.with_mut(|v| v[i] = e.value()) } }
                    }
                }
                p { class: "muted small", "Prices in micro-USD per million tokens; the first version may start in the past." }
                button { r#type: "submit", id: "add-model", "Add model" }
            }
            match message() {
                Some(Ok(m)) => rsx! { p { class: "ok", id: "catalogue-result", "{m}" } },
                Some(Err(e)) => rsx! { p { class: "error", id: "catalogue-result", role: "alert", "{e}" } },
                None => rsx! {},
            }
        }
    }
}
