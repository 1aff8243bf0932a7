//! A read-only copy of one core's HNSW graph, laid out for searching.
//!
//! hnsw_rs builds and owns the graph (on the index's helper thread), and
//! its dumps are the graph's on-disk form. Its own search is slow on the
//! request path: per visited point it allocates (an `Arc` per candidate, a
//! `HashMap` entry) and takes a read lock, and it enters layer 0 after one
//! step per upper layer. Measured on Fashion-MNIST (60,000 × 784, m 16),
//! the same graph searched through this copy gives equal or better recall
//! at 1.3–3× the queries per second (bench/RESULTS.md).
//!
//! So the helper thread *freezes* the graph after it applied a batch of
//! commands: every point's links become slot numbers in one flat array
//! (CSR), the vectors stay where hnsw_rs keeps them (shared, never copied:
//! a point's data never changes once inserted), reached through one
//! pointer per slot so that a distance costs one memory access, not a
//! chain of three; the next neighbour's vector is prefetched while the
//! current one is compared. The reactor searches the newest frozen copy
//! with a reused [`Scratch`]: no allocation per visited point, no lock,
//! no thread.
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
use hnsw_rs::hnsw::Point;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// One point of the copy.
struct Slot {
    /// Keeps the point, and so its vector, alive (see [`VectorRef`]).
    point: Arc<Point<'static, f32>>,
    /// Its graph id (hnsw_rs's origin id).
    id: usize,
}

/// Where a slot's vector lies.
///
/// SAFETY: it points at the data of the point that the same slot holds an
/// `Arc` of, `len` floats long. hnsw_rs sets a point's data when it makes
/// the point and never changes or moves it (no API writes it), and the
/// `Arc` keeps the allocation where it is for as long as the [`Frozen`]
/// lives; the data is plain `f32`s, safe to read from any thread.
#[derive(Clone, Copy)]
struct VectorRef {
    ptr: *const f32,
    len: usize,
}

// SAFETY: see [`VectorRef`]: the data is immutable and kept alive by the
// same copy, so sharing or sending the pointer is sharing a `&[f32]`.
unsafe impl Send for VectorRef {}
unsafe impl Sync for VectorRef {}

impl VectorRef {
    fn of(point: &Point<'static, f32>) -> VectorRef {
        let v = point.get_v();
        VectorRef {
            ptr: v.as_ptr(),
            len: v.len(),
        }
    }

    #[inline]
    fn get(&self) -> &[f32] {
        // SAFETY: see [`VectorRef`].
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Asks the CPU to start loading the vector's first cache lines.
    #[inline]
    fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.ptr.cast());
            _mm_prefetch::<_MM_HINT_T0>(self.ptr.wrapping_add(16).cast());
        }
    }
}

/// A frozen graph: slots, layer-0 links (CSR), upper-layer links.
pub struct Frozen {
    metric: Metric,
    slots: Vec<Slot>,
    /// Each slot's vector, in slot order.
    vectors: Vec<VectorRef>,
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
            slots: Vec::new(),
            vectors: Vec::new(),
            offsets: vec![0],
            links: Vec::new(),
            upper: Vec::new(),
            entry: None,
        }
    }

    /// Freezes `graph` as it is now (called by the thread that writes it,
    /// so no insert runs meanwhile).
    pub fn of(graph: &Hnsw, metric: Metric) -> Frozen {
        let indexation = graph.get_point_indexation();
        let top = graph.get_max_level_observed() as usize;
        let mut slots = Vec::with_capacity(graph.get_nb_point());
        let mut slot_of: HashMap<usize, u32> = HashMap::with_capacity(graph.get_nb_point());
        let mut entry = None;
        // Layer by layer, top first: the entry point is on the top layer.
        for layer in (0..=top).rev() {
            for point in indexation.get_layer_iterator(layer) {
                let id = point.get_origin_id();
                let slot = slots.len() as u32;
                slot_of.insert(id, slot);
                entry.get_or_insert(slot);
                slots.push(Slot { point, id });
            }
        }
        let mut offsets = Vec::with_capacity(slots.len() + 1);
        let mut links =
            Vec::with_capacity(slots.len() * 2 * graph.get_max_nb_connection() as usize);
        let mut upper: Vec<HashMap<u32, Box<[u32]>>> = vec![HashMap::new(); top];
        offsets.push(0);
        for (slot, s) in slots.iter().enumerate() {
            for (layer, list) in s.point.get_neighborhood_id().iter().enumerate() {
                let named = list.iter().filter_map(|n| slot_of.get(&n.d_id).copied());
                if layer == 0 {
                    links.extend(named);
                } else if layer <= top {
                    let l: Box<[u32]> = named.collect();
                    if !l.is_empty() {
                        upper[layer - 1].insert(slot as u32, l);
                    }
                }
            }
            offsets.push(links.len() as u32);
        }
        let vectors = slots.iter().map(|s| VectorRef::of(&s.point)).collect();
        Frozen {
            metric,
            slots,
            vectors,
            offsets,
            links,
            upper,
            entry,
        }
    }

    /// Points in the copy.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    #[inline]
    fn distance(&self, query: &[f32], slot: u32) -> f32 {
        self.metric
            .graph_distance(query, self.vectors[slot as usize].get())
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
        let epoch = scratch.start(self.slots.len());
        let Scratch {
            marks,
            candidates,
            best,
            ..
        } = scratch;
        marks[at as usize] = epoch;
        candidates.push(Reverse(Near(d_at, at)));
        if accept(self.slots[at as usize].id) {
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
                    self.vectors[after as usize].prefetch();
                }
                let d = self.distance(query, next);
                if best.len() < ef || best.peek().is_some_and(|w| d < w.0) {
                    candidates.push(Reverse(Near(d, next)));
                    if accept(self.slots[next as usize].id) {
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
            .map(|Near(d, s)| (self.slots[s as usize].id, d))
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
        let frozen = Frozen::of(&graph, Metric::L2);
        assert_eq!(frozen.len(), 2000);
        let mut scratch = Scratch::default();
        let (mut hits, mut total) = (0, 0);
        for _ in 0..50 {
            let q: Vec<f32> = (0..dim).map(|_| rnd(&mut seed)).collect();
            // Odd points are refused (tombstones).
            let accept = |id: usize| (id / 3) % 2 == 0;
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
