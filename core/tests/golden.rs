//! Golden files for pricing and invoices: each `NAME.in.json` under
//! `tests/golden/{pricing,invoice}/` is run and its result compared with
//! `NAME.out.json` beside it. `UPDATE_GOLDEN=1 cargo test -p billing-core
//! --test golden` rewrites the expected files; review the diff by hand.

use billing_core::invoice::{assemble, LineItem, LineKind};
use billing_core::pricing::{
    resource_cost, PriceBook, PriceVersion, ResourcePriceBook, ResourcePriceVersion,
};
use billing_core::{Timestamp, Usage};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingCase {
    prices: Vec<PriceVersion>,
    quotes: Vec<QuoteRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteRequest {
    model: String,
    at: Timestamp,
    usage: Usage,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvoiceCase {
    prices: Vec<PriceVersion>,
    #[serde(default)]
    resource_prices: Vec<ResourcePriceVersion>,
    #[serde(default)]
    token_events: Vec<TokenEvent>,
    #[serde(default)]
    resource_events: Vec<ResourceEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEvent {
    model: String,
    at: Timestamp,
    usage: Usage,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceEvent {
    resource: String,
    at: Timestamp,
    quantity: u64,
}

fn run_pricing(input: &str) -> Value {
    let case: PricingCase = serde_json::from_str(input).expect("pricing case parses");
    let book = PriceBook::new(case.prices).expect("price book");
    let no_fees = ResourcePriceBook::new([]).expect("resource book");
    let results: Vec<Value> = case
        .quotes
        .iter()
        .map(|q| match book.quote(&q.model, &q.usage, q.at, &no_fees) {
            Ok(quote) => json!({ "quote": quote, "total_display": quote.total.display_usd() }),
            Err(e) => json!({ "error": e.to_string() }),
        })
        .collect();
    json!(results)
}

/// Prices every event into line items (one per token class with tokens, one
/// per resource event), then assembles and finalises the invoice.
fn run_invoice(input: &str) -> Value {
    let case: InvoiceCase = serde_json::from_str(input).expect("invoice case parses");
    let book = PriceBook::new(case.prices).expect("price book");
    let rbook = ResourcePriceBook::new(case.resource_prices).expect("resource book");
    let mut items = Vec::new();
    let mut next_id = 1;
    for ev in &case.token_events {
        let quote = book
            .quote(&ev.model, &ev.usage, ev.at, &rbook)
            .expect("event priced");
        for line in quote.lines.iter().filter(|l| l.tokens > 0) {
            items.push(LineItem {
                line_item_id: next_id,
                kind: LineKind::Token {
                    model: ev.model.clone(),
                    token_class: line.class,
                },
                quantity: line.tokens,
                unit_price: line.unit_price,
                cost: line.cost,
                occurred_at: ev.at,
                invoice_id: None,
            });
            next_id += 1;
        }
    }
    for ev in &case.resource_events {
        let version = rbook
            .price_at(&ev.resource, ev.at)
            .expect("resource priced");
        items.push(LineItem {
            line_item_id: next_id,
            kind: LineKind::Resource {
                resource: ev.resource.clone(),
            },
            quantity: ev.quantity,
            unit_price: version.unit_price,
            cost: resource_cost(version, ev.quantity).expect("resource cost"),
            occurred_at: ev.at,
            invoice_id: None,
        });
        next_id += 1;
    }
    let draft = assemble(items).expect("assembled");
    let fin = draft.finalize();
    json!({
        "draft": draft,
        "final": fin,
        "display": { "total": fin.total_cents.display_usd(), "exact": fin.total_nanos.display_usd(), "rounding": fin.rounding.display_usd() },
    })
}

fn cases(dir: &str) -> Vec<PathBuf> {
    // Cargo sets CARGO_MANIFEST_DIR when it runs the test, for the checkout it
    // runs in; the compile-time value names whichever checkout built it (a
    // target directory shared by two clones reuses the binary).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let dir = manifest.join("tests/golden").join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.json"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no golden cases in {}", dir.display());
    v
}

fn check(dir: &str, run: fn(&str) -> Value) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for input in cases(dir) {
        let expected_path = PathBuf::from(input.to_string_lossy().replace(".in.json", ".out.json"));
        let got = serde_json::to_string_pretty(&run(&std::fs::read_to_string(&input).unwrap()))
            .unwrap()
            + "\n";
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}: result differs\n--- want\n{want}\n--- got\n{got}",
                input.display()
            )),
            Err(e) => failures.push(format!("{}: {e}", expected_path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// Every pricing golden case (cache tokens, zero usage, 10^12 tokens, a price change, rounding ties) gives its expected quote.
#[test]
fn pricing_golden() {
    check("pricing", run_pricing);
}

// Every invoice golden case (a price change mid-period, resources, cents rounding) gives its expected lines and totals.
#[test]
fn invoice_golden() {
    check("invoice", run_invoice);
}
