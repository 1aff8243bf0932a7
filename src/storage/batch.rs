//! `ChangeBatch`: the one RocksDB `WriteBatch` a change is made of.
//!
//! Every write the server makes goes through a `ChangeBatch` and commits
//! with [`Storage::commit`]: an entity write and everything features derive
//! from it (index entries, its change event, later vectors and points) are
//! appended to the same batch by the write pipeline (`entity::write`), so
//! after any crash they are all there or none is.

use super::{Family, Storage, StorageError};
use rocksdb::WriteBatch;

/// A batch of writes to any families, committed atomically.
pub struct ChangeBatch<'s> {
    storage: &'s Storage,
    batch: WriteBatch,
}

impl<'s> ChangeBatch<'s> {
    pub(super) fn new(storage: &'s Storage) -> Self {
        ChangeBatch {
            storage,
            batch: WriteBatch::default(),
        }
    }

    pub fn put(&mut self, family: Family, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.batch.put_cf(self.storage.cf(family)?, key, value);
        Ok(())
    }

    pub fn delete(&mut self, family: Family, key: &[u8]) -> Result<(), StorageError> {
        self.batch.delete_cf(self.storage.cf(family)?, key);
        Ok(())
    }

    /// Deletes every key in `[from, to)`.
    pub fn delete_range(
        &mut self,
        family: Family,
        from: &[u8],
        to: &[u8],
    ) -> Result<(), StorageError> {
        self.batch
            .delete_range_cf(self.storage.cf(family)?, from, to);
        Ok(())
    }

    /// Writes queued so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub(super) fn into_inner(self) -> WriteBatch {
        self.batch
    }
}
