//! Continuous WAL archiving (`storage.wal_archive_path`): every
//! `storage.wal_archive_interval_s` the WAL bytes written since the last
//! pass are appended to same-named copies in the archive, so a backup plus
//! the archive restores what was acknowledged up to one interval ago
//! (`backup::restore`), whether or not RocksDB rolled to a new WAL file.
//!
//! How:
//! * With archiving on, `Storage` turns WAL recycling off (a WAL file is
//!   append-only until it is obsolete) and has RocksDB move obsolete WAL
//!   files into `<db>/archive/` instead of deleting them.
//! * A pass lists the WAL files (live ones in `<db>/`, obsolete ones in
//!   `<db>/archive/`), in number order, and appends to
//!   `<archive>/<number>.log` the bytes past what it copied before — for the
//!   live file, the prefix written so far: every write acknowledged before
//!   the pass started is in it (a write is acknowledged once its WAL record
//!   is written). A record being written at that moment may be cut in
//!   two; restore's point-in-time WAL recovery stops at such a torn tail,
//!   and the next pass appends the rest. Each file is fsynced after its
//!   append. A file in `<db>/archive/` copied whole is deleted there.
//! * A WAL file that disappears before it was copied whole (RocksDB deleted
//!   it after `storage::WAL_KEEP_S`, the archiver having failed for that
//!   long) is a gap: logged, counted, reported by `/health`.
//! * The first time a pass meets a file number whose archive copy already
//!   exists (after a restart), it checks that the copy is a prefix of the
//!   source and resumes after it; a copy that is not (a database restored
//!   from an older backup reuses file numbers) is renamed
//!   `<number>.log.superseded-<ms>` and the file archived afresh.
//! * Passes run on core 0's `archive` lane of `node::blocking` (one at a
//!   time, never on a reactor, never queued behind a backup), and once more
//!   at shutdown after the final flush.

use super::manifest::{self, Manifest};
use crate::node::blocking::Work;
use crate::node::Core;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use themis_io::ShutdownSignal;

/// The subdirectory RocksDB moves obsolete WAL files into.
pub const ROCKSDB_ARCHIVE_DIR: &str = "archive";

/// The node-wide archiver: where to, what it has copied, its figures.
#[derive(Debug, Default)]
pub struct WalArchive {
    dir: Option<PathBuf>,
    /// File number → bytes copied, for the WAL files still present in the
    /// database (touched only by the one pass running).
    copied: Mutex<BTreeMap<u64, u64>>,
    stats: ArchiveStats,
}

/// What `/metrics` and `/stats` show.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Start of the last complete pass (Unix ms): everything acknowledged
    /// before it is in the archive.
    pub archived_through_ms: AtomicU64,
    pub bytes_total: AtomicU64,
    /// WAL files copied whole (closed by RocksDB).
    pub files_total: AtomicU64,
    pub passes_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub gaps_total: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    pub bytes: u64,
    pub files_completed: u64,
    pub gaps: Vec<u64>,
}

/// Starts the archiving loop on core 0 when `storage.wal_archive_path` is
/// set: a pass at once, then one every `storage.wal_archive_interval_s`.
pub fn start(core: &Rc<Core>, shutdown: &ShutdownSignal) {
    if core.id() != 0 || core.node().wal_archive.dir().is_none() {
        return;
    }
    let interval = Duration::from_secs(core.node().config.storage.wal_archive_interval_s.into());
    glommio::spawn_local(archive_loop(core.clone(), shutdown.clone(), interval)).detach();
}

async fn archive_loop(core: Rc<Core>, shutdown: ShutdownSignal, interval: Duration) {
    loop {
        let node = core.node().clone();
        let result = core
            .blocking_background(Work::Archive, move || {
                node.wal_archive.pass(node.storage.path())
            })
            .await;
        match result {
            Ok(Ok(p)) if p.gaps.is_empty() => core.node().failures.clear("wal_archive", None),
            Ok(Ok(p)) => core.report_failure(
                "wal_archive",
                None,
                format!(
                    "WAL files {:?} disappeared before they were archived whole",
                    p.gaps
                ),
            ),
            Ok(Err(e)) => core.report_failure("wal_archive", None, e),
            Err(e) => core.report_failure("wal_archive", None, e.to_string()),
        }
        if shutdown.sleep(interval).await {
            return;
        }
    }
}

