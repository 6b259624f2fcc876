//! Local token counts for estimates before a call.
//!
//! OpenAI-family models use public BPE encodings (`cl100k_base`,
//! `o200k_base`), so their counts are exact. Claude's tokenizer is not
//! public: for Claude (and any other model) the count is the `cl100k_base`
//! count of the same text, labelled an estimate. The provider's
//! `count_tokens` endpoint is the exact figure for Claude; callers prefer it
//! when they can reach it.
//!
//! Nothing is built at run time: the vocabularies and the pre-tokenisation
//! regex are static data made by `build.rs` (from tiktoken-rs, the same
//! crate the tests compare every count against), so a fresh Spin instance
//! pays nothing before its first count. Counting is tiktoken's
//! `encode_ordinary`: split the text with the encoding's regex, then merge
//! each piece's bytes pair by pair, lowest rank first (tiktoken's
//! `_byte_pair_merge`).

use regex_automata::dfa::{dense, Automaton};
use regex_automata::Anchored;
use serde::{Deserialize, Serialize};

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

/// Bytes aligned for a `u32` read (the DFA's transition table needs it).
#[repr(C)]
struct Aligned<B: ?Sized> {
    _align: [u32; 0],
    bytes: B,
}

/// One BPE encoding as static data (see build.rs for the layout).
pub struct Encoding {
    pub name: &'static str,
    tokens: &'static [u8],
    offsets: &'static [u8],
    table: &'static [u8],
    dfa: &'static [u8],
}

macro_rules! encoding {
    ($name:literal) => {{
        static DFA: &Aligned<[u8]> = &Aligned {
            _align: [],
            bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".dfa")),
        };
        Encoding {
            name: $name,
            tokens: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".tokens")),
            offsets: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".offsets")),
            table: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".table")),
            dfa: &DFA.bytes,
        }
    }};
}

/// GPT-4, GPT-3.5 and the text-embedding models; the stand-in for Claude.
pub static CL100K_BASE: Encoding = encoding!("cl100k_base");
/// GPT-4o, GPT-4.1, o1, o3, o4 and later OpenAI models.
pub static O200K_BASE: Encoding = encoding!("o200k_base");

/// Which pattern of the DFA matched (build.rs lists them in this order).
const GIVE_BACK_LAST_CHAR: usize = 1;

/// The leftmost-first match anchored at `at`: (pattern, end). The DFA is
/// walked byte by byte (what `try_search_fwd` does, without its set-up per
/// call, which cost more than the walk for pieces of a few bytes). A DFA
/// reports a match one byte late: entering a match state on the byte at
/// `i` means a match ended at `i`.
fn next_piece(
    dfa: &dense::DFA<&'static [u32]>,
    starts: &mut StartStates,
    bytes: &[u8],
    at: usize,
) -> (usize, usize) {
    let mut state = starts.get(dfa, at.checked_sub(1).map(|i| bytes[i]));
    let mut found = None;
    let mut i = at;
    while i < bytes.len() {
        // SAFETY: `state` came from this DFA (its start state or a
        // transition), which is all `next_state_unchecked` asks; the DFA's
        // bytes are checked valid by `dfa_data_is_valid`.
        state = unsafe { dfa.next_state_unchecked(state, bytes[i]) };
        if dfa.is_special_state(state) {
            if dfa.is_match_state(state) {
                found = Some((dfa.match_pattern(state, 0).as_usize(), i));
            } else if dfa.is_dead_state(state) {
                break;
            }
        }
        i += 1;
    }
    if i == bytes.len() {
        state = dfa.next_eoi_state(state);
        if dfa.is_match_state(state) {
            found = Some((dfa.match_pattern(state, 0).as_usize(), i));
        }
    }
    found.expect("every character starts a piece")
}

/// The anchored start state for each look-behind byte (and for none), found
/// once per count: `start_state` costs more than a short piece's walk.
struct StartStates {
    by_byte: [Option<regex_automata::util::primitives::StateID>; 257],
}

impl StartStates {
    fn new() -> Self {
        Self {
            by_byte: [None; 257],
        }
    }

    fn get(
        &mut self,
        dfa: &dense::DFA<&'static [u32]>,
        look_behind: Option<u8>,
    ) -> regex_automata::util::primitives::StateID {
        let slot = look_behind.map_or(256, usize::from);
        *self.by_byte[slot].get_or_insert_with(|| {
            let config = regex_automata::util::start::Config::new()
                .anchored(Anchored::Yes)
                .look_behind(look_behind);
            dfa.start_state(&config)
                .expect("an anchored start state exists")
        })
    }
}

