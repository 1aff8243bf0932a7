//! A read-only copy of one core's HNSW graph, laid out for searching.
//!
//! hnsw_rs builds and owns the graph (on the index's helper thread), and
//! its dumps are the graph's on-disk form. Its own search is slow on the
//! request path: per visited point it allocates (an `Arc` per candidate, a
//! `HashMap` entry) and takes a read lock, and it enters layer 0 after one
//! step per upper layer. Measured in-process on Fashion-MNIST (60,000 ×
//! 784, m 16; an experiment outside the tree), the same graph searched
//! through a copy like this one gave equal recall at 1.2–3.6× the queries
//! per second; bench/RESULTS.md has the figures through HTTP.
//!
//! So the helper thread *freezes* the graph after it applied a batch of
//! commands: every point's links become slot numbers in one flat array
//! (CSR), and the vectors are copied, slot after slot, into chunks of
//! about [`CHUNK_BYTES`], so that a vector's address is computed, not loaded
//! (a table of pointers per point made every visited neighbour one more
//! cache miss: 40 % of the search's time in a profile). A point keeps its
//! slot from one freeze to the next ([`Layout`]), so full chunks are shared
//! with the previous copy and a freeze copies only the vectors added since.
//! The next neighbour's vector is prefetched while the current one is
//! compared. The reactor searches the newest frozen copy with a reused
//! [`Scratch`]: no allocation per visited point, no lock, no thread. The
//! price is a second copy of each vector (`dimension × 4` bytes).
//!
//! Invariants:
//! * A frozen copy is immutable; a newer graph state is a new copy.
//! * Every link names a slot of the same copy (links to points the copy
//!   does not hold are dropped when freezing).
//! * The search is the usual HNSW one: greedy descent through the upper
//!   layers (repeated until no neighbour is nearer), then a best-first
//!   search of breadth `ef` in layer 0. Points that `accept` refuses
//!   (tombstones) are walked through but never returned.

use super::block::Block;
use super::distance::Metric;
use super::graph::Hnsw;
use super::prune;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// Cache lines of the next neighbour's vector a search prefetches while it
/// compares the current one. Measured in-process on Fashion-MNIST (784
/// dimensions, 49 lines): 8 lines gave about 5 % more queries per second
/// than 2; all of them, or the first line of every neighbour at once, gave
/// no more (bench/RESULTS.md).
const PREFETCH_LINES: usize = 8;

/// Bytes of vectors per chunk of the copy (whole vectors, as many as
/// fit): four 2 MiB huge pages ([`Block`]), so that nearly all of a
/// copy's vectors are in huge pages, while a freeze re-copies at most one
/// partial chunk.
pub const CHUNK_BYTES: usize = 8 << 20;

/// Where each point of a graph lives in its frozen copies, kept by the
/// helper thread from one freeze to the next (reset when the graph is
/// replaced): slots are handed out in the order points are first seen and
/// never change, so chunks of vectors already copied are shared, and so
/// are the pruned layer-0 lists of points whose links did not change.
pub struct Layout {
    slot_of: HashMap<usize, u32>,
    /// Slot → graph id.
    ids: Vec<usize>,
    /// The vectors of slots `0..ids.len()`, `per_chunk` slots per chunk
    /// (the last one may be shorter).
    chunks: Vec<Arc<Block>>,
    /// Bytes of vectors per chunk ([`CHUNK_BYTES`]; less in tests).
    chunk_bytes: usize,
    /// Re-prune layer-0 lists with the heuristic ([`prune`]): off in the
    /// server (it cost more recall than it saved, see prune.rs), on only
    /// to measure it.
    prune: bool,
    /// Slot → [`prune::list_hash`] of its raw layer-0 list when last
    /// frozen.
    raw_hash: Vec<u64>,
    /// The last copy's layer-0 links (the pruned lists to reuse).
    last: Option<Arc<Links>>,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            slot_of: HashMap::new(),
            ids: Vec::new(),
            chunks: Vec::new(),
            chunk_bytes: CHUNK_BYTES,
            prune: false,
            raw_hash: Vec::new(),
            last: None,
        }
    }
}

/// Slots per chunk for vectors of `dimension`, chunks of `bytes`.
fn per_chunk(bytes: usize, dimension: usize) -> usize {
    (bytes / (4 * dimension.max(1))).max(1)
}

impl Layout {
    /// A layout with small chunks (tests: chunk sharing on small graphs).
    #[cfg(test)]
    fn with_chunk_bytes(chunk_bytes: usize) -> Layout {
        Layout {
            chunk_bytes,
            ..Layout::default()
        }
    }