/// A WAL file of the database.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    number: u64,
    path: PathBuf,
    /// In `<db>/archive/`: RocksDB will not write to it again.
    closed: bool,
}

/// `000123.log` → 123.
pub fn wal_number(name: &str) -> Option<u64> {
    name.strip_suffix(".log")?.parse().ok()
}

fn wal_name(number: u64) -> String {
    format!("{number:06}.log")
}

fn sources(db: &Path) -> std::io::Result<Vec<Source>> {
    let mut out = Vec::new();
    for (dir, closed) in [
        (db.to_path_buf(), false),
        (db.join(ROCKSDB_ARCHIVE_DIR), true),
    ] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && closed => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            if let Some(number) = e.file_name().to_str().and_then(wal_number) {
                out.push(Source {
                    number,
                    path: e.path(),
                    closed,
                });
            }
        }
    }
    // A file moved to archive/ between the two listings appears twice;
    // keep the archived one.
    out.sort_by_key(|s| (s.number, !s.closed));
    out.dedup_by_key(|s| s.number);
    Ok(out)
}

impl WalArchive {
    pub fn new(dir: Option<PathBuf>) -> WalArchive {
        WalArchive {
            dir,
            ..WalArchive::default()
        }
    }

    /// The archive directory, when archiving is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn stats(&self) -> &ArchiveStats {
        &self.stats
    }

    /// One pass over the WAL files of the database at `db`. Blocking (file
    /// copies and fsyncs): off the reactor.
    pub fn pass(&self, db: &Path) -> Result<Pass, String> {
        let Some(dir) = &self.dir else {
            return Ok(Pass::default());
        };
        let started = super::now_ms();
        let result = self.copy_new_bytes(db, dir);
        match &result {
            Ok(p) => {
                let s = &self.stats;
                s.archived_through_ms.store(started, Ordering::Release);
                s.bytes_total.fetch_add(p.bytes, Ordering::Relaxed);
                s.files_total
                    .fetch_add(p.files_completed, Ordering::Relaxed);
                s.passes_total.fetch_add(1, Ordering::Relaxed);
                s.gaps_total
                    .fetch_add(p.gaps.len() as u64, Ordering::Relaxed);
                for n in &p.gaps {
                    tracing::error!(
                        wal = n,
                        "WAL archive gap: WAL file {} disappeared before it was archived whole",
                        wal_name(*n)
                    );
                }
            }
            Err(_) => {
                self.stats.failures_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn copy_new_bytes(&self, db: &Path, dir: &Path) -> Result<Pass, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut copied = match self.copied.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let found = sources(db).map_err(|e| format!("list the WAL of {}: {e}", db.display()))?;
        let mut pass = Pass::default();
        // Files seen before that are gone: complete ones were forgotten
        // when completed, so these were never copied whole.
        let present: Vec<u64> = found.iter().map(|s| s.number).collect();
        copied.retain(|n, _| {
            let gone = !present.contains(n);
            if gone {
                pass.gaps.push(*n);
            }
            !gone
        });
        let mut created = false;
        for src in &found {
            let dest = dir.join(wal_name(src.number));
            let done = match copied.get(&src.number) {
                Some(n) => *n,
                None => {
                    created = true;
                    resume_point(src, &dest)?
                }
            };
            let mut closed = src.closed;
            let mut copy = append_new(&src.path, &dest, done);
            if !closed
                && copy
                    .as_ref()
                    .is_err_and(|e| e.kind() == ErrorKind::NotFound)
            {
                // Retired by RocksDB since the listing: now in archive/.
                closed = true;
                let moved = db.join(ROCKSDB_ARCHIVE_DIR).join(wal_name(src.number));
                copy = append_new(&moved, &dest, done);
            }
            let (n, len) = match copy {
                Ok(c) => c,
                // Deleted since the listing: the next pass sees it gone.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("archive {}: {e}", src.path.display())),
            };
            pass.bytes += n;
            if closed && done + n == len {
                // Copied whole: RocksDB will never touch it again.
                let retired = db.join(ROCKSDB_ARCHIVE_DIR).join(wal_name(src.number));
                let path = if src.closed { &src.path } else { &retired };
                std::fs::remove_file(path)
                    .map_err(|e| format!("remove {}: {e}", path.display()))?;
                copied.remove(&src.number);
                pass.files_completed += 1;
            } else {
                copied.insert(src.number, done + n);
            }
        }
        if created {
            sync_dir(dir);
        }
        Ok(pass)
    }

    /// Deletes archived WAL files older than the oldest backup in `root`
    /// needs (those numbered below the lowest WAL file in its checkpoint:
    /// their writes are all in its SST files). Returns how many it deleted.
    pub fn prune_for(&self, root: &Path) -> usize {
        let Some(dir) = &self.dir else {
            return 0;
        };
        let Some((_, oldest)) = super::checkpoint::list(root).pop() else {
            return 0;
        };
        let Some(keep_from) = Manifest::read(&oldest).ok().and_then(|m| first_wal(&m)) else {
            return 0;
        };
        let mut deleted = 0;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str().and_then(wal_number) else {
                continue;
            };
            if n < keep_from && std::fs::remove_file(e.path()).is_ok() {
                deleted += 1;
            }
        }
        deleted
    }
}

