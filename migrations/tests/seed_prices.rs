//! The seeded prices, read back from SQLite, through billing-core's rules.

use billing_core::pricing::{PriceBook, PriceVersion, ResourcePriceBook, ResourcePriceVersion};
use billing_core::{PricePerMillion, Timestamp, Usage};

// Every seeded price row (rules included) loads into a PriceBook, and seeded turns cost the hand-computed figures.
#[test]
fn seeded_prices_quote() {
    let dir = tempfile::tempdir().unwrap();
    let (conn, _) = billing_migrations::open_and_migrate(&dir.path().join("b.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT p.pricing_id, m.model_name, p.effective_from, p.input_price, p.output_price,
                    p.cache_write_5m_price, p.cache_write_1h_price, p.cache_read_price, p.rules
             FROM dim_token_pricing p JOIN dim_models m USING (model_id)",
        )
        .unwrap();
    let versions: Vec<PriceVersion> = stmt
        .query_map([], |r| {
            Ok(PriceVersion::from_stored(
                r.get(0)?,
                &r.get::<_, String>(1)?,
                &r.get::<_, String>(2)?,
                [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
                &r.get::<_, String>(8)?,
            )
            .unwrap())
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(versions.len(), 23);
    let book = PriceBook::new(versions).unwrap();
    let resources: Vec<ResourcePriceVersion> = conn
        .prepare("SELECT resource_pricing_id, resource, unit, effective_from, unit_price FROM dim_resource_pricing")
        .unwrap()
        .query_map([], |r| {
            Ok(ResourcePriceVersion {
                resource_pricing_id: r.get(0)?,
                resource: r.get(1)?,
                unit: r.get(2)?,
                effective_from: Timestamp::parse(&r.get::<_, String>(3)?).unwrap(),
                unit_price: PricePerMillion::new(r.get(4)?).unwrap(),
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let resources = ResourcePriceBook::new(resources).unwrap();
    let at = |s| Timestamp::parse(s).unwrap();
    let sonnet = "claude-sonnet-4-5-20250929";
    let usage = Usage {
        input_tokens: 1000,
        output_tokens: 500,
        cache_read_input_tokens: 2000,
        ..Default::default()
    };
    let q = book
        .quote(sonnet, &usage, at("2026-06-01T00:00:00Z"), &resources)
        .unwrap();
    // 1000 × $3 + 500 × $15 + 2000 × $0.30 per million = $0.003 + $0.0075 + $0.0006
    assert_eq!(q.total.0, 11_100_000);
    // Over 200,000 prompt tokens every token is at the long-context rates:
    // 200,001 × $6 + 500 × $22.50 per million = $1.200006 + $0.01125
    let long = Usage {
        input_tokens: 200_001,
        output_tokens: 500,
        ..Default::default()
    };
    let q = book
        .quote(sonnet, &long, at("2026-06-01T00:00:00Z"), &resources)
        .unwrap();
    assert_eq!(q.total.0, 1_211_256_000);
    // Haiku 5.5 batch with two web searches: 1,000 × $0.05 + 100 × $0.25 per million + 2 × $0.01
    let batch: Usage = serde_json::from_value(
        serde_json::json!({"input_tokens": 1000, "output_tokens": 100,
        "service_tier": "batch", "server_tool_use": {"web_search_requests": 2}}),
    )
    .unwrap();
    let q = book
        .quote(
            "claude-haiku-5-5",
            &batch,
            at("2026-11-01T00:00:00Z"),
            &resources,
        )
        .unwrap();
    assert_eq!(q.total.0, 50_000 + 25_000 + 20_000_000);
    // Opus 4.8's fast mode ends on 2026-11-30: the day before it doubles the rate, from then on it does not.
    let fast: Usage =
        serde_json::from_value(serde_json::json!({"input_tokens": 1000, "speed": "fast"})).unwrap();
    assert_eq!(
        book.quote(
            "claude-opus-4-8",
            &fast,
            at("2026-11-29T00:00:00Z"),
            &resources
        )
        .unwrap()
        .total
        .0,
        10_000_000
    );
    assert_eq!(
        book.quote(
            "claude-opus-4-8",
            &fast,
            at("2026-11-30T00:00:00Z"),
            &resources
        )
        .unwrap()
        .total
        .0,
        5_000_000
    );
}

// Every alias names an existing model, and no alias is also a model's own name.
#[test]
fn aliases_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let (conn, _) = billing_migrations::open_and_migrate(&dir.path().join("b.db")).unwrap();
    let orphans: i64 = conn
        .query_row("SELECT count(*) FROM dim_model_aliases a LEFT JOIN dim_models m USING (model_id) WHERE m.model_id IS NULL", [], |r| r.get(0))
        .unwrap();
    let clashes: i64 = conn
        .query_row(
            "SELECT count(*) FROM dim_model_aliases a JOIN dim_models m ON m.model_name = a.alias",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM dim_model_aliases", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 15);
    assert_eq!((orphans, clashes), (0, 0));
    for alias in conn
        .prepare("SELECT alias FROM dim_model_aliases")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
    {
        billing_core::ModelName::parse(&alias.unwrap()).unwrap();
    }
}