    /// A layout whose copies re-prune hnsw_rs's layer-0 lists (to measure
    /// what pruning changes; the server keeps the lists as they are).
    pub fn pruned() -> Layout {
        Layout {
            prune: true,
            ..Layout::default()
        }
    }
}

/// Layer-0 links, one fixed-size row per slot: `rows[s * stride]` is slot
/// `s`'s number of links, and they follow it. A fixed stride (as hnswlib
/// lays its lists out) finds a list with one load instead of two (an
/// offset, then the list), and lets a search prefetch the list of a point
/// as soon as it becomes a candidate.
pub struct Links {
    stride: usize,
    rows: Vec<u32>,
}

impl Links {
    /// An empty table for lists of at most `most` links.
    fn new(most: usize, slots: usize) -> Links {
        let stride = most + 1;
        Links {
            stride,
            rows: Vec::with_capacity(slots * stride),
        }
    }

    /// Adds the next slot's list (at most `stride - 1` links are kept:
    /// lists are nearest first, so the farthest go).
    fn push(&mut self, list: &[u32]) {
        let n = list.len().min(self.stride - 1);
        self.rows.push(n as u32);
        self.rows.extend_from_slice(&list[..n]);
        let end = self.rows.len() + (self.stride - 1 - n);
        self.rows.resize(end, 0);
    }

    #[inline]
    fn of(&self, slot: u32) -> &[u32] {
        let at = slot as usize * self.stride;
        let n = self.rows[at] as usize;
        &self.rows[at + 1..at + 1 + n]
    }

