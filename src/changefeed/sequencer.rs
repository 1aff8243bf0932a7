//! `Sequencer`: one gap-free, server-wide order of change events, and the
//! point up to which that order may be read without ever missing an event.
//!
//! Writers on every core take sequence numbers from one atomic counter and
//! commit their batches independently, so commits finish out of order:
//! core A may hold sequence 7 while core B has already committed 8. A reader
//! that served 8 and moved on would never see 7. The sequencer therefore
//! publishes a *visible* watermark: the largest `v` such that every sequence
//! `<= v` has either committed or been abandoned. Readers never look past
//! it.
//!
//! Protocol (all operations `SeqCst`, so they sit in one total order):
//! * Each core has one slot: 0, or a lower bound of every sequence the core
//!   has taken and not yet committed (or abandoned).
//! * A writer whose slot is 0 first stores a lower bound of the sequence it
//!   is about to take (`counter + 1`) in its slot, then takes `seq` with
//!   `fetch_add` (so `seq >= slot`). A writer whose slot is already set
//!   takes `seq` without touching it: the counter only grows, so the slot is
//!   still below `seq`.
//! * A core's changes commit in groups (`entity::group`), in the order their
//!   sequences were taken on that core. When a group has committed, the
//!   core stores in its slot the first sequence of its oldest group still
//!   uncommitted, or 0 when it holds none ([`Sequencer::release`]). That
//!   value is one the core took earlier, so it is below every sequence the
//!   core still holds.
//! * A reader loads the counter `c`, then every slot; the watermark is `c`,
//!   lowered to `slot - 1` for every occupied slot.
//!
//! Why no event is missed: let `k <= v` be a sequence a reader considers
//! visible. The reader's counter load saw `c >= k`, so it came after the
//! `fetch_add` that produced `k`, and therefore after the writer's slot held
//! a bound `L <= k` (stored before that `fetch_add`, or earlier while the
//! core already held a smaller sequence). Until the group carrying `k`
//! commits, every value the writer stores in its slot is the first sequence
//! of a group not after `k`'s, hence `<= k`. So when the reader then loads
//! that slot it finds a value `<= k` (and lowers `v` below `k`:
//! contradiction) or a value stored after `k`'s group committed.
//!
//! One slot per core is enough because a core's groups commit one at a time
//! and in order (`entity::group`: one committer per core, groups FIFO), and
//! sequences are taken in staging order, so the oldest uncommitted group
//! holds the core's smallest uncommitted sequence. Cost on the write path:
//! one `fetch_add` on a shared cache line and at most one store to the
//! core's own line per write, one store per group; no lock.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// The server-wide sequence counter and each core's in-flight slot.
pub struct Sequencer {
    /// The last sequence handed out.
    last: Padded,
    /// The highest watermark computed so far (keeps it monotonic: a writer
    /// that read the counter, then was descheduled, stores a stale, lower
    /// bound, which would pull a fresh computation below an earlier one —
    /// still safe, but readers should never see the feed go backwards).
    high: Padded,
    /// Per core: 0, or a lower bound of the sequence that core is
    /// committing.
    slots: Box<[Padded]>,
}

/// A sequence being committed; the slot is released on drop (after the
/// write, whether or not it succeeded). For a core that holds one sequence
/// at a time (tests, the start-up probe).
pub struct Ticket<'a> {
    pub seq: u64,
    slot: &'a AtomicU64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.slot.store(0, SeqCst);
    }
}

impl Sequencer {
    /// A sequencer for `cores` writers whose last used sequence is `last`.
    pub fn new(cores: usize, last: u64) -> Sequencer {
        Sequencer {
            last: Padded(AtomicU64::new(last)),
            high: Padded(AtomicU64::new(last)),
            slots: (0..cores).map(|_| Padded::default()).collect(),
        }
    }

