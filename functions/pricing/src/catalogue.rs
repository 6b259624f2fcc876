//! The model catalogue, kept by an admin: new models (each with its first
//! price version, so no model is ever billable at zero), aliases, and
//! retirements.
//!
//! - `POST /api/models` (admin) {model, display_name, provider, family,
//!   context_window, max_output_tokens, released_at?, effective_from,
//!   prices, rules?}: the model and its first version in one transaction.
//!   The first version may start in the past (no event of an unknown model
//!   was ever billed, so no invoice changes). 201 with the model.
//! - `PATCH /api/models/{model}` (admin) {active: bool}: retires a model
//!   (new chat turns refuse it; collected events of it are still billed,
//!   at its prices) or brings it back. 200 with the model.
//! - `GET /api/models/aliases`: every alias and the model it names.
//! - `POST /api/models/aliases` (admin) {alias, model}: an undated or
//!   cloud-provider name for a model; it resolves everywhere a model name
//!   is read (chat, collector, quote, bridge) and is billed as that model.
//!   Refused: an alias that is a model's own name or an alias already, a
//!   target that is not a model. 201.
//! - `DELETE /api/models/aliases/{alias}` (admin): 204. The alias is
//!   retired, not forgotten: it no longer resolves for new requests, events
//!   accepted under it before are still billed as its model, and its name
//!   is never given to another model.
//!
//! Every refusal is 422 naming the field; nothing is changed.

use crate::{insert_version, read_version, version_json};
use billing_core::{ModelName, Timestamp};
use billing_fn_common::cache::Cache;
use billing_fn_common::db::{col, int, text};
use billing_fn_common::input::{json_body, text_field, MAX_JSON_BYTES};
use billing_fn_common::prices::{self, model_by_name, Model};
use billing_fn_common::problem::Problems;
use billing_fn_common::{clock, json, ApiError, ApiResult, Caller, Db};
use serde::Deserialize;
use serde_json::{json, Value};
use spin_sdk::http::{Request, Response};

/// Providers a model may have: the client `messages` calls it with.
const PROVIDERS: [&str; 2] = ["anthropic", "openai-compatible"];
/// The largest context window or output limit accepted, in tokens.
const MAX_TOKENS_LIMIT: i64 = 100_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewModel {
    model: String,
    display_name: String,
    provider: String,
    family: String,
    context_window: i64,
    max_output_tokens: i64,
    #[serde(default)]
    released_at: Option<String>,
    effective_from: String,
    prices: serde_json::Map<String, Value>,
    #[serde(default)]
    rules: Option<Value>,
}

/// Whether `name` is taken, as a model's own name or as an alias.
fn name_taken(db: &Db, name: &str) -> ApiResult<Option<&'static str>> {
    let r = db.query(
        "SELECT 'a model' AS what FROM dim_models WHERE model_name = ?1
         UNION ALL SELECT CASE WHEN retired_at IS NULL THEN 'an alias' ELSE 'a retired alias (names are not reused)' END
         FROM dim_model_aliases WHERE alias = ?1 LIMIT 1",
        &[text(name)],
    )?;
    let what = r.rows().next().map(|row| match row.get::<&str>("what") {
        Some("a model") => "a model",
        Some("an alias") => "an alias",
        _ => "a retired alias (names are not reused)",
    });
    Ok(what)
}

fn limit(p: &mut Problems, field: &str, v: i64) -> Option<i64> {
    if (1..=MAX_TOKENS_LIMIT).contains(&v) {
        Some(v)
    } else {
        p.push(
            field,
            format!("{v} is not between 1 and {MAX_TOKENS_LIMIT} tokens"),
        );
        None
    }
}

