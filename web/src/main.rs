//! The web app: sign in with an API key, chat with live token counts and
//! costs, billing (summary, per-message costs, invoices), pricing admin and
//! a live dashboard. Talks to the API on the same origin and to the
//! bridge's SSE stream for live updates.

mod api;
mod billing;
mod charts;
mod chat;
mod dashboard;
mod settings;

use api::Session;
use dioxus::prelude::*;
use serde_json::Value;

const KEY_STORAGE: &str = "billing.api_key";

fn main() {
    dioxus::launch(App);
}

/// What the `web` component tells the app: the bridge's live-update URL and, on a local run, the demo keys.
#[derive(Clone, Default, PartialEq)]
pub struct WebConfig {
    pub live_url: String,
    pub demo_keys: Vec<(String, String)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Tab {
    Chat,
    Billing,
    Dashboard,
    Settings,
}

#[component]
fn App() -> Element {
    let mut session = use_signal(|| None::<Session>);
    let mut checking = use_signal(|| true);
    let mut error = use_signal(|| None::<String>);
    let config = use_resource(|| async {
        let v: Value = gloo_net::http::Request::get("/web-config.json")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(WebConfig {
            live_url: v["live_url"].as_str().unwrap_or_default().to_owned(),
            demo_keys: v["demo_keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|k| {
                            (
                                k["label"].as_str().unwrap_or("").to_owned(),
                                k["key"].as_str().unwrap_or("").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    });
    use_context_provider(move || config);
    // A key kept from last time signs in by itself.
    use_future(move || async move {
        if let Some(key) = api::local_storage().and_then(|s| s.get_item(KEY_STORAGE).ok().flatten())
        {
            match sign_in(&key).await {
                Ok(s) => session.set(Some(s)),
                Err(e) => error.set(Some(e)),
            }
        }
        checking.set(false);
    });
    rsx! {
        if checking() {
            p { class: "boot", "Loading…" }
        } else if let Some(s) = session() {
            Shell { session: s, on_sign_out: move |_| {
                if let Some(st) = api::local_storage() { let _ = st.remove_item(KEY_STORAGE); }
                session.set(None);
            } }
        } else {
            SignIn { error: error(), on_signed_in: move |s: Session| { error.set(None); session.set(Some(s)) } }
        }
    }
}

async fn sign_in(key: &str) -> Result<Session, String> {
    let me = api::get(key, "/api/users/me").await?;
    Ok(Session {
        key: key.to_owned(),
        user_id: me["user_id"].as_i64().unwrap_or(0),
        name: me["name"].as_str().unwrap_or("").to_owned(),
        role: me["role"].as_str().unwrap_or("user").to_owned(),
    })
}

#[component]
fn SignIn(error: Option<String>, on_signed_in: EventHandler<Session>) -> Element {
    let mut key = use_signal(String::new);
    let mut busy = use_signal(|| false);
    let mut problem = use_signal(|| error.clone());
    let config = use_context::<Resource<Option<WebConfig>>>();
    let submit = move |e: FormEvent| {
        e.prevent_default();
        let k = key().trim().to_owned();
        if k.is_empty() {
            problem.set(Some("Paste an API key first.".into()));
            return;
        }
        busy.set(true);
        spawn(async move {
            match sign_in(&k).await {
                Ok(s) => {
                    if let Some(st) = api::local_storage() {
                        let _ = st.set_item(KEY_STORAGE, &k);
                    }
                    on_signed_in.call(s);
                }
                Err(e) => problem.set(Some(format!("Sign-in failed: {e}"))),
            }
            busy.set(false);
        });
    };
    let demo = config
        .read()
        .clone()
        .flatten()
        .map(|c| c.demo_keys)
        .unwrap_or_default();
    rsx! {
        main { class: "signin",
            h1 { "LLM chat billing" }
            p { "Sign in with your API key. It stays in this browser until you sign out." }
            form { onsubmit: submit,
                input { id: "api-key", r#type: "password", placeholder: "lcb_…", value: "{key}", autocomplete: "off",
                    oninput: move |e| key.set(e.value()) }
                button { id: "sign-in", r#type: "submit", disabled: busy(), if busy() { "Signing in…" } else { "Sign in" } }
            }
            if let Some(p) = problem() { p { class: "error", role: "alert", "{p}" } }
            if !demo.is_empty() {
                section { class: "demo-keys",
                    h2 { "Demo keys (local run)" }
                    ul {
                        for (label, k) in demo {
                            li { key: "{k}",
                                button { class: "link demo-key", "data-key": "{k}", onclick: move |_| key.set(k.clone()), "{label}" }
                                code { "{k}" }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[component]
fn Shell(session: Session, on_sign_out: EventHandler<()>) -> Element {
    let mut tab = use_signal(|| Tab::Chat);
    let s = use_signal(|| session.clone());
    use_context_provider(move || s);
    let tabs = [
        (Tab::Chat, "Chat"),
        (Tab::Billing, "Billing"),
        (Tab::Dashboard, "Dashboard"),
        (Tab::Settings, "Settings"),
    ];
    rsx! {
        header { class: "top",
            strong { "LLM chat billing" }
            nav {
                for (t, label) in tabs {
                    button { class: if tab() == t { "tab active" } else { "tab" }, id: "tab-{label.to_lowercase()}", onclick: move |_| tab.set(t), "{label}" }
                }
            }
            span { class: "who", "{session.name} ({session.role})" }
            button { id: "sign-out", class: "link", onclick: move |_| on_sign_out.call(()), "Sign out" }
        }
        match tab() {
            Tab::Chat => rsx! { chat::Chat {} },
            Tab::Billing => rsx! { billing::Billing {} },
            Tab::Dashboard => rsx! { dashboard::Dashboard {} },
            Tab::Settings => rsx! { settings::Settings {} },
        }
    }
}

/// The session of the signed-in user.
pub fn use_session() -> Session {
    use_context::<Signal<Session>>()()
}
