//! One core's HNSW graph of one vector index, and the helper thread that
//! writes it.
//!
//! hnsw_rs cannot delete a point. So the graph holds points by an id that
//! is never reused, and the core keeps the live `key ↔ id` mapping
//! ([`Ids`]): an update maps the key to a new id (the old point becomes a
//! tombstone), a delete unmaps it. A search keeps only ids that are still
//! mapped, so it never returns a deleted or stale vector. The mapping is
//! changed only on this core, right after the write's commit.
//!
//! The graph itself is written only by this index's helper thread on this
//! core (FIFO commands: insert, bulk insert, rebuild); the reactor never
//! waits for it. The reactor searches a [`Frozen`] copy of the graph that
//! the helper makes after applying commands (at most every few
//! milliseconds, and at least every [`FREEZE_AFTER`] inserts), never the
//! graph the helper is writing. A vector that is not in the newest frozen
//! copy yet is in `pending` and searched exactly, so a search sees every
//! acknowledged write. When the helper has frozen the graph with command
//! `seq` applied it hands the copy over, then publishes `done = seq`;
//! pending entries up to `done` are then dropped.
//!
//! Rebuilds: once tombstones pass [`super::REBUILD_DELETED_SHARE`] of the
//! points, the reactor sends the live ids; the helper builds a new graph of
//! those points (same ids) and hands it back through a channel. Commands
//! queued after the rebuild apply to the new graph.

use super::distance::{GraphDistance, Metric};
use super::frozen::{Frozen, Layout, Scratch};
use super::{VectorDef, REBUILD_DELETED_SHARE, REBUILD_MIN_POINTS};
use crossbeam_channel::{Receiver, Sender};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The graph type: f32 vectors, our metrics.
pub type Hnsw = hnsw_rs::hnsw::Hnsw<'static, f32, GraphDistance>;

/// Layers of an hnsw_rs graph (its maximum).
const MAX_LAYER: usize = 16;
/// Inserts queued together go through rayon's `parallel_insert` from this
/// many on.
const PARALLEL_FROM: usize = 64;
/// The helper freezes the graph after this many inserts even while more
/// commands wait (bounds the pending vectors a search computes exactly).
const FREEZE_AFTER: usize = 4096;
/// Least time between two freezes while inserts trickle in, and how many
/// times a freeze's own duration it is at least (freezing stays a small
/// share of the helper's work on large graphs).
const FREEZE_GAP: Duration = Duration::from_millis(10);
const FREEZE_GAP_FACTOR: u32 = 4;

/// A new, empty graph for `def`.
pub fn new_graph(def: &VectorDef, capacity: usize) -> Hnsw {
    let mut h = Hnsw::new(
        def.m,
        capacity.max(1024),
        MAX_LAYER,
        def.ef_construction,
        GraphDistance(def.metric),
    );
    // No `keep_pruned`: filling each node's links up with the nearest
    // candidates the heuristic pruned costs recall at every ef (Fashion-
    // MNIST, m 16: 0.952 against 0.993 at ef 32; bench/RESULTS.md).
    h.set_keeping_pruned(false);
    h
}

/// What the helper hands the core: a new frozen copy, and the graph
/// itself when it was replaced (rebuild, loaded dump).
struct Snapshot {
    frozen: Arc<Frozen>,
    replaced: Option<Arc<Hnsw>>,
}

/// Where a core's graph is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Being filled from storage (start-up) or from the table (create):
    /// not searched yet.
    Loading,
    Ready,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Loading => "loading",
            State::Ready => "ready",
        }
    }
}

/// Work for the helper thread.
enum Command {
    Insert {
        id: usize,
        vector: Arc<[f32]>,
    },
    Bulk {
        items: Vec<(usize, Vec<f32>)>,
    },
    Rebuild {
        live: Vec<usize>,
    },
    /// Use this graph from now on (a loaded dump).
    Replace {
        graph: Box<Hnsw>,
    },
}

