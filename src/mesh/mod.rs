//! The mesh: which core owns a key, and typed calls from one core to
//! another.
//!
//! The keyspace is split over the cores by a hash of the key
//! ([`owner_of`]). All writes to a key run on its owner, one after the
//! other, so "read, then write" sequences need no lock. Work for a key that
//! another core owns travels there as a call.
//!
//! A call is any value implementing [`Rpc`]: each feature defines its own
//! call types next to the code that serves them, with their own answer
//! type. [`Mesh::call`] returns `Result<R::Answer, ApiError>`: the callee's
//! error arrives as the same typed [`ApiError`] (a 503 stays a 503, a
//! storage error stays a 500), and there is no shared "answer" enum to
//! match, so no "unexpected answer" arm can exist. This module knows no
//! feature: it is generic over the per-core context `C` the calls run on.
//!
//! A hop is cheap on the steady path (issue 17): calls to one peer are
//! batched per reactor tick, one channel message per batch and direction
//! (`batch`); the call travels in a box that brings its answer back and is
//! reused (`envelope`); the caller waits in a reused reply slot, and one
//! sweep per core enforces every deadline (`slots`), so a hop allocates
//! nothing once the pools are warm. The parts:
//! * `envelope`: a call with its type erased, answered in place, reused;
//! * `slots`: where answers land, call ids, deadlines;
//! * `batch`: the per-peer outboxes and the two message types;
//! * `serve`: the tasks that send, serve, receive and sweep;
//! * `signal`: how those tasks are woken.
//!
//! Two glommio channel meshes, not one: an owner that blocks sending a
//! reply must never be the reason its peer cannot drain requests, so
//! replies travel on channels whose receivers never block (they only fill
//! a local slot and wake its task).
//!
//! Invariants (each argued next to the code that keeps it):
//! * Calls from one core to another that do not ask to be spawned
//!   ([`Rpc::SPAWN`]) are served in the order they were sent (`batch`,
//!   `serve`).
//! * A call carries its caller's deadline. The callee does not start a call
//!   whose caller has given up (it answers 503 `request_timeout` instead),
//!   so a write the client was told timed out is not applied later
//!   (`serve`). The caller stops waiting at its deadline (`slots`: the
//!   sweep), whatever the callee does.
//! * A reply reaches only the call it answers, never a later call that
//!   reuses the slot (`slots`).
//! * Every call ends: answered, timed out, or failed with 503 when its peer
//!   has stopped (shutdown); after [`Mesh::close`] every task of the mesh
//!   ends (`serve`).
//! * No lock: everything here is one core's (`Cell`, `RefCell`, never
//!   borrowed across an `.await`); only the channels cross threads.

mod batch;
mod envelope;
mod serve;
mod signal;
mod slots;

pub use batch::{CallBatch, ReplyBatch};
pub use serve::serve_peers;

use crate::error::ApiError;
use batch::{Answer, Call, Outbox};
use envelope::Envelopes;
use futures::future::LocalBoxFuture;
use glommio::channels::channel_mesh::Senders;
use signal::Signal;
use slots::{Outcome, Slots, Ticket};
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The core that owns `key` among `cores`: the public mapping of
/// `themis-shardmap` (shard-aware clients compute the same, docs/sharding.md).
#[inline]
pub fn owner_of(key: &[u8], cores: usize) -> usize {
    themis_shardmap::owner_of(key, cores)
}

/// How a call is answered: at once (point operations), or by a future that
/// may wait (blocking-pool scans, timers).
pub enum Served<A> {
    Now(Result<A, ApiError>),
    Later(LocalBoxFuture<'static, Result<A, ApiError>>),
}

/// A call one core makes to another, run on the callee's context `C`.
pub trait Rpc<C>: Send + Sized + 'static {
    /// What the callee sends back on success.
    type Answer: Send + 'static;
    /// Serve as a task of its own (the call may wait a long time, e.g. a
    /// scan), instead of in arrival order on the peer's request loop.
    const SPAWN: bool = false;
    /// Runs on the callee's core.
    fn serve(self, ctx: &Rc<C>) -> Served<Self::Answer>;
}

