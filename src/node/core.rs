//! `Core`: one CPU core's server state, made of one part per feature.
//!
//! A `Core` lives on its own executor and is never shared with another
//! thread (`Rc`, `RefCell`, `Cell` inside). It holds:
//! * its id, the [`Mesh`] endpoint to the other cores, and its copy of the
//!   hot-reloadable settings;
//! * what observability records on this core (latency histograms, spans);
//! * one part per feature (`entity::Local`, `index::Local`,
//!   `changefeed::Local`, `query::Local`, `vector::Local`, `timeseries::Local`,
//!   `cache::Local`, `llm::Local`), each with private fields: a
//!   feature reads another feature only through that feature's own API.
//!
//! What all cores share is the [`Node`] (`Arc`, thread-safe, no lock on the
//! request path).
//!
//! Ownership is a type: [`Core::own`] returns an [`Owned`] token only on the
//! core that owns the key, and the write pipeline takes one. "Must run on
//! the owner" is therefore checked by the compiler where it used to be a
//! comment.

use super::blocking::Work;
use super::Node;
use crate::error::ApiError;
use crate::mesh::{Mesh, MeshOwner, Rpc};
use crate::obs::counters::CoreCounters;
use crate::obs::latency::CoreLatency;
use crate::obs::otlp::CoreSpans;
use crate::runtime::{LocalRuntime, Runtime};
use std::marker::PhantomData;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

/// One core's server state.
pub struct Core {
    id: usize,
    node: Arc<Node>,
    mesh: Mesh<Core>,
    settings: LocalRuntime,
    latency: CoreLatency,
    spans: Option<CoreSpans>,
    /// This core itself, for tasks that outlive a request.
    me: Weak<Core>,
    entity: crate::entity::Local,
    index: crate::index::Local,
    changefeed: crate::changefeed::Local,
    query: crate::query::Local,
    timeseries: crate::timeseries::Local,
    /// Lanes of blocking work (one per kind, see [`super::blocking`]).
    lanes: super::blocking::Lanes,
    vector: crate::vector::Local,
    cache: crate::cache::Local,
    llm: crate::llm::Local,
    /// The failed-key limiter of the request guard.
    guard: crate::http::guard::CoreGuard,
}

/// Proof that the current core owns `key`: only [`Core::own`] makes one.
/// Writes of a key run only on its owner, one at a time, so whoever holds
/// this token may read, then write, with no lock.
#[derive(Debug, Clone, Copy)]
pub struct Owned<'c, K: ?Sized> {
    key: &'c K,
    _core: PhantomData<&'c Core>,
}

impl<'c, K: ?Sized> Owned<'c, K> {
    pub fn key(&self) -> &'c K {
        self.key
    }
}

impl Core {
    pub fn new(id: usize, node: Arc<Node>, mesh: Mesh<Core>, spans: Option<CoreSpans>) -> Rc<Core> {
        let settings = LocalRuntime::new(&node.runtime);
        let index = crate::index::Local::new(&node.index);
        let vector = crate::vector::Local::new(&node.vector);
        Rc::new_cyclic(|me| Core {
            id,
            node,
            mesh,
            settings,
            latency: CoreLatency::new(crate::http::routes::RouteId::COUNT),
            spans,
            me: me.clone(),
            entity: Default::default(),
            index,
            changefeed: Default::default(),
            query: Default::default(),
            timeseries: Default::default(),
            lanes: Default::default(),
            vector,
            cache: Default::default(),
            llm: crate::llm::Local::new(id),
            guard: Default::default(),
        })
    }

    pub fn id(&self) -> usize {
        self.id
    }

    /// What every core shares.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// How many cores serve.
    pub fn cores(&self) -> usize {
        self.mesh.cores()
    }

    /// This core, counted (for tasks that outlive the current request).
    pub fn rc(&self) -> Option<Rc<Core>> {
        self.me.upgrade()
    }

    /// The hot-reloadable settings for the current request.
    pub fn settings(&self) -> Rc<Runtime> {
        self.settings.get(&self.node.runtime)
    }

    /// `server.request_timeout_ms`, current: the bound of every call.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.settings().request_timeout_ms)
    }

    /// The request guard's per-core state (`http::guard`).
    pub fn guard(&self) -> &crate::http::guard::CoreGuard {
        &self.guard
    }

    /// This core's counters (written only here).
    pub fn counters(&self) -> &CoreCounters {
        &self.node.counters[self.id]
    }

    pub fn latency(&self) -> &CoreLatency {
        &self.latency
    }

    pub fn spans(&self) -> Option<&CoreSpans> {
        self.spans.as_ref()
    }

    /// The core that owns `key`.
    #[inline]
    pub fn owner_of(&self, key: &[u8]) -> usize {
        self.mesh.owner(key)
    }

    /// The ownership token for `key`, on its owner only.
    #[inline]
    pub fn own<'c, K: AsRef<[u8]> + ?Sized>(&'c self, key: &'c K) -> Option<Owned<'c, K>> {
        (self.mesh.owner(key.as_ref()) == self.id).then_some(Owned {
            key,
            _core: PhantomData,
        })
    }

    /// Runs `call` on core `to` and returns its typed answer (bounded by
    /// `request_timeout_ms`).
    pub async fn call<R: Rpc<Core>>(&self, to: usize, call: R) -> Result<R::Answer, ApiError> {
        self.mesh.call(to, call, self.request_timeout()).await
    }

    /// Runs `call` on every other core, one after the other.
    pub async fn call_others<R: Rpc<Core> + Clone>(&self, call: R) -> Result<(), ApiError> {
        for other in (0..self.cores()).filter(|c| *c != self.id) {
            self.call(other, call.clone()).await?;
        }
        Ok(())
    }

    /// Runs `job` off the reactor in `kind`'s lane; 503 when that lane's
    /// queue on this core is full.
    pub async fn blocking<T, F>(&self, kind: Work, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.lanes.run(kind, job).await
    }

    /// Like [`Core::blocking`], for background tasks: waits for a slot
    /// however long the queue is.
    pub async fn blocking_background<T, F>(&self, kind: Work, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.lanes.run_background(kind, job).await
    }

    /// Records that a background task failed on this core (`/health`
    /// reports it, `themis_background_failures_total` counts it).
    pub fn report_failure(&self, task: &'static str, subject: Option<String>, message: String) {
        crate::obs::counters::bump(&self.counters().background_failures, 1);
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.node.failures.record(super::health::Failure {
            core: self.id,
            task,
            subject,
            message,
            at_unix_ms,
        });
    }

    /// (kind, running, waiting) of this core's blocking lanes.
    pub fn blocking_usage(&self) -> Vec<(&'static str, usize, usize)> {
        self.lanes.usage().collect()
    }

    pub fn entity(&self) -> &crate::entity::Local {
        &self.entity
    }

    pub fn index(&self) -> &crate::index::Local {
        &self.index
    }

    pub fn changefeed(&self) -> &crate::changefeed::Local {
        &self.changefeed
    }

    pub fn query(&self) -> &crate::query::Local {
        &self.query
    }

    pub fn vector(&self) -> &crate::vector::Local {
        &self.vector
    }

    pub fn timeseries(&self) -> &crate::timeseries::Local {
        &self.timeseries
    }

    pub fn cache(&self) -> &crate::cache::Local {
        &self.cache
    }

    pub fn llm(&self) -> &crate::llm::Local {
        &self.llm
    }
}

impl MeshOwner for Core {
    fn mesh(&self) -> &Mesh<Core> {
        &self.mesh
    }
}
