//! Effective-dated prices and quotes: how providers bill, in one function.
//!
//! A price version holds from its `effective_from` until the next version of
//! the same model (or resource) starts; the version in force at an instant is
//! the latest one that started at or before it. Versions therefore never
//! overlap, and a new version never changes what an earlier event cost.
//!
//! [`quote`] prices one usage object under one version, in this order:
//! 1. **Token classes**: input, output, 5-minute and 1-hour cache writes,
//!    cache reads, each at its own rate ([`TokenPrices`]).
//! 2. **Prompt-length tiers** ([`PromptTier`]): when the request's prompt
//!    (input + cache writes + cache reads, [`Usage::prompt_tokens`]) is
//!    *above* a tier's threshold, that tier's rates replace the base rates
//!    for *every* token of the request, output included; of several tiers
//!    the highest threshold below the prompt applies. (Anthropic's
//!    long-context pricing: "If input_tokens + cache_creation_input_tokens +
//!    cache_read_input_tokens exceeds 200,000, all tokens are charged at the
//!    long-context rates"; genai-prices' `TieredPrices` compares the same way,
//!    `total_input_tokens > tier.start`.)
//! 3. **Modifiers** ([`Modifier`]): every modifier whose attribute the usage
//!    reports with its value (`service_tier: batch`, `inference_geo: us`,
//!    `speed: fast`) multiplies the chosen rates; several stack by
//!    multiplying (Anthropic: batch, data residency and long context
//!    "stack"; prompt-caching multipliers apply on top, which per-class rates
//!    times one factor gives). The resulting rate is rounded half-to-even to
//!    a whole micro-USD per million tokens, once, then each line costs
//!    `tokens × rate / 1000` nano-USD ([`line_cost`]), so every line reads
//!    `tokens × unit_price = cost`.
//! 4. **Fees** per server-tool call (`server_tool_use.web_search_requests`)
//!    at the resource price in force ([`FEE_RESOURCES`]); modifiers do not
//!    apply to fees (Anthropic publishes no batch rate for web search).

use crate::error::{BillingError, FieldError};
use crate::money::{div_round_half_even, line_cost, Nanos, PricePerMillion};
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

/// A model's token prices from `effective_from` on: base rates and the
/// rules that change them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    pub pricing_id: i64,
    pub model: String,
    pub effective_from: Timestamp,
    pub prices: TokenPrices,
    #[serde(default, skip_serializing_if = "PriceRules::is_empty")]
    pub rules: PriceRules,
}

impl PriceVersion {
    /// A version from its stored columns (`dim_token_pricing`): the five
    /// rates in [`TokenClass::ALL`] order (micro-USD per million tokens),
    /// `effective_from` in canonical text, `rules` the JSON of [`PriceRules`].
    /// Errors name the column that does not parse or breaks a rule.
    pub fn from_stored(
        pricing_id: i64,
        model: &str,
        effective_from: &str,
        rates: [i64; 5],
        rules: &str,
    ) -> Result<Self, FieldError> {
        let rate = |i: usize| {
            PricePerMillion::new(rates[i]).map_err(|e| {
                FieldError::new(format!("{}_price", TokenClass::ALL[i].as_str()), e.reason)
            })
        };
        let rules: PriceRules = serde_json::from_str(rules)
            .map_err(|e| FieldError::new("rules", format!("does not parse: {e}")))?;
        rules.validate()?;
        Ok(Self {
            pricing_id,
            model: model.to_owned(),
            effective_from: Timestamp::parse(effective_from)
                .map_err(|e| FieldError::new("effective_from", e.to_string()))?,
            prices: TokenPrices {
                input: rate(0)?,
                output: rate(1)?,
                cache_write_5m: rate(2)?,
                cache_write_1h: rate(3)?,
                cache_read: rate(4)?,
            },
            rules,
        })
    }
}

/// What changes a version's base rates: prompt-length tiers and modifiers.
/// Stored as JSON beside the base rates (`dim_token_pricing.rules`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceRules {
    /// Ascending thresholds; see the module docs, step 2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<PromptTier>,
    /// See the module docs, step 3.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modifiers: Vec<Modifier>,
}

/// Rates for a request whose prompt is above `above_prompt_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTier {
    pub above_prompt_tokens: u64,
    pub prices: TokenPrices,
}

