//! The write pipeline: how an entity change is applied on its owner.
//!
//! Every PUT, POST and DELETE of an entity ends here, on the core that owns
//! the key (the [`Owned`] token proves it). One pipeline, one batch, one
//! commit:
//!
//! 1. read the old document if any feature needs it for this table
//!    ([`crate::node::features::needs_old`]), otherwise only whether the
//!    entity exists;
//! 2. put (or delete) the entity in a new [`ChangeBatch`];
//! 3. call every feature's write hook, in the fixed order stated in
//!    [`crate::node::features::on_write`] (indexes; later vectors and time
//!    series; the change feed last, because it takes the sequence);
//! 4. commit the batch once;
//! 5. call every feature's after-commit hook (always, committed or not).
//!
//! Features add hooks there; this function does not grow special cases.
//!
//! Invariant: the entity and everything derived from it commit in one
//! `WriteBatch`; a delete of a missing entity changes nothing and runs no
//! hook.

use crate::error::ApiError;
use crate::node::{features, Core, Owned};
use crate::obs::counters::bump;
use crate::storage::{ChangeBatch, Family};

/// One entity change on its way into a batch, as the hooks see it.
pub struct Change<'a, 's> {
    pub key: &'a str,
    pub table: &'a str,
    /// The stored document before the change, when a feature asked for it
    /// and the entity existed.
    pub old: Option<&'a [u8]>,
    /// The new document; `None` deletes.
    pub new: Option<&'a [u8]>,
    /// Whether the entity existed before the change.
    pub existed: bool,
    /// The batch the change commits in; hooks append to it.
    pub batch: &'a mut ChangeBatch<'s>,
}

/// Applies `new` (`None`: delete) to the entity `owned` on its owner.
/// Returns whether the entity existed before.
pub fn apply(core: &Core, owned: Owned<'_, str>, new: Option<&[u8]>) -> Result<bool, ApiError> {
    let key = owned.key();
    let table = super::table_of(key);
    let storage = &core.node().storage;
    bump(&core.counters().entity_ops, 1);

    let mut old_buf = core.entity().old.borrow_mut();
    let wants_old = features::needs_old(core, table);
    let existed = if wants_old {
        storage.with_entity(key.as_bytes(), |old| {
            old_buf.clear();
            if let Some(o) = old {
                old_buf.extend_from_slice(o);
            }
            old.is_some()
        })?
    } else {
        storage.entity_exists(key.as_bytes())?
    };
    if new.is_none() && !existed {
        return Ok(false);
    }

    let mut batch = storage.batch();
    match new {
        Some(v) => batch.put(Family::Entities, key.as_bytes(), v)?,
        None => batch.delete(Family::Entities, key.as_bytes())?,
    }
    let old = (existed && wants_old).then_some(&old_buf[..]);
    let mut change = Change {
        key,
        table,
        old,
        new,
        existed,
        batch: &mut batch,
    };
    let result = features::on_write(core, &mut change)
        .and_then(|()| storage.commit(batch).map_err(ApiError::from));
    features::after_commit(core, result.is_ok());
    result.map(|()| existed)
}
