//! Taking a backup: a RocksDB checkpoint plus its manifest, then
//! retention.
//!
//! Layout (the guide's):
//!
//! ```text
//! <root>/checkpoint_<ms>/
//!     .rocksdb/        the checkpoint (CURRENT, MANIFEST-*, *.sst, *.log, OPTIONS-*)
//!     manifest.json
//! ```
//!
//! The checkpoint flushes the memtables (atomically across families), then
//! hard-links the SST files when the root is on the database's filesystem
//! (copies them otherwise) and copies the live WAL: the I/O of a backup on
//! the same filesystem is the flush plus the WAL copy, whatever the size of
//! the database. The files are then read once for their SHA-256, paced to
//! `backup.io_limit_mb_per_s`.
//!
//! The directory is built as `<root>/.tmp-checkpoint_<ms>` and renamed when
//! complete; retention then deletes complete backups (those with a
//! manifest) that are too old or too many — never the one just made, and
//! never when the new one failed.

use super::manifest::{self, FeedPosition, FileSum, Manifest, DATA_DIR};
use super::Pace;
use crate::changefeed::store;
use crate::storage::{format, Storage, StorageError};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The directory name prefix of a complete backup.
pub const PREFIX: &str = "checkpoint_";
/// The most in-flight sequences a manifest lists.
const MAX_IN_FLIGHT_LISTED: usize = 1024;

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot create checkpoint: {0}")]
    Storage(#[from] StorageError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// What to back up where.
#[derive(Debug, Clone)]
pub struct Plan {
    pub root: PathBuf,
    pub label: Option<String>,
    pub retention_days: u32,
    pub retention_count: u32,
    pub io_limit_mb_per_s: u32,
    /// The change feed's visible watermark read just before the checkpoint
    /// (every sequence up to it was committed or failed); `None` for a
    /// stopped database, where nothing is in flight.
    pub visible_before: Option<u64>,
}

/// A finished backup.
#[derive(Debug)]
pub struct Done {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// Older backups deleted by retention.
    pub pruned: Vec<PathBuf>,
}

/// Takes a backup of `storage` as `plan` says. Blocking (seconds for a
/// large database): off the reactor.
pub fn create(storage: &Storage, plan: &Plan) -> Result<Done, BackupError> {
    let started = Instant::now();
    let root = &plan.root;
    std::fs::create_dir_all(root).map_err(io(format!("create {}", root.display())))?;
    let mut ms = super::now_ms();
    while root.join(format!("{PREFIX}{ms}")).exists() {
        ms += 1;
    }
    let name = format!("{PREFIX}{ms}");
    let tmp = root.join(format!(".tmp-{name}"));
    let result = fill(storage, plan, &tmp, ms, started);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let path = root.join(&name);
    std::fs::rename(&tmp, &path).map_err(io(format!("rename {}", tmp.display())))?;
    sync_dir(root);
    let pruned = prune(
        root,
        &path,
        plan.retention_days,
        plan.retention_count,
        super::now_ms(),
    );
    tracing::info!(
        path = %path.display(),
        bytes = manifest.checkpoint_size_bytes,
        changefeed_sequence = manifest.changefeed.sequence,
        duration_ms = manifest.duration_ms,
        pruned = pruned.len(),
        "backup complete"
    );
    Ok(Done {
        path,
        manifest,
        pruned,
    })
}

/// The checkpoint and manifest of a backup, in `dir`.
fn fill(
    storage: &Storage,
    plan: &Plan,
    dir: &Path,
    ms: u64,
    started: Instant,
) -> Result<Manifest, BackupError> {
    std::fs::create_dir(dir).map_err(io(format!("create {}", dir.display())))?;
    let data = dir.join(DATA_DIR);
    storage.checkpoint(&data)?;

    // What the checkpoint holds, read from the checkpoint itself.
    let (format_version, rocksdb_sequence, changefeed, column_families) = {
        let cp = Storage::open_read_only(&data)?;
        let feed = feed_position(&cp, plan.visible_before)?;
        let cfs = cp.family_names().iter().map(|s| s.to_string()).collect();
        (format::read(&cp)?, cp.latest_sequence(), feed, cfs)
    };

    let mut pace = Pace::mb_per_s(plan.io_limit_mb_per_s);
    let mut files = Vec::new();
    let mut wal_file_count = 0;
    let mut size = 0;
    for rel in manifest::files_under(&data, dir).map_err(io(format!("list {}", data.display())))? {
        let (sha256, n) = manifest::sha256_file(&dir.join(&rel), &mut pace)
            .map_err(io(format!("read {}", rel.display())))?;
        if rel.extension().is_some_and(|e| e == "log") {
            wal_file_count += 1;
        }
        size += n;
        files.push(FileSum {
            path: rel.to_string_lossy().into_owned(),
            size: n,
            sha256,
        });
    }
    let manifest = Manifest {
        timestamp: ms,
        backup_time: super::rfc3339(ms),
        db_path: std::fs::canonicalize(storage.path()).unwrap_or_else(|_| storage.path().into()),
        backup_type: "checkpoint".into(),
        checkpoint_size_bytes: size,
        wal_file_count,
        retention_days: plan.retention_days,
        label: plan.label.clone(),
        themis_version: crate::VERSION.into(),
        format_version,
        rocksdb_sequence,
        changefeed,
        column_families,
        duration_ms: started.elapsed().as_millis() as u64,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    let mpath = dir.join(manifest::FILE);
    write_synced(&mpath, &text).map_err(io(format!("write {}", mpath.display())))?;
    sync_dir(dir);
    Ok(manifest)
}

/// The change feed's position in a checkpoint.
fn feed_position(cp: &Storage, visible_before: Option<u64>) -> Result<FeedPosition, StorageError> {
    let pruned_before = store::pruned_before(cp)?;
    let Some((first, last)) = store::bounds(cp)? else {
        return Ok(FeedPosition {
            first_sequence: pruned_before.max(1),
            sequence: pruned_before.saturating_sub(1),
            in_flight: Vec::new(),
        });
    };
    let mut in_flight = Vec::new();
    if let Some(v) = visible_before.filter(|v| *v < last) {
        let mut expect = v.max(first.saturating_sub(1)) + 1;
        store::scan(cp, v, last, |seq, _| {
            while expect < seq && in_flight.len() < MAX_IN_FLIGHT_LISTED {
                in_flight.push(expect);
                expect += 1;
            }
            expect = seq + 1;
            true
        })?;
    }
    Ok(FeedPosition {
        first_sequence: first.max(pruned_before).max(1),
        sequence: last,
        in_flight,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The complete backups under `root` (a `checkpoint_<ms>` directory with a
/// manifest), newest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(ms) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if e.path().join(manifest::FILE).is_file() {
            out.push((ms, e.path()));
        }
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.0));
    out
}

/// Deletes the complete backups under `root` beyond the newest
/// `count` (0: no limit) or older than `days` (0: no limit), except
/// `keep`. Returns what was deleted; a deletion that fails is logged and
/// left for the next run.
pub fn prune(root: &Path, keep: &Path, days: u32, count: u32, now_ms: u64) -> Vec<PathBuf> {
    let cutoff = now_ms.saturating_sub(u64::from(days) * 86_400_000);
    let mut pruned = Vec::new();
    for (i, (ms, path)) in list(root).into_iter().enumerate() {
        if path == keep {
            continue;
        }
        let too_many = count > 0 && i >= count as usize;
        let too_old = days > 0 && ms < cutoff;
        if !(too_many || too_old) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => pruned.push(path),
            Err(e) => tracing::warn!(path = %path.display(), "retention: cannot delete: {e}"),
        }
    }
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path, ms: u64, complete: bool) -> PathBuf {
        let p = root.join(format!("{PREFIX}{ms}"));
        std::fs::create_dir_all(&p).unwrap();
        if complete {
            std::fs::write(p.join(manifest::FILE), b"{}").unwrap();
        }
        p
    }

    #[test]
    fn retention_keeps_the_newest_and_the_young() {
        let root = tempfile::tempdir().unwrap();
        let day = 86_400_000;
        let now = 100 * day;
        let a = fake(root.path(), now - 30 * day, true);
        let b = fake(root.path(), now - 3 * day, true);
        let c = fake(root.path(), now - 2 * day, true);
        let d = fake(root.path(), now - day, true);
        let partial = fake(root.path(), now - 50 * day, false);
        std::fs::create_dir(root.path().join("unrelated")).unwrap();
        // Age: 7 days removes only `a`.
        assert_eq!(prune(root.path(), &d, 7, 0, now), vec![a.clone()]);
        // Count: the newest 2 stay.
        assert_eq!(prune(root.path(), &d, 0, 2, now), vec![b.clone()]);
        assert!(c.exists() && d.exists() && partial.exists());
        // The one just made is kept even when it is "too old".
        assert!(prune(root.path(), &c, 1, 0, now).is_empty());
        assert!(c.exists());
        assert_eq!(prune(root.path(), &d, 0, 1, now), vec![c.clone()]);
        assert_eq!(list(root.path()), vec![(now - day, d.clone())]);
        assert!(root.path().join("unrelated").exists());
    }

    #[test]
    fn a_backup_of_a_database_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let s = Storage::open(&crate::config::StorageConfig {
            rocksdb_path: db.clone(),
            memtable_size_mb: 4,
            block_cache_size_mb: 8,
            ..Default::default()
        })
        .unwrap();
        format::check_or_init(&s).unwrap();
        let mut b = s.batch();
        b.put(crate::storage::Family::Entities, b"t:1", b"{\"a\":1}")
            .unwrap();
        b.put(crate::storage::Family::Changefeed, &store::seq_key(1), b"x")
            .unwrap();
        b.put(crate::storage::Family::Changefeed, &store::seq_key(3), b"x")
            .unwrap();
        s.commit(b).unwrap();
        let plan = Plan {
            root: dir.path().join("backups"),
            label: Some("t".into()),
            retention_days: 7,
            retention_count: 0,
            io_limit_mb_per_s: 0,
            visible_before: Some(0),
        };
        let done = create(&s, &plan).unwrap();
        let m = &done.manifest;
        assert_eq!(m.format_version, format::CURRENT);
        assert_eq!(m.changefeed.sequence, 3);
        assert_eq!(m.changefeed.in_flight, vec![2]);
        assert_eq!(m.column_families.len(), 6);
        assert!(m.files.iter().any(|f| f.path.ends_with("CURRENT")));
        assert_eq!(Manifest::read(&done.path).unwrap(), *m);
        let mut pace = Pace::mb_per_s(0);
        assert!(manifest::check_files(&done.path, m, &mut pace).is_empty());
        assert!(!dir
            .path()
            .join("backups")
            .join(format!(".tmp-{PREFIX}{}", m.timestamp))
            .exists());
    }
}