/// A factor on every token rate of a request whose usage reports
/// `attribute` = `value`, e.g. `service_tier` = `batch` × `0.5`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modifier {
    /// One of [`crate::usage::MODE_FIELDS`]: `service_tier`, `inference_geo`, `speed`.
    pub attribute: String,
    pub value: String,
    pub multiplier: Multiplier,
}

/// An exact decimal factor, written as a string (`"0.5"`, `"1.1"`, `"6"`):
/// more than 0, at most 100, at most 6 decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Multiplier {
    num: u64,
    den: u64,
}

impl Multiplier {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                "multiplier",
                format!(
                    "`{s}` is not a decimal factor above 0 and at most 100 with at most 6 decimals"
                ),
            )
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty()
            || frac.len() > 6
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || int.len() > 3
        {
            return Err(bad());
        }
        let den = 10u64.pow(frac.len() as u32);
        let num = format!("{int}{frac}").parse::<u64>().map_err(|_| bad())?;
        if num == 0 || num > 100 * den {
            return Err(bad());
        }
        Ok(Self { num, den })
    }
}

impl TryFrom<String> for Multiplier {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        Self::parse(&s)
    }
}

impl From<Multiplier> for String {
    fn from(m: Multiplier) -> String {
        // den is 10^decimals (parse makes it so)
        let decimals = m.den.to_string().len() - 1;
        if decimals == 0 {
            return m.num.to_string();
        }
        let digits = format!("{:0>width$}", m.num, width = decimals + 1);
        let (i, f) = digits.split_at(digits.len() - decimals);
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            i.to_owned()
        } else {
            format!("{i}.{f}")
        }
    }
}

impl std::fmt::Display for Multiplier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

impl PriceRules {
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty() && self.modifiers.is_empty()
    }

    /// Tiers strictly ascending above 0; one modifier per attribute and
    /// value, each on a known attribute with a valid value.
    pub fn validate(&self) -> Result<(), FieldError> {
        let mut last = 0;
        for (i, t) in self.tiers.iter().enumerate() {
            if t.above_prompt_tokens <= last {
                return Err(FieldError::new(
                    format!("rules.tiers[{i}].above_prompt_tokens"),
                    format!(
                        "{} must be above 0 and above the previous tier's threshold ({last})",
                        t.above_prompt_tokens
                    ),
                ));
            }
            last = t.above_prompt_tokens;
        }
        for (i, m) in self.modifiers.iter().enumerate() {
            if !crate::usage::MODE_FIELDS.contains(&m.attribute.as_str()) {
                return Err(FieldError::new(
                    format!("rules.modifiers[{i}].attribute"),
                    format!(
                        "`{}` is not one of service_tier, inference_geo, speed",
                        m.attribute
                    ),
                ));
            }
            crate::usage::check_label(&m.value, &m.attribute)
                .map_err(|e| FieldError::new(format!("rules.modifiers[{i}].value"), e.reason))?;
            if self.modifiers[..i]
                .iter()
                .any(|o| o.attribute == m.attribute && o.value == m.value)
            {
                return Err(FieldError::new(
                    format!("rules.modifiers[{i}]"),
                    format!("a modifier for {} = {} comes earlier", m.attribute, m.value),
                ));
            }
        }
        Ok(())
    }
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

    /// Prices `usage` of `model` as of `at`, server-tool fees at the
    /// resource prices of `resources` in force at the same instant.
    pub fn quote(
        &self,
        model: &str,
        usage: &Usage,
        at: Timestamp,
        resources: &ResourcePriceBook,
    ) -> Result<Quote, BillingError> {
        let version = self.price_at(model, at)?;
        let fees = fee_prices(usage, at, |r| resources.at(r, at).cloned())?;
        quote(version, &fees, usage)
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

/// Resources priced per server-tool call, and the usage field counting
/// each: `web_search_request` ($10 per 1,000 searches at Anthropic's list
/// price) counts `server_tool_use.web_search_requests`.
pub const FEE_RESOURCES: [(&str, &str); 1] =
    [("web_search_request", "server_tool_use.web_search_requests")];

/// The server-tool calls of `usage` per fee resource, those with calls only.
pub fn fee_quantities(usage: &Usage) -> Vec<(&'static str, u64)> {
    [(
        FEE_RESOURCES[0].0,
        usage.server_tool_use.web_search_requests,
    )]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// The resource versions `usage`'s fees need, found with `lookup` (the
/// version of a resource in force at `at`), or which one is missing.
pub fn fee_prices(
    usage: &Usage,
    at: Timestamp,
    mut lookup: impl FnMut(&str) -> Option<ResourcePriceVersion>,
) -> Result<Vec<ResourcePriceVersion>, BillingError> {
    fee_quantities(usage)
        .into_iter()
        .map(|(resource, _)| {
            lookup(resource).ok_or_else(|| BillingError::NoResourcePriceInForce {
                resource: resource.to_owned(),
                at,
            })
        })
        .collect()
}

/// One token class of a quote: tokens × unit price = cost (rounded once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteLine {
    pub class: TokenClass,
    pub tokens: u64,
    /// The rate charged: the tier's rate times the modifiers, micro-USD per million tokens.
    pub unit_price: PricePerMillion,
    pub cost: Nanos,
}

/// A per-call fee of a quote (server tools).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeLine {
    pub resource: String,
    pub resource_pricing_id: i64,
    pub quantity: u64,
    /// Micro-USD per million calls.
    pub unit_price: PricePerMillion,
    pub cost: Nanos,
}