type FxSet = HashSet<usize, rustc_hash::FxBuildHasher>;

/// The live mapping between keys and graph ids.
#[derive(Default)]
struct Ids {
    by_key: HashMap<Rc<str>, usize>,
    by_id: HashMap<usize, Rc<str>, rustc_hash::FxBuildHasher>,
    /// The tombstones: ids that left `by_id` and may still be in the graph
    /// (every id ever mapped, less `by_id`, less those a rebuild dropped).
    /// Usually small or empty, so a search checks it instead of looking
    /// every candidate up in `by_id` (two cache misses per point).
    dead: FxSet,
}

impl Ids {
    /// Unmaps `id` (now a tombstone).
    fn unmap(&mut self, id: usize) {
        self.by_id.remove(&id);
        self.dead.insert(id);
    }
}

/// A vector written but perhaps not yet in the graph.
struct Pending {
    seq: u64,
    id: usize,
    vector: Arc<[f32]>,
}

/// One candidate of a core's search.
#[derive(Debug, Clone)]
pub struct Hit {
    pub key: Rc<str>,
    /// The graph distance (see [`Metric::reported`]).
    pub distance: f32,
}

/// Counters shown in `/vector/index/stats`.
#[derive(Default)]
struct Figures {
    searches: Cell<u64>,
    last_ef: Cell<usize>,
    rebuilds: Cell<u64>,
    loaded_from: Cell<&'static str>,
    load_ms: Cell<u64>,
    loaded: Cell<u64>,
    skipped: Cell<u64>,
}

/// One core's graph of one index.
pub struct CoreGraph {
    core: usize,
    def: Arc<VectorDef>,
    state: Cell<State>,
    /// Keys written while loading: the loader leaves them to the writes.
    touched: RefCell<Option<HashSet<Rc<str>>>>,
    loader_started: Cell<bool>,
    ids: RefCell<Ids>,
    next_id: Cell<usize>,
    /// The graph the helper writes (for dumps).
    graph: RefCell<Arc<Hnsw>>,
    /// What searches read.
    frozen: RefCell<Arc<Frozen>>,
    scratch: RefCell<Scratch>,
    pending: RefCell<VecDeque<Pending>>,
    next_seq: Cell<u64>,
    rebuild_seq: Cell<Option<u64>>,
    /// The tombstones when the rebuild in flight was asked for: the new
    /// graph leaves them out, so they stop being tombstones when it is here.
    rebuild_dead: RefCell<FxSet>,
    to_helper: Sender<(u64, Command)>,
    done: Arc<AtomicU64>,
    snapshots: Receiver<Snapshot>,
    figures: Figures,
}

impl CoreGraph {
    /// An empty graph, loading, with its helper thread.
    pub fn new(core: usize, def: Arc<VectorDef>) -> CoreGraph {
        let graph = Arc::new(new_graph(&def, 0));
        let metric = def.metric;
        let (to_helper, commands) = crossbeam_channel::unbounded();
        let (snapshot_tx, snapshots) = crossbeam_channel::unbounded();
        let done = Arc::new(AtomicU64::new(0));
        let helper = Helper {
            def: def.clone(),
            graph: graph.clone(),
            done: done.clone(),
            snapshots: snapshot_tx,
            replaced: None,
            unfrozen: 0,
            applied: 0,
            last_freeze: Instant::now(),
            gap: FREEZE_GAP,
            layout: Layout::default(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("themis-vec-{}-{core}", def.id))
            .spawn(move || helper.run(commands));
        if let Err(e) = spawned {
            tracing::error!(
                index = def.id,
                core,
                "cannot start the vector helper thread: {e}"
            );
        }
        CoreGraph {
            core,
            def,
            state: Cell::new(State::Loading),
            touched: RefCell::new(Some(HashSet::new())),
            loader_started: Cell::new(false),
            ids: Default::default(),
            next_id: Cell::new(0),
            graph: RefCell::new(graph),
            frozen: RefCell::new(Arc::new(Frozen::empty(metric))),
            scratch: Default::default(),
            pending: Default::default(),
            next_seq: Cell::new(0),
            rebuild_seq: Cell::new(None),
            rebuild_dead: Default::default(),
            to_helper,
            done,
            snapshots,
            figures: Default::default(),
        }
    }

    pub fn def(&self) -> &Arc<VectorDef> {
        &self.def
    }

    pub fn state(&self) -> State {
        self.state.get()
    }

    /// Claims the right to load this graph (once).
    pub fn claim_loader(&self) -> bool {
        !self.loader_started.replace(true)
    }

    fn send(&self, cmd: Command) -> u64 {
        let seq = self.next_seq.get() + 1;
        self.next_seq.set(seq);
        if self.to_helper.send((seq, cmd)).is_err() {
            tracing::error!(
                index = self.def.id,
                core = self.core,
                "vector helper thread is gone"
            );
        }
        seq
    }

    /// The last command sent.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.get()
    }

