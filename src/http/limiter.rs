//! The limit on failed API keys per peer address, one table per core.
//!
//! A peer address that presents `server.auth_failure_limit` refused keys
//! (401 with a key: unknown, or without its client certificate) within
//! `server.auth_failure_window_s` is refused 429 with `Retry-After` on
//! every route that needs a key, for `server.auth_lockout_s`, whatever key
//! it sends then (a valid key answered 200 during the lockout would tell a
//! guesser that it had found one). `/health` and other public routes stay
//! open.
//!
//! * **Per core.** Each core counts the requests it received, with no lock
//!   and no shared state; the kernel spreads connections over the cores, so
//!   a peer may get up to `limit × cores` attempts per window in all.
//! * **Bounded memory.** A fixed table of [`SETS`] × [`WAYS`] peers per
//!   core, set-associative by a keyed hash of the address (the key is
//!   random per process, so an attacker cannot aim addresses at one set).
//!   A new peer takes a free way of its set, else the way seen longest ago
//!   that is not locked out, else the one seen longest ago. A flood of
//!   addresses can therefore push an entry out: the limit slows guessing,
//!   it does not make it impossible; long keys do that.
//! * **Addresses.** IPv4 addresses count one by one; IPv6 addresses by
//!   their /64 (one host usually has a whole /64), IPv4-mapped IPv6 as
//!   IPv4. Behind a proxy every client has the proxy's address: the limit
//!   then applies to all of them together (docs/security.md).
//! * **Cheap when quiet.** While no peer is locked out the check of a
//!   request is one branch: the table remembers the latest end of a
//!   lockout, and is only searched before it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sets of the table.
pub const SETS: usize = 256;
/// Peers per set.
pub const WAYS: usize = 4;

/// The limit's settings (`server.auth_failure_limit`,
/// `auth_failure_window_s`, `auth_lockout_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimit {
    /// Failed keys allowed per window; 0 turns the limit off.
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

impl Default for FailureLimit {
    fn default() -> Self {
        FailureLimit {
            max_failures: 0,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    peer: u128,
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
    last_seen: Instant,
}

/// One core's table of peers that presented refused keys.
pub struct FailureLimiter {
    slots: Box<[Option<Slot>]>,
    hasher: RandomState,
    /// The latest end of a lockout in the table; `None` once passed.
    horizon: Option<Instant>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter {
            slots: vec![None; SETS * WAYS].into_boxed_slice(),
            hasher: RandomState::new(),
            horizon: None,
        }
    }
}

/// What a peer is counted as: IPv4 alone, IPv6 by its /64; no address
/// (not TCP) as one peer.
fn peer_key(ip: Option<IpAddr>) -> u128 {
    match ip {
        None => 0,
        Some(IpAddr::V4(v4)) => u128::from(v4.to_bits()) | (1 << 96),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_bits()) | (1 << 96),
            None => v6.to_bits() & !u128::from(u64::MAX),
        },
    }
}

impl FailureLimiter {
    /// Whether no lockout can be in force: the one branch every request
    /// pays while nobody is locked out.
    #[inline]
    pub fn quiet(&self) -> bool {
        self.horizon.is_none()
    }

    fn set_of(&self, peer: u128) -> std::ops::Range<usize> {
        let set = (self.hasher.hash_one(peer) as usize) % SETS;
        set * WAYS..(set + 1) * WAYS
    }

