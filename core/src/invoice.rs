//! Invoices: line items in, lines and subtotals out, cents at the end.
//!
//! A draft is assembled from line items that belong to no invoice yet; an
//! item already on an invoice is refused, so no item is billed twice.
//! Finalising rounds the exact nano-USD total to cents once, half-to-even,
//! and keeps the difference.

use crate::error::BillingError;
use crate::money::{Cents, Nanos, PricePerMillion};
use crate::time::Timestamp;
use crate::usage::TokenClass;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a line item bills.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LineKind {
    Token {
        model: String,
        token_class: TokenClass,
    },
    Resource {
        resource: String,
    },
}

/// One priced line, as stored in `user_invoice_line_item` or
/// `resource_invoice_line_item`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub line_item_id: i64,
    #[serde(flatten)]
    pub kind: LineKind,
    pub quantity: u64,
    pub unit_price: PricePerMillion,
    pub cost: Nanos,
    pub occurred_at: Timestamp,
    /// The invoice this item is already on, if any.
    #[serde(default)]
    pub invoice_id: Option<i64>,
}

/// Tokens and cost of one token class of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassSubtotal {
    pub token_class: TokenClass,
    pub tokens: u64,
    pub cost: Nanos,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSubtotal {
    pub model: String,
    pub classes: Vec<ClassSubtotal>,
    pub cost: Nanos,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSubtotal {
    pub resource: String,
    pub quantity: u64,
    pub cost: Nanos,
}

/// An invoice before finalisation: every line, subtotals per model (and per
/// token class within it) and per resource, and the exact total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceDraft {
    pub lines: Vec<LineItem>,
    pub models: Vec<ModelSubtotal>,
    pub resources: Vec<ResourceSubtotal>,
    pub total: Nanos,
}

/// The frozen figures of a final invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalTotals {
    /// Exact sum of the lines.
    pub total_nanos: Nanos,
    /// What is charged: `total_nanos` rounded to cents, half-to-even.
    pub total_cents: Cents,
    /// `total_cents − total_nanos`, in nanos: positive when rounded up.
    pub rounding: Nanos,
}

/// Assembles a draft. Lines are ordered by (occurred_at, line kind,
/// line_item_id), subtotals by name, so the same items always give the same
/// invoice.
pub fn assemble(mut items: Vec<LineItem>) -> Result<InvoiceDraft, BillingError> {
    if let Some(item) = items.iter().find(|i| i.invoice_id.is_some()) {
        return Err(BillingError::AlreadyInvoiced {
            line_item_id: item.line_item_id,
            invoice_id: item.invoice_id.unwrap(),
        });
    }
    items.sort_by(|a, b| {
        (a.occurred_at, &a.kind, a.line_item_id).cmp(&(b.occurred_at, &b.kind, b.line_item_id))
    });
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for i in &items {
        if !seen.insert((matches!(i.kind, LineKind::Token { .. }), i.line_item_id)) {
            return Err(BillingError::DuplicateLineItem {
                line_item_id: i.line_item_id,
            });
        }
    }

    let mut models: BTreeMap<&str, BTreeMap<TokenClass, (u64, Nanos)>> = BTreeMap::new();
    let mut resources: BTreeMap<&str, (u64, Nanos)> = BTreeMap::new();
    for i in &items {
        let slot = match &i.kind {
            LineKind::Token { model, token_class } => models
                .entry(model)
                .or_default()
                .entry(*token_class)
                .or_insert((0, Nanos::ZERO)),
            LineKind::Resource { resource } => {
                resources.entry(resource).or_insert((0, Nanos::ZERO))
            }
        };
        slot.0 = slot
            .0
            .checked_add(i.quantity)
            .ok_or(BillingError::Overflow {
                what: "a subtotal's quantity",
            })?;
        slot.1 = slot.1.checked_add(i.cost)?;
    }

    let models = models
        .into_iter()
        .map(|(model, classes)| {
            let classes: Vec<ClassSubtotal> = classes
                .into_iter()
                .map(|(token_class, (tokens, cost))| ClassSubtotal {
                    token_class,
                    tokens,
                    cost,
                })
                .collect();
            Ok(ModelSubtotal {
                model: model.to_owned(),
                cost: Nanos::sum(classes.iter().map(|c| c.cost))?,
                classes,
            })
        })
        .collect::<Result<Vec<_>, BillingError>>()?;
    let resources: Vec<ResourceSubtotal> = resources
        .into_iter()
        .map(|(resource, (quantity, cost))| ResourceSubtotal {
            resource: resource.to_owned(),
            quantity,
            cost,
        })
        .collect();
    let total = Nanos::sum(
        models
            .iter()
            .map(|m| m.cost)
            .chain(resources.iter().map(|r| r.cost)),
    )?;
    let lines = items;
    Ok(InvoiceDraft {
        lines,
        models,
        resources,
        total,
    })
}

