//! Every error a component returns, and its one rendering as RFC 9457
//! problem+json: `type`, `title`, `status`, `detail`, plus `errors` (each
//! bad field and why) and `request_id` where they apply.

use billing_core::{BillingError, FieldError};
use serde_json::json;
use spin_sdk::http::Response;

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// The body is not JSON, or a query parameter is malformed.
    BadRequest(String),
    /// The input is well-formed but breaks the rules; every bad field listed.
    Invalid(Vec<FieldError>),
    /// A batch with bad items (400): each problem with the item's index.
    InvalidBatch(Vec<(usize, FieldError)>),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed(String),
    Conflict(String),
    /// 409 with `retry-after`: the same request is being handled now
    /// (an Idempotency-Key claimed by a request still in flight).
    InProgress {
        detail: String,
        retry_after_s: u64,
    },
    PayloadTooLarge(String),
    UnsupportedMediaType(String),
    RateLimited {
        retry_after_s: u64,
    },
    /// The model provider failed (502), is unavailable (503) or timed out (504).
    Upstream {
        status: u16,
        detail: String,
        request_id: Option<String>,
    },
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError::new(field, reason)])
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Invalid(_) => 422,
            ApiError::InvalidBatch(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) | ApiError::InProgress { .. } => 409,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::RateLimited { .. } => 429,
            ApiError::Upstream { status, .. } => *status,
            ApiError::Internal(_) => 500,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => ("bad-request", "Bad request"),
            ApiError::Invalid(_) => ("validation", "Invalid input"),
            ApiError::InvalidBatch(_) => ("invalid-batch", "Invalid events"),
            ApiError::Unauthorized(_) => ("unauthorized", "Not signed in"),
            ApiError::Forbidden(_) => ("forbidden", "Not allowed"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::InProgress { .. } => ("in-progress", "The same request is in progress"),
            ApiError::PayloadTooLarge(_) => ("payload-too-large", "Request too large"),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported-media-type", "Unsupported media type")
            }
            ApiError::RateLimited { .. } => ("rate-limited", "Too many requests"),
            ApiError::Upstream { .. } => ("upstream", "The model provider failed"),
            ApiError::Internal(_) => ("internal", "Internal error"),
        }
    }

    pub fn detail(&self) -> String {
        match self {
            ApiError::Invalid(errors) => errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::RateLimited { retry_after_s } => {
                format!("slow down: retry after {retry_after_s} s")
            }
            ApiError::InvalidBatch(errors) => {
                let bad: std::collections::BTreeSet<usize> =
                    errors.iter().map(|(i, _)| *i).collect();
                format!(
                    "{} of the events are invalid; nothing was stored",
                    bad.len()
                )
            }
            ApiError::BadRequest(d)
            | ApiError::Unauthorized(d)
            | ApiError::Forbidden(d)
            | ApiError::NotFound(d)
            | ApiError::MethodNotAllowed(d)
            | ApiError::Conflict(d)
            | ApiError::PayloadTooLarge(d)
            | ApiError::UnsupportedMediaType(d)
            | ApiError::Internal(d) => d.clone(),
            ApiError::Upstream { detail, .. } | ApiError::InProgress { detail, .. } => {
                detail.clone()
            }
        }
    }

    /// The RFC 9457 problem object (`type`, `title`, `status`, `detail`,
    /// and `errors` or `request_id` where they apply), as [`Self::into_response`] sends it.
    pub fn body(&self) -> serde_json::Value {
        let status = self.status();
        let (slug, title) = self.slug_and_title();
        let mut body = json!({
            "type": format!("/problems/{slug}"),
            "title": title,
            "status": status,
            "detail": self.detail(),
        });
        if let ApiError::Invalid(errors) = self {
            body["errors"] = json!(errors);
        }
        if let ApiError::InvalidBatch(errors) = self {
            body["errors"] = json!(errors
                .iter()
                .map(|(i, e)| json!({"index": i, "field": e.field, "reason": e.reason}))
                .collect::<Vec<_>>());
        }
        if let ApiError::Upstream {
            request_id: Some(id),
            ..
        } = self
        {
            body["request_id"] = json!(id);
        }
        body
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        let mut b = Response::builder();
        b.status(status)
            .header("content-type", "application/problem+json");
        if let ApiError::RateLimited { retry_after_s }
        | ApiError::InProgress { retry_after_s, .. } = &self
        {
            b.header("retry-after", retry_after_s.to_string());
        }
        if let ApiError::Unauthorized(_) = &self {
            b.header("www-authenticate", "Bearer");
        }
        b.body(serde_json::to_vec(&body).expect("problem serialises"))
            .build()
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(vec![e])
    }
}

impl From<BillingError> for ApiError {
    fn from(e: BillingError) -> Self {
        match e {
            BillingError::Invalid(f) => ApiError::Invalid(vec![f]),
            BillingError::UnknownModel { model } => {
                ApiError::invalid("model", format!("`{model}` is not a known model"))
            }
            BillingError::NoPriceInForce { model, at } => {
                ApiError::invalid("model", format!("`{model}` has no price in force at {at}"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<spin_sdk::sqlite::Error> for ApiError {
    fn from(e: spin_sdk::sqlite::Error) -> Self {
        ApiError::Internal(format!("database error: {e:?}"))
    }
}

/// Gathers every field problem of one input, so a 422 lists them all.
#[derive(Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    /// Keeps the value, or records why not. Errors other than field
    /// problems are recorded as a problem with the `input` field.
    pub fn check<T>(&mut self, r: ApiResult<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(ApiError::Invalid(v)) => {
                self.0.extend(v);
                None
            }
            Err(other) => {
                self.0.push(FieldError::new("input", other.detail()));
                None
            }
        }
    }

    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    /// Ok when nothing was recorded.
    pub fn finish(self) -> ApiResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.0))
        }
    }
}
