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

/// Runs scripts/genai-prices-import.py with `args` against the stack; returns (success, stdout + stderr).
fn import(s: &Stack, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/genai-prices-import.py"
        ))
        .args(args)
        .args(["--api", &s.url(""), "--key", billing_e2e::ADMIN_KEY])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

// The catalogue import: the diff against genai-prices is a plan an admin reviews; every price it proposes starts after
// now (history is never rewritten); applied, it leaves only what the reviewer dropped; a price we change is proposed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genai_prices_import_is_a_reviewable_diff() {
    let s = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plan_path = dir.path().join("plan.json");
    let plan_arg = plan_path.to_str().unwrap();
    let (ok, out) = import(&s, &["diff", "--plan", plan_arg]);
    assert!(ok, "{out}");
    let read_plan = || -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap()
    };
    let plan = read_plan();
    // History is never rewritten: every proposed price starts after now (the next midnight UTC by default).
    let now = billing_e2e::now_plus(0);
    for p in &plan {
        if let Some(from) = p["body"]["effective_from"].as_str() {
            assert!(billing_core::Timestamp::parse(from).unwrap() > now, "{p}");
        }
    }
    // Our seed came from this catalogue. One difference today is ours by decision: genai-prices 0.2.3 still lists
    // Opus 4.8's fast mode although its own comment says Anthropic removes it on 2026-11-30 (migration 0008).
    let versions: Vec<&str> = plan
        .iter()
        .filter(|p| p["action"] == "add_version")
        .map(|p| p["body"]["model"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["claude-opus-4-8"], "{out}");
    assert!(
        out.contains("= claude-opus-4-6: keeps inference_geo=us"),
        "modifiers only we have are kept:\n{out}"
    );
    // The reviewer drops that step and applies the rest (models we do not have).
    let reviewed: Vec<&serde_json::Value> = plan
        .iter()
        .filter(|p| p["action"] != "add_version")
        .collect();
    assert!(reviewed.iter().any(|p| p["action"] == "add_model"), "{out}");
    std::fs::write(&plan_path, serde_json::to_string(&reviewed).unwrap()).unwrap();
    let (ok, applied) = import(&s, &["apply", plan_arg]);
    assert!(ok, "{applied}");
    let (ok, again) = import(&s, &["diff", "--plan", plan_arg]);
    assert!(
        ok && again.contains(": 1 proposed changes"),
        "applied, only the dropped step is left:\n{again}"
    );

    // A price of ours that differs from the catalogue today is proposed back, from the date the admin chose.
    let r = s
        .call("POST", "/api/pricing", Some(billing_e2e::ADMIN_KEY), Some(json!({
            "model": "claude-haiku-4-5-20251001", "effective_from": billing_e2e::now_plus(4000).to_rfc3339(),
            "prices": {"input": 1, "output": 1, "cache_write_5m": 1, "cache_write_1h": 1, "cache_read": 1}
        })))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let (ok, out) = import(
        &s,
        &[
            "diff",
            "--plan",
            plan_arg,
            "--effective-from",
            "2030-06-01T00:00:00Z",
        ],
    );
    assert!(ok, "{out}");
    let plan = read_plan();
    let versions: Vec<&serde_json::Value> = plan
        .iter()
        .filter(|p| p["action"] == "add_version" && p["body"]["model"] != "claude-opus-4-8")
        .collect();
    assert_eq!(versions.len(), 1, "{out}");
    let body = &versions[0]["body"];
    assert_eq!(
        (
            body["model"].as_str(),
            body["effective_from"].as_str(),
            body["prices"]["input"].as_i64(),
            body["prices"]["output"].as_i64()
        ),
        (
            Some("claude-haiku-4-5-20251001"),
            Some("2030-06-01T00:00:00Z"),
            Some(1_000_000),
            Some(5_000_000)
        ),
        "Haiku 4.5 at $1/$5 per million (anthropic.com/pricing) from the chosen date"
    );
    assert_eq!(
        body["rules"]["modifiers"][0]["multiplier"], "0.5",
        "batch, from the catalogue"
    );
    std::fs::write(&plan_path, serde_json::to_string(&[versions[0]]).unwrap()).unwrap();
    let (ok, applied) = import(&s, &["apply", plan_arg]);
    assert!(ok && applied.contains("1 changes applied"), "{applied}");
    let r = s
        .call(
            "GET",
            "/api/pricing?model=claude-haiku-4-5-20251001",
            Some(billing_e2e::ADMIN_KEY),
            None,
        )
        .await;
    let last = r.body["items"][0]["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (
            last["effective_from"].as_str(),
            last["prices"]["input"].as_i64()
        ),
        (Some("2030-06-01T00:00:00.000Z"), Some(1_000_000))
    );
    let _ = dir;
}
