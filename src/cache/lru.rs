//! One core's bookkeeping of the cache entries it owns: when each was last
//! used, its size and its expiry, in the orders eviction and expiry need.
//!
//! Pure (no storage, no clock): the write hook tells it what was stored or
//! deleted, lookups tell it what was used, and the sweeper asks it what is
//! oldest or expired. Every operation is O(log n); memory is bounded by the
//! entries the core owns, which eviction keeps under its cap.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

#[derive(Debug, Clone, Copy)]
struct Meta {
    /// Tick of the last use (put or hit); larger is more recent.
    used: u64,
    bytes: u64,
    expires_ms: u64,
}

/// The entries of one core.
#[derive(Default)]
pub struct Lru {
    tick: u64,
    entries: HashMap<Rc<str>, Meta>,
    by_use: BTreeMap<u64, Rc<str>>,
    by_expiry: BTreeSet<(u64, Rc<str>)>,
    bytes: u64,
}

impl Lru {
    /// Records a stored entry (new or replaced): it is the most recently
    /// used.
    pub fn stored(&mut self, key: &str, bytes: u64, expires_ms: u64) {
        self.removed(key);
        self.tick += 1;
        let key: Rc<str> = Rc::from(key);
        self.by_use.insert(self.tick, key.clone());
        self.by_expiry.insert((expires_ms, key.clone()));
        self.bytes += bytes;
        self.entries.insert(
            key,
            Meta {
                used: self.tick,
                bytes,
                expires_ms,
            },
        );
    }

    /// Records an entry loaded at start-up, unless a write since knows
    /// better. Loaded entries count as used before every live one.
    pub fn loaded(&mut self, key: &str, bytes: u64, expires_ms: u64) {
        if !self.entries.contains_key(key) {
            self.stored(key, bytes, expires_ms);
        }
    }

    /// Forgets a deleted entry.
    pub fn removed(&mut self, key: &str) {
        if let Some((k, m)) = self.entries.remove_entry(key) {
            self.by_use.remove(&m.used);
            self.by_expiry.remove(&(m.expires_ms, k));
            self.bytes -= m.bytes;
        }
    }

    /// Marks an entry used now (a hit).
    pub fn touch(&mut self, key: &str) {
        let tick = self.tick + 1;
        if let Some((k, m)) = self.entries.get_key_value(key) {
            let k = k.clone();
            let old = m.used;
            self.by_use.remove(&old);
            self.by_use.insert(tick, k.clone());
            self.tick = tick;
            if let Some(m) = self.entries.get_mut(&*k) {
                m.used = tick;
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The least recently used entry.
    pub fn oldest(&self) -> Option<Rc<str>> {
        self.by_use.values().next().cloned()
    }

    /// The `n` least recently used entries, oldest first.
    pub fn oldest_n(&self, n: usize) -> Vec<Rc<str>> {
        self.by_use.values().take(n).cloned().collect()
    }

    /// Up to `n` entries expired at `now_ms`, soonest first.
    pub fn expired(&self, now_ms: u64, n: usize) -> Vec<Rc<str>> {
        self.by_expiry
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(n)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Whether `key` is recorded as expired at `now_ms`.
    pub fn is_expired(&self, key: &str, now_ms: u64) -> bool {
        self.entries
            .get(key)
            .is_some_and(|m| m.expires_ms <= now_ms)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn least_recently_used_goes_first() {
        let mut l = Lru::default();
        l.stored("a", 10, 100);
        l.stored("b", 20, 50);
        l.stored("c", 30, 200);
        assert_eq!((l.len(), l.bytes()), (3, 60));
        assert_eq!(l.oldest().as_deref(), Some("a"));
        l.touch("a");
        assert_eq!(l.oldest().as_deref(), Some("b"));
        let two: Vec<String> = l.oldest_n(2).iter().map(|k| k.to_string()).collect();
        assert_eq!(two, ["b", "c"]);
        l.stored("b", 5, 300); // replaced: now the newest, new size
        assert_eq!(l.oldest().as_deref(), Some("c"));
        assert_eq!(l.bytes(), 45);
        assert_eq!(l.expired(150, 10).len(), 1);
        assert_eq!(l.expired(100, 10)[0].as_ref(), "a");
        assert!(l.is_expired("a", 100) && !l.is_expired("a", 99));
        l.removed("a");
        l.removed("zz");
        assert_eq!((l.len(), l.bytes()), (2, 35));
        l.loaded("c", 1, 1); // a write since knows better
        assert_eq!(l.bytes(), 35);
    }

    proptest! {
        /// Against a plain model: sizes add up, the oldest is the one used
        /// longest ago, and expiry lists exactly the entries due.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..4, 0u8..6, 1u64..100, 0u64..50), 1..200)) {
            let mut l = Lru::default();
            let mut model: Vec<(String, u64, u64)> = Vec::new(); // in use order
            for (op, k, bytes, exp) in ops {
                let key = format!("k{k}");
                let pos = model.iter().position(|(m, ..)| *m == key);
                match op {
                    0 | 1 => {
                        l.stored(&key, bytes, exp);
                        if let Some(p) = pos { model.remove(p); }
                        model.push((key, bytes, exp));
                    }
                    2 => {
                        l.removed(&key);
                        if let Some(p) = pos { model.remove(p); }
                    }
                    _ => {
                        l.touch(&key);
                        if let Some(p) = pos { let e = model.remove(p); model.push(e); }
                    }
                }
                prop_assert_eq!(l.len(), model.len() as u64);
                prop_assert_eq!(l.bytes(), model.iter().map(|m| m.1).sum::<u64>());
                prop_assert_eq!(l.oldest().map(|k| k.to_string()), model.first().map(|m| m.0.clone()));
                let due = l.expired(25, usize::MAX).len();
                prop_assert_eq!(due, model.iter().filter(|m| m.2 <= 25).count());
            }
        }
    }
}
