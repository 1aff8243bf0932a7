//! `ChangeBatch`: the one RocksDB `WriteBatch` a change is made of.
//!
//! Every write the server makes goes through a `ChangeBatch` and commits
//! with [`Storage::commit`]: an entity write and everything features derive
//! from it (index entries, its change event, later vectors and points) are
//! appended to the same batch by the write pipeline (`entity::write`), so
//! after any crash they are all there or none is.
//!
//! [`GroupBatch`] gathers the changes of several writes (a core's group
//! commit, `entity::group`) into one batch, committed with one WAL write:
//! each change is appended whole, so a group is also all or nothing.

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

    /// Bytes of the batch's records.
    pub fn bytes(&self) -> usize {
        self.batch.size_in_bytes().saturating_sub(HEADER)
    }

    /// Writes queued so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// A writer to one family of this batch that looks the family up once
    /// (for batches of many keys of one family: time-series points).
    pub fn family(&mut self, family: Family) -> Result<FamilyWriter<'_>, StorageError> {
        Ok(FamilyWriter {
            cf: self.storage.cf(family)?,
            batch: &mut self.batch,
        })
    }

    pub(super) fn into_inner(self) -> WriteBatch {
        self.batch
    }
}

/// Puts and deletes of one family into a [`ChangeBatch`].
pub struct FamilyWriter<'b> {
    cf: &'b rocksdb::ColumnFamily,
    batch: &'b mut WriteBatch,
}

impl FamilyWriter<'_> {
    #[inline]
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.cf, key, value);
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.batch.delete_cf(self.cf, key);
    }

    /// Deletes every key in `[from, to)`.
    pub fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        self.batch.delete_range_cf(self.cf, from, to);
    }
}

/// Bytes of a RocksDB `WriteBatch` header: an 8-byte sequence number, then
/// the 4-byte little-endian count of records. The records follow, each
/// self-delimiting, so batches are joined by concatenating their records and
/// adding the counts (what RocksDB's own `WriteBatchInternal::Append` does).
const HEADER: usize = 12;

/// The changes of several writes, in the order they were appended, to be
/// committed as one `WriteBatch` ([`Storage::commit_group`]). It owns its
/// bytes (no borrow of the storage), so it can be handed to a helper
/// thread; [`GroupBatch::clear`] keeps the buffer for the next group.
pub struct GroupBatch {
    rep: Vec<u8>,
    count: u32,
}

impl Default for GroupBatch {
    fn default() -> Self {
        GroupBatch {
            rep: vec![0; HEADER],
            count: 0,
        }
    }
}

impl GroupBatch {
    /// Appends every write of `change`, after those already in the group.
    pub fn append(&mut self, change: &ChangeBatch<'_>) {
        let data = change.batch.data();
        if data.len() > HEADER {
            self.rep.extend_from_slice(&data[HEADER..]);
            self.count = self.count.saturating_add(change.batch.len() as u32);
        }
    }

    /// Writes (puts, deletes, range deletes) in the group.
    pub fn writes(&self) -> usize {
        self.count as usize
    }

    /// Bytes of the group's records.
    pub fn bytes(&self) -> usize {
        self.rep.len() - HEADER
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Empties the group, keeping its buffer.
    pub fn clear(&mut self) {
        self.rep.truncate(HEADER);
        self.rep[..HEADER].fill(0);
        self.count = 0;
    }

    /// The group as one RocksDB batch.
    pub(super) fn seal(&mut self) -> WriteBatch {
        self.rep[8..HEADER].copy_from_slice(&self.count.to_le_bytes());
        WriteBatch::from_data(&self.rep)
    }
}
