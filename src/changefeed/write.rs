//! The change feed's per-core part and its write hook.
//!
//! The write pipeline (`entity::write`) calls [`on_write`] last, after
//! every other feature appended to the batch: it takes the next sequence
//! (marking this core's sequencer slot unless the core holds one already)
//! and appends the event, noting the sequence in the write's [`Held`].
//! Writes join a group (`entity::group`) whose `Held` is the union of its
//! writes'. Once the group committed or failed, [`after_commit`] moves the
//! slot to the first sequence of the core's next group still holding one
//! (the sequencer's protocol: the slot stays below every sequence the core
//! has taken and not yet committed) and counts gaps if the commit failed.

use super::local::LocalFeed;
use super::record::{self, ChangeKind};
use super::store::seq_key;
use crate::entity::write::Change;
use crate::error::ApiError;
use crate::node::blocking::Work;
use crate::node::Core;
use crate::obs::counters::bump;
use crate::storage::Family;
use std::cell::RefCell;
use std::rc::Rc;

/// One core's change-feed state.
#[derive(Default)]
pub struct Local {
    /// Recent events and the readers waiting on this core.
    feed: Rc<LocalFeed>,
    /// Scratch for the record being written.
    record: RefCell<Vec<u8>>,
}

/// The sequences a write (or a group of writes) took.
#[derive(Default, Debug)]
pub struct Held {
    /// The first sequence taken (0: none).
    first: u64,
    /// Events appended to the batch.
    events: u64,
}

impl Held {
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Adds a later write's sequences.
    pub fn absorb(&mut self, later: Held) {
        if self.first == 0 {
            self.first = later.first;
        }
        self.events += later.events;
    }
}

impl Local {
    /// This core's readers and ring.
    pub fn feed(&self) -> &Rc<LocalFeed> {
        &self.feed
    }
}

/// Appends the change's event (when `features.cdc` is on). Runs last: it
/// takes the sequence.
pub fn on_write(core: &Core, change: &mut Change<'_, '_>) -> Result<(), ApiError> {
    if !core.settings().features.cdc {
        return Ok(());
    }
    let part = core.changefeed();
    let feed = &core.node().changefeed;
    let kind = if change.new.is_some() {
        ChangeKind::Put
    } else {
        ChangeKind::Delete
    };
    let seq = feed.sequencer.take(core.id());
    let held = &mut change.after.changefeed;
    if held.first == 0 {
        held.first = seq;
    }
    let appended = (|| -> Result<(), ApiError> {
        let reserved = feed.reserved();
        if seq > reserved {
            // The background refill fell behind: reserve now (a synced
            // write on the reactor, rare: half a block of writes ran
            // meanwhile).
            feed.reserve_through(&core.node().storage, seq)?;
        } else if seq.saturating_add(super::RESERVE_BLOCK / 2) > reserved && feed.start_refill() {
            refill(core, seq);
        }
        let mut rec = part.record.borrow_mut();
        record::encode(&mut rec, seq, kind, change.key, change.new, feed.now_ms());
        change.batch.put(Family::Changefeed, &seq_key(seq), &rec)?;
        Ok(())
    })();
    match appended {
        Ok(()) => change.after.changefeed.events += 1,
        // The sequence carries no event: a gap.
        Err(_) => feed.count_gaps(1),
    }
    appended
}

/// Grows the reserved mark in the background (one synced write).
fn refill(core: &Core, seq: u64) {
    let Some(core) = core.rc() else {
        core.node().changefeed.end_refill();
        return;
    };
    glommio::spawn_local(async move {
        let node = core.node().clone();
        let result = core
            .blocking_background(Work::Feed, move || {
                node.changefeed.reserve_through(&node.storage, seq)
            })
            .await;
        core.node().changefeed.end_refill();
        let failed = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        match failed {
            None => core.node().failures.clear("changefeed_reserve", None),
            Some(m) => core.report_failure("changefeed_reserve", None, m),
        }
    })
    .detach();
}

/// After a write's batch, or its group, committed or failed: moves this
/// core's sequencer slot to `next` (the first sequence of the core's next
/// group still holding one, 0: none), counts the events or the gaps, wakes
/// this core's readers.
pub fn after_commit(core: &Core, committed: bool, held: Held, next: u64) {
    if held.first == 0 {
        return;
    }
    let feed = &core.node().changefeed;
    feed.sequencer.release(core.id(), next);
    if committed {
        bump(&core.counters().feed_events, held.events);
        core.changefeed().feed.poke();
    } else {
        feed.count_gaps(held.events);
    }
}

/// A staged write whose hooks failed after it took a sequence (already
/// counted as a gap): it joins no group. When no group of the core holds a
/// sequence, nothing else would ever clear the slot it marked, so it is
/// cleared now.
pub fn abandon(core: &Core, held: Held, holds_others: bool) {
    if held.first != 0 && !holds_others {
        core.node().changefeed.sequencer.release(core.id(), 0);
    }
}
