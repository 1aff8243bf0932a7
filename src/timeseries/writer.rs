//! Each core's series writer: the writes of the series it owns that are
//! too large for the reactor, and its retention cuts, run on a helper
//! thread (the `series` lane, `node::blocking`), one job at a time, in the
//! order they were submitted.
//!
//! Why: a series' write is one batch (all or nothing), and building and
//! committing 5,000 or 100,000 points takes milliseconds; inline it would
//! stall every other request of the core for that long.
//!
//! Order: every storage change of a series this core owns is made either
//! inline on the reactor or by this one queue, never both at once. A write
//! runs inline only when it is small ([`INLINE_POINTS`]) *and* no job of
//! its series is queued or running (`pending`); otherwise it is queued
//! behind them. The queue is FIFO with one job running, so the writes of a
//! series are applied in arrival order (last write wins) and each job sees
//! everything before it committed: the "read the rollup, extend it"
//! sequence of [`super::ingest::write_series`] needs no lock. A retention
//! cut is a job too, so a cut and a write never interleave either.
//!
//! The upper bound of a series' stored timestamps (`Local::known`, which
//! lets appends skip the overwrite check) is read on the reactor only when
//! nothing of the series is pending, and updated by the reactor when a job
//! finishes, in job order.
//!
//! Bounds: at most [`MAX_QUEUED_JOBS`] jobs and [`MAX_QUEUED_POINTS`]
//! points wait per core; beyond that a write is refused with 503 (a
//! retention cut waits instead).

use super::ingest::{self, SeriesWrite};
use crate::error::ApiError;
use crate::mesh::{Rpc, Served};
use crate::node::blocking::Work;
use crate::node::Core;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Writes of at most this many points of one series run inline on the
/// owner's reactor (tens of microseconds) when nothing of the series is
/// queued.
pub const INLINE_POINTS: usize = 64;
/// Most jobs waiting on one core.
pub const MAX_QUEUED_JOBS: usize = 4_096;
/// Most points waiting on one core (about 16 bytes each, plus labels).
pub const MAX_QUEUED_POINTS: usize = 2_000_000;

/// What a job did.
pub enum Done {
    /// Per series of the job: its new timestamp bound, or why it failed.
    Writes(Vec<Result<i64, String>>),
    /// A retention cut.
    Cut(Result<(), ApiError>),
}

struct Job {
    ids: Vec<u64>,
    points: usize,
    work: Box<dyn FnOnce() -> Done + Send>,
    reply: oneshot::Sender<Result<Done, ApiError>>,
}

/// One core's queue (part of `timeseries::Local`).
#[derive(Default)]
pub struct Queue {
    tx: RefCell<Option<Rc<LocalSender<Job>>>>,
    /// Series with a job queued or running: how many.
    pending: RefCell<HashMap<u64, u32>>,
    queued_points: Cell<usize>,
}

impl Queue {
    fn is_pending(&self, id: u64) -> bool {
        self.pending.borrow().contains_key(&id)
    }

    fn hold(&self, ids: &[u64], points: usize) {
        let mut p = self.pending.borrow_mut();
        for id in ids {
            *p.entry(*id).or_default() += 1;
        }
        self.queued_points.set(self.queued_points.get() + points);
    }

    fn release(&self, ids: &[u64], points: usize) {
        let mut p = self.pending.borrow_mut();
        for id in ids {
            if let Some(n) = p.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    p.remove(id);
                }
            }
        }
        self.queued_points
            .set(self.queued_points.get().saturating_sub(points));
    }
}

/// Starts the core's writer task (once per core, at start-up).
pub fn start(core: &Rc<Core>) {
    let (tx, rx) = local_channel::new_bounded(MAX_QUEUED_JOBS);
    *core.timeseries().queue.tx.borrow_mut() = Some(Rc::new(tx));
    glommio::spawn_local(run(core.clone(), rx)).detach();
}

async fn run(core: Rc<Core>, rx: LocalReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Job {
            ids,
            points,
            work,
            reply,
        } = job;
        let out = core.blocking_background(Work::Series, work).await;
        let local = core.timeseries();
        if let Ok(Done::Writes(results)) = &out {
            for (id, r) in ids.iter().zip(results) {
                if let Ok(bound) = r {
                    local.remember(*id, *bound);
                }
            }
        }
        local.queue.release(&ids, points);
        // The submitter may have gone (its client hung up): the job is done
        // all the same.
        let _ = reply.send(out);
    }
}

/// Queues `work` behind every job already queued on this core. `wait`:
/// wait for room (background work) instead of a 503 when the queue is
/// full. The series are marked pending at once, so writes of them
/// submitted later queue behind this job.
async fn submit(
    core: &Core,
    ids: Vec<u64>,
    points: usize,
    work: Box<dyn FnOnce() -> Done + Send>,
    wait: bool,
) -> Result<Done, ApiError> {
    let rx = enqueue(core, ids, points, work, wait)?;
    match rx {
        Enqueued::Now(rx) => rx.await.map_err(|_| closed())?,
        Enqueued::Wait(job, rx) => {
            let queue = &core.timeseries().queue;
            let (ids, points) = (job.ids.clone(), job.points);
            let tx = queue.tx.borrow().clone();
            let sent = match tx {
                Some(tx) => tx.send(*job).await.is_ok(),
                None => false,
            };
            if !sent {
                queue.release(&ids, points);
                return Err(closed());
            }
            rx.await.map_err(|_| closed())?
        }
    }
}

fn closed() -> ApiError {
    ApiError::Unavailable("the time-series writer of this core has stopped (shutting down)")
}

