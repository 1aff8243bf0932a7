//! The cache's write hook: every committed write of the [`super::TABLE`]
//! table updates the owner's bookkeeping ([`super::lru::Lru`]), whoever
//! made it (a put, an eviction, expiry, `DELETE /entities`, retention).
//!
//! `on_write` only records what changed in the write's [`Held`] (which
//! joins its group's, in write order); `after_commit` applies it if the
//! group committed, then starts an eviction task when the core holds more
//! than its share of `max_entries`/`max_bytes`.

use super::TABLE;
use crate::entity::write::Change;
use crate::error::ApiError;
use crate::node::Core;

/// A change of an entry, waiting for its commit.
pub struct Staged {
    key: String,
    /// `(bytes, expires_ms)` of the new document; `None`: deleted.
    stored: Option<(u64, u64)>,
}

/// The entry changes waiting for their write's (or group's) commit.
pub type Held = crate::node::features::Held<Staged>;

/// `expires_ms` of a stored entry ([`super::NEVER`] when it has none).
pub fn expires_of(doc: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Expiry {
        expires_ms: Option<u64>,
    }
    serde_json::from_slice::<Expiry>(doc)
        .ok()
        .and_then(|e| e.expires_ms)
        .unwrap_or(super::NEVER)
}

pub fn on_write(_core: &Core, change: &mut Change<'_, '_>) -> Result<(), ApiError> {
    if change.table != TABLE {
        return Ok(());
    }
    let stored = change.new.map(|doc| (doc.len() as u64, expires_of(doc)));
    change.after.cache.0.push(Staged {
        key: change.key.to_string(),
        stored,
    });
    Ok(())
}

pub fn after_commit(core: &Core, committed: bool, held: Held) {
    if !committed || held.0.is_empty() {
        return;
    }
    {
        let mut lru = core.cache().lru.borrow_mut();
        for s in held.0 {
            match s.stored {
                Some((bytes, expires)) => lru.stored(&s.key, bytes, expires),
                None => lru.removed(&s.key),
            }
        }
    }
    super::http::publish_gauges(core);
    if super::http::over_cap(core) {
        super::http::evict(core);
    }
}