/// A context that holds its core's mesh endpoint.
pub trait MeshOwner: Sized + 'static {
    fn mesh(&self) -> &Mesh<Self>;
}

/// Test-only fault injection (`THEMIS_TEST_FAULTS`), never set in
/// production.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeshFaults {
    /// The callee waits this long before serving each call (a slow or
    /// congested owner).
    pub call_delay: Option<Duration>,
    /// Every call served for a peer answers 503 instead of running (shows
    /// that a remote error reaches the client intact).
    pub serve_unavailable: bool,
}

/// What one core's mesh endpoint has sent (the hop bench reads it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Calls sent to peers.
    pub calls: u64,
    /// Channel messages those calls travelled in.
    pub call_batches: u64,
    /// Replies sent to peers.
    pub replies: u64,
    /// Channel messages those replies travelled in.
    pub reply_batches: u64,
}

/// One core's endpoint: gathers calls for its peers, holds the slots their
/// answers land in, and gathers its replies to peers' calls.
pub struct Mesh<C> {
    me: usize,
    cores: usize,
    /// Taken by the call sender task (`serve_peers`).
    requests: RefCell<Option<Senders<CallBatch<C>>>>,
    /// Whether there are peers at all (one core: no mesh).
    has_peers: bool,
    calls: RefCell<Outbox<Call<C>>>,
    answers: RefCell<Outbox<Answer<C>>>,
    /// Raised by the first call of a batch: wakes the call sender.
    send_calls: Signal,
    /// Raised by the first reply of a batch: wakes the reply sender.
    send_answers: Signal,
    slots: RefCell<Slots<C>>,
    envelopes: Envelopes,
    /// Wakes the sweep task: a call's deadline is earlier than the one it
    /// sleeps until, or it sleeps with nothing to watch.
    sweep: Signal,
    /// The deadline the sweep task sleeps until (`None`: it watches none).
    sweep_at: Cell<Option<Instant>>,
    /// Peers whose replies can no longer arrive.
    gone: Vec<Cell<bool>>,
    /// Set by [`Mesh::close`]: no new calls; the tasks end.
    closed: Cell<bool>,
    /// Peers whose calls this core still serves.
    serving: Cell<usize>,
    stats: Cell<MeshStats>,
    faults: MeshFaults,
}

impl<C: MeshOwner> Mesh<C> {
    pub fn new(
        me: usize,
        cores: usize,
        requests: Option<Senders<CallBatch<C>>>,
        faults: MeshFaults,
    ) -> Self {
        Mesh {
            me,
            cores,
            has_peers: requests.is_some(),
            requests: RefCell::new(requests),
            calls: RefCell::new(Outbox::new(cores)),
            answers: RefCell::new(Outbox::new(cores)),
            send_calls: Signal::default(),
            send_answers: Signal::default(),
            slots: RefCell::new(Slots::default()),
            envelopes: Envelopes::default(),
            sweep: Signal::default(),
            sweep_at: Cell::new(None),
            gone: (0..cores).map(|_| Cell::new(false)).collect(),
            closed: Cell::new(false),
            serving: Cell::new(0),
            stats: Cell::new(MeshStats::default()),
            faults,
        }
    }

