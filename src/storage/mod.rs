//! `Storage`: the one RocksDB instance and the narrow API the server uses.
//!
//! * [`keyspace`]: every column family and key prefix.
//! * [`batch`]: [`ChangeBatch`], the one atomic write a change is made of.
//! * [`read`]: [`ReadView`], the narrow read interface logic is written
//!   against (and unit-tested over an in-memory map).
//!
//! Invariants:
//! * User data and internal data live in different column families
//!   ([`Family::Entities`] for entities; the others for indexes, the change
//!   feed, vectors, time series and metadata), so no table name can ever
//!   collide with an internal key.
//! * An entity key is stored exactly as the client wrote it (`table:pk`);
//!   the value is the entity's compact JSON object.
//! * Every write goes through one `WriteBatch`, so later features (index
//!   entries, change-feed events) commit atomically with the entity.
//! * Each write reaches the write-ahead log before it is acknowledged: with
//!   `sync_writes: false` it survives a crash of the process (the WAL write
//!   is in the kernel's page cache), with `sync_writes: true` it also
//!   survives a power loss (the WAL is fsynced first).
//! * Point reads and writes are called inline on the executor; anything that
//!   scans or rebuilds runs off the reactor.

pub mod batch;
pub mod format;
pub mod keyspace;
pub mod read;
pub mod wal;

pub use batch::{ChangeBatch, GroupBatch};
pub use keyspace::Family;
pub use read::ReadView;

use crate::config::{Compression, StorageConfig};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, WriteOptions, DB,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The first and the last key of a range.
pub type KeyBounds = (Vec<u8>, Vec<u8>);

/// A storage failure, with RocksDB's message.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open database at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("storage error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    /// The on-disk format version cannot be served by this build.
    #[error("{0}")]
    Format(String),
    /// A group commit failed (every write of the group, and of the groups
    /// staged after it, failed with it).
    #[error("commit failed: {0}")]
    Commit(String),
    /// A file operation around the database (a backup's) failed.
    #[error("{0}")]
    Io(String),
}

/// RocksDB figures reported by `/stats` (and, later, `/metrics`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RocksStats {
    pub estimate_num_keys: u64,
    pub block_cache_usage_bytes: u64,
    pub block_cache_pinned_usage_bytes: u64,
    pub block_cache_capacity_bytes: u64,
    pub memtable_size_bytes: u64,
    pub cur_size_all_mem_tables_bytes: u64,
    pub estimate_pending_compaction_bytes: u64,
    pub num_running_compactions: u64,
    pub num_running_flushes: u64,
    pub files_per_level: Vec<u64>,
    pub live_sst_files_size_bytes: u64,
}

/// RocksDB ticker counters (statistics are always collected at ticker
/// level; `enable_statistics` adds histograms and timers).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tickers {
    pub block_cache_hit: u64,
    pub block_cache_miss: u64,
}

/// Calls `f(key, value)` for every entry of a bounded iterator, in key
/// order (or reverse), until `f` returns false; then reports the
/// iterator's error, if any.
fn walk(
    mut it: rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>,
    reverse: bool,
    mut f: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StorageError> {
    if reverse {
        it.seek_to_last();
    } else {
        it.seek_to_first();
    }
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !f(k, v) {
            break;
        }
        if reverse {
            it.prev();
        } else {
            it.next();
        }
    }
    it.status()?;
    Ok(())
}

/// With WAL archiving on, how long RocksDB keeps an obsolete WAL file in
/// `<db>/archive/` for the archiver (which deletes it once copied) before
/// deleting it itself: an hour of archiver outage.
pub const WAL_KEEP_S: u64 = 3600;

/// Entity ranges smaller than this (in SST bytes) are not split by size
/// ([`Storage::split_entities`]).
pub const SPLIT_MIN_BYTES: u64 = 8 << 20;

/// How a database is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadWrite,
    ReadOnly,
    /// Read-write, keeping every WAL file readable (`wal::open_wal_source`).
    WalSource,
}

/// The database.
pub struct Storage {
    db: DB,
    db_opts: Options,
    cache: Cache,
    cache_capacity: u64,
    write_opts: WriteOptions,
    /// Without `sync_writes`: `write_opts` with `no_slowdown`, for
    /// [`Storage::try_commit_group_now`]. `None` with `sync_writes`.
    no_wait_write_opts: Option<WriteOptions>,
    sync_writes: bool,
    path: PathBuf,
}

