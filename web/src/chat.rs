//! Chat: threads (select, create, rename, archive, filter), the history with
//! tokens and cost per answer, and the input with a live token counter and
//! the estimated cost before sending.

use crate::api::{self, usd};
use crate::use_session;
use dioxus::prelude::*;
use serde_json::{json, Value};

#[component]
pub fn Chat() -> Element {
    let session = use_session();
    let key = session.key.clone();
    let mut filter = use_signal(String::new);
    let mut show_archived = use_signal(|| false);
    let mut reload_threads = use_signal(|| 0u32);
    let mut selected = use_signal(|| None::<i64>);
    let mut error = use_signal(|| None::<String>);

    let threads = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let (q, archived, _) = (filter(), show_archived(), reload_threads());
            async move {
                let path = format!(
                    "/api/threads?limit=100&archived={}&q={}",
                    if archived { "all" } else { "false" },
                    encode(&q)
                );
                api::items(&key, &path).await
            }
        }
    });

    let new_thread = {
        let key = key.clone();
        move |_| {
            let key = key.clone();
            spawn(async move {
                let mut body = json!({"title": "New thread"});
                if let Some(m) = api::local_storage()
                    .and_then(|s| s.get_item(crate::settings::DEFAULT_MODEL).ok().flatten())
                    .filter(|m| !m.is_empty())
                {
                    body["model"] = Value::from(m);
                }
                match api::call(&key, "POST", "/api/threads", Some(body)).await {
                    Ok(t) => {
                        selected.set(t["thread_id"].as_i64());
                        reload_threads += 1;
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };

    rsx! {
        main { class: "chat",
            aside { class: "threads",
                div { class: "row",
                    button { id: "new-thread", onclick: new_thread, "New thread" }
                }
                input { id: "thread-filter", placeholder: "Filter threads", value: "{filter}", oninput: move |e| filter.set(e.value()) }
                label { class: "small",
                    input { r#type: "checkbox", checked: show_archived(), onchange: move |e| show_archived.set(e.checked()) }
                    " show archived"
                }
                match &*threads.read() {
                    None => rsx! { p { class: "muted", "Loading threads…" } },
                    Some(Err(e)) => rsx! { p { class: "error", "{e}" } },
                    Some(Ok(list)) if list.is_empty() => rsx! { p { class: "muted", "No threads yet. Start one." } },
                    Some(Ok(list)) => rsx! {
                        ul {
                            for t in list.clone() {
                                ThreadItem { key: "{t[\"thread_id\"]}", thread: t.clone(), selected: selected() == t["thread_id"].as_i64(),
                                    on_select: move |id| selected.set(Some(id)), on_changed: move |_| reload_threads += 1 }
                            }
                        }
                    },
                }
            }
            section { class: "conversation",
                if let Some(e) = error() { p { class: "error", role: "alert", "{e}" } }
                match selected() {
                    None => rsx! { p { class: "muted", "Select a thread or start a new one." } },
                    Some(id) => rsx! { Conversation { key: "{id}", thread_id: id, on_sent: move |_| reload_threads += 1 } },
                }
            }
        }
    }
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[component]
fn ThreadItem(
    thread: Value,
    selected: bool,
    on_select: EventHandler<i64>,
    on_changed: EventHandler<()>,
) -> Element {
    let key = use_session().key;
    let id = thread["thread_id"].as_i64().unwrap_or(0);
    let title = thread["title"].as_str().unwrap_or("").to_owned();
    let archived = !thread["archived_at"].is_null();
    let mut editing = use_signal(|| false);
    let mut draft = use_signal(|| title.clone());
    let mut error = use_signal(|| None::<String>);
    let patch = move |body: Value| {
        let key = key.clone();
        spawn(async move {
            match api::call(&key, "PATCH", &format!("/api/threads/{id}"), Some(body)).await {
                Ok(_) => {
                    editing.set(false);
                    on_changed.call(());
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let patch2 = patch.clone();
    let patch3 = patch.clone();
    rsx! {
        li { class: if selected { "thread selected" } else { "thread" },
            if editing() {
                form { onsubmit: move |e: FormEvent| { e.prevent_default(); patch2(json!({"title": draft()})) },
                    input { class: "rename", value: "{draft}", oninput: move |e| draft.set(e.value()) }
                    button { r#type: "submit", "Save" }
                }
            } else {
                button { class: "link thread-title", onclick: move |_| on_select.call(id), "{title}" }
                span { class: "muted small", " {thread[\"message_count\"]} msgs · {api::usd(api::nanos(&thread[\"cost_nanos\"]))}" }
                if archived { span { class: "badge", "archived" } }
                div { class: "thread-actions",
                    button { class: "link small", onclick: move |_| editing.set(true), "Rename" }
                    button { class: "link small", onclick: move |_| patch3(json!({"archived": !archived})), if archived { "Unarchive" } else { "Archive" } }
                }
            }
            if let Some(e) = error() { p { class: "error small", "{e}" } }
        }
    }
}

#[component]
fn Conversation(thread_id: i64, on_sent: EventHandler<()>) -> Element {
    let session = use_session();
    let key = session.key.clone();
    let mut reload = use_signal(|| 0u32);
    let mut text = use_signal(String::new);
    let mut sending = use_signal(|| false);
    let mut error = use_signal(|| None::<String>);
    let mut model = use_signal(String::new);
    let mut count = use_signal(|| None::<(i64, i64)>);
    let mut generation = use_signal(|| 0u64);
    // The answer as it arrives, until the stored turn replaces it.
    let mut streaming = use_signal(|| None::<String>);
    // The message being sent, shown until the stored turn is loaded.
    let mut pending = use_signal(|| None::<String>);

    let thread = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let _ = reload();
            async move { api::get(&key, &format!("/api/threads/{thread_id}")).await }
        }
    });
    let messages = use_resource({
        let key = key.clone();
        move || {
            let key = key.clone();
            let _ = reload();
            async move {
                api::items(
                    &key,
                    &format!("/api/threads/{thread_id}/messages?limit=200"),
                )
                .await
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
    // The thread's model until the user picks another.
    use_effect(move || {
        if let Some(Ok(t)) = &*thread.read() {
            if model().is_empty() {
                model.set(t["model"].as_str().unwrap_or("").to_owned());
            }
        }
    });

    // The live token counter: counted 300 ms after the last keystroke.
    let recount = {
        let key = key.clone();
        move |value: String| {
            generation += 1;
            let mine = generation();
            let key = key.clone();
            spawn(async move {
                gloo_timers::future::TimeoutFuture::new(300).await;
                if generation() != mine {
                    return;
                }
                if value.trim().is_empty() {
                    count.set(None);
                    return;
                }
                if let Ok(v) = api::call(
                    &key,
                    "POST",
                    "/api/tokens/count",
                    Some(json!({"model": model(), "text": value})),
                )
                .await
                {
                    count.set(Some((
                        v["input_tokens"].as_i64().unwrap_or(0),
                        api::nanos(&v["estimated_cost"]),
                    )));
                }
            });
        }
    };

    let send = {
        let key = key.clone();
        move || {
            let content = text().trim().to_owned();
            if content.is_empty() || sending() {
                return;
            }
            sending.set(true);
            error.set(None);
            pending.set(Some(content.clone()));
            let key = key.clone();
            spawn(async move {
                let body = json!({"content": content, "model": model(), "stream": true});
                let mut stored = false;
                let streamed = api::stream(
                    &key,
                    &format!("/api/threads/{thread_id}/messages"),
                    body,
                    |event, data| match event {
                        "text_delta" => streaming.with_mut(|t| {
                            t.get_or_insert_with(String::new)
                                .push_str(data["text"].as_str().unwrap_or(""))
                        }),
                        "message_stop" => stored = true,
                        "error" => error.set(Some(format!(
                            "The answer broke off: {}",
                            data["detail"].as_str().unwrap_or("the provider failed")
                        ))),
                        _ => {}
                    },
                )
                .await;
                match streamed {
                    Ok(()) if stored => {
                        text.set(String::new());
                        count.set(None);
                    }
                    Ok(()) => {}
                    Err(e) => error.set(Some(e)),
                }
                // The stored turn (its cost, tokens and latency) replaces the streamed text.
                streaming.set(None);
                pending.set(None);
                reload += 1;
                on_sent.call(());
                sending.set(false);
            });
        }
    };
    let mut send_click = send.clone();
    let mut send_key = send.clone();
    let mut recount_input = recount.clone();

    let archived = matches!(&*thread.read(), Some(Ok(t)) if !t["archived_at"].is_null());
    rsx! {
        div { class: "history", id: "history",
            match &*messages.read() {
                None => rsx! { p { class: "muted", "Loading messages…" } },
                Some(Err(e)) => rsx! { p { class: "error", "{e}" } },
                Some(Ok(list)) if list.is_empty() && pending().is_none() => rsx! { p { class: "muted", "No messages yet. Say something." } },
                Some(Ok(list)) => rsx! {
                    for m in list.clone() {
                        Message { key: "{m[\"message_id\"]}", message: m.clone() }
                    }
                },
            }
            if let Some(p) = pending() {
                div { class: "message user pending", "data-role": "user", div { class: "content", "{p}" } }
            }
            match streaming() {
                Some(t) => rsx! { div { class: "message assistant streaming", id: "streaming-answer", "data-role": "assistant", div { class: "content", "{t}" } } },
                None if sending() => rsx! { div { class: "message assistant typing", id: "typing", span {} span {} span {} " the model is answering" } },
                None => rsx! {},
            }
        }
        if let Some(e) = error() { p { class: "error", role: "alert", "{e}" } }
        div { class: "composer",
            div { class: "row",
                label { "Model " }
                select { id: "model", value: "{model}", onchange: move |e| model.set(e.value()),
                    if let Some(Ok(list)) = &*models.read() {
                        for m in list.iter().filter(|m| m["active"].as_bool().unwrap_or(true)) {
                            option { value: "{m[\"model\"].as_str().unwrap_or(\"\")}", selected: m["model"].as_str() == Some(&model()), "{m[\"display_name\"].as_str().unwrap_or(m[\"model\"].as_str().unwrap_or(\"\"))}" }
                        }
                    }
                }
                span { class: "muted small", id: "token-count",
                    match count() {
                        Some((n, c)) => rsx! { "{n} tokens · about {usd(c)} to send" },
                        None => rsx! { "0 tokens" },
                    }
                }
            }
            textarea { id: "message-input", rows: "3", disabled: archived, placeholder: if archived { "This thread is archived." } else { "Write a message. Enter sends, Shift+Enter is a new line." },
                value: "{text}",
                oninput: move |e| { text.set(e.value()); recount_input(e.value()); },
                onkeydown: move |e: KeyboardEvent| {
                    if e.key() == Key::Enter && !e.modifiers().shift() {
                        e.prevent_default();
                        send_key();
                    }
                },
            }
            button { id: "send", disabled: sending() || archived, onclick: move |_| send_click(), if sending() { "Sending…" } else { "Send" } }
        }
    }
}

#[component]
fn Message(message: Value) -> Element {
    let role = message["role"].as_str().unwrap_or("").to_owned();
    let content = message["content"].as_str().unwrap_or("").to_owned();
    let failed = message["status"] == "failed";
    let t = &message["tokens"];
    rsx! {
        div { class: "message {role}", "data-role": "{role}",
            div { class: "content", "{content}" }
            if failed { p { class: "error small", "Not answered: {message[\"error\"].as_str().unwrap_or(\"the provider failed\")}" } }
            if role == "assistant" && !message["cost"].is_null() {
                div { class: "meta small",
                    span { class: "cost", "{usd(api::nanos(&message[\"cost\"]))}" }
                    " · in {t[\"input\"]} · out {t[\"output\"]} · cache write {t[\"cache_write_5m\"].as_i64().unwrap_or(0) + t[\"cache_write_1h\"].as_i64().unwrap_or(0)} · cache read {t[\"cache_read\"]}"
                    if let Some(ms) = message["latency_ms"].as_i64() { " · {ms} ms" }
                    " · {message[\"model\"].as_str().unwrap_or(\"\")}"
                }
            }
        }
    }
}