    /// How long `ip` stays locked out, if it is.
    pub fn locked(&mut self, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let horizon = self.horizon?;
        if now >= horizon {
            self.horizon = None;
            return None;
        }
        let peer = peer_key(ip);
        let range = self.set_of(peer);
        self.slots[range]
            .iter()
            .flatten()
            .find(|s| s.peer == peer)
            .and_then(|s| s.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts a refused key from `ip`; returns whether this failure locked
    /// it out.
    pub fn failed(&mut self, ip: Option<IpAddr>, now: Instant, limit: &FailureLimit) -> bool {
        if limit.max_failures == 0 {
            return false;
        }
        let peer = peer_key(ip);
        let range = self.set_of(peer);
        let set = &mut self.slots[range];
        let at = match set.iter().position(|s| s.is_some_and(|s| s.peer == peer)) {
            Some(i) => i,
            None => {
                // A free way, else the oldest not locked out, else the oldest.
                let victim = set.iter().position(Option::is_none).unwrap_or_else(|| {
                    let oldest = |locked: bool| {
                        set.iter()
                            .enumerate()
                            .filter_map(|(i, s)| s.map(|s| (i, s)))
                            .filter(|(_, s)| locked || s.locked_until.is_none_or(|u| u <= now))
                            .min_by_key(|(_, s)| s.last_seen)
                            .map(|(i, _)| i)
                    };
                    oldest(false).or_else(|| oldest(true)).unwrap_or(0)
                });
                set[victim] = Some(Slot {
                    peer,
                    window_start: now,
                    failures: 0,
                    locked_until: None,
                    last_seen: now,
                });
                victim
            }
        };
        let Some(slot) = set[at].as_mut() else {
            return false;
        };
        if now.saturating_duration_since(slot.window_start) >= limit.window {
            slot.window_start = now;
            slot.failures = 0;
        }
        slot.last_seen = now;
        slot.failures += 1;
        if slot.failures < limit.max_failures {
            return false;
        }
        let until = now + limit.lockout;
        slot.locked_until = Some(until);
        slot.failures = 0;
        slot.window_start = now;
        self.horizon = Some(self.horizon.map_or(until, |h| h.max(until)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: u32) -> FailureLimit {
        FailureLimit {
            max_failures: n,
            window: Duration::from_secs(10),
            lockout: Duration::from_secs(30),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn n_failures_in_a_window_lock_out_for_a_while() {
        let mut l = FailureLimiter::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!(l.quiet());
        assert!(!l.failed(a, t0, &limit(3)));
        assert!(!l.failed(a, t0 + Duration::from_secs(1), &limit(3)));
        assert_eq!(l.locked(a, t0 + Duration::from_secs(1)), None);
        assert!(l.failed(a, t0 + Duration::from_secs(2), &limit(3)));
        assert!(!l.quiet());
        assert_eq!(
            l.locked(a, t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(30))
        );
        // Another address is not affected.
        assert_eq!(l.locked(ip("192.0.2.2"), t0 + Duration::from_secs(3)), None);
        // Over at the end of the lockout, and quiet again.
        assert_eq!(l.locked(a, t0 + Duration::from_secs(32)), None);
        assert!(l.quiet());
    }

    #[test]
    fn failures_spread_over_windows_do_not_add_up() {
        let mut l = FailureLimiter::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..10u64 {
            // Two per window of 10 s, limit 3.
            let t = t0 + Duration::from_secs(11 * i);
            assert!(!l.failed(a, t, &limit(3)));
            assert!(!l.failed(a, t + Duration::from_secs(1), &limit(3)));
        }
        assert!(l.quiet());
        // Off: never locks.
        for _ in 0..100 {
            assert!(!l.failed(a, t0, &limit(0)));
        }
        assert!(l.quiet());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let mut l = FailureLimiter::default();
        let t0 = Instant::now();
        assert!(!l.failed(ip("2001:db8::1"), t0, &limit(2)));
        assert!(l.failed(ip("2001:db8::ffff:2"), t0, &limit(2)));
        assert!(l.locked(ip("2001:db8::3"), t0).is_some());
        assert!(l.locked(ip("2001:db8:0:1::3"), t0).is_none());
        assert!(!l.failed(ip("198.51.100.7"), t0, &limit(2)));
        assert!(l.failed(ip("::ffff:198.51.100.7"), t0, &limit(2)));
        assert!(l.locked(ip("198.51.100.7"), t0).is_some());
    }

    #[test]
    fn memory_is_bounded_and_lockouts_are_evicted_last() {
        let mut l = FailureLimiter::default();
        let t0 = Instant::now();
        let bad = ip("203.0.113.9");
        assert!(l.failed(bad, t0, &limit(1)));
        // Far more peers than the table holds, each failing once.
        for i in 0..(SETS * WAYS * 8) as u32 {
            let peer = Some(IpAddr::V4(std::net::Ipv4Addr::from_bits(0x0a00_0000 + i)));
            assert!(!l.failed(peer, t0 + Duration::from_secs(1), &limit(5)));
        }
        assert_eq!(l.slots.len(), SETS * WAYS);
        // The locked-out peer was never the one pushed out.
        assert!(l.locked(bad, t0 + Duration::from_secs(2)).is_some());
    }
}
