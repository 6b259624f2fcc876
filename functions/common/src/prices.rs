//! Prices as stored in `dim_token_pricing`, read into billing-core's types.

use crate::cache::Cache;
use crate::db::{col, int, text, Db};
use crate::problem::{ApiError, ApiResult};
use billing_core::pricing::{fee_quantities, quote, PriceBook, PriceVersion, ResourcePriceVersion};
use billing_core::{BillingError, PricePerMillion, Timestamp};

/// A model row: id, its own name (an alias resolves to it), provider,
/// active, and the limits a request to it cannot exceed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Model {
    pub model_id: i64,
    pub name: String,
    pub provider: String,
    pub active: bool,
    pub context_window: u64,
    pub max_output_tokens: u64,
}

const SELECT_MODEL: &str =
    "SELECT model_id, model_name, provider, is_active, context_window, max_output_tokens FROM dim_models";

/// The model named `name`, by its own name or one of its aliases.
pub fn model_by_name(db: &Db, name: &str) -> ApiResult<Option<Model>> {
    let r = db.query(
        &format!(
            "{SELECT_MODEL} WHERE model_name = ?1
             UNION ALL {SELECT_MODEL} WHERE model_id = (SELECT model_id FROM dim_model_aliases WHERE alias = ?1 AND retired_at IS NULL)
             LIMIT 1"
        ),
        &[text(name)],
    )?;
    read_model(&r)
}

pub fn model_by_id(db: &Db, id: i64) -> ApiResult<Option<Model>> {
    let r = db.query(&format!("{SELECT_MODEL} WHERE model_id = ?1"), &[int(id)])?;
    read_model(&r)
}

fn read_model(r: &spin_sdk::sqlite::QueryResult) -> ApiResult<Option<Model>> {
    r.rows()
        .next()
        .map(|row| {
            Ok(Model {
                model_id: col(&row, "model_id")?,
                name: col::<&str>(&row, "model_name")?.to_owned(),
                provider: col::<&str>(&row, "provider")?.to_owned(),
                active: col::<i64>(&row, "is_active")? == 1,
                context_window: col::<i64>(&row, "context_window")? as u64,
                max_output_tokens: col::<i64>(&row, "max_output_tokens")? as u64,
            })
        })
        .transpose()
}

/// The version of `resource` in force at `at`.
pub fn resource_price_in_force(
    db: &Db,
    resource: &str,
    at: Timestamp,
) -> ApiResult<Option<ResourcePriceVersion>> {
    let r = db.query(
        "SELECT resource_pricing_id, unit, effective_from, unit_price FROM dim_resource_pricing
         WHERE resource = ?1 AND effective_from <= ?2 ORDER BY effective_from DESC LIMIT 1",
        &[text(resource), text(at.to_rfc3339())],
    )?;
    let version = r
        .rows()
        .next()
        .map(|row| {
            Ok(ResourcePriceVersion {
                resource_pricing_id: col(&row, "resource_pricing_id")?,
                resource: resource.to_owned(),
                unit: col::<&str>(&row, "unit")?.to_owned(),
                effective_from: Timestamp::parse(col(&row, "effective_from")?)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
                unit_price: PricePerMillion::new(col(&row, "unit_price")?)
                    .map_err(|e| ApiError::Internal(format!("a stored price is invalid: {e}")))?,
            })
        })
        .transpose();
    version
}

/// Prices `usage` of `model` at `at` with billing-core's one price function:
/// the token version and the server-tool fee prices in force then.
/// `Ok(None)` when no token price is in force; a fee without a price is
/// [`ApiError`] from [`BillingError::NoResourcePriceInForce`].
pub fn quote_at(
    db: &Db,
    cache: &Cache,
    model: &Model,
    usage: &billing_core::Usage,
    at: Timestamp,
) -> ApiResult<Option<billing_core::pricing::Quote>> {
    let Some(version) = price_in_force_cached(db, cache, model, at)? else {
        return Ok(None);
    };
    let mut fees = Vec::new();
    for (resource, _) in fee_quantities(usage) {
        match resource_price_in_force(db, resource, at)? {
            Some(v) => fees.push(v),
            None => {
                return Err(BillingError::NoResourcePriceInForce {
                    resource: resource.to_owned(),
                    at,
                }
                .into())
            }
        }
    }
    Ok(Some(quote(&version, &fees, usage)?))
}