    /// Whether the helper has applied every command up to `seq`.
    pub fn applied(&self, seq: u64) -> bool {
        self.done.load(Ordering::Acquire) >= seq
    }

    /// Takes the helper's news: a newer frozen copy (and a rebuilt graph),
    /// and which pending vectors it holds. (`done` is read before the
    /// snapshots are drained: the helper hands a copy over before it
    /// publishes its commands as done, so pending entries are only dropped
    /// once the copy that holds them is here.)
    fn refresh(&self) {
        let done = self.done.load(Ordering::Acquire);
        while let Ok(s) = self.snapshots.try_recv() {
            *self.frozen.borrow_mut() = s.frozen;
            if let Some(g) = s.replaced {
                *self.graph.borrow_mut() = g;
                self.figures.rebuilds.set(self.figures.rebuilds.get() + 1);
            }
        }
        if self.rebuild_seq.get().is_some_and(|s| s <= done) {
            self.rebuild_seq.set(None);
            let dropped = std::mem::take(&mut *self.rebuild_dead.borrow_mut());
            self.ids
                .borrow_mut()
                .dead
                .retain(|id| !dropped.contains(id));
        }
        let mut p = self.pending.borrow_mut();
        while p.front().is_some_and(|e| e.seq <= done) {
            p.pop_front();
        }
    }

