//! The mesh's tasks on one core: send the calls gathered this tick, serve
//! peers' calls, send the replies gathered this tick, deliver replies to
//! their slots, and sweep expired deadlines.
//!
//! Why here, apart from `Mesh::call`: the caller's task only gathers its
//! call and waits in its slot; everything that touches a channel or a timer
//! runs in these few long-lived tasks, once per batch or per sweep instead
//! of once per call.
//!
//! Invariants:
//! * Order: one serving task per peer takes that peer's batches in arrival
//!   order and serves each front to back; a call that is not `SPAWN` and is
//!   answered later is awaited before the next is started. With the FIFO
//!   outboxes (`batch`) this serves a peer's non-`SPAWN` calls in the order
//!   they were made.
//! * Deadline: a call is refused (503 `request_timeout`) if its caller's
//!   deadline has passed when it is about to start, checked after any wait
//!   that came before it (a test delay, a previous call answered later). Its
//!   caller has answered 503 by then, or will at once: doing the work would
//!   apply what the client was told failed.
//! * No deadlock: replies are never sent by the serving task itself (it
//!   only queues them), and the reply receiving task never blocks, so a
//!   full channel in one direction cannot stop the other from draining.
//! * Shutdown: `Mesh::close` lets the call sender flush and close the
//!   request channels; each peer's serving task ends when that peer's
//!   channel does; the reply sender ends when no peer is served any more
//!   (closing the reply channels); each reply receiver ends with its peer's
//!   reply channel and fails the calls still waiting on it; the sweep ends
//!   once closed with no call waiting. So every task returned here ends.

use super::batch::{CallBatch, ReplyBatch};
use super::envelope::Opened;
use super::MeshOwner;
use crate::error::ApiError;
use glommio::channels::channel_mesh::{Receivers, Senders};
use std::rc::Rc;
use std::time::Instant;

/// Starts the tasks that carry this core's calls and serve its peers'.
/// Returns them so shutdown can wait for them (after `Mesh::close`).
pub fn serve_peers<C: MeshOwner>(
    ctx: &Rc<C>,
    requests: &mut Receivers<CallBatch<C>>,
    replies_in: &mut Receivers<ReplyBatch<C>>,
    replies_out: Senders<ReplyBatch<C>>,
) -> Vec<glommio::Task<()>> {
    let mut tasks = Vec::new();
    for (peer, rx) in replies_in.streams() {
        let ctx = ctx.clone();
        tasks.push(glommio::spawn_local(async move {
            let mesh = ctx.mesh();
            while let Some(ReplyBatch { mut answers, spare }) = rx.recv().await {
                for answer in answers.drain(..) {
                    let stale = mesh
                        .slots
                        .borrow_mut()
                        .answer(answer.ticket, answer.envelope);
                    if let Some(envelope) = stale {
                        mesh.envelopes.recycle(envelope);
                    }
                }
                mesh.answers.borrow_mut().give_back(answers);
                mesh.calls.borrow_mut().give_back(spare);
            }
            mesh.gone[peer].set(true);
            mesh.slots.borrow_mut().peer_gone(peer);
            // The sweep may now have nothing left to wait for.
            mesh.sweep.raise();
        }));
    }
    for (peer, rx) in requests.streams() {
        let ctx = ctx.clone();
        ctx.mesh().serving.set(ctx.mesh().serving.get() + 1);
        tasks.push(glommio::spawn_local(async move {
            let mesh = ctx.mesh();
            while let Some(CallBatch { mut calls, spare }) = rx.recv().await {
                mesh.answers.borrow_mut().give_back(spare);
                for call in calls.drain(..) {
                    serve_one(&ctx, peer, call).await;
                }
                mesh.calls.borrow_mut().give_back(calls);
            }
            mesh.serving.set(mesh.serving.get() - 1);
            mesh.send_answers.raise();
        }));
    }
    tasks.push(glommio::spawn_local(send_calls(ctx.clone())));
    tasks.push(glommio::spawn_local(send_replies(ctx.clone(), replies_out)));
    tasks.push(glommio::spawn_local(sweep(ctx.clone())));
    tasks
}

