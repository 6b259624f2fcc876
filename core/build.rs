//! With the `tokenizer` feature: turns OpenAI's BPE encodings into static
//! data, so that a fresh component instance counts tokens without building
//! anything (every Spin request runs in a fresh instance).
//!
//! For each encoding it writes into `OUT_DIR`:
//! - `<enc>.tokens`: every token's bytes, concatenated in rank order;
//! - `<enc>.offsets`: `u32` little-endian, `n + 1` of them: rank `r` is
//!   `tokens[offsets[r]..offsets[r + 1]]`;
//! - `<enc>.table`: `u32` little-endian open-addressing hash table of the
//!   ranks (FNV-1a over the token's bytes, linear probing, `u32::MAX` empty);
//! - `<enc>.dfa`: the pre-tokenisation regex as a regex-automata dense DFA
//!   (little-endian), with tiktoken's `\s+(?!\S)` lookahead, which no DFA can
//!   express, split into three patterns the counter combines (see
//!   `src/tokenizer.rs`).
//!
//! The ranks come from tiktoken-rs (a build dependency), the same crate the
//! exactness tests compare against.

fn main() {
    #[cfg(feature = "tokenizer")]
    tokenizer::write_all();
}

#[cfg(feature = "tokenizer")]
mod tokenizer {
    use regex_automata::dfa::dense;
    use regex_automata::util::syntax;
    use regex_automata::MatchKind;
    use std::path::Path;

    /// tiktoken's cl100k_base pattern, its last two branches (`\s+(?!\S)|\s+`) taken out.
    const CL100K: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+";
    /// tiktoken's o200k_base pattern, the same two branches taken out.
    const O200K: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    );

    /// FNV-1a, 32 bits: the table's hash (the counter computes the same).
    pub fn fnv1a(bytes: &[u8]) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for &b in bytes {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        h
    }

    pub fn write_all() {
        let out = std::env::var("OUT_DIR").unwrap();
        let out = Path::new(&out);
        // Ordinary tokens are ranks 0..n (the special tokens sit above them).
        let cl100k = tiktoken_rs::cl100k_base().unwrap();
        write("cl100k_base", &cl100k, 100_256, CL100K, out);
        let o200k = tiktoken_rs::o200k_base().unwrap();
        write("o200k_base", &o200k, 199_998, O200K, out);
        println!("cargo::rerun-if-changed=build.rs");
    }

    fn write(name: &str, bpe: &tiktoken_rs::CoreBPE, n: u32, pattern: &str, out: &Path) {
        let mut tokens = Vec::new();
        let mut offsets = Vec::with_capacity(4 * (n as usize + 1));
        offsets.extend_from_slice(&0u32.to_le_bytes());
        let mut starts = Vec::with_capacity(n as usize + 1);
        starts.push(0usize);
        for rank in 0..n {
            let bytes = bpe._decode_native_and_split(vec![rank]).next().unwrap();
            tokens.extend_from_slice(&bytes);
            starts.push(tokens.len());
            offsets.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
        }
        let size = (n as usize * 2).next_power_of_two();
        let mut table = vec![u32::MAX; size];
        for rank in 0..n as usize {
            let bytes = &tokens[starts[rank]..starts[rank + 1]];
            let mut slot = fnv1a(bytes) as usize & (size - 1);
            while table[slot] != u32::MAX {
                slot = (slot + 1) & (size - 1);
            }
            table[slot] = rank as u32;
        }
        let table: Vec<u8> = table.iter().flat_map(|r| r.to_le_bytes()).collect();

        // Three patterns, leftmost-first in this order: the encoding's own
        // branches with `\s+$` for the lookahead's end-of-text case; `\s+\s`,
        // whose last character the counter gives back (the lookahead's
        // "whitespace before a non-space"); and `\s+`.
        let patterns = [
            format!(r"{pattern}|\s+$"),
            r"\s+\s".to_owned(),
            r"\s+".to_owned(),
        ];
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::LeftmostFirst)
                    .start_kind(regex_automata::dfa::StartKind::Anchored)
                    .minimize(false),
            )
            .syntax(syntax::Config::new().unicode(true).utf8(true))
            .build_many(&patterns)
            .unwrap();
        let (dfa_bytes, pad) = dfa.to_bytes_little_endian();

        std::fs::write(out.join(format!("{name}.tokens")), &tokens).unwrap();
        std::fs::write(out.join(format!("{name}.offsets")), &offsets).unwrap();
        std::fs::write(out.join(format!("{name}.table")), &table).unwrap();
        std::fs::write(out.join(format!("{name}.dfa")), &dfa_bytes[pad..]).unwrap();
    }
}
