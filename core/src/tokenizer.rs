//! Local token counts for estimates before a call.
//!
//! OpenAI-family models use public BPE encodings (`cl100k_base`,
//! `o200k_base`), so their counts are exact. Claude's tokenizer is not
//! public: for Claude (and any other model) the count is the `cl100k_base`
//! count of the same text, labelled an estimate. The provider's
//! `count_tokens` endpoint is the exact figure for Claude; callers prefer it
//! when they can reach it.

use serde::{Deserialize, Serialize};
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountMethod {
    /// The model's own encoding: the provider would count the same.
    Exact,
    /// A stand-in encoding: close, not exact.
    Estimate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCount {
    pub tokens: u64,
    pub method: CountMethod,
    pub encoding: &'static str,
}

fn encoding_for(model: &str) -> (&'static CoreBPE, &'static str, CountMethod) {
    match get_tokenizer(model) {
        Some(Tokenizer::O200kBase) => (
            tiktoken_rs::o200k_base_singleton(),
            "o200k_base",
            CountMethod::Exact,
        ),
        Some(Tokenizer::Cl100kBase) => (
            tiktoken_rs::cl100k_base_singleton(),
            "cl100k_base",
            CountMethod::Exact,
        ),
        _ => (
            tiktoken_rs::cl100k_base_singleton(),
            "cl100k_base",
            CountMethod::Estimate,
        ),
    }
}

/// Counts the tokens of `text` as `model` would see it.
pub fn count_text(model: &str, text: &str) -> TokenCount {
    let (bpe, encoding, method) = encoding_for(model);
    TokenCount {
        tokens: bpe.encode_ordinary(text).len() as u64,
        method,
        encoding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // OpenAI models count exactly with their own encoding (figures from OpenAI's tiktoken); Claude is an estimate.
    #[test]
    fn counts_and_methods() {
        let c = count_text("gpt-4-0613", "hello world");
        assert_eq!(
            (c.tokens, c.method, c.encoding),
            (2, CountMethod::Exact, "cl100k_base")
        );
        let c = count_text("gpt-4o-2024-08-06", "tiktoken is great!");
        assert_eq!(
            (c.tokens, c.method, c.encoding),
            (6, CountMethod::Exact, "o200k_base")
        );
        let c = count_text("claude-sonnet-4-5-20250929", "hello world");
        assert_eq!((c.tokens, c.method), (2, CountMethod::Estimate));
        assert_eq!(count_text("claude-haiku-4-5-20251001", "").tokens, 0);
    }
}
