//! API keys. `Authorization: Bearer KEY`; keys are stored as SHA-256 and
//! shown once, when created. The bootstrap admin key is the application
//! variable `admin_api_key` (component variable of the same name): it acts
//! as the first admin user.

use crate::db::{text, Db};
use crate::problem::{ApiError, ApiResult};
use serde::Serialize;
use sha2::{Digest, Sha256};
use spin_sdk::http::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn parse(s: &str) -> ApiResult<Self> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            other => Err(ApiError::invalid(
                "role",
                format!("`{other}` is not a role; use admin or user"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub user_id: i64,
    pub role: Role,
    pub name: String,
    pub email: String,
    /// The API key used (`api_keys.key_id`); none for the bootstrap admin key.
    #[serde(skip)]
    pub key_id: Option<i64>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("only an admin may do this".into()))
        }
    }

    /// Whether the caller may see data owned by `owner`. Callers who may not
    /// get 404, not 403, so ids of other users' data leak nothing.
    pub fn may_see(&self, owner: i64) -> bool {
        self.is_admin() || self.user_id == owner
    }
}

pub const KEY_PREFIX: &str = "lcb_";

pub fn hash_key(key: &str) -> String {
    sha256_hex(key)
}

/// SHA-256 of `text`, in hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A fresh key: `lcb_` and 40 hex digits (160 random bits). Returns the
/// key, its display prefix and its hash.
pub fn new_key() -> ApiResult<(String, String, String)> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    let prefix = key[..KEY_PREFIX.len() + 8].to_owned();
    let hash = hash_key(&key);
    Ok((key, prefix, hash))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(req: &Request) -> ApiResult<String> {
    let header = req
        .header("authorization")
        .and_then(|h| h.as_str())
        .ok_or_else(|| {
            ApiError::Unauthorized("send an API key: Authorization: Bearer <key>".into())
        })?;
    let key = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be `Bearer <key>`".into())
        })?;
    Ok(key.to_owned())
}

fn load_user(db: &Db, sql: &str, param: String) -> ApiResult<Option<(Caller, bool)>> {
    let r = db.query(sql, &[text(param)])?;
    let Some(row) = r.rows().next() else {
        return Ok(None);
    };
    let caller = Caller {
        user_id: crate::db::col(&row, "user_id")?,
        role: Role::parse(crate::db::col(&row, "role")?)?,
        name: crate::db::col::<&str>(&row, "name")?.to_owned(),
        email: crate::db::col::<&str>(&row, "email")?.to_owned(),
        key_id: row.get::<i64>("key_id"),
    };
    let disabled = crate::db::col_opt::<&str>(&row, "disabled_at").is_some();
    Ok(Some((caller, disabled)))
}

/// Identifies the caller or refuses: 401 for a missing, unknown or revoked
/// key; 403 for a disabled account.
pub fn authenticate(req: &Request, db: &Db) -> ApiResult<Caller> {
    let key = bearer(req)?;
    let bootstrap = spin_sdk::variables::get("admin_api_key").unwrap_or_default();
    let found = if !bootstrap.is_empty() && constant_time_eq(bootstrap.as_bytes(), key.as_bytes()) {
        load_user(
            db,
            "SELECT user_id, role, name, email, disabled_at, NULL AS key_id FROM dim_users WHERE role = ?1 ORDER BY user_id LIMIT 1",
            "admin".into(),
        )?
    } else {
        load_user(
            db,
            "SELECT u.user_id, u.role, u.name, u.email, u.disabled_at, k.key_id
             FROM api_keys k JOIN dim_users u ON u.user_id = k.user_id
             WHERE k.key_hash = ?1 AND k.revoked_at IS NULL",
            hash_key(&key),
        )?
    };
    match found {
        None => Err(ApiError::Unauthorized(
            "the API key is not valid or has been revoked".into(),
        )),
        Some((_, true)) => Err(ApiError::Forbidden("this account is disabled".into())),
        Some((caller, false)) => Ok(caller),
    }
}
