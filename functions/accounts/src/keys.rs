//! API keys: created (shown once), listed by prefix, revoked.

use billing_fn_common::auth::new_key;
use billing_fn_common::db::{col, col_opt, int, text};
use billing_fn_common::input::{self, json_body, MAX_JSON_BYTES};
use billing_fn_common::{json, ApiError, ApiResult, Caller, Db};
use serde::{Deserialize, Serialize};
use spin_sdk::http::{Request, Response};

#[derive(Serialize)]
struct KeyInfo {
    key_id: i64,
    user_id: i64,
    prefix: String,
    label: String,
    created_at: String,
    revoked_at: Option<String>,
}

pub fn list(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    let q = input::query(req)?;
    let user_id = match q.get("user_id") {
        Some(u) => input::owned_by(caller, u, "user_id", "keys")?,
        None => caller.user_id,
    };
    let r = db.query(
        "SELECT key_id, user_id, key_prefix, label, created_at, revoked_at FROM api_keys WHERE user_id = ?1 ORDER BY key_id",
        &[int(user_id)],
    )?;
    let keys = r
        .rows()
        .map(|row| {
            Ok(KeyInfo {
                key_id: col(&row, "key_id")?,
                user_id: col(&row, "user_id")?,
                prefix: col::<&str>(&row, "key_prefix")?.to_owned(),
                label: col::<&str>(&row, "label")?.to_owned(),
                created_at: col::<&str>(&row, "created_at")?.to_owned(),
                revoked_at: col_opt::<&str>(&row, "revoked_at").map(str::to_owned),
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(json(200, &serde_json::json!({ "items": keys })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    user_id: Option<i64>,
}

pub fn create(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    let body: NewKey = if req.body().is_empty() {
        NewKey::default()
    } else {
        json_body(req, MAX_JSON_BYTES)?
    };
    let user_id = match body.user_id {
        Some(u) if u != caller.user_id => {
            caller.require_admin()?;
            let exists = db.scalar_i64(
                "SELECT user_id FROM dim_users WHERE user_id = ?1 AND disabled_at IS NULL",
                &[int(u)],
            )?;
            exists.ok_or_else(|| {
                ApiError::invalid("user_id", format!("there is no active user {u}"))
            })?
        }
        _ => caller.user_id,
    };
    let label = body.label.unwrap_or_default();
    if label.chars().count() > 100 {
        return Err(ApiError::invalid("label", "at most 100 characters"));
    }
    let (key, prefix, hash) = new_key()?;
    let key_id = db
        .scalar_i64(
            "INSERT INTO api_keys (user_id, key_prefix, key_hash, label) VALUES (?1, ?2, ?3, ?4) RETURNING key_id",
            &[int(user_id), text(prefix.clone()), text(hash), text(label.clone())],
        )?
        .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
    Ok(json(
        201,
        &serde_json::json!({
            "key_id": key_id, "user_id": user_id, "prefix": prefix, "label": label, "key": key,
            "note": "This is the only time the key is shown; store it now."
        }),
    ))
}

pub fn revoke(db: &Db, caller: &Caller, id: &str) -> ApiResult<Response> {
    let key_id = input::id(id, "key")?;
    let owner = db.scalar_i64(
        "SELECT user_id FROM api_keys WHERE key_id = ?1",
        &[int(key_id)],
    )?;
    match owner {
        Some(o) if caller.may_see(o) => {
            let now = billing_fn_common::clock::now().to_rfc3339();
            db.exec(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?1) WHERE key_id = ?2",
                &[text(now), int(key_id)],
            )?;
            Ok(Response::new(204, ()))
        }
        _ => Err(ApiError::NotFound(format!("there is no key {key_id}"))),
    }
}
