//! The seeded prices, read back from SQLite, through billing-core's rules.

use billing_core::pricing::{PriceBook, PriceVersion, TokenPrices};
use billing_core::{PricePerMillion, Timestamp, Usage};

// Every seeded price row loads into a PriceBook, and a Sonnet 4.5 turn costs the hand-computed figure.
#[test]
fn seeded_prices_quote() {
    let dir = tempfile::tempdir().unwrap();
    let (conn, _) = billing_migrations::open_and_migrate(&dir.path().join("b.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT p.pricing_id, m.model_name, p.effective_from, p.input_price, p.output_price,
                    p.cache_write_5m_price, p.cache_write_1h_price, p.cache_read_price
             FROM dim_token_pricing p JOIN dim_models m USING (model_id)",
        )
        .unwrap();
    let price = |v: i64| PricePerMillion::new(v).unwrap();
    let versions: Vec<PriceVersion> = stmt
        .query_map([], |r| {
            Ok(PriceVersion {
                pricing_id: r.get(0)?,
                model: r.get(1)?,
                effective_from: Timestamp::parse(&r.get::<_, String>(2)?).unwrap(),
                prices: TokenPrices {
                    input: price(r.get(3)?),
                    output: price(r.get(4)?),
                    cache_write_5m: price(r.get(5)?),
                    cache_write_1h: price(r.get(6)?),
                    cache_read: price(r.get(7)?),
                },
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(versions.len(), 7);
    let book = PriceBook::new(versions).unwrap();
    let usage = Usage {
        input_tokens: 1000,
        output_tokens: 500,
        cache_read_input_tokens: 2000,
        ..Default::default()
    };
    let q = book
        .quote(
            "claude-sonnet-4-5-20250929",
            &usage,
            Timestamp::parse("2026-06-01T00:00:00Z").unwrap(),
        )
        .unwrap();
    // 1000 × $3 + 500 × $15 + 2000 × $0.30 per million = $0.003 + $0.0075 + $0.0006
    assert_eq!(q.total.0, 11_100_000);
}
