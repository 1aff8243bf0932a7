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
//! * A writer first stores a lower bound of the sequence it is about to take
//!   (`counter + 1`) in its own core's slot, then takes `seq` with
//!   `fetch_add` (so `seq >= slot`), writes its batch, and clears the slot.
//! * A reader loads the counter `c`, then every slot; the watermark is `c`,
//!   lowered to `slot - 1` for every occupied slot.
//!
//! Why no event is missed: let `k <= v` be a sequence a reader considers
//! visible. The reader's counter load saw `c >= k`, so it came after the
//! `fetch_add` that produced `k`, and therefore after the writer stored its
//! slot bound `L <= k`. When the reader then loads that slot it finds either
//! `L` (and lowers `v` below `k`: contradiction) or a cleared or later value,
//! which the writer stores only after its batch for `k` committed.
//!
//! Each core commits one change at a time (the write is synchronous on the
//! core's only thread), so one slot per core is enough. Cost on the write
//! path: one `fetch_add` on a shared cache line and two stores to the
//! core's own line; no lock.

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
/// write, whether or not it succeeded).
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
    /// bound, then takes the next sequence. The caller must call
    /// [`Sequencer::release`] once the write carrying it has returned
    /// (whether or not it succeeded); [`Ticket`] does that on drop.
    pub fn take(&self, core: usize) -> u64 {
        let slot = &self.slots[core].0;
        debug_assert_eq!(slot.load(SeqCst), 0, "one change per core at a time");
        slot.store(self.last.0.load(SeqCst) + 1, SeqCst);
        self.last.0.fetch_add(1, SeqCst) + 1
    }

    /// The protocol's second half: clears core `core`'s slot.
    pub fn release(&self, core: usize) {
        self.slots[core].0.store(0, SeqCst);
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
}