    /// Takes the next sequence for core `core`. Hold the ticket until the
    /// write carrying the sequence has returned.
    pub fn begin(&self, core: usize) -> Ticket<'_> {
        let seq = self.take(core);
        Ticket {
            seq,
            slot: &self.slots[core].0,
        }
    }

    /// The protocol's first half: marks core `core`'s slot with a lower
    /// bound unless it holds one already, then takes the next sequence. The
    /// caller must call [`Sequencer::release`] once the write carrying it
    /// has returned (whether or not it succeeded); [`Ticket`] does that on
    /// drop.
    pub fn take(&self, core: usize) -> u64 {
        let slot = &self.slots[core].0;
        // Only this core stores its slot: load-then-store is no race.
        if slot.load(SeqCst) == 0 {
            slot.store(self.last.0.load(SeqCst) + 1, SeqCst);
        }
        self.last.0.fetch_add(1, SeqCst) + 1
    }

    /// The protocol's second half, after a group of core `core` committed
    /// (or failed): `next` is the first sequence of the core's oldest group
    /// still uncommitted, 0 when it holds none.
    pub fn release(&self, core: usize, next: u64) {
        self.slots[core].0.store(next, SeqCst);
    }

    /// Every sequence up to this one has committed (or was abandoned).
    /// Never decreases: once every sequence up to `v` has committed, that
    /// stays true, so the maximum of all computed watermarks is one too.
    pub fn visible(&self) -> u64 {
        let mut v = self.last.0.load(SeqCst);
        for s in self.slots.iter() {
            let bound = s.0.load(SeqCst);
            if bound != 0 {
                v = v.min(bound - 1);
            }
        }
        self.high.0.fetch_max(v, SeqCst).max(v)
    }

    /// The last sequence handed out (committed or not).
    pub fn last_allocated(&self) -> u64 {
        self.last.0.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn visible_waits_for_the_oldest_in_flight() {
        let s = Sequencer::new(2, 10);
        assert_eq!(s.visible(), 10);
        let a = s.begin(0);
        let b = s.begin(1);
        assert_eq!((a.seq, b.seq), (11, 12));
        assert_eq!(s.visible(), 10);
        drop(b);
        assert_eq!(s.visible(), 10, "12 committed but 11 has not");
        drop(a);
        assert_eq!(s.visible(), 12);
    }

    /// Writers mark their sequence committed in a shared table just before
    /// releasing the ticket; readers check every sequence up to the
    /// watermark is marked, and that the watermark never goes back.
    #[test]
    fn watermark_never_passes_an_uncommitted_sequence() {
        const CORES: usize = 4;
        const PER_CORE: u64 = 20_000;
        let total = CORES as u64 * PER_CORE;
        let seq = Arc::new(Sequencer::new(CORES, 0));
        let done: Arc<Vec<AtomicBool>> =
            Arc::new((0..=total).map(|_| AtomicBool::new(false)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (seq, done, stop) = (seq.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                let mut checked = 0;
                while !stop.load(SeqCst) {
                    let v = seq.visible();
                    assert!(v >= last, "watermark went back from {last} to {v}");
                    for s in checked + 1..=v {
                        assert!(done[s as usize].load(SeqCst), "{s} visible before commit");
                    }
                    checked = checked.max(v);
                    last = v;
                }
            })
        };
        let writers: Vec<_> = (0..CORES)
            .map(|core| {
                let (seq, done) = (seq.clone(), done.clone());
                std::thread::spawn(move || {
                    for _ in 0..PER_CORE {
                        let t = seq.begin(core);
                        done[t.seq as usize].store(true, SeqCst);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, SeqCst);
        reader.join().unwrap();
        assert_eq!(seq.visible(), total);
    }

    /// Cores that hold several groups at once (one committing, more
    /// gathering), as the group commit does: each writer takes sequences
    /// for groups of random sizes, keeps up to three groups open, commits
    /// them oldest first and releases to the next group's first sequence.
    /// The reader checks the watermark never passes an uncommitted one.
    #[test]
    fn watermark_holds_with_several_groups_in_flight_per_core() {
        use std::collections::VecDeque;
        const CORES: usize = 3;
        const PER_CORE: u64 = 20_000;
        let total = CORES as u64 * PER_CORE;
        let seq = Arc::new(Sequencer::new(CORES, 0));
        let done: Arc<Vec<AtomicBool>> =
            Arc::new((0..=total).map(|_| AtomicBool::new(false)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (seq, done, stop) = (seq.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut checked = 0;
                while !stop.load(SeqCst) {
                    let v = seq.visible();
                    for s in checked + 1..=v {
                        assert!(done[s as usize].load(SeqCst), "{s} visible before commit");
                    }
                    checked = checked.max(v);
                }
            })
        };
        let writers: Vec<_> = (0..CORES)
            .map(|core| {
                let (seq, done) = (seq.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ core as u64;
                    let mut next = || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    let mut groups: VecDeque<Vec<u64>> = VecDeque::new();
                    let mut taken = 0;
                    while taken < PER_CORE || !groups.is_empty() {
                        if taken < PER_CORE && (groups.len() < 3 && next() % 3 != 0) {
                            let n = (next() % 8 + 1).min(PER_CORE - taken);
                            let g: Vec<u64> = (0..n).map(|_| seq.take(core)).collect();
                            taken += n;
                            groups.push_back(g);
                        } else if let Some(g) = groups.pop_front() {
                            for s in g {
                                done[s as usize].store(true, SeqCst);
                            }
                            let first = groups.front().map_or(0, |g| g[0]);
                            seq.release(core, first);
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, SeqCst);
        reader.join().unwrap();
        assert_eq!(seq.visible(), total);
    }
}
