//! The node: what every core shares ([`Node`]), the cores themselves
//! ([`Core`]), the feature list ([`features`]) and the server's life
//! ([`lifecycle`]: start-up, signals, shutdown).
//!
//! One glommio executor per configured worker, each pinned to its own CPU,
//! each accepting on its own `SO_REUSEPORT` socket and owning a slice of the
//! keyspace. What the cores share is the `Node`: read-only on the request
//! path except each core's own counter slot and the change feed's sequence
//! counter. Nothing on the request path takes a lock.

pub mod blocking;
pub mod core;
pub mod features;
pub mod health;
pub mod lifecycle;

pub use self::core::{Core, Owned};
pub use lifecycle::{run, usable_cpus, Faults, ReloadSource, ServerError};

use crate::config::Config;
use crate::obs::counters::CoreCounters;
use crate::obs::latency::LatencySnapshot;
use crate::runtime::RuntimeState;
use crate::storage::Storage;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What every core shares (thread-safe): the configuration, the database,
/// each feature's node-wide part, and each core's counter slot.
pub struct Node {
    /// The configuration the server started with (restart-only values).
    pub config: Config,
    /// The hot-reloadable values, current.
    pub runtime: RuntimeState,
    pub storage: Storage,
    /// The change feed's sequencer and position (server-wide).
    pub changefeed: crate::changefeed::ChangeFeed,
    /// The index catalog, and the progress of index builds.
    pub index: Arc<crate::index::Indexes>,
    /// The vector index catalog.
    pub vector: Arc<crate::vector::Vectors>,
    /// One counter slot per core, each written only by its core.
    pub counters: Box<[CoreCounters]>,
    /// The CPU each shard is pinned to.
    pub cpus: Vec<usize>,
    pub started: Instant,
    /// Request total at the previous `/metrics` scrape (scrape path only).
    last_scrape: Mutex<(Instant, u64)>,
    /// Where the configuration came from, for SIGHUP.
    pub reload: ReloadSource,
    /// Test-only fault injection (empty in production).
    pub faults: Faults,
    /// Background tasks that failed (`/health` says `degraded`).
    pub failures: health::Failures,
    /// Which backup and verification are running.
    pub backup: crate::backup::Backups,
    /// Continuous WAL archiving (`storage.wal_archive_path`).
    pub wal_archive: crate::backup::archive::WalArchive,
    /// The TLS certificate and key in use (`server.enable_tls`), reloaded
    /// by SIGHUP.
    pub tls: Option<crate::tls::TlsState>,
    /// Time-series retention policies and per-metric settings.
    pub timeseries: crate::timeseries::Timeseries,
    /// The ports the cores accept on, as bound.
    pub ports: Ports,
    /// Reactor stalls per core (`server.stall_threshold_ms`).
    pub stalls: crate::obs::stalls::Stalls,
}

/// Where clients reach the cores: the port every core accepts on
/// (`SO_REUSEPORT`), and with `server.shard_ports` each core's own port,
/// indexed by core (`GET /shards`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub shared: u16,
    pub per_core: Option<Vec<u16>>,
}

impl Node {
    /// Every shard's counters, read now (the merge-on-read point).
    pub fn shard_snapshots(&self) -> Vec<crate::obs::counters::ShardSnapshot> {
        self.counters
            .iter()
            .enumerate()
            .map(|(i, c)| c.snapshot(i, self.cpus[i]))
            .collect()
    }

    fn requests_total(&self) -> u64 {
        self.shard_snapshots().iter().map(|s| s.requests).sum()
    }

    /// `vccdb_qps`: requests per second since the previous scrape.
    pub fn qps_since_last_scrape(&self) -> f64 {
        let now = Instant::now();
        let total = self.requests_total();
        let mut last = match self.last_scrape.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (then, before) = *last;
        *last = (now, total);
        let secs = now.duration_since(then).as_secs_f64();
        if secs > 0.0 {
            total.saturating_sub(before) as f64 / secs
        } else {
            0.0
        }
    }

    /// `/stats`: per-shard counters merged at read time, latency
    /// percentiles per route, RocksDB figures.
    pub fn stats_json(
        &self,
        latency: &LatencySnapshot,
        route_labels: &[&'static str],
    ) -> serde_json::Value {
        let mut routes = serde_json::Map::new();
        for (label, h, _) in latency.by_label(route_labels) {
            if h.is_empty() {
                continue;
            }
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            routes.insert(
                label.to_string(),
                serde_json::json!({
                    "count": h.len(),
                    "p50_ms": ms(0.5), "p95_ms": ms(0.95), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
                    "max_ms": h.max() as f64 / 1000.0,
                }),
            );
        }
        let shards = self.shard_snapshots();
        let sum =
            |f: fn(&crate::obs::counters::ShardSnapshot) -> u64| shards.iter().map(f).sum::<u64>();
        serde_json::json!({
            "server": {
                "version": crate::VERSION,
                "uptime_seconds": self.started.elapsed().as_secs(),
                "shards": shards.len(),
                "requests_total": sum(|s| s.requests),
                "errors_total": sum(|s| s.errors),
                "forwarded_total": sum(|s| s.forwarded_out),
                "connections_active": sum(|s| s.connections_active),
                "per_shard": shards,
                "latency": routes,
            },
            "storage": {
                "path": self.storage.path(),
                "rocksdb": self.storage.stats(),
            }
        })
    }
}
