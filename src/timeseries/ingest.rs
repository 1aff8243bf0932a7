//! Ingest: parsing `/ts/put` points, grouping them by series, and writing
//! each series on its owner core.
//!
//! A series' owner is `owner_of(series id)`: all writes of a series run
//! there, one request at a time, so creating its catalog entry ("does it
//! exist? then write it") needs no lock. Each series of a request is one
//! `WriteBatch` (its new catalog entries and all its points): a series is
//! stored entirely or not at all, and the answer is sent only after the
//! commit (the WAL append), so an acknowledged point survives `kill -9`.
//!
//! A point whose labels are valid but whose value or timestamp is not
//! rejects every point of its series in the request (all-or-nothing per
//! series); a point whose labels are invalid is rejected alone. The same
//! timestamp written twice keeps the last value (in request order, then
//! arrival order).

use super::aggregate::Bucket;
use super::key::{self, Labels};
use crate::error::ApiError;
use crate::mesh::{Rpc, Served};
use crate::node::{Core, Owned};
use crate::storage::Family;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// Most points in one `/ts/put` request.
pub const MAX_POINTS: usize = 10_000;

/// One valid point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub labels: Labels,
    pub ts: i64,
    pub value: f64,
}

fn text_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{name}: must be a string, got {other}")),
    }
}

/// The labels of a point object (`metric`, `entity`, `tags`), checked.
pub fn parse_labels(v: &Value) -> Result<Labels, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "a point must be a JSON object".to_string())?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "metric" | "entity" | "tags" | "value" | "timestamp_ms"
        ) {
            return Err(format!(
                "unknown field {k:?} (allowed: metric, entity, tags, value, timestamp_ms)"
            ));
        }
    }
    let metric = text_field(obj, "metric")?.ok_or_else(|| "metric: required".to_string())?;
    let entity = text_field(obj, "entity")?.unwrap_or_default();
    let mut tags = BTreeMap::new();
    match obj.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            if m.len() > key::MAX_TAGS {
                return Err(format!(
                    "tags: at most {} tags per point, got {}",
                    key::MAX_TAGS,
                    m.len()
                ));
            }
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("tag {k:?}: value must be a string, got {v}"))?;
                tags.insert(k.clone(), v.to_string());
            }
        }
        Some(other) => return Err(format!("tags: must be an object of strings, got {other}")),
    }
    let labels = Labels {
        metric,
        entity,
        tags,
    };
    labels.validate()?;
    Ok(labels)
}

/// The value and timestamp of a point object (`now_ms` when absent).
pub fn parse_sample(v: &Value, now_ms: i64) -> Result<(i64, f64), String> {
    let value = match v.get("value") {
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("value: must be a finite number, got {n}"))?,
        Some(other) => return Err(format!("value: must be a finite number, got {other}")),
        None => return Err("value: required".into()),
    };
    let ts = match v.get("timestamp_ms") {
        None | Some(Value::Null) => now_ms,
        Some(t) => match t.as_i64() {
            Some(ts) if (key::MIN_TIMESTAMP_MS..=key::MAX_TIMESTAMP_MS).contains(&ts) => ts,
            _ => {
                return Err(format!(
                    "timestamp_ms: must be an integer in {}..={} (years 1 to 9999), got {t}",
                    key::MIN_TIMESTAMP_MS,
                    key::MAX_TIMESTAMP_MS
                ))
            }
        },
    };
    Ok((ts, value))
}

/// The points of one series in one request.
#[derive(Debug, Clone)]
pub struct SeriesWrite {
    pub canonical: Vec<u8>,
    pub id: u64,
    pub points: Vec<(i64, f64)>,
}

/// A request's points, grouped by series, with what was rejected.
#[derive(Debug, Default)]
pub struct Grouped {
    /// Each series with the request positions of its points.
    pub series: Vec<(SeriesWrite, Vec<usize>)>,
    /// (position, reason), in request order.
    pub rejected: Vec<(usize, String)>,
}