fn compression(c: Compression) -> DBCompressionType {
    match c {
        Compression::None => DBCompressionType::None,
        Compression::Snappy => DBCompressionType::Snappy,
        Compression::Lz4 => DBCompressionType::Lz4,
        Compression::Zstd => DBCompressionType::Zstd,
        Compression::Zlib => DBCompressionType::Zlib,
    }
}

/// How a column family is used, which decides a few of its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CfUse {
    /// Read by key (entities, indexes, …): bloom filters pay off, and the
    /// bottommost level uses `compression.bottommost`.
    Keyed,
    /// An append-only log read by range and pruned by retention (the change
    /// feed): bloom filters would cost flush CPU and never be consulted, and
    /// strong bottommost compression is wasted on short-lived data, so every
    /// level uses `compression.default`.
    Log,
}

/// RocksDB options for a column family, from `storage.*`.
fn cf_options(cfg: &StorageConfig, cache: &Cache, usage: CfUse) -> Options {
    let mut o = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    if cfg.enable_bloom_filters && usage == CfUse::Keyed {
        table.set_bloom_filter(f64::from(cfg.bloom_bits_per_key), false);
        table.set_whole_key_filtering(true);
        // A bloom filter over the memtable's keys too: a point read of a
        // key the memtable lacks (most reads, and every write's
        // existence read of a key last written long ago) skips the skip
        // list's search (a chain of cache misses in a large memtable).
        // 2 % of the memtable's size.
        o.set_memtable_prefix_bloom_ratio(0.02);
        o.set_memtable_whole_key_filtering(true);
    }
    if usage == CfUse::Keyed {
        // A hash index inside each data block: a point read finds its key
        // without the binary search (about one byte per key).
        table.set_data_block_index_type(rocksdb::DataBlockIndexType::BinaryAndHash);
        table.set_data_block_hash_ratio(0.75);
    }
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    o.set_block_based_table_factory(&table);
    o.set_write_buffer_size((cfg.memtable_size_mb as usize) << 20);
    o.set_max_write_buffer_number(cfg.max_write_buffer_number);
    o.set_min_write_buffer_number_to_merge(cfg.min_write_buffer_number_to_merge);
    o.set_level_zero_file_num_compaction_trigger(cfg.level0_file_num_compaction_trigger);
    o.set_level_zero_slowdown_writes_trigger(cfg.level0_slowdown_writes_trigger);
    o.set_level_zero_stop_writes_trigger(cfg.level0_stop_writes_trigger);
    o.set_compression_type(compression(cfg.compression.default));
    o.set_bottommost_compression_type(compression(match usage {
        CfUse::Keyed => cfg.compression.bottommost,
        CfUse::Log => cfg.compression.default,
    }));
    o
}

impl Storage {
    /// Opens (or creates) the database described by `cfg`.
    pub fn open(cfg: &StorageConfig) -> Result<Storage, StorageError> {
        Storage::open_with(cfg, Mode::ReadWrite)
    }

    /// Opens an existing database (a backup's checkpoint, a stopped
    /// server's directory) read-only: nothing in it is changed, the WAL is
    /// replayed in memory only. Families it lacks are simply absent.
    pub fn open_read_only(path: &Path) -> Result<Storage, StorageError> {
        let cfg = StorageConfig {
            rocksdb_path: path.to_path_buf(),
            memtable_size_mb: 8,
            block_cache_size_mb: 16,
            ..StorageConfig::default()
        };
        Storage::open_with(&cfg, Mode::ReadOnly)
    }

