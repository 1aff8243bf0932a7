//! Reply slots: where a waiting call's answer lands, and when it stops
//! waiting.
//!
//! Why: a call used to cost a one-shot channel and a hash-map entry for its
//! answer, and a timer for its deadline. Here a call takes a slot in one
//! per-core slab (reused by later calls once freed, so no allocation on the
//! steady path), parks its task's waker there, and keeps its deadline
//! there; one sweep per core ([`Slots::expire`], run by the mesh's sweep
//! task at the earliest deadline) fails the calls whose time ran out,
//! instead of a timer per call.
//!
//! Invariants:
//! * A reply lands only in the slot of the call it answers. A slot is
//!   reused by later calls, so a [`Ticket`] is the slot's index *and* the
//!   call's id, which is never reused (a 64-bit counter); a reply whose id
//!   is not the slot's present occupant's (its caller timed out or went
//!   away, and the slot was taken again) is handed back to be recycled,
//!   never delivered ([`Slots::answer`]).
//! * A slot is freed exactly once: when its caller collects the outcome
//!   ([`Slots::poll`]) or drops the call ([`Slots::cancel`]). An expired or
//!   failed slot stays until then, so its index cannot be taken while its
//!   caller may still look at it.
//! * Every waiting call ends: answered, expired by the sweep at its
//!   deadline, or failed when its peer is gone ([`Slots::peer_gone`]).

use super::envelope::Boxed;
use slab::Slab;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Which slot, and which call in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    slot: usize,
    id: u64,
}

/// How a call ended.
pub(super) enum Outcome<C> {
    Answered(Boxed<C>),
    /// Its deadline passed without an answer.
    TimedOut,
    /// The peer stopped serving (shutdown).
    PeerGone,
}

enum State<C> {
    Waiting(Option<Waker>),
    Done(Outcome<C>),
}

struct Slot<C> {
    id: u64,
    peer: usize,
    deadline: Instant,
    state: State<C>,
}

/// One core's calls in flight.
pub(super) struct Slots<C> {
    slab: Slab<Slot<C>>,
    next_id: u64,
}

impl<C> Default for Slots<C> {
    fn default() -> Self {
        Slots {
            slab: Slab::new(),
            next_id: 1,
        }
    }
}

impl<C> Slots<C> {
    /// A slot for a call to `peer` that waits until `deadline`.
    pub(super) fn open(&mut self, peer: usize, deadline: Instant) -> Ticket {
        let id = self.next_id;
        self.next_id += 1;
        let slot = self.slab.insert(Slot {
            id,
            peer,
            deadline,
            state: State::Waiting(None),
        });
        Ticket { slot, id }
    }

    fn mine(&mut self, t: Ticket) -> Option<&mut Slot<C>> {
        self.slab.get_mut(t.slot).filter(|s| s.id == t.id)
    }

    /// The call's outcome once it has one (then the slot is free), or
    /// `Pending` with the task's waker kept.
    pub(super) fn poll(&mut self, t: Ticket, cx: &mut Context<'_>) -> Poll<Outcome<C>> {
        let Some(slot) = self.mine(t) else {
            // Only the caller frees its slot, once: unreachable, and not a
            // reason to wait forever.
            return Poll::Ready(Outcome::PeerGone);
        };
        match &mut slot.state {
            State::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Done(_) => match self.slab.remove(t.slot).state {
                State::Done(outcome) => Poll::Ready(outcome),
                State::Waiting(_) => Poll::Pending,
            },
        }
    }

    /// Delivers a reply to the call it answers and wakes it. Returns the
    /// envelope when nobody waits for it any more (to be recycled).
    pub(super) fn answer(&mut self, t: Ticket, envelope: Boxed<C>) -> Option<Boxed<C>> {
        match self.mine(t) {
            Some(slot) if matches!(slot.state, State::Waiting(_)) => {
                finish(slot, Outcome::Answered(envelope));
                None
            }
            _ => Some(envelope),
        }
    }

    /// The caller dropped its call: frees the slot. Returns an answer that
    /// had arrived and was not collected (to be recycled).
    pub(super) fn cancel(&mut self, t: Ticket) -> Option<Boxed<C>> {
        self.mine(t)?;
        match self.slab.remove(t.slot).state {
            State::Done(Outcome::Answered(envelope)) => Some(envelope),
            _ => None,
        }
    }

    /// Times out every waiting call whose deadline is not after `now`, and
    /// returns the earliest deadline among those still waiting.
    pub(super) fn expire(&mut self, now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for (_, slot) in self.slab.iter_mut() {
            if !matches!(slot.state, State::Waiting(_)) {
                continue;
            }
            if slot.deadline <= now {
                finish(slot, Outcome::TimedOut);
            } else if earliest.is_none_or(|e| slot.deadline < e) {
                earliest = Some(slot.deadline);
            }
        }
        earliest
    }

    /// Fails every call waiting on `peer` (its replies will not come).
    pub(super) fn peer_gone(&mut self, peer: usize) {
        for (_, slot) in self.slab.iter_mut() {
            if slot.peer == peer && matches!(slot.state, State::Waiting(_)) {
                finish(slot, Outcome::PeerGone);
            }
        }
    }

    /// Slots taken (waiting, or finished and not yet collected).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }
}

