//! `pricing`: models, effective-dated prices and quotes.
//!
//! - `GET /api/models`: every model, active and retired, with its price now
//!   and its aliases. Adding models and aliases, retiring models:
//!   [`catalogue`].
//! - `GET /api/pricing` (`?at=`, `?model=`): the version in force at `at`
//!   (default now) per model, and each model's history.
//! - `POST /api/pricing` (admin): a new version for a model. It may not
//!   start in the past, nor inside a finalized invoice's period, nor at the
//!   instant another version starts; every price is a non-negative integer
//!   in micro-USD per million tokens. Versions never overlap: one holds
//!   until the next starts.
//! - `POST /api/price/quote` {model, usage by class, at?}: cost per class and total.
//! - `GET /api/resource-pricing`, `POST /api/resource-pricing` (admin): the
//!   same for resources (per request, per millisecond of compute, …).

use billing_core::pricing::{
    check_new_version, History, PriceBook, PriceRules, PriceVersion, ResourcePriceVersion,
    TokenPrices,
};
use billing_core::usage::CacheCreation;
use billing_core::{PricePerMillion, Timestamp, Usage};
use billing_fn_common::cache::Cache;
use billing_fn_common::db::{col, col_opt, int, text};
use billing_fn_common::input::{self, json_body, text_field, MAX_JSON_BYTES};
use billing_fn_common::prices::{self, model_by_name, Model};
use billing_fn_common::problem::Problems;
use billing_fn_common::{clock, json, respond, ApiError, ApiResult, Caller, Db};
use serde::Deserialize;
use serde_json::{json, Value};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

mod catalogue;

#[http_component]
fn handle(req: Request) -> Response {
    respond(route(&req))
}