    pub fn me(&self) -> usize {
        self.me
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The owner of `key`.
    #[inline]
    pub fn owner(&self, key: &[u8]) -> usize {
        if self.cores == 1 {
            0
        } else {
            owner_of(key, self.cores)
        }
    }

    /// What this endpoint has sent so far.
    pub fn stats(&self) -> MeshStats {
        self.stats.get()
    }

    /// Sends `call` to core `to` and waits for its answer, at most
    /// `timeout` (then 503 `request_timeout`). The call leaves with this
    /// tick's batch for `to`; on the steady path nothing is allocated.
    pub async fn call<R: Rpc<C>>(
        &self,
        to: usize,
        call: R,
        timeout: Duration,
    ) -> Result<R::Answer, ApiError> {
        if !self.has_peers {
            return Err(ApiError::Unavailable("no peer cores"));
        }
        if to == self.me || to >= self.cores {
            return Err(ApiError::Internal("mesh call to this core or to no core"));
        }
        if self.closed.get() || self.gone[to].get() {
            return Err(ApiError::Unavailable("the owning core is shutting down"));
        }
        let deadline = Instant::now() + timeout;
        let envelope = self.envelopes.seal::<C, R>(call);
        let ticket = self.slots.borrow_mut().open(to, deadline);
        let call = Call {
            ticket,
            deadline,
            envelope,
        };
        if self.calls.borrow_mut().push(to, call) {
            self.send_calls.raise();
        }
        if self.sweep_at.get().is_none_or(|at| deadline < at) {
            self.sweep.raise();
        }
        let mut waiting = Waiting {
            mesh: self,
            ticket,
            done: false,
        };
        match waiting.outcome().await {
            Outcome::Answered(envelope) => self.envelopes.unseal::<C, R>(envelope),
            Outcome::TimedOut => Err(ApiError::Timeout {
                ms: timeout.as_millis() as u64,
            }),
            Outcome::PeerGone => Err(ApiError::Unavailable("the owning core is shutting down")),
        }
    }

    /// Queues the answer to a peer's call in this tick's reply batch.
    fn reply(&self, to: usize, ticket: Ticket, envelope: envelope::Boxed<C>) {
        if self
            .answers
            .borrow_mut()
            .push(to, Answer { ticket, envelope })
        {
            self.send_answers.raise();
        }
    }

    /// Stops calls from this core (shutdown): the calls gathered so far are
    /// still sent, then the request channels close (peers' serving tasks
    /// end), and the mesh's tasks on this core end.
    pub fn close(&self) {
        self.closed.set(true);
        self.send_calls.raise();
        self.send_answers.raise();
        self.sweep.raise();
    }

    fn count(&self, f: impl FnOnce(&mut MeshStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }
}

/// A caller waiting in its slot. Dropped before the outcome (the caller's
/// future was dropped: its connection went away), it frees the slot, and
/// the reply, if it comes, is refused by the slot and recycled.
struct Waiting<'m, C: MeshOwner> {
    mesh: &'m Mesh<C>,
    ticket: Ticket,
    done: bool,
}

impl<C: MeshOwner> Waiting<'_, C> {
    async fn outcome(&mut self) -> Outcome<C> {
        let outcome = poll_fn(|cx| self.mesh.slots.borrow_mut().poll(self.ticket, cx)).await;
        self.done = true;
        outcome
    }
}

