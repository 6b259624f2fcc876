//! `accounts`: users, API keys and threads.
//!
//! - `GET /api/users/me`; admin: `GET /api/users`, `POST /api/users`,
//!   `POST /api/users/{id}/disable`.
//! - `GET /api/keys`, `POST /api/keys` (the key is shown once),
//!   `DELETE /api/keys/{id}`.
//! - `POST /api/threads`, `GET /api/threads` (filters, pages, totals),
//!   `GET /api/threads/{id}`, `PATCH /api/threads/{id}` (rename, archive, model).

mod keys;
mod threads;
mod users;

use billing_fn_common::{respond, ApiError, ApiResult};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(req: Request) -> Response {
    respond(route(&req))
}

fn route(req: &Request) -> ApiResult<Response> {
    let (db, caller) = billing_fn_common::authenticated(req)?;
    let segs = billing_fn_common::input::segments(req);
    match (req.method(), segs.as_slice()) {
        (Method::Get, ["api", "users", "me"]) => users::me(&db, &caller),
        (Method::Get, ["api", "users"]) => users::list(&db, &caller, req),
        (Method::Post, ["api", "users"]) => users::create(&db, &caller, req),
        (Method::Post, ["api", "users", id, "disable"]) => users::disable(&db, &caller, id),
        (Method::Get, ["api", "keys"]) => keys::list(&db, &caller, req),
        (Method::Post, ["api", "keys"]) => keys::create(&db, &caller, req),
        (Method::Delete, ["api", "keys", id]) => keys::revoke(&db, &caller, id),
        (Method::Post, ["api", "threads"]) => threads::create(&db, &caller, req),
        (Method::Get, ["api", "threads"]) => threads::list(&db, &caller, req),
        (Method::Get, ["api", "threads", id]) => threads::get(&db, &caller, id),
        (Method::Patch, ["api", "threads", id]) => threads::update(&db, &caller, req, id),
        (_, ["api", "users" | "keys" | "threads", ..]) => Err(ApiError::MethodNotAllowed(format!(
            "{} is not allowed on {}",
            req.method(),
            req.path()
        ))),
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: {}",
            req.path()
        ))),
    }
}
