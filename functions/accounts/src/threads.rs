//! Threads: a user's conversations, with their running totals.

use billing_core::Nanos;
use billing_fn_common::db::{col, col_opt, int, text, Filter};
use billing_fn_common::input::{self, json_body, text_field, MAX_JSON_BYTES};
use billing_fn_common::problem::Problems;
use billing_fn_common::{json, ApiError, ApiResult, Caller, Db};
use serde::{Deserialize, Serialize};
use spin_sdk::http::{Request, Response};

#[derive(Serialize)]
struct Thread {
    thread_id: i64,
    user_id: i64,
    title: String,
    model: String,
    created_at: String,
    updated_at: String,
    archived: bool,
    archived_at: Option<String>,
    message_count: i64,
    tokens: i64,
    cost_nanos: i64,
    cost: String,
}

const SELECT: &str = "SELECT t.thread_id, t.user_id, t.title, m.model_name AS model, t.created_at, t.updated_at, t.archived_at,
    (SELECT count(*) FROM user_thread_messages x WHERE x.thread_id = t.thread_id) AS message_count,
    coalesce((SELECT sum(input_tokens + output_tokens + cache_creation_input_tokens + cache_read_input_tokens) FROM message_tokens k WHERE k.thread_id = t.thread_id), 0) AS tokens,
    coalesce((SELECT sum(cost_nanos) FROM message_tokens k WHERE k.thread_id = t.thread_id), 0) AS cost_nanos
    FROM user_threads t JOIN dim_models m ON m.model_id = t.model_id";

fn read(r: &spin_sdk::sqlite::QueryResult) -> ApiResult<Vec<Thread>> {
    r.rows()
        .map(|row| {
            let archived_at = col_opt::<&str>(&row, "archived_at").map(str::to_owned);
            let cost_nanos: i64 = col(&row, "cost_nanos")?;
            Ok(Thread {
                thread_id: col(&row, "thread_id")?,
                user_id: col(&row, "user_id")?,
                title: col::<&str>(&row, "title")?.to_owned(),
                model: col::<&str>(&row, "model")?.to_owned(),
                created_at: col::<&str>(&row, "created_at")?.to_owned(),
                updated_at: col::<&str>(&row, "updated_at")?.to_owned(),
                archived: archived_at.is_some(),
                archived_at,
                message_count: col(&row, "message_count")?,
                tokens: col(&row, "tokens")?,
                cost_nanos,
                cost: Nanos(cost_nanos).display_usd(),
            })
        })
        .collect()
}

/// The thread if the caller may see it; 404 otherwise.
fn load_visible(db: &Db, caller: &Caller, id: &str) -> ApiResult<Thread> {
    let id = input::id(id, "thread")?;
    let t = read(&db.query(&format!("{SELECT} WHERE t.thread_id = ?1"), &[int(id)])?)?
        .into_iter()
        .next();
    match t {
        Some(t) if caller.may_see(t.user_id) => Ok(t),
        _ => Err(ApiError::NotFound(format!("there is no thread {id}"))),
    }
}

/// An active model's id, or a field problem naming it.
fn active_model(db: &Db, field: &str, name: &str) -> ApiResult<i64> {
    db.scalar_i64(
        "SELECT model_id FROM dim_models WHERE model_name = ?1 AND is_active = 1",
        &[text(name)],
    )?
    .ok_or_else(|| ApiError::invalid(field, format!("`{name}` is not an active model")))
}

