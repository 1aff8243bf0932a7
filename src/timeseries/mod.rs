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
        backfill_hour_rollups(storage)?;
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

/// Gives every series of a database written before hour rollups existed
/// its hour rollups, merged from its minute rollups, once, before the
/// server serves (aggregates read hour rollups and would otherwise miss
/// those hours). One pass over the minute rollups, committed every
/// [`BACKFILL_BATCH`] hours; then the `meta` marker, so it never runs again.
fn backfill_hour_rollups(storage: &Storage) -> Result<(), String> {
    use aggregate::Bucket;
    use key::Level;
    let err = |e: StorageError| format!("hour rollup backfill: {e}");
    if storage
        .meta_get(meta::TIMESERIES_HOUR_ROLLUPS)
        .map_err(err)?
        .is_some()
    {
        return Ok(());
    }
    let mut batch = storage.batch();
    let mut written = 0u64;
    let mut failed: Option<StorageError> = None;
    let mut cur: Option<(u64, i64, Bucket)> = None;
    let flush = |batch: &mut crate::storage::ChangeBatch<'_>, c: (u64, i64, Bucket)| {
        batch.put(
            Family::Timeseries,
            &Level::Hour.key(c.0, c.1),
            &c.2.encode(),
        )
    };
    storage
        .scan(
            Family::Timeseries,
            &[key::ROLLUP],
            &[key::ROLLUP + 1],
            false,
            |k, v| {
                let (Some(minute), Some(b)) = (Level::Minute.start_of_key(k), Bucket::decode(v))
                else {
                    return true;
                };
                let mut idb = [0u8; 8];
                idb.copy_from_slice(&k[1..9]);
                let (id, hour) = (u64::from_be_bytes(idb), Level::Hour.floor(minute));
                match &mut cur {
                    Some((i, h, acc)) if *i == id && *h == hour => acc.merge(&b),
                    _ => {
                        if let Some(c) = cur.replace((id, hour, b)) {
                            written += 1;
                            let mut r = flush(&mut batch, c);
                            if r.is_ok() && written.is_multiple_of(BACKFILL_BATCH) {
                                r = storage.commit(std::mem::replace(&mut batch, storage.batch()));
                            }
                            if let Err(e) = r {
                                failed = Some(e);
                                return false;
                            }
                        }
                    }
                }
                true
            },
        )
        .map_err(err)?;
    if let Some(e) = failed {
        return Err(err(e));
    }
    if let Some(c) = cur {
        written += 1;
        flush(&mut batch, c).map_err(err)?;
    }
    batch
        .put(Family::Meta, meta::TIMESERIES_HOUR_ROLLUPS, b"1")
        .map_err(err)?;
    storage.commit_synced(batch).map_err(err)?;
    if written > 0 {
        tracing::info!(
            hours = written,
            "time series: hour rollups built from the minute rollups (once)"
        );
    }
    Ok(())
}

/// Hour rollups per commit of the backfill.
const BACKFILL_BATCH: u64 = 100_000;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A database from before hour rollups gets them, equal to what writes
    /// make now, once.
    #[test]
    fn hour_rollups_are_backfilled_once_from_minute_rollups() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::StorageConfig {
            rocksdb_path: dir.path().to_path_buf(),
            memtable_size_mb: 4,
            block_cache_size_mb: 8,
            ..Default::default()
        };
        let storage = Storage::open(&cfg).unwrap();
        let hours = |s: &Storage| {
            let mut out = Vec::new();
            s.scan(
                Family::Timeseries,
                &[key::ROLLUP_HOUR],
                &[key::ROLLUP_HOUR + 1],
                false,
                |k, v| {
                    out.push((k.to_vec(), v.to_vec()));
                    true
                },
            )
            .unwrap();
            out
        };
        for (e, n) in [("a", 5_000i64), ("b", 300)] {
            let l = key::Labels {
                metric: "m".into(),
                entity: e.into(),
                tags: Default::default(),
            };
            let w = ingest::SeriesWrite {
                id: l.series_id(),
                canonical: l.canonical(),
                points: (0..n).map(|i| (i * 7_001 - 9_000_000, i as f64)).collect(),
            };
            ingest::commit_series(&storage, &w, None).unwrap();
        }
        let made = hours(&storage);
        assert!(made.len() > 10);
        // As a database written before hour rollups: none, and no marker.
        let mut b = storage.batch();
        b.delete_range(
            Family::Timeseries,
            &[key::ROLLUP_HOUR],
            &[key::ROLLUP_HOUR + 1],
        )
        .unwrap();
        b.delete(Family::Meta, meta::TIMESERIES_HOUR_ROLLUPS)
            .unwrap();
        storage.commit(b).unwrap();
        assert!(hours(&storage).is_empty());
        backfill_hour_rollups(&storage).unwrap();
        assert_eq!(hours(&storage), made);
        // The marker stops a second pass.
        let mut b = storage.batch();
        b.delete_range(
            Family::Timeseries,
            &[key::ROLLUP_HOUR],
            &[key::ROLLUP_HOUR + 1],
        )
        .unwrap();
        storage.commit(b).unwrap();
        backfill_hour_rollups(&storage).unwrap();
        assert!(hours(&storage).is_empty());
    }
}
