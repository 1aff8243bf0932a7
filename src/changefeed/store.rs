//! Where the change feed keeps its events: [`Family::Changefeed`], keyed by
//! sequence (8 bytes big-endian, so key order is sequence order), and the
//! first sequence after the last prune in `meta`.

use crate::storage::keyspace::meta::{FEED_FIRST_SEQUENCE, FEED_RESERVED};
use crate::storage::{Family, Storage, StorageError};

/// The key of sequence `seq`.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The first and last sequence stored.
pub fn bounds(storage: &Storage) -> Result<Option<(u64, u64)>, StorageError> {
    Ok(storage
        .bounds(Family::Changefeed)?
        .and_then(|(a, b)| seq_of(&a).zip(seq_of(&b))))
}

/// Calls `f(sequence, record)` for the records with `after < sequence <=
/// upto`, in order, until `f` returns false. Reads sequentially: call it off
/// the reactor unless the range is small and recent.
pub fn scan(
    storage: &Storage,
    after: u64,
    upto: u64,
    mut f: impl FnMut(u64, &[u8]) -> bool,
) -> Result<(), StorageError> {
    if upto <= after {
        return Ok(());
    }
    let from = seq_key(after.saturating_add(1));
    let to = seq_key(upto.saturating_add(1));
    // `upto == u64::MAX` would wrap the bound: no sequence gets that far.
    storage.scan(Family::Changefeed, &from, &to, false, |k, v| {
        match seq_of(k) {
            Some(seq) if seq <= upto => f(seq, v),
            _ => false,
        }
    })
}

/// Deletes the records with sequence `< before` and records `before` as
/// the feed's first sequence (so the counter never goes back even when
/// every record is gone), in one batch. Off the reactor.
pub fn prune(storage: &Storage, before: u64) -> Result<(), StorageError> {
    let mut batch = storage.batch();
    batch.delete_range(Family::Changefeed, &seq_key(0), &seq_key(before))?;
    batch.put(Family::Meta, FEED_FIRST_SEQUENCE, &seq_key(before))?;
    storage.commit(batch)?;
    // Reclaim the space now rather than at the next natural compaction.
    storage.compact_range(Family::Changefeed, None, Some(&seq_key(before)));
    Ok(())
}

/// The first sequence recorded by the last prune (0 if never pruned).
pub fn pruned_before(storage: &Storage) -> Result<u64, StorageError> {
    Ok(storage
        .get_with(Family::Meta, FEED_FIRST_SEQUENCE, |v| v.and_then(seq_of))?
        .unwrap_or(0))
}

/// The reserved mark (0 if never reserved).
pub fn reserved(storage: &Storage) -> Result<u64, StorageError> {
    Ok(storage
        .get_with(Family::Meta, FEED_RESERVED, |v| v.and_then(seq_of))?
        .unwrap_or(0))
}

/// Makes `mark` the reserved mark, durably (a synced write) before it
/// returns. Blocking: off the reactor, except in the rare case of an
/// exhausted reservation.
pub fn persist_reserved(storage: &Storage, mark: u64) -> Result<(), StorageError> {
    let mut batch = storage.batch();
    batch.put(Family::Meta, FEED_RESERVED, &seq_key(mark))?;
    storage.commit_synced(batch)
}

/// Approximate bytes the feed occupies.
pub fn size_bytes(storage: &Storage) -> u64 {
    storage.family_size_bytes(Family::Changefeed)
}
