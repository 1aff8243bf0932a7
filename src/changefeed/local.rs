//! `LocalFeed`: one core's view of the change feed.
//!
//! Readers (long polls and SSE streams) wait on the core that accepted their
//! connection. Each core with readers runs one watch task that, every
//! millisecond (or at once after a local commit), compares the feed's
//! visible watermark with what it has, reads the new events from RocksDB
//! *once* into a ring of recent events, and wakes its readers. Readers then
//! take events from the ring without copying (they are `Rc`s), so a hundred
//! subscribers on a core cost one storage read per event, not a hundred.
//!
//! A reader behind the ring's start (resuming from an old sequence, or
//! slower than the ring's turnover) reads from storage on the blocking pool
//! instead, in bounded batches, and catches up to the ring. Nothing waits on
//! a slow reader: the ring never holds events back for anyone.
//!
//! Invariant: the ring holds every stored event with sequence in
//! `(after, upto]`, in order, and `upto` never exceeds the visible
//! watermark.

use super::record::{Event, Filter};
use super::ReadLimits;
use crate::node::Node;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;
use themis_io::ShutdownSignal;

/// How often a core with readers looks for events committed elsewhere.
pub const TICK: Duration = Duration::from_millis(1);
/// Ring bounds (events and bytes).
const RING_EVENTS: usize = 8192;
const RING_BYTES: usize = 16 << 20;
/// Most events read into the ring in one step (keeps each inline read
/// short; a longer backlog takes several steps).
const FILL_EVENTS: usize = 512;
const FILL_BYTES: usize = 512 << 10;

/// Wakes every task waiting for a change of generation. Single core.
///
/// Each waiting future holds one slot; dropping a future that is still
/// waiting (a heartbeat won the race, the client left) frees its slot, so
/// the list never holds more wakers than there are waiters, and a
/// notification costs O(waiters).
#[derive(Default)]
pub struct LocalNotify {
    generation: Cell<u64>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl LocalNotify {
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        self.free.borrow_mut().clear();
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        for w in slots.into_iter().flatten() {
            w.wake();
        }
    }

    /// Resolves once the generation differs from `since`.
    pub fn changed(&self, since: u64) -> Changed<'_> {
        Changed {
            notify: self,
            since,
            slot: None,
        }
    }

    /// Wakers currently registered (tests).
    #[cfg(test)]
    fn registered(&self) -> usize {
        self.slots.borrow().iter().flatten().count()
    }
}

/// The future of [`LocalNotify::changed`].
pub struct Changed<'a> {
    notify: &'a LocalNotify,
    since: u64,
    slot: Option<usize>,
}

impl Future for Changed<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let n = self.notify;
        if n.generation.get() != self.since {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut slots = n.slots.borrow_mut();
        match self.slot {
            // A task's waker does not change on a single-threaded executor,
            // but keep the slot current anyway.
            Some(i) => slots[i] = Some(cx.waker().clone()),
            None => {
                let i = match n.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        slots.push(Some(cx.waker().clone()));
                        slots.len() - 1
                    }
                };
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        // Still waiting in the same generation: give the slot back.
        if let Some(i) = self.slot {
            if self.notify.generation.get() == self.since {
                if let Some(s) = self.notify.slots.borrow_mut().get_mut(i) {
                    *s = None;
                }
                self.notify.free.borrow_mut().push(i);
            }
        }
    }
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Rc<Event>>,
    after: u64,
    upto: u64,
    bytes: usize,
}

/// Events for a reader, and how far it may advance its cursor.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Rc<Event>>,
    /// Every sequence `<= scanned_to` was examined (matching or not).
    pub scanned_to: u64,
    /// The read stopped at a limit: more events are ready now.
    pub more: bool,
}

/// One core's change-feed state.
#[derive(Default)]
pub struct LocalFeed {
    ring: RefCell<Ring>,
    /// Fired when the ring advanced, the feature flag went off, or the
    /// server is stopping.
    notify: LocalNotify,
    /// Wakes the watch task (a reader arrived, or a local commit).
    watch: LocalNotify,
    readers: Cell<usize>,
    active: Cell<bool>,
    stopping: Cell<bool>,
}

/// Counts a waiting reader while alive.
pub struct ReaderGuard<'a>(&'a LocalFeed);

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        self.0.readers.set(self.0.readers.get() - 1);
    }
}