    fn open_with(cfg: &StorageConfig, mode: Mode) -> Result<Storage, StorageError> {
        let read_only = mode == Mode::ReadOnly;
        let path = cfg.rocksdb_path.clone();
        let open_err = |message: String| StorageError::Open {
            path: path.clone(),
            message,
        };
        if !read_only {
            std::fs::create_dir_all(&path).map_err(|e| open_err(e.to_string()))?;
        }
        let cache_capacity = cfg.block_cache_size_mb << 20;
        let cache = Cache::new_lru_cache(cache_capacity as usize);

        let mut db_opts = cf_options(cfg, &cache, CfUse::Keyed);
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(cfg.max_open_files);
        // Background threads: compactions plus one for flushes. Compactions
        // run at lowered CPU and I/O priority: they share CPUs with the
        // pinned executors and must not take a core away from requests (the
        // scheduler gives the executor precedence; they still get every idle
        // cycle). Flushes keep normal priority: a flush is on the write path
        // (when memtables are full, writes stop until it finishes), and at
        // the lowest priority a sustained write load on a busy core starved
        // it into multi-second write stops (measured with bench/cdc.sh).
        db_opts.set_max_background_jobs(cfg.max_background_compactions + 1);
        let mut env = rocksdb::Env::new().map_err(|e| open_err(e.into_string()))?;
        env.set_background_threads(cfg.max_background_compactions);
        env.set_high_priority_background_threads(1);
        env.lower_thread_pool_cpu_priority();
        env.lower_thread_pool_io_priority();
        db_opts.set_env(&env);
        // Start writeback of the WAL and SST files every MiB instead of
        // letting dirty pages pile up until the kernel throttles the writing
        // thread (an executor) for milliseconds.
        db_opts.set_wal_bytes_per_sync(1 << 20);
        db_opts.set_bytes_per_sync(1 << 20);
        if cfg.wal_archive_path.is_some() {
            // WAL archiving (`backup::archive`) copies each WAL file as it
            // grows and needs every file to stay an append-only record
            // until it is copied whole: no recycling (a recycled file is
            // overwritten in place), and an obsolete file is moved into
            // `<db>/archive/` instead of being deleted. The archiver
            // deletes it from there once copied; RocksDB deletes it after
            // `WAL_KEEP_S` if the archiver cannot (a gap the archiver
            // reports). RocksDB also forces recycling off once a TTL is set.
            db_opts.set_recycle_log_file_num(0);
            db_opts.set_wal_ttl_seconds(WAL_KEEP_S);
        } else if cfg.sync_writes {
            // With every commit fsynced, reuse old WAL files instead of
            // creating new ones: overwriting allocated blocks leaves the
            // file's size alone, so an fdatasync need not commit the
            // inode's metadata too.
            db_opts.set_recycle_log_file_num(4);
        } else {
            // Without sync_writes, no recycling: a recycled file's pages are
            // no longer in the page cache, so the first append to each page
            // of it had to read the old block from disk first (a
            // read-modify-write inside `write()`, on the core that commits).
            // Measured: every time the reactor blocked during an open-loop
            // PUT run it was there (`ext4_block_write_begin` →
            // `bit_wait_io`, 110 times in 10 s); bench/RESULTS.md.
            db_opts.set_recycle_log_file_num(0);
        }
        // Recovery replays the WAL up to its first damaged record and stops
        // there (a consistent prefix), the mode a checkpoint restore and a
        // crash both rely on.
        db_opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        if mode == Mode::WalSource {
            // A scratch copy opened only to read its WAL back
            // (`Storage::wal_since`): the WAL files that recovery's flush
            // retires must stay readable, so they are moved to `archive/`
            // (where the reader finds them) instead of being deleted.
            db_opts.set_wal_ttl_seconds(WAL_KEEP_S);
            db_opts.set_recycle_log_file_num(0);
        }
        // Total memtable memory across all column families: a full budget
        // (`memtable_size_mb` x `max_write_buffer_number`) for each family
        // that writes fill — entities and the change feed — so turning CDC
        // on does not halve the entities' memtable and double their flushes
        // (measured +3.5 % PUT/s with CDC on, bench/cdc.sh settings).
        db_opts.set_db_write_buffer_size((cfg.memtable_budget_mb() as usize) << 20);
        // Flush column families together so a crash never leaves one CF's
        // memtable persisted without the other's (entity + index atomicity).
        db_opts.set_atomic_flush(true);
        // Tickers (block cache hit/miss for the guide's alert) are cheap and
        // always on; `enable_statistics` adds histograms and timers.
        db_opts.enable_statistics();
        db_opts.set_statistics_level(if cfg.enable_statistics {
            rocksdb::statistics::StatsLevel::ExceptDetailedTimers
        } else {
            rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers
        });

        let db = if read_only {
            let present = DB::list_cf(&db_opts, &path).map_err(|e| open_err(e.into_string()))?;
            DB::open_cf_for_read_only(&db_opts, &path, present, false)
                .map_err(|e| open_err(e.into_string()))?
        } else {
            let descriptors: Vec<_> = Family::ALL
                .iter()
                .map(|f| {
                    let usage = if f.is_log() { CfUse::Log } else { CfUse::Keyed };
                    ColumnFamilyDescriptor::new(f.name(), cf_options(cfg, &cache, usage))
                })
                .collect();
            DB::open_cf_descriptors(&db_opts, &path, descriptors)
                .map_err(|e| open_err(e.into_string()))?
        };
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(cfg.sync_writes);
        let no_wait_write_opts = (!cfg.sync_writes).then(|| {
            let mut o = WriteOptions::default();
            o.set_no_slowdown(true);
            o
        });
        Ok(Storage {
            db,
            db_opts,
            cache,
            cache_capacity,
            write_opts,
            no_wait_write_opts,
            sync_writes: cfg.sync_writes,
            path,
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, family: Family) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(family.name())
            .ok_or(StorageError::MissingColumnFamily(family.name()))
    }

    /// Reads a key and hands its bytes (pinned in RocksDB, not copied) to
    /// `f`. A point read: fine on the reactor.
    pub fn get_with<R>(
        &self,
        family: Family,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StorageError> {
        let pinned = self.db.get_pinned_cf(self.cf(family)?, key)?;
        Ok(f(pinned.as_deref()))
    }

    /// Reads an entity and hands its bytes (pinned, not copied) to `f`.
    #[inline]
    pub fn with_entity<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StorageError> {
        self.get_with(Family::Entities, key, f)
    }

    /// Whether an entity exists.
    pub fn entity_exists(&self, key: &[u8]) -> Result<bool, StorageError> {
        self.with_entity(key, |v| v.is_some())
    }

    /// A new, empty batch of writes.
    pub fn batch(&self) -> ChangeBatch<'_> {
        ChangeBatch::new(self)
    }

    /// Commits a batch atomically. It has reached the WAL (and with
    /// `sync_writes`, the disk) when this returns Ok: only then may the
    /// write be acknowledged.
    pub fn commit(&self, batch: ChangeBatch<'_>) -> Result<(), StorageError> {
        self.db.write_opt(batch.into_inner(), &self.write_opts)?;
        Ok(())
    }

    /// Commits a group of changes as one batch: one WAL write and, with
    /// `sync_writes`, one fsync. Blocking for as long as the fsync takes:
    /// the group commit calls it on a helper thread. Every change in the
    /// group has reached the WAL (and the disk) when this returns Ok.
    pub fn commit_group(&self, group: &mut GroupBatch) -> Result<(), StorageError> {
        self.db.write_opt(group.seal(), &self.write_opts)?;
        Ok(())
    }

    /// Commits a group on the calling thread when that cannot wait long:
    /// only without `sync_writes` (no fsync: the WAL write lands in the
    /// page cache), and with RocksDB's `no_slowdown`, so a write that
    /// RocksDB would delay or stall (memtable full, too many L0 files) is
    /// refused at once with nothing written. `Ok(true)`: committed, as by
    /// [`Storage::commit_group`]; `Ok(false)`: not committed (synced
    /// writes, or RocksDB would have made it wait): commit it with
    /// `commit_group` on a helper thread.
    pub fn try_commit_group_now(&self, group: &mut GroupBatch) -> Result<bool, StorageError> {
        let Some(opts) = &self.no_wait_write_opts else {
            return Ok(false);
        };
        match self.db.write_opt(group.seal(), opts) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether commits are fsynced (`storage.sync_writes`).
    pub fn syncs_writes(&self) -> bool {
        self.sync_writes
    }

    /// Commits a batch of metadata fsynced, whatever `sync_writes` says
    /// (definitions that other keys' meaning depends on).
    pub fn commit_synced(&self, batch: ChangeBatch<'_>) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch.into_inner(), &opts)?;
        Ok(())
    }

    /// Compacts `[from, to)` of a family now (reclaims deleted ranges).
    /// Blocking: off the reactor.
    pub fn compact_range(&self, family: Family, from: Option<&[u8]>, to: Option<&[u8]>) {
        if let Ok(cf) = self.cf(family) {
            self.db.compact_range_cf(cf, from, to);
        }
    }

    /// The first and last key of a family. Cheap at both ends of a log.
    pub fn bounds(&self, family: Family) -> Result<Option<KeyBounds>, StorageError> {
        let mut it = self.db.raw_iterator_cf(self.cf(family)?);
        it.seek_to_first();
        let first = it.key().map(<[u8]>::to_vec);
        it.seek_to_last();
        let last = it.key().map(<[u8]>::to_vec);
        it.status()?;
        Ok(first.zip(last))
    }

    /// Approximate bytes a family occupies (SST files + memtables).
    pub fn family_size_bytes(&self, family: Family) -> u64 {
        let Ok(cf) = self.cf(family) else {
            return 0;
        };
        let p = |name: &str| {
            self.db
                .property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        p("rocksdb.live-sst-files-size") + p("rocksdb.cur-size-all-mem-tables")
    }

    /// Calls `f(key, value)` for the keys of column family `family` in
    /// `[from, to)` (ascending, or descending with `reverse`) until `f`
    /// returns false. A range read: off the reactor unless it is short.
    pub fn scan(
        &self,
        family: Family,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let cf = self.cf(family)?;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_lower_bound(from.to_vec());
        opts.set_iterate_upper_bound(to.to_vec());
        walk(self.db.raw_iterator_cf_opt(cf, opts), reverse, f)
    }

    /// Approximate bytes of entities in `[from, to)`, from the SST files'
    /// index (memtables are not counted). Cheap: no data is read.
    pub fn approximate_entity_bytes(&self, from: &[u8], to: &[u8]) -> u64 {
        match self.cf(Family::Entities) {
            Ok(cf) => self
                .db
                .get_approximate_sizes_cf(cf, &[rocksdb::Range::new(from, to)])
                .first()
                .copied()
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Splits the entity range `[from, to)` into `n` ranges holding about
    /// equal bytes (RocksDB's size estimates of the SST files, found by
    /// bisection over the 8 key bytes after `from`, which is a table
    /// prefix). `None` when the range is small ([`SPLIT_MIN_BYTES`]) or
    /// mostly still in memtables: then the caller divides the work by key
    /// ownership instead. Blocking (size estimates read table properties).
    pub fn split_entities(
        &self,
        from: &[u8],
        to: &[u8],
        n: usize,
    ) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let total = self.approximate_entity_bytes(from, to);
        if total < SPLIT_MIN_BYTES || n < 2 {
            return None;
        }
        let key_at = |x: u64| {
            let mut k = from.to_vec();
            k.extend_from_slice(&x.to_be_bytes());
            k
        };
        let mut bounds = vec![from.to_vec()];
        for i in 1..n {
            let target = total / n as u64 * i as u64;
            let (mut lo, mut hi) = (0u64, u64::MAX);
            for _ in 0..64 {
                if hi - lo <= 1 {
                    break;
                }
                let mid = lo + (hi - lo) / 2;
                if self.approximate_entity_bytes(from, &key_at(mid)) < target {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let b = key_at(hi);
            if b <= *bounds.last()? {
                return None;
            }
            bounds.push(b);
        }
        bounds.push(to.to_vec());
        Some(
            bounds
                .windows(2)
                .map(|w| (w[0].clone(), w[1].clone()))
                .collect(),
        )
    }

    /// Reads several entities in one batched lookup and hands each value
    /// (pinned, not copied) to `f` with its position in `keys`.
    pub fn with_entities(
        &self,
        keys: &[&[u8]],
        mut f: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StorageError> {
        let cf = self.cf(Family::Entities)?;
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|i| keys[*i]);
        let sorted: Vec<&[u8]> = order.iter().map(|i| keys[*i]).collect();
        let results = self.db.batched_multi_get_cf(cf, &sorted, true);
        for (i, r) in order.into_iter().zip(results) {
            f(i, r?.as_deref());
        }
        Ok(())
    }

    /// The JSON definitions stored in `meta` under `prefix` (an unreadable
    /// one is logged, naming `what`, and skipped), and the stored next id
    /// (u32 BE under `next_id_key`; 1 when absent). Feature catalogs
    /// (secondary and vector indexes) load themselves with this.
    pub fn load_definitions<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        next_id_key: &[u8],
        what: &str,
    ) -> Result<(Vec<T>, u32), StorageError> {
        let mut defs = Vec::new();
        let mut end = prefix.to_vec();
        end.push(0xFF);
        self.scan(Family::Meta, prefix, &end, false, |_, v| {
            match serde_json::from_slice::<T>(v) {
                Ok(d) => defs.push(d),
                Err(e) => tracing::error!("unreadable {what} definition skipped: {e}"),
            }
            true
        })?;
        let next = self
            .meta_get(next_id_key)?
            .and_then(|v| v.try_into().ok().map(u32::from_be_bytes))
            .unwrap_or(1);
        Ok((defs, next))
    }

    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_with(Family::Meta, key, |v| v.map(<[u8]>::to_vec))
    }

    fn prop(&self, name: &str) -> u64 {
        self.db.property_int_value(name).ok().flatten().unwrap_or(0)
    }

    fn prop_all_cfs(&self, name: &str) -> u64 {
        let mut total = 0;
        for family in Family::ALL {
            if let Ok(cf) = self.cf(family) {
                total += self
                    .db
                    .property_int_value_cf(cf, name)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            }
        }
        total
    }

    /// Current RocksDB figures (cheap property reads; no scan).
    pub fn stats(&self) -> RocksStats {
        let estimate_num_keys = self
            .cf(Family::Entities)
            .ok()
            .and_then(|cf| {
                self.db
                    .property_int_value_cf(cf, "rocksdb.estimate-num-keys")
                    .ok()
                    .flatten()
            })
            .unwrap_or(0);
        RocksStats {
            estimate_num_keys,
            block_cache_usage_bytes: self.cache.get_usage() as u64,
            block_cache_pinned_usage_bytes: self.cache.get_pinned_usage() as u64,
            block_cache_capacity_bytes: self.cache_capacity,
            memtable_size_bytes: self.prop_all_cfs("rocksdb.cur-size-active-mem-table"),
            cur_size_all_mem_tables_bytes: self.prop_all_cfs("rocksdb.cur-size-all-mem-tables"),
            estimate_pending_compaction_bytes: self
                .prop_all_cfs("rocksdb.estimate-pending-compaction-bytes"),
            num_running_compactions: self.prop("rocksdb.num-running-compactions"),
            num_running_flushes: self.prop("rocksdb.num-running-flushes"),
            files_per_level: (0..7)
                .map(|l| self.prop_all_cfs(&format!("rocksdb.num-files-at-level{l}")))
                .collect(),
            live_sst_files_size_bytes: self.prop_all_cfs("rocksdb.live-sst-files-size"),
        }
    }

    /// Block cache hit and miss counts since start.
    pub fn tickers(&self) -> Tickers {
        use rocksdb::statistics::Ticker;
        Tickers {
            block_cache_hit: self.db_opts.get_ticker_count(Ticker::BlockCacheHit),
            block_cache_miss: self.db_opts.get_ticker_count(Ticker::BlockCacheMiss),
        }
    }

    /// Writes a consistent checkpoint of the whole database into `dir`
    /// (which must not exist): memtables are flushed (atomically, across
    /// the families), SST files are hard-linked when `dir` is on the same
    /// filesystem and copied otherwise, the live WAL is copied. Blocking:
    /// off the reactor.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// RocksDB's last sequence number (every committed batch advances it).
    pub fn latest_sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// The column families this database has, by name.
    pub fn family_names(&self) -> Vec<&'static str> {
        Family::ALL
            .iter()
            .filter(|f| self.cf(**f).is_ok())
            .map(|f| f.name())
            .collect()
    }

    /// Whether no family holds any key (a database just created).
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        for f in Family::ALL {
            if self.cf(f).is_ok() && self.bounds(f)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A consistent, checksum-verifying view of the database as it is now
    /// (a RocksDB snapshot): every block it reads has its checksum checked
    /// and does not displace the block cache. For verification; blocking.
    pub fn verifying_view(&self) -> VerifyingView<'_> {
        VerifyingView {
            storage: self,
            snapshot: self.db.snapshot(),
        }
    }

    /// Makes everything written so far durable: WAL fsynced and memtables
    /// flushed. Called once on shutdown.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        let cfs: Vec<_> = Family::ALL
            .iter()
            .filter_map(|f| self.cf(*f).ok())
            .collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }
}

/// A snapshot of the database read with checksum verification
/// ([`Storage::verifying_view`]).
pub struct VerifyingView<'a> {
    storage: &'a Storage,
    snapshot: rocksdb::Snapshot<'a>,
}

impl VerifyingView<'_> {
    fn read_opts(&self) -> rocksdb::ReadOptions {
        let mut o = rocksdb::ReadOptions::default();
        o.set_verify_checksums(true);
        o.fill_cache(false);
        o.set_snapshot(&self.snapshot);
        o
    }
}

