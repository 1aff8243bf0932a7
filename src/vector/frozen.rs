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
//! [`CHUNK`] vectors, so that a vector's address is computed, not loaded
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

use super::distance::Metric;
use super::graph::Hnsw;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// Vectors per chunk of the copy.
pub const CHUNK: usize = 1024;

/// Where each point of a graph lives in its frozen copies, kept by the
/// helper thread from one freeze to the next (reset when the graph is
/// replaced): slots are handed out in the order points are first seen and
/// never change, so chunks of vectors already copied are shared.
#[derive(Default)]
pub struct Layout {
    slot_of: HashMap<usize, u32>,
    /// Slot → graph id.
    ids: Vec<usize>,
    /// The vectors of slots `0..ids.len()`, [`CHUNK`] slots per chunk (the
    /// last one may be shorter).
    chunks: Vec<Arc<[f32]>>,
}

/// A frozen graph: slots, layer-0 links (CSR), upper-layer links.
pub struct Frozen {
    metric: Metric,
    dimension: usize,
    /// Slot → graph id.
    ids: Vec<usize>,
    /// Slot `s`'s vector: `chunks[s / CHUNK][(s % CHUNK) * dimension..]`.
    chunks: Vec<Arc<[f32]>>,
    /// `links[offsets[s]..offsets[s + 1]]`: the layer-0 links of slot `s`.
    offsets: Vec<u32>,
    links: Vec<u32>,
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
            offsets: vec![0],
            links: Vec::new(),
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
        let keep = copied / CHUNK;
        layout.chunks.truncate(keep);
        for start in (keep * CHUNK..layout.ids.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(layout.ids.len());
            let mut chunk = Vec::with_capacity((end - start) * dimension);
            for (_, point) in &points[start..end] {
                chunk.extend_from_slice(point.get_v());
            }
            layout.chunks.push(Arc::from(chunk));
        }
        let mut offsets = Vec::with_capacity(points.len() + 1);
        let mut links =
            Vec::with_capacity(points.len() * 2 * graph.get_max_nb_connection() as usize);
        let mut upper: Vec<HashMap<u32, Box<[u32]>>> = vec![HashMap::new(); top];
        offsets.push(0);
        for (slot, point) in &points {
            for (layer, list) in point.get_neighborhood_id().iter().enumerate() {
                let named = list
                    .iter()
                    .filter_map(|n| layout.slot_of.get(&n.d_id).copied());
                if layer == 0 {
                    links.extend(named);
                } else if layer <= top {
                    let l: Box<[u32]> = named.collect();
                    if !l.is_empty() {
                        upper[layer - 1].insert(*slot, l);
                    }
                }
            }
            offsets.push(links.len() as u32);
        }
        Frozen {
            metric,
            dimension,
            ids: layout.ids.clone(),
            chunks: layout.chunks.clone(),
            offsets,
            links,
            upper,
            entry,
        }
    }

    /// Points in the copy.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    #[inline]
    fn vector(&self, slot: u32) -> &[f32] {
        let s = slot as usize;
        let at = (s % CHUNK) * self.dimension;
        &self.chunks[s / CHUNK][at..at + self.dimension]
    }

    /// Asks the CPU to start loading a slot's vector (its first cache
    /// lines).
    #[inline]
    fn prefetch(&self, slot: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let v = self.vector(slot);
            // SAFETY: a prefetch is a hint that never faults; both
            // addresses are inside `v` or one past it.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().cast());
                _mm_prefetch::<_MM_HINT_T0>(v[v.len().min(16)..].as_ptr().cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    #[inline]
    fn distance(&self, query: &[f32], slot: u32) -> f32 {
        self.metric.graph_distance(query, self.vector(slot))
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
        let mut d_at = self.distance(query, at);
        for layer in self.upper.iter().rev() {
            loop {
                let mut moved = false;
                for &next in layer.get(&at).map(|l| &l[..]).unwrap_or(&[]) {
                    let d = self.distance(query, next);
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
            let (from, to) = (
                self.offsets[c as usize] as usize,
                self.offsets[c as usize + 1] as usize,
            );
            let links = &self.links[from..to];
            for (i, &next) in links.iter().enumerate() {
                let mark = &mut marks[next as usize];
                if *mark == epoch {
                    continue;
                }
                *mark = epoch;
                if let Some(&after) = links.get(i + 1) {
                    self.prefetch(after);
                }
                let d = self.distance(query, next);
                if best.len() < ef || best.peek().is_some_and(|w| d < w.0) {
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
        let mut layout = Layout::default();
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
        let mut scratch = Scratch::default();
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
        // An empty copy finds nothing.
        assert!(Frozen::empty(Metric::L2)
            .search(&[0.0; 8], 10, 10, &mut scratch, |_| true)
            .is_empty());
    }
}
