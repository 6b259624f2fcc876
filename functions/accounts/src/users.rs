//! Users: who they are, created and disabled by an admin.

use billing_fn_common::db::{col, col_opt, int, text};
use billing_fn_common::input::{self, json_body, text_field, MAX_JSON_BYTES};
use billing_fn_common::problem::Problems;
use billing_fn_common::{json, ApiError, ApiResult, Caller, Db, Role};
use serde::{Deserialize, Serialize};
use spin_sdk::http::{Request, Response};

#[derive(Serialize)]
pub struct User {
    pub user_id: i64,
    pub name: String,
    pub email: String,
    pub role: String,
    pub default_model: Option<String>,
    pub disabled_at: Option<String>,
    pub created_at: String,
}

const SELECT: &str = "SELECT u.user_id, u.name, u.email, u.role, m.model_name AS default_model, u.disabled_at, u.created_at
    FROM dim_users u LEFT JOIN dim_models m ON m.model_id = u.default_model_id";

fn read(r: &spin_sdk::sqlite::QueryResult) -> ApiResult<Vec<User>> {
    r.rows()
        .map(|row| {
            Ok(User {
                user_id: col(&row, "user_id")?,
                name: col::<&str>(&row, "name")?.to_owned(),
                email: col::<&str>(&row, "email")?.to_owned(),
                role: col::<&str>(&row, "role")?.to_owned(),
                default_model: col_opt::<&str>(&row, "default_model").map(str::to_owned),
                disabled_at: col_opt::<&str>(&row, "disabled_at").map(str::to_owned),
                created_at: col::<&str>(&row, "created_at")?.to_owned(),
            })
        })
        .collect()
}

pub fn load(db: &Db, user_id: i64) -> ApiResult<Option<User>> {
    Ok(
        read(&db.query(&format!("{SELECT} WHERE u.user_id = ?1"), &[int(user_id)])?)?
            .into_iter()
            .next(),
    )
}

pub fn me(db: &Db, caller: &Caller) -> ApiResult<Response> {
    let user = load(db, caller.user_id)?
        .ok_or_else(|| ApiError::NotFound("your user no longer exists".into()))?;
    Ok(json(200, &user))
}

pub fn list(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    caller.require_admin()?;
    let q = input::query(req)?;
    let limit = input::int_param(&q, "limit", 50, 1, 500)?;
    let offset = input::int_param(&q, "offset", 0, 0, i64::MAX)?;
    let users = read(&db.query(
        &format!("{SELECT} ORDER BY u.user_id LIMIT ?1 OFFSET ?2"),
        &[int(limit), int(offset)],
    )?)?;
    let total = db
        .scalar_i64("SELECT count(*) FROM dim_users", &[])?
        .unwrap_or(0);
    Ok(json(
        200,
        &serde_json::json!({ "items": users, "total": total, "limit": limit, "offset": offset }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    email: String,
    #[serde(default = "default_role")]
    role: String,
    #[serde(default)]
    default_model: Option<String>,
}

fn default_role() -> String {
    "user".into()
}

pub fn create(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    caller.require_admin()?;
    let body: NewUser = json_body(req, MAX_JSON_BYTES)?;
    let mut p = Problems::default();
    let name = p.check(text_field("name", &body.name, 200));
    let email = body.email.trim().to_owned();
    let at = email.find('@');
    if email.len() > 320
        || at.is_none_or(|i| i == 0 || i == email.len() - 1)
        || email.contains(char::is_whitespace)
    {
        p.push("email", format!("`{email}` is not an email address"));
    }
    let role = p.check(Role::parse(&body.role));
    let model_id = match &body.default_model {
        None => None,
        Some(m) => {
            let id = db.scalar_i64(
                "SELECT model_id FROM dim_models WHERE model_name = ?1 AND is_active = 1",
                &[text(m.clone())],
            )?;
            if id.is_none() {
                p.push("default_model", format!("`{m}` is not an active model"));
            }
            id
        }
    };
    p.finish()?;
    let (name, role) = (name.expect("checked"), role.expect("checked"));
    if db
        .scalar_i64(
            "SELECT user_id FROM dim_users WHERE email = ?1",
            &[text(email.clone())],
        )?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "a user with email {email} already exists"
        )));
    }
    let id = db
        .scalar_i64(
            "INSERT INTO dim_users (name, email, role, default_model_id) VALUES (?1, ?2, ?3, ?4) RETURNING user_id",
            &[text(name), text(email), text(role.as_str()), billing_fn_common::db::opt_int(model_id)],
        )?
        .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
    Ok(json(201, &load(db, id)?))
}

pub fn disable(db: &Db, caller: &Caller, id: &str) -> ApiResult<Response> {
    caller.require_admin()?;
    let id = input::id(id, "user")?;
    if id == caller.user_id {
        return Err(ApiError::Conflict("you cannot disable yourself".into()));
    }
    let now = billing_fn_common::clock::now().to_rfc3339();
    let changed = db.query("UPDATE dim_users SET disabled_at = coalesce(disabled_at, ?1) WHERE user_id = ?2 RETURNING user_id", &[text(now), int(id)])?;
    if changed.rows.is_empty() {
        return Err(ApiError::NotFound(format!("there is no user {id}")));
    }
    Ok(json(200, &load(db, id)?))
}
