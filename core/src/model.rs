//! Model names, validated where they enter.

use crate::error::FieldError;
use serde::{Deserialize, Serialize};

/// A provider's model identifier, e.g. `claude-sonnet-4-5-20250929`.
///
/// 1 to 128 characters of ASCII letters, digits and `.` `_` `-` `:` `/` `@`,
/// starting with a letter or digit (`@` for Vertex AI ids such as
/// `claude-sonnet-4-5@20250929`, `:` for Bedrock's `…-v1:0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelName(String);

impl ModelName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let bad = |reason: String| Err(FieldError::new("model", reason));
        if s.is_empty() {
            return bad("must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return bad(format!(
                "is {} characters long; at most {} are allowed",
                s.len(),
                Self::MAX_LEN
            ));
        }
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return bad(format!("`{s}` must start with a letter or a digit"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || ".-_:/@".contains(*c)))
        {
            return bad(format!(
                "`{s}` contains `{c}`; only letters, digits and . _ - : / @ are allowed"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModelName {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        Self::parse(&s)
    }
}

impl From<ModelName> for String {
    fn from(m: ModelName) -> String {
        m.0
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real model ids parse; empty, over-long and odd characters are refused with a reason.
    #[test]
    fn model_names() {
        assert!(ModelName::parse("claude-sonnet-4-5-20250929").is_ok());
        assert!(ModelName::parse("gpt-4o-mini").is_ok());
        assert!(ModelName::parse("").unwrap_err().reason.contains("empty"));
        assert!(ModelName::parse(&"a".repeat(129))
            .unwrap_err()
            .reason
            .contains("129"));
        assert!(ModelName::parse("claude sonnet")
            .unwrap_err()
            .reason
            .contains("` `"));
        assert!(ModelName::parse("-x").is_err());
    }
}
