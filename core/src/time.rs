//! Instants as UTC milliseconds, with one canonical text form
//! (`2026-11-27T22:30:01.123Z`) that sorts the same as the instants, so
//! SQLite can compare stored timestamps as text.

use crate::error::FieldError;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timestamp(i64);

impl Timestamp {
    /// 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z: the range the
    /// canonical form can hold with four-digit years.
    pub const MIN_MS: i64 = 0;
    pub const MAX_MS: i64 = 253_402_300_799_999;

    pub fn from_millis(ms: i64) -> Result<Self, FieldError> {
        if !(Self::MIN_MS..=Self::MAX_MS).contains(&ms) {
            return Err(FieldError::new(
                "time",
                format!("{ms} ms is outside 1970-01-01 to 9999-12-31"),
            ));
        }
        Ok(Self(ms))
    }

    /// Parses RFC 3339 with any offset (`2026-01-02T03:04:05+01:00`) and
    /// keeps millisecond precision; finer digits are truncated.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let dt = DateTime::parse_from_rfc3339(s).map_err(|e| {
            FieldError::new(
                "time",
                format!("`{s}` is not an RFC 3339 timestamp such as 2026-01-31T12:00:00Z ({e})"),
            )
        })?;
        Self::from_millis(dt.timestamp_millis())
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// The canonical form: UTC, milliseconds, `Z`.
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_millis(self.0)
            .expect("range checked at construction")
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl TryFrom<String> for Timestamp {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        Self::parse(&s)
    }
}

impl From<Timestamp> for String {
    fn from(t: Timestamp) -> String {
        t.to_rfc3339()
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Offsets normalise to UTC; the canonical text round-trips and sorts like the instants.
    #[test]
    fn parse_and_format() {
        let t = Timestamp::parse("2026-01-02T03:04:05.678+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-02T02:04:05.678Z");
        assert_eq!(Timestamp::parse(&t.to_rfc3339()).unwrap(), t);
        let a = Timestamp::parse("2025-12-31T23:59:59Z").unwrap();
        assert!(a < t && a.to_rfc3339() < t.to_rfc3339());
        assert!(Timestamp::parse("yesterday")
            .unwrap_err()
            .reason
            .contains("RFC 3339"));
        assert!(Timestamp::parse("1969-12-31T23:59:59Z").is_err());
    }
}
