//! `messages`: the chat turn.
//!
//! - `POST /api/threads/{id}/messages` {content, model?}: calls the model,
//!   then writes the user message, the answer, its `message_tokens` row and
//!   three outbox events (raw-messages, llm-responses, token-metrics) in ONE
//!   transaction, nudges the bridge through Redis, and answers 201 with the
//!   answer, its usage per token class and its cost.
//! - The same with `"stream": true`: the answer as server-sent events while
//!   the model writes, stored and billed the same way at its end ([`stream`]).
//! - `GET /api/threads/{id}/messages`: the history, paginated, with tokens,
//!   cost and latency per message.
//!
//! A failed provider call bills nothing: the user message is kept, marked
//! `failed` with the reason, and no answer, tokens or events are written.

mod history;
mod provider;
mod send;
mod stream;

use billing_fn_common::{respond, ApiError, ApiResult, Db};
use send::Answer;
use spin_sdk::http::{Method, Request, ResponseOutparam};
use spin_sdk::http_component;

#[http_component]
async fn handle(req: Request, out: ResponseOutparam) {
    match route(&req).await {
        Ok(Answer::Stream(turn)) => turn.run(out).await,
        Ok(Answer::Whole(response)) => stream::write_whole(out, response).await,
        Err(e) => stream::write_whole(out, respond(Err(e))).await,
    }
}

async fn route(req: &Request) -> ApiResult<Answer> {
    let (db, caller) = billing_fn_common::authenticated(req)?;
    let segs = billing_fn_common::input::segments(req);
    match (req.method(), segs.as_slice()) {
        (Method::Post, ["api", "threads", id, "messages"]) => {
            send::send(db, &caller, req, id).await
        }
        (Method::Get, ["api", "threads", id, "messages"]) => {
            history::list(&db, &caller, req, id).map(Answer::Whole)
        }
        (_, ["api", "threads", _, "messages"]) => Err(ApiError::MethodNotAllowed(format!(
            "{} is not allowed here; use GET or POST",
            req.method()
        ))),
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: {}",
            req.path()
        ))),
    }
}

/// The thread (id, owner, model id, archived?) if the caller may see it.
pub(crate) fn visible_thread(
    db: &Db,
    caller: &billing_fn_common::Caller,
    id: &str,
) -> ApiResult<(i64, i64, i64, bool)> {
    use billing_fn_common::db::{col, col_opt, int};
    let thread_id = billing_fn_common::input::id(id, "thread")?;
    let r = db.query(
        "SELECT user_id, model_id, archived_at FROM user_threads WHERE thread_id = ?1",
        &[int(thread_id)],
    )?;
    let row = r.rows().next();
    match row {
        Some(row) => {
            let owner: i64 = col(&row, "user_id")?;
            if !caller.may_see(owner) {
                return Err(ApiError::NotFound(format!(
                    "there is no thread {thread_id}"
                )));
            }
            Ok((
                thread_id,
                owner,
                col(&row, "model_id")?,
                col_opt::<&str>(&row, "archived_at").is_some(),
            ))
        }
        None => Err(ApiError::NotFound(format!(
            "there is no thread {thread_id}"
        ))),
    }
}
