//! Integer money. No floats anywhere.
//!
//! - [`PricePerMillion`]: a price in micro-USD per million units (tokens,
//!   requests, milliseconds of compute): $3/MTok is `3_000_000`.
//! - [`Nanos`]: an amount in nano-USD. A line item's cost is
//!   `quantity × price / 1000` nano-USD, computed exactly in 128 bits and
//!   rounded half-to-even once ([`line_cost`]).
//! - [`Cents`]: an invoice total, rounded from nanos once, half-to-even
//!   ([`Nanos::round_to_cents`]), with the rounding difference kept.

use crate::error::{BillingError, FieldError};
use serde::{Deserialize, Serialize};

pub const NANOS_PER_CENT: i64 = 10_000_000;
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// `num / den` rounded to the nearest integer, ties to the even one. `den > 0`.
pub fn div_round_half_even(num: i128, den: i128) -> i128 {
    assert!(den > 0, "division by a non-positive denominator");
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den); // 0 <= r < den, and num = q*den + r
    match (2 * r).cmp(&den) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => {
            if q % 2 == 0 {
                q
            } else {
                q + 1
            }
        }
    }
}

/// A price in micro-USD per million units. Non-negative, at most
/// [`PricePerMillion::MAX`] ($1,000,000 per million units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct PricePerMillion(i64);

impl PricePerMillion {
    pub const ZERO: Self = Self(0);
    pub const MAX: i64 = 1_000_000_000_000;

    pub fn new(micros: i64) -> Result<Self, FieldError> {
        if micros < 0 {
            return Err(FieldError::new(
                "price",
                format!("{micros} is negative; prices are non-negative micro-USD per million"),
            ));
        }
        if micros > Self::MAX {
            return Err(FieldError::new(
                "price",
                format!(
                    "{micros} micro-USD per million is above the ceiling of {}",
                    Self::MAX
                ),
            ));
        }
        Ok(Self(micros))
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// `$3.75`-style text for a person; exact (micro-USD has 6 decimals).
    pub fn display_usd(self) -> String {
        format_decimal_usd(self.0 as i128, 6)
    }
}

impl TryFrom<i64> for PricePerMillion {
    type Error = FieldError;
    fn try_from(v: i64) -> Result<Self, FieldError> {
        Self::new(v)
    }
}

impl From<PricePerMillion> for i64 {
    fn from(p: PricePerMillion) -> i64 {
        p.0
    }
}

/// An amount of nano-USD. Signed, because a rounding difference can be negative.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(pub i64);

impl Nanos {
    pub const ZERO: Self = Self(0);

    pub fn checked_add(self, other: Nanos) -> Result<Nanos, BillingError> {
        self.0
            .checked_add(other.0)
            .map(Nanos)
            .ok_or(BillingError::Overflow {
                what: "a sum of nano-USD",
            })
    }

    /// Sum, refusing to wrap.
    pub fn sum<I: IntoIterator<Item = Nanos>>(items: I) -> Result<Nanos, BillingError> {
        items.into_iter().try_fold(Nanos::ZERO, Nanos::checked_add)
    }

    /// Round to cents half-to-even. Returns the cents and the rounding
    /// difference `cents - self` in nanos (positive when rounded up).
    pub fn round_to_cents(self) -> (Cents, Nanos) {
        let cents = div_round_half_even(self.0 as i128, NANOS_PER_CENT as i128) as i64;
        (Cents(cents), Nanos(cents * NANOS_PER_CENT - self.0))
    }

    /// Exact text, e.g. `$0.000012345` or `$1.50`: every nano shown, trailing
    /// zeros trimmed down to two decimals.
    pub fn display_usd(self) -> String {
        format_decimal_usd(self.0 as i128, 9)
    }
}

impl std::fmt::Display for Nanos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_usd())
    }
}

/// An amount of US cents.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cents(pub i64);

impl Cents {
    pub fn display_usd(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        format!("{sign}${}.{:02}", a / 100, a % 100)
    }
}

impl std::fmt::Display for Cents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_usd())
    }
}

/// The cost of `quantity` units at `price`: `quantity × price / 1000` nano-USD,
/// exact in 128 bits, rounded half-to-even once.
///
/// (price is micro-USD per 10^6 units, so one unit costs `price / 10^6`
/// micro-USD = `price / 10^3` nano-USD.)
pub fn line_cost(quantity: u64, price: PricePerMillion) -> Result<Nanos, BillingError> {
    let exact_thousandths = quantity as i128 * price.0 as i128;
    let nanos = div_round_half_even(exact_thousandths, 1000);
    i64::try_from(nanos)
        .map(Nanos)
        .map_err(|_| BillingError::Overflow {
            what: "a line item's cost",
        })
}