impl ReadView for VerifyingView<'_> {
    fn get_with<R>(
        &self,
        family: Family,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StorageError> {
        let cf = self.storage.cf(family)?;
        let pinned = self
            .storage
            .db
            .get_pinned_cf_opt(cf, key, &self.read_opts())?;
        Ok(f(pinned.as_deref()))
    }

    fn scan(
        &self,
        family: Family,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let cf = self.storage.cf(family)?;
        let mut opts = self.read_opts();
        opts.set_iterate_lower_bound(from.to_vec());
        opts.set_iterate_upper_bound(to.to_vec());
        walk(self.storage.db.raw_iterator_cf_opt(cf, opts), reverse, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Storage {
        let cfg = StorageConfig {
            rocksdb_path: dir.to_path_buf(),
            memtable_size_mb: 4,
            block_cache_size_mb: 8,
            ..StorageConfig::default()
        };
        Storage::open(&cfg).unwrap()
    }

    fn put(s: &Storage, key: &[u8], value: Option<&[u8]>) {
        let mut b = s.batch();
        match value {
            Some(v) => b.put(Family::Entities, key, v).unwrap(),
            None => b.delete(Family::Entities, key).unwrap(),
        }
        s.commit(b).unwrap();
    }

    #[test]
    fn put_get_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            put(&s, b"t:1", Some(br#"{"a":1}"#));
            put(&s, b"t:1", Some(br#"{"a":2}"#));
            assert_eq!(
                s.with_entity(b"t:1", |v| v.map(|b| b.to_vec())).unwrap(),
                Some(br#"{"a":2}"#.to_vec())
            );
            put(&s, b"t:2", Some(b"{}"));
            assert!(s.entity_exists(b"t:2").unwrap());
            put(&s, b"t:2", None);
            assert!(!s.entity_exists(b"t:2").unwrap());
            let mut b = s.batch();
            b.put(Family::Meta, b"m", b"1").unwrap();
            b.put(Family::Indexes, b"i", b"").unwrap();
            assert_eq!(b.len(), 2);
            s.commit_synced(b).unwrap();
            s.flush().unwrap();
            assert_eq!(s.stats().files_per_level.len(), 7);
        }
        let s = open(dir.path());
        assert!(s.with_entity(b"t:1", |v| v.is_some()).unwrap());
        assert!(!s.with_entity(b"t:2", |v| v.is_some()).unwrap());
        assert_eq!(s.meta_get(b"m").unwrap(), Some(b"1".to_vec()));
    }

    /// A group is its changes concatenated in order: later writes of a key
    /// win, deletes and range deletes apply where they stand, every family
    /// is reached, and the group can be reused after `clear`.
    #[test]
    fn a_group_commits_its_changes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        put(&s, b"t:gone", Some(b"{}"));
        put(&s, b"r:1", Some(b"{}"));
        let mut g = GroupBatch::default();
        assert!(g.is_empty());
        let mut b = s.batch();
        b.put(Family::Entities, b"t:1", br#"{"v":1}"#).unwrap();
        b.put(Family::Indexes, b"i1", b"").unwrap();
        g.append(&b);
        let mut b = s.batch();
        b.put(Family::Entities, b"t:1", br#"{"v":2}"#).unwrap();
        b.delete(Family::Indexes, b"i1").unwrap();
        b.put(Family::Indexes, b"i2", b"").unwrap();
        b.delete(Family::Entities, b"t:gone").unwrap();
        b.delete_range(Family::Entities, b"r:", b"r;").unwrap();
        g.append(&b);
        g.append(&s.batch());
        assert_eq!(g.writes(), 7);
        assert!(g.bytes() > 20);
        s.commit_group(&mut g).unwrap();
        let get = |f, k: &[u8]| s.get_with(f, k, |v| v.map(<[u8]>::to_vec)).unwrap();
        assert_eq!(get(Family::Entities, b"t:1"), Some(br#"{"v":2}"#.to_vec()));
        assert_eq!(get(Family::Indexes, b"i1"), None);
        assert_eq!(get(Family::Indexes, b"i2"), Some(Vec::new()));
        assert_eq!(get(Family::Entities, b"t:gone"), None);
        assert_eq!(get(Family::Entities, b"r:1"), None);
        g.clear();
        assert_eq!((g.writes(), g.bytes()), (0, 0));
        let mut b = s.batch();
        b.put(Family::Entities, b"t:3", b"{}").unwrap();
        g.append(&b);
        s.commit_group(&mut g).unwrap();
        assert!(s.entity_exists(b"t:3").unwrap());
        assert!(s.entity_exists(b"t:1").unwrap());
    }

    /// The reactor's commit: done at once without `sync_writes`, never
    /// with it (an fsync may take milliseconds: the helper thread's job).
    #[test]
    fn a_group_is_committed_now_only_without_sync_writes() {
        for sync in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(&StorageConfig {
                rocksdb_path: dir.path().to_path_buf(),
                memtable_size_mb: 4,
                block_cache_size_mb: 8,
                sync_writes: sync,
                ..StorageConfig::default()
            })
            .unwrap();
            let mut g = GroupBatch::default();
            let mut b = s.batch();
            b.put(Family::Entities, b"t:1", b"{}").unwrap();
            g.append(&b);
            assert_eq!(s.try_commit_group_now(&mut g).unwrap(), !sync);
            assert_eq!(s.entity_exists(b"t:1").unwrap(), !sync);
            if sync {
                s.commit_group(&mut g).unwrap();
                assert!(s.entity_exists(b"t:1").unwrap());
            }
        }
    }

    /// One write of the property below: put (`Some`) or delete a key of
    /// one of two families.
    type Op = (bool, u8, Option<u8>);

    fn apply_op(b: &mut ChangeBatch<'_>, (ix, k, v): &Op) {
        let family = if *ix {
            Family::Indexes
        } else {
            Family::Entities
        };
        let key = [b't', b':', *k];
        match v {
            Some(v) => b.put(family, &key, &[*v]).unwrap(),
            None => b.delete(family, &key).unwrap(),
        }
    }

    fn state(s: &Storage) -> Vec<(bool, u8, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        for ix in [false, true] {
            let family = if ix {
                Family::Indexes
            } else {
                Family::Entities
            };
            for k in 0..8u8 {
                let v = s.get_with(family, &[b't', b':', k], |v| v.map(<[u8]>::to_vec));
                out.push((ix, k, v.unwrap()));
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]
        /// Changes committed as groups (any split into groups, any number
        /// of writes per change) leave the same state as the same changes
        /// committed one by one.
        #[test]
        fn groups_equal_one_by_one_commits(
            changes in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::bool::ANY, 0u8..8, proptest::option::of(proptest::num::u8::ANY)),
                    0..4,
                ),
                1..24,
            ),
            cuts in proptest::collection::vec(proptest::bool::ANY, 24),
        ) {
            let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (one, grouped) = (open(d1.path()), open(d2.path()));
            let mut g = GroupBatch::default();
            for (i, change) in changes.iter().enumerate() {
                let mut b = one.batch();
                change.iter().for_each(|op| apply_op(&mut b, op));
                one.commit(b).unwrap();
                let mut b = grouped.batch();
                change.iter().for_each(|op| apply_op(&mut b, op));
                g.append(&b);
                if cuts[i] {
                    grouped.commit_group(&mut g).unwrap();
                    g.clear();
                }
            }
            grouped.commit_group(&mut g).unwrap();
            proptest::prop_assert_eq!(state(&one), state(&grouped));
        }
    }
}