impl<C: MeshOwner> Drop for Waiting<'_, C> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let late = self.mesh.slots.borrow_mut().cancel(self.ticket);
        if let Some(envelope) = late {
            self.mesh.envelopes.recycle(envelope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::join_all;
    use glommio::channels::channel_mesh::MeshBuilder;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn owners_are_in_range_and_spread() {
        for cores in 1..9 {
            let mut seen = vec![0usize; cores];
            for i in 0..4000 {
                let o = owner_of(format!("users:{i}").as_bytes(), cores);
                assert!(o < cores);
                seen[o] += 1;
            }
            for (s, n) in seen.iter().enumerate() {
                assert!(*n > 4000 / cores / 2, "core {s} of {cores} got {n}");
            }
        }
    }

    #[test]
    fn owner_is_stable() {
        assert_eq!(owner_of(b"users:alice", 4), owner_of(b"users:alice", 4));
    }

    /// A core of the test mesh: its endpoint and the calls it served.
    struct TestCore {
        mesh: Mesh<TestCore>,
        served: RefCell<Vec<u32>>,
    }

    impl MeshOwner for TestCore {
        fn mesh(&self) -> &Mesh<TestCore> {
            &self.mesh
        }
    }

    /// Served at once: logs its number, answers it.
    struct Log(u32);

    impl Rpc<TestCore> for Log {
        type Answer = u32;
        fn serve(self, ctx: &Rc<TestCore>) -> Served<u32> {
            ctx.served.borrow_mut().push(self.0);
            Served::Now(Ok(self.0))
        }
    }

    /// Logs its number, answers it after a while (in order: not SPAWN).
    struct Slow(u32, Duration);

    impl Rpc<TestCore> for Slow {
        type Answer = u32;
        fn serve(self, ctx: &Rc<TestCore>) -> Served<u32> {
            ctx.served.borrow_mut().push(self.0);
            Served::Later(Box::pin(async move {
                glommio::timer::sleep(self.1).await;
                Ok(self.0)
            }))
        }
    }

    /// Refuses with a typed error.
    struct Refuse;

    impl Rpc<TestCore> for Refuse {
        type Answer = ();
        fn serve(self, _: &Rc<TestCore>) -> Served<()> {
            Served::Now(Err(ApiError::Conflict("refused on the callee".into())))
        }
    }

    /// Runs `caller` on core 0 of a two-core mesh (core 1 serving with
    /// `faults`), then shuts both down as the server does (close, wait
    /// for every mesh task). Returns the caller's output, core 0's mesh
    /// figures and what core 1 served, in order.
    fn two_cores<T: Send + 'static>(
        faults: MeshFaults,
        caller: impl FnOnce(Rc<TestCore>) -> LocalBoxFuture<'static, T> + Send + 'static,
    ) -> (T, MeshStats, Vec<u32>) {
        let requests = MeshBuilder::<CallBatch<TestCore>, _>::full(2, 64);
        let replies = MeshBuilder::<ReplyBatch<TestCore>, _>::full(2, 64);
        let done = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let output = Arc::new(Mutex::new(None));
        let mut caller = Some(caller);
        let mut executors = Vec::new();
        for id in 0..2usize {
            let (requests, replies, done) = (requests.clone(), replies.clone(), done.clone());
            let (served, output) = (served.clone(), output.clone());
            let caller = caller.take();
            let executor = LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("mesh-test-{id}"))
                .io_memory(256 << 10)
                .spawn(move || async move {
                    let (req_tx, mut req_rx) = requests.join().await.expect("join requests");
                    let (rep_tx, mut rep_rx) = replies.join().await.expect("join replies");
                    let faults = if id == 1 {
                        faults
                    } else {
                        MeshFaults::default()
                    };
                    let core = Rc::new(TestCore {
                        mesh: Mesh::new(id, 2, Some(req_tx), faults),
                        served: RefCell::new(Vec::new()),
                    });
                    let tasks = serve_peers(&core, &mut req_rx, &mut rep_rx, rep_tx);
                    if let Some(caller) = caller {
                        let out = caller(core.clone()).await;
                        *output.lock().expect("output") = Some((out, core.mesh.stats()));
                        done.store(true, Ordering::Release);
                    }
                    while !done.load(Ordering::Acquire) {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    core.mesh.close();
                    for t in tasks {
                        t.await;
                    }
                    if id == 1 {
                        *served.lock().expect("served") = core.served.take();
                    }
                })
                .expect("executor");
            executors.push(executor);
        }
        for e in executors {
            e.join().expect("executor ran");
        }
        let (out, stats) = output.lock().expect("output").take().expect("caller ran");
        let served = std::mem::take(&mut *served.lock().expect("served"));
        (out, stats, served)
    }

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn calls_are_served_in_send_order_in_one_message_per_tick() {
        let (answers, stats, served) = two_cores(MeshFaults::default(), |core| {
            Box::pin(async move {
                // 100 calls made in one tick, then 100 one after the other.
                let at_once = (0..100).map(|i| core.mesh.call(1, Log(i), LONG));
                let mut answers: Vec<u32> = join_all(at_once)
                    .await
                    .into_iter()
                    .map(|r| r.unwrap_or(u32::MAX))
                    .collect();
                for i in 100..200 {
                    answers.push(core.mesh.call(1, Log(i), LONG).await.unwrap_or(u32::MAX));
                }
                answers
            })
        });
        let expected: Vec<u32> = (0..200).collect();
        assert_eq!(answers, expected);
        assert_eq!(served, expected);
        assert_eq!(stats.calls, 200);
        // The first 100 travelled together (one message), the next 100 one
        // by one: each waited for its answer before the next was made.
        assert_eq!(stats.call_batches, 101);
    }

    #[test]
    fn errors_arrive_as_the_same_typed_error() {
        let (answer, _, _) = two_cores(MeshFaults::default(), |core| {
            Box::pin(async move { core.mesh.call(1, Refuse, LONG).await })
        });
        assert!(matches!(answer, Err(ApiError::Conflict(m)) if m == "refused on the callee"));
        let (answer, _, served) = two_cores(
            MeshFaults {
                serve_unavailable: true,
                ..MeshFaults::default()
            },
            |core| Box::pin(async move { core.mesh.call(1, Log(1), LONG).await }),
        );
        assert!(matches!(
            answer,
            Err(ApiError::Unavailable("injected fault"))
        ));
        assert!(served.is_empty());
    }

    #[test]
    fn a_call_past_its_deadline_times_out_and_is_refused_by_the_callee() {
        // The callee is slow to start each call (300 ms); the caller waits
        // 20 ms for the first, then makes a second with time to spare.
        let slow = MeshFaults {
            call_delay: Some(Duration::from_millis(300)),
            ..MeshFaults::default()
        };
        let ((first, waited, second), _, served) = two_cores(slow, |core| {
            Box::pin(async move {
                let start = Instant::now();
                let first = core.mesh.call(1, Log(1), Duration::from_millis(20)).await;
                let waited = start.elapsed();
                let second = core.mesh.call(1, Log(2), LONG).await;
                (first, waited, second)
            })
        });
        assert!(matches!(first, Err(ApiError::Timeout { ms: 20 })));
        // The sweep ended the wait at the deadline, not the callee's answer.
        assert!(waited < Duration::from_millis(250), "waited {waited:?}");
        assert_eq!(second.ok(), Some(2));
        // The first call was never started on the callee.
        assert_eq!(served, vec![2]);
    }

    #[test]
    fn a_late_reply_does_not_answer_the_call_that_reuses_its_slot() {
        let ((first, second, slots), _, served) = two_cores(MeshFaults::default(), |core| {
            Box::pin(async move {
                // Started at once, answered after 200 ms: the caller gives
                // up at 20 ms and its slot is free again.
                let first = core
                    .mesh
                    .call(
                        1,
                        Slow(1, Duration::from_millis(200)),
                        Duration::from_millis(20),
                    )
                    .await;
                // Takes the same slot; is served after the first (in
                // order), so the first's late reply arrives before its own.
                let second = core.mesh.call(1, Log(2), LONG).await;
                (first, second, core.mesh.slots.borrow().len())
            })
        });
        assert!(matches!(first, Err(ApiError::Timeout { ms: 20 })));
        assert_eq!(second.ok(), Some(2));
        assert_eq!(slots, 0);
        assert_eq!(served, vec![1, 2]);
    }

    #[test]
    fn a_hop_reuses_its_envelope_slot_and_vectors() {
        let ((envelopes, slots), stats, _) = two_cores(MeshFaults::default(), |core| {
            Box::pin(async move {
                for round in 0..3u32 {
                    let calls = (0..8).map(|i| core.mesh.call(1, Log(round * 8 + i), LONG));
                    join_all(calls).await;
                }
                (
                    core.mesh.envelopes.free_count(),
                    core.mesh.slots.borrow().len(),
                )
            })
        });
        // Eight envelopes made for the first round, reused by the others.
        assert_eq!(envelopes, 8);
        assert_eq!(slots, 0);
        assert_eq!((stats.calls, stats.call_batches), (24, 3));
    }

    #[test]
    fn calls_after_close_fail_at_once() {
        let (answer, _, _) = two_cores(MeshFaults::default(), |core| {
            Box::pin(async move {
                core.mesh.close();
                core.mesh.call(1, Log(1), LONG).await
            })
        });
        assert!(matches!(answer, Err(ApiError::Unavailable(_))));
    }
}