fn route(req: &Request) -> ApiResult<Response> {
    let (db, caller) = billing_fn_common::authenticated(req)?;
    let segs = input::segments(req);
    match (req.method(), segs.as_slice()) {
        (Method::Get, ["api", "models"]) => models(&db),
        (Method::Post, ["api", "models"]) => catalogue::new_model(&db, &caller, req),
        (Method::Get, ["api", "models", "aliases"]) => catalogue::aliases(&db),
        (Method::Post, ["api", "models", "aliases"]) => catalogue::new_alias(&db, &caller, req),
        (Method::Delete, ["api", "models", "aliases", alias]) => {
            catalogue::delete_alias(&db, &caller, &input::decoded(alias, "alias")?)
        }
        (Method::Patch, ["api", "models", name]) => {
            catalogue::change_model(&db, &caller, req, &input::decoded(name, "model")?)
        }
        (Method::Get, ["api", "pricing"]) => pricing(&db, req),
        (Method::Post, ["api", "pricing"]) => new_version(&db, &caller, req),
        (Method::Post, ["api", "price", "quote"]) => quote_usage(&db, req),
        (Method::Get, ["api", "resource-pricing"]) => resource_pricing(&db, req),
        (Method::Post, ["api", "resource-pricing"]) => new_resource_version(&db, &caller, req),
        (
            _,
            ["api", "models" | "pricing" | "resource-pricing"]
            | ["api", "price", "quote"]
            | ["api", "models", _]
            | ["api", "models", "aliases", _],
        ) => Err(ApiError::MethodNotAllowed(format!(
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

fn all_models(db: &Db) -> ApiResult<Vec<(Model, Value)>> {
    let r = db.query(
        "SELECT model_id, model_name, display_name, provider, family, context_window, max_output_tokens, is_active, released_at, retired_at FROM dim_models ORDER BY model_id",
        &[],
    )?;
    r.rows()
        .map(|row| {
            let m = Model {
                model_id: col(&row, "model_id")?,
                name: col::<&str>(&row, "model_name")?.to_owned(),
                provider: col::<&str>(&row, "provider")?.to_owned(),
                active: col::<i64>(&row, "is_active")? == 1,
                context_window: col::<i64>(&row, "context_window")? as u64,
                max_output_tokens: col::<i64>(&row, "max_output_tokens")? as u64,
            };
            let v = json!({
                "model_id": m.model_id, "model": m.name, "display_name": col::<&str>(&row, "display_name")?,
                "provider": m.provider, "family": col::<&str>(&row, "family")?, "active": m.active,
                "context_window": col::<i64>(&row, "context_window")?, "max_output_tokens": col::<i64>(&row, "max_output_tokens")?,
                "released_at": col_opt::<&str>(&row, "released_at"), "retired_at": col_opt::<&str>(&row, "retired_at"),
            });
            Ok((m, v))
        })
        .collect()
}

fn prices_json(p: &TokenPrices) -> Value {
    json!({
        "input": p.input, "output": p.output, "cache_write_5m": p.cache_write_5m, "cache_write_1h": p.cache_write_1h, "cache_read": p.cache_read,
        "display": {"input": p.input.display_usd(), "output": p.output.display_usd(), "cache_write_5m": p.cache_write_5m.display_usd(),
                    "cache_write_1h": p.cache_write_1h.display_usd(), "cache_read": p.cache_read.display_usd()},
    })
}

/// A version as the API shows it: id, start, base rates, and its tiers and
/// modifiers (`rules`, omitted when there are none).
fn version_json(v: &PriceVersion) -> Value {
    let mut j = json!({"pricing_id": v.pricing_id, "effective_from": v.effective_from, "prices": prices_json(&v.prices)});
    if !v.rules.is_empty() {
        j["rules"] = json!(v.rules);
    }
    j
}

fn models(db: &Db) -> ApiResult<Response> {
    let now = clock::now();
    let aliases: Vec<(String, i64)> = db
        .query(
            "SELECT alias, model_id FROM dim_model_aliases WHERE retired_at IS NULL ORDER BY alias",
            &[],
        )?
        .rows()
        .map(|r| {
            Ok((
                col::<&str>(&r, "alias")?.to_owned(),
                col::<i64>(&r, "model_id")?,
            ))
        })
        .collect::<ApiResult<_>>()?;
    let items = all_models(db)?
        .into_iter()
        .map(|(m, mut v)| {
            v["price_now"] = prices::price_in_force(db, &m, now)?
                .map(|p| version_json(&p))
                .unwrap_or(Value::Null);
            v["aliases"] = json!(aliases
                .iter()
                .filter(|(_, id)| *id == m.model_id)
                .map(|(a, _)| a)
                .collect::<Vec<_>>());
            Ok(v)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(json(200, &json!({ "items": items })))
}

fn pricing(db: &Db, req: &Request) -> ApiResult<Response> {
    let q = input::query(req)?;
    let at = input::time_param(&q, "at")?.unwrap_or_else(clock::now);
    let only = q.get("model");
    let mut items = Vec::new();
    for (m, _) in all_models(db)? {
        if only.is_some_and(|o| *o != m.name) {
            continue;
        }
        let versions = prices::price_versions(db, &m)?;
        let book = PriceBook::new(versions.clone())?;
        let in_force = book.at(&m.name, at);
        items.push(json!({
            "model": m.name,
            "active": m.active,
            "in_force": in_force.map(version_json),
            "history": versions.iter().map(version_json).collect::<Vec<_>>(),
        }));
    }
    if let Some(o) = only {
        if items.is_empty() {
            return Err(ApiError::NotFound(format!("there is no model `{o}`")));
        }
    }
    Ok(json(200, &json!({ "at": at, "items": items })))
}

/// The end of the latest finalized invoice period: no new price may start before it.
fn finalized_until(db: &Db) -> ApiResult<Option<Timestamp>> {
    let r = db.query(
        "SELECT max(period_end) AS e FROM user_invoices WHERE status = 'final'",
        &[],
    )?;
    let end = r
        .rows()
        .next()
        .and_then(|row| col_opt::<&str>(&row, "e").map(str::to_owned));
    end.map(|e| Timestamp::parse(&e).map_err(|e| ApiError::Internal(e.to_string())))
        .transpose()
}

fn price_field(p: &mut Problems, field: &str, v: &Value) -> Option<PricePerMillion> {
    match v.as_i64() {
        Some(n) => p.check(PricePerMillion::new(n).map_err(|e| ApiError::invalid(field, e.reason))),
        None => {
            p.push(
                field,
                format!("{v} is not a whole number of micro-USD per million"),
            );
            None
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    model: String,
    effective_from: String,
    prices: serde_json::Map<String, Value>,
    /// Tiers and modifiers (billing-core's `PriceRules`); none when absent.
    #[serde(default)]
    rules: Option<Value>,
}

fn new_version(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    caller.require_admin()?;
    let body: NewVersion = json_body(req, MAX_JSON_BYTES)?;
    let mut p = Problems::default();
    let model = model_by_name(db, &body.model)?;
    if model.is_none() {
        p.push("model", format!("`{}` is not a known model", body.model));
    }
    let from = p.check(
        Timestamp::parse(&body.effective_from)
            .map_err(|e| ApiError::invalid("effective_from", e.reason)),
    );
    let version = read_version(&mut p, &body.prices, body.rules);
    if let (Some(m), Some(from)) = (&model, from) {
        let existing: Vec<Timestamp> = prices::price_versions(db, m)?
            .iter()
            .map(|v| v.effective_from)
            .collect();
        p.check(
            check_new_version(&existing, from, clock::now(), finalized_until(db)?)
                .map_err(ApiError::from),
        );
    }
    p.finish()?;
    let (model, from) = (model.expect("checked"), from.expect("checked"));
    let (tp, rules) = version.expect("checked");
    let v = insert_version(db, caller, &model, from, tp, rules)?;
    prices::invalidate(&Cache::open(), &model);
    let mut body = version_json(&v);
    body["model"] = json!(model.name);
    Ok(json(201, &body))
}

/// A version's rates (`prices`: the five token classes, micro-USD per
/// million) and `rules` (tiers and modifiers), every problem recorded in `p`.
pub(crate) fn read_version(
    p: &mut Problems,
    prices: &serde_json::Map<String, Value>,
    rules: Option<Value>,
) -> Option<(TokenPrices, PriceRules)> {
    const CLASSES: [&str; 5] = [
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
    ];
    for k in prices.keys() {
        if !CLASSES.contains(&k.as_str()) {
            p.push(format!("prices.{k}"), "is not a token class; use input, output, cache_write_5m, cache_write_1h, cache_read");
        }
    }
    let mut get = |k: &str| match prices.get(k) {
        Some(v) => price_field(p, &format!("prices.{k}"), v),
        None => {
            p.push(format!("prices.{k}"), "is required");
            None
        }
    };
    let rates = (
        get("input"),
        get("output"),
        get("cache_write_5m"),
        get("cache_write_1h"),
        get("cache_read"),
    );
    let rules = match rules {
        None | Some(Value::Null) => Some(PriceRules::default()),
        Some(v) => p.check(
            serde_json::from_value::<PriceRules>(v)
                .map_err(|e| ApiError::invalid("rules", e.to_string()))
                .and_then(|r| r.validate().map(|()| r).map_err(ApiError::from)),
        ),
    };
    let (Some(input), Some(output), Some(cache_write_5m), Some(cache_write_1h), Some(cache_read)) =
        rates
    else {
        return None;
    };
    Some((
        TokenPrices {
            input,
            output,
            cache_write_5m,
            cache_write_1h,
            cache_read,
        },
        rules?,
    ))
}

/// Stores a checked version of `model`'s prices; returns it with its id.
pub(crate) fn insert_version(
    db: &Db,
    caller: &Caller,
    model: &Model,
    from: Timestamp,
    tp: TokenPrices,
    rules: PriceRules,
) -> ApiResult<PriceVersion> {
    let rules_json =
        serde_json::to_string(&rules).map_err(|e| ApiError::Internal(e.to_string()))?;
    let id = db
        .scalar_i64(
            "INSERT INTO dim_token_pricing (model_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price, rules, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING pricing_id",
            &[int(model.model_id), text(from.to_rfc3339()), int(tp.input.micros()), int(tp.output.micros()), int(tp.cache_write_5m.micros()),
              int(tp.cache_write_1h.micros()), int(tp.cache_read.micros()), text(rules_json), int(caller.user_id)],
        )?
        .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
    Ok(PriceVersion {
        pricing_id: id,
        model: model.name.clone(),
        effective_from: from,
        prices: tp,
        rules,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteRequest {
    model: String,
    /// Tokens per class; or `provider_usage`, not both.
    #[serde(default)]
    usage: Option<ClassUsage>,
    /// A usage object as a provider returns it (Anthropic's or OpenAI's,
    /// with `service_tier`, `inference_geo`, `speed`, `server_tool_use`).
    #[serde(default)]
    provider_usage: Option<Value>,
    #[serde(default)]
    at: Option<String>,
}

/// Tokens per class, as the quote takes them.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClassUsage {
    #[serde(default)]
    input: u64,
    #[serde(default)]
    output: u64,
    #[serde(default)]
    cache_write_5m: u64,
    #[serde(default)]
    cache_write_1h: u64,
    #[serde(default)]
    cache_read: u64,
}

fn quote_usage(db: &Db, req: &Request) -> ApiResult<Response> {
    let body: QuoteRequest = json_body(req, MAX_JSON_BYTES)?;
    let at = match &body.at {
        Some(a) => Timestamp::parse(a).map_err(|e| ApiError::invalid("at", e.reason))?,
        None => clock::now(),
    };
    let model = model_by_name(db, &body.model)?.ok_or_else(|| {
        ApiError::invalid("model", format!("`{}` is not a known model", body.model))
    })?;
    let usage = match (&body.usage, &body.provider_usage) {
        (Some(u), None) => Usage {
            input_tokens: u.input,
            output_tokens: u.output,
            cache_creation_input_tokens: u
                .cache_write_5m
                .checked_add(u.cache_write_1h)
                .ok_or_else(|| ApiError::invalid("usage", "too many tokens"))?,
            cache_creation: Some(CacheCreation {
                ephemeral_5m_input_tokens: u.cache_write_5m,
                ephemeral_1h_input_tokens: u.cache_write_1h,
            }),
            cache_read_input_tokens: u.cache_read,
            ..Usage::default()
        },
        (None, Some(v)) => Usage::from_api_json(v).map_err(|e| {
            ApiError::invalid(e.field.replacen("usage", "provider_usage", 1), e.reason)
        })?,
        _ => {
            return Err(ApiError::invalid(
                "usage",
                "give exactly one of usage (tokens per class) and provider_usage (a provider's usage object)",
            ))
        }
    };
    usage.validate()?;
    let q = prices::quote_at(db, &Cache::open(), &model, &usage, at)?.ok_or_else(|| {
        ApiError::invalid(
            "at",
            format!("`{}` has no price in force at {at}", model.name),
        )
    })?;
    Ok(json(
        200,
        &json!({
            "model": model.name, "requested_model": body.model, "at": at, "pricing_id": q.pricing_id, "effective_from": q.effective_from,
            "prompt_tokens": q.prompt_tokens, "tier_above_prompt_tokens": q.tier_above_prompt_tokens, "modifiers": q.modifiers,
            "lines": q.lines.iter().map(|l| json!({"token_class": l.class, "tokens": l.tokens, "unit_price": l.unit_price, "cost_nanos": l.cost, "cost": l.cost.display_usd()})).collect::<Vec<_>>(),
            "fees": q.fees.iter().map(|f| json!({"resource": f.resource, "resource_pricing_id": f.resource_pricing_id, "quantity": f.quantity, "unit_price": f.unit_price, "cost_nanos": f.cost, "cost": f.cost.display_usd()})).collect::<Vec<_>>(),
            "total_nanos": q.total, "total": q.total.display_usd(),
        }),
    ))
}

fn resource_versions(db: &Db) -> ApiResult<Vec<ResourcePriceVersion>> {
    let r = db.query("SELECT resource_pricing_id, resource, unit, effective_from, unit_price FROM dim_resource_pricing ORDER BY resource, effective_from", &[])?;
    r.rows()
        .map(|row| {
            Ok(ResourcePriceVersion {
                resource_pricing_id: col(&row, "resource_pricing_id")?,
                resource: col::<&str>(&row, "resource")?.to_owned(),
                unit: col::<&str>(&row, "unit")?.to_owned(),
                effective_from: Timestamp::parse(col(&row, "effective_from")?)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
                unit_price: PricePerMillion::new(col(&row, "unit_price")?)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            })
        })
        .collect()
}

fn resource_pricing(db: &Db, req: &Request) -> ApiResult<Response> {
    let q = input::query(req)?;
    let at = input::time_param(&q, "at")?.unwrap_or_else(clock::now);
    let book = History::new(resource_versions(db)?)?;
    let items: Vec<Value> = book
        .names()
        .map(|name| {
            json!({
                "resource": name,
                "in_force": book.at(name, at),
                "history": book.versions(name),
            })
        })
        .collect();
    Ok(json(200, &json!({ "at": at, "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewResourceVersion {
    resource: String,
    unit: String,
    effective_from: String,
    unit_price: Value,
    #[serde(default)]
    description: Option<String>,
}

fn new_resource_version(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    caller.require_admin()?;
    let body: NewResourceVersion = json_body(req, MAX_JSON_BYTES)?;
    let mut p = Problems::default();
    let resource = p.check(text_field("resource", &body.resource, 64));
    if resource.as_ref().is_some_and(|r| {
        !r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }) {
        p.push("resource", "use lower-case letters, digits and underscores");
    }
    let unit = p.check(text_field("unit", &body.unit, 32));
    let from = p.check(
        Timestamp::parse(&body.effective_from)
            .map_err(|e| ApiError::invalid("effective_from", e.reason)),
    );
    let price = price_field(&mut p, "unit_price", &body.unit_price);
    if let (Some(r), Some(from)) = (&resource, from) {
        let existing: Vec<Timestamp> = resource_versions(db)?
            .iter()
            .filter(|v| &v.resource == r)
            .map(|v| v.effective_from)
            .collect();
        p.check(
            check_new_version(&existing, from, clock::now(), finalized_until(db)?)
                .map_err(ApiError::from),
        );
    }
    p.finish()?;
    let id = db
        .scalar_i64(
            "INSERT INTO dim_resource_pricing (resource, unit, description, effective_from, unit_price, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING resource_pricing_id",
            &[
                text(resource.clone().expect("checked")),
                text(unit.expect("checked")),
                text(body.description.unwrap_or_default()),
                text(from.expect("checked").to_rfc3339()),
                int(price.expect("checked").micros()),
                int(caller.user_id),
            ],
        )?
        .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
    Ok(json(
        201,
        &json!({"resource_pricing_id": id, "resource": resource, "effective_from": from, "unit_price": price}),
    ))
}
