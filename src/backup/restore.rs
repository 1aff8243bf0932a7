//! `themis_server --restore BACKUP --db TARGET [--wal-archive DIR]
//! [--until CUT]`: a backup's checkpoint plus archived WAL
//! (`backup::archive`) into a new database directory, to the latest
//! archived state or cut at a change-feed sequence, a time or a RocksDB
//! sequence. `scripts/restore.sh --wal-archive/--until` calls it.
//!
//! * Latest: the checkpoint and the archived WAL files from the
//!   checkpoint's own first WAL file on are copied into TARGET and the
//!   database is opened once: RocksDB's recovery replays them (point-in-time
//!   mode: up to the first torn or damaged record, which is where the live
//!   file's copy ends).
//! * Cut: TARGET gets the checkpoint alone; a scratch copy (hard-linked
//!   SST files, copied WAL) with the archived WAL is opened so that its WAL
//!   can be read back batch by batch (`storage::wal`). Every batch THEMIS
//!   commits for an entity write carries its change event (when
//!   `features.cdc` is on), so each batch after the checkpoint's sequence
//!   is kept or dropped by its events: kept when every event in it is at
//!   or before the cut. Change-feed sequences are taken on each core just
//!   before the commit, so two cores' batches can reach the WAL out of
//!   sequence order: the whole WAL is read and every batch at or before
//!   the cut applied, wherever it lies. Batches without an event (catalog
//!   changes, the feed's reservation marks, writes while CDC was off) are
//!   kept when they precede, in the WAL, the last batch kept by its event:
//!   so a first pass finds that batch, a second applies. A RocksDB-sequence
//!   cut (`rocksdb:N`) keeps every batch that ends at or before N.
//! * The scratch copy is deleted at the end; TARGET is flushed, so it needs
//!   no WAL of its own.

use super::archive::{first_wal, last_wal, wal_number};
use super::manifest::{Manifest, DATA_DIR};
use crate::changefeed::{record, store};
use crate::config::StorageConfig;
use crate::storage::wal::WalBatch;
use crate::storage::{Family, Storage};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Everything archived.
    Latest,
    /// Change events up to this change-feed sequence.
    Changefeed(u64),
    /// Change events stamped at or before this Unix time (ms).
    Time(u64),
    /// Batches ending at or before this RocksDB sequence.
    Rocksdb(u64),
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Latest => write!(f, "latest"),
            Cut::Changefeed(n) => write!(f, "seq:{n}"),
            Cut::Time(ms) => write!(f, "time:{}", super::rfc3339(*ms)),
            Cut::Rocksdb(n) => write!(f, "rocksdb:{n}"),
        }
    }
}

/// `--until`: `seq:N` or `N` (change-feed sequence), `rocksdb:N`, `ms:N`
/// (Unix milliseconds) or an RFC 3339 time (`2026-11-25T14:00:00Z`).
pub fn parse_until(s: &str) -> Result<Cut, String> {
    let num = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("--until {s:?}: {v:?} is not a non-negative integer"))
    };
    if let Some(v) = s.strip_prefix("seq:") {
        return num(v).map(Cut::Changefeed);
    }
    if let Some(v) = s.strip_prefix("rocksdb:") {
        return num(v).map(Cut::Rocksdb);
    }
    if let Some(v) = s.strip_prefix("ms:") {
        return num(v).map(Cut::Time);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return num(s).map(Cut::Changefeed);
    }
    let t: jiff::Timestamp = s.parse().map_err(|e| {
        format!(
            "--until {s:?}: not seq:N, rocksdb:N, ms:N nor an RFC 3339 time with an offset \
             (2026-11-25T14:00:00Z): {e}"
        )
    })?;
    u64::try_from(t.as_millisecond())
        .map(Cut::Time)
        .map_err(|_| format!("--until {s:?}: before 1970"))
}

