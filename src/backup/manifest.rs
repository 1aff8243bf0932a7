//! `manifest.json`: what a backup holds and how to check it.
//!
//! The guide's fields (`timestamp`, `backup_time`, `db_path`,
//! `backup_type`, `checkpoint_size_bytes`, `wal_file_count`,
//! `retention_days`) plus what verification and recovery need: every
//! file with its size and SHA-256, RocksDB's sequence, the change feed's
//! position, the on-disk format and THEMIS versions, the column families.

use super::Pace;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The file name of the manifest inside a backup directory.
pub const FILE: &str = "manifest.json";
/// The folder of the checkpoint inside a backup directory (the guide's).
pub const DATA_DIR: &str = ".rocksdb";

/// Where the change feed stood in the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FeedPosition {
    /// The oldest event kept (events before it were pruned).
    pub first_sequence: u64,
    /// The last event in the checkpoint: the backup holds every change up
    /// to it (except `in_flight`) and none after it.
    pub sequence: u64,
    /// Sequences below `sequence` that were taken by writes still
    /// committing when the checkpoint was cut: the live database got them
    /// a moment later, the backup does not have them (at most one per
    /// core). Holes left by failed writes are not listed.
    pub in_flight: Vec<u64>,
}

/// One file of the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileSum {
    /// Relative to the backup directory (`.rocksdb/000012.sst`).
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// When the checkpoint was cut, Unix milliseconds (the directory's
    /// `checkpoint_<timestamp>` name).
    pub timestamp: u64,
    /// The same instant, RFC 3339 UTC.
    pub backup_time: String,
    /// The database that was backed up.
    pub db_path: PathBuf,
    /// `checkpoint`; `checkpoint_with_wal` once archived WAL is added.
    pub backup_type: String,
    /// Bytes of all checkpoint files.
    pub checkpoint_size_bytes: u64,
    /// WAL files inside the checkpoint (`*.log`), plus archived ones.
    pub wal_file_count: u64,
    pub retention_days: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub themis_version: String,
    /// The on-disk format version (`storage::format`).
    pub format_version: u32,
    /// RocksDB's last sequence number in the checkpoint.
    pub rocksdb_sequence: u64,
    pub changefeed: FeedPosition,
    pub column_families: Vec<String>,
    /// How long the backup took, milliseconds.
    pub duration_ms: u64,
    pub files: Vec<FileSum>,
}

impl Manifest {
    pub fn read(backup: &Path) -> Result<Manifest, String> {
        let p = backup.join(FILE);
        let text = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{} is not a manifest: {e}", p.display()))
    }
}

/// The SHA-256 (hex) and size of a file, reading at most at `pace`. A
/// copied file's pages are dropped from the page cache afterwards (a backup
/// must not evict the database's working set); a hard-linked one's are
/// not, since the live database shares them.
pub fn sha256_file(path: &Path, pace: &mut Pace) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        pace.read(n as u64);
    }
    if f.metadata().map(|m| m.nlink() == 1).unwrap_or(false) {
        drop_from_page_cache(&f);
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    Ok((hex, size))
}

fn drop_from_page_cache(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: advice on an open descriptor; no memory is touched.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// RocksDB's text info log (`LOG`, `LOG.old.*`): written by every open,
/// even a read-only one, and no part of the data, so not checksummed.
fn is_info_log(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n == "LOG" || n.starts_with("LOG.old"))
}

/// Every regular file under `dir` except RocksDB's info logs, relative to
/// `base`, sorted.
pub fn files_under(dir: &Path, base: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() && !is_info_log(&entry.file_name()) {
                if let Ok(rel) = entry.path().strip_prefix(base) {
                    out.push(rel.to_path_buf());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checks every file the manifest lists (size, then SHA-256) and that the
/// checkpoint has no file it does not list. Returns the problems found.
pub fn check_files(backup: &Path, manifest: &Manifest, pace: &mut Pace) -> Vec<String> {
    let mut problems = Vec::new();
    for f in &manifest.files {
        let p = backup.join(&f.path);
        match std::fs::metadata(&p) {
            Err(e) => problems.push(format!("{}: missing ({e})", f.path)),
            Ok(m) if m.len() != f.size => problems.push(format!(
                "{}: size {} differs from the manifest's {}",
                f.path,
                m.len(),
                f.size
            )),
            Ok(_) => match sha256_file(&p, pace) {
                Err(e) => problems.push(format!("{}: unreadable ({e})", f.path)),
                Ok((sum, _)) if sum != f.sha256 => problems.push(format!(
                    "{}: SHA-256 {sum} differs from the manifest's {}",
                    f.path, f.sha256
                )),
                Ok(_) => {}
            },
        }
    }
    match files_under(&backup.join(DATA_DIR), backup) {
        Ok(present) => {
            for p in present {
                let p = p.to_string_lossy();
                if !manifest.files.iter().any(|f| f.path == p) {
                    problems.push(format!("{p}: not listed in the manifest"));
                }
            }
        }
        Err(e) => problems.push(format!("{DATA_DIR}: unreadable ({e})")),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_file_and_a_flipped_byte_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join(DATA_DIR);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("a.sst"), b"abc").unwrap();
        let mut pace = Pace::mb_per_s(0);
        let (sum, size) = sha256_file(&data.join("a.sst"), &mut pace).unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            sum,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let m = Manifest {
            timestamp: 0,
            backup_time: String::new(),
            db_path: PathBuf::new(),
            backup_type: "checkpoint".into(),
            checkpoint_size_bytes: 3,
            wal_file_count: 0,
            retention_days: 7,
            label: None,
            themis_version: String::new(),
            format_version: 1,
            rocksdb_sequence: 0,
            changefeed: FeedPosition::default(),
            column_families: vec![],
            duration_ms: 0,
            files: vec![FileSum {
                path: ".rocksdb/a.sst".into(),
                size,
                sha256: sum,
            }],
        };
        assert!(check_files(dir.path(), &m, &mut pace).is_empty());
        std::fs::write(data.join("a.sst"), b"abd").unwrap();
        std::fs::write(data.join("extra"), b"").unwrap();
        let problems = check_files(dir.path(), &m, &mut pace);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("SHA-256"));
        assert!(problems[1].contains("not listed"));
    }
}