/// Ends a waiting call with `outcome` and wakes its task (a glommio wake
/// only queues the task: nothing runs re-entrantly).
fn finish<C>(slot: &mut Slot<C>, outcome: Outcome<C>) {
    if let State::Waiting(Some(waker)) = std::mem::replace(&mut slot.state, State::Done(outcome)) {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::super::envelope::{Envelope, Opened};
    use super::*;
    use crate::error::ApiError;
    use std::any::Any;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    /// An envelope that is only a marker.
    struct Marker(u32);

    impl Envelope<()> for Marker {
        fn spawn(&self) -> bool {
            false
        }
        fn serve(self: Box<Self>, _: &Rc<()>) -> Opened<()> {
            Opened::Now(self)
        }
        fn fail(&mut self, _: ApiError) {}
        fn clear(&mut self) {}
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    fn marker(n: u32) -> Boxed<()> {
        Box::new(Marker(n))
    }

    fn value(outcome: Outcome<()>) -> Option<u32> {
        match outcome {
            Outcome::Answered(e) => e.into_any().downcast::<Marker>().ok().map(|m| m.0),
            _ => None,
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(slots: &mut Slots<()>, t: Ticket, wakes: &Arc<Wakes>) -> Poll<Outcome<()>> {
        let waker = Waker::from(wakes.clone());
        slots.poll(t, &mut Context::from_waker(&waker))
    }

    #[test]
    fn a_reply_wakes_its_caller_and_the_slot_is_reused() {
        let (mut slots, wakes) = (Slots::default(), Arc::new(Wakes::default()));
        let later = Instant::now() + Duration::from_secs(5);
        let t = slots.open(1, later);
        assert!(poll(&mut slots, t, &wakes).is_pending());
        assert!(slots.answer(t, marker(7)).is_none());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        let Poll::Ready(outcome) = poll(&mut slots, t, &wakes) else {
            panic!("answered call still pending")
        };
        assert_eq!(value(outcome), Some(7));
        assert_eq!(slots.len(), 0);
        // The next call takes the same slot, as a different call.
        let u = slots.open(1, later);
        assert_eq!(u.slot, t.slot);
        assert_ne!(u.id, t.id);
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn a_late_reply_never_lands_in_the_next_occupant() {
        let (mut slots, wakes) = (Slots::default(), Arc::new(Wakes::default()));
        let now = Instant::now();
        let late = slots.open(1, now);
        assert!(poll(&mut slots, late, &wakes).is_pending());
        // The sweep finds its deadline passed: it times out, is woken.
        assert_eq!(slots.expire(now), None);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(matches!(
            poll(&mut slots, late, &wakes),
            Poll::Ready(Outcome::TimedOut)
        ));
        // Its slot is reused by the next call...
        let next = slots.open(1, now + Duration::from_secs(5));
        assert_eq!(next.slot, late.slot);
        assert!(poll(&mut slots, next, &wakes).is_pending());
        // ... and the timed-out call's reply, arriving now, is refused.
        let stale = slots.answer(late, marker(1));
        assert_eq!(
            stale.map(|e| e.into_any().downcast::<Marker>().is_ok()),
            Some(true)
        );
        assert!(poll(&mut slots, next, &wakes).is_pending());
        assert!(slots.answer(next, marker(2)).is_none());
        let Poll::Ready(outcome) = poll(&mut slots, next, &wakes) else {
            panic!("answered call still pending")
        };
        assert_eq!(value(outcome), Some(2));
    }

    #[test]
    fn a_dropped_call_frees_its_slot_and_its_reply_is_refused() {
        let mut slots = Slots::<()>::default();
        let t = slots.open(1, Instant::now() + Duration::from_secs(5));
        assert!(slots.cancel(t).is_none());
        assert_eq!(slots.len(), 0);
        assert!(slots.answer(t, marker(1)).is_some());
        // Dropped after its answer came: the answer is handed back.
        let u = slots.open(1, Instant::now() + Duration::from_secs(5));
        assert!(slots.answer(u, marker(3)).is_none());
        assert!(slots.cancel(u).is_some());
        assert!(slots.cancel(u).is_none());
    }

    #[test]
    fn the_sweep_expires_only_what_is_due_and_reports_the_next_deadline() {
        let (mut slots, wakes) = (Slots::default(), Arc::new(Wakes::default()));
        let now = Instant::now();
        let (soon, later) = (
            now + Duration::from_millis(10),
            now + Duration::from_secs(5),
        );
        let a = slots.open(1, later);
        let b = slots.open(1, soon);
        let answered = slots.open(1, now);
        assert!(slots.answer(answered, marker(9)).is_none());
        assert_eq!(slots.expire(now), Some(soon));
        assert_eq!(slots.expire(soon), Some(later));
        assert!(poll(&mut slots, a, &wakes).is_pending());
        assert!(matches!(
            poll(&mut slots, b, &wakes),
            Poll::Ready(Outcome::TimedOut)
        ));
        // An answer that arrived before the deadline stays an answer.
        let Poll::Ready(outcome) = poll(&mut slots, answered, &wakes) else {
            panic!("answered call still pending")
        };
        assert_eq!(value(outcome), Some(9));
    }

    #[test]
    fn a_gone_peer_fails_only_its_own_calls() {
        let (mut slots, wakes) = (Slots::default(), Arc::new(Wakes::default()));
        let later = Instant::now() + Duration::from_secs(5);
        let (to1, to2) = (slots.open(1, later), slots.open(2, later));
        slots.peer_gone(1);
        assert!(matches!(
            poll(&mut slots, to1, &wakes),
            Poll::Ready(Outcome::PeerGone)
        ));
        assert!(poll(&mut slots, to2, &wakes).is_pending());
    }
}
