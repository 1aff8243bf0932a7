//! The change feed's per-core part and its write hook.
//!
//! The write pipeline (`entity::write`) calls [`on_write`] last, after
//! every other feature appended to the batch: it takes the next sequence
//! (marking this core's sequencer slot) and appends the event. Whatever
//! happens next, the pipeline calls [`after_commit`], which clears the slot
//! (the sequencer's protocol: a slot is held exactly while the batch that
//! carries its sequence is being written) and counts a gap if the commit
//! failed.

use super::local::LocalFeed;
use super::record::{self, ChangeKind};
use super::store::seq_key;
use crate::entity::write::Change;
use crate::error::ApiError;
use crate::node::Core;
use crate::obs::counters::bump;
use crate::storage::Family;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// One core's change-feed state.
#[derive(Default)]
pub struct Local {
    /// Recent events and the readers waiting on this core.
    feed: Rc<LocalFeed>,
    /// Scratch for the record being written.
    record: RefCell<Vec<u8>>,
    /// This core holds its sequencer slot (between `on_write` and
    /// `after_commit`).
    holding: Cell<bool>,
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
    part.holding.set(true);
    let mut rec = part.record.borrow_mut();
    record::encode(&mut rec, seq, kind, change.key, change.new, feed.now_ms());
    change.batch.put(Family::Changefeed, &seq_key(seq), &rec)?;
    Ok(())
}

/// Releases the sequence slot taken by [`on_write`], if any; wakes this
/// core's readers after a commit.
pub fn after_commit(core: &Core, committed: bool) {
    let part = core.changefeed();
    if !part.holding.replace(false) {
        return;
    }
    let feed = &core.node().changefeed;
    feed.sequencer.release(core.id());
    if committed {
        bump(&core.counters().feed_events, 1);
        part.feed.poke();
    } else {
        feed.count_gap();
    }
}
