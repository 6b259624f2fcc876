//! Input at the edge: JSON bodies (size-capped, typed, every problem in
//! words), query strings and path segments.

use crate::problem::{ApiError, ApiResult};
use billing_core::Timestamp;
use serde::de::DeserializeOwned;
use spin_sdk::http::Request;
use std::collections::BTreeMap;

/// Largest JSON body a component reads, unless it says otherwise.
pub const MAX_JSON_BYTES: usize = 256 * 1024;

/// Parses a JSON body of at most `max_bytes`: 415 for another content type,
/// 413 when too large, 400 when not JSON, 422 when JSON of the wrong shape.
pub fn json_body<T: DeserializeOwned>(req: &Request, max_bytes: usize) -> ApiResult<T> {
    if let Some(ct) = req.header("content-type").and_then(|h| h.as_str()) {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/json" && !media.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "send application/json, not {media}"
            )));
        }
    }
    let body = req.body();
    if body.len() > max_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body is {} bytes; at most {max_bytes} are accepted",
            body.len()
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request needs a JSON body".into()));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid("body", e.to_string()),
        _ => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
    })
}

/// The query string's parameters, percent-decoded. Repeated keys keep the last value.
pub fn query(req: &Request) -> ApiResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in req.query().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Ok(out)
}

pub fn percent_decode(s: &str) -> ApiResult<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => out.push(b),
                    None => {
                        return Err(ApiError::BadRequest(format!(
                            "`{s}` has a bad percent-escape"
                        )))
                    }
                }
                i += 2;
            }
            b'%' => {
                return Err(ApiError::BadRequest(format!(
                    "`{s}` has a bad percent-escape"
                )))
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::BadRequest(format!("`{s}` is not UTF-8 once decoded")))
}

/// The path's segments, without empty ones: `/api/threads/7` → `["api", "threads", "7"]`.
pub fn segments(req: &Request) -> Vec<&str> {
    req.path().split('/').filter(|s| !s.is_empty()).collect()
}

/// A path segment as text: percent-decoded (RFC 3986), so a model or alias
/// name with `@`, `:` or `/` in it can be named in a path. Invalid UTF-8 is 404.
pub fn decoded(segment: &str, what: &str) -> ApiResult<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::NotFound(format!("there is no {what} `{segment}`")))
}

/// A positive id from a path segment.
pub fn id(segment: &str, what: &str) -> ApiResult<i64> {
    match segment.parse::<i64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(ApiError::NotFound(format!(
            "there is no {what} `{segment}`"
        ))),
    }
}

/// An optional query parameter parsed as an integer within `min..=max`.
pub fn int_param(
    q: &BTreeMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> ApiResult<i64> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                name,
                format!("`{v}` must be a whole number from {min} to {max}"),
            )),
        },
    }
}

/// An optional timestamp query parameter.
pub fn time_param(q: &BTreeMap<String, String>, name: &str) -> ApiResult<Option<Timestamp>> {
    q.get(name)
        .map(|v| Timestamp::parse(v).map_err(|e| ApiError::invalid(name, e.reason)))
        .transpose()
}

/// A trimmed, non-empty text field of at most `max` characters.
pub fn text_field(field: &str, value: &str, max: usize) -> ApiResult<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    let n = v.chars().count();
    if n > max {
        return Err(ApiError::invalid(
            field,
            format!("is {n} characters long; at most {max} are allowed"),
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(v.to_owned())
}

/// A `user_id` parameter: any user for admin, only their own for a user
/// (another's is 403, naming what they asked for).
pub fn owned_by(caller: &crate::Caller, value: &str, name: &str, what: &str) -> ApiResult<i64> {
    let id = id(value, name)?;
    if caller.is_admin() || id == caller.user_id {
        Ok(id)
    } else {
        Err(ApiError::Forbidden(format!(
            "only an admin may list another user's {what}"
        )))
    }
}
