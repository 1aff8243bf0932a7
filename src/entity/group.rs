//! Group commit: the entity writes of one core gathered into one batch,
//! committed with one WAL write (and one fsync), off the reactor whenever
//! the commit could wait.
//!
//! Why: a RocksDB write with `sync_writes: true` waits for an fsync. Made
//! one at a time on the reactor, every write on the core waited for the
//! fsyncs of all the writes before it, and nothing else ran meanwhile. Now
//! the write pipeline (`entity::write`) *stages* each write: it reads the
//! old value, runs the feature hooks into the write's own `ChangeBatch`,
//! and appends that batch to the core's open group. One committer task per
//! core commits the oldest group and, when it is durable, runs the
//! after-commit hooks and wakes the group's writers, who answer only then.
//! A commit that may wait (every one with `sync_writes`, and any RocksDB
//! would delay) runs on a helper thread (the `commit` lane of
//! `node::blocking`), and meanwhile the core serves reads and gathers the
//! next group; an unsynced one RocksDB takes at once runs on the reactor
//! ([`commit_loop`] says why).
//!
//! A group is closed when adding a write would pass
//! `storage.group_commit_max_writes` or `storage.group_commit_max_bytes`;
//! at most [`MAX_CLOSED`] closed groups wait behind the one committing,
//! beyond that a write is refused with 503 (a bounded queue).
//!
//! Invariants (each with its reason):
//! * **Acknowledged means durable.** A writer awaits its group's outcome
//!   ([`Pending::durable`]); the outcome is set only after
//!   `Storage::commit_group` returned (WAL written, and fsynced with
//!   `sync_writes`).
//! * **Per-key order.** Writes of a key run only on its owner; they are
//!   staged in arrival order (staging is synchronous: no await between
//!   reading the old value and appending to the group), appended to the
//!   group in staging order, and groups commit one at a time in the order
//!   they were opened (one committer per core, groups FIFO). Within a
//!   group RocksDB applies the records in order, so a later write of a key
//!   wins.
//! * **Reads in the pipeline see pending writes.** The overlay maps each
//!   key with a staged, uncommitted write to its newest staged value
//!   (`None`: deleted). The pipeline reads the old value there first, so
//!   the created/replaced answer, the index entries removed and the vector
//!   comparison all follow the previous *staged* write, not the older
//!   committed one. An overlay entry is removed when the group holding the
//!   key's newest write has committed (then storage has that value).
//! * **Nothing is built on a failed group.** A write staged after a group
//!   may have read that group's values from the overlay, so when a commit
//!   fails every group staged after it fails too (their writers get 500,
//!   their change-feed sequences are counted as gaps), and the overlay is
//!   emptied: storage is the truth again.
//! * **Change feed: no miss.** Sequences are taken while staging, so a
//!   core's groups hold increasing sequences; after each group the core's
//!   sequencer slot moves to the first sequence of its oldest remaining
//!   group (`changefeed::sequencer` has the proof).
//! * **Unique claims outlive the write.** A writer releases its claims only
//!   after its group is durable, so a claimed value is visible to its
//!   arbiter as a claim until the index entry is committed.
//! * **Readers after the answer see the write.** A GET reads storage; a
//!   write is answered after its group is in the memtable, so a GET that
//!   starts after the answer sees it (or a later write).
//!
//! With `storage.group_commit: false` the pipeline commits each write on
//! the reactor as it did before groups existed (the anchor for figures).

use crate::error::ApiError;
use crate::node::blocking::Work;
use crate::node::features::AfterCommit;
use crate::node::Core;
use crate::storage::{ChangeBatch, GroupBatch, StorageError};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Closed groups that may wait behind the one being committed.
pub const MAX_CLOSED: usize = 4;

/// Buffers kept for reuse (overlay keys and values), so that the steady
/// state allocates no copy per write; each at most [`SPARE_BUFFER_BYTES`]
/// (at most 4 MiB kept per core).
const SPARE_BUFFERS: usize = 256;
const SPARE_BUFFER_BYTES: usize = 16 << 10;

/// How a group ended, shared by its writers.
#[derive(Default)]
struct Outcome {
    /// `None` while open or committing; then `Ok` or the failure.
    result: RefCell<Option<Result<(), String>>>,
    waiters: RefCell<Vec<Waker>>,
}

