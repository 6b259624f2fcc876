//! `invoices`: drafts, finalisation, lists and exports.
//!
//! - `POST /api/invoices` (admin) {user_id, period_start, period_end}: a
//!   draft from the user's token and resource line items that are on no
//!   invoice yet and occurred before `period_end` — those of the period,
//!   and any that arrived late for a period already invoiced (they go on
//!   the next invoice). A draft holds its lines by reference (the lines on
//!   no invoice, before its end, that existed when it was made: line ids up
//!   to two marks), so drafting over a million lines writes one row; a
//!   user has at most one draft at a time (409), so no line is on two.
//! - `POST /api/invoices/{id}/finalize` (admin; 409 while its period has
//!   not ended, as events of it may still arrive): takes every line the
//!   draft would take if made now (those that arrived since it was drafted
//!   too), writes the invoice id into exactly those, rounds the exact total to cents once,
//!   half-to-even (the difference is kept), gives the next invoice number
//!   (no gaps: numbers are given only here, one at a time), and freezes it.
//!   Finalizing again answers the same invoice.
//! - `DELETE /api/invoices/{id}` (admin): drops a draft (its lines are free
//!   again); a final invoice never changes (409).
//! - `GET /api/invoices` (own; admin all, `?user_id=`), filters `status`,
//!   `from`, `to` (period); `GET /api/invoices/{id}` with subtotals per
//!   model (and token class) and per resource, lines paginated
//!   (`limit`, `offset`); exports `GET /api/invoices/{id}.csv` and `.json`.
//!
//! Totals are computed by SQLite as exact integer sums over the claimed
//! lines (each line already rounded once, when it was priced).

use billing_core::{Nanos, Timestamp};
use billing_fn_common::db::{col, col_opt, int, text, Filter};
use billing_fn_common::input::{self, json_body, MAX_JSON_BYTES};
use billing_fn_common::problem::Problems;
use billing_fn_common::{clock, json, respond, ApiError, ApiResult, Caller, Db};
use serde::Deserialize;
use serde_json::{json, Value};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(req: Request) -> Response {
    respond(route(&req))
}

