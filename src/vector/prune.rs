//! Re-pruning a frozen copy's layer-0 links with the HNSW neighbour
//! selection heuristic: an option the server leaves **off**, kept so that
//! `themis-vector-bench` can show why.
//!
//! The idea was that hnsw_rs adds reverse links without the heuristic, so
//! its layer-0 lists would be fuller than hnswlib's (which re-runs the
//! heuristic when a reverse link overflows a list) and a search would
//! compute more distances per step. Measured on Fashion-MNIST (60,000 ×
//! 784, m 16, ef_construction 200; bench/RESULTS.md), it is not so:
//! hnsw_rs's lists hold 14.8 links on average, hnswlib's 13.6, and THEMIS's
//! search code walking hnswlib's own graph needs as many distances for the
//! same recall as on hnsw_rs's (416 against 442 at ef 32, recall 0.9934
//! against 0.9932). Re-pruning every list halves it (7.2 links) and costs
//! more recall than it saves time: 0.9786 at ef 32, and ef 64 (471
//! distances) to get back to 0.9936.
//!
//! How it works, when a [`super::frozen::Layout`] asks for it: when the
//! helper freezes the graph it runs the heuristic over each layer-0 list of
//! the *copy* ([`select`]); hnsw_rs's graph, which later inserts and dumps
//! use, is left as it is. A list is re-pruned only when it changed since
//! the last freeze ([`list_hash`] tells), so a freeze costs in proportion
//! to what the inserts touched.
//!
//! The heuristic (Malkov & Yashunin, algorithm 4; hnswlib's
//! `getNeighborsByHeuristic2`): take the candidates nearest first; keep a
//! candidate unless a link already kept is nearer to it than the point is.
//! Invariants: the result is a subset of the candidates, in the same
//! (nearest first) order, and holds the nearest candidate whenever there
//! is one.

use std::hash::Hasher;

/// A hash of a raw list of slots (order included): equal hashes mean the
/// list did not change, so its pruned form can be reused. (A collision
/// would keep an out-of-date pruned list, whose links are still slots of
/// the copy: a search is still correct, at worst a little less thorough.)
pub fn list_hash(slots: &[u32]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write_usize(slots.len());
    for s in slots {
        h.write_u32(*s);
    }
    h.finish()
}

/// The candidates the heuristic keeps, appended to `out` in order.
/// `candidates` are (distance to the point, slot), nearest first (as
/// hnsw_rs keeps them; sorted here otherwise); `distance(a, b)` is the
/// graph distance between two slots. At most `max` are kept.
pub fn select(
    candidates: &mut [(f32, u32)],
    max: usize,
    mut distance: impl FnMut(u32, u32) -> f32,
    out: &mut Vec<u32>,
) {
    if !candidates.is_sorted_by(|a, b| a.0 <= b.0) {
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    }
    let start = out.len();
    for &(d, c) in candidates.iter() {
        if out.len() - start >= max {
            break;
        }
        if out[start..].iter().all(|&kept| distance(kept, c) >= d) {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(points: &[(f32, f32)], a: u32, b: u32) -> f32 {
        let (p, q) = (points[a as usize], points[b as usize]);
        (p.0 - q.0).powi(2) + (p.1 - q.1).powi(2)
    }

    #[test]
    fn a_point_hidden_behind_a_kept_one_is_dropped() {
        // The point is at the origin; 1 is at (1, 0), 2 at (2, 0) behind
        // 1, 3 at (0, 2) in another direction.
        let pts = [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (0.0, 2.0)];
        let mut cand: Vec<(f32, u32)> = (1..4).map(|s| (d(&pts, 0, s), s)).collect();
        let mut out = vec![99];
        select(&mut cand, 8, |a, b| d(&pts, a, b), &mut out);
        assert_eq!(out, vec![99, 1, 3], "appends, keeps 1 and 3, drops 2");
        let mut out = Vec::new();
        select(&mut cand, 1, |a, b| d(&pts, a, b), &mut out);
        assert_eq!(out, vec![1], "at most max");
        assert_eq!(list_hash(&[1, 2]), list_hash(&[1, 2]));
        assert_ne!(list_hash(&[1, 2]), list_hash(&[2, 1]));
    }

    proptest! {
        #[test]
        fn keeps_the_nearest_and_only_candidates_in_order(
            pts in prop::collection::vec((-10.0f32..10.0, -10.0f32..10.0), 2..40),
            shuffle in any::<u64>(),
            max in 1usize..40,
        ) {
            let mut cand: Vec<(f32, u32)> =
                (1..pts.len() as u32).map(|s| (d(&pts, 0, s), s)).collect();
            // Any order in: sorted inside.
            let n = cand.len();
            cand.swap(0, (shuffle as usize) % n);
            let mut out = Vec::new();
            select(&mut cand, max, |a, b| d(&pts, a, b), &mut out);
            let nearest = cand.iter().min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))).unwrap().1;
            prop_assert_eq!(out.first().copied(), Some(nearest));
            prop_assert!(out.len() <= max);
            let pos = |s: u32| cand.iter().position(|c| c.1 == s);
            prop_assert!(out.iter().all(|s| pos(*s).is_some()), "only candidates");
            prop_assert!(out.windows(2).all(|w| pos(w[0]) < pos(w[1])), "in order");
            // Every dropped candidate is hidden behind a kept one nearer to
            // it than the point is, or the list was full.
            if out.len() < max {
                for &(dc, c) in &cand {
                    if !out.contains(&c) {
                        prop_assert!(out.iter().any(|&k| d(&pts, k, c) < dc));
                    }
                }
            }
        }
    }
}