/// What a restore did (printed as JSON).
#[derive(Debug, Serialize)]
pub struct Restored {
    pub target: PathBuf,
    pub backup: PathBuf,
    pub cut: String,
    /// The checkpoint's RocksDB and change-feed sequences.
    pub backup_rocksdb_sequence: u64,
    pub backup_changefeed_sequence: u64,
    /// Archived WAL files used.
    pub wal_files: usize,
    /// The restored database's last RocksDB sequence, last change event
    /// and that event's time.
    pub rocksdb_sequence: u64,
    pub changefeed_sequence: Option<u64>,
    pub last_event_ms: Option<u64>,
    /// Cut restores: WAL batches after the checkpoint applied and dropped,
    /// and how many of the applied ones carried no change event.
    pub batches_applied: u64,
    pub batches_dropped: u64,
    pub batches_without_event_applied: u64,
    /// Batches dropped because they held events on both sides of the cut
    /// (a batch is applied whole or not at all).
    pub batches_straddling_cut: u64,
    /// Why reading the archived WAL stopped early, if it did (a gap in the
    /// archive): the restore holds what precedes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_read_error: Option<String>,
    pub duration_ms: u64,
}

fn io_err<'a>(what: &'a str, p: &'a Path) -> impl FnOnce(std::io::Error) -> String + 'a {
    move |e| format!("cannot {what} {}: {e}", p.display())
}

/// The archived WAL files a restore of `m` needs, in number order. The
/// archive must hold the checkpoint's last WAL file (the one being written
/// when the backup was cut): else it does not continue this backup.
fn archived_wal(archive: &Path, m: &Manifest) -> Result<Vec<PathBuf>, String> {
    let from = first_wal(m).unwrap_or(0);
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(archive)
        .map_err(io_err("read the WAL archive", archive))?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str().and_then(wal_number)?;
            (n >= from).then(|| (n, e.path()))
        })
        .collect();
    out.sort();
    if let Some(last) = last_wal(m) {
        if !out.iter().any(|(n, _)| *n == last) {
            return Err(format!(
                "the WAL archive {} does not continue this backup: it lacks WAL file {last:06}.log, \
                 the one the backup was cut in (archiving started after the backup, or the \
                 archive belongs to another database)",
                archive.display()
            ));
        }
    }
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// Copies the checkpoint's files into `to` (created); SST files are
/// hard-linked when `link_sst` and the filesystem allows (RocksDB never
/// changes an SST file), everything else is copied.
fn copy_checkpoint(data: &Path, to: &Path, link_sst: bool) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(io_err("create", to))?;
    for e in std::fs::read_dir(data).map_err(io_err("read", data))? {
        let e = e.map_err(io_err("read", data))?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n == "LOCK" || n == "LOG" || n.starts_with("LOG.old") || !e.path().is_file() {
            continue;
        }
        let dest = to.join(&name);
        if link_sst && n.ends_with(".sst") && std::fs::hard_link(e.path(), &dest).is_ok() {
            continue;
        }
        std::fs::copy(e.path(), &dest).map_err(io_err("copy", &e.path()))?;
    }
    Ok(())
}

fn copy_wal(files: &[PathBuf], to: &Path) -> Result<(), String> {
    for f in files {
        let name = f.file_name().unwrap_or_default();
        std::fs::copy(f, to.join(name)).map_err(io_err("copy", f))?;
    }
    Ok(())
}

fn open_target(path: &Path) -> Result<Storage, String> {
    Storage::open(&StorageConfig {
        rocksdb_path: path.to_path_buf(),
        memtable_size_mb: 64,
        block_cache_size_mb: 64,
        ..StorageConfig::default()
    })
    .map_err(|e| e.to_string())
}

/// The last change event of a database: its sequence and time.
fn last_event(s: &Storage) -> Result<Option<(u64, Option<u64>)>, String> {
    let Some((_, last)) = store::bounds(s).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let ts = s
        .get_with(Family::Changefeed, &store::seq_key(last), |v| {
            v.and_then(record::timestamp_of)
        })
        .map_err(|e| e.to_string())?;
    Ok(Some((last, ts)))
}