fn default_model(db: &Db, caller: &Caller) -> ApiResult<i64> {
    if let Some(id) = db.scalar_i64(
        "SELECT default_model_id FROM dim_users WHERE user_id = ?1",
        &[int(caller.user_id)],
    )? {
        return Ok(id);
    }
    let name = spin_sdk::variables::get("default_model")
        .unwrap_or_else(|_| "claude-haiku-4-5-20251001".into());
    active_model(db, "model", &name)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewThread {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

pub fn create(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    let body: NewThread = if req.body().is_empty() {
        NewThread::default()
    } else {
        json_body(req, MAX_JSON_BYTES)?
    };
    let mut p = Problems::default();
    let title = match &body.title {
        Some(t) => p.check(text_field("title", t, 200)),
        None => Some("New thread".to_owned()),
    };
    let model_id = match &body.model {
        Some(m) => p.check(active_model(db, "model", m)),
        None => Some(default_model(db, caller)?),
    };
    p.finish()?;
    let now = billing_fn_common::clock::now().to_rfc3339();
    let id = db
        .scalar_i64(
            "INSERT INTO user_threads (user_id, title, model_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) RETURNING thread_id",
            &[int(caller.user_id), text(title.expect("checked")), int(model_id.expect("checked")), text(now)],
        )?
        .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
    Ok(json(201, &load_visible(db, caller, &id.to_string())?))
}

pub fn list(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    let q = input::query(req)?;
    let limit = input::int_param(&q, "limit", 50, 1, 200)?;
    let offset = input::int_param(&q, "offset", 0, 0, i64::MAX)?;
    let mut f = Filter::default();
    match q.get("user_id") {
        Some(u) => f.bind(
            "t.user_id = ?",
            int(input::owned_by(caller, u, "user_id", "threads")?),
        ),
        None if caller.is_admin() && q.get("all").is_some_and(|v| v == "true") => {}
        None => f.bind("t.user_id = ?", int(caller.user_id)),
    }
    if let Some(text_filter) = q.get("q").filter(|s| !s.is_empty()) {
        let escaped = text_filter
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        f.bind("t.title LIKE ? ESCAPE '\\'", text(format!("%{escaped}%")));
    }
    match q.get("archived").map(String::as_str) {
        None | Some("false") => f.raw("t.archived_at IS NULL"),
        Some("true") => f.raw("t.archived_at IS NOT NULL"),
        Some("all") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "archived",
                format!("`{other}` must be true, false or all"),
            ))
        }
    }
    if let Some(from) = input::time_param(&q, "from")? {
        f.bind("t.created_at >= ?", text(from.to_rfc3339()));
    }
    if let Some(to) = input::time_param(&q, "to")? {
        f.bind("t.created_at < ?", text(to.to_rfc3339()));
    }
    let filter = f.sql();
    let total = db
        .scalar_i64(
            &format!("SELECT count(*) FROM user_threads t{filter}"),
            &f.params,
        )?
        .unwrap_or(0);
    let (page, params) = f.paged(limit, offset);
    let sql = format!("{SELECT}{filter} ORDER BY t.updated_at DESC, t.thread_id DESC{page}");
    let items = read(&db.query(&sql, &params)?)?;
    Ok(json(
        200,
        &serde_json::json!({ "items": items, "total": total, "limit": limit, "offset": offset }),
    ))
}

pub fn get(db: &Db, caller: &Caller, id: &str) -> ApiResult<Response> {
    Ok(json(200, &load_visible(db, caller, id)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThreadUpdate {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    archived: Option<bool>,
    #[serde(default)]
    model: Option<String>,
}

pub fn update(db: &Db, caller: &Caller, req: &Request, id: &str) -> ApiResult<Response> {
    let thread = load_visible(db, caller, id)?;
    let body: ThreadUpdate = json_body(req, MAX_JSON_BYTES)?;
    let mut p = Problems::default();
    let title = body
        .title
        .as_deref()
        .and_then(|t| p.check(text_field("title", t, 200)));
    let model_id = body
        .model
        .as_deref()
        .and_then(|m| p.check(active_model(db, "model", m)));
    if body.title.is_none() && body.archived.is_none() && body.model.is_none() {
        p.push("body", "give at least one of title, archived, model");
    }
    p.finish()?;
    let now = billing_fn_common::clock::now().to_rfc3339();
    db.transaction(|db| {
        if let Some(t) = title {
            db.exec("UPDATE user_threads SET title = ?1, updated_at = ?2 WHERE thread_id = ?3", &[text(t), text(now.clone()), int(thread.thread_id)])?;
        }
        if let Some(m) = model_id {
            db.exec("UPDATE user_threads SET model_id = ?1, updated_at = ?2 WHERE thread_id = ?3", &[int(m), text(now.clone()), int(thread.thread_id)])?;
        }
        match body.archived {
            Some(true) => db.exec(
                "UPDATE user_threads SET archived_at = coalesce(archived_at, ?1) WHERE thread_id = ?2",
                &[text(now.clone()), int(thread.thread_id)],
            )?,
            Some(false) => db.exec("UPDATE user_threads SET archived_at = NULL WHERE thread_id = ?1", &[int(thread.thread_id)])?,
            None => {}
        }
        Ok(())
    })?;
    Ok(json(200, &load_visible(db, caller, id)?))
}
