//! Effective-dated prices and quotes.
//!
//! A price version holds from its `effective_from` until the next version of
//! the same model (or resource) starts; the version in force at an instant is
//! the latest one that started at or before it. Versions therefore never
//! overlap, and a new version never changes what an earlier event cost.

use crate::error::{BillingError, FieldError};
use crate::money::{line_cost, Nanos, PricePerMillion};
use crate::time::Timestamp;
use crate::usage::{TokenClass, Usage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One price per token class, micro-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPrices {
    pub input: PricePerMillion,
    pub output: PricePerMillion,
    pub cache_write_5m: PricePerMillion,
    pub cache_write_1h: PricePerMillion,
    pub cache_read: PricePerMillion,
}

impl TokenPrices {
    pub fn get(&self, class: TokenClass) -> PricePerMillion {
        match class {
            TokenClass::Input => self.input,
            TokenClass::Output => self.output,
            TokenClass::CacheWrite5m => self.cache_write_5m,
            TokenClass::CacheWrite1h => self.cache_write_1h,
            TokenClass::CacheRead => self.cache_read,
        }
    }
}

/// A model's token prices from `effective_from` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    pub pricing_id: i64,
    pub model: String,
    pub effective_from: Timestamp,
    pub prices: TokenPrices,
}

/// A resource's unit price (per request, per millisecond of compute, …)
/// from `effective_from` on, in micro-USD per million units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcePriceVersion {
    pub resource_pricing_id: i64,
    pub resource: String,
    pub unit: String,
    pub effective_from: Timestamp,
    pub unit_price: PricePerMillion,
}

/// Something with a start instant, grouped under a name.
pub trait EffectiveDated {
    fn name(&self) -> &str;
    fn effective_from(&self) -> Timestamp;
}

impl EffectiveDated for PriceVersion {
    fn name(&self) -> &str {
        &self.model
    }
    fn effective_from(&self) -> Timestamp {
        self.effective_from
    }
}

impl EffectiveDated for ResourcePriceVersion {
    fn name(&self) -> &str {
        &self.resource
    }
    fn effective_from(&self) -> Timestamp {
        self.effective_from
    }
}

/// Every version of every name, each name's versions sorted by start.
#[derive(Debug, Clone)]
pub struct History<T> {
    by_name: BTreeMap<String, Vec<T>>,
}

impl<T: EffectiveDated> History<T> {
    /// Refuses two versions of one name starting at the same instant: the
    /// price in force there would be ambiguous.
    pub fn new(versions: impl IntoIterator<Item = T>) -> Result<Self, BillingError> {
        let mut by_name: BTreeMap<String, Vec<T>> = BTreeMap::new();
        for v in versions {
            by_name.entry(v.name().to_owned()).or_default().push(v);
        }
        for (name, list) in by_name.iter_mut() {
            list.sort_by_key(|v| v.effective_from());
            if let Some(w) = list
                .windows(2)
                .find(|w| w[0].effective_from() == w[1].effective_from())
            {
                return Err(BillingError::DuplicateVersion {
                    name: name.clone(),
                    at: w[0].effective_from(),
                });
            }
        }
        Ok(Self { by_name })
    }

    /// The version in force at `at`: the latest that started at or before it.
    pub fn at(&self, name: &str, at: Timestamp) -> Option<&T> {
        let list = self.by_name.get(name)?;
        let idx = list.partition_point(|v| v.effective_from() <= at);
        idx.checked_sub(1).map(|i| &list[i])
    }

    pub fn versions(&self, name: &str) -> &[T] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// Token prices of every model.
pub type PriceBook = History<PriceVersion>;
/// Unit prices of every resource.
pub type ResourcePriceBook = History<ResourcePriceVersion>;

impl PriceBook {
    /// The version of `model` in force at `at`, or why there is none.
    pub fn price_at(&self, model: &str, at: Timestamp) -> Result<&PriceVersion, BillingError> {
        if self.versions(model).is_empty() {
            return Err(BillingError::UnknownModel {
                model: model.to_owned(),
            });
        }
        self.at(model, at)
            .ok_or_else(|| BillingError::NoPriceInForce {
                model: model.to_owned(),
                at,
            })
    }

    /// Prices `usage` of `model` as of `at`.
    pub fn quote(&self, model: &str, usage: &Usage, at: Timestamp) -> Result<Quote, BillingError> {
        quote(self.price_at(model, at)?, usage)
    }
}

impl ResourcePriceBook {
    pub fn price_at(
        &self,
        resource: &str,
        at: Timestamp,
    ) -> Result<&ResourcePriceVersion, BillingError> {
        self.at(resource, at)
            .ok_or_else(|| BillingError::NoResourcePriceInForce {
                resource: resource.to_owned(),
                at,
            })
    }
}

/// One token class of a quote: tokens × unit price = cost (rounded once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteLine {
    pub class: TokenClass,
    pub tokens: u64,
    pub unit_price: PricePerMillion,
    pub cost: Nanos,
}

