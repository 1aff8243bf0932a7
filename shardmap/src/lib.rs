//! Which core owns a key: the one function that the server
//! (`mesh::owner_of`), the load generator (`themis-loadtest --shard-aware`)
//! and shard-aware clients must compute alike.
//!
//! It lives in its own small crate so that a client-side tool can link it
//! without the database. The algorithm is a public contract (`GET /shards`
//! names it as [`HASH_NAME`]; docs/sharding.md writes it out in Python):
//!
//! 1. `h = FxHasher::default(); h.write(key); h.finish()` from `rustc-hash`
//!    2.x on a 64-bit target (the key's bytes only, no length prefix);
//! 2. `owner = (h * shards) >> 64` in 128-bit arithmetic (multiply-shift,
//!    no division).
//!
//! The unit tests pin hash values computed independently by the documented
//! Python code (docs/shard_client.py): a `rustc-hash` upgrade that changed
//! the function fails them instead of silently moving keys away from where
//! clients send them.

use std::hash::Hasher;

/// The name `GET /shards` reports for the mapping below.
pub const HASH_NAME: &str = "rustc-hash-2-fxhash64+multiply-shift";

/// The 64-bit hash of `key` the mapping is built on.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(key);
    h.finish()
}

/// The core that owns `key` among `cores` (0 when `cores` is 0 or 1).
#[inline]
pub fn owner_of(key: &[u8], cores: usize) -> usize {
    // Multiply-shift maps the hash onto 0..cores without a division.
    ((u128::from(key_hash(key)) * cores as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (key, hash) pairs computed by `docs/shard_client.py`'s `key_hash`
    /// (keys of every length class of the byte hash: empty, 1-3, 4-7,
    /// 8-16, longer than 16 and than 32 bytes, non-ASCII).
    const PINNED: &[(&str, u64)] = &[
        ("", 0xf456d26876d72d91),
        ("a", 0xbd8e8067b4be2f50),
        ("ab", 0x9de70eed801ef68e),
        ("abc", 0xe7cfbde76661213f),
        ("abcd", 0x129d90d0160ec9ca),
        ("users:1", 0xd7ee5ab35cfc7cda),
        ("users:42", 0xd4cdd56921192a62),
        ("t:12345678", 0x7938f85cb5aa8d5a),
        ("t:1234567890123", 0x8e9cf452eebf7458),
        ("table:0123456789abcdef", 0xa680953ee841702b),
        ("t:ü ñ", 0x5adc945b6b1d1b36),
        (
            "orders:orders:orders:orders:orders:orders:x",
            0x238c808ab56b24bb,
        ),
    ];

    #[test]
    fn the_hash_is_the_documented_one() {
        assert!(!PINNED.is_empty());
        for (key, hash) in PINNED {
            assert_eq!(key_hash(key.as_bytes()), *hash, "{key:?}");
        }
    }

    #[test]
    fn owners_spread_over_every_core_and_stay_in_range() {
        for cores in 1..=16 {
            let mut seen = vec![0usize; cores];
            for i in 0..4000 {
                let o = owner_of(format!("users:{i}").as_bytes(), cores);
                assert!(o < cores);
                seen[o] += 1;
            }
            assert!(
                seen.iter().all(|n| *n > 4000 / cores / 2),
                "{cores}: {seen:?}"
            );
        }
        assert_eq!(owner_of(b"anything", 0), 0);
    }
}