/// A modifier that applied to a quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedModifier {
    pub attribute: String,
    pub value: String,
    pub multiplier: Multiplier,
}

/// The cost of one usage under one price version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub model: String,
    pub pricing_id: i64,
    pub effective_from: Timestamp,
    /// Input + cache writes + cache reads: what tiers compare with.
    pub prompt_tokens: u64,
    /// The threshold of the prompt-length tier applied, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_above_prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modifiers: Vec<AppliedModifier>,
    pub lines: Vec<QuoteLine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fees: Vec<FeeLine>,
    pub total: Nanos,
}

/// Prices `usage` at `version` (module docs: classes, tier, modifiers,
/// fees). Every token class appears, zero-token ones included, so a quote
/// always has the same shape. `fees` are the resource versions in force
/// for [`fee_quantities`] (from [`fee_prices`]); a fee without its price
/// is [`BillingError::NoResourcePriceInForce`].
///
/// Errors: invalid usage or rules ([`BillingError::Invalid`]), a rate or a
/// sum beyond the integer range ([`BillingError::Overflow`]).
pub fn quote(
    version: &PriceVersion,
    fees: &[ResourcePriceVersion],
    usage: &Usage,
) -> Result<Quote, BillingError> {
    usage.validate()?;
    version.rules.validate()?;
    let prompt = usage.prompt_tokens();
    let tier = version
        .rules
        .tiers
        .iter()
        .rev()
        .find(|t| prompt > t.above_prompt_tokens as u128);
    let rates = tier.map(|t| &t.prices).unwrap_or(&version.prices);
    let modifiers: Vec<AppliedModifier> = version
        .rules
        .modifiers
        .iter()
        .filter(|m| usage.mode(&m.attribute) == Some(m.value.as_str()))
        .map(|m| AppliedModifier {
            attribute: m.attribute.clone(),
            value: m.value.clone(),
            multiplier: m.multiplier,
        })
        .collect();
    let lines = usage
        .by_class()
        .into_iter()
        .map(|(class, tokens)| {
            let unit_price = modified_rate(rates.get(class), &modifiers)?;
            Ok(QuoteLine {
                class,
                tokens,
                unit_price,
                cost: line_cost(tokens, unit_price)?,
            })
        })
        .collect::<Result<Vec<_>, BillingError>>()?;
    let fees = fee_quantities(usage)
        .into_iter()
        .map(|(resource, quantity)| {
            let v = fees
                .iter()
                .find(|v| v.resource == resource)
                .ok_or_else(|| BillingError::NoResourcePriceInForce {
                    resource: resource.to_owned(),
                    at: version.effective_from,
                })?;
            Ok(FeeLine {
                resource: resource.to_owned(),
                resource_pricing_id: v.resource_pricing_id,
                quantity,
                unit_price: v.unit_price,
                cost: line_cost(quantity, v.unit_price)?,
            })
        })
        .collect::<Result<Vec<_>, BillingError>>()?;
    let total = Nanos::sum(
        lines
            .iter()
            .map(|l| l.cost)
            .chain(fees.iter().map(|f| f.cost)),
    )?;
    Ok(Quote {
        model: version.model.clone(),
        pricing_id: version.pricing_id,
        effective_from: version.effective_from,
        prompt_tokens: u64::try_from(prompt).map_err(|_| BillingError::Overflow {
            what: "the prompt's token count",
        })?,
        tier_above_prompt_tokens: tier.map(|t| t.above_prompt_tokens),
        modifiers,
        lines,
        fees,
        total,
    })
}

