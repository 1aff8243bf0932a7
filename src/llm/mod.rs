//! The LLM interaction store (`features.llm_store`, `/llm/interaction`): a
//! durable, queryable log of prompts, responses, token counts and
//! latencies.
//!
//! **Interactions are entities** of the reserved table [`TABLE`], keyed
//! `llm_interactions:<id>` and written by the one write pipeline. So
//! secondary indexes, `/query`, the change feed (`table=llm_interactions`)
//! and entity retention policies work on them with no code here.
//!
//! **Ids are time-ordered** ([`IdGen`]): 128 bits — 48 bits of Unix
//! milliseconds, 10 bits of the core that made it, 22 bits of a per-core
//! sequence, 48 random bits — written as 26 characters of Crockford base32
//! (ULID's alphabet and layout of the time part). The alphabet is in ASCII
//! order, so key order is id order is time order, and listing newest first
//! is a reverse range read of the `entities` family, not a sort.
//!
//! Invariant: ids made by one core strictly increase (the clock going back
//! does not matter: the sequence carries on from the last id); ids of two
//! cores never collide (the core is part of the id). A cursor is the last
//! id a page returned, and the next page reads strictly below it: a walk
//! never repeats an interaction and never skips one that existed when it
//! started, whatever arrives meanwhile (new ones sort above the walk).

pub mod http;

use std::cell::Cell;

/// The reserved table of interactions.
pub const TABLE: &str = "llm_interactions";
/// Characters of an id.
pub const ID_LEN: usize = 26;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const SEQ_BITS: u32 = 22;
const CORE_BITS: u32 = 10;
const RANDOM_BITS: u32 = 48;
/// Bits below the millisecond part.
const LOW_BITS: u32 = CORE_BITS + SEQ_BITS + RANDOM_BITS;

/// Writes `v` as 26 Crockford base32 characters (most significant first).
pub fn encode(v: u128) -> String {
    let mut out = [0u8; ID_LEN];
    for (i, c) in out.iter_mut().enumerate() {
        let shift = 5 * (ID_LEN - 1 - i) as u32;
        *c = ALPHABET[((v >> shift) & 31) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

/// The value of an id; `None` unless it is 26 characters of the alphabet
/// (upper case) that fit 128 bits.
pub fn decode(id: &str) -> Option<u128> {
    if id.len() != ID_LEN {
        return None;
    }
    let mut v: u128 = 0;
    for (i, b) in id.bytes().enumerate() {
        let d = ALPHABET.iter().position(|&a| a == b)? as u128;
        if i == 0 && d > 7 {
            return None;
        }
        v = (v << 5) | d;
    }
    Some(v)
}

/// The millisecond part of an id's value.
pub fn millis_of(v: u128) -> u64 {
    (v >> LOW_BITS) as u64
}

/// The smallest id value of millisecond `ms`.
pub fn first_of_ms(ms: u64) -> u128 {
    u128::from(ms.min((1 << 48) - 1)) << LOW_BITS
}

/// One core's id generator.
pub struct IdGen {
    core: u128,
    last_ms: Cell<u64>,
    seq: Cell<u64>,
    rng: Cell<u64>,
}

impl IdGen {
    pub fn new(core: usize) -> IdGen {
        let seed = crate::cache::now_ms() ^ ((core as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        IdGen {
            core: (core as u128) & ((1 << CORE_BITS) - 1),
            last_ms: Cell::new(0),
            seq: Cell::new(0),
            rng: Cell::new(seed | 1),
        }
    }

    fn random(&self) -> u64 {
        // xorshift64*: ids need uniqueness from the other parts, these bits
        // only make them hard to guess.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next id at wall-clock time `now_ms`: above every id this
    /// generator made before.
    pub fn next(&self, now_ms: u64) -> (String, u64) {
        let (mut ms, mut seq) = (now_ms, 0);
        if now_ms <= self.last_ms.get() {
            ms = self.last_ms.get();
            seq = self.seq.get() + 1;
            if seq >> SEQ_BITS != 0 {
                ms += 1;
                seq = 0;
            }
        }
        self.last_ms.set(ms);
        self.seq.set(seq);
        let v = (u128::from(ms) << LOW_BITS)
            | (self.core << (SEQ_BITS + RANDOM_BITS))
            | (u128::from(seq) << RANDOM_BITS)
            | u128::from(self.random() >> (64 - RANDOM_BITS));
        (encode(v), ms)
    }
}

/// One core's part: its id generator.
pub struct Local {
    ids: IdGen,
}

impl Local {
    pub fn new(core: usize) -> Local {
        Local {
            ids: IdGen::new(core),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_increase_on_one_core_even_when_the_clock_goes_back() {
        let g = IdGen::new(3);
        let mut last = String::new();
        for now in [5u64, 5, 5, 4, 100, 99, 1] {
            let (id, _) = g.next(now);
            assert!(id > last, "{id} after {last}");
            assert_eq!(decode(&id).map(encode), Some(id.clone()));
            last = id;
        }
        let (id, ms) = g.next(200);
        assert_eq!(ms, 200);
        assert_eq!(millis_of(decode(&id).unwrap_or(0)), 200);
    }

    #[test]
    fn ids_of_two_cores_differ_in_the_same_millisecond() {
        let (a, b) = (IdGen::new(0), IdGen::new(1));
        assert_ne!(a.next(7).0, b.next(7).0);
    }

    #[test]
    fn decode_refuses_what_is_not_an_id() {
        for bad in [
            "",
            "x",
            "0000000000000000000000000u",
            "80000000000000000000000000",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(decode("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"), Some(u128::MAX));
    }

    proptest! {
        /// Key order is value order: the time ranges of listings rely on it.
        #[test]
        fn string_order_is_value_order(a: u128, b: u128) {
            prop_assert_eq!(a.cmp(&b), encode(a).cmp(&encode(b)));
            prop_assert_eq!(decode(&encode(a)), Some(a));
        }
    }
}