fn u32_at(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
}

/// FNV-1a, 32 bits, as build.rs hashes the table.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl Encoding {
    /// Number of ordinary tokens.
    pub fn len(&self) -> usize {
        self.offsets.len() / 4 - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of token `rank`.
    pub fn token(&self, rank: u32) -> &'static [u8] {
        let r = rank as usize;
        &self.tokens[u32_at(self.offsets, r) as usize..u32_at(self.offsets, r + 1) as usize]
    }

    /// The rank of `bytes`, if they are a token.
    pub fn rank(&self, bytes: &[u8]) -> Option<u32> {
        let mask = self.table.len() / 4 - 1;
        let mut slot = fnv1a(bytes) as usize & mask;
        loop {
            let rank = u32_at(self.table, slot);
            if rank == u32::MAX {
                return None;
            }
            if self.token(rank) == bytes {
                return Some(rank);
            }
            slot = (slot + 1) & mask;
        }
    }

    fn dfa(&self) -> dense::DFA<&'static [u32]> {
        // SAFETY: the bytes are what `DFA::to_bytes_little_endian` wrote in
        // build.rs with this same regex-automata, for this little-endian
        // target (wasm32 and x86_64 both are); `dfa_data_is_valid` checks
        // them with the validating `from_bytes`.
        unsafe { dense::DFA::from_bytes_unchecked(self.dfa) }
            .expect("build.rs wrote a valid DFA")
            .0
    }

    /// The number of tokens `text` encodes to (tiktoken's
    /// `encode_ordinary(text).len()`: special-token text counts as text).
    pub fn count(&self, text: &str) -> u64 {
        let dfa = self.dfa();
        let bytes = text.as_bytes();
        let mut at = 0;
        let mut tokens = 0;
        let mut parts = Vec::new();
        let mut starts = StartStates::new();
        while at < bytes.len() {
            let (pattern, mut end) = next_piece(&dfa, &mut starts, bytes, at);
            if pattern == GIVE_BACK_LAST_CHAR {
                end -= text[..end].chars().next_back().map_or(0, char::len_utf8);
            }
            tokens += self.count_piece(&bytes[at..end], &mut parts);
            at = end;
        }
        tokens
    }

    /// Tokens of one piece: one if it is a token, else what merging gives.
    fn count_piece(&self, piece: &[u8], parts: &mut Vec<(usize, u32)>) -> u64 {
        if piece.len() == 1 || self.rank(piece).is_some() {
            return 1;
        }
        if piece.len() > LONG_PIECE {
            return self.count_long_piece(piece);
        }
        // parts[i] = (start of part i, rank of part i joined with part i+1).
        parts.clear();
        let pair_rank = |parts: &[(usize, u32)], i: usize| -> u32 {
            if i + 2 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 2].0])
                    .unwrap_or(u32::MAX)
            } else {
                u32::MAX
            }
        };
        for i in 0..piece.len() {
            parts.push((i, u32::MAX));
        }
        parts.push((piece.len(), u32::MAX));
        for i in 0..parts.len() - 2 {
            parts[i].1 = pair_rank(parts, i);
        }
        loop {
            let (i, rank) = parts[..parts.len() - 1]
                .iter()
                .enumerate()
                .map(|(i, p)| (i, p.1))
                .min_by_key(|&(i, r)| (r, i))
                .expect("at least one part");
            if rank == u32::MAX {
                break;
            }
            parts.remove(i + 1);
            parts[i].1 = pair_rank(parts, i);
            if i > 0 {
                parts[i - 1].1 = pair_rank(parts, i - 1);
            }
        }
        (parts.len() - 1) as u64
    }

    /// The same merges for a long piece in O(n log n): the pairs in a heap
    /// ordered by (rank, start), which is the order the scan above picks
    /// them in (lowest rank, leftmost first); a popped pair whose parts
    /// changed since it was pushed is skipped. Without it, one long run of
    /// letters (a 2 MiB body allows one) would cost the scan n² steps.
    fn count_long_piece(&self, piece: &[u8]) -> u64 {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        const NONE: usize = usize::MAX;
        let n = piece.len();
        // Parts are kept as a linked list of their start offsets.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        let mut alive = vec![true; n];
        let end_of = |next: &[usize], s: usize| if next[s] >= n { n } else { next[s] };
        let mut heap = BinaryHeap::new();
        let pair = |next: &[usize], s: usize| -> Option<(u32, usize)> {
            let mid = end_of(next, s);
            if mid >= n {
                return None;
            }
            let end = end_of(next, mid);
            self.rank(&piece[s..end]).map(|r| (r, end))
        };
        for s in 0..n {
            if let Some((rank, end)) = pair(&next, s) {
                heap.push(Reverse((rank, s, end)));
            }
        }
        let mut parts = n as u64;
        while let Some(Reverse((_, s, end))) = heap.pop() {
            let mid = end_of(&next, s);
            if !alive[s] || mid >= n || end_of(&next, mid) != end {
                continue;
            }
            // Merge the part at `mid` into the one at `s`.
            alive[mid] = false;
            next[s] = next[mid];
            if next[mid] < n {
                prev[next[mid]] = s;
            }
            parts -= 1;
            if let Some((rank, end)) = pair(&next, s) {
                heap.push(Reverse((rank, s, end)));
            }
            if prev[s] != NONE {
                let p = prev[s];
                if let Some((rank, end)) = pair(&next, p) {
                    heap.push(Reverse((rank, p, end)));
                }
            }
        }
        parts
    }
}