impl Outcome {
    fn settle(&self, result: Result<(), String>) {
        *self.result.borrow_mut() = Some(result);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// One group of writes.
struct Group {
    /// Its number: groups are numbered in the order they were opened.
    gen: u64,
    batch: GroupBatch,
    /// Entity writes in it.
    writes: usize,
    /// What the features do once the group committed (or failed).
    after: AfterCommit,
    outcome: Rc<Outcome>,
}

impl Group {
    fn new(gen: u64, batch: GroupBatch) -> Group {
        Group {
            gen,
            batch,
            writes: 0,
            after: AfterCommit::default(),
            outcome: Rc::default(),
        }
    }
}

/// A key's newest staged, uncommitted write.
struct Staged {
    /// The new document; `None`: deleted.
    value: Option<Vec<u8>>,
    /// The group holding it.
    gen: u64,
}

type Overlay = HashMap<Vec<u8>, Staged, BuildHasherDefault<rustc_hash::FxHasher>>;

struct State {
    /// The group writes are appended to.
    open: Group,
    /// Groups closed and waiting for the committer, oldest first.
    closed: VecDeque<Group>,
    /// The outcome of the group being committed.
    committing: Option<Rc<Outcome>>,
    /// The first change-feed sequence of the group being committed (0:
    /// none).
    committing_seq: u64,
    /// Whether the committer task runs.
    running: bool,
    overlay: Overlay,
    /// Reusable buffers for overlay values and keys.
    spare: Vec<Vec<u8>>,
    /// A reusable group buffer.
    spare_batch: Option<GroupBatch>,
}

/// One core's group commit (a part of `entity::Local`).
pub struct Local {
    state: RefCell<State>,
    /// `storage.group_commit`.
    enabled: Cell<Option<bool>>,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            state: RefCell::new(State {
                open: Group::new(1, GroupBatch::default()),
                closed: VecDeque::new(),
                committing: None,
                committing_seq: 0,
                running: false,
                overlay: Overlay::default(),
                spare: Vec::new(),
                spare_batch: None,
            }),
            enabled: Cell::new(None),
        }
    }
}

/// A staged write: its answer once its group is durable.
#[must_use = "a staged write is acknowledged only after `durable`"]
pub struct Pending {
    existed: bool,
    outcome: Option<Rc<Outcome>>,
}

impl Pending {
    /// A write that needs no waiting (committed inline, or a no-op).
    pub fn done(existed: bool) -> Pending {
        Pending {
            existed,
            outcome: None,
        }
    }

    /// Waits until the write's group is durable; whether the entity
    /// existed before the write.
    pub async fn durable(self) -> Result<bool, ApiError> {
        if let Some(outcome) = self.outcome {
            WaitOutcome(outcome).await?;
        }
        Ok(self.existed)
    }
}

/// Resolves when the group's outcome is known.
struct WaitOutcome(Rc<Outcome>);

