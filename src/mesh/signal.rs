//! A flag that wakes one parked task of the same core.
//!
//! Why: the mesh's helper tasks (the two senders and the deadline sweep)
//! sleep until there is work, and whoever makes work raises their signal.
//! A channel would do, but allocates per message; this is a flag and the
//! one waker of the task that waits, so raising it costs no allocation
//! (cloning a glommio task's waker only counts a reference). Single-core:
//! `Cell`s, no atomics, no lock.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Raised by any task of the core, awaited by one.
#[derive(Default)]
pub(super) struct Signal {
    raised: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl Signal {
    /// Marks work to do and wakes the waiting task, if one waits. Waking a
    /// glommio task only queues it, so this never runs it re-entrantly.
    pub(super) fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    /// Waits until the signal was raised since the last wait returned, and
    /// lowers it. Returns at once if it is up already.
    pub(super) async fn wait(&self) {
        poll_fn(|cx| {
            if self.raised.replace(false) {
                return Poll::Ready(());
            }
            let same = self
                .waiter
                .take()
                .filter(|w| w.will_wake(cx.waker()))
                .unwrap_or_else(|| cx.waker().clone());
            self.waiter.set(Some(same));
            Poll::Pending
        })
        .await
    }
}