/// The lowest WAL file number in a backup's checkpoint.
pub fn first_wal(m: &Manifest) -> Option<u64> {
    checkpoint_wal(m).min()
}

/// The highest WAL file number in a backup's checkpoint.
pub fn last_wal(m: &Manifest) -> Option<u64> {
    checkpoint_wal(m).max()
}

fn checkpoint_wal(m: &Manifest) -> impl Iterator<Item = u64> + '_ {
    m.files
        .iter()
        .filter_map(|f| f.path.strip_prefix(&format!("{}/", manifest::DATA_DIR)))
        .filter_map(wal_number)
}

/// Where to resume archiving `src` whose archive copy may already exist:
/// its length when it is a prefix of `src`, else 0 (the copy is moved
/// aside).
fn resume_point(src: &Source, dest: &Path) -> Result<u64, String> {
    let Ok(meta) = std::fs::metadata(dest) else {
        return Ok(0);
    };
    if is_prefix_of(dest, &src.path).unwrap_or(false) {
        return Ok(meta.len());
    }
    let aside = dest.with_extension(format!("log.superseded-{}", super::now_ms()));
    tracing::warn!(
        archived = %dest.display(),
        "the archived WAL file is not a prefix of the database's file of that number \
         (the database was restored from an older backup?): moved to {}",
        aside.display()
    );
    std::fs::rename(dest, &aside).map_err(|e| format!("rename {}: {e}", dest.display()))?;
    Ok(0)
}