/// The change events a batch carries: (sequence, time).
fn events(b: &WalBatch, feed_cf: u32) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    b.puts(feed_cf, |k, v| {
        if let (Ok(k), Some(ts)) = (<[u8; 8]>::try_from(k), record::timestamp_of(v)) {
            out.push((u64::from_be_bytes(k), ts));
        }
    });
    out
}

/// Whether an event is at or before the cut.
fn within(cut: Cut, (seq, ts): (u64, u64)) -> bool {
    match cut {
        Cut::Changefeed(n) => seq <= n,
        Cut::Time(t) => ts <= t,
        Cut::Latest | Cut::Rocksdb(_) => true,
    }
}

/// Restores `backup` (a `checkpoint_<ms>` directory) into `target` (absent
/// or empty) with the archived WAL in `archive`, up to `cut`. Blocking.
pub fn run(
    backup: &Path,
    target: &Path,
    archive: Option<&Path>,
    cut: Cut,
) -> Result<Restored, String> {
    let started = Instant::now();
    let m = Manifest::read(backup)?;
    let data = backup.join(DATA_DIR);
    if !data.join("CURRENT").is_file() {
        return Err(format!("no checkpoint at {}", data.display()));
    }
    if std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "Database path not empty: {} (restore into an absent or empty directory)",
            target.display()
        ));
    }
    match cut {
        Cut::Changefeed(n) if m.changefeed.sequence > n => {
            return Err(format!(
            "the backup already holds change-feed sequence {} > {n}: restore from an older backup",
            m.changefeed.sequence
        ))
        }
        Cut::Rocksdb(n) if m.rocksdb_sequence > n => {
            return Err(format!(
                "the backup is at RocksDB sequence {} > {n}: restore from an older backup",
                m.rocksdb_sequence
            ))
        }
        _ => {}
    }
    let wal = match archive {
        Some(a) => archived_wal(a, &m)?,
        None => Vec::new(),
    };
    let mut out = Restored {
        target: target.to_path_buf(),
        backup: backup.to_path_buf(),
        cut: cut.to_string(),
        backup_rocksdb_sequence: m.rocksdb_sequence,
        backup_changefeed_sequence: m.changefeed.sequence,
        wal_files: wal.len(),
        rocksdb_sequence: 0,
        changefeed_sequence: None,
        last_event_ms: None,
        batches_applied: 0,
        batches_dropped: 0,
        batches_without_event_applied: 0,
        batches_straddling_cut: 0,
        wal_read_error: None,
        duration_ms: 0,
    };
    copy_checkpoint(&data, target, false)?;
    let storage = if cut == Cut::Latest {
        copy_wal(&wal, target)?;
        open_target(target)?
    } else {
        let storage = open_target(target)?;
        if let (Cut::Time(t), Some((seq, Some(ts)))) = (cut, last_event(&storage)?) {
            if ts > t {
                return Err(format!(
                    "the backup already holds change event {seq} of {} (after the cut {}): \
                     restore from an older backup",
                    super::rfc3339(ts),
                    super::rfc3339(t)
                ));
            }
        }
        if !wal.is_empty() {
            replay_cut(&storage, &data, target, &wal, cut, &mut out)?;
        }
        storage
    };
    storage.flush().map_err(|e| e.to_string())?;
    out.rocksdb_sequence = storage.latest_sequence();
    if let Some((seq, ts)) = last_event(&storage)? {
        out.changefeed_sequence = Some(seq);
        out.last_event_ms = ts;
    }
    out.duration_ms = started.elapsed().as_millis() as u64;
    Ok(out)
}