    /// Asks the CPU to start loading a slot's list (its first two lines).
    #[inline]
    fn prefetch(&self, slot: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(row) = self.rows.get(slot as usize * self.stride..) {
            // SAFETY: a prefetch is a hint that never faults.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().cast());
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(16).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// Slots with a list.
    fn len(&self) -> usize {
        self.rows.len() / self.stride
    }

    /// Links in all.
    fn total(&self) -> usize {
        (0..self.len())
            .map(|s| self.rows[s * self.stride] as usize)
            .sum()
    }
}

/// A frozen graph: slots, layer-0 links (CSR), upper-layer links.
pub struct Frozen {
    metric: Metric,
    dimension: usize,
    /// Slot → graph id.
    ids: Vec<usize>,
    /// Slot `s`'s vector:
    /// `chunks[s / per_chunk][(s % per_chunk) * dimension..]`.
    chunks: Vec<Arc<Block>>,
    per_chunk: usize,
    /// The layer-0 links (pruned, see [`prune`]).
    level0: Arc<Links>,
    /// Layer `l` (1-based index `l - 1`): slot → its links in that layer.
    upper: Vec<HashMap<u32, Box<[u32]>>>,
    /// The entry slot (on the top layer).
    entry: Option<u32>,
}

/// A distance and a slot, ordered by distance then slot.
#[derive(Clone, Copy, PartialEq)]
struct Near(f32, u32);

impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// What a search reuses: visited marks and both heaps (one per core).
#[derive(Default)]
pub struct Scratch {
    marks: Vec<u32>,
    epoch: u32,
    candidates: BinaryHeap<Reverse<Near>>,
    best: BinaryHeap<Near>,
    /// Distances computed by the searches so far (a figure for benches).
    pub distances: u64,
}

impl Scratch {
    /// Starts a search over `n` slots: a fresh epoch, empty heaps.
    fn start(&mut self, n: usize) -> u32 {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
        self.candidates.clear();
        self.best.clear();
        self.epoch
    }
}

impl Frozen {
    /// An empty copy.
    pub fn empty(metric: Metric) -> Frozen {
        Frozen {
            metric,
            dimension: 0,
            ids: Vec::new(),
            chunks: Vec::new(),
            per_chunk: 1,
            level0: Arc::new(Links::new(0, 0)),
            upper: Vec::new(),
            entry: None,
        }
    }

    /// Freezes `graph` as it is now (called by the thread that writes it,
    /// so no insert runs meanwhile), with the slots of `layout` (a fresh
    /// `Layout` for a graph not frozen before).
    pub fn of(graph: &Hnsw, metric: Metric, layout: &mut Layout) -> Frozen {
        let indexation = graph.get_point_indexation();
        let top = graph.get_max_level_observed() as usize;
        let mut points = Vec::with_capacity(graph.get_nb_point());
        let mut entry = None;
        let mut dimension = 0;
        let copied = layout.ids.len();
        // Layer by layer, top first: the entry point is on the top layer.
        for layer in (0..=top).rev() {
            for point in indexation.get_layer_iterator(layer) {
                let id = point.get_origin_id();
                let next = layout.ids.len() as u32;
                let slot = *layout.slot_of.entry(id).or_insert(next);
                if slot == next {
                    layout.ids.push(id);
                }
                entry.get_or_insert(slot);
                dimension = point.get_v().len();
                points.push((slot, point));
            }
        }
        points.sort_unstable_by_key(|(slot, _)| *slot);
        // Vectors: full chunks stay shared; the last partial chunk and the
        // new ones are made again from the points.
        let per_chunk = per_chunk(layout.chunk_bytes, dimension);
        let keep = copied / per_chunk;
        layout.chunks.truncate(keep);
        for start in (keep * per_chunk..layout.ids.len()).step_by(per_chunk) {
            let end = (start + per_chunk).min(layout.ids.len());
            let mut chunk = Vec::with_capacity((end - start) * dimension);
            for (_, point) in &points[start..end] {
                chunk.extend_from_slice(point.get_v());
            }
            layout.chunks.push(Arc::new(Block::copy_of(&chunk)));
        }
        let max0 = 2 * graph.get_max_nb_connection() as usize;
        let mut table = Links::new(max0, points.len());
        let mut row: Vec<u32> = Vec::with_capacity(max0 + 1);
        let mut upper: Vec<HashMap<u32, Box<[u32]>>> = vec![HashMap::new(); top];
        let mut raw: Vec<(f32, u32)> = Vec::with_capacity(max0 + 1);
        let mut raw_slots: Vec<u32> = Vec::with_capacity(max0 + 1);
        let Layout {
            slot_of,
            ids,
            chunks,
            prune,
            raw_hash,
            last,
            ..
        } = layout;
        raw_hash.resize(ids.len(), 0);
        let vector = |s: u32| {
            let s = s as usize;
            let at = (s % per_chunk) * dimension;
            &chunks[s / per_chunk][at..at + dimension]
        };
        let mut pruned = 0usize;
        for (slot, point) in &points {
            let hood = point.get_neighborhood_id();
            row.clear();
            if let Some(list) = hood.first() {
                raw.clear();
                raw_slots.clear();
                for n in list {
                    if let Some(&s) = slot_of.get(&n.d_id) {
                        raw.push((n.distance, s));
                        raw_slots.push(s);
                    }
                }
                if *prune {
                    let h = prune::list_hash(&raw_slots);
                    let old = &mut raw_hash[*slot as usize];
                    match last {
                        Some(last) if *old == h && (*slot as usize) < last.len() => {
                            row.extend_from_slice(last.of(*slot));
                        }
                        _ => {
                            prune::select(
                                &mut raw,
                                max0,
                                |a, b| metric.graph_distance(vector(a), vector(b)),
                                &mut row,
                            );
                            pruned += 1;
                        }
                    }
                    *old = h;
                } else {
                    row.extend_from_slice(&raw_slots);
                }
            }
            table.push(&row);
            for (layer, list) in hood.iter().enumerate().skip(1) {
                if layer <= top {
                    let l: Box<[u32]> = list
                        .iter()
                        .filter_map(|n| slot_of.get(&n.d_id).copied())
                        .collect();
                    if !l.is_empty() {
                        upper[layer - 1].insert(*slot, l);
                    }
                }
            }
        }
        let level0 = Arc::new(table);
        *last = Some(level0.clone());
        tracing::trace!(points = points.len(), pruned, "graph frozen");
        Frozen {
            metric,
            dimension,
            ids: layout.ids.clone(),
            chunks: layout.chunks.clone(),
            per_chunk,
            level0,
            upper,
            entry,
        }
    }

    /// A copy of a graph given as lists (for benches: another library's
    /// graph searched with this code). `vectors[s]` and `level0[s]` are
    /// slot `s`'s, `upper[l - 1]` maps a slot to its links in layer `l`;
    /// every link must be a slot below `vectors.len()`.
    pub fn from_lists(
        metric: Metric,
        vectors: &[Vec<f32>],
        level0: &[Vec<u32>],
        upper: Vec<HashMap<u32, Box<[u32]>>>,
        entry: u32,
    ) -> Frozen {
        let dimension = vectors.first().map_or(0, Vec::len);
        let per_chunk = per_chunk(CHUNK_BYTES, dimension);
        let chunks = vectors
            .chunks(per_chunk)
            .map(|c| Arc::new(Block::copy_of(&c.concat())))
            .collect();
        let most = level0.iter().map(Vec::len).max().unwrap_or(0);
        let mut table = Links::new(most, level0.len());
        for l in level0 {
            table.push(l);
        }
        Frozen {
            metric,
            dimension,
            ids: (0..vectors.len()).collect(),
            chunks,
            per_chunk,
            level0: Arc::new(table),
            upper,
            entry: (!vectors.is_empty()).then_some(entry),
        }
    }

    /// Points in the copy.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Mean layer-0 links per point (a figure for benches).
    pub fn links_per_point(&self) -> f64 {
        self.level0.total() as f64 / self.len().max(1) as f64
    }

    #[inline]
    fn vector(&self, slot: u32) -> &[f32] {
        let s = slot as usize;
        let at = (s % self.per_chunk) * self.dimension;
        &self.chunks[s / self.per_chunk][at..at + self.dimension]
    }

    /// Asks the CPU to start loading a slot's vector: its first
    /// [`PREFETCH_LINES`] cache lines (the hardware prefetcher follows on
    /// with the rest).
    #[inline]
    fn prefetch(&self, slot: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let v = self.vector(slot);
            for line in (0..v.len()).step_by(16).take(PREFETCH_LINES) {
                // SAFETY: a prefetch is a hint that never faults; the
                // address is inside `v`.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    _mm_prefetch::<_MM_HINT_T0>(v[line..].as_ptr().cast());
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    #[inline]
    fn distance(&self, query: &[f32], slot: u32) -> f32 {
        self.metric.graph_distance(query, self.vector(slot))
    }

    /// The distance, or a number above `bound` when it is known to be
    /// above (see [`Metric::graph_distance_above`]).
    #[inline]
    fn distance_above(&self, query: &[f32], slot: u32, bound: f32) -> f32 {
        self.metric
            .graph_distance_above(query, self.vector(slot), bound)
    }

    /// Up to `n` accepted points nearest to `query` (prepared), nearest
    /// first, as (graph id, graph distance), searched with breadth
    /// `max(ef, n)`.
    pub fn search(
        &self,
        query: &[f32],
        n: usize,
        ef: usize,
        scratch: &mut Scratch,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        let Some(mut at) = self.entry else {
            return Vec::new();
        };
        let ef = ef.max(n).max(1);
        let mut computed = 1u64;
        let mut d_at = self.distance(query, at);
        for layer in self.upper.iter().rev() {
            loop {
                let mut moved = false;
                for &next in layer.get(&at).map(|l| &l[..]).unwrap_or(&[]) {
                    computed += 1;
                    let d = self.distance_above(query, next, d_at);
                    if d < d_at {
                        (at, d_at) = (next, d);
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        let epoch = scratch.start(self.ids.len());
        let Scratch {
            marks,
            candidates,
            best,
            distances,
            ..
        } = scratch;
        marks[at as usize] = epoch;
        candidates.push(Reverse(Near(d_at, at)));
        if accept(self.ids[at as usize]) {
            best.push(Near(d_at, at));
        }
        while let Some(Reverse(Near(d_c, c))) = candidates.pop() {
            if best.len() >= ef && best.peek().is_some_and(|w| d_c > w.0) {
                break;
            }
            let links = self.level0.of(c);
            for (i, &next) in links.iter().enumerate() {
                let mark = &mut marks[next as usize];
                if *mark == epoch {
                    continue;
                }
                *mark = epoch;
                if let Some(&after) = links.get(i + 1) {
                    self.prefetch(after);
                }
                computed += 1;
                // Only a distance below the worst of a full `best` matters.
                let bound = match best.peek() {
                    Some(w) if best.len() >= ef => w.0,
                    _ => f32::INFINITY,
                };
                let d = self.distance_above(query, next, bound);
                if best.len() < ef || d < bound {
                    self.level0.prefetch(next);
                    candidates.push(Reverse(Near(d, next)));
                    if accept(self.ids[next as usize]) {
                        best.push(Near(d, next));
                        if best.len() > ef {
                            best.pop();
                        }
                    }
                }
            }
        }
        *distances += computed;
        let mut found: Vec<Near> = best.drain().collect();
        found.sort_unstable();
        found.truncate(n);
        found
            .into_iter()
            .map(|Near(d, s)| (self.ids[s as usize], d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::distance::GraphDistance;

    fn rnd(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % 10_000) as f32 / 10_000.0
    }

    #[test]
    fn frozen_search_finds_the_exact_neighbours_and_skips_refused_points() {
        let dim = 8;
        let graph: Hnsw = Hnsw::new(8, 2000, 16, 100, GraphDistance(Metric::L2));
        let mut seed = 7u64;
        let points: Vec<Vec<f32>> = (0..2000)
            .map(|_| (0..dim).map(|_| rnd(&mut seed)).collect())
            .collect();
        for (i, p) in points.iter().enumerate() {
            graph.insert_slice((p, i * 3));
        }
        // Chunks of 1,024 vectors of 8 dimensions, so that 2,000 fill one.
        let mut layout = Layout::with_chunk_bytes(1024 * 8 * 4);
        // Frozen twice: the second copy shares the first one's full chunks.
        let first = Frozen::of(&graph, Metric::L2, &mut layout);
        let frozen = Frozen::of(&graph, Metric::L2, &mut layout);
        assert_eq!(frozen.len(), 2000);
        assert!(Arc::ptr_eq(&first.chunks[0], &frozen.chunks[0]));
        for slot in 0..2000u32 {
            assert_eq!(
                frozen.vector(slot),
                &points[frozen.ids[slot as usize] / 3][..]
            );
        }
        // The same graph with re-pruned lists (not what the server does).
        let mut pruned_layout = Layout::pruned();
        let pruned_first = Frozen::of(&graph, Metric::L2, &mut pruned_layout);
        let pruned = Frozen::of(&graph, Metric::L2, &mut pruned_layout);
        let mut scratch = Scratch::default();
        for frozen in [&frozen, &pruned] {
            let (mut hits, mut total) = (0, 0);
            for _ in 0..50 {
                let q: Vec<f32> = (0..dim).map(|_| rnd(&mut seed)).collect();
                // Odd points are refused (tombstones).
                let accept = |id: usize| (id / 3).is_multiple_of(2);
                let mut exact: Vec<(f32, usize)> = points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (Metric::L2.graph_distance(&q, p), i * 3))
                    .filter(|(_, id)| accept(*id))
                    .collect();
                exact.sort_by(|a, b| a.0.total_cmp(&b.0));
                let found = frozen.search(&q, 10, 64, &mut scratch, accept);
                assert_eq!(found.len(), 10);
                assert!(found.iter().all(|(id, _)| accept(*id)), "a refused point");
                assert!(found.windows(2).all(|w| w[0].1 <= w[1].1), "not sorted");
                for (id, d) in &found {
                    assert_eq!(*d, Metric::L2.graph_distance(&q, &points[id / 3]));
                }
                let truth: Vec<usize> = exact.iter().take(10).map(|e| e.1).collect();
                hits += found.iter().filter(|(id, _)| truth.contains(id)).count();
                total += 10;
            }
            assert!(hits * 100 >= total * 95, "recall {hits}/{total}");
        }
        // The pruned lists: each a subset of hnsw_rs's list, nearest first
        // kept, shorter on the whole; a second freeze reuses them.
        let raw = &frozen;
        assert_eq!(raw.ids, pruned.ids, "same slots from the same graph");
        assert!(pruned.links_per_point() < raw.links_per_point());
        for slot in 0..2000u32 {
            let (p, r) = (pruned.level0.of(slot), raw.level0.of(slot));
            assert!(
                p.iter().all(|s| r.contains(s)),
                "slot {slot}: {p:?} ⊄ {r:?}"
            );
            let d = |s: &u32| Metric::L2.graph_distance(raw.vector(slot), raw.vector(*s));
            let nearest = r.iter().min_by(|a, b| d(a).total_cmp(&d(b)));
            assert_eq!(
                p.first().map(d),
                nearest.map(d),
                "slot {slot}: the nearest is kept"
            );
            assert_eq!(p, pruned_first.level0.of(slot), "reused as it was");
        }
        // More inserts: the lists a freeze reuses or prunes again are those
        // a fresh freeze of the same graph makes.
        for i in 2000..2500 {
            let p: Vec<f32> = (0..dim).map(|_| rnd(&mut seed)).collect();
            graph.insert_slice((&p, i * 3));
        }
        let again = Frozen::of(&graph, Metric::L2, &mut pruned_layout);
        let fresh = Frozen::of(&graph, Metric::L2, &mut Layout::pruned());
        let slot_in_fresh: HashMap<usize, u32> = fresh
            .ids
            .iter()
            .enumerate()
            .map(|(s, id)| (*id, s as u32))
            .collect();
        let as_ids = |f: &Frozen, s: u32| -> Vec<usize> {
            f.level0.of(s).iter().map(|x| f.ids[*x as usize]).collect()
        };
        for slot in 0..2500u32 {
            let id = again.ids[slot as usize];
            assert_eq!(as_ids(&again, slot), as_ids(&fresh, slot_in_fresh[&id]));
        }
        // An empty copy finds nothing.
        assert!(Frozen::empty(Metric::L2)
            .search(&[0.0; 8], 10, 10, &mut scratch, |_| true)
            .is_empty());
    }
}