/// The version of `model`'s prices in force at `at`.
pub fn price_in_force(db: &Db, model: &Model, at: Timestamp) -> ApiResult<Option<PriceVersion>> {
    let r = db.query(
        &format!("{SELECT_VERSIONS} AND effective_from <= ?2 ORDER BY effective_from DESC LIMIT 1"),
        &[int(model.model_id), text(at.to_rfc3339())],
    )?;
    Ok(read_versions(&r, model)?.pop())
}

const SELECT_VERSIONS: &str = "SELECT pricing_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price, rules
     FROM dim_token_pricing WHERE model_id = ?1";

fn read_versions(r: &spin_sdk::sqlite::QueryResult, model: &Model) -> ApiResult<Vec<PriceVersion>> {
    r.rows()
        .map(|row| {
            PriceVersion::from_stored(
                col(&row, "pricing_id")?,
                &model.name,
                col(&row, "effective_from")?,
                [
                    col(&row, "input_price")?,
                    col(&row, "output_price")?,
                    col(&row, "cache_write_5m_price")?,
                    col(&row, "cache_write_1h_price")?,
                    col(&row, "cache_read_price")?,
                ],
                col(&row, "rules")?,
            )
            .map_err(|e| ApiError::Internal(format!("a stored price version is invalid: {e}")))
        })
        .collect()
}

/// How long models and prices stay cached. Whoever changes them calls
/// [`invalidate`], so the TTL only bounds staleness after a crash.
pub const CACHE_TTL_S: i64 = 300;

fn model_key(name: &str) -> String {
    format!("model:{name}")
}

fn prices_key(model_id: i64) -> String {
    format!("prices:{model_id}")
}

/// [`model_by_name`] through the cache.
pub fn model_by_name_cached(db: &Db, cache: &Cache, name: &str) -> ApiResult<Option<Model>> {
    if let Some(m) = cache.get_json::<Model>(&model_key(name)) {
        return Ok(Some(m));
    }
    let m = model_by_name(db, name)?;
    if let Some(m) = &m {
        cache.set_json(&model_key(name), m, CACHE_TTL_S);
    }
    Ok(m)
}

fn model_id_key(id: i64) -> String {
    format!("model:id:{id}")
}

/// [`model_by_id`] through the cache.
pub fn model_by_id_cached(db: &Db, cache: &Cache, id: i64) -> ApiResult<Option<Model>> {
    if let Some(m) = cache.get_json::<Model>(&model_id_key(id)) {
        return Ok(Some(m));
    }
    let m = model_by_id(db, id)?;
    if let Some(m) = &m {
        cache.set_json(&model_id_key(id), m, CACHE_TTL_S);
    }
    Ok(m)
}

/// Every price version of a model, oldest first.
pub fn price_versions(db: &Db, model: &Model) -> ApiResult<Vec<PriceVersion>> {
    let r = db.query(
        &format!("{SELECT_VERSIONS} ORDER BY effective_from"),
        &[int(model.model_id)],
    )?;
    read_versions(&r, model)
}

/// The version in force at `at`, from the cached list of versions.
pub fn price_in_force_cached(
    db: &Db,
    cache: &Cache,
    model: &Model,
    at: Timestamp,
) -> ApiResult<Option<PriceVersion>> {
    let versions = match cache.get_json::<Vec<PriceVersion>>(&prices_key(model.model_id)) {
        Some(v) => v,
        None => {
            let v = price_versions(db, model)?;
            cache.set_json(&prices_key(model.model_id), &v, CACHE_TTL_S);
            v
        }
    };
    let book = PriceBook::new(versions)?;
    Ok(book.at(&model.name, at).cloned())
}

/// Drops what `name` (a model's name or an alias) was cached as.
pub fn invalidate_name(cache: &Cache, name: &str) {
    cache.del(&[model_key(name)]);
}

/// Drops the cached model and prices after a change.
pub fn invalidate(cache: &Cache, model: &Model) {
    cache.del(&[
        model_key(&model.name),
        model_id_key(model.model_id),
        prices_key(model.model_id),
    ]);
}