enum Enqueued {
    Now(oneshot::Receiver<Result<Done, ApiError>>),
    Wait(Box<Job>, oneshot::Receiver<Result<Done, ApiError>>),
}

/// The synchronous part of [`submit`]: marks the series pending and
/// queues the job (or hands it back to wait for room).
fn enqueue(
    core: &Core,
    ids: Vec<u64>,
    points: usize,
    work: Box<dyn FnOnce() -> Done + Send>,
    wait: bool,
) -> Result<Enqueued, ApiError> {
    let queue = &core.timeseries().queue;
    if !wait && queue.queued_points.get() + points > MAX_QUEUED_POINTS {
        return Err(ApiError::Unavailable(
            "too many time-series points queued on this core; retry later",
        ));
    }
    let (reply, rx) = oneshot::channel();
    queue.hold(&ids, points);
    let job = Job {
        ids,
        points,
        work,
        reply,
    };
    let tx = queue.tx.borrow();
    let Some(tx) = tx.as_ref() else {
        queue.release(&job.ids, points);
        return Err(closed());
    };
    match tx.try_send(job) {
        Ok(()) => Ok(Enqueued::Now(rx)),
        Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(job))) if wait => {
            Ok(Enqueued::Wait(Box::new(job), rx))
        }
        Err(e) => {
            let job = match e {
                glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(job))
                | glommio::GlommioError::Closed(glommio::ResourceType::Channel(job)) => Some(job),
                _ => None,
            };
            if let Some(job) = job {
                queue.release(&job.ids, job.points);
            }
            Err(ApiError::Unavailable(
                "too many time-series writes queued on this core; retry later",
            ))
        }
    }
}

/// Writes series on the core that owns them; answers one result per
/// series (a failed commit fails only its series).
pub struct PutSeries(pub Vec<SeriesWrite>);

impl Rpc<Core> for PutSeries {
    type Answer = Vec<Result<(), String>>;
    // The wait for a queued job must not hold up the calls behind it; the
    // order of writes is fixed synchronously, by `write_here`.
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        let f = write_here(core, self.0);
        Served::Later(Box::pin(async move { Ok(f.await) }))
    }
}

/// Writes series this core owns, each as one batch: small ones inline when
/// nothing of their series is pending, the rest as one job of the queue.
/// Inline writes and the job's place in the queue happen before this
/// returns (so calls served in order are applied in order); the future
/// waits for the job.
pub fn write_here(
    core: &Core,
    series: Vec<SeriesWrite>,
) -> LocalBoxFuture<'static, Vec<Result<(), String>>> {
    let local = core.timeseries();
    let storage = &core.node().storage;
    let mut results: Vec<Option<Result<(), String>>> = vec![None; series.len()];
    let mut queued: Vec<(usize, SeriesWrite, Option<i64>)> = Vec::new();
    for (i, w) in series.into_iter().enumerate() {
        if core.own(&w.id.to_be_bytes()).is_none() {
            results[i] = Some(Err("series sent to a core that does not own it".into()));
            continue;
        }
        let pending = local.queue.is_pending(w.id);
        if w.points.len() <= INLINE_POINTS && !pending {
            let r = ingest::commit_series(storage, &w, local.latest(w.id));
            results[i] = Some(match r {
                Ok(bound) => {
                    local.remember(w.id, bound);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            });
        } else {
            // The cached bound is current only while nothing is pending.
            let cached = if pending { None } else { local.latest(w.id) };
            queued.push((i, w, cached));
        }
    }
    if queued.is_empty() {
        return Box::pin(async move { finish(results) });
    }
    let ids: Vec<u64> = queued.iter().map(|q| q.1.id).collect();
    let points = queued.iter().map(|q| q.1.points.len()).sum();
    let slots: Vec<usize> = queued.iter().map(|q| q.0).collect();
    let node = core.node().clone();
    let work = Box::new(move || {
        Done::Writes(
            queued
                .iter()
                .map(|(_, w, cached)| {
                    ingest::commit_series(&node.storage, w, *cached).map_err(|e| e.to_string())
                })
                .collect(),
        )
    });
    let rx = enqueue(core, ids, points, work, false);
    Box::pin(async move {
        let out = match rx {
            Ok(Enqueued::Now(rx)) => rx.await.unwrap_or_else(|_| Err(closed())),
            Ok(Enqueued::Wait(..)) => Err(closed()),
            Err(e) => Err(e),
        };
        match out {
            Ok(Done::Writes(list)) => {
                for (slot, r) in slots.into_iter().zip(list) {
                    results[slot] = Some(r.map(|_| ()));
                }
            }
            Ok(Done::Cut(_)) => {}
            Err(e) => {
                for slot in slots {
                    results[slot] = Some(Err(e.to_string()));
                }
            }
        }
        finish(results)
    })
}

fn finish(results: Vec<Option<Result<(), String>>>) -> Vec<Result<(), String>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not written".into())))
        .collect()
}

/// Commits retention cuts `(series id, cutoff)` of series this core owns,
/// in one batch, through the queue (waiting for room).
pub async fn cut(core: &Core, cuts: Vec<(u64, i64)>) -> Result<(), ApiError> {
    let ids: Vec<u64> = cuts.iter().map(|c| c.0).collect();
    let node = core.node().clone();
    let work = Box::new(move || Done::Cut(ingest::commit_cuts(&node.storage, &cuts)));
    match submit(core, ids, 0, work, true).await? {
        Done::Cut(r) => r,
        Done::Writes(_) => Ok(()),
    }
}
