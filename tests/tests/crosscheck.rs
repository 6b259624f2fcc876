//! The quote against an independent calculator: random usage objects of the
//! models both know, priced by `POST /api/price/quote` and by the
//! genai-prices package (PyPI `genai-prices`, pinned in
//! tests/crosscheck/requirements.txt, installed by `make deps` into
//! `$GENAI_PRICES_PYTHON`'s virtualenv).
//!
//! Not compared, because genai-prices does not model them: data residency
//! (`inference_geo`), batch before 2026-10-14 (its batch table starts then)
//! and batch on models it has no batch price for (Opus 4.1, Sonnet 4,
//! Haiku 3.5; retired or legacy there).

use billing_e2e::Stack;
use serde_json::{json, Value};
use std::io::Write;

/// Our model id and whether genai-prices has its batch and fast prices.
const MODELS: [(&str, bool, bool); 17] = [
    ("claude-opus-4-5-20251101", true, false),
    ("claude-opus-4-1-20250805", false, false),
    ("claude-sonnet-4-5-20250929", true, false),
    ("claude-sonnet-4-20250514", false, false),
    ("claude-haiku-4-5-20251001", true, false),
    ("claude-3-5-haiku-20241022", false, false),
    ("claude-opus-4-6", true, false),
    ("claude-sonnet-4-6", true, false),
    ("claude-opus-4-7", true, false),
    ("claude-opus-5", true, true),
    ("claude-sonnet-5", true, false),
    ("claude-fable-5", true, false),
    ("claude-fable-5-1", true, false),
    ("claude-fable-5-2", true, true),
    ("claude-opus-5-5", true, true),
    ("claude-sonnet-5-5", true, false),
    ("claude-haiku-5-5", true, false),
];

/// xorshift64*: reproducible random numbers from a printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn python() -> String {
    std::env::var("GENAI_PRICES_PYTHON").unwrap_or_else(|_| {
        let cache = std::env::var("CACHE_DIR")
            .unwrap_or_else(|_| format!("{}/.cache/llm-billing", std::env::var("HOME").unwrap()));
        format!("{cache}/tools/genai-prices/bin/python")
    })
}

// 400 random usage objects: our quote equals genai-prices' total to within the rounding (half a nano-USD per line, 3 at most).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quote_matches_genai_prices() {
    let py = python();
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} is missing: run `make deps` (scripts/ensure-deps.sh genai-prices)"
    );
    let s = Stack::start().await;
    let (_, key) = s.user("Checker", "checker@example.com").await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut cases = Vec::new();
    for _ in 0..400 {
        let (model, batch, fast) = MODELS[rng.below(MODELS.len() as u64) as usize];
        // Days from 2026-10-14 to 2026-11-29, at a random second.
        let day = 14 + rng.below(47);
        let (month, dom) = if day <= 31 { (10, day) } else { (11, day - 31) };
        let at = format!(
            "2026-{month:02}-{dom:02}T{:02}:{:02}:00Z",
            rng.below(24),
            rng.below(60)
        );
        let big = rng.below(4) == 0;
        let input = if big {
            90_000 + rng.below(150_000)
        } else {
            rng.below(20_000)
        };
        let (w5, w1) = (rng.below(5_000), rng.below(3) * rng.below(5_000));
        let read = rng.below(30_000);
        let mut usage = json!({
            "input_tokens": input, "output_tokens": rng.below(8_000),
            "cache_creation_input_tokens": w5 + w1,
            "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
            "cache_read_input_tokens": read,
            "server_tool_use": {"web_search_requests": rng.below(3) * rng.below(5)},
        });
        let mut context = Value::Null;
        match rng.below(4) {
            0 if batch => {
                usage["service_tier"] = json!("batch");
                context = json!({"processing": "batch"});
            }
            1 if fast => {
                usage["speed"] = json!("fast");
                context = json!({"speed": "fast"});
            }
            _ => {}
        }
        cases.push((model, at, usage, context));
    }
    let mut ours = Vec::new();
    for (model, at, usage, _) in &cases {
        let q = s
            .call(
                "POST",
                "/api/price/quote",
                Some(&key),
                Some(json!({"model": model, "at": at, "provider_usage": usage})),
            )
            .await;
        assert_eq!(q.status, 200, "{model} {at} {usage}: {:?}", q.body);
        ours.push(q.body["total_nanos"].as_i64().unwrap());
    }
    let mut child = std::process::Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crosscheck/genai_prices_calc.py"
        ))
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        for (model, at, usage, context) in &cases {
            writeln!(
                stdin,
                "{}",
                json!({"model": model, "at": at, "usage": usage, "price_context": context})
            )
            .unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let theirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(theirs.len(), cases.len());
    let mut wrong = Vec::new();
    for (i, ((model, at, usage, _), t)) in cases.iter().zip(&theirs).enumerate() {
        let nanos =
            usd_to_nanos(t).unwrap_or_else(|| panic!("genai-prices: {t} for {model} {usage}"));
        // Ours rounds each of five token lines to a whole nano-USD (fees are
        // whole already), at most 2.5 in all; this side's rounding adds 0.5.
        if (ours[i] as i128 - nanos).abs() > 3 {
            wrong.push(format!(
                "{model} at {at} {usage}: ours {} nano-USD, genai-prices {t} USD",
                ours[i]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} of {} differ:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// `"0.02010150"` (USD, exact decimal) as nano-USD, rounded half-up to a whole nano.
fn usd_to_nanos(s: &str) -> Option<i128> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<12}");
    let (nanos, rest) = frac.split_at(9);
    let whole: i128 = int.parse::<i128>().ok()? * 1_000_000_000 + nanos.parse::<i128>().ok()?;
    // Round the sub-nano remainder to the nearest nano.
    Some(if rest.parse::<u64>().ok()? >= 500 {
        whole + 1
    } else {
        whole
    })
}
