//! The on-disk format version: which layout of keys and values a database
//! directory holds, so a server never misreads data written by a different
//! layout.
//!
//! The version is a `u32` (big-endian) under `meta` key
//! [`FORMAT_VERSION`](super::keyspace::meta::FORMAT_VERSION):
//!
//! | version | layout |
//! | --- | --- |
//! | 0 | no version key: written by THEMIS before versions were recorded |
//! | 1 | today's layout (`storage::keyspace`), with the version key |
//!
//! Start-up ([`check_or_init`]) stamps a database it has just created with
//! [`CURRENT`], serves a database of version [`CURRENT`], and refuses any
//! other: a newer one (written by a newer THEMIS; this build cannot know
//! its layout) and an older one alike. An older database is converted only
//! by `themis-migrate` (copy-and-convert into a new directory), never
//! silently in place, so the original stays untouched until the operator
//! has checked the copy.

use super::keyspace::meta::FORMAT_VERSION;
use super::{Family, Storage, StorageError};
use std::path::Path;

/// The format this build writes and serves.
pub const CURRENT: u32 = 1;

/// The version recorded in a database (0 when none is).
pub fn read(storage: &Storage) -> Result<u32, StorageError> {
    let stored = storage.get_with(Family::Meta, FORMAT_VERSION, |v| v.map(<[u8]>::to_vec))?;
    match stored {
        None => Ok(0),
        Some(v) => match <[u8; 4]>::try_from(v.as_slice()) {
            Ok(b) => Ok(u32::from_be_bytes(b)),
            Err(_) => Err(StorageError::Format(format!(
                "database at {}: the format version record is damaged ({} bytes, expected 4)",
                storage.path().display(),
                v.len()
            ))),
        },
    }
}

/// Records `version` (a synced write).
pub fn write(storage: &Storage, version: u32) -> Result<(), StorageError> {
    let mut b = storage.batch();
    b.put(Family::Meta, FORMAT_VERSION, &version.to_be_bytes())?;
    storage.commit_synced(b)
}

/// Why a version cannot be served, or `None` when it can.
pub fn refusal(path: &Path, version: u32) -> Option<String> {
    use std::cmp::Ordering;
    match version.cmp(&CURRENT) {
        Ordering::Equal => None,
        Ordering::Greater => Some(format!(
            "database at {} has on-disk format version {version}, newer than this THEMIS \
             (v{}) supports (version {CURRENT}); run the THEMIS release that wrote it, \
             or restore a backup made with this one",
            path.display(),
            crate::VERSION
        )),
        Ordering::Less => Some(format!(
            "database at {p} has on-disk format version {version}; this THEMIS serves \
             version {CURRENT} and never converts in place. Back it up \
             (themis_server --db {p} --backup DIR), then convert a copy: \
             themis-migrate --from {p} --to NEW_DIR --version {version} --target {CURRENT} \
             --verify, and start the server on NEW_DIR",
            p = path.display()
        )),
    }
}

/// At start-up: stamps a new (empty) database with [`CURRENT`]; otherwise
/// fails unless its version is [`CURRENT`]. Call before anything else
/// writes to the database.
pub fn check_or_init(storage: &Storage) -> Result<u32, StorageError> {
    let version = read(storage)?;
    if version == 0 && storage.is_empty()? {
        write(storage, CURRENT)?;
        return Ok(CURRENT);
    }
    match refusal(storage.path(), version) {
        None => Ok(version),
        Some(message) => Err(StorageError::Format(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;

    fn open(dir: &Path) -> Storage {
        Storage::open(&StorageConfig {
            rocksdb_path: dir.to_path_buf(),
            memtable_size_mb: 4,
            block_cache_size_mb: 8,
            ..StorageConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_new_database_is_stamped_and_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        assert_eq!(read(&s).unwrap(), 0);
        assert_eq!(check_or_init(&s).unwrap(), CURRENT);
        assert_eq!(read(&s).unwrap(), CURRENT);
        assert_eq!(check_or_init(&s).unwrap(), CURRENT);
    }

    #[test]
    fn unversioned_data_and_newer_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let mut b = s.batch();
        b.put(Family::Entities, b"t:1", b"{}").unwrap();
        s.commit(b).unwrap();
        let e = check_or_init(&s).unwrap_err().to_string();
        assert!(
            e.contains("format version 0") && e.contains("themis-migrate"),
            "{e}"
        );
        write(&s, CURRENT + 1).unwrap();
        let e = check_or_init(&s).unwrap_err().to_string();
        assert!(e.contains("newer than this THEMIS"), "{e}");
        let mut b = s.batch();
        b.put(Family::Meta, FORMAT_VERSION, b"xy").unwrap();
        s.commit(b).unwrap();
        assert!(check_or_init(&s)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
    }
}
