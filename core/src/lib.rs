//! `billing-core`: the pure rules of LLM chat billing, shared by every Spin
//! component, the host and the bridge. No I/O: no clock, no network, no files.
//! Whoever calls in passes the current time.
//!
//! - [`money`]: integer money. Prices in micro-USD per million units, costs in
//!   nano-USD, invoice totals in cents; half-to-even rounding, done once.
//! - [`time`]: [`Timestamp`], UTC milliseconds with one canonical text form.
//! - [`usage`]: Anthropic's `usage` object, from a response body or a stream.
//! - [`pricing`]: effective-dated price versions and quotes.
//! - [`invoice`]: assembling line items into an invoice and finalising it.
//! - [`events`]: the CloudEvents envelope and the typed event payloads.
//! - [`aggregates`]: the dashboard aggregates in Redis: key layout and what each event adds.
//! - [`tokenizer`]: local token counts (exact for OpenAI BPE, estimates for Claude).
//! - [`error`]: [`BillingError`], every way the rules can say no.

pub mod aggregates;
pub mod error;
pub mod events;
pub mod invoice;
pub mod model;
pub mod money;
pub mod pricing;
pub mod sse;
pub mod time;
#[cfg(feature = "tokenizer")]
pub mod tokenizer;
pub mod usage;

pub use error::{BillingError, FieldError};
pub use model::ModelName;
pub use money::{Cents, Nanos, PricePerMillion};
pub use time::Timestamp;
pub use usage::{TokenClass, Usage};