/// Validates and groups `points` (at most [`MAX_POINTS`]).
pub fn group(points: &[Value], now_ms: i64) -> Grouped {
    let mut by_series: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut series: Vec<(SeriesWrite, Vec<usize>, Option<String>)> = Vec::new();
    let mut rejected = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let labels = match parse_labels(p) {
            Ok(l) => l,
            Err(e) => {
                rejected.push((i, e));
                continue;
            }
        };
        let canonical = labels.canonical();
        let slot = *by_series.entry(canonical.clone()).or_insert_with(|| {
            series.push((
                SeriesWrite {
                    id: key::series_id_of(&canonical),
                    canonical,
                    points: Vec::new(),
                },
                Vec::new(),
                None,
            ));
            series.len() - 1
        });
        let (w, positions, poisoned) = &mut series[slot];
        positions.push(i);
        match parse_sample(p, now_ms) {
            Ok(s) => w.points.push(s),
            Err(e) => {
                if poisoned.is_none() {
                    *poisoned = Some(format!("point #{i}: {e}"));
                }
            }
        }
    }
    let mut out = Grouped::default();
    for (w, positions, poisoned) in series {
        match poisoned {
            Some(reason) => {
                for i in positions {
                    let why = if reason.starts_with(&format!("point #{i}:")) {
                        reason
                            .split_once(": ")
                            .map_or(reason.clone(), |r| r.1.to_string())
                    } else {
                        format!("its series was rejected ({reason})")
                    };
                    rejected.push((i, why));
                }
            }
            None => out.series.push((w, positions)),
        }
    }
    rejected.sort_by_key(|r| r.0);
    out.rejected = rejected;
    out
}

/// Groups parsed points (line protocol) by series: each series with its
/// points in input order and their positions.
pub fn group_labeled(points: Vec<(Labels, i64, f64)>) -> Vec<(SeriesWrite, Vec<usize>)> {
    let mut by_series: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut out: Vec<(SeriesWrite, Vec<usize>)> = Vec::new();
    for (i, (labels, ts, v)) in points.into_iter().enumerate() {
        let canonical = labels.canonical();
        let slot = match by_series.get(&canonical) {
            Some(s) => *s,
            None => {
                by_series.insert(canonical.clone(), out.len());
                out.push((
                    SeriesWrite {
                        id: key::series_id_of(&canonical),
                        canonical,
                        points: Vec::new(),
                    },
                    Vec::new(),
                ));
                out.len() - 1
            }
        };
        out[slot].0.points.push((ts, v));
        out[slot].1.push(i);
    }
    out
}

/// Writes series on the core that owns them; answers one result per
/// series (a failed commit fails only its series).
pub struct PutSeries(pub Vec<SeriesWrite>);

impl Rpc<Core> for PutSeries {
    type Answer = Vec<Result<(), String>>;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        Served::Now(Ok(write_here(core, self.0)))
    }
}

/// Writes each series (owned by this core) as one batch.
pub fn write_here(core: &Core, series: Vec<SeriesWrite>) -> Vec<Result<(), String>> {
    series
        .into_iter()
        .map(|w| {
            let id = w.id.to_be_bytes();
            match core.own(&id) {
                Some(owned) => write_series(core, owned, &w).map_err(|e| e.to_string()),
                None => Err("series sent to a core that does not own it".into()),
            }
        })
        .collect()
}

/// The summary of a series' stored points in `[from, to)` (within one
/// minute), overlaid with `new` points (which win on equal timestamps).
/// A range read of at most one minute of points.
pub fn minute_rollup(
    storage: &crate::storage::Storage,
    id: u64,
    from: i64,
    to: i64,
    new: &BTreeMap<i64, f64>,
) -> Result<Option<Bucket>, ApiError> {
    let mut points: BTreeMap<i64, f64> = BTreeMap::new();
    let (lo, hi) = key::point_range(id, from, to);
    storage.scan(Family::Timeseries, &lo, &hi, false, |k, v| {
        if let (Some(ts), Some(val)) = (key::point_ts(k), key::decode_value(v)) {
            points.insert(ts, val);
        }
        true
    })?;
    points.extend(new.iter().map(|(t, v)| (*t, *v)));
    let mut it = points.into_iter();
    let Some((t0, v0)) = it.next() else {
        return Ok(None);
    };
    let mut b = Bucket::new(t0, v0);
    for (t, v) in it {
        b.add(t, v);
    }
    Ok(Some(b))
}

