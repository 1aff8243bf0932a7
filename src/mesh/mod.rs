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
//! Two glommio channel meshes, not one: an owner that blocks sending a
//! reply must never be the reason its peer cannot drain requests, so
//! replies travel on channels whose receivers never block (they only
//! complete a local one-shot).
//!
//! Invariants:
//! * Calls from one core to another that do not ask to be spawned
//!   ([`Rpc::SPAWN`]) are served in the order they were sent.
//! * A call carries its caller's deadline. The callee does not start a call
//!   whose caller has given up (it answers 503 `request_timeout` instead),
//!   so a write the client was told timed out is not applied later.

use crate::error::ApiError;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use glommio::channels::channel_mesh::{Receivers, Senders};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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

type AnswerBox = Box<dyn Any + Send>;

enum Opened {
    Now(AnswerBox),
    Later(LocalBoxFuture<'static, AnswerBox>),
}

/// A call with its type erased, so one channel carries every feature's.
trait Envelope<C>: Send {
    fn spawn(&self) -> bool;
    fn open(self: Box<Self>, ctx: &Rc<C>) -> Opened;
    /// Answers with `e` instead of serving (test fault injection).
    fn fail(self: Box<Self>, e: ApiError) -> AnswerBox;
}

struct Sealed<R>(R);

impl<C, R: Rpc<C>> Envelope<C> for Sealed<R> {
    fn spawn(&self) -> bool {
        R::SPAWN
    }

    fn open(self: Box<Self>, ctx: &Rc<C>) -> Opened {
        // The answer is always `Result<R::Answer, ApiError>`: the caller
        // that sent this `Sealed<R>` downcasts to exactly that type.
        match self.0.serve(ctx) {
            Served::Now(r) => Opened::Now(Box::new(r)),
            Served::Later(f) => Opened::Later(Box::pin(async move {
                let r: Result<R::Answer, ApiError> = f.await;
                Box::new(r) as AnswerBox
            })),
        }
    }

    fn fail(self: Box<Self>, e: ApiError) -> AnswerBox {
        Box::new(Err::<R::Answer, ApiError>(e))
    }
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

/// A call travelling to another core.
pub struct Request<C> {
    id: u64,
    from: usize,
    /// When the caller stops waiting (`Instant` is one clock for all
    /// threads).
    deadline: Instant,
    call: Box<dyn Envelope<C>>,
}

/// Its answer travelling back.
pub struct Reply {
    id: u64,
    answer: AnswerBox,
}

/// One core's endpoint: sends calls and matches replies to waiters.
pub struct Mesh<C> {
    me: usize,
    cores: usize,
    requests: Option<Senders<Request<C>>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<AnswerBox>>>,
    next_id: Cell<u64>,
    faults: MeshFaults,
}

impl<C: MeshOwner> Mesh<C> {
    pub fn new(
        me: usize,
        cores: usize,
        requests: Option<Senders<Request<C>>>,
        faults: MeshFaults,
    ) -> Self {
        Mesh {
            me,
            cores,
            requests,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
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

    /// Sends `call` to core `to` and waits for its answer, at most
    /// `timeout` (then 503 `request_timeout`).
    pub async fn call<R: Rpc<C>>(
        &self,
        to: usize,
        call: R,
        timeout: Duration,
    ) -> Result<R::Answer, ApiError> {
        let senders = self
            .requests
            .as_ref()
            .ok_or(ApiError::Unavailable("no peer cores"))?;
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let msg = Request {
            id,
            from: self.me,
            deadline: Instant::now() + timeout,
            call: Box::new(Sealed(call)),
        };
        let exchange = async move {
            if senders.send_to(to, msg).await.is_err() {
                return Ok(None);
            }
            Ok(rx.await.ok())
        };
        match glommio::timer::timeout(timeout, exchange).await {
            Ok(Some(answer)) => match answer.downcast::<Result<R::Answer, ApiError>>() {
                Ok(result) => *result,
                // Cannot happen: the reply to request `id` is produced by
                // the `Sealed<R>` this call sent.
                Err(_) => Err(ApiError::Internal("mesh reply of another call's type")),
            },
            Ok(None) => {
                self.pending.borrow_mut().remove(&id);
                Err(ApiError::Unavailable("the owning core is shutting down"))
            }
            Err(_) => {
                self.pending.borrow_mut().remove(&id);
                Err(ApiError::Timeout {
                    ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Hands a reply to the call waiting for it (if it has not timed out).
    fn complete(&self, reply: Reply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&reply.id) {
            let _ = tx.send(reply.answer);
        }
    }

    /// Closes the request channels (shutdown: peers' receivers then end).
    pub fn close(&self) {
        if let Some(s) = &self.requests {
            s.close();
        }
    }
}

/// Starts the tasks that serve peers' calls on this core and complete this
/// core's waiting calls. Returns them so shutdown can wait for them.
pub fn serve_peers<C: MeshOwner>(
    ctx: &Rc<C>,
    requests: &mut Receivers<Request<C>>,
    replies_in: &mut Receivers<Reply>,
    replies_out: Rc<Senders<Reply>>,
) -> Vec<glommio::Task<()>> {
    let mut tasks = Vec::new();
    for (_, rx) in replies_in.streams() {
        let ctx = ctx.clone();
        tasks.push(glommio::spawn_local(async move {
            while let Some(reply) = rx.recv().await {
                ctx.mesh().complete(reply);
            }
        }));
    }
    for (_, rx) in requests.streams() {
        let (ctx, out) = (ctx.clone(), replies_out.clone());
        tasks.push(glommio::spawn_local(async move {
            while let Some(req) = rx.recv().await {
                let (id, from) = (req.id, req.from);
                let spawn = req.call.spawn();
                let faults = ctx.mesh().faults;
                if let Some(d) = faults.call_delay {
                    glommio::timer::sleep(d).await;
                }
                let refusal = if faults.serve_unavailable {
                    Some(ApiError::Unavailable("injected fault"))
                } else if Instant::now() >= req.deadline {
                    // The caller has answered 503 already: doing the work
                    // now would apply what the client was told failed.
                    Some(ApiError::Timeout { ms: 0 })
                } else {
                    None
                };
                if let Some(e) = refusal {
                    let answer = req.call.fail(e);
                    if out.send_to(from, Reply { id, answer }).await.is_err() {
                        break;
                    }
                    continue;
                }
                let answer = match req.call.open(&ctx) {
                    Opened::Now(a) => a,
                    Opened::Later(f) if spawn => {
                        let out = out.clone();
                        glommio::spawn_local(async move {
                            let answer = f.await;
                            let _ = out.send_to(from, Reply { id, answer }).await;
                        })
                        .detach();
                        continue;
                    }
                    Opened::Later(f) => f.await,
                };
                if out.send_to(from, Reply { id, answer }).await.is_err() {
                    break;
                }
            }
            out.close();
        }));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