fn route(req: &Request) -> ApiResult<Response> {
    let (db, caller) = billing_fn_common::authenticated(req)?;
    let segs = input::segments(req);
    match (req.method(), segs.as_slice()) {
        (Method::Post, ["api", "invoices"]) => create(&db, &caller, req),
        (Method::Get, ["api", "invoices"]) => list(&db, &caller, req),
        (Method::Post, ["api", "invoices", id, "finalize"]) => finalize(&db, &caller, id),
        (Method::Delete, ["api", "invoices", id]) => delete(&db, &caller, id),
        (Method::Get, ["api", "invoices", id]) => match id.rsplit_once('.') {
            Some((id, "csv")) => export_csv(&db, &caller, id),
            Some((id, "json")) => Ok(json(200, &full(&db, &caller, id, i64::MAX, 0)?)),
            Some(_) => Err(ApiError::NotFound(format!(
                "no such export: {id}; use .csv or .json"
            ))),
            None => {
                let q = input::query(req)?;
                let limit = input::int_param(&q, "limit", 100, 1, 1000)?;
                let offset = input::int_param(&q, "offset", 0, 0, i64::MAX)?;
                Ok(json(200, &full(&db, &caller, id, limit, offset)?))
            }
        },
        (_, ["api", "invoices", ..]) => Err(ApiError::MethodNotAllowed(format!(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInvoice {
    user_id: i64,
    period_start: String,
    period_end: String,
}

fn create(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    caller.require_admin()?;
    let body: NewInvoice = json_body(req, MAX_JSON_BYTES)?;
    let mut p = Problems::default();
    let start = p.check(
        Timestamp::parse(&body.period_start)
            .map_err(|e| ApiError::invalid("period_start", e.reason)),
    );
    let end = p.check(
        Timestamp::parse(&body.period_end).map_err(|e| ApiError::invalid("period_end", e.reason)),
    );
    if let (Some(s), Some(e)) = (start, end) {
        if s >= e {
            p.push("period_end", format!("{e} is not after period_start {s}"));
        }
    }
    if db
        .scalar_i64(
            "SELECT user_id FROM dim_users WHERE user_id = ?1",
            &[int(body.user_id)],
        )?
        .is_none()
    {
        p.push("user_id", format!("there is no user {}", body.user_id));
    }
    p.finish()?;
    let (start, end) = (start.expect("checked"), end.expect("checked"));
    let id = db.transaction(|db| {
        // Inside the write transaction: two drafts for one user never coexist.
        if let Some(other) = db.scalar_i64("SELECT invoice_id FROM user_invoices WHERE user_id = ?1 AND status = 'draft'", &[int(body.user_id)])? {
            return Err(ApiError::Conflict(format!(
                "user {} already has draft invoice {other}; finalize or delete it before drafting another",
                body.user_id
            )));
        }
        let mark = |table: &str| db.scalar_i64(&format!("SELECT coalesce(max(line_item_id), 0) FROM {table}"), &[]);
        let (tokens_to, resources_to) = (mark("user_invoice_line_item")?.unwrap_or(0), mark("resource_invoice_line_item")?.unwrap_or(0));
        let id = db
            .scalar_i64(
                "INSERT INTO user_invoices (user_id, period_start, period_end, status, through_token_line_id, through_resource_line_id)
                 VALUES (?1, ?2, ?3, 'draft', ?4, ?5) RETURNING invoice_id",
                &[int(body.user_id), text(start.to_rfc3339()), text(end.to_rfc3339()), int(tokens_to), int(resources_to)],
            )?
            .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
        let lines = Lines::ByReference { user_id: body.user_id, end, tokens_to, resources_to };
        let total = invoice_total(db, &lines)?;
        db.exec("UPDATE user_invoices SET total_nanos = ?1 WHERE invoice_id = ?2", &[int(total), int(id)])?;
        Ok(id)
    })?;
    Ok(json(201, &full(db, caller, &id.to_string(), 100, 0)?))
}

/// Which line items an invoice holds.
enum Lines {
    /// A final invoice's (and a draft's made before migration 0005): the
    /// lines carrying its id.
    Claimed { user_id: i64, invoice_id: i64 },
    /// A draft's: the user's lines on no invoice, before `end`, with ids up
    /// to the marks taken when it was made.
    ByReference {
        user_id: i64,
        end: Timestamp,
        tokens_to: i64,
        resources_to: i64,
    },
}

impl Lines {
    /// The WHERE condition over `table` (a line-item table), columns
    /// prefixed with `alias`. Only integers and a timestamp this component
    /// formatted go into it.
    fn condition(&self, table: &str, alias: &str) -> String {
        match self {
            Lines::Claimed {
                user_id,
                invoice_id,
            } => {
                format!("{alias}user_id = {user_id} AND {alias}invoice_id = {invoice_id}")
            }
            Lines::ByReference {
                user_id,
                end,
                tokens_to,
                resources_to,
            } => {
                let to = if table == "resource_invoice_line_item" {
                    resources_to
                } else {
                    tokens_to
                };
                format!(
                    "{alias}user_id = {user_id} AND {alias}invoice_id IS NULL AND {alias}occurred_at < '{}' AND {alias}line_item_id <= {to}",
                    end.to_rfc3339()
                )
            }
        }
    }
}

/// Exact sum of an invoice's lines (found through the user, by the
/// (user_id, invoice_id, occurred_at) index).
fn invoice_total(db: &Db, lines: &Lines) -> ApiResult<i64> {
    Ok(db
        .scalar_i64(
            &format!(
                "SELECT (SELECT coalesce(sum(cost_nanos), 0) FROM user_invoice_line_item WHERE {})
                      + (SELECT coalesce(sum(cost_nanos), 0) FROM resource_invoice_line_item WHERE {})",
                lines.condition("user_invoice_line_item", ""),
                lines.condition("resource_invoice_line_item", "")
            ),
            &[],
        )?
        .unwrap_or(0))
}

struct Header {
    id: i64,
    user_id: i64,
    status: String,
    lines: Lines,
    json: Value,
}

fn header(db: &Db, caller: &Caller, id: &str) -> ApiResult<Header> {
    let id = input::id(id, "invoice")?;
    let r = db.query(
        "SELECT invoice_id, user_id, period_start, period_end, status, invoice_number, total_nanos, total_cents, rounding_nanos, currency, created_at, finalized_at,
                through_token_line_id, through_resource_line_id
         FROM user_invoices WHERE invoice_id = ?1",
        &[int(id)],
    )?;
    let row = r
        .rows()
        .next()
        .ok_or_else(|| ApiError::NotFound(format!("there is no invoice {id}")))?;
    let user_id: i64 = col(&row, "user_id")?;
    if !caller.may_see(user_id) {
        return Err(ApiError::NotFound(format!("there is no invoice {id}")));
    }
    let status = col::<&str>(&row, "status")?.to_owned();
    let lines = match (
        status.as_str(),
        col_opt::<i64>(&row, "through_token_line_id"),
        col_opt::<i64>(&row, "through_resource_line_id"),
    ) {
        ("draft", Some(tokens_to), Some(resources_to)) => Lines::ByReference {
            user_id,
            end: Timestamp::parse(col(&row, "period_end")?)
                .map_err(|e| ApiError::Internal(format!("invoice {id}: {}", e.reason)))?,
            tokens_to,
            resources_to,
        },
        _ => Lines::Claimed {
            user_id,
            invoice_id: id,
        },
    };
    Ok(Header {
        id,
        user_id,
        status,
        lines,
        json: header_json(&row)?,
    })
}

fn header_json(row: &spin_sdk::sqlite::Row<'_>) -> ApiResult<Value> {
    let total: i64 = col(row, "total_nanos")?;
    let cents = col_opt::<i64>(row, "total_cents");
    let rounding = col_opt::<i64>(row, "rounding_nanos");
    Ok(json!({
        "invoice_id": col::<i64>(row, "invoice_id")?,
        "user_id": col::<i64>(row, "user_id")?,
        "period_start": col::<&str>(row, "period_start")?,
        "period_end": col::<&str>(row, "period_end")?,
        "status": col::<&str>(row, "status")?,
        "invoice_number": col_opt::<i64>(row, "invoice_number"),
        "currency": col::<&str>(row, "currency")?,
        "total_nanos": total,
        "total_exact": Nanos(total).display_usd(),
        "total_cents": cents,
        "total": cents.map(|c| billing_core::Cents(c).display_usd()),
        "rounding_nanos": rounding,
        "rounding": rounding.map(|r| Nanos(r).display_usd()),
        "created_at": col::<&str>(row, "created_at")?,
        "finalized_at": col_opt::<&str>(row, "finalized_at"),
    }))
}

/// The invoice with its subtotals and a page of its lines.
fn full(db: &Db, caller: &Caller, id: &str, limit: i64, offset: i64) -> ApiResult<Value> {
    let h = header(db, caller, id)?;
    let (tok, res) = (
        h.lines.condition("user_invoice_line_item", "l."),
        h.lines.condition("resource_invoice_line_item", ""),
    );
    let models = db.query(
        &format!(
            "SELECT m.model_name AS model, s.token_class AS class, s.tokens, s.cost, s.n FROM (
                 SELECT l.model_id, l.token_class, sum(l.tokens) AS tokens, sum(l.cost_nanos) AS cost, count(*) AS n
                 FROM user_invoice_line_item l WHERE {tok} GROUP BY l.model_id, l.token_class
             ) s JOIN dim_models m USING (model_id) ORDER BY m.model_name, s.token_class"
        ),
        &[],
    )?;
    // The line count comes with the subtotals: one pass over the lines.
    let mut line_count = 0i64;
    let mut by_model: Vec<Value> = Vec::new();
    for row in models.rows() {
        line_count += col::<i64>(&row, "n")?;
        let model = col::<&str>(&row, "model")?;
        let cost: i64 = col(&row, "cost")?;
        let class = json!({"token_class": col::<&str>(&row, "class")?, "tokens": col::<i64>(&row, "tokens")?, "cost_nanos": cost, "cost": Nanos(cost).display_usd()});
        match by_model.last_mut() {
            Some(m) if m["model"] == model => {
                m["classes"].as_array_mut().unwrap().push(class);
                let c = m["cost_nanos"].as_i64().unwrap() + cost;
                m["cost_nanos"] = json!(c);
                m["cost"] = json!(Nanos(c).display_usd());
            }
            _ => by_model.push(json!({"model": model, "classes": [class], "cost_nanos": cost, "cost": Nanos(cost).display_usd()})),
        }
    }
    let resources = db.query(
        &format!("SELECT resource, sum(quantity) AS quantity, sum(cost_nanos) AS cost, count(*) AS n FROM resource_invoice_line_item WHERE {res} GROUP BY resource ORDER BY resource"),
        &[],
    )?;
    let by_resource = resources
        .rows()
        .map(|row| {
            let cost: i64 = col(&row, "cost")?;
            line_count += col::<i64>(&row, "n")?;
            Ok(json!({"resource": col::<&str>(&row, "resource")?, "quantity": col::<i64>(&row, "quantity")?, "cost_nanos": cost, "cost": Nanos(cost).display_usd()}))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let lines = db.query(
        &format!(
            "SELECT * FROM (
                 SELECT 'token' AS kind, l.line_item_id, l.occurred_at, m.model_name AS item, l.token_class AS detail, l.tokens AS quantity, l.unit_price, l.cost_nanos, l.thread_id, l.source, l.event_id
                 FROM user_invoice_line_item l JOIN dim_models m USING (model_id) WHERE {tok}
                 UNION ALL
                 SELECT 'resource', line_item_id, occurred_at, resource, NULL, quantity, unit_price, cost_nanos, NULL, source, event_id
                 FROM resource_invoice_line_item WHERE {res}
             ) ORDER BY occurred_at, kind DESC, line_item_id LIMIT ?1 OFFSET ?2"
        ),
        &[int(limit), int(offset)],
    )?;
    let lines = lines
        .rows()
        .map(|row| {
            let cost: i64 = col(&row, "cost_nanos")?;
            Ok(json!({
                "kind": col::<&str>(&row, "kind")?, "line_item_id": col::<i64>(&row, "line_item_id")?, "occurred_at": col::<&str>(&row, "occurred_at")?,
                "item": col::<&str>(&row, "item")?, "token_class": col_opt::<&str>(&row, "detail"), "quantity": col::<i64>(&row, "quantity")?,
                "unit_price": col::<i64>(&row, "unit_price")?, "cost_nanos": cost, "cost": Nanos(cost).display_usd(),
                "thread_id": col_opt::<i64>(&row, "thread_id"), "source": col::<&str>(&row, "source")?, "event_id": col::<&str>(&row, "event_id")?,
            }))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let mut v = h.json;
    v["models"] = json!(by_model);
    v["resources"] = json!(by_resource);
    v["line_count"] = json!(line_count);
    v["lines"] = json!(lines);
    Ok(v)
}

fn finalize(db: &Db, caller: &Caller, id: &str) -> ApiResult<Response> {
    caller.require_admin()?;
    let h = header(db, caller, id)?;
    if h.status == "draft" {
        // A period still running may receive events: finalized now, the
        // invoice would leave some of its period's usage to the next one.
        // Once it has ended, finalizing takes every line of it there is.
        let now = clock::now();
        if let Some(end) = h.json["period_end"]
            .as_str()
            .and_then(|e| Timestamp::parse(e).ok())
        {
            if end > now {
                return Err(ApiError::Conflict(format!(
                    "invoice {} covers a period ending {end}, after now ({now}); events of it may still arrive. Finalize it once the period has ended: it then takes every line of the period",
                    h.id
                )));
            }
        }
        db.transaction(|db| {
            // Re-read inside the write transaction: a concurrent finalize may have won.
            let still_draft = db.scalar_i64("SELECT 1 FROM user_invoices WHERE invoice_id = ?1 AND status = 'draft'", &[int(h.id)])?.is_some();
            if !still_draft {
                return Ok(());
            }
            // A draft by reference: finalized, it takes every line of its
            // period that exists now (those that arrived since it was
            // drafted too), and they get its id.
            if let Lines::ByReference { user_id, end, .. } = h.lines {
                let mark = |table: &str| db.scalar_i64(&format!("SELECT coalesce(max(line_item_id), 0) FROM {table}"), &[]);
                let (tokens_to, resources_to) = (mark("user_invoice_line_item")?.unwrap_or(0), mark("resource_invoice_line_item")?.unwrap_or(0));
                db.exec(
                    "UPDATE user_invoices SET through_token_line_id = ?1, through_resource_line_id = ?2 WHERE invoice_id = ?3",
                    &[int(tokens_to), int(resources_to), int(h.id)],
                )?;
                let lines = Lines::ByReference { user_id, end, tokens_to, resources_to };
                for table in ["user_invoice_line_item", "resource_invoice_line_item"] {
                    db.exec(&format!("UPDATE {table} SET invoice_id = ?1 WHERE {}", lines.condition(table, "")), &[int(h.id)])?;
                }
            }
            let total = Nanos(invoice_total(db, &Lines::Claimed { user_id: h.user_id, invoice_id: h.id })?);
            let (cents, rounding) = total.round_to_cents();
            let number = db.scalar_i64("SELECT coalesce(max(invoice_number), 0) + 1 FROM user_invoices", &[])?.unwrap_or(1);
            db.exec(
                "UPDATE user_invoices SET status = 'final', invoice_number = ?1, total_nanos = ?2, total_cents = ?3, rounding_nanos = ?4, finalized_at = ?5 WHERE invoice_id = ?6",
                &[int(number), int(total.0), int(cents.0), int(rounding.0), text(clock::now().to_rfc3339()), int(h.id)],
            )
        })?;
    }
    Ok(json(200, &full(db, caller, id, 100, 0)?))
}

fn delete(db: &Db, caller: &Caller, id: &str) -> ApiResult<Response> {
    caller.require_admin()?;
    let h = header(db, caller, id)?;
    if h.status == "final" {
        return Err(ApiError::Conflict(format!(
            "invoice {} is final and never changes",
            h.id
        )));
    }
    db.transaction(|db| {
        // A draft made before drafts held lines by reference frees its claimed lines.
        if let Lines::Claimed { .. } = h.lines {
            db.exec("UPDATE user_invoice_line_item SET invoice_id = NULL WHERE user_id = ?2 AND invoice_id = ?1", &[int(h.id), int(h.user_id)])?;
            db.exec("UPDATE resource_invoice_line_item SET invoice_id = NULL WHERE user_id = ?2 AND invoice_id = ?1", &[int(h.id), int(h.user_id)])?;
        }
        db.exec("DELETE FROM user_invoices WHERE invoice_id = ?1 AND status = 'draft'", &[int(h.id)])
    })?;
    Ok(Response::new(204, ()))
}

fn list(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    let q = input::query(req)?;
    let limit = input::int_param(&q, "limit", 50, 1, 200)?;
    let offset = input::int_param(&q, "offset", 0, 0, i64::MAX)?;
    let mut f = Filter::default();
    match q.get("user_id") {
        Some(u) => f.bind(
            "user_id = ?",
            int(input::owned_by(caller, u, "user_id", "invoices")?),
        ),
        None if caller.is_admin() => {}
        None => f.bind("user_id = ?", int(caller.user_id)),
    }
    match q.get("status").map(String::as_str) {
        None => {}
        Some(s @ ("draft" | "final")) => f.bind("status = ?", text(s)),
        Some(other) => {
            return Err(ApiError::invalid(
                "status",
                format!("`{other}` must be draft or final"),
            ))
        }
    }
    if let Some(from) = input::time_param(&q, "from")? {
        f.bind("period_end > ?", text(from.to_rfc3339()));
    }
    if let Some(to) = input::time_param(&q, "to")? {
        f.bind("period_start < ?", text(to.to_rfc3339()));
    }
    let filter = f.sql();
    let total = db
        .scalar_i64(
            &format!("SELECT count(*) FROM user_invoices{filter}"),
            &f.params,
        )?
        .unwrap_or(0);
    let (page, params) = f.paged(limit, offset);
    let r = db.query(
        &format!(
            "SELECT invoice_id, user_id, period_start, period_end, status, invoice_number, total_nanos, total_cents, rounding_nanos, currency, created_at, finalized_at
             FROM user_invoices{filter} ORDER BY period_start DESC, invoice_id DESC{page}"
        ),
        &params,
    )?;
    let items = r
        .rows()
        .map(|row| header_json(&row))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(json(
        200,
        &json!({ "items": items, "total": total, "limit": limit, "offset": offset }),
    ))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn export_csv(db: &Db, caller: &Caller, id: &str) -> ApiResult<Response> {
    let inv = full(db, caller, id, i64::MAX, 0)?;
    let mut out = String::from("line_item_id,kind,occurred_at,item,token_class,quantity,unit_price_micro_usd_per_million,cost_nano_usd,cost_usd,source,event_id\n");
    for l in inv["lines"].as_array().unwrap() {
        let f = |k: &str| match &l[k] {
            Value::String(s) => csv_field(s),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        out.push_str(
            &[
                f("line_item_id"),
                f("kind"),
                f("occurred_at"),
                f("item"),
                f("token_class"),
                f("quantity"),
                f("unit_price"),
                f("cost_nanos"),
                f("cost"),
                f("source"),
                f("event_id"),
            ]
            .join(","),
        );
        out.push('\n');
    }
    out.push_str(&format!(
        ",total,,,,,,{},{},,\n",
        inv["total_nanos"],
        inv["total_exact"].as_str().unwrap_or("")
    ));
    if let Some(c) = inv["total"].as_str() {
        out.push_str(&format!(
            ",total_charged,,,,,,,{c},,\n,rounding,,,,,,{},{},,\n",
            inv["rounding_nanos"],
            inv["rounding"].as_str().unwrap_or("")
        ));
    }
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/csv; charset=utf-8")
        .header(
            "content-disposition",
            format!("attachment; filename=\"invoice-{}.csv\"", inv["invoice_id"]),
        )
        .body(out)
        .build())
}