/// One series' points (and its catalog entries if it is new) in one batch,
/// with the rollup of every minute they touch. A minute whose points are
/// all new extends its rollup; a minute where a stored point is
/// overwritten is summarised again from its points.
fn write_series(core: &Core, owned: Owned<'_, [u8; 8]>, w: &SeriesWrite) -> Result<(), ApiError> {
    let storage = &core.node().storage;
    let local = core.timeseries();
    let mut batch = storage.batch();
    let cached = local.latest(w.id);
    let mut existed = cached.is_some();
    // Upper bound of the stored timestamps.
    let mut bound = cached.unwrap_or(i64::MIN);
    if cached.is_none() {
        let skey = key::series_key(u64::from_be_bytes(*owned.key()));
        let existing = storage.get_with(Family::Timeseries, &skey, |v| v.map(<[u8]>::to_vec))?;
        match existing {
            Some(c) if c != w.canonical => {
                return Err(ApiError::Conflict(
                    "series id collision: another series has this id".into(),
                ))
            }
            Some(_) => {
                existed = true;
                // The series' last stored timestamp: one seek.
                let (lo, hi) = key::point_range(w.id, i64::MIN, i64::MAX);
                storage.scan(Family::Timeseries, &lo, &hi, true, |k, _| {
                    bound = key::point_ts(k).unwrap_or(i64::MAX);
                    false
                })?;
            }
            None => {
                batch.put(Family::Timeseries, &skey, &w.canonical)?;
                batch.put(
                    Family::Timeseries,
                    &key::catalog_key(&w.canonical),
                    &w.id.to_be_bytes(),
                )?;
            }
        }
    }
    // Last write wins within the request too.
    let points: BTreeMap<i64, f64> = w.points.iter().copied().collect();
    // minute → (its new points, whether one overwrites a stored point)
    let mut minutes: BTreeMap<i64, (BTreeMap<i64, f64>, bool)> = BTreeMap::new();
    for (ts, v) in &points {
        let pkey = key::point_key(w.id, *ts);
        let overwrites = existed
            && *ts <= bound
            && storage.get_with(Family::Timeseries, &pkey, |o| o.is_some())?;
        let m = minutes.entry(key::minute_of(*ts)).or_default();
        m.0.insert(*ts, *v);
        m.1 |= overwrites;
        batch.put(Family::Timeseries, &pkey, &v.to_bits().to_be_bytes())?;
    }
    for (minute, (new, overwrites)) in &minutes {
        let rkey = key::rollup_key(w.id, *minute);
        let rollup = if *overwrites {
            minute_rollup(storage, w.id, *minute, minute + key::MINUTE_MS, new)?
        } else {
            // A minute after the bound has no stored point, so no rollup.
            let mut r = if existed && *minute <= bound {
                storage.get_with(Family::Timeseries, &rkey, |v| v.and_then(Bucket::decode))?
            } else {
                None
            };
            for (ts, v) in new {
                match &mut r {
                    Some(b) => b.add(*ts, *v),
                    None => r = Some(Bucket::new(*ts, *v)),
                }
            }
            r
        };
        if let Some(b) = rollup {
            batch.put(Family::Timeseries, &rkey, &b.encode())?;
        }
    }
    storage.commit(batch)?;
    let newest = points.keys().next_back().copied().unwrap_or(i64::MIN);
    local.remember(w.id, bound.max(newest));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bad_sample_rejects_its_series_and_bad_labels_reject_one_point() {
        let pts = vec![
            json!({"metric": "m", "entity": "a", "value": 1, "timestamp_ms": 1}),
            json!({"metric": "m", "entity": "b", "value": 1}),
            json!({"metric": "m", "entity": "a", "value": "NaN", "timestamp_ms": 2}),
            json!({"metric": "", "value": 1}),
            json!({"metric": "m", "entity": "b", "value": 2, "timestamp_ms": 99_999_999_999_999_999i64}),
            json!({"metric": "m", "entity": "c", "value": 3, "timestamp_ms": -5}),
        ];
        let g = group(&pts, 1000);
        assert_eq!(g.series.len(), 1);
        assert_eq!(g.series[0].0.points, vec![(-5, 3.0)]);
        let rejected: Vec<usize> = g.rejected.iter().map(|r| r.0).collect();
        assert_eq!(rejected, vec![0, 1, 2, 3, 4]);
        assert!(
            g.rejected[0].1.contains("point #2: value"),
            "{:?}",
            g.rejected
        );
        assert!(g.rejected[2]
            .1
            .starts_with("value: must be a finite number"));
        assert!(g.rejected[3].1.contains("metric"));
        assert!(g.rejected[4].1.starts_with("timestamp_ms"));
    }

    #[test]
    fn timestamp_defaults_to_now() {
        let g = group(&[json!({"metric": "m", "value": 1.5})], 1234);
        assert_eq!(g.series[0].0.points, vec![(1234, 1.5)]);
    }
}