/// Serves one call of `peer`, queueing its answer.
async fn serve_one<C: MeshOwner>(ctx: &Rc<C>, peer: usize, call: super::batch::Call<C>) {
    let mesh = ctx.mesh();
    let super::batch::Call {
        ticket,
        deadline,
        mut envelope,
    } = call;
    if let Some(d) = mesh.faults.call_delay {
        glommio::timer::sleep(d).await;
    }
    let refusal = if mesh.faults.serve_unavailable {
        Some(ApiError::Unavailable("injected fault"))
    } else if Instant::now() >= deadline {
        Some(ApiError::Timeout { ms: 0 })
    } else {
        None
    };
    if let Some(e) = refusal {
        envelope.fail(e);
        mesh.reply(peer, ticket, envelope);
        return;
    }
    let spawn = envelope.spawn();
    match envelope.serve(ctx) {
        Opened::Now(answered) => mesh.reply(peer, ticket, answered),
        Opened::Later(wait) if spawn => {
            let ctx = ctx.clone();
            glommio::spawn_local(async move {
                let answered = wait.await;
                ctx.mesh().reply(peer, ticket, answered);
            })
            .detach();
        }
        Opened::Later(wait) => {
            let answered = wait.await;
            mesh.reply(peer, ticket, answered);
        }
    }
}

/// Sends each peer the calls gathered for it, one message per peer and
/// wake-up; after `Mesh::close`, sends what is left and closes the request
/// channels.
async fn send_calls<C: MeshOwner>(ctx: Rc<C>) {
    let mesh = ctx.mesh();
    let Some(senders) = mesh.requests.borrow_mut().take() else {
        return;
    };
    loop {
        mesh.send_calls.wait().await;
        for peer in (0..mesh.cores).filter(|p| *p != mesh.me) {
            let Some(calls) = mesh.calls.borrow_mut().take(peer) else {
                continue;
            };
            let spare = mesh.answers.borrow_mut().spare();
            let n = calls.len() as u64;
            if senders
                .send_to(peer, CallBatch { calls, spare })
                .await
                .is_err()
            {
                // The peer stopped serving: these calls, and any later
                // ones, fail at once rather than at their deadline.
                mesh.gone[peer].set(true);
                mesh.slots.borrow_mut().peer_gone(peer);
                mesh.sweep.raise();
                continue;
            }
            mesh.count(|s| {
                s.calls += n;
                s.call_batches += 1;
            });
        }
        if mesh.closed.get() && mesh.calls.borrow().is_empty() {
            senders.close();
            return;
        }
    }
}

/// Sends each peer the replies gathered for it, one message per peer and
/// wake-up; ends once no peer is served any more, closing the reply
/// channels.
async fn send_replies<C: MeshOwner>(ctx: Rc<C>, senders: Senders<ReplyBatch<C>>) {
    let mesh = ctx.mesh();
    loop {
        mesh.send_answers.wait().await;
        for peer in (0..mesh.cores).filter(|p| *p != mesh.me) {
            let Some(answers) = mesh.answers.borrow_mut().take(peer) else {
                continue;
            };
            let spare = mesh.calls.borrow_mut().spare();
            let n = answers.len() as u64;
            // Fails only once the peer's reply receiver is gone, i.e. the
            // peer's calls were all answered or failed already.
            if senders
                .send_to(peer, ReplyBatch { answers, spare })
                .await
                .is_ok()
            {
                mesh.count(|s| {
                    s.replies += n;
                    s.reply_batches += 1;
                });
            }
        }
        if mesh.closed.get() && mesh.serving.get() == 0 && mesh.answers.borrow().is_empty() {
            senders.close();
            return;
        }
    }
}

/// Fails the calls whose deadline passed: sleeps until the earliest
/// deadline of a waiting call, or until a call with an earlier one (or the
/// first call after an idle spell) raises the signal. One timer per sweep,
/// none per call.
async fn sweep<C: MeshOwner>(ctx: Rc<C>) {
    let mesh = ctx.mesh();
    loop {
        let next = mesh.slots.borrow_mut().expire(Instant::now());
        mesh.sweep_at.set(next);
        match next {
            None if mesh.closed.get() => return,
            None => mesh.sweep.wait().await,
            Some(at) => {
                let sleep = glommio::timer::sleep(at.saturating_duration_since(Instant::now()));
                futures_lite::future::or(sleep, mesh.sweep.wait()).await;
            }
        }
    }
}