/// The cost of one usage under one price version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub model: String,
    pub pricing_id: i64,
    pub effective_from: Timestamp,
    pub lines: Vec<QuoteLine>,
    pub total: Nanos,
}

/// Prices each token class of `usage` at `version`. Every class appears,
/// zero-token ones included, so a quote always has the same shape.
pub fn quote(version: &PriceVersion, usage: &Usage) -> Result<Quote, BillingError> {
    usage.validate()?;
    let lines = usage
        .by_class()
        .into_iter()
        .map(|(class, tokens)| {
            let unit_price = version.prices.get(class);
            Ok(QuoteLine {
                class,
                tokens,
                unit_price,
                cost: line_cost(tokens, unit_price)?,
            })
        })
        .collect::<Result<Vec<_>, BillingError>>()?;
    let total = Nanos::sum(lines.iter().map(|l| l.cost))?;
    Ok(Quote {
        model: version.model.clone(),
        pricing_id: version.pricing_id,
        effective_from: version.effective_from,
        lines,
        total,
    })
}

/// The cost of `quantity` units of a resource at `version`.
pub fn resource_cost(version: &ResourcePriceVersion, quantity: u64) -> Result<Nanos, BillingError> {
    line_cost(quantity, version.unit_price)
}

/// Whether a new version starting at `from` may be added.
///
/// - it may not start before `now` (history is never rewritten: events
///   already priced keep their price);
/// - it may not start at or before the end of a finalized invoice's period
///   (`finalized_until`), whose figures are frozen;
/// - it may not start at the same instant as an existing version.
pub fn check_new_version(
    existing: &[Timestamp],
    from: Timestamp,
    now: Timestamp,
    finalized_until: Option<Timestamp>,
) -> Result<(), FieldError> {
    if from < now {
        return Err(FieldError::new(
            "effective_from",
            format!(
                "{from} is in the past (now is {now}); a new price may only start now or later"
            ),
        ));
    }
    if let Some(end) = finalized_until {
        if from < end {
            return Err(FieldError::new(
                "effective_from",
                format!("{from} falls inside a finalized invoice period that ends {end}"),
            ));
        }
    }
    if existing.contains(&from) {
        return Err(FieldError::new(
            "effective_from",
            format!("a version already starts at {from}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn p(m: i64) -> PricePerMillion {
        PricePerMillion::new(m).unwrap()
    }

    fn version(id: i64, from: &str, input: i64) -> PriceVersion {
        PriceVersion {
            pricing_id: id,
            model: "m".into(),
            effective_from: ts(from),
            prices: TokenPrices {
                input: p(input),
                output: p(0),
                cache_write_5m: p(0),
                cache_write_1h: p(0),
                cache_read: p(0),
            },
        }
    }

    // The version in force is the latest that started at or before the instant, at the boundary too.
    #[test]
    fn version_in_force() {
        let book = PriceBook::new([
            version(2, "2026-02-01T00:00:00Z", 2),
            version(1, "2026-01-01T00:00:00Z", 1),
        ])
        .unwrap();
        assert!(matches!(
            book.price_at("m", ts("2025-12-31T23:59:59.999Z")),
            Err(BillingError::NoPriceInForce { .. })
        ));
        assert_eq!(
            book.price_at("m", ts("2026-01-31T23:59:59.999Z"))
                .unwrap()
                .pricing_id,
            1
        );
        assert_eq!(
            book.price_at("m", ts("2026-02-01T00:00:00Z"))
                .unwrap()
                .pricing_id,
            2
        );
        assert!(matches!(
            book.price_at("x", ts("2026-02-01T00:00:00Z")),
            Err(BillingError::UnknownModel { .. })
        ));
    }

    // Two versions starting at the same instant are refused.
    #[test]
    fn duplicate_start_refused() {
        let e = PriceBook::new([
            version(1, "2026-01-01T00:00:00Z", 1),
            version(2, "2026-01-01T00:00:00Z", 2),
        ])
        .unwrap_err();
        assert!(matches!(e, BillingError::DuplicateVersion { .. }));
    }

    // New versions: not in the past, not inside a finalized period, not on an existing start.
    #[test]
    fn new_version_rules() {
        let now = ts("2026-06-01T00:00:00Z");
        assert!(
            check_new_version(&[], ts("2026-05-31T00:00:00Z"), now, None)
                .unwrap_err()
                .reason
                .contains("in the past")
        );
        assert!(check_new_version(
            &[],
            ts("2026-06-02T00:00:00Z"),
            now,
            Some(ts("2026-07-01T00:00:00Z"))
        )
        .unwrap_err()
        .reason
        .contains("finalized"));
        assert!(check_new_version(
            &[ts("2026-06-02T00:00:00Z")],
            ts("2026-06-02T00:00:00Z"),
            now,
            None
        )
        .is_err());
        assert!(check_new_version(
            &[ts("2026-06-02T00:00:00Z")],
            ts("2026-06-03T00:00:00Z"),
            now,
            Some(ts("2026-06-01T00:00:00Z"))
        )
        .is_ok());
    }
}