pub fn new_model(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    caller.require_admin()?;
    let body: NewModel = json_body(req, MAX_JSON_BYTES)?;
    let mut p = Problems::default();
    let name = p.check(ModelName::parse(&body.model).map_err(ApiError::from));
    if let Some(n) = &name {
        if let Some(what) = name_taken(db, n.as_str())? {
            p.push("model", format!("`{n}` is {what} already"));
        }
    }
    let display = p.check(text_field("display_name", &body.display_name, 200));
    let family = p.check(text_field("family", &body.family, 64));
    if !PROVIDERS.contains(&body.provider.as_str()) {
        p.push(
            "provider",
            format!("`{}` is not one of {}", body.provider, PROVIDERS.join(", ")),
        );
    }
    let window = limit(&mut p, "context_window", body.context_window);
    let output = limit(&mut p, "max_output_tokens", body.max_output_tokens);
    if let (Some(w), Some(o)) = (window, output) {
        if o > w {
            p.push(
                "max_output_tokens",
                format!("{o} is more than the context window ({w})"),
            );
        }
    }
    let released = match &body.released_at {
        None => None,
        Some(r) => {
            p.check(Timestamp::parse(r).map_err(|e| ApiError::invalid("released_at", e.reason)))
        }
    };
    let from = p.check(
        Timestamp::parse(&body.effective_from)
            .map_err(|e| ApiError::invalid("effective_from", e.reason)),
    );
    let version = read_version(&mut p, &body.prices, body.rules);
    p.finish()?;
    let (name, from, (tp, rules)) = (
        name.expect("checked"),
        from.expect("checked"),
        version.expect("checked"),
    );
    let (display, family) = (display.expect("checked"), family.expect("checked"));
    let (window, output) = (window.expect("checked"), output.expect("checked"));
    let (model, version) = db.transaction(|db| {
        // Checked again under the write lock: a concurrent request may have taken the name.
        if let Some(what) = name_taken(db, name.as_str())? {
            return Err(ApiError::invalid("model", format!("`{name}` is {what} already")));
        }
        let id = db
            .scalar_i64(
                "INSERT INTO dim_models (model_name, display_name, provider, family, context_window, max_output_tokens, released_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING model_id",
                &[
                    text(name.as_str()),
                    text(display.clone()),
                    text(body.provider.clone()),
                    text(family.clone()),
                    int(window),
                    int(output),
                    released.map(|r| text(r.to_rfc3339())).unwrap_or(billing_fn_common::db::Value::Null),
                ],
            )?
            .ok_or_else(|| ApiError::Internal("insert returned no id".into()))?;
        let model = Model {
            model_id: id,
            name: name.as_str().to_owned(),
            provider: body.provider.clone(),
            active: true,
            context_window: window as u64,
            max_output_tokens: output as u64,
        };
        let version = insert_version(db, caller, &model, from, tp, rules)?;
        Ok((model, version))
    })?;
    // A name looked up while it was unknown may be cached as unknown.
    prices::invalidate(&Cache::open(), &model);
    let mut out = model_json(db, &model.name)?;
    out["price"] = version_json(&version);
    Ok(json(201, &out))
}