impl LocalFeed {
    /// Registers a reader: the watch task runs while there is one.
    pub fn reader(&self) -> ReaderGuard<'_> {
        self.readers.set(self.readers.get() + 1);
        if self.readers.get() == 1 {
            self.watch.notify_all();
        }
        ReaderGuard(self)
    }

    pub fn readers(&self) -> usize {
        self.readers.get()
    }

    pub fn generation(&self) -> u64 {
        self.notify.generation()
    }

    /// Resolves once the ring advanced (or the feed must be re-checked)
    /// after generation `since`.
    pub fn changed(&self, since: u64) -> Changed<'_> {
        self.notify.changed(since)
    }

    /// Whether the server is stopping (readers should finish).
    pub fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// A commit happened on this core: look for it now, not at the next tick.
    pub fn poke(&self) {
        if self.readers.get() > 0 {
            self.watch.notify_all();
        }
    }

    /// Matching events after `after` from the ring, when the ring covers
    /// that point.
    fn read_ring(&self, after: u64, filter: &Filter, limits: ReadLimits) -> Option<Batch> {
        if !self.active.get() {
            return None;
        }
        let ring = self.ring.borrow();
        if after < ring.after {
            return None;
        }
        let mut batch = Batch {
            events: Vec::new(),
            scanned_to: after.max(ring.upto),
            more: false,
        };
        if after >= ring.upto {
            return Some(batch);
        }
        let start = ring.events.partition_point(|e| e.seq <= after);
        let mut bytes = 0;
        for e in ring.events.range(start..) {
            if batch.events.len() >= limits.max_events || bytes >= limits.max_bytes {
                batch.scanned_to = e.seq - 1;
                batch.more = true;
                break;
            }
            if filter.matches(e) {
                bytes += e.json().len();
                batch.events.push(e.clone());
            }
        }
        Some(batch)
    }

    /// Matching events after `after` (exclusive): from the ring when it
    /// covers them, otherwise from storage on the blocking pool.
    pub async fn read(
        &self,
        core: &crate::node::Core,
        after: u64,
        filter: &Filter,
        limits: ReadLimits,
    ) -> Result<Batch, crate::error::ApiError> {
        let shared = core.node();
        let feed = &shared.changefeed;
        let after = feed.start_after(after)?;
        if let Some(b) = self.read_ring(after, filter, limits) {
            return Ok(b);
        }
        // Read up to where the ring starts (it has the rest), or up to the
        // watermark when there is no ring.
        let floor = self.active.get().then(|| self.ring.borrow().after);
        let upto = match floor {
            Some(f) if f > after => f,
            _ => feed.latest(),
        };
        if upto <= after {
            return Ok(Batch {
                events: Vec::new(),
                scanned_to: after,
                more: false,
            });
        }
        let (shared, filter) = (shared.clone(), filter.clone());
        let stored = core
            .blocking(crate::node::blocking::Work::Feed, move || {
                shared
                    .changefeed
                    .read_stored(&shared.storage, after, upto, &filter, limits)
            })
            .await??;
        Ok(Batch {
            events: stored.events.into_iter().map(Rc::new).collect(),
            scanned_to: stored.scanned_to,
            // The ring (or the watermark) may be further on.
            more: stored.more || stored.scanned_to < feed.latest(),
        })
    }

    /// Reads new visible events into the ring (bounded); returns whether
    /// the ring advanced and whether more is waiting.
    fn fill(&self, shared: &Node) -> (bool, bool) {
        let visible = shared.changefeed.latest();
        let mut ring = self.ring.borrow_mut();
        if visible <= ring.upto {
            return (false, false);
        }
        let from = ring.upto;
        let (mut n, mut bytes, mut last, mut complete) = (0usize, 0usize, from, true);
        let r = super::store::scan(&shared.storage, from, visible, |seq, rec| {
            if n >= FILL_EVENTS || bytes >= FILL_BYTES {
                complete = false;
                return false;
            }
            if let Some(e) = Event::from_record(seq, rec) {
                bytes += e.footprint();
                ring.bytes += e.footprint();
                ring.events.push_back(Rc::new(e));
            }
            n += 1;
            last = seq;
            true
        });
        if let Err(e) = r {
            tracing::warn!("change feed: reading new events failed: {e}");
            return (false, false);
        }
        ring.upto = if complete { visible } else { last };
        while ring.events.len() > RING_EVENTS || ring.bytes > RING_BYTES {
            match ring.events.pop_front() {
                Some(e) => {
                    ring.bytes -= e.footprint();
                    ring.after = e.seq;
                }
                None => break,
            }
        }
        (true, !complete)
    }

    /// The watch task of one core: runs until shutdown.
    pub async fn watch(self: Rc<Self>, shared: Arc<Node>, shutdown: ShutdownSignal) {
        let runtime = crate::runtime::LocalRuntime::new(&shared.runtime);
        let mut cdc_on = runtime.get(&shared.runtime).features.cdc;
        loop {
            if shutdown.is_fired() {
                self.stopping.set(true);
                self.notify.notify_all();
                return;
            }
            if self.readers.get() == 0 {
                self.active.set(false);
                let gen = self.watch.generation();
                futures_lite::future::or(self.watch.changed(gen), shutdown.wait()).await;
                continue;
            }
            if !self.active.get() {
                // (Re)start the ring at the watermark: readers behind it
                // read from storage.
                let v = shared.changefeed.latest();
                let mut ring = self.ring.borrow_mut();
                *ring = Ring {
                    after: v,
                    upto: v,
                    ..Ring::default()
                };
                self.active.set(true);
                drop(ring);
                // Readers that read storage before the ring existed may
                // have stopped short of `v`: let them look again.
                self.notify.notify_all();
            }
            let (advanced, more) = self.fill(&shared);
            let now_on = runtime.get(&shared.runtime).features.cdc;
            if advanced || now_on != cdc_on {
                cdc_on = now_on;
                self.notify.notify_all();
            }
            if more {
                glommio::executor().yield_now().await;
                continue;
            }
            let gen = self.watch.generation();
            futures_lite::future::or(
                futures_lite::future::or(self.watch.changed(gen), glommio::timer::sleep(TICK)),
                shutdown.wait(),
            )
            .await;
        }
    }

    #[cfg(test)]
    fn ring_len(&self) -> usize {
        self.ring.borrow().events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changefeed::record::{encode, ChangeKind};

    fn ev(seq: u64, key: &str) -> Rc<Event> {
        let mut out = Vec::new();
        encode(&mut out, seq, ChangeKind::Put, key, Some(b"{}"), 0);
        Rc::new(Event::from_record(seq, &out).unwrap())
    }

    fn feed_with(after: u64, upto: u64, seqs: &[u64]) -> LocalFeed {
        let f = LocalFeed::default();
        {
            let mut r = f.ring.borrow_mut();
            r.after = after;
            r.upto = upto;
            for s in seqs {
                r.events
                    .push_back(ev(*s, if s % 2 == 0 { "even:x" } else { "odd:x" }));
            }
        }
        f.active.set(true);
        f
    }

    const ALL: ReadLimits = ReadLimits {
        max_events: 100,
        max_bytes: 1 << 20,
        max_scan: 1000,
    };

    #[test]
    fn ring_serves_what_it_covers() {
        // Sequence 13 is a hole (a failed write).
        let f = feed_with(10, 15, &[11, 12, 14, 15]);
        assert_eq!(f.ring_len(), 4);
        assert!(f.read_ring(9, &Filter::default(), ALL).is_none());
        let b = f.read_ring(10, &Filter::default(), ALL).unwrap();
        let seqs: Vec<u64> = b.events.iter().map(|e| e.seq).collect();
        assert_eq!((seqs, b.scanned_to), (vec![11, 12, 14, 15], 15));
        let b = f.read_ring(12, &Filter::default(), ALL).unwrap();
        assert_eq!(b.events.len(), 2);
        let b = f.read_ring(15, &Filter::default(), ALL).unwrap();
        assert_eq!((b.events.len(), b.scanned_to), (0, 15));
    }

    #[test]
    fn ring_limits_and_filters() {
        let f = feed_with(10, 15, &[11, 12, 14, 15]);
        let two = ReadLimits {
            max_events: 2,
            ..ALL
        };
        let b = f.read_ring(10, &Filter::default(), two).unwrap();
        assert_eq!((b.events.len(), b.scanned_to), (2, 13));
        let even = Filter {
            table: Some("even".into()),
            ..Filter::default()
        };
        let b = f.read_ring(10, &even, ALL).unwrap();
        let seqs: Vec<u64> = b.events.iter().map(|e| e.seq).collect();
        assert_eq!((seqs, b.scanned_to), (vec![12, 14], 15));
    }

    #[test]
    fn abandoned_waiters_give_their_slot_back() {
        let n = LocalNotify::default();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for _ in 0..1000 {
            let mut fut = std::pin::pin!(n.changed(n.generation()));
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(n.registered(), 0);
        assert!(n.slots.borrow().len() <= 1);
    }

    #[test]
    fn notify_wakes_on_generation_change() {
        let n = LocalNotify::default();
        let g = n.generation();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut fut = std::pin::pin!(n.changed(g));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        n.notify_all();
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    }
}
