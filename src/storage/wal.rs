//! A database's write-ahead log read back as write batches, and batches
//! applied to another database: what point-in-time restore
//! (`backup::restore`) is made of. It opens a scratch copy of a backup
//! with the archived WAL files in it ([`Storage::open_wal_source`]), reads
//! the batches after the backup's sequence ([`Storage::wal_since`]),
//! decides per batch where to cut from the change events it carries
//! ([`WalBatch::puts`]) and applies the ones it keeps to the restored
//! database ([`Storage::apply`]).

use super::{Family, Mode, Storage, StorageError};
use crate::config::StorageConfig;
use rocksdb::{AsColumnFamilyRef, WriteBatch, WriteBatchIteratorCf};
use std::path::Path;

/// One write batch of the WAL (one committed `ChangeBatch`).
pub struct WalBatch {
    seq: u64,
    batch: WriteBatch,
}

impl WalBatch {
    /// RocksDB's sequence of its first operation.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// RocksDB's sequence of its last operation (each operation of a batch
    /// takes one).
    pub fn last_sequence(&self) -> u64 {
        self.seq + (self.batch.len() as u64).saturating_sub(1)
    }

    /// Calls `f(key, value)` for every put into the family with RocksDB id
    /// `family_id` ([`Storage::family_id`]).
    pub fn puts(&self, family_id: u32, f: impl FnMut(&[u8], &[u8])) {
        struct Puts<F> {
            id: u32,
            f: F,
        }
        impl<F: FnMut(&[u8], &[u8])> WriteBatchIteratorCf for Puts<F> {
            fn put_cf(&mut self, cf_id: u32, key: &[u8], value: &[u8]) {
                if cf_id == self.id {
                    (self.f)(key, value);
                }
            }
            fn delete_cf(&mut self, _: u32, _: &[u8]) {}
            fn merge_cf(&mut self, _: u32, _: &[u8], _: &[u8]) {}
        }
        self.batch.iterate_cf(&mut Puts { id: family_id, f });
    }
}

/// The batches of a WAL after a sequence, in WAL (= sequence) order.
pub struct WalBatches {
    it: rocksdb::DBWALIterator,
}

impl Iterator for WalBatches {
    type Item = Result<WalBatch, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(
            self.it
                .next()?
                .map(|(seq, batch)| WalBatch { seq, batch })
                .map_err(StorageError::from),
        )
    }
}

impl WalBatches {
    /// Why the iteration ended early, if it did (read once the iterator is
    /// exhausted).
    pub fn status(&self) -> Result<(), StorageError> {
        self.it.status().map_err(StorageError::from)
    }
}

extern "C" {
    // RocksDB's C API (linked with the `rocksdb` crate, which does not wrap
    // this one): the numeric id a column family has inside the database,
    // which is what a WAL batch names it by.
    fn rocksdb_column_family_handle_get_id(handle: *mut std::ffi::c_void) -> u32;
}

impl Storage {
    /// Opens a scratch copy of a database (a backup's checkpoint plus
    /// archived WAL files) read-write so that its WAL can be read back with
    /// [`Storage::wal_since`]: the WAL files recovery replays and retires
    /// are kept (in `archive/`), so every one stays readable. Never open a
    /// live database so.
    pub fn open_wal_source(path: &Path) -> Result<Storage, StorageError> {
        let cfg = StorageConfig {
            rocksdb_path: path.to_path_buf(),
            memtable_size_mb: 64,
            block_cache_size_mb: 16,
            max_background_compactions: 1,
            ..StorageConfig::default()
        };
        Storage::open_with(&cfg, Mode::WalSource)
    }

    /// The WAL's batches whose first sequence is after `seq`.
    pub fn wal_since(&self, seq: u64) -> Result<WalBatches, StorageError> {
        Ok(WalBatches {
            it: self.db.get_updates_since(seq)?,
        })
    }

    /// The RocksDB id of a column family (how WAL batches name it).
    pub fn family_id(&self, family: Family) -> Result<u32, StorageError> {
        let cf = self.cf(family)?;
        // SAFETY: `cf` is a live handle owned by `self.db`; the call only
        // reads its id.
        Ok(unsafe { rocksdb_column_family_handle_get_id(cf.inner().cast()) })
    }

    /// Applies a batch read from another copy of this database's WAL
    /// (same column families). Not fsynced: the caller flushes
    /// ([`Storage::flush`]) when done. (RocksDB refuses unlogged writes
    /// while WAL recycling is on.)
    pub fn apply(&self, batch: &WalBatch) -> Result<(), StorageError> {
        let copy = WriteBatch::from_data(batch.batch.data());
        self.db.write_opt(copy, &rocksdb::WriteOptions::default())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wal_reads_back_and_applies_to_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |p: &Path| StorageConfig {
            rocksdb_path: p.to_path_buf(),
            memtable_size_mb: 4,
            block_cache_size_mb: 8,
            ..StorageConfig::default()
        };
        let src = dir.path().join("src");
        {
            let s = Storage::open(&cfg(&src)).unwrap();
            for i in 0..5u8 {
                let mut b = s.batch();
                b.put(Family::Entities, &[b't', b':', b'0' + i], b"{}")
                    .unwrap();
                b.put(Family::Changefeed, &[i; 8], &[i]).unwrap();
                s.commit(b).unwrap();
            }
        }
        let s = Storage::open_wal_source(&src).unwrap();
        let cf = s.family_id(Family::Changefeed).unwrap();
        let batches: Vec<WalBatch> = s.wal_since(4).unwrap().map(|b| b.unwrap()).collect();
        // Batches of two operations: sequences 1-2, 3-4, 5-6, 7-8, 9-10.
        assert_eq!(
            batches.iter().map(|b| b.sequence()).collect::<Vec<_>>(),
            vec![5, 7, 9]
        );
        assert_eq!(batches[0].last_sequence(), 6);
        let mut feed = Vec::new();
        batches[0].puts(cf, |k, v| feed.push((k.to_vec(), v.to_vec())));
        assert_eq!(feed, vec![(vec![2; 8], vec![2])]);

        let dst = Storage::open(&cfg(&dir.path().join("dst"))).unwrap();
        dst.apply(&batches[1]).unwrap();
        assert!(dst.entity_exists(b"t:3").unwrap());
        assert!(!dst.entity_exists(b"t:2").unwrap());
    }
}