    fn new_id(&self) -> usize {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Maps `key` to a new point holding `vector` (as stored; prepared
    /// here), replacing its previous point. After the write's commit.
    pub fn upsert(&self, key: &str, mut vector: Vec<f32>) {
        self.note_touched(key);
        if self.def.metric.prepare(&mut vector).is_err() {
            // Validated before the commit; a vector that fails here is not
            // searchable, and its key is unmapped rather than stale.
            self.remove(key);
            return;
        }
        let id = self.new_id();
        let key: Rc<str> = Rc::from(key);
        {
            let mut ids = self.ids.borrow_mut();
            if let Some(old) = ids.by_key.insert(key.clone(), id) {
                ids.unmap(old);
            }
            ids.by_id.insert(id, key);
        }
        let vector: Arc<[f32]> = Arc::from(vector);
        let seq = self.send(Command::Insert {
            id,
            vector: vector.clone(),
        });
        self.pending
            .borrow_mut()
            .push_back(Pending { seq, id, vector });
        self.maybe_rebuild();
    }

    /// Unmaps `key` (its point becomes a tombstone). After the commit.
    pub fn remove(&self, key: &str) {
        self.note_touched(key);
        {
            let mut ids = self.ids.borrow_mut();
            if let Some(old) = ids.by_key.remove(key) {
                ids.unmap(old);
            }
        }
        self.maybe_rebuild();
    }

    /// Whether a write changed `key` while loading.
    pub fn touched(&self, key: &str) -> bool {
        self.touched
            .borrow()
            .as_ref()
            .is_some_and(|t| t.contains(key))
    }

    /// Whether any write arrived while loading.
    pub fn any_touched(&self) -> bool {
        self.touched
            .borrow()
            .as_ref()
            .is_some_and(|t| !t.is_empty())
    }

    fn note_touched(&self, key: &str) {
        if let Some(t) = self.touched.borrow_mut().as_mut() {
            t.insert(Rc::from(key));
        }
    }

    /// Loader: adds stored vectors in bulk, except those of keys a write
    /// changed meanwhile. Returns how many were added.
    pub fn load_chunk(&self, items: Vec<(String, Vec<f32>)>) -> usize {
        let mut bulk = Vec::with_capacity(items.len());
        {
            let touched = self.touched.borrow();
            let mut ids = self.ids.borrow_mut();
            for (key, mut v) in items {
                if touched.as_ref().is_some_and(|t| t.contains(key.as_str())) {
                    continue;
                }
                if v.len() != self.def.dimension || self.def.metric.prepare(&mut v).is_err() {
                    continue;
                }
                let id = self.new_id();
                let key: Rc<str> = Rc::from(key);
                if let Some(old) = ids.by_key.insert(key.clone(), id) {
                    ids.unmap(old);
                }
                ids.by_id.insert(id, key);
                bulk.push((id, v));
            }
        }
        let n = bulk.len();
        if n > 0 {
            self.send(Command::Bulk { items: bulk });
        }
        n
    }

    /// Loader: use a loaded dump's graph, with its key of each id.
    pub fn load_dump(&self, graph: Hnsw, keys: Vec<(usize, String)>) {
        {
            let mut ids = self.ids.borrow_mut();
            let mut max = self.next_id.get();
            for (id, key) in keys {
                let key: Rc<str> = Rc::from(key);
                ids.by_key.insert(key.clone(), id);
                ids.by_id.insert(id, key);
                max = max.max(id + 1);
            }
            self.next_id.set(max);
        }
        self.send(Command::Replace {
            graph: Box::new(graph),
        });
    }

    /// Loader: every chunk is queued; searchable once the helper applied
    /// them.
    pub fn finish_loading(&self, from: &'static str, ms: u64, loaded: u64, skipped: u64) {
        self.refresh();
        self.state.set(State::Ready);
        *self.touched.borrow_mut() = None;
        self.figures.loaded_from.set(from);
        self.figures.load_ms.set(ms);
        self.figures.loaded.set(loaded);
        self.figures.skipped.set(skipped);
        self.maybe_rebuild();
    }

    /// Points in the graph or queued for it, and the tombstones among them.
    fn counts(&self) -> (usize, usize) {
        let in_graph = self.frozen.borrow().len();
        let queued = self.pending.borrow().len();
        let live = self.ids.borrow().by_id.len();
        let total = in_graph + queued;
        (total, total.saturating_sub(live))
    }

    fn maybe_rebuild(&self) {
        if self.state.get() != State::Ready || self.rebuild_seq.get().is_some() {
            return;
        }
        let (total, deleted) = self.counts();
        if total < REBUILD_MIN_POINTS || (deleted as f64) <= REBUILD_DELETED_SHARE * total as f64 {
            return;
        }
        let live: Vec<usize> = self.ids.borrow().by_id.keys().copied().collect();
        *self.rebuild_dead.borrow_mut() = self.ids.borrow().dead.clone();
        tracing::info!(
            index = self.def.id,
            core = self.core,
            points = total,
            deleted,
            "vector graph rebuild (tombstones over the threshold)"
        );
        let seq = self.send(Command::Rebuild { live });
        self.rebuild_seq.set(Some(seq));
    }

    /// The graph, current (for a dump).
    pub fn graph_now(&self) -> Arc<Hnsw> {
        self.refresh();
        self.graph.borrow().clone()
    }

    /// The key of each live id (for a dump).
    pub fn live_ids(&self) -> Vec<(usize, String)> {
        self.ids
            .borrow()
            .by_id
            .iter()
            .map(|(id, k)| (*id, k.to_string()))
            .collect()
    }

    /// Live vectors on this core.
    pub fn live(&self) -> usize {
        self.ids.borrow().by_id.len()
    }

    /// Up to `n` live candidates nearest to `query` (prepared), best
    /// first: the graph searched with breadth `ef`, plus the pending
    /// vectors computed exactly. `exhausted`: every point was considered.
    pub fn candidates(&self, query: &[f32], n: usize, ef: usize) -> (Vec<Hit>, bool) {
        self.refresh();
        self.figures.searches.set(self.figures.searches.get() + 1);
        self.figures.last_ef.set(ef);
        let frozen = self.frozen.borrow().clone();
        let ids = self.ids.borrow();
        // Tombstones are walked through, never returned.
        let scratch = &mut self.scratch.borrow_mut();
        let found = if ids.dead.is_empty() {
            frozen.search(query, n, ef, scratch, |_| true)
        } else {
            frozen.search(query, n, ef, scratch, |id| !ids.dead.contains(&id))
        };
        let exhausted = n >= frozen.len();
        let mut seen: HashSet<usize, rustc_hash::FxBuildHasher> = HashSet::default();
        let mut hits = Vec::with_capacity(n + 8);
        for (id, distance) in found {
            if let Some(key) = ids.by_id.get(&id) {
                seen.insert(id);
                hits.push(Hit {
                    key: key.clone(),
                    distance,
                });
            }
        }
        let metric = self.def.metric;
        for p in self.pending.borrow().iter() {
            if seen.contains(&p.id) {
                continue;
            }
            if let Some(key) = ids.by_id.get(&p.id) {
                seen.insert(p.id);
                hits.push(Hit {
                    key: key.clone(),
                    distance: metric.graph_distance(query, &p.vector),
                });
            }
        }
        sort_hits(&mut hits);
        hits.truncate(n);
        (hits, exhausted)
    }

    /// `/vector/index/stats` for this core.
    pub fn stats(&self) -> serde_json::Value {
        self.refresh();
        let (total, deleted) = self.counts();
        let in_graph = self.frozen.borrow().len();
        let d = &self.def;
        // Per point: the vector, the links (level 0 holds up to 2m, each a
        // shared pointer to a small record), the id maps and hnsw_rs's
        // point record; the frozen copy's vector, slot and links.
        let per_point = d.dimension * 8 + 2 * d.m * 40 + 160 + 40 + 2 * d.m * 4;
        serde_json::json!({
            "core": self.core,
            "state": self.state.get().name(),
            "vectors": self.live(),
            "deleted": deleted,
            "points_in_graph": in_graph,
            "pending_inserts": self.pending.borrow().len(),
            "deleted_share": if total == 0 { 0.0 } else { deleted as f64 / total as f64 },
            "memory_bytes_estimate": total * per_point,
            "rebuilding": self.rebuild_seq.get().is_some(),
            "rebuilds": self.figures.rebuilds.get(),
            "searches": self.figures.searches.get(),
            "last_search_ef": self.figures.last_ef.get(),
            "load": {
                "from": self.figures.loaded_from.get(),
                "ms": self.figures.load_ms.get(),
                "vectors": self.figures.loaded.get(),
                "skipped_invalid": self.figures.skipped.get(),
            },
        })
    }
}

/// Orders hits by distance, then key (a deterministic order).
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// The helper thread's side.
struct Helper {
    def: Arc<VectorDef>,
    graph: Arc<Hnsw>,
    done: Arc<AtomicU64>,
    snapshots: Sender<Snapshot>,
    /// The graph was replaced since the last freeze.
    replaced: Option<Arc<Hnsw>>,
    /// Inserts applied since the last freeze.
    unfrozen: usize,
    /// The last command applied.
    applied: u64,
    last_freeze: Instant,
    /// Least time from one freeze to the next.
    gap: Duration,
    /// The slots of the graph's frozen copies.
    layout: Layout,
}

impl Helper {
    /// Applies commands in order until the core drops its end, freezing
    /// the graph for searches as it goes (see the module comment).
    fn run(mut self, commands: Receiver<(u64, Command)>) {
        loop {
            let first = if self.applied > self.done.load(Ordering::Relaxed) {
                // Something is not frozen yet: wait no longer than the gap.
                let wait = self.gap.saturating_sub(self.last_freeze.elapsed());
                match commands.recv_timeout(wait) {
                    Ok(c) => c,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        self.freeze();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match commands.recv() {
                    Ok(c) => c,
                    Err(_) => return,
                }
            };
            // Group consecutive single inserts for a parallel insert.
            let mut batch = vec![first];
            while batch.len() < FREEZE_AFTER {
                match commands.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut inserts: Vec<(usize, Arc<[f32]>)> = Vec::new();
            for (seq, cmd) in batch {
                match cmd {
                    Command::Insert { id, vector } => inserts.push((id, vector)),
                    other => {
                        self.insert_all(&mut inserts);
                        self.apply(other);
                    }
                }
                self.applied = seq;
            }
            self.insert_all(&mut inserts);
            if self.unfrozen >= FREEZE_AFTER
                || self.replaced.is_some()
                || self.last_freeze.elapsed() >= self.gap
            {
                self.freeze();
            }
        }
    }

    /// Hands the core a frozen copy of the graph as it is now, then
    /// publishes every applied command as done.
    fn freeze(&mut self) {
        let started = Instant::now();
        let frozen = Arc::new(Frozen::of(&self.graph, self.def.metric, &mut self.layout));
        let snapshot = Snapshot {
            frozen,
            replaced: self.replaced.take(),
        };
        let _ = self.snapshots.send(snapshot);
        self.done.store(self.applied, Ordering::Release);
        self.unfrozen = 0;
        self.gap = FREEZE_GAP.max(started.elapsed() * FREEZE_GAP_FACTOR);
        self.last_freeze = Instant::now();
    }

    fn insert_all(&mut self, inserts: &mut Vec<(usize, Arc<[f32]>)>) {
        if inserts.len() >= PARALLEL_FROM {
            let refs: Vec<(&[f32], usize)> = inserts.iter().map(|(id, v)| (&v[..], *id)).collect();
            self.graph.parallel_insert_slice(&refs);
        } else {
            for (id, v) in inserts.iter() {
                self.graph.insert_slice((&v[..], *id));
            }
        }
        self.unfrozen += inserts.len();
        inserts.clear();
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Insert { id, vector } => {
                self.graph.insert_slice((&vector[..], id));
                self.unfrozen += 1;
            }
            Command::Bulk { items } => {
                let refs: Vec<(&[f32], usize)> =
                    items.iter().map(|(id, v)| (&v[..], *id)).collect();
                self.graph.parallel_insert_slice(&refs);
                self.unfrozen += items.len();
            }
            Command::Rebuild { live } => {
                let started = Instant::now();
                let live: HashSet<usize> = live.into_iter().collect();
                let points: Vec<(usize, Vec<f32>)> = self
                    .graph
                    .get_point_indexation()
                    .into_iter()
                    .filter(|p| live.contains(&p.get_origin_id()))
                    .map(|p| (p.get_origin_id(), p.get_v().to_vec()))
                    .collect();
                let fresh = new_graph(&self.def, points.len());
                let refs: Vec<(&[f32], usize)> =
                    points.iter().map(|(id, v)| (&v[..], *id)).collect();
                fresh.parallel_insert_slice(&refs);
                tracing::info!(
                    index = self.def.id,
                    points = points.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "vector graph rebuilt"
                );
                self.swap(Arc::new(fresh));
            }
            Command::Replace { graph } => self.swap(Arc::new(*graph)),
        }
    }

    fn swap(&mut self, graph: Arc<Hnsw>) {
        self.graph = graph.clone();
        self.replaced = Some(graph);
        self.layout = Layout::default();
    }
}

/// The metric of a graph (for tests and dumps).
pub fn metric_of(g: &Hnsw) -> Metric {
    g.get_distance().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::VectorDef;
    use std::time::Duration;

    fn graph(metric: Metric) -> CoreGraph {
        let def = Arc::new(VectorDef::new(1, "t", "e", 4, metric, 8, 64, 64));
        let g = CoreGraph::new(0, def);
        g.finish_loading("rebuild", 0, 0, 0);
        g
    }

    fn settle(g: &CoreGraph) {
        let last = g.last_seq();
        let end = Instant::now() + Duration::from_secs(20);
        while !g.applied(last) {
            assert!(Instant::now() < end, "helper did not catch up");
            std::thread::sleep(Duration::from_millis(2));
        }
        g.refresh();
    }

    fn brute(model: &HashMap<String, Vec<f32>>, q: &[f32], k: usize) -> Vec<String> {
        let mut all: Vec<(f32, &String)> = model
            .iter()
            .map(|(key, v)| (Metric::L2.graph_distance(q, v), key))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        all.into_iter().take(k).map(|(_, k)| k.clone()).collect()
    }

    fn keys(hits: &[Hit]) -> Vec<String> {
        hits.iter().map(|h| h.key.to_string()).collect()
    }

    #[test]
    fn tombstones_are_never_returned_and_rebuilds_drop_them() {
        let g = graph(Metric::L2);
        let mut model = HashMap::new();
        let mut x = 1u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f32 / 1000.0
        };
        for i in 0..200 {
            let v: Vec<f32> = (0..4).map(|_| rnd()).collect();
            g.upsert(&format!("t:{i}"), v.clone());
            model.insert(format!("t:{i}"), v);
        }
        // Searchable before the helper inserted them (pending, exact).
        let q = vec![0.5; 4];
        let (hits, _) = g.candidates(&q, 10, 200);
        assert_eq!(keys(&hits), brute(&model, &q, 10));
        settle(&g);
        assert_eq!(keys(&g.candidates(&q, 10, 200).0), brute(&model, &q, 10));

        // Updates and deletes: over a fifth of the points become tombstones.
        for i in 0..40 {
            let v: Vec<f32> = (0..4).map(|_| rnd()).collect();
            g.upsert(&format!("t:{i}"), v.clone());
            model.insert(format!("t:{i}"), v);
        }
        for i in 40..80 {
            g.remove(&format!("t:{i}"));
            model.remove(&format!("t:{i}"));
        }
        for _ in 0..20 {
            let q: Vec<f32> = (0..4).map(|_| rnd()).collect();
            let (hits, _) = g.candidates(&q, 10, 200);
            for h in &hits {
                let v = model.get(&*h.key).expect("a removed key was returned");
                assert_eq!(h.distance, Metric::L2.graph_distance(&q, v), "stale vector");
            }
            assert_eq!(keys(&hits), brute(&model, &q, 10));
        }
        settle(&g);
        assert!(g.figures.rebuilds.get() >= 1, "no rebuild");
        let (total, deleted) = g.counts();
        assert!(
            total < 240 && deleted as f64 <= REBUILD_DELETED_SHARE * total as f64,
            "the rebuild dropped the tombstones: {total} points, {deleted} deleted"
        );
        assert_eq!(g.live(), 160);
        assert_eq!(
            g.ids.borrow().dead.len(),
            deleted,
            "the tombstone set is exactly the graph's points that are not live"
        );
        assert_eq!(keys(&g.candidates(&q, 10, 200).0), brute(&model, &q, 10));
    }
}
