//! The semantic cache (`features.semantic_cache`, `/cache/*`): answers a
//! prompt equal — or similar — to one already answered.
//!
//! **Entries are entities** of the reserved table [`TABLE`], keyed by the
//! entry's identity (a digest of the normalised prompt and the canonical
//! `params`, [`identity`]). So they are written by the one write pipeline,
//! survive restarts with their expiry, and their `embedding` field is kept
//! in a cosine vector index on the table ([`ensure_index`]) by the vector
//! feature's own hook and graphs. This module adds only what a cache needs
//! on top:
//! * the lookup ([`http`]): an exact match is a point read of the
//!   identity's key on its owner; a semantic match is a filtered vector
//!   search (same `params_hash`, not expired) over every core's graph,
//!   then a point read on the winner's owner;
//! * per-core bookkeeping of the entries a core owns ([`lru::Lru`]: last
//!   use, bytes, expiry), kept by a write hook ([`maintain`]) so every
//!   write of the table — a put, an eviction, a `DELETE /entities`, a
//!   retention pass — is counted the same way;
//! * eviction past `max_entries`/`max_bytes` (least recently used first)
//!   and TTL expiry, both done by deletes through the write pipeline on
//!   the owner, in bounded steps ([`http::sweep_loop`], [`http::evict`]).
//!
//! Invariant: **an expired entry is never served.** Every hit is confirmed
//! by reading the stored document on its owner and comparing its
//! `expires_ms` with the time of the request, whether or not the sweeper
//! has removed it yet.
//!
//! Each core keeps at most `max_entries / cores` entries (and bytes):
//! keys spread evenly over the cores, so the node keeps at most
//! `max_entries` in all, and eviction is exact LRU within a core.

pub mod http;
pub mod lru;
pub mod maintain;

use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};

/// The reserved table of cache entries.
pub const TABLE: &str = "semantic_cache";
/// The field of an entry that holds its embedding.
pub const FIELD: &str = "embedding";
/// `expires_ms` of an entry without a TTL (2^53 - 1: exact in a double).
pub const NEVER: u64 = (1 << 53) - 1;

/// Field limits (bytes), checked before anything is stored.
pub const MAX_PROMPT_BYTES: usize = 64 << 10;
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
pub const MAX_PARAMS_BYTES: usize = 4 << 10;
pub const MAX_METADATA_BYTES: usize = 64 << 10;
/// Longest TTL (ten years).
pub const MAX_TTL_SECONDS: u64 = 315_360_000;

/// One core's part: the bookkeeping of the entries it owns.
#[derive(Default)]
pub struct Local {
    lru: RefCell<lru::Lru>,
    /// Whether an eviction task runs on this core.
    evicting: Cell<bool>,
    /// Whether this core has loaded its entries' bookkeeping from storage.
    loaded: Cell<bool>,
}

/// The prompt as identities compare it: surrounding whitespace trimmed,
/// inner runs of whitespace made one space, lower-cased.
pub fn normalise(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    for (i, word) in prompt.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// The digest of canonical `params` (serde_json writes object keys in
/// sorted order): what a semantic hit must share with the query.
pub fn params_hash(canonical_params: &str) -> String {
    hex(&Sha256::digest(canonical_params.as_bytes())[..8])
}

/// The entity key of the entry for `prompt` under `params`: 128 bits of
/// SHA-256 over the normalised prompt and the canonical params.
pub fn identity(prompt: &str, canonical_params: &str) -> String {
    let mut h = Sha256::new();
    h.update(normalise(prompt).as_bytes());
    h.update([0u8]);
    h.update(canonical_params.as_bytes());
    format!("{TABLE}:{}", hex(&h.finalize()[..16]))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_ignores_case_and_spacing() {
        assert_eq!(
            normalise("  What IS\tthe\n capital?  "),
            "what is the capital?"
        );
        assert_eq!(normalise(""), "");
        assert_eq!(
            identity("Hello  World", "{}"),
            identity("hello world", "{}")
        );
        assert_ne!(
            identity("hello world", "{}"),
            identity("hello world", "{\"t\":1}")
        );
        assert!(identity("x", "{}").starts_with("semantic_cache:"));
        assert_eq!(identity("x", "{}").len(), TABLE.len() + 1 + 32);
        assert_eq!(params_hash("{}").len(), 16);
    }
}
