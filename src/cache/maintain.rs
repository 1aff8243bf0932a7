//! The cache's write hook: every committed write of the [`super::TABLE`]
//! table updates the owner's bookkeeping ([`super::lru::Lru`]), whoever
//! made it (a put, an eviction, expiry, `DELETE /entities`, retention).
//!
//! `on_write` only stages what changed; `after_commit` applies it if the
//! batch committed, then starts an eviction task when the core holds more
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

pub fn on_write(core: &Core, change: &mut Change<'_, '_>) -> Result<(), ApiError> {
    if change.table != TABLE {
        return Ok(());
    }
    let stored = change.new.map(|doc| (doc.len() as u64, expires_of(doc)));
    *core.cache().staged.borrow_mut() = Some(Staged {
        key: change.key.to_string(),
        stored,
    });
    Ok(())
}

pub fn after_commit(core: &Core, committed: bool) {
    let local = core.cache();
    let Some(staged) = local.staged.borrow_mut().take() else {
        return;
    };
    if !committed {
        return;
    }
    {
        let mut lru = local.lru.borrow_mut();
        match staged.stored {
            Some((bytes, expires)) => lru.stored(&staged.key, bytes, expires),
            None => lru.removed(&staged.key),
        }
    }
    super::http::publish_gauges(core);
    if super::http::over_cap(core) {
        super::http::evict(core);
    }
}
