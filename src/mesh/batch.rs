//! Batches: what one core sends another in one channel message, and the
//! per-peer outboxes they are gathered in.
//!
//! Why: one channel message per call and one per reply meant, per hop, two
//! pushes onto a cross-thread queue and up to two wake-ups of a sleeping
//! executor. Calls made to one peer while a core runs are gathered in its
//! outbox, and the mesh's sender task sends each non-empty outbox as one
//! [`CallBatch`] when it next runs, i.e. once per reactor tick (it is woken
//! by the first call of the tick and runs after the tasks already queued,
//! which may add more); replies likewise, as one [`ReplyBatch`].
//!
//! The vectors travel too, and come back: a batch's emptied vector of calls
//! rides back to its sender with the next replies, and an emptied vector of
//! replies rides back with the next calls, so once each side holds a few
//! vectors no batch allocates ([`Outbox::spare`], [`Outbox::give_back`]).
//!
//! Invariants:
//! * Order: an outbox is one FIFO vector per peer, sent whole and in order
//!   on that peer's channel, and the peer serves a batch front to back; so
//!   calls from one core to another reach the callee in the order they
//!   were made, and each peer's serving task serves them in that order.
//! * Bounded: an outbox is not bounded by a number, but by its callers:
//!   each call in it has a caller waiting for its answer (a connection's
//!   request, or a task), so it holds at most one call per waiting request
//!   or task of the core (connections are bounded by
//!   `server.max_connections`). A channel full of batches only delays the
//!   next send; the calls wait in the outbox meanwhile.

use super::envelope::Boxed;
use super::slots::Ticket;
use std::time::Instant;

/// A call on its way: the caller's slot, its deadline, the call.
pub(super) struct Call<C> {
    pub(super) ticket: Ticket,
    /// When the caller stops waiting (`Instant` is one clock for all
    /// threads): the callee refuses the call after it.
    pub(super) deadline: Instant,
    pub(super) envelope: Boxed<C>,
}

/// An answer on its way back, in the call's own envelope.
pub(super) struct Answer<C> {
    pub(super) ticket: Ticket,
    pub(super) envelope: Boxed<C>,
}

/// The calls one core sends another in one message.
pub struct CallBatch<C> {
    pub(super) calls: Vec<Call<C>>,
    /// An emptied vector of the callee's replies, returned for reuse.
    pub(super) spare: Vec<Answer<C>>,
}

/// The replies one core sends another in one message.
pub struct ReplyBatch<C> {
    pub(super) answers: Vec<Answer<C>>,
    /// An emptied vector of the caller's calls, returned for reuse.
    pub(super) spare: Vec<Call<C>>,
}

/// Emptied vectors kept for reuse, at most; more are freed.
const MAX_SPARE: usize = 16;
/// A vector grown past this many items is freed, not kept (a burst does
/// not pin its memory).
const MAX_KEPT_CAPACITY: usize = 4096;

/// Items gathered per peer during the current tick, and emptied vectors.
pub(super) struct Outbox<T> {
    per_peer: Vec<Vec<T>>,
    spare: Vec<Vec<T>>,
}

impl<T> Outbox<T> {
    pub(super) fn new(peers: usize) -> Self {
        Outbox {
            per_peer: (0..peers).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
        }
    }

    /// Appends `item` for `peer`; true when it is the first of this batch
    /// (the sender must then be woken).
    pub(super) fn push(&mut self, peer: usize, item: T) -> bool {
        let batch = &mut self.per_peer[peer];
        batch.push(item);
        batch.len() == 1
    }

    /// The batch gathered for `peer`, if any; an emptied vector takes its
    /// place.
    pub(super) fn take(&mut self, peer: usize) -> Option<Vec<T>> {
        if self.per_peer[peer].is_empty() {
            return None;
        }
        let next = self.spare.pop().unwrap_or_default();
        Some(std::mem::replace(&mut self.per_peer[peer], next))
    }

    /// Whether nothing waits to be sent.
    pub(super) fn is_empty(&self) -> bool {
        self.per_peer.iter().all(Vec::is_empty)
    }

    /// An emptied vector to return to the peer that made it (empty and
    /// unallocated when none is spare).
    pub(super) fn spare(&mut self) -> Vec<T> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps an emptied vector for reuse.
    pub(super) fn give_back(&mut self, mut v: Vec<T>) {
        v.clear();
        if v.capacity() > 0 && v.capacity() <= MAX_KEPT_CAPACITY && self.spare.len() < MAX_SPARE {
            self.spare.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_sent_whole_in_push_order_and_per_peer() {
        let mut out = Outbox::new(3);
        assert!(out.push(1, 10));
        assert!(!out.push(1, 11));
        assert!(out.push(2, 20));
        assert!(!out.push(1, 12));
        assert_eq!(out.take(0), None);
        assert_eq!(out.take(1), Some(vec![10, 11, 12]));
        assert_eq!(out.take(1), None);
        // A push after the take opens the next batch.
        assert!(out.push(1, 13));
        assert_eq!(out.take(2), Some(vec![20]));
        assert!(!out.is_empty());
        assert_eq!(out.take(1), Some(vec![13]));
        assert!(out.is_empty());
    }

    #[test]
    fn emptied_vectors_are_reused() {
        let mut out = Outbox::new(2);
        out.push(1, 1u32);
        let sent = out.take(1).unwrap_or_default();
        let address = sent.as_ptr();
        out.give_back(sent);
        // The next take puts the returned vector in the outbox, so the
        // batch after it is gathered in it.
        out.push(1, 2);
        let second = out.take(1).unwrap_or_default();
        assert_ne!(second.as_ptr(), address);
        out.push(1, 3);
        let third = out.take(1).unwrap_or_default();
        assert_eq!(third.as_ptr(), address);
        // Unallocated vectors are not kept.
        out.give_back(Vec::new());
        assert_eq!(out.spare().capacity(), 0);
    }
}