impl Future for WaitOutcome {
    type Output = Result<(), ApiError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &*self.0.result.borrow() {
            Some(Ok(())) => Poll::Ready(Ok(())),
            Some(Err(m)) => Poll::Ready(Err(StorageError::Commit(m.clone()).into())),
            None => {
                self.0.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Local {
    /// Whether writes on this core commit in groups.
    pub fn enabled(&self, core: &Core) -> bool {
        match self.enabled.get() {
            Some(e) => e,
            None => {
                let e = core.node().config.storage.group_commit;
                self.enabled.set(Some(e));
                e
            }
        }
    }

    /// Calls `f` with the newest staged value of `key` (`None`: a staged
    /// delete) when the key has an uncommitted write; `None` otherwise.
    pub fn with_staged<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> Option<R> {
        let st = self.state.borrow();
        st.overlay.get(key).map(|s| f(s.value.as_deref()))
    }

    /// Whether any group of this core (committing, closed or open) holds
    /// a change-feed sequence.
    pub fn holds_sequences(&self) -> bool {
        let st = self.state.borrow();
        st.committing_seq != 0 || first_seq(&st) != 0
    }

    /// 503 when the open group is full and [`MAX_CLOSED`] groups already
    /// wait: checked before a write does any work.
    pub fn admit(&self, core: &Core) -> Result<(), ApiError> {
        let st = self.state.borrow();
        if st.closed.len() >= MAX_CLOSED && full(core, &st.open, 0) {
            return Err(ApiError::Unavailable(
                "too many writes waiting for their group commit on this core; retry later",
            ));
        }
        Ok(())
    }

    /// Appends a staged write (its batch already holds the entity and what
    /// the hooks derived) to the open group, and records its value in the
    /// overlay. Starts the committer if it is idle.
    pub fn add(
        &self,
        core: &Core,
        key: &str,
        new: Option<&[u8]>,
        existed: bool,
        batch: &ChangeBatch<'_>,
        after: AfterCommit,
    ) -> Pending {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        if st.open.writes > 0 && full(core, &st.open, batch.bytes()) {
            let next = Group::new(st.open.gen + 1, st.spare_batch.take().unwrap_or_default());
            let closed = std::mem::replace(&mut st.open, next);
            st.closed.push_back(closed);
        }
        let open = &mut st.open;
        open.batch.append(batch);
        open.writes += 1;
        open.after.absorb(after);
        let gen = open.gen;
        let outcome = open.outcome.clone();
        let value = new.map(|v| {
            let mut buf = st.spare.pop().unwrap_or_default();
            buf.extend_from_slice(v);
            buf
        });
        match st.overlay.get_mut(key.as_bytes()) {
            Some(s) => {
                if let Some(old) = std::mem::replace(&mut s.value, value) {
                    recycle(&mut st.spare, old);
                }
                s.gen = gen;
            }
            None => {
                let mut k = st.spare.pop().unwrap_or_default();
                k.extend_from_slice(key.as_bytes());
                st.overlay.insert(k, Staged { value, gen });
            }
        }
        let start = !st.running;
        st.running = true;
        drop(guard);
        if start {
            // (glommio may run the new task at once: no borrow is held.)
            match core.rc() {
                Some(rc) => {
                    glommio::spawn_local(commit_loop(rc)).detach();
                }
                None => self.state.borrow_mut().running = false,
            }
        }
        Pending {
            existed,
            outcome: Some(outcome),
        }
    }

    /// Waits until every write staged so far on this core is finished
    /// (committed or failed). Index builds call it after refreshing their
    /// catalog, so that no write staged with the older catalog is still
    /// to commit.
    pub async fn settled(&self) {
        let last = {
            let st = self.state.borrow();
            if st.open.writes > 0 {
                Some(st.open.outcome.clone())
            } else if let Some(g) = st.closed.back() {
                Some(g.outcome.clone())
            } else {
                st.committing.clone()
            }
        };
        if let Some(o) = last {
            let _ = WaitOutcome(o).await;
        }
    }

    /// The next group to commit: the oldest closed one, else the open one
    /// if it has writes. Marks it committing.
    fn take_next(&self) -> Option<Group> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let group = match st.closed.pop_front() {
            Some(g) => g,
            None if st.open.writes > 0 => {
                let next = Group::new(st.open.gen + 1, st.spare_batch.take().unwrap_or_default());
                std::mem::replace(&mut st.open, next)
            }
            None => {
                st.running = false;
                st.committing = None;
                st.committing_seq = 0;
                return None;
            }
        };
        st.committing = Some(group.outcome.clone());
        st.committing_seq = group.after.first_seq();
        Some(group)
    }
}

/// Whether `group` cannot take a write of `more` batch bytes.
fn full(core: &Core, group: &Group, more: usize) -> bool {
    let cfg = &core.node().config.storage;
    group.writes >= cfg.group_commit_max_writes as usize
        || group.batch.bytes() + more > cfg.group_commit_max_bytes as usize
}

fn recycle(spare: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
    // Oversized buffers are dropped: a 10 MB document once must not stay.
    if spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_BUFFER_BYTES {
        buf.clear();
        spare.push(buf);
    }
}

/// The committer: commits groups one at a time, oldest first, until none
/// is left; then stops (the next write starts it again).
///
/// Without `sync_writes`, and with `storage.group_commit_on_core` (the
/// default), a group is committed on the reactor when RocksDB can take it
/// at once ([`Storage::try_commit_group_now`](crate::storage::Storage::try_commit_group_now):
/// a memtable insert and a WAL write into the page cache, tens of
/// microseconds for a group); handing it to a helper thread and back
/// costs more than that (two thread wake-ups per group, on a busy core).
/// A group RocksDB would delay (write stall), and every group with
/// `sync_writes` (an fsync takes milliseconds), goes to the helper thread,
/// so the core keeps serving meanwhile. Either way the same one group is
/// committed at a time, so the invariants above hold unchanged.
///
/// The price of committing on the core: a WAL `write()` that the
/// filesystem holds up holds the core up too. On ext4 a buffered append
/// can wait for a journal commit that another file's fsync (a flush's new
/// SST) started; on this project's VM disk that was 1–8 ms for about one
/// write in a thousand during flushes (strace of the reactor, open-loop
/// PUT). `group_commit_on_core: false` keeps every commit on the helper
/// thread, so such a wait delays only the writes behind it, never the
/// core's reads (bench/RESULTS.md, "Group commit on the core").
async fn commit_loop(core: Rc<Core>) {
    let local = &core.entity().group;
    while let Some(mut group) = local.take_next() {
        let node = core.node().clone();
        let (fail, delay) = (
            core.node().faults.fail_group_commit,
            core.node().faults.group_commit_delay,
        );
        let now = if fail || delay.is_some() || !node.config.storage.group_commit_on_core {
            Ok(false)
        } else {
            node.storage.try_commit_group_now(&mut group.batch)
        };
        let result = match now {
            Ok(true) => {
                let mut batch = std::mem::take(&mut group.batch);
                committed(&core, &group, &mut batch, true);
                local.state.borrow_mut().spare_batch = Some(batch);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
            Ok(false) => {
                let mut batch = std::mem::take(&mut group.batch);
                let done = core
                    .blocking_background(Work::Commit, move || {
                        if let Some(d) = delay {
                            std::thread::sleep(d);
                        }
                        let r = if fail {
                            Err(StorageError::Commit(
                                "injected fault: fail_group_commit".into(),
                            ))
                        } else {
                            node.storage.commit_group(&mut batch)
                        };
                        (r, batch)
                    })
                    .await;
                match done {
                    Ok((r, mut batch)) => {
                        if r.is_ok() {
                            committed(&core, &group, &mut batch, false);
                        } else {
                            batch.clear();
                        }
                        local.state.borrow_mut().spare_batch = Some(batch);
                        r.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        finish(&core, group, result);
    }
}

/// Records a committed group's size (and where it was committed) and
/// empties its batch for reuse.
fn committed(core: &Core, group: &Group, batch: &mut GroupBatch, on_core: bool) {
    crate::obs::counters::record_group(core.counters(), group.writes, batch.bytes(), on_core);
    batch.clear();
}

/// After a group's commit: the overlay forgets what storage now holds, the
/// features run their after-commit hooks, the writers wake. A failure
/// fails every group staged after it.
fn finish(core: &Core, group: Group, result: Result<(), String>) {
    let local = &core.entity().group;
    if let Err(m) = result {
        return fail(core, group, m);
    }
    let next_first = {
        let mut st = local.state.borrow_mut();
        let State {
            overlay,
            spare,
            committing,
            committing_seq,
            ..
        } = &mut *st;
        let gen = group.gen;
        for (k, s) in overlay.extract_if(|_, s| s.gen <= gen) {
            recycle(spare, k);
            if let Some(v) = s.value {
                recycle(spare, v);
            }
        }
        *committing = None;
        *committing_seq = 0;
        first_seq(&st)
    };
    crate::node::features::after_commit(core, true, group.after, next_first);
    group.outcome.settle(Ok(()));
}

/// A failed commit: `group` and every group staged after it fail (their
/// writes may have read `group`'s values from the overlay); the overlay is
/// emptied, storage is the truth again.
fn fail(core: &Core, group: Group, message: String) {
    let local = &core.entity().group;
    let mut done = vec![group];
    {
        let mut st = local.state.borrow_mut();
        let st = &mut *st;
        done.extend(st.closed.drain(..));
        if st.open.writes > 0 {
            let next = Group::new(st.open.gen + 1, GroupBatch::default());
            done.push(std::mem::replace(&mut st.open, next));
        }
        st.overlay.clear();
        st.committing = None;
        st.committing_seq = 0;
    }
    tracing::error!(groups = done.len(), "group commit failed: {message}");
    // Each group's after-commit moves the core's sequencer slot to the
    // first sequence of the next failed group still holding one (then 0:
    // nothing is left).
    let firsts: Vec<u64> = done.iter().map(|g| g.after.first_seq()).collect();
    for (i, g) in done.into_iter().enumerate() {
        let next = firsts[i + 1..]
            .iter()
            .copied()
            .find(|s| *s != 0)
            .unwrap_or(0);
        crate::node::features::after_commit(core, false, g.after, next);
        g.outcome.settle(Err(message.clone()));
    }
}

/// The first change-feed sequence held by the groups still waiting (closed,
/// then open), 0 when none holds one.
fn first_seq(st: &State) -> u64 {
    st.closed
        .iter()
        .chain(std::iter::once(&st.open))
        .map(|g| g.after.first_seq())
        .find(|s| *s != 0)
        .unwrap_or(0)
}
