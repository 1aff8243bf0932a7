//! The command-line side: `themis_server --backup DIR` backs up a stopped
//! database (the guide's pre-upgrade step), `themis_server --verify DIR`
//! verifies a backup (its manifest's checksums, then the database opened
//! read-only from a scratch copy-free open) or a stopped database
//! directory. Both print one JSON document and exit non-zero on failure.

use super::checkpoint::{self, Plan};
use super::manifest::{self, Manifest, DATA_DIR};
use super::verify::{self, Limits, Report};
use super::Pace;
use crate::config::Config;
use crate::storage::Storage;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// How long an offline verification may run.
const OFFLINE_VERIFY_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// `--backup DIR`: a backup of the (stopped) database `cfg` names into the
/// backup root `root`, with `cfg`'s retention. Returns the JSON to print.
pub fn backup(cfg: &Config, root: &Path) -> Result<serde_json::Value, String> {
    let db = &cfg.storage.rocksdb_path;
    if !db.join("CURRENT").is_file() {
        return Err(format!("no database at {}", db.display()));
    }
    let storage = Storage::open(&cfg.storage).map_err(|e| {
        format!("{e} (is the server running? back a running server up with POST /api/admin/backup)")
    })?;
    let plan = Plan {
        root: root.to_path_buf(),
        label: Some("offline".into()),
        retention_days: cfg.backup.retention_days,
        retention_count: cfg.backup.retention_count,
        io_limit_mb_per_s: 0,
        visible_before: None,
    };
    let done = checkpoint::create(&storage, &plan).map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "path": done.path,
        "manifest": done.manifest,
        "pruned": done.pruned,
    }))
}

/// What `--verify` found.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub ok: bool,
    /// The backup's manifest, when `DIR` is a backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_timestamp: Option<u64>,
    /// Files whose size or SHA-256 differ from the manifest.
    pub file_problems: Vec<String>,
    /// The verification of the database itself (absent when it could not
    /// be opened).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_error: Option<String>,
}

/// `--verify DIR`: `DIR` is a backup (`manifest.json` + `.rocksdb/`) or a
/// stopped database directory.
pub fn verify(dir: &Path, io_limit_mb_per_s: u32) -> Verified {
    let mut out = Verified {
        ok: false,
        manifest_timestamp: None,
        file_problems: Vec::new(),
        database: None,
        open_error: None,
    };
    let db = if dir.join(manifest::FILE).is_file() {
        match Manifest::read(dir) {
            Ok(m) => {
                out.manifest_timestamp = Some(m.timestamp);
                let mut pace = Pace::mb_per_s(io_limit_mb_per_s);
                out.file_problems = manifest::check_files(dir, &m, &mut pace);
            }
            Err(e) => out.file_problems.push(e),
        }
        dir.join(DATA_DIR)
    } else {
        dir.to_path_buf()
    };
    if !db.join("CURRENT").is_file() {
        out.open_error = Some(format!("no database at {}", db.display()));
        return out;
    }
    match Storage::open_read_only(&db) {
        Ok(storage) => {
            let cancel = AtomicBool::new(false);
            let report = verify::run(
                &storage.verifying_view(),
                Limits {
                    deadline: Instant::now() + OFFLINE_VERIFY_LIMIT,
                    io_limit_mb_per_s,
                    cancel: &cancel,
                },
            );
            out.ok = out.file_problems.is_empty() && report.ok;
            out.database = Some(report);
        }
        Err(e) => out.open_error = Some(e.to_string()),
    }
    out
}
