//! Reactor stalls: a core whose event loop did not get back to its ready
//! work for too long, so every connection on it waited.
//!
//! Each core runs a probe task that sleeps [`probe_interval`] at a time and
//! measures how late it woke up: a timer due while the reactor is busy in
//! one long task (a blocking call, a long loop) or behind a long queue of
//! ready tasks fires only when the reactor gets to it. A lateness of at
//! least `server.stall_threshold_ms` is a stall: counted
//! (`themis_reactor_stalls_total{shard}`) and its length recorded
//! (`themis_reactor_stall_duration_seconds{shard}`, a `prometheus`
//! histogram: atomics written only by their core, read by `/metrics`).
//! A stall longer than the threshold plus the interval is always seen; its
//! measured length is its part after the probe's timer was due, so at
//! least its length minus the interval.
//!
//! Why not glommio's own stall detection (`LocalExecutorBuilder::
//! detect_stalls`)? In glommio 0.9 the report a handler receives
//! (`StallDetection`) is not exported, so a handler outside glommio cannot
//! implement `stall` to count; and it arms and disarms a timer (two system
//! calls) every time a task queue runs. The probe costs one timer wake-up
//! per interval per core and is on by default.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use themis_io::ShutdownSignal;

pub const COUNT_NAME: &str = "themis_reactor_stalls_total";
pub const DURATION_NAME: &str = "themis_reactor_stall_duration_seconds";

/// At most one `warn` line per core this often (every stall at `debug`).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Upper bounds (seconds) of the stall duration buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// How often the probe wakes: half the threshold, within 1..=100 ms.
pub fn probe_interval(threshold: Duration) -> Duration {
    (threshold / 2).clamp(Duration::from_millis(1), Duration::from_millis(100))
}

/// One core's stalls. Written only by that core.
pub struct CoreStalls {
    count: AtomicU64,
    duration: Histogram,
}

impl CoreStalls {
    fn new(core: usize) -> CoreStalls {
        let opts = HistogramOpts::new(
            DURATION_NAME,
            "How long a core's reactor did not get to ready work (stalls of at least server.stall_threshold_ms), per shard.",
        )
        .const_label("shard", core.to_string())
        .buckets(BUCKETS.to_vec());
        CoreStalls {
            count: AtomicU64::new(0),
            // Static options: sorted buckets, legal names; cannot fail.
            duration: Histogram::with_opts(opts).expect("valid stall histogram options"),
        }
    }

    fn record(&self, stalled: Duration) {
        crate::obs::counters::bump(&self.count, 1);
        self.duration.observe(stalled.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Runs the probe on the calling core until `shutdown`.
    pub async fn probe(&self, core: usize, threshold: Duration, shutdown: &ShutdownSignal) {
        let interval = probe_interval(threshold);
        let mut last_warn: Option<Instant> = None;
        loop {
            let due = Instant::now() + interval;
            if shutdown.sleep(interval).await {
                return;
            }
            let now = Instant::now();
            let late = now.saturating_duration_since(due);
            if late < threshold {
                continue;
            }
            self.record(late);
            let ms = late.as_millis() as u64;
            if last_warn.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                last_warn = Some(now);
                tracing::warn!(
                    shard = core,
                    stalled_ms = ms,
                    "reactor stall: the core did not get to ready work for {ms} ms (themis_reactor_stalls_total counts every one)"
                );
            } else {
                tracing::debug!(shard = core, stalled_ms = ms, "reactor stall");
            }
        }
    }
}

/// Every core's stalls (node-wide, one slot per core).
pub struct Stalls {
    cores: Box<[CoreStalls]>,
}

impl Stalls {
    pub fn new(cores: usize) -> Stalls {
        Stalls {
            cores: (0..cores).map(CoreStalls::new).collect(),
        }
    }

    pub fn core(&self, core: usize) -> &CoreStalls {
        &self.cores[core]
    }

    /// Stalls of each core.
    pub fn counts(&self) -> Vec<u64> {
        self.cores.iter().map(CoreStalls::count).collect()
    }

    /// `themis_reactor_stall_duration_seconds{shard}`: every core's
    /// histogram in one family.
    pub fn duration_family(&self) -> Option<MetricFamily> {
        let mut fams = self.cores.iter().flat_map(|c| c.duration.collect());
        let mut first = fams.next()?;
        for f in fams {
            first.mut_metric().extend(f.get_metric().iter().cloned());
        }
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_half_the_threshold_within_bounds() {
        assert_eq!(
            probe_interval(Duration::from_millis(10)),
            Duration::from_millis(5)
        );
        assert_eq!(
            probe_interval(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            probe_interval(Duration::from_secs(60)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn stalls_are_recorded_per_core_in_one_family() {
        let s = Stalls::new(2);
        s.core(1).record(Duration::from_millis(120));
        assert_eq!(s.counts(), vec![0, 1]);
        let fam = s.duration_family().expect("a family");
        assert_eq!(fam.name(), DURATION_NAME);
        assert_eq!(fam.get_metric().len(), 2);
        let m = &fam.get_metric()[1];
        assert_eq!(m.get_label()[0].value(), "1");
        assert_eq!(m.get_histogram().get_sample_count(), 1);
        assert!((m.get_histogram().get_sample_sum() - 0.12).abs() < 1e-9);
    }

    /// A core that blocks its reactor is seen by the probe.
    #[test]
    fn the_probe_sees_a_blocked_reactor() {
        let stalls = std::sync::Arc::new(Stalls::new(1));
        let s = stalls.clone();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let shutdown = ShutdownSignal::new();
                let probe = {
                    let (s, shutdown) = (s.clone(), shutdown.clone());
                    glommio::spawn_local(async move {
                        s.core(0)
                            .probe(0, Duration::from_millis(20), &shutdown)
                            .await
                    })
                };
                glommio::timer::sleep(Duration::from_millis(30)).await;
                std::thread::sleep(Duration::from_millis(150));
                glommio::timer::sleep(Duration::from_millis(30)).await;
                shutdown.fire();
                probe.await;
            })
            .expect("executor")
            .join()
            .expect("join");
        assert!(stalls.counts()[0] >= 1);
        let fam = stalls.duration_family().expect("family");
        let h = fam.get_metric()[0].get_histogram();
        assert!(h.get_sample_sum() >= 0.1, "{}", h.get_sample_sum());
    }
}