/// `rate × Π multipliers`, rounded half-to-even to whole micro-USD per million, once.
fn modified_rate(
    rate: PricePerMillion,
    modifiers: &[AppliedModifier],
) -> Result<PricePerMillion, BillingError> {
    let overflow = BillingError::Overflow {
        what: "a modified rate",
    };
    let (mut num, mut den) = (rate.micros() as i128, 1i128);
    for m in modifiers {
        num = num
            .checked_mul(m.multiplier.num as i128)
            .ok_or(overflow.clone())?;
        den = den
            .checked_mul(m.multiplier.den as i128)
            .ok_or(overflow.clone())?;
    }
    let micros = div_round_half_even(num, den);
    i64::try_from(micros)
        .ok()
        .and_then(|m| PricePerMillion::new(m).ok())
        .ok_or(overflow)
}

/// The cost of `quantity` units of a resource at `version`.
pub fn resource_cost(version: &ResourcePriceVersion, quantity: u64) -> Result<Nanos, BillingError> {
    line_cost(quantity, version.unit_price)
}

/// The resources every inference call is billed for beside its tokens, with
/// the quantity of each: one `inference_request` (per call) and
/// `compute_ms` of `compute_time` (per millisecond).
pub fn inference_resources(compute_ms: u64) -> [(&'static str, u64); 2] {
    [("inference_request", 1), ("compute_time", compute_ms)]
}

/// What an inference call costs: its quote (tokens and server-tool fees)
/// plus a line per resource with a quantity and a price in force
/// (`priced`: each resource's version, if any, with its quantity; a zero
/// quantity or a missing price is no line). Returns the resource lines and
/// the call's total in nano-USD. The one place this sum is made: the bridge
/// bills it, the gateway tells it. Errors: a line or the total that
/// overflows ([`BillingError::Overflow`]).
pub fn inference_call_cost(
    quote: &Quote,
    priced: &[(Option<ResourcePriceVersion>, u64)],
) -> Result<(Vec<FeeLine>, Nanos), BillingError> {
    let mut total = quote.total;
    let mut lines = Vec::new();
    for (version, quantity) in priced {
        let (Some(v), true) = (version, *quantity > 0) else {
            continue;
        };
        let cost = resource_cost(v, *quantity)?;
        total = total.checked_add(cost)?;
        lines.push(FeeLine {
            resource: v.resource.clone(),
            resource_pricing_id: v.resource_pricing_id,
            quantity: *quantity,
            unit_price: v.unit_price,
            cost,
        });
    }
    Ok((lines, total))
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
            rules: PriceRules::default(),
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

    // Multipliers parse exact decimals and print back as written; zero, over 100 and 7 decimals are refused.
    #[test]
    fn multipliers() {
        for ok in ["0.5", "1.1", "2", "6", "0.000001", "100", "1.75"] {
            assert_eq!(String::from(Multiplier::parse(ok).unwrap()), ok);
        }
        assert_eq!(String::from(Multiplier::parse("1.10").unwrap()), "1.1");
        for bad in [
            "0",
            "0.0",
            "100.5",
            "1.0000001",
            "-1",
            "1e2",
            "",
            ".5",
            "abc",
        ] {
            assert!(Multiplier::parse(bad).is_err(), "{bad}");
        }
    }

    // A modified rate is rounded half-to-even once: 3 x 0.5 = 1.5 -> 2, 5 x 0.5 = 2.5 -> 2; then tokens x rate.
    #[test]
    fn modified_rate_rounds_once() {
        let mut v = version(1, "2026-01-01T00:00:00Z", 3);
        v.prices.output = p(5);
        v.rules.modifiers.push(Modifier {
            attribute: "service_tier".into(),
            value: "batch".into(),
            multiplier: Multiplier::parse("0.5").unwrap(),
        });
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            service_tier: Some("batch".into()),
            ..Usage::default()
        };
        let q = quote(&v, &[], &usage).unwrap();
        assert_eq!(
            (q.lines[0].unit_price.micros(), q.lines[0].cost.0),
            (2, 2000)
        );
        assert_eq!(
            (q.lines[1].unit_price.micros(), q.lines[1].cost.0),
            (2, 2000)
        );
        let standard = Usage {
            service_tier: Some("standard".into()),
            ..usage
        };
        assert_eq!(quote(&v, &[], &standard).unwrap().total.0, 8000);
    }

    // Rules that could not be applied unambiguously are refused, naming the field.
    #[test]
    fn rules_validation() {
        let tier = |above| PromptTier {
            above_prompt_tokens: above,
            prices: version(1, "2026-01-01T00:00:00Z", 1).prices,
        };
        let r = PriceRules {
            tiers: vec![tier(200_000), tier(100_000)],
            modifiers: vec![],
        };
        assert_eq!(
            r.validate().unwrap_err().field,
            "rules.tiers[1].above_prompt_tokens"
        );
        let m = |a: &str, v: &str| Modifier {
            attribute: a.into(),
            value: v.into(),
            multiplier: Multiplier::parse("2").unwrap(),
        };
        let r = PriceRules {
            tiers: vec![],
            modifiers: vec![m("region", "us")],
        };
        assert_eq!(
            r.validate().unwrap_err().field,
            "rules.modifiers[0].attribute"
        );
        let r = PriceRules {
            tiers: vec![],
            modifiers: vec![m("speed", "fast"), m("speed", "fast")],
        };
        assert_eq!(r.validate().unwrap_err().field, "rules.modifiers[1]");
        let r = PriceRules {
            tiers: vec![],
            modifiers: vec![m("speed", "Fast")],
        };
        assert_eq!(r.validate().unwrap_err().field, "rules.modifiers[0].value");
    }

    // A web search without a fee price in force is an error, never a free search.
    #[test]
    fn fee_without_price() {
        let v = version(1, "2026-01-01T00:00:00Z", 1);
        let mut usage = Usage::default();
        usage.server_tool_use.web_search_requests = 2;
        assert!(matches!(
            quote(&v, &[], &usage),
            Err(BillingError::NoResourcePriceInForce { .. })
        ));
        assert!(fee_prices(&usage, ts("2026-01-02T00:00:00Z"), |_| None).is_err());
    }

    // An inference call: its quote plus one request and its compute milliseconds, each at its price; a zero
    // quantity or a resource without a price adds no line; the total overflows into an error, never wraps.
    #[test]
    fn inference_call_cost_adds_the_resources() {
        let v = version(1, "2026-01-01T00:00:00Z", 1);
        let usage = Usage {
            input_tokens: 1_000,
            ..Usage::default()
        };
        let q = quote(&v, &[], &usage).unwrap();
        let resource = |name: &str, micros: i64| ResourcePriceVersion {
            resource_pricing_id: 7,
            resource: name.into(),
            unit: "unit".into(),
            effective_from: ts("2026-01-01T00:00:00Z"),
            unit_price: PricePerMillion::new(micros).unwrap(),
        };
        // $100 per million requests (100,000 nano-USD each), $1 per million ms (1,000 nano-USD per ms).
        let [(r, one), (c, ms)] = inference_resources(380);
        assert_eq!(
            (r, one, c, ms),
            ("inference_request", 1, "compute_time", 380)
        );
        let (lines, total) = inference_call_cost(
            &q,
            &[
                (Some(resource(r, 100_000_000)), one),
                (Some(resource(c, 1_000_000)), ms),
            ],
        )
        .unwrap();
        assert_eq!(
            lines.iter().map(|l| l.cost.0).collect::<Vec<_>>(),
            [100_000, 380_000]
        );
        assert_eq!(total.0, q.total.0 + 480_000);
        let (lines, total) = inference_call_cost(
            &q,
            &[
                (Some(resource(r, 100_000_000)), 1),
                (Some(resource(c, 1_000_000)), 0),
                (None, 5),
            ],
        )
        .unwrap();
        assert_eq!((lines.len(), total.0), (1, q.total.0 + 100_000));
        let huge = resource(r, PricePerMillion::MAX);
        assert!(inference_call_cost(
            &q,
            &[
                (Some(huge.clone()), u64::MAX / 2),
                (Some(huge), u64::MAX / 2)
            ]
        )
        .is_err());
    }
}
