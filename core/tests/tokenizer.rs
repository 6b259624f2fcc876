//! The static tokenizer counts exactly what OpenAI's tiktoken counts
//! (tiktoken-rs, the reference), for both encodings, over a corpus of code,
//! prose, CJK, emoji, long repeats and whitespace edge cases, and over
//! random text; its vocabulary tables hold every token under its rank; its
//! model table agrees with tiktoken-rs's.

#![cfg(feature = "tokenizer")]

use billing_core::tokenizer::{openai_encoding, Encoding, CL100K_BASE, O200K_BASE};
use proptest::prelude::*;
use tiktoken_rs::CoreBPE;

fn reference(e: &Encoding) -> &'static CoreBPE {
    match e.name {
        "cl100k_base" => tiktoken_rs::cl100k_base_singleton(),
        "o200k_base" => tiktoken_rs::o200k_base_singleton(),
        other => panic!("no reference for {other}"),
    }
}

fn assert_same(text: &str) {
    for e in [&CL100K_BASE, &O200K_BASE] {
        let want = reference(e).encode_ordinary(text).len() as u64;
        assert_eq!(e.count(text), want, "{} on {text:?}", e.name);
    }
}

fn corpus() -> Vec<String> {
    let code = r#"fn main() {
    let xs: Vec<u64> = (0..10).map(|x| x * x).collect();
    println!("{:?} {}", xs, xs.iter().sum::<u64>());
}
// comment with CamelCaseWords and snake_case_words and 12345678901234
def f(a, b=3): return {'k': [a, b], "s": f"{a!r}"}  # python
SELECT user_id, sum(cost_nanos) FROM t WHERE x >= 10 GROUP BY 1;
<div class="a-b">&nbsp;&amp;</div>	tabs	and	more
"#;
    let prose = "The quick brown fox jumps over the lazy dog. It's what they'd've said; I'm sure you'll agree.\n\n\
        THE QUICK BROWN FOX'S DOG. Ünïcödé àccents, naïve café, Ærøskøbing. Numbers: 3.14159, 1,000,000 and 2026-11-30.";
    let cjk = "我们的计费系统按令牌计费。東京は日本の首都です。한국어 문장도 있습니다. 繁體中文與简体中文混合。";
    let emoji = "Emoji: 😀😃😄 👩‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️‍🔥 👍🏽 and ZWJ‍joined, keycap 1️⃣, 🧑🏻‍💻.";
    let spaces =
        "a  b   c    d\n\n\n  e \t\t f\r\n\r\ng   \u{a0}\u{a0}h\u{3000}\u{3000}i \u{2028} j    ";
    vec![
        code.to_owned(),
        prose.to_owned(),
        cjk.to_owned(),
        emoji.to_owned(),
        spaces.to_owned(),
        "x".repeat(3000),
        " ".repeat(1000),
        "ab".repeat(1500),
        "hello world ".repeat(400),
        "!!!???...".repeat(200),
        "1234567890".repeat(100),
        "e\u{301}\u{301}\u{301}".repeat(50),
        "Don'T DON'T don'S ſ 'Ll 'LL".to_owned(),
        "\n".repeat(20) + "end",
        "trailing spaces   ".to_owned(),
        "   leading".to_owned(),
        "a/b/c//d https://example.com/path?q=1&r=2".to_owned(),
        String::new(),
        format!("{code}{prose}{cjk}{emoji}{spaces}"),
    ]
}

// Every text of the corpus counts the same as tiktoken-rs, in both encodings.
#[test]
fn corpus_counts_match_tiktoken() {
    for text in corpus() {
        assert_same(&text);
    }
}

// Every ordinary token's bytes are found under the rank tiktoken gives them.
#[test]
fn every_token_has_its_rank() {
    for e in [&CL100K_BASE, &O200K_BASE] {
        let reference = reference(e);
        assert!(e.len() > 100_000, "{} has {} tokens", e.name, e.len());
        for rank in 0..e.len() as u32 {
            let bytes = e.token(rank);
            assert_eq!(e.rank(bytes), Some(rank), "{} rank {rank}", e.name);
            if rank % 997 == 0 {
                let want = reference
                    ._decode_native_and_split(vec![rank])
                    .next()
                    .unwrap();
                assert_eq!(bytes, want.as_slice(), "{} rank {rank}", e.name);
            }
        }
        assert_eq!(e.rank(b"\xff\xfe no such token \xff"), None);
    }
}

// The model table picks the encoding tiktoken-rs picks, for the models it knows and for dated and fine-tuned names.
#[test]
fn model_table_matches_tiktoken() {
    use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
    let models = [
        "gpt-4o",
        "gpt-4o-2024-08-06",
        "gpt-4o-mini",
        "chatgpt-4o-latest",
        "gpt-4.1",
        "gpt-4.1-mini",
        "o1",
        "o1-mini",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-4",
        "gpt-4-0613",
        "gpt-4-32k",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-0125",
        "gpt-3.5",
        "gpt-35-turbo",
        "gpt-35-turbo-16k",
        "text-embedding-ada-002",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "davinci-002",
        "babbage-002",
        "ft:gpt-4o-mini:org::id",
        "ft:gpt-4-0613:org::id",
        "ft:gpt-3.5-turbo:x",
        "ft:davinci-002:x",
        "ft:babbage-002:x",
        "claude-sonnet-4-5-20250929",
        "text-davinci-003",
        "o5",
        "foo",
    ];
    for m in models {
        let want = match get_tokenizer(m) {
            Some(Tokenizer::O200kBase) => Some("o200k_base"),
            Some(Tokenizer::Cl100kBase) => Some("cl100k_base"),
            _ => None,
        };
        assert_eq!(openai_encoding(m).map(|e| e.name), want, "{m}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    // Random Unicode text (any printable character) counts the same as tiktoken-rs.
    #[test]
    fn random_text_matches(text in "\\PC{0,200}") {
        assert_same(&text);
    }

    // Long pieces (over the 64 bytes where merging switches to a heap) of letters, digits-free punctuation and
    // whitespace count the same as tiktoken-rs.
    #[test]
    fn long_pieces_match(text in "[a-eA-E]{65,500}|[!?.,;]{65,300}|[ \t]{65,200}|[é中ab]{30,200}") {
        assert_same(&text);
    }

    // Random joins of tricky pieces (contractions, digits, whitespace runs, newlines, slashes, marks, CJK, emoji).
    #[test]
    fn tricky_pieces_match(pieces in prop::collection::vec(prop::sample::select(vec![
        "'s", "'S", "'ll", "'LL", "ſ", "a", "Ab", "ABC", "abc", "1", "12", "1234", " ", "  ", "   ", "\t",
        "\n", "\r\n", "\n\n", "\u{a0}", "\u{3000}", "/", "//", "e\u{301}", "中文", "😀", "👩‍👧", "!", "?!", ".",
        "ǅ", "ʰ", "ｱ", "Ⅻ", "٣", "\u{200b}",
    ]), 0..40)) {
        assert_same(&pieces.concat());
    }
}
