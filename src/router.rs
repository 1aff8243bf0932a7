//! `ShardRouter`: which core owns a key, and the cross-core path to it.
//!
//! The same path carries the few other cross-core calls (a metrics
//! snapshot), always answered by the callee's own core.
//!
//! The keyspace is split over the shards by a hash of the entity key. All
//! writes to a key run on its owner, one after the other, so "read, then
//! write" sequences (created-or-replaced, and later index maintenance) need
//! no lock. A request that arrives elsewhere travels to the owner over a
//! glommio channel mesh and its answer comes back over a second mesh.
//!
//! Two meshes, not one: an owner that blocks sending a reply must never be
//! the reason its peer cannot drain requests, so replies travel on channels
//! whose receivers never block (they only complete a local one-shot).

use crate::error::ApiError;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hasher;
use std::time::Duration;

/// What a forwarded request asks the owner to do.
#[derive(Debug)]
pub enum EntityOp {
    Get,
    /// Store this (already validated) JSON object.
    Put(Vec<u8>),
    Delete,
}

/// What one core asks of another.
#[derive(Debug)]
pub enum ShardCall {
    /// An entity operation on a key the callee owns.
    Entity { key: String, op: EntityOp },
    /// The callee's latency histograms (for `/metrics`).
    Snapshot,
    /// Start the callee's share of building index `id`.
    BuildIndex { id: u32 },
    /// Claim a unique index value (the callee is its arbiter).
    UniqueClaim { prefix: Vec<u8>, key: String },
    /// Release a claim after the write committed (or failed).
    UniqueRelease { prefix: Vec<u8>, key: String },
    /// Fetch and filter a share of a query's candidates (or scan the
    /// callee's share of a table).
    Query(Box<crate::query::ShardTask>),
}

/// The callee's answer.
#[derive(Debug)]
pub enum ShardAnswer {
    /// A complete JSON body and its status.
    Entity {
        status: u16,
        body: Vec<u8>,
    },
    Snapshot(Box<crate::metrics::LatencySnapshot>),
    Ack,
    /// A unique claim: granted, or refused with the reason.
    Claim(Result<(), String>),
    /// A query share's rows, or the error's status and body.
    Query(Result<crate::query::ShardRows, (u16, Vec<u8>)>),
}

/// A call travelling to another core.
#[derive(Debug)]
pub struct ShardRequest {
    pub id: u64,
    pub from: usize,
    pub call: ShardCall,
}

/// Its answer travelling back.
#[derive(Debug)]
pub struct ShardReply {
    pub id: u64,
    pub answer: ShardAnswer,
}

/// The shard that owns `key` among `shards`.
pub fn owner_of(key: &[u8], shards: usize) -> usize {
    let mut h = rustc_hash::FxHasher::default();
    h.write(key);
    // Multiply-shift maps the hash onto 0..shards without a division.
    ((u128::from(h.finish()) * shards as u128) >> 64) as usize
}

/// Per-core router: forwards requests and matches replies to waiters.
pub struct ShardRouter {
    me: usize,
    shards: usize,
    requests: Option<Senders<ShardRequest>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<ShardReply>>>,
    next_id: Cell<u64>,
    /// Test-only fault injection: delay before forwarding.
    forward_delay: Option<Duration>,
}

impl ShardRouter {
    pub fn new(
        me: usize,
        shards: usize,
        requests: Option<Senders<ShardRequest>>,
        forward_delay: Option<Duration>,
    ) -> Self {
        ShardRouter {
            me,
            shards,
            requests,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            forward_delay,
        }
    }

    pub fn me(&self) -> usize {
        self.me
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The owner of `key`.
    pub fn owner(&self, key: &str) -> usize {
        if self.shards == 1 {
            0
        } else {
            owner_of(key.as_bytes(), self.shards)
        }
    }

    /// Sends `call` to shard `owner` and waits for its answer, at most
    /// `timeout`.
    pub async fn call(
        &self,
        owner: usize,
        call: ShardCall,
        timeout: Duration,
    ) -> Result<ShardAnswer, ApiError> {
        let senders = self
            .requests
            .as_ref()
            .ok_or(ApiError::Unavailable("no peer shards"))?;
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let msg = ShardRequest {
            id,
            from: self.me,
            call,
        };
        let delay = self.forward_delay;
        let exchange = async move {
            if let Some(d) = delay {
                glommio::timer::sleep(d).await;
            }
            if senders.send_to(owner, msg).await.is_err() {
                return Ok(None);
            }
            Ok(rx.await.ok())
        };
        let result = glommio::timer::timeout(timeout, exchange).await;
        match result {
            Ok(Some(reply)) => Ok(reply.answer),
            Ok(None) => {
                self.pending.borrow_mut().remove(&id);
                Err(ApiError::Unavailable("the owning shard is shutting down"))
            }
            Err(_) => {
                self.pending.borrow_mut().remove(&id);
                Err(ApiError::Timeout {
                    ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Hands a reply to the request waiting for it (if it has not timed out).
    pub fn complete(&self, reply: ShardReply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&reply.id) {
            let _ = tx.send(reply);
        }
    }

    /// Closes the request channels (shutdown: peers' receivers then end).
    pub fn close(&self) {
        if let Some(s) = &self.requests {
            s.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_in_range_and_spread() {
        for shards in 1..9 {
            let mut seen = vec![0usize; shards];
            for i in 0..4000 {
                let o = owner_of(format!("users:{i}").as_bytes(), shards);
                assert!(o < shards);
                seen[o] += 1;
            }
            for (s, n) in seen.iter().enumerate() {
                assert!(*n > 4000 / shards / 2, "shard {s} of {shards} got {n}");
            }
        }
    }

    #[test]
    fn owner_is_stable() {
        assert_eq!(owner_of(b"users:alice", 4), owner_of(b"users:alice", 4));
    }
}
