//! A thread's messages, oldest first, with tokens, cost and latency.

use billing_core::Nanos;
use billing_fn_common::db::{col, col_opt, int};
use billing_fn_common::{input, json, ApiResult, Caller, Db};
use serde_json::json;
use spin_sdk::http::{Request, Response};

/// `?limit=` (1–200, default 50) messages after `?after_id=` (default: from the start).
pub fn list(db: &Db, caller: &Caller, req: &Request, thread: &str) -> ApiResult<Response> {
    let (thread_id, ..) = crate::visible_thread(db, caller, thread)?;
    let q = input::query(req)?;
    let limit = input::int_param(&q, "limit", 50, 1, 200)?;
    let after = input::int_param(&q, "after_id", 0, 0, i64::MAX)?;
    let r = db.query(
        "SELECT m.message_id, m.role, m.content, d.model_name AS model, m.status, m.error, m.reply_to_message_id, m.latency_ms, m.created_at,
                t.input_tokens, t.output_tokens, t.cache_write_5m_tokens, t.cache_write_1h_tokens, t.cache_read_input_tokens, t.cost_nanos, t.pricing_id
         FROM user_thread_messages m
         LEFT JOIN dim_models d ON d.model_id = m.model_id
         LEFT JOIN message_tokens t ON t.message_id = m.message_id
         WHERE m.thread_id = ?1 AND m.message_id > ?2 ORDER BY m.message_id LIMIT ?3",
        &[int(thread_id), int(after), int(limit)],
    )?;
    let items = r
        .rows()
        .map(|row| {
            let cost = col_opt::<i64>(&row, "cost_nanos");
            let tokens = cost.map(|_| {
                json!({
                    "input": col_opt::<i64>(&row, "input_tokens"),
                    "output": col_opt::<i64>(&row, "output_tokens"),
                    "cache_write_5m": col_opt::<i64>(&row, "cache_write_5m_tokens"),
                    "cache_write_1h": col_opt::<i64>(&row, "cache_write_1h_tokens"),
                    "cache_read": col_opt::<i64>(&row, "cache_read_input_tokens"),
                })
            });
            Ok(json!({
                "message_id": col::<i64>(&row, "message_id")?,
                "role": col::<&str>(&row, "role")?,
                "content": col::<&str>(&row, "content")?,
                "model": col_opt::<&str>(&row, "model"),
                "status": col::<&str>(&row, "status")?,
                "error": col_opt::<&str>(&row, "error"),
                "reply_to_message_id": col_opt::<i64>(&row, "reply_to_message_id"),
                "latency_ms": col_opt::<i64>(&row, "latency_ms"),
                "created_at": col::<&str>(&row, "created_at")?,
                "tokens": tokens,
                "cost": cost.map(|n| json!({"nanos": n, "display": Nanos(n).display_usd(), "pricing_id": col_opt::<i64>(&row, "pricing_id")})),
            }))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let next = items
        .last()
        .and_then(|m| m["message_id"].as_i64())
        .filter(|_| items.len() as i64 == limit);
    Ok(json(
        200,
        &json!({ "thread_id": thread_id, "items": items, "next_after_id": next }),
    ))
}
