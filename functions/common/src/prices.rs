//! Prices as stored in `dim_token_pricing`, read into billing-core's types.

use crate::db::{col, int, text, Db};
use crate::problem::{ApiError, ApiResult};
use billing_core::pricing::{PriceVersion, TokenPrices};
use billing_core::{PricePerMillion, Timestamp};

/// A model row: id, name, provider, active.
#[derive(Debug, Clone)]
pub struct Model {
    pub model_id: i64,
    pub name: String,
    pub provider: String,
    pub active: bool,
}

pub fn model_by_name(db: &Db, name: &str) -> ApiResult<Option<Model>> {
    let r = db.query("SELECT model_id, model_name, provider, is_active FROM dim_models WHERE model_name = ?1", &[text(name)])?;
    read_model(&r)
}

pub fn model_by_id(db: &Db, id: i64) -> ApiResult<Option<Model>> {
    let r = db.query("SELECT model_id, model_name, provider, is_active FROM dim_models WHERE model_id = ?1", &[int(id)])?;
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
            })
        })
        .transpose()
}

fn price(v: i64) -> ApiResult<PricePerMillion> {
    PricePerMillion::new(v).map_err(|e| ApiError::Internal(format!("a stored price is invalid: {e}")))
}

/// The version of `model`'s prices in force at `at`.
pub fn price_in_force(db: &Db, model: &Model, at: Timestamp) -> ApiResult<Option<PriceVersion>> {
    let r = db.query(
        "SELECT pricing_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price
         FROM dim_token_pricing WHERE model_id = ?1 AND effective_from <= ?2 ORDER BY effective_from DESC LIMIT 1",
        &[int(model.model_id), text(at.to_rfc3339())],
    )?;
    let version = r
        .rows()
        .next()
        .map(|row| {
            Ok(PriceVersion {
                pricing_id: col(&row, "pricing_id")?,
                model: model.name.clone(),
                effective_from: Timestamp::parse(col(&row, "effective_from")?).map_err(|e| ApiError::Internal(e.to_string()))?,
                prices: TokenPrices {
                    input: price(col(&row, "input_price")?)?,
                    output: price(col(&row, "output_price")?)?,
                    cache_write_5m: price(col(&row, "cache_write_5m_price")?)?,
                    cache_write_1h: price(col(&row, "cache_write_1h_price")?)?,
                    cache_read: price(col(&row, "cache_read_price")?)?,
                },
            })
        })
        .transpose();
    version
}
