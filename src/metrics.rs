//! Request latency per route, recorded per core, merged when read.
//!
//! Each core owns one HDR histogram per [`Route`] and records into it with
//! no lock and no cross-core traffic. `/metrics` and `/stats` ask every
//! other core for a copy over the shard mesh ([`crate::router::ShardCall::Snapshot`])
//! and add them up; only then are quantiles and buckets computed.

use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// The routes latency is reported for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    EntityGet,
    EntityPut,
    EntityPost,
    EntityDelete,
    Health,
    Stats,
    Metrics,
    Config,
    ChangefeedPoll,
    /// Until the stream's head is sent (the stream itself is not timed).
    ChangefeedStream,
    ChangefeedStats,
    ChangefeedRetention,
    Query,
    /// `/index/create|drop|rebuild|stats`.
    IndexAdmin,
    /// Unknown path, wrong method, or a request refused before routing.
    Other,
}

impl Route {
    pub const ALL: [Route; 15] = [
        Route::EntityGet,
        Route::EntityPut,
        Route::EntityPost,
        Route::EntityDelete,
        Route::Health,
        Route::Stats,
        Route::Metrics,
        Route::Config,
        Route::ChangefeedPoll,
        Route::ChangefeedStream,
        Route::ChangefeedStats,
        Route::ChangefeedRetention,
        Route::Query,
        Route::IndexAdmin,
        Route::Other,
    ];

    /// The `route` label value.
    pub fn label(self) -> &'static str {
        match self {
            Route::EntityGet => "GET /entities/{key}",
            Route::EntityPut => "PUT /entities/{key}",
            Route::EntityPost => "POST /entities",
            Route::EntityDelete => "DELETE /entities/{key}",
            Route::Health => "GET /health",
            Route::Stats => "GET /stats",
            Route::Metrics => "GET /metrics",
            Route::Config => "/config",
            Route::ChangefeedPoll => "GET /changefeed",
            Route::ChangefeedStream => "GET /changefeed/stream",
            Route::ChangefeedStats => "GET /changefeed/stats",
            Route::ChangefeedRetention => "POST /changefeed/retention",
            Route::Query => "POST /query",
            Route::IndexAdmin => "/index",
            Route::Other => "other",
        }
    }
}

/// Highest latency tracked (60 s, in microseconds); slower requests are
/// clamped to it.
const MAX_US: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    // 2 significant digits: 1% resolution, ~50 KiB per histogram.
    Histogram::new_with_bounds(1, MAX_US, 2).expect("static histogram bounds are valid")
}

/// One core's latency recorder.
pub struct ShardLatency {
    hist: RefCell<Vec<Histogram<u64>>>,
    sum_us: Vec<Cell<u64>>,
}

impl Default for ShardLatency {
    fn default() -> Self {
        ShardLatency {
            hist: RefCell::new(Route::ALL.iter().map(|_| new_histogram()).collect()),
            sum_us: Route::ALL.iter().map(|_| Cell::new(0)).collect(),
        }
    }
}

impl ShardLatency {
    /// Records one request. Never allocates, never locks.
    pub fn record(&self, route: Route, elapsed: Duration) {
        let us = (elapsed.as_micros() as u64).clamp(1, MAX_US);
        let i = route as usize;
        self.hist.borrow_mut()[i].saturating_record(us);
        self.sum_us[i].set(self.sum_us[i].get().saturating_add(us));
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

    pub fn route(&self, r: Route) -> (&Histogram<u64>, u64) {
        (&self.hist[r as usize], self.sum_us[r as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let a = ShardLatency::default();
        let b = ShardLatency::default();
        for _ in 0..99 {
            a.record(Route::EntityGet, Duration::from_micros(100));
        }
        b.record(Route::EntityGet, Duration::from_millis(50));
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        let (h, sum) = s.route(Route::EntityGet);
        assert_eq!(h.len(), 100);
        assert_eq!(sum, 99 * 100 + 50_000);
        assert!(h.value_at_quantile(0.5) <= 101);
        assert!(h.value_at_quantile(0.999) >= 49_000);
        assert_eq!(s.route(Route::Health).0.len(), 0);
    }
}
