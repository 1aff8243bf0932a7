//! Request latency per route, recorded per core, merged when read.
//!
//! Each core owns one HDR histogram per route (a slot per
//! `http::routes::RouteId`) and records into it with no lock and no
//! cross-core traffic. `/metrics` and `/stats` ask every other core for a
//! copy over the mesh (`http::ops::LatencyCopy`) and add them up; only then
//! are routes sharing a label merged and quantiles and buckets computed.

use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Highest latency tracked (60 s, in microseconds); slower requests are
/// clamped to it.
const MAX_US: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    // 2 significant digits: 1% resolution, ~50 KiB per histogram.
    Histogram::new_with_bounds(1, MAX_US, 2).expect("static histogram bounds are valid")
}

/// One core's latency recorder: one histogram per route slot.
pub struct CoreLatency {
    hist: RefCell<Vec<Histogram<u64>>>,
    sum_us: Vec<Cell<u64>>,
    /// The last merge of every core's histograms this core made, and when:
    /// scrapes within [`MERGE_MAX_AGE`] reuse it instead of copying every
    /// core's histograms again (a scrape storm costs one fan-out a second).
    merged: RefCell<Option<(Instant, Rc<LatencySnapshot>)>>,
}

/// How long a merged snapshot is served again.
pub const MERGE_MAX_AGE: Duration = Duration::from_secs(1);

impl CoreLatency {
    pub fn new(slots: usize) -> Self {
        CoreLatency {
            hist: RefCell::new((0..slots).map(|_| new_histogram()).collect()),
            sum_us: (0..slots).map(|_| Cell::new(0)).collect(),
            merged: RefCell::new(None),
        }
    }

    /// The merged snapshot made at most [`MERGE_MAX_AGE`] before `now`.
    pub fn recent_merge(&self, now: Instant) -> Option<Rc<LatencySnapshot>> {
        match &*self.merged.borrow() {
            Some((at, snap)) if now.saturating_duration_since(*at) < MERGE_MAX_AGE => {
                Some(snap.clone())
            }
            _ => None,
        }
    }

    /// Keeps a merge made at `at` for [`CoreLatency::recent_merge`].
    pub fn keep_merge(&self, at: Instant, snap: LatencySnapshot) -> Rc<LatencySnapshot> {
        let snap = Rc::new(snap);
        *self.merged.borrow_mut() = Some((at, snap.clone()));
        snap
    }

    /// Records one request in route slot `slot`. Never allocates, never
    /// locks.
    pub fn record(&self, slot: usize, elapsed: Duration) {
        let us = (elapsed.as_micros() as u64).clamp(1, MAX_US);
        if let Some(h) = self.hist.borrow_mut().get_mut(slot) {
            h.saturating_record(us);
        }
        if let Some(sum) = self.sum_us.get(slot) {
            sum.set(sum.get().saturating_add(us));
        }
    }

    /// A copy for merging on another core.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            hist: self.hist.borrow().clone(),
            sum_us: self.sum_us.iter().map(Cell::get).collect(),
        }
    }
}

/// Latency histograms of one core, or of all cores merged.
#[derive(Debug, Clone)]
pub struct LatencySnapshot {
    pub hist: Vec<Histogram<u64>>,
    pub sum_us: Vec<u64>,
}

impl LatencySnapshot {
    pub fn merge(&mut self, other: &LatencySnapshot) {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            // Same bounds on every core, so adding cannot fail.
            let _ = a.add(b);
        }
        for (a, b) in self.sum_us.iter_mut().zip(&other.sum_us) {
            *a = a.saturating_add(*b);
        }
    }

    /// The histograms of slots sharing a label merged, one per label, in
    /// order of first appearance. `labels[slot]` names each slot.
    pub fn by_label(&self, labels: &[&'static str]) -> Vec<(&'static str, Histogram<u64>, u64)> {
        let mut out: Vec<(&'static str, Histogram<u64>, u64)> = Vec::new();
        for (slot, label) in labels.iter().enumerate() {
            let (Some(h), Some(sum)) = (self.hist.get(slot), self.sum_us.get(slot)) else {
                continue;
            };
            match out.iter_mut().find(|(l, _, _)| l == label) {
                Some((_, merged, s)) => {
                    let _ = merged.add(h);
                    *s = s.saturating_add(*sum);
                }
                None => out.push((label, h.clone(), *sum)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let a = CoreLatency::new(3);
        let b = CoreLatency::new(3);
        for _ in 0..99 {
            a.record(0, Duration::from_micros(100));
        }
        b.record(0, Duration::from_millis(50));
        b.record(2, Duration::from_millis(1));
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        let routes = s.by_label(&["get", "other", "get"]);
        assert_eq!(routes.len(), 2, "slots 0 and 2 share a label");
        let (label, h, sum) = &routes[0];
        assert_eq!(*label, "get");
        assert_eq!(h.len(), 101);
        assert_eq!(*sum, 99 * 100 + 50_000 + 1000);
        assert!(h.value_at_quantile(0.5) <= 101);
        assert!(h.value_at_quantile(0.999) >= 49_000);
        assert_eq!(routes[1].1.len(), 0);
        a.record(99, Duration::from_micros(1)); // out of range: ignored
    }

    #[test]
    fn a_merge_is_served_again_for_a_second() {
        let c = CoreLatency::new(2);
        let t0 = Instant::now();
        assert!(c.recent_merge(t0).is_none());
        c.record(0, Duration::from_micros(5));
        c.keep_merge(t0, c.snapshot());
        c.record(0, Duration::from_micros(5));
        let again = c.recent_merge(t0 + Duration::from_millis(900)).unwrap();
        assert_eq!(again.hist[0].len(), 1, "the kept merge, not a new one");
        assert!(c.recent_merge(t0 + MERGE_MAX_AGE).is_none());
    }
}
