//! Opens the default key-value store, an interface billing-host refuses.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(_req: Request) -> anyhow::Result<impl IntoResponse> {
    let store = spin_sdk::key_value::Store::open_default()?;
    Ok(Response::new(200, format!("{:?}", store.get("k")?)))
}
