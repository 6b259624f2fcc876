//! Every way the billing rules can refuse, as structured variants a caller
//! can match on and a person can read.

use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    #[error("unknown model `{model}`")]
    UnknownModel { model: String },

    #[error("no price for model `{model}` is in force at {at}")]
    NoPriceInForce { model: String, at: Timestamp },

    #[error("no price for resource `{resource}` is in force at {at}")]
    NoResourcePriceInForce { resource: String, at: Timestamp },

    #[error("two price versions of `{name}` start at the same instant {at}")]
    DuplicateVersion { name: String, at: Timestamp },

    #[error("{0}")]
    Invalid(FieldError),

    #[error("amount too large: {what} overflows")]
    Overflow { what: &'static str },

    #[error("line item {line_item_id} already belongs to invoice {invoice_id}")]
    AlreadyInvoiced { line_item_id: i64, invoice_id: i64 },

    #[error("line item {line_item_id} appears twice")]
    DuplicateLineItem { line_item_id: i64 },
}

/// One bad field: where it is (a dotted path such as `data.usage.input_tokens`)
/// and what is wrong with it, in words.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl From<FieldError> for BillingError {
    fn from(e: FieldError) -> Self {
        BillingError::Invalid(e)
    }
}
