//! `billing-fn-common`: the pieces every billing component shares, so each
//! rule is written once.
//!
//! - [`problem`]: [`ApiError`], the one mapping from errors to RFC 9457
//!   problem+json responses.
//! - [`auth`]: API keys (`Authorization: Bearer …`), hashed; roles.
//! - [`db`]: the SQLite connection, typed row access, transactions.
//! - [`input`]: JSON bodies and query strings, validated at the edge.
//! - [`cache`]: Redis as a cache that may be down.
//! - [`clock`]: the current time as a billing-core [`Timestamp`].

pub mod auth;
pub mod cache;
pub mod clock;
pub mod db;
pub mod input;
pub mod prices;
pub mod problem;

pub use auth::{Caller, Role};
pub use db::Db;
pub use problem::{ApiError, ApiResult};

use spin_sdk::http::Response;

/// A JSON response.
pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(value).expect("responses serialise"))
        .build()
}

/// How every API handler starts: the database, and who is calling (or 401/403).
pub fn authenticated(req: &spin_sdk::http::Request) -> ApiResult<(Db, Caller)> {
    let db = Db::open()?;
    let caller = auth::authenticate(req, &db)?;
    Ok((db, caller))
}

/// Turns a handler's result into the response, errors as problem+json.
pub fn respond(result: ApiResult<Response>) -> Response {
    result.unwrap_or_else(|e| e.into_response())
}