/// The cut replay: reads the archived WAL back from a scratch copy and
/// applies the batches the cut keeps to `storage` (the checkpoint).
fn replay_cut(
    storage: &Storage,
    data: &Path,
    target: &Path,
    wal: &[PathBuf],
    cut: Cut,
    out: &mut Restored,
) -> Result<(), String> {
    let scratch = scratch_dir(target);
    let _remove = RemoveOnDrop(scratch.clone());
    copy_checkpoint(data, &scratch, true)?;
    copy_wal(wal, &scratch)?;
    let source = Storage::open_wal_source(&scratch).map_err(|e| e.to_string())?;
    let feed_cf = source
        .family_id(Family::Changefeed)
        .map_err(|e| e.to_string())?;
    let start = storage.latest_sequence();
    let end = source.latest_sequence();

    // Pass 1: the last batch kept by its events (RocksDB sequence).
    let last_kept = match cut {
        Cut::Rocksdb(n) => n,
        _ => {
            let (mut last_kept, mut any_event, mut any_without) = (0, false, false);
            for b in source.wal_since(start).map_err(|e| e.to_string())? {
                let Ok(b) = b else { break };
                let ev = events(&b, feed_cf);
                any_event |= !ev.is_empty();
                any_without |= ev.is_empty();
                if !ev.is_empty() && ev.iter().all(|e| within(cut, *e)) {
                    last_kept = b.sequence();
                }
            }
            if !any_event && any_without {
                return Err(format!(
                    "the archived WAL after the backup holds writes but no change events \
                     (features.cdc was off): a cut by change-feed sequence or time cannot place \
                     them; restore the latest state, or cut by RocksDB sequence \
                     (--until rocksdb:N, the backup is at {start}, the archive ends at {end})"
                ));
            }
            last_kept
        }
    };

    // Pass 2: apply.
    let mut batches = source.wal_since(start).map_err(|e| e.to_string())?;
    let mut seen = start;
    for b in batches.by_ref() {
        let b = match b {
            Ok(b) => b,
            Err(e) => {
                out.wal_read_error = Some(e.to_string());
                break;
            }
        };
        seen = b.last_sequence();
        let ev = events(&b, feed_cf);
        let keep = match cut {
            Cut::Rocksdb(n) => b.last_sequence() <= n,
            _ if ev.is_empty() => b.sequence() <= last_kept,
            _ => {
                let inside = ev.iter().filter(|e| within(cut, **e)).count();
                if inside > 0 && inside < ev.len() {
                    out.batches_straddling_cut += 1;
                }
                inside == ev.len()
            }
        };
        if keep {
            storage.apply(&b).map_err(|e| e.to_string())?;
            out.batches_applied += 1;
            if ev.is_empty() {
                out.batches_without_event_applied += 1;
            }
        } else {
            out.batches_dropped += 1;
        }
    }
    if out.wal_read_error.is_none() && seen < end {
        out.wal_read_error = Some(match batches.status() {
            Err(e) => format!("WAL read stopped at RocksDB sequence {seen} of {end}: {e}"),
            Ok(()) => format!("WAL read stopped at RocksDB sequence {seen} of {end}"),
        });
    }
    drop(source);
    Ok(())
}

/// A scratch directory next to `target`.
fn scratch_dir(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    let parent = target.parent().unwrap_or(Path::new("."));
    parent.join(format!(".{name}.restore-scratch-{}", std::process::id()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_forms() {
        assert_eq!(parse_until("seq:42").unwrap(), Cut::Changefeed(42));
        assert_eq!(parse_until("42").unwrap(), Cut::Changefeed(42));
        assert_eq!(parse_until("rocksdb:7").unwrap(), Cut::Rocksdb(7));
        assert_eq!(parse_until("ms:1000").unwrap(), Cut::Time(1000));
        assert_eq!(
            parse_until("2024-10-28T02:00:15Z").unwrap(),
            Cut::Time(1_730_080_815_000)
        );
        assert_eq!(
            parse_until("2024-10-28T03:00:15.5+01:00").unwrap(),
            Cut::Time(1_730_080_815_500)
        );
        for bad in ["", "seq:", "seq:-1", "rocksdb:x", "yesterday", "2024-10-28"] {
            assert!(parse_until(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Cut::Time(1_730_080_815_000).to_string(),
            "time:2024-10-28T02:00:15Z"
        );
    }

    #[test]
    fn events_decide_the_cut() {
        assert!(within(Cut::Changefeed(5), (5, 99)));
        assert!(!within(Cut::Changefeed(5), (6, 1)));
        assert!(within(Cut::Time(10), (100, 10)));
        assert!(!within(Cut::Time(10), (1, 11)));
    }
}