fn format_decimal_usd(v: i128, scale: u32) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    let unit = 10u128.pow(scale);
    let (whole, frac) = (a / unit, a % unit);
    let mut frac = format!("{:0width$}", frac, width = scale as usize);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{sign}${whole}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Ties go to the even neighbour, in both signs; non-ties go to the nearest.
    #[test]
    fn half_even_examples() {
        let cases = [
            (5, 10, 0),
            (15, 10, 2),
            (25, 10, 2),
            (35, 10, 4),
            (-5, 10, 0),
            (-15, 10, -2),
            (-25, 10, -2),
            (14, 10, 1),
            (16, 10, 2),
            (-14, 10, -1),
            (-16, 10, -2),
            (0, 7, 0),
        ];
        for (n, d, want) in cases {
            assert_eq!(div_round_half_even(n, d), want, "{n}/{d}");
        }
    }

    // $0.08/MTok: one token is 80 nano-USD; 12,500 tokens are $0.001 = 1,000,000 nanos.
    #[test]
    fn line_cost_examples() {
        let p = PricePerMillion::new(80_000).unwrap();
        assert_eq!(line_cost(1, p).unwrap(), Nanos(80));
        assert_eq!(line_cost(12_500, p).unwrap(), Nanos(1_000_000));
        // $0.0005/MTok (500 micro): one token is 0.5 nano -> 0 (tie to even), three are 1.5 -> 2, seven are 3.5 -> 4.
        let tiny = PricePerMillion::new(500).unwrap();
        assert_eq!(line_cost(1, tiny).unwrap(), Nanos(0));
        assert_eq!(line_cost(3, tiny).unwrap(), Nanos(2));
        assert_eq!(line_cost(7, tiny).unwrap(), Nanos(4));
        // 1,001 micro/MTok on 1 token is 1.001 nano -> 1.
        assert_eq!(
            line_cost(1, PricePerMillion::new(1_001).unwrap()).unwrap(),
            Nanos(1)
        );
        // 10^12 tokens at $75/MTok: $75,000,000 = 7.5e16 nanos, no overflow.
        let opus_out = PricePerMillion::new(75_000_000).unwrap();
        assert_eq!(
            line_cost(1_000_000_000_000, opus_out).unwrap(),
            Nanos(75_000_000 * NANOS_PER_USD)
        );
        // The largest inputs overflow i64 nanos and say so instead of wrapping.
        let max = PricePerMillion::new(PricePerMillion::MAX).unwrap();
        assert!(matches!(
            line_cost(u64::MAX, max),
            Err(BillingError::Overflow { .. })
        ));
    }

    // Prices are validated: negative and absurd ones are refused with the number in the message.
    #[test]
    fn price_validation() {
        assert!(PricePerMillion::new(-1)
            .unwrap_err()
            .reason
            .contains("-1 is negative"));
        assert!(PricePerMillion::new(PricePerMillion::MAX + 1).is_err());
        assert_eq!(
            PricePerMillion::new(3_750_000).unwrap().display_usd(),
            "$3.75"
        );
        assert!(serde_json::from_str::<PricePerMillion>("-5").is_err());
    }

    // Cents rounding keeps the difference; display strings are exact.
    #[test]
    fn cents_and_display() {
        assert_eq!(
            Nanos(15_000_000).round_to_cents(),
            (Cents(2), Nanos(5_000_000))
        );
        assert_eq!(
            Nanos(25_000_000).round_to_cents(),
            (Cents(2), Nanos(-5_000_000))
        );
        assert_eq!(Nanos(12_345).display_usd(), "$0.000012345");
        assert_eq!(Nanos(1_500_000_000).display_usd(), "$1.50");
        assert_eq!(Nanos(-1).display_usd(), "-$0.000000001");
        assert_eq!(Cents(-1234).display_usd(), "-$12.34");
        assert_eq!(Cents(5).display_usd(), "$0.05");
    }

    proptest! {
        // The rounded quotient is within half a unit of the exact one, and an exact tie lands on an even number.
        #[test]
        fn rounding_is_nearest_and_ties_even(n in -1_000_000_000i128..1_000_000_000, d in 1i128..1_000_000) {
            let q = div_round_half_even(n, d);
            let err2 = (2 * (q * d - n)).abs();
            prop_assert!(err2 <= d);
            if err2 == d { prop_assert_eq!(q % 2, 0); }
        }

        // Cents rounding: cents*10^7 - nanos is exactly the reported difference and at most half a cent.
        #[test]
        fn cents_difference_is_exact(n in -1_000_000_000_000i64..1_000_000_000_000) {
            let (c, diff) = Nanos(n).round_to_cents();
            prop_assert_eq!(c.0 * NANOS_PER_CENT - n, diff.0);
            prop_assert!(diff.0.abs() <= NANOS_PER_CENT / 2);
        }
    }
}