/// Pieces longer than this (bytes) are merged with a heap rather than by
/// scanning every pair after each merge.
const LONG_PIECE: usize = 64;

/// The encoding OpenAI's tiktoken assigns `model` (its `model.py` table:
/// exact names, then prefixes), for the two encodings counted here.
pub fn openai_encoding(model: &str) -> Option<&'static Encoding> {
    const O200K_NAMES: &[&str] = &["o1", "o3", "gpt-4.1", "chatgpt-4o-latest", "gpt-4o"];
    const O200K_PREFIXES: &[&str] = &[
        "o1-",
        "o3-",
        "o4-",
        "gpt-4.1-",
        "chatgpt-4o-",
        "gpt-4o-",
        "ft:gpt-4o",
    ];
    const CL100K_NAMES: &[&str] = &[
        "gpt-4",
        "gpt-3.5-turbo",
        "gpt-3.5",
        "gpt-35-turbo",
        "davinci-002",
        "babbage-002",
        "text-embedding-ada-002",
        "text-embedding-3-small",
        "text-embedding-3-large",
    ];
    const CL100K_PREFIXES: &[&str] = &[
        "gpt-4-",
        "gpt-3.5-turbo-",
        "gpt-35-turbo-",
        "ft:gpt-4",
        "ft:gpt-3.5-turbo",
        "ft:davinci-002",
        "ft:babbage-002",
    ];
    if O200K_NAMES.contains(&model) {
        return Some(&O200K_BASE);
    }
    if CL100K_NAMES.contains(&model) {
        return Some(&CL100K_BASE);
    }
    // The prefixes in tiktoken's order: the first that matches decides
    // ("ft:gpt-4o" before "ft:gpt-4").
    let prefixes = O200K_PREFIXES[..6]
        .iter()
        .map(|p| (*p, &O200K_BASE))
        .chain(CL100K_PREFIXES[..3].iter().map(|p| (*p, &CL100K_BASE)))
        .chain([(O200K_PREFIXES[6], &O200K_BASE)])
        .chain(CL100K_PREFIXES[3..].iter().map(|p| (*p, &CL100K_BASE)));
    for (prefix, encoding) in prefixes {
        if model.starts_with(prefix) {
            return Some(encoding);
        }
    }
    None
}

/// Counts the tokens of `text` as `model` would see it.
pub fn count_text(model: &str, text: &str) -> TokenCount {
    let (encoding, method) = match openai_encoding(model) {
        Some(e) => (e, CountMethod::Exact),
        None => (&CL100K_BASE, CountMethod::Estimate),
    };
    TokenCount {
        tokens: encoding.count(text),
        method,
        encoding: encoding.name,
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

    // The static DFA data passes regex-automata's own validation (the counter skips it at run time).
    #[test]
    fn dfa_data_is_valid() {
        for e in [&CL100K_BASE, &O200K_BASE] {
            dense::DFA::from_bytes(e.dfa).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        }
    }
}
