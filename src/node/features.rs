//! The one list of features, in order: what each core starts, and the
//! order in which features take part in an entity write.
//!
//! Adding a feature means adding its part to [`super::Core`] / [`super::Node`],
//! its routes to `http::routes`, and — if it derives data from entities —
//! one line in each function below. Nothing else in the write path changes.

use super::Core;
use crate::entity::write::Change;
use crate::error::ApiError;
use std::rc::Rc;

/// Whether any feature needs the stored document before a change of an
/// entity of `table` (the index hook needs it to remove old entries).
#[inline]
pub fn needs_old(core: &Core, table: &str) -> bool {
    crate::index::maintain::needs_old(core, table)
}

/// The write hooks, in their fixed order:
/// 1. indexes (`index::maintain`): old entries out, new entries in;
/// 2. vectors (`vector::maintain`): the stored vector follows the field;
///    the graph follows after the commit;
/// 3. the semantic cache (`cache::maintain`): the owner's bookkeeping of
///    its entries follows after the commit (time series are not entities
///    and write their own batches);
/// 4. the change feed (`changefeed::write`) — last, because it takes the
///    sequence: nothing after it may fail before the commit.
pub fn on_write(core: &Core, change: &mut Change<'_, '_>) -> Result<(), ApiError> {
    crate::index::maintain::on_write(core, change)?;
    crate::vector::maintain::on_write(core, change)?;
    crate::cache::maintain::on_write(core, change)?;
    crate::changefeed::write::on_write(core, change)?;
    Ok(())
}

/// A feature's changes waiting for their write's (or group's) commit, in
/// write order.
pub struct Held<T>(pub(crate) Vec<T>);

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held(Vec::new())
    }
}

impl<T> Held<T> {
    /// Adds a later write's changes after these.
    pub fn absorb(&mut self, mut later: Held<T>) {
        if self.0.is_empty() {
            self.0 = later.0;
        } else {
            self.0.append(&mut later.0);
        }
    }
}

/// What the features do once a write's batch (or the group it joined)
/// committed or failed: each feature's part, filled by its write hook.
#[derive(Default)]
pub struct AfterCommit {
    pub(crate) vector: crate::vector::maintain::Held,
    pub(crate) cache: crate::cache::maintain::Held,
    pub(crate) changefeed: crate::changefeed::write::Held,
}

impl AfterCommit {
    /// Adds a later write's part (both become one group's).
    pub fn absorb(&mut self, later: AfterCommit) {
        self.vector.absorb(later.vector);
        self.cache.absorb(later.cache);
        self.changefeed.absorb(later.changefeed);
    }

    /// A staged write whose hooks failed: it joins no group. Anything it
    /// staged is dropped; a change-feed sequence it took is a gap (counted
    /// when it was abandoned). `holds_others`: the core's groups hold other
    /// sequences (then their commits move the sequencer slot; otherwise it
    /// is cleared now).
    pub fn abandon(self, core: &Core, holds_others: bool) {
        crate::changefeed::write::abandon(core, self.changefeed, holds_others);
    }

    /// The first change-feed sequence held (0: none).
    pub fn first_seq(&self) -> u64 {
        self.changefeed.first()
    }
}

/// After the batch (or group) was committed or failed, in the hooks'
/// order. `next_seq` is the first change-feed sequence of the core's next
/// group still waiting (0: none).
pub fn after_commit(core: &Core, committed: bool, after: AfterCommit, next_seq: u64) {
    crate::vector::maintain::after_commit(core, committed, after.vector);
    crate::cache::maintain::after_commit(core, committed, after.cache);
    crate::changefeed::write::after_commit(core, committed, after.changefeed, next_seq);
}

/// Starts each feature's background tasks on a core that has just joined
/// the mesh.
pub fn start(core: &Rc<Core>, shutdown: &themis_io::ShutdownSignal, faults: &super::Faults) {
    crate::index::build::resume(core);
    crate::vector::load::resume(core);
    crate::changefeed::http::start(core, shutdown, faults);
    crate::timeseries::http::start(core, shutdown, faults);
    crate::cache::http::start(core, shutdown, faults);
    crate::backup::archive::start(core, shutdown);
}
