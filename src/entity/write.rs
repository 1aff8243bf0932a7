//! The write pipeline: how an entity change is applied on its owner.
//!
//! Every PUT, POST and DELETE of an entity ends here, on the core that owns
//! the key (the [`Owned`] token proves it). One pipeline, one batch per
//! write, one commit per group of writes:
//!
//! 1. read the old value: the key's newest staged, uncommitted write if it
//!    has one (`entity::group`'s overlay), else storage; the whole document
//!    if any feature needs it for this table
//!    ([`crate::node::features::needs_old`]), otherwise only whether the
//!    entity exists;
//! 2. put (or delete) the entity in a new [`ChangeBatch`];
//! 3. call every feature's write hook, in the fixed order stated in
//!    [`crate::node::features::on_write`] (indexes, vectors, the change
//!    feed last, because it takes the sequence);
//! 4. append the batch to the core's open group ([`super::group`]), which
//!    a helper thread commits with one WAL write (and one fsync) for all
//!    its writes; with `storage.group_commit: false`, commit it here;
//! 5. after the commit (or failure) of the group, call every feature's
//!    after-commit hook; only then is the write answered.
//!
//! Steps 1–4 are [`stage`]: synchronous, so the writes of a key are staged
//! in the order they reach the owner. Step 5 is [`Pending::durable`].
//! Features add hooks there; this function does not grow special cases.
//!
//! Invariant: the entity and everything derived from it commit in one
//! `WriteBatch`; a delete of a missing entity changes nothing and runs no
//! hook.

pub use super::group::Pending;
use crate::error::ApiError;
use crate::node::features::{self, AfterCommit};
use crate::node::{Core, Owned};
use crate::obs::counters::bump;
use crate::storage::{ChangeBatch, Family};

/// One entity change on its way into a batch, as the hooks see it.
pub struct Change<'a, 's> {
    pub key: &'a str,
    pub table: &'a str,
    /// The document before the change, when a feature asked for it and the
    /// entity existed.
    pub old: Option<&'a [u8]>,
    /// The new document; `None` deletes.
    pub new: Option<&'a [u8]>,
    /// Whether the entity existed before the change.
    pub existed: bool,
    /// The key has a staged write not yet committed: storage does not hold
    /// its current value (derived families may lag it too).
    pub pending: bool,
    /// The batch the change commits in; hooks append to it.
    pub batch: &'a mut ChangeBatch<'s>,
    /// What happens after the commit; hooks add their part.
    pub after: &'a mut AfterCommit,
}

/// Applies `new` (`None`: delete) to the entity `owned` on its owner, and
/// waits until it is durable. Returns whether the entity existed before.
pub async fn apply(
    core: &Core,
    owned: Owned<'_, str>,
    new: Option<&[u8]>,
) -> Result<bool, ApiError> {
    stage(core, owned, new)?.durable().await
}

/// Calls `f` with the entity's current value: its newest staged write if
/// it has one, else the stored value. For code that decides whether to
/// write from the value (retention), so it never decides on a value a
/// staged write already replaced.
pub fn read_current<R>(
    core: &Core,
    owned: &Owned<'_, str>,
    f: impl FnOnce(Option<&[u8]>) -> R,
) -> Result<R, ApiError> {
    let key = owned.key().as_bytes();
    let mut f = Some(f);
    if let Some(r) = core
        .entity()
        .group
        .with_staged(key, |v| f.take().map(|f| f(v)))
        .flatten()
    {
        return Ok(r);
    }
    match f {
        Some(f) => Ok(core.node().storage.with_entity(key, f)?),
        None => Err(ApiError::Internal("read_current: value read twice")),
    }
}

/// Whether the key has a staged write not yet committed.
pub fn is_pending(core: &Core, owned: &Owned<'_, str>) -> bool {
    core.entity()
        .group
        .with_staged(owned.key().as_bytes(), |_| ())
        .is_some()
}

/// Waits until every write staged so far on this core is committed or
/// failed.
pub async fn settled(core: &Core) {
    core.entity().group.settled().await
}

/// Steps 1–4: reads, builds and stages the write (or, without group
/// commit, commits it). The answer comes from [`Pending::durable`].
pub fn stage(core: &Core, owned: Owned<'_, str>, new: Option<&[u8]>) -> Result<Pending, ApiError> {
    let key = owned.key();
    let table = super::table_of(key);
    let storage = &core.node().storage;
    let group = &core.entity().group;
    let grouped = group.enabled(core);
    bump(&core.counters().entity_ops, 1);
    if grouped {
        group.admit(core)?;
    }

    let mut old_buf = core.entity().old.borrow_mut();
    let wants_old = features::needs_old(core, table);
    let mut read = |old: Option<&[u8]>| {
        if wants_old {
            old_buf.clear();
            if let Some(o) = old {
                old_buf.extend_from_slice(o);
            }
        }
        old.is_some()
    };
    let (existed, pending) = match group.with_staged(key.as_bytes(), &mut read) {
        Some(existed) => (existed, true),
        None => (storage.with_entity(key.as_bytes(), &mut read)?, false),
    };
    if new.is_none() && !existed {
        return Ok(Pending::done(false));
    }

    let mut batch = storage.batch();
    match new {
        Some(v) => batch.put(Family::Entities, key.as_bytes(), v)?,
        None => batch.delete(Family::Entities, key.as_bytes())?,
    }
    let old = (existed && wants_old).then_some(&old_buf[..]);
    let mut after = AfterCommit::default();
    let mut change = Change {
        key,
        table,
        old,
        new,
        existed,
        pending,
        batch: &mut batch,
        after: &mut after,
    };
    let hooked = features::on_write(core, &mut change);
    if !grouped {
        let result = hooked.and_then(|()| storage.commit(batch).map_err(ApiError::from));
        features::after_commit(core, result.is_ok(), after, 0);
        return result.map(|()| Pending::done(existed));
    }
    if let Err(e) = hooked {
        after.abandon(core, group.holds_sequences());
        return Err(e);
    }
    Ok(group.add(core, key, new, existed, &batch, after))
}
