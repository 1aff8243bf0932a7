//! Work that must not run on a reactor, in one lane per kind of work.
//!
//! RocksDB scans, catalog changes and change-feed catch-up block for
//! milliseconds or more, so they run on the executor's helper threads
//! (`spawn_blocking`). Those threads are one FIFO pool: without lanes, a
//! burst of slow query scans would sit in front of a change-feed
//! subscriber's catch-up read and delay it for as long as the scans take.
//!
//! Each [`Work`] kind therefore has its own lane on every core:
//! * at most `running` jobs of the kind run at once, and the pool has one
//!   thread for every running slot of every lane ([`POOL_THREADS`]), so a
//!   job never waits behind another kind's jobs;
//! * at most `queued` more wait for a slot; beyond that the request is
//!   refused at once with 503 (a bounded queue, not an unbounded pile-up of
//!   waiting requests and their memory).
//!
//! A job cannot be cancelled once it runs (the thread owns it): long jobs
//! check their request's deadline themselves (query scans do, see
//! `query::exec`).

use crate::error::ApiError;
use glommio::sync::Semaphore;
use std::cell::Cell;

/// The kinds of blocking work, each in its own lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Query scans, index range reads and planning counts.
    Scan,
    /// Index builds: reading table chunks, finishing a build.
    Build,
    /// Change-feed catch-up reads and retention.
    Feed,
    /// Catalog changes (index create/drop/rebuild) and other admin work.
    Admin,
    /// Backups and verifications (seconds to hours): their own lane, so a
    /// verification never holds up an index create.
    Backup,
    /// WAL archiving passes (`backup::archive`, core 0 only): never queued
    /// behind a backup, which would stretch the archive's RPO.
    Archive,
    /// Group commits of entity writes (`entity::group`): one at a time per
    /// core, on a thread of their own, so a write's fsync never waits
    /// behind a scan.
    Commit,
    /// Time-series writes too large for the reactor and retention cuts
    /// (`timeseries::writer`): one at a time per core, in order.
    Series,
}

impl Work {
    const ALL: [Work; 8] = [
        Work::Scan,
        Work::Build,
        Work::Feed,
        Work::Admin,
        Work::Backup,
        Work::Archive,
        Work::Commit,
        Work::Series,
    ];

    /// (running, queued) bounds of the kind's lane on one core.
    const fn bounds(self) -> (usize, usize) {
        match self {
            Work::Scan => (2, 256),
            Work::Build => (1, 64),
            Work::Feed => (1, 1024),
            Work::Admin => (1, 64),
            Work::Backup => (1, 8),
            Work::Archive => (1, 1),
            Work::Commit => (1, 1),
            Work::Series => (1, 1),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Work::Scan => "scan",
            Work::Build => "build",
            Work::Feed => "feed",
            Work::Admin => "admin",
            Work::Backup => "backup",
            Work::Archive => "archive",
            Work::Commit => "commit",
            Work::Series => "series",
        }
    }
}

/// Helper threads per core: one per running slot of every lane.
pub const POOL_THREADS: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < Work::ALL.len() {
        n += Work::ALL[i].bounds().0;
        i += 1;
    }
    n
};

struct Lane {
    slots: Semaphore,
    waiting: Cell<usize>,
    max_waiting: usize,
}

/// One core's lanes (lives in its `Core`; not shared between threads).
pub struct Lanes {
    lanes: [Lane; 8],
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes {
            lanes: Work::ALL.map(|w| {
                let (running, queued) = w.bounds();
                Lane {
                    slots: Semaphore::new(running as u64),
                    waiting: Cell::new(0),
                    max_waiting: queued,
                }
            }),
        }
    }
}

impl Lanes {
    /// Runs `job` on a helper thread in `kind`'s lane; 503 when the lane's
    /// queue is full.
    pub async fn run<T, F>(&self, kind: Work, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.enter(kind, job, true).await
    }

    /// Runs `job` in `kind`'s lane, waiting however long the queue is: for
    /// background tasks, whose number is bounded by what starts them (one
    /// retention loop, one build task per index and core).
    pub async fn run_background<T, F>(&self, kind: Work, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.enter(kind, job, false).await
    }

    async fn enter<T, F>(&self, kind: Work, job: F, bounded: bool) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let lane = &self.lanes[kind as usize];
        if bounded && lane.waiting.get() >= lane.max_waiting {
            return Err(ApiError::Unavailable(match kind {
                Work::Scan => "too many queued scans on this core; retry later",
                Work::Build => "too many queued index build steps on this core; retry later",
                Work::Feed => "too many queued change-feed reads on this core; retry later",
                Work::Admin => "too many queued admin operations on this core; retry later",
                Work::Backup => "too many queued backup operations on this core; retry later",
                Work::Archive => "a WAL archiving pass is already queued on this core",
                Work::Commit => "too many queued group commits on this core; retry later",
                Work::Series => "too many queued time-series writes on this core; retry later",
            }));
        }
        lane.waiting.set(lane.waiting.get() + 1);
        let permit = lane.slots.acquire_permit(1).await;
        lane.waiting.set(lane.waiting.get() - 1);
        let _permit = permit.map_err(|_| ApiError::Unavailable("shutting down"))?;
        Ok(glommio::executor().spawn_blocking(job).await)
    }

    /// (kind, running, waiting) for every lane, for `/stats`.
    pub fn usage(&self) -> impl Iterator<Item = (&'static str, usize, usize)> + '_ {
        Work::ALL.iter().map(|w| {
            let lane = &self.lanes[*w as usize];
            let running = w.bounds().0 - lane.slots.available() as usize;
            (w.name(), running, lane.waiting.get())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_pool_has_a_thread_for_every_running_slot() {
        assert_eq!(POOL_THREADS, 9);
    }

    #[test]
    fn a_busy_lane_neither_delays_another_nor_queues_without_bound() {
        LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(POOL_THREADS))
            .spawn(|| async {
                let lanes = Rc::new(Lanes::default());
                let (running, queued) = Work::Scan.bounds();
                let release = Arc::new(AtomicUsize::new(0));
                // Fill the scan lane: `running` jobs that block until
                // released, and a full queue behind them.
                let mut held = Vec::new();
                for _ in 0..running + queued {
                    let (lanes, release) = (lanes.clone(), release.clone());
                    held.push(glommio::spawn_local(async move {
                        lanes
                            .run(Work::Scan, move || {
                                while release.load(Ordering::Acquire) == 0 {
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                            })
                            .await
                    }));
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
                // One more scan is refused at once.
                let refused = lanes.run(Work::Scan, || ()).await;
                assert!(matches!(refused, Err(ApiError::Unavailable(_))));
                // A feed read still runs at once.
                let fed = glommio::timer::timeout(Duration::from_secs(5), async {
                    Ok(lanes.run(Work::Feed, || 7).await)
                })
                .await;
                assert_eq!(fed.ok().and_then(|r| r.ok()), Some(7));
                release.store(1, Ordering::Release);
                for h in held {
                    assert!(h.await.is_ok());
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