/// A model as the catalogue shows it, with its aliases.
fn model_json(db: &Db, name: &str) -> ApiResult<Value> {
    let r = db.query(
        "SELECT model_id, model_name, display_name, provider, family, context_window, max_output_tokens, is_active, released_at, retired_at,
                (SELECT json_group_array(alias) FROM (SELECT alias FROM dim_model_aliases a WHERE a.model_id = m.model_id AND a.retired_at IS NULL ORDER BY alias)) AS aliases
         FROM dim_models m WHERE model_name = ?1",
        &[text(name)],
    )?;
    let row = r
        .rows()
        .next()
        .ok_or_else(|| ApiError::NotFound(format!("there is no model `{name}`")))?;
    let aliases: Value = serde_json::from_str(col::<&str>(&row, "aliases")?)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json!({
        "model_id": col::<i64>(&row, "model_id")?, "model": col::<&str>(&row, "model_name")?,
        "display_name": col::<&str>(&row, "display_name")?, "provider": col::<&str>(&row, "provider")?,
        "family": col::<&str>(&row, "family")?, "active": col::<i64>(&row, "is_active")? == 1,
        "context_window": col::<i64>(&row, "context_window")?, "max_output_tokens": col::<i64>(&row, "max_output_tokens")?,
        "released_at": row.get::<&str>("released_at"), "retired_at": row.get::<&str>("retired_at"),
        "aliases": aliases,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelChange {
    active: bool,
}

pub fn change_model(db: &Db, caller: &Caller, req: &Request, name: &str) -> ApiResult<Response> {
    caller.require_admin()?;
    let body: ModelChange = json_body(req, MAX_JSON_BYTES)?;
    let model = model_by_name(db, name)?
        .ok_or_else(|| ApiError::NotFound(format!("there is no model `{name}`")))?;
    let retired_at = (!body.active).then(|| text(clock::now().to_rfc3339()));
    db.exec(
        "UPDATE dim_models SET is_active = ?1, retired_at = CASE WHEN ?1 = 1 THEN NULL ELSE coalesce(retired_at, ?2) END WHERE model_id = ?3",
        &[
            int(body.active as i64),
            retired_at.unwrap_or(billing_fn_common::db::Value::Null),
            int(model.model_id),
        ],
    )?;
    // Every name it is cached under: its own, the one in the path, each alias.
    let cache = Cache::open();
    prices::invalidate(&cache, &model);
    prices::invalidate_name(&cache, name);
    let aliases = db.query(
        "SELECT alias FROM dim_model_aliases WHERE model_id = ?1",
        &[int(model.model_id)],
    )?;
    for row in aliases.rows() {
        prices::invalidate_name(&cache, col::<&str>(&row, "alias")?);
    }
    Ok(json(200, &model_json(db, &model.name)?))
}

pub fn aliases(db: &Db) -> ApiResult<Response> {
    let r = db.query(
        "SELECT a.alias, m.model_name, a.created_at FROM dim_model_aliases a JOIN dim_models m USING (model_id) WHERE a.retired_at IS NULL ORDER BY a.alias",
        &[],
    )?;
    let items = r
        .rows()
        .map(|row| {
            Ok(json!({
                "alias": col::<&str>(&row, "alias")?,
                "model": col::<&str>(&row, "model_name")?,
                "created_at": col::<&str>(&row, "created_at")?,
            }))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(json(200, &json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAlias {
    alias: String,
    model: String,
}

pub fn new_alias(db: &Db, caller: &Caller, req: &Request) -> ApiResult<Response> {
    caller.require_admin()?;
    let body: NewAlias = json_body(req, MAX_JSON_BYTES)?;
    let mut p = Problems::default();
    match ModelName::parse(&body.alias) {
        Ok(a) => {
            if let Some(what) = name_taken(db, a.as_str())? {
                p.push("alias", format!("`{a}` is {what} already"));
            }
        }
        Err(mut e) => {
            e.field = "alias".into();
            p.push(e.field, e.reason);
        }
    }
    // The target by its own name only: an alias of an alias would hide what is billed.
    let target = db.query(
        "SELECT model_name, (SELECT count(*) FROM dim_token_pricing t WHERE t.model_id = m.model_id) AS versions FROM dim_models m WHERE model_name = ?1",
        &[text(body.model.clone())],
    )?;
    match target.rows().next() {
        None => p.push(
            "model",
            format!(
                "`{}` is not a model's own name (aliases name a model, not another alias)",
                body.model
            ),
        ),
        Some(row) if col::<i64>(&row, "versions")? == 0 => p.push(
            "model",
            format!(
                "`{}` has no price version; an alias is never priced at zero",
                body.model
            ),
        ),
        Some(_) => {}
    }
    p.finish()?;
    db.transaction(|db| {
        // Checked again under the write lock: a concurrent request may have taken the name.
        if let Some(what) = name_taken(db, &body.alias)? {
            return Err(ApiError::invalid("alias", format!("`{}` is {what} already", body.alias)));
        }
        db.exec(
            "INSERT INTO dim_model_aliases (alias, model_id, created_by) SELECT ?1, model_id, ?2 FROM dim_models WHERE model_name = ?3",
            &[text(body.alias.clone()), int(caller.user_id), text(body.model.clone())],
        )
    })?;
    prices::invalidate_name(&Cache::open(), &body.alias);
    Ok(json(
        201,
        &json!({"alias": body.alias, "model": body.model}),
    ))
}

pub fn delete_alias(db: &Db, caller: &Caller, alias: &str) -> ApiResult<Response> {
    caller.require_admin()?;
    let gone = db.scalar_i64(
        "UPDATE dim_model_aliases SET retired_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE alias = ?1 AND retired_at IS NULL RETURNING 1",
        &[text(alias)],
    )?;
    if gone.is_none() {
        return Err(ApiError::NotFound(format!("there is no alias `{alias}`")));
    }
    prices::invalidate_name(&Cache::open(), alias);
    Ok(Response::builder().status(204).body(Vec::new()).build())
}