/// Whether the bytes of `a` are the first bytes of `b`.
fn is_prefix_of(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        if read_full(&mut fb, &mut bb[..n])? != n || ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Appends `src`'s bytes from `from` to its current end to `dest` (whose
/// length is `from`), fsyncs `dest`; returns (bytes appended, `src`'s
/// length).
fn append_new(src: &Path, dest: &Path, from: u64) -> std::io::Result<(u64, u64)> {
    let f = File::open(src)?;
    let len = f.metadata()?.len();
    if len <= from && (from > 0 || dest.exists()) {
        return Ok((0, len));
    }
    // Created even empty (every WAL file of the history has its copy).
    // Kept: its first `from` bytes are the archive so far.
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(dest)?;
    out.set_len(from)?;
    out.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < len {
        let want = ((len - at) as usize).min(buf.len());
        let n = f.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    out.sync_data()?;
    Ok((at - from, len))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_append_new_bytes_finish_closed_files_and_count_gaps() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db");
        let arch = t.path().join("arch");
        std::fs::create_dir_all(db.join(ROCKSDB_ARCHIVE_DIR)).unwrap();
        let a = WalArchive::new(Some(arch.clone()));
        std::fs::write(db.join("000005.log"), b"hello").unwrap();
        std::fs::write(db.join("OPTIONS-000001"), b"x").unwrap();
        assert_eq!(a.pass(&db).unwrap().bytes, 5);
        // The live file grows: only the new bytes are copied.
        std::fs::write(db.join("000005.log"), b"hello world").unwrap();
        std::fs::write(db.join("000007.log"), b"ab").unwrap();
        let p = a.pass(&db).unwrap();
        assert_eq!((p.bytes, p.files_completed), (8, 0));
        assert_eq!(
            std::fs::read(arch.join("000005.log")).unwrap(),
            b"hello world"
        );
        // RocksDB retires 5 (moved to archive/, one more byte): finished,
        // and deleted there.
        std::fs::write(db.join("archive/000005.log"), b"hello world!").unwrap();
        std::fs::remove_file(db.join("000005.log")).unwrap();
        let p = a.pass(&db).unwrap();
        assert_eq!((p.bytes, p.files_completed), (1, 1));
        assert!(!db.join("archive/000005.log").exists());
        assert_eq!(
            std::fs::read(arch.join("000005.log")).unwrap(),
            b"hello world!"
        );
        // 7 vanishes before being archived whole: a gap.
        std::fs::write(db.join("000007.log"), b"abc").unwrap();
        a.pass(&db).unwrap();
        std::fs::remove_file(db.join("000007.log")).unwrap();
        assert_eq!(a.pass(&db).unwrap().gaps, vec![7]);
        assert_eq!(a.stats().gaps_total.load(Ordering::Relaxed), 1);
        assert!(a.stats().archived_through_ms.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_restart_resumes_a_prefix_and_sets_aside_another_timeline() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db");
        let arch = t.path().join("arch");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::create_dir_all(&arch).unwrap();
        std::fs::write(arch.join("000009.log"), b"abc").unwrap();
        std::fs::write(db.join("000009.log"), b"abcdef").unwrap();
        std::fs::write(arch.join("000010.log"), b"old timeline").unwrap();
        std::fs::write(db.join("000010.log"), b"new").unwrap();
        let a = WalArchive::new(Some(arch.clone()));
        assert_eq!(a.pass(&db).unwrap().bytes, 3 + 3);
        assert_eq!(std::fs::read(arch.join("000009.log")).unwrap(), b"abcdef");
        assert_eq!(std::fs::read(arch.join("000010.log")).unwrap(), b"new");
        let aside: Vec<_> = std::fs::read_dir(&arch)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("superseded"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"old timeline");
    }

    #[test]
    fn the_archive_is_pruned_below_the_oldest_backups_first_wal() {
        let t = tempfile::tempdir().unwrap();
        let (root, arch) = (t.path().join("bk"), t.path().join("arch"));
        for (ms, wal) in [(1000u64, 10u64), (2000, 14)] {
            let b = root.join(format!("{}{ms}", super::super::checkpoint::PREFIX));
            std::fs::create_dir_all(&b).unwrap();
            let m = serde_json::json!({
                "timestamp": ms, "backup_time": "", "db_path": "/db", "backup_type": "checkpoint",
                "checkpoint_size_bytes": 0, "wal_file_count": 1, "retention_days": 7,
                "themis_version": "", "format_version": 1, "rocksdb_sequence": 0,
                "changefeed": {"first_sequence": 1, "sequence": 0, "in_flight": []},
                "column_families": [], "duration_ms": 0,
                "files": [{"path": format!(".rocksdb/{}", wal_name(wal)), "size": 0, "sha256": ""}],
            });
            std::fs::write(b.join(manifest::FILE), m.to_string()).unwrap();
        }
        std::fs::create_dir_all(&arch).unwrap();
        for n in [5, 9, 10, 14, 15] {
            std::fs::write(arch.join(wal_name(n)), b"x").unwrap();
        }
        std::fs::write(arch.join("000003.log.superseded-1"), b"x").unwrap();
        let a = WalArchive::new(Some(arch.clone()));
        assert_eq!(a.prune_for(&root), 2);
        let mut left: Vec<String> = std::fs::read_dir(&arch)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "000003.log.superseded-1",
                "000010.log",
                "000014.log",
                "000015.log"
            ]
        );
        // No backup: nothing is deleted.
        assert_eq!(a.prune_for(&t.path().join("none")), 0);
    }

    #[test]
    fn wal_numbers() {
        assert_eq!(wal_number("000123.log"), Some(123));
        assert_eq!(wal_number("12345678.log"), Some(12_345_678));
        assert_eq!(wal_number("000123.log.superseded-5"), None);
        assert_eq!(wal_number("MANIFEST-000001"), None);
        assert_eq!(wal_name(7), "000007.log");
    }
}
