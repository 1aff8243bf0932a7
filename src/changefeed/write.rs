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
use crate::node::blocking::Work;
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
    let reserved = feed.reserved();
    if seq > reserved {
        // The background refill fell behind: reserve now (a synced write
        // on the reactor, rare: half a block of writes ran meanwhile).
        feed.reserve_through(&core.node().storage, seq)?;
    } else if seq.saturating_add(super::RESERVE_BLOCK / 2) > reserved && feed.start_refill() {
        refill(core, seq);
    }
    let mut rec = part.record.borrow_mut();
    record::encode(&mut rec, seq, kind, change.key, change.new, feed.now_ms());
    change.batch.put(Family::Changefeed, &seq_key(seq), &rec)?;
    Ok(())
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
