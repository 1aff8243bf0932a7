//! `ChangeFeed`: change data capture.
//!
//! Every entity PUT and DELETE that changes data appends one event, in the
//! same RocksDB batch as the change (the write hook in [`write`], run last
//! by the write pipeline because it takes the sequence), so after any
//! crash the feed and the data agree. Events carry one server-wide sequence
//! (1, 2, 3, …) handed out by the [`Sequencer`], which also tells readers how
//! far they may read without ever skipping an event that is still being
//! committed on another core.
//!
//! The pieces:
//! * [`sequencer`]: the sequence counter and the visible watermark.
//! * [`record`]: the stored form of an event and its JSON.
//! * [`local`]: each core's cache of recent events and the wake-ups of the
//!   readers (long polls and SSE streams) waiting on that core.
//! * [`store`]: where events are kept (key layout, prune).
//! * [`write`]: the per-core part ([`Local`]) and the write hook.
//! * [`http`]: `/changefeed`, `/changefeed/stream`, `/changefeed/stats`,
//!   `/changefeed/retention`, and their routes.
//! * Retention ([`ChangeFeed::prune_before`], [`ChangeFeed::prune_older_than`])
//!   runs on glommio's blocking pool, never on a reactor.
//!
//! Invariants:
//! * A record with sequence `s` is in RocksDB iff the change it describes
//!   is (one batch).
//! * Readers never read past [`Sequencer::visible`]; below it every
//!   sequence is either readable, pruned (then `< first`), or a hole left by
//!   a write that failed after taking its sequence (counted in
//!   `sequence_gaps`).
//! * `first` (the oldest sequence that may still be read) only grows, and is
//!   persisted by every prune, so sequences are never reused after a restart
//!   even when every record was pruned.
//! * No sequence is ever handed out twice, even across a power loss with
//!   `sync_writes: false` (when the last acknowledged events may be lost
//!   after a reader saw them). Sequences are reserved in blocks of
//!   [`RESERVE_BLOCK`]: the reserved mark is written synced before any
//!   sequence above the previous mark is handed out ([`write::on_write`]
//!   refills it in the background when half a block is left, and inline in
//!   the rare case it ran out). Start-up resumes above the mark; the
//!   numbers it skips are holes, counted in `sequence_gaps`, and a clean
//!   shutdown lowers the mark to the last sequence handed out, so a clean
//!   restart skips none.

pub mod http;
pub mod local;
pub mod record;
pub mod sequencer;
pub mod store;
pub mod write;

pub use write::Local;

use crate::storage::{Storage, StorageError};
use record::{Event, Filter};
use sequencer::Sequencer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Sequences reserved by one synced write of the reserved mark.
pub const RESERVE_BLOCK: u64 = 1 << 16;

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The server-wide change feed.
pub struct ChangeFeed {
    pub sequencer: Sequencer,
    /// The oldest sequence that may still be read.
    first: AtomicU64,
    /// Sequences taken by writes that then failed.
    gaps: AtomicU64,
    /// Serialises prunes (they run on blocking threads, never on a core).
    prune_lock: Mutex<()>,
    /// The durable reserved mark: every sequence handed out is `<=` it.
    reserved: AtomicU64,
    /// A background refill of the reservation is under way.
    refilling: AtomicBool,
    /// Serialises writes of the reserved mark (so it only grows).
    reserve_lock: Mutex<()>,
    /// Test-only: shifts event timestamps (to test age-based retention).
    time_offset_ms: i64,
}

/// What a prune did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PruneOutcome {
    pub deleted: u64,
    pub first_sequence: u64,
}

/// Why a read cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(
        "events after sequence {requested} were pruned; the oldest available sequence is {oldest}"
    )]
    Gone { requested: u64, oldest: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Events read from storage, and how far the read looked.
#[derive(Debug, Default)]
pub struct StoredBatch {
    pub events: Vec<Event>,
    /// Every sequence `<= scanned_to` was examined.
    pub scanned_to: u64,
    /// The read stopped at a limit before `upto`.
    pub more: bool,
}

/// Bounds of one read.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    /// Most records examined (matching or not) by one read.
    pub max_scan: usize,
}

