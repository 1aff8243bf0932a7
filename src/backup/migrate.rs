//! `themis-migrate`: converts a database of an older on-disk format into a
//! new directory (copy-and-convert; the source is opened read-only and
//! never changed), so the server never has to convert in place.
//!
//! Steps known today:
//! * 0 → 1: version 0 is today's layout without the `format.version` key
//!   (every database written before versions were recorded). Every key of
//!   every family is copied as it is and the target is stamped with
//!   version 1.
//!
//! `--dry-run` counts what would be copied; `--verify` runs the
//! verification ([`super::verify`]) on the target and checks that every
//! family has the source's key count.

use super::verify::{self, Limits};
use crate::config::StorageConfig;
use crate::storage::{format, Family, Storage};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Above every key of every family (see `verify`).
const END: &[u8] = &[0xFF; 64];
/// Keys per committed batch while copying.
const BATCH_KEYS: usize = 10_000;

/// What a migration did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub from_version: u32,
    pub target_version: u32,
    pub dry_run: bool,
    /// Keys per family in the source.
    pub keys: BTreeMap<&'static str, u64>,
    /// The verification of the target (`--verify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<verify::Report>,
}

/// Converts `from` (claimed version `version`) into `to` at `target`.
pub fn run(
    from: &Path,
    to: &Path,
    version: u32,
    target: u32,
    dry_run: bool,
    check: bool,
) -> Result<Outcome, String> {
    if target != format::CURRENT {
        return Err(format!(
            "--target {target}: this build writes format version {} only",
            format::CURRENT
        ));
    }
    if version > target {
        return Err(format!(
            "--version {version} is newer than --target {target}"
        ));
    }
    if !from.join("CURRENT").is_file() {
        return Err(format!("no database at {}", from.display()));
    }
    let source = Storage::open_read_only(from).map_err(|e| e.to_string())?;
    let stored = format::read(&source).map_err(|e| e.to_string())?;
    if stored != version {
        return Err(format!(
            "{} has format version {stored}, not --version {version}",
            from.display()
        ));
    }
    if !dry_run && to.exists() && std::fs::read_dir(to).map_or(true, |mut d| d.next().is_some()) {
        return Err(format!("target {} exists and is not empty", to.display()));
    }
    let mut keys = BTreeMap::new();
    let dest = if dry_run {
        None
    } else {
        Some(
            Storage::open(&StorageConfig {
                rocksdb_path: to.to_path_buf(),
                ..StorageConfig::default()
            })
            .map_err(|e| e.to_string())?,
        )
    };
    for family in Family::ALL {
        let mut n = 0u64;
        let mut pending: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut failed = None;
        let flush = |pending: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<(), String> {
            if let Some(d) = &dest {
                let mut b = d.batch();
                for (k, v) in pending.iter() {
                    b.put(family, k, v).map_err(|e| e.to_string())?;
                }
                d.commit(b).map_err(|e| e.to_string())?;
            }
            pending.clear();
            Ok(())
        };
        let scanned = source.scan(family, b"", END, false, |k, v| {
            n += 1;
            if dest.is_some() {
                pending.push((k.to_vec(), v.to_vec()));
                if pending.len() >= BATCH_KEYS {
                    if let Err(e) = flush(&mut pending) {
                        failed = Some(e);
                        return false;
                    }
                }
            }
            true
        });
        match (scanned, failed) {
            (Err(e), _) => return Err(format!("reading {}: {e}", family.name())),
            (_, Some(e)) => return Err(format!("writing {}: {e}", family.name())),
            _ => flush(&mut pending)?,
        }
        keys.insert(family.name(), n);
    }
    let mut verified = None;
    if let Some(d) = dest {
        format::write(&d, target).map_err(|e| e.to_string())?;
        d.flush().map_err(|e| e.to_string())?;
        if check {
            let cancel = AtomicBool::new(false);
            let report = verify::run(
                &d.verifying_view(),
                Limits {
                    deadline: Instant::now() + Duration::from_secs(24 * 3600),
                    io_limit_mb_per_s: 0,
                    cancel: &cancel,
                },
            );
            for (name, n) in &keys {
                let got = report.families.get(name).map_or(0, |c| c.keys);
                let want = if *name == "meta" && version == 0 {
                    n + 1
                } else {
                    *n
                };
                if got != want {
                    return Err(format!("verify: {name} has {got} keys, the source {n}"));
                }
            }
            if !report.ok {
                return Err(format!(
                    "verify: the target has problems: {}",
                    report.problems.join("; ")
                ));
            }
            verified = Some(report);
        }
    }
    Ok(Outcome {
        from_version: version,
        target_version: target,
        dry_run,
        keys,
        verified,
    })
}
