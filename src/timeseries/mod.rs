//! Time series: points `(metric, entity, tags, timestamp_ms, value)` in the
//! `timeseries` column family, and retention policies that delete old ones.
//!
//! * [`key`]: the key layout (catalog, series, points) and labels.
//! * [`ingest`]: `/ts/put` parsing and the per-series write on its owner.
//! * [`read`]: catalog lookup, range reads, aggregation scans.
//! * [`aggregate`]: bucket arithmetic (pure).
//! * [`retention`]: the policies file and the deleting pass.
//! * [`settings`]: per-metric settings (`/ts/config`).
//! * [`writer`]: each core's queue of large series writes and retention
//!   cuts, run in order on a helper thread.
//! * [`http`]: the routes.
//!
//! Node part: [`Timeseries`] (policies and settings, published). Core part:
//! [`Local`] (series this core has written, its last retention pass).

pub mod aggregate;
pub mod http;
pub mod ingest;
pub mod key;
pub mod lineproto;
pub mod read;
pub mod retention;
pub mod settings;
pub mod writer;

use crate::config::Config;
use crate::published::Published;
use crate::storage::keyspace::meta;
use crate::storage::{Family, Storage, StorageError};
use retention::{PassReport, Policies};
use settings::TsSettings;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Series ids a core remembers as existing before it starts over (a cache:
/// forgetting costs one point read per series).
const MAX_KNOWN_SERIES: usize = 1 << 20;

/// The node-wide part: retention policies and per-metric settings.
pub struct Timeseries {
    policies: Published<Policies>,
    settings: Published<TsSettings>,
    /// `features.retention.*`, as started.
    pub retention_enabled: bool,
    pub interval_hours: u32,
    pub policies_path: PathBuf,
    /// Points deleted by retention since start, by policy (written once per
    /// pass and core, read by `/metrics`: never on the request path).
    deleted: Mutex<BTreeMap<String, u64>>,
    /// When a pass last finished (ms since the epoch; 0: never).
    last_run_ms: AtomicI64,
}

impl Timeseries {
    /// Loads the settings from `meta` and, when retention is on, the
    /// policies file (a bad or missing file is an error: the server does
    /// not start with policies it cannot read).
    pub fn open(config: &Config, storage: &Storage) -> Result<Timeseries, String> {
        let r = &config.features.retention;
        let policies = if r.enabled {
            Policies::load(&r.policies_path)?
        } else {
            Policies::default()
        };
        let settings = match storage
            .meta_get(meta::TIMESERIES_CONFIG)
            .map_err(|e| e.to_string())?
        {
            Some(bytes) => TsSettings::parse(&bytes)
                .map_err(|e| format!("stored time-series settings are unreadable: {e}"))?,
            None => TsSettings::default(),
        };
        Ok(Timeseries {
            policies: Published::new(policies),
            settings: Published::new(settings),
            retention_enabled: r.enabled,
            interval_hours: r.interval_hours,
            policies_path: r.policies_path.clone(),
            deleted: Mutex::new(BTreeMap::new()),
            last_run_ms: AtomicI64::new(0),
        })
    }

    pub fn policies(&self) -> Arc<Policies> {
        self.policies.current()
    }

    pub fn settings(&self) -> Arc<TsSettings> {
        self.settings.current()
    }

    /// SIGHUP: re-reads the policies file; a bad file leaves the policies
    /// in force and says why.
    pub fn reload_policies(&self) {
        if !self.retention_enabled {
            return;
        }
        match Policies::load(&self.policies_path) {
            Ok(p) => {
                tracing::info!(
                    policies = p.policies.len(),
                    "SIGHUP: retention policies reloaded"
                );
                self.policies.publish(p);
            }
            Err(e) => {
                tracing::error!("SIGHUP: retention policies not reloaded, the old ones stay: {e}")
            }
        }
    }

    /// Counts a finished (not dry) pass.
    pub fn record_pass(&self, report: &PassReport) {
        let mut d = self.deleted.lock().unwrap_or_else(PoisonError::into_inner);
        for (p, n) in &report.deleted_by_policy {
            *d.entry(p.clone()).or_default() += n;
        }
        self.last_run_ms
            .fetch_max(report.finished_at_ms, Ordering::Relaxed);
    }

    /// Points deleted since start, by policy.
    pub fn deleted_by_policy(&self) -> BTreeMap<String, u64> {
        self.deleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When a pass last finished, if one has.
    pub fn last_run_ms(&self) -> Option<i64> {
        Some(self.last_run_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// Stores (synced) and publishes new settings.
    pub fn save_settings(&self, storage: &Storage, s: TsSettings) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&s).unwrap_or_default();
        let mut batch = storage.batch();
        batch.put(Family::Meta, meta::TIMESERIES_CONFIG, &bytes)?;
        storage.commit_synced(batch)?;
        self.settings.publish(s);
        Ok(())
    }
}

/// One core's part.
#[derive(Default)]
pub struct Local {
    /// Series (owned by this core) known to have their catalog entries,
    /// each with an upper bound of its stored timestamps (`i64::MIN`: no
    /// point). A point above the bound cannot overwrite one, so appends
    /// skip the overwrite check; retention only lowers the true maximum,
    /// so the bound stays safe.
    known: RefCell<HashMap<u64, i64>>,
    /// This core's last retention pass.
    last_pass: RefCell<Option<PassReport>>,
    /// A pass is running on this core.
    pass_running: Cell<bool>,
    /// The series writer's queue ([`writer`]).
    queue: writer::Queue,
}

impl Local {
    fn latest(&self, id: u64) -> Option<i64> {
        self.known.borrow().get(&id).copied()
    }

    fn remember(&self, id: u64, latest: i64) {
        let mut k = self.known.borrow_mut();
        if k.len() >= MAX_KNOWN_SERIES {
            k.clear();
        }
        k.insert(id, latest);
    }

    pub fn last_pass(&self) -> Option<PassReport> {
        self.last_pass.borrow().clone()
    }
}