impl ChangeFeed {
    /// Recovers the feed's position from storage.
    pub fn open(
        storage: &Storage,
        cores: usize,
        time_offset_ms: i64,
    ) -> Result<ChangeFeed, StorageError> {
        let pruned_before = store::pruned_before(storage)?;
        let (first, last) = match store::bounds(storage)? {
            Some((first, last)) => (first.max(pruned_before), last),
            None => {
                let last = pruned_before.saturating_sub(1);
                (last + 1, last)
            }
        };
        let first = first.max(1);
        // Resume above every sequence that may have been handed out.
        let resume = last.max(store::reserved(storage)?);
        let reserved = resume.saturating_add(RESERVE_BLOCK);
        store::persist_reserved(storage, reserved)?;
        tracing::info!(
            first_sequence = first,
            latest_sequence = resume,
            skipped = resume - last,
            "change feed recovered"
        );
        Ok(ChangeFeed {
            sequencer: Sequencer::new(cores, resume),
            first: AtomicU64::new(first),
            gaps: AtomicU64::new(resume - last),
            prune_lock: Mutex::new(()),
            reserved: AtomicU64::new(reserved),
            refilling: AtomicBool::new(false),
            reserve_lock: Mutex::new(()),
            time_offset_ms,
        })
    }

    /// The durable reserved mark.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Claims the one background refill; false when one is under way.
    pub(crate) fn start_refill(&self) -> bool {
        !self.refilling.swap(true, Ordering::AcqRel)
    }

    /// Makes the reserved mark cover `seq` with half a block to spare
    /// (a synced write when it must grow). Blocking.
    pub(crate) fn reserve_through(&self, storage: &Storage, seq: u64) -> Result<(), StorageError> {
        let _serial = self.reserve_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.reserved();
        if current >= seq.saturating_add(RESERVE_BLOCK / 2) {
            return Ok(());
        }
        let mark = current.max(seq).saturating_add(RESERVE_BLOCK);
        store::persist_reserved(storage, mark)?;
        self.reserved.store(mark, Ordering::Release);
        Ok(())
    }

    /// Ends a background refill.
    pub(crate) fn end_refill(&self) {
        self.refilling.store(false, Ordering::Release);
    }

    /// At a clean shutdown, when no core writes any more: lowers the mark
    /// to the last sequence handed out, so the next start skips none.
    pub fn close(&self, storage: &Storage) -> Result<(), StorageError> {
        let _serial = self.reserve_lock.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.sequencer.last_allocated();
        store::persist_reserved(storage, last)?;
        self.reserved.store(last, Ordering::Release);
        Ok(())
    }

    /// Every sequence up to this one may be read.
    pub fn latest(&self) -> u64 {
        self.sequencer.visible()
    }

