//! Backups and verification: a consistent copy of the database an operator
//! can restore, and a check that a database (live, or a backup) is intact.
//!
//! * [`checkpoint`]: a backup is a RocksDB checkpoint (hard links where the
//!   filesystem allows) in `<root>/checkpoint_<ms>/.rocksdb/`, described by
//!   `manifest.json`; retention after a successful backup.
//! * [`manifest`]: the manifest (the guide's fields plus what restore,
//!   verify and point-in-time recovery need: a SHA-256 per file, the RocksDB
//!   and change-feed sequences, the format version, the column families).
//! * [`verify`]: block checksums of every family and THEMIS's invariants
//!   (index entries ⇔ entities, change-feed sequences, records decode),
//!   over any [`ReadView`](crate::storage::ReadView).
//! * [`offline`]: `themis_server --backup DIR` and `--verify DIR`.
//! * [`http`]: `POST /api/admin/backup` and `POST /api/admin/verify`.
//! * [`archive`]: continuous WAL archiving (`storage.wal_archive_path`).
//! * [`restore`]: `themis_server --restore`: a backup plus archived WAL,
//!   to the latest archived state or cut at a time or sequence.
//!
//! Invariants:
//! * Backups and verifications never run on a reactor (the admin lane of
//!   `node::blocking`), and at most one of each runs in a server at a time
//!   ([`Backups`]; a second request gets 409 at once, it is not queued).
//! * A backup directory appears under its final name only once its
//!   checkpoint and manifest are complete (it is built under a `.tmp-`
//!   name and renamed), and old backups are pruned only after that.
//! * Reading for checksums and verification is paced to
//!   `backup.io_limit_mb_per_s`, so a backup or a verification does not
//!   take the disk away from requests.

pub mod archive;
pub mod checkpoint;
pub mod http;
pub mod manifest;
pub mod migrate;
pub mod offline;
pub mod restore;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node-wide part: which admin operations are running.
#[derive(Debug, Default)]
pub struct Backups {
    backup_running: Arc<AtomicBool>,
    verify_running: Arc<AtomicBool>,
    /// Asks a running verification to stop (a cancel request, shutdown).
    cancel: Arc<AtomicBool>,
}

/// Held while an operation runs (it moves into the blocking job); frees
/// its slot when dropped.
pub struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Backups {
    /// Claims the one backup slot; `None` while a backup runs.
    pub fn start_backup(&self) -> Option<Running> {
        claim(&self.backup_running)
    }

    /// Claims the one verification slot; `None` while one runs.
    pub fn start_verify(&self) -> Option<Running> {
        let running = claim(&self.verify_running)?;
        self.cancel.store(false, Ordering::Release);
        Some(running)
    }

    /// Whether a verification is running.
    pub fn verifying(&self) -> bool {
        self.verify_running.load(Ordering::Acquire)
    }

    /// Makes a running verification stop at its next check.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// The flag a verification polls.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

fn claim(flag: &Arc<AtomicBool>) -> Option<Running> {
    flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .ok()
        .map(|_| Running(flag.clone()))
}

/// Paces reads to a byte rate: after each chunk, sleeps as long as the
/// bytes so far are ahead of the rate. A rate of 0 never sleeps.
pub struct Pace {
    bytes_per_s: u64,
    start: Instant,
    bytes: u64,
}

impl Pace {
    pub fn mb_per_s(mb: u32) -> Pace {
        Pace {
            bytes_per_s: u64::from(mb) << 20,
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` bytes read, sleeping if they came too fast.
    pub fn read(&mut self, n: u64) {
        self.bytes += n;
        if self.bytes_per_s == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_s as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed + Duration::from_millis(5) {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2025-10-28T02:00:15Z` for a Unix time in milliseconds (UTC).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_730_080_815_000), "2024-10-28T02:00:15Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn one_backup_and_one_verify_at_a_time() {
        let b = Backups::default();
        let first = b.start_backup();
        assert!(first.is_some());
        assert!(b.start_backup().is_none());
        assert!(b.start_verify().is_some(), "independent slots");
        drop(first);
        assert!(b.start_backup().is_some());
    }

    #[test]
    fn pace_sleeps_to_the_rate() {
        let mut p = Pace::mb_per_s(100);
        let t = Instant::now();
        p.read(20 << 20);
        assert!(t.elapsed() >= Duration::from_millis(190));
        let mut free = Pace::mb_per_s(0);
        let t = Instant::now();
        free.read(1 << 40);
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