impl InvoiceDraft {
    /// Rounds the total to cents, once.
    pub fn finalize(&self) -> FinalTotals {
        let (total_cents, rounding) = self.total.round_to_cents();
        FinalTotals {
            total_nanos: self.total,
            total_cents,
            rounding,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token_item(
        id: i64,
        model: &str,
        class: TokenClass,
        quantity: u64,
        cost: i64,
        ms: i64,
    ) -> LineItem {
        LineItem {
            line_item_id: id,
            kind: LineKind::Token {
                model: model.into(),
                token_class: class,
            },
            quantity,
            unit_price: PricePerMillion::ZERO,
            cost: Nanos(cost),
            occurred_at: Timestamp::from_millis(ms).unwrap(),
            invoice_id: None,
        }
    }

    // An item already on an invoice, or twice in the input, is refused: no line is billed twice.
    #[test]
    fn refuses_double_billing() {
        let mut a = token_item(1, "m", TokenClass::Input, 1, 1, 0);
        a.invoice_id = Some(7);
        assert_eq!(
            assemble(vec![a]).unwrap_err(),
            BillingError::AlreadyInvoiced {
                line_item_id: 1,
                invoice_id: 7
            }
        );
        let b = token_item(2, "m", TokenClass::Input, 1, 1, 0);
        assert_eq!(
            assemble(vec![b.clone(), b]).unwrap_err(),
            BillingError::DuplicateLineItem { line_item_id: 2 }
        );
    }

    proptest! {
        // Subtotals and lines both sum to the exact total before rounding, in any input order, and the result is order-independent.
        #[test]
        fn lines_sum_to_total(raw in proptest::collection::vec((0usize..3, 0usize..5, 0u64..1_000_000_000, 0i64..1_000_000_000_000, 0i64..1_000_000), 0..60)) {
            let models = ["a", "b", "c"];
            let items: Vec<LineItem> = raw.iter().enumerate()
                .map(|(i, (m, c, q, cost, t))| token_item(i as i64, models[*m], TokenClass::ALL[*c], *q, *cost, *t))
                .collect();
            let draft = assemble(items.clone()).unwrap();
            let by_lines: i64 = draft.lines.iter().map(|l| l.cost.0).sum();
            let by_models: i64 = draft.models.iter().map(|m| m.cost.0).sum();
            let by_classes: i64 = draft.models.iter().flat_map(|m| m.classes.iter()).map(|c| c.cost.0).sum();
            prop_assert_eq!(draft.total.0, by_lines);
            prop_assert_eq!(draft.total.0, by_models);
            prop_assert_eq!(draft.total.0, by_classes);
            let mut reversed = items;
            reversed.reverse();
            prop_assert_eq!(assemble(reversed).unwrap(), draft.clone());
            let fin = draft.finalize();
            prop_assert_eq!(fin.total_cents.0 * crate::money::NANOS_PER_CENT - fin.total_nanos.0, fin.rounding.0);
        }
    }
}