    /// The oldest sequence still stored (may exceed `latest` when empty).
    pub fn first(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    /// Events available now (holes left by failed writes excepted).
    pub fn event_count(&self) -> u64 {
        (self.latest() + 1).saturating_sub(self.first())
    }

    /// The timestamp given to a new event.
    pub fn now_ms(&self) -> u64 {
        (wall_clock_ms() as i64)
            .saturating_add(self.time_offset_ms)
            .max(0) as u64
    }

    /// Counts a sequence taken by a write that then failed.
    pub(crate) fn count_gaps(&self, n: u64) {
        self.gaps.fetch_add(n, Ordering::Relaxed);
    }

    /// Checks that events after `after` are still available; returns where
    /// reading really starts (`after`, or just below `first` for 0).
    pub fn start_after(&self, after: u64) -> Result<u64, FeedError> {
        let first = self.first();
        if after == 0 {
            return Ok(first.saturating_sub(1));
        }
        if after.saturating_add(1) < first {
            return Err(FeedError::Gone {
                requested: after,
                oldest: first,
            });
        }
        Ok(after)
    }

    /// Reads matching events with `after < seq <= upto` from storage.
    /// Sequential I/O: call on a blocking thread.
    pub fn read_stored(
        &self,
        storage: &Storage,
        after: u64,
        upto: u64,
        filter: &Filter,
        limits: ReadLimits,
    ) -> Result<StoredBatch, StorageError> {
        let mut batch = StoredBatch {
            events: Vec::new(),
            scanned_to: after,
            more: false,
        };
        let (mut bytes, mut scanned, mut complete) = (0usize, 0usize, true);
        store::scan(storage, after, upto, |seq, rec| {
            if batch.events.len() >= limits.max_events
                || bytes >= limits.max_bytes
                || scanned >= limits.max_scan
            {
                complete = false;
                return false;
            }
            scanned += 1;
            batch.scanned_to = seq;
            if let Some(e) = Event::from_record(seq, rec) {
                if filter.matches(&e) {
                    bytes += e.json().len();
                    batch.events.push(e);
                }
            }
            true
        })?;
        if complete {
            batch.scanned_to = upto.max(after);
        } else {
            batch.more = true;
        }
        Ok(batch)
    }

    /// Deletes every event with sequence `< before` (clamped to what is
    /// visible). Blocking: run on a blocking thread.
    pub fn prune_before(
        &self,
        storage: &Storage,
        before: u64,
    ) -> Result<PruneOutcome, StorageError> {
        let _guard = self.prune_lock.lock().unwrap_or_else(|p| p.into_inner());
        let first = self.first();
        let before = before.min(self.latest() + 1);
        if before <= first {
            return Ok(PruneOutcome {
                deleted: 0,
                first_sequence: first,
            });
        }
        let mut deleted = 0u64;
        store::scan(storage, first - 1, before - 1, |_, _| {
            deleted += 1;
            true
        })?;
        store::prune(storage, before)?;
        self.first.store(before, Ordering::Release);
        tracing::info!(deleted, first_sequence = before, "change feed pruned");
        Ok(PruneOutcome {
            deleted,
            first_sequence: before,
        })
    }

    /// Deletes every event older than `max_age_ms`. Blocking.
    pub fn prune_older_than(
        &self,
        storage: &Storage,
        max_age_ms: u64,
    ) -> Result<PruneOutcome, StorageError> {
        let cutoff = wall_clock_ms().saturating_sub(max_age_ms);
        let upto = self.latest();
        let mut before = upto + 1;
        store::scan(storage, self.first().saturating_sub(1), upto, |seq, rec| {
            match record::timestamp_of(rec) {
                Some(ts) if ts < cutoff => true,
                _ => {
                    before = seq;
                    false
                }
            }
        })?;
        self.prune_before(storage, before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &std::path::Path) -> Storage {
        let cfg = crate::config::StorageConfig {
            rocksdb_path: dir.to_path_buf(),
            memtable_size_mb: 4,
            block_cache_size_mb: 8,
            ..Default::default()
        };
        Storage::open(&cfg).unwrap()
    }

    #[test]
    fn the_reserved_mark_covers_every_sequence_and_restarts_resume_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let last_handed_out;
        {
            let s = storage(dir.path());
            let feed = ChangeFeed::open(&s, 1, 0).unwrap();
            assert_eq!(feed.reserved(), RESERVE_BLOCK);
            // Half a block handed out: a refill grows the mark by a block.
            for _ in 0..RESERVE_BLOCK / 2 + 1 {
                let seq = feed.sequencer.take(0);
                feed.sequencer.release(0, 0);
                assert!(seq <= feed.reserved());
                if seq + RESERVE_BLOCK / 2 > feed.reserved() {
                    feed.reserve_through(&s, seq).unwrap();
                }
            }
            last_handed_out = feed.sequencer.last_allocated();
            assert!(feed.reserved() >= last_handed_out + RESERVE_BLOCK / 2);
            // A crash: no close.
        }
        let s = storage(dir.path());
        let feed = ChangeFeed::open(&s, 1, 0).unwrap();
        let next = feed.sequencer.take(0);
        feed.sequencer.release(0, 0);
        assert!(next > last_handed_out, "{next} reuses a sequence");
        assert_eq!(feed.gaps(), next - 1, "nothing was stored: all skipped");
        // A clean shutdown: the next start skips nothing.
        feed.close(&s).unwrap();
        drop(feed);
        let feed = ChangeFeed::open(&s, 1, 0).unwrap();
        assert_eq!(feed.sequencer.take(0), next + 1);
        // (Every sequence handed out so far stored nothing: all holes.)
        assert_eq!(feed.gaps(), next);
    }
}
