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
use crate::storage::{Family, ReadView, Storage};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

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

/// Where a series write or a retention cut puts its keys (all in the
/// `timeseries` family): a storage batch, or a list in unit tests.
pub trait Sink {
    fn put(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
    fn delete_range(&mut self, from: &[u8], to: &[u8]);
}

impl Sink for crate::storage::batch::FamilyWriter<'_> {
    #[inline]
    fn put(&mut self, key: &[u8], value: &[u8]) {
        crate::storage::batch::FamilyWriter::put(self, key, value)
    }
    fn delete(&mut self, key: &[u8]) {
        crate::storage::batch::FamilyWriter::delete(self, key)
    }
    fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        crate::storage::batch::FamilyWriter::delete_range(self, from, to)
    }
}

/// The points of a series in timestamp order, the last of equal
/// timestamps kept (request order): borrowed when they already are.
fn in_order(points: &[(i64, f64)]) -> std::borrow::Cow<'_, [(i64, f64)]> {
    if points.windows(2).all(|w| w[0].0 < w[1].0) {
        return std::borrow::Cow::Borrowed(points);
    }
    let mut v = points.to_vec();
    // Stable: equal timestamps stay in request order, and the last wins.
    v.sort_by_key(|p| p.0);
    let mut out: Vec<(i64, f64)> = Vec::with_capacity(v.len());
    for p in v {
        match out.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => out.push(p),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The summary of a series' stored points in `[from, to)`, overlaid with
/// `new` points (ascending; they win on equal timestamps). A range read of
/// at most one minute of points.
pub fn points_rollup<V: ReadView>(
    view: &V,
    id: u64,
    from: i64,
    to: i64,
    new: &[(i64, f64)],
) -> Result<Option<Bucket>, ApiError> {
    let mut stored: Vec<(i64, f64)> = Vec::new();
    let (lo, hi) = key::point_range(id, from, to);
    view.scan(Family::Timeseries, &lo, &hi, false, |k, v| {
        if let (Some(ts), Some(val)) = (key::point_ts(k), key::decode_value(v)) {
            stored.push((ts, val));
        }
        true
    })?;
    let mut b: Option<Bucket> = None;
    let mut add = |ts: i64, v: f64| match &mut b {
        Some(b) => b.add(ts, v),
        None => b = Some(Bucket::new(ts, v)),
    };
    // Merge the two ascending lists; a new point replaces a stored one.
    let (mut i, mut j) = (0, 0);
    while i < stored.len() || j < new.len() {
        match (stored.get(i), new.get(j)) {
            (Some(s), Some(n)) if s.0 < n.0 => {
                add(s.0, s.1);
                i += 1;
            }
            (Some(s), Some(n)) if s.0 == n.0 => {
                add(n.0, n.1);
                i += 1;
                j += 1;
            }
            (_, Some(n)) => {
                add(n.0, n.1);
                j += 1;
            }
            (Some(s), None) => {
                add(s.0, s.1);
                i += 1;
            }
            (None, None) => break,
        }
    }
    Ok(b)
}

/// The merge of a series' stored `level` rollups in `[from, to)`, where
/// `overlay` (ascending starts) replaces the stored rollup of its periods
/// (`None`: the period is empty now). One range read of at most 60
/// rollups.
fn merged_rollups<V: ReadView>(
    view: &V,
    level: key::Level,
    id: u64,
    from: i64,
    to: i64,
    overlay: &[(i64, Option<Bucket>)],
) -> Result<Option<Bucket>, ApiError> {
    let mut out: Option<Bucket> = None;
    let mut merge = |b: &Bucket| match &mut out {
        Some(o) => o.merge(b),
        None => out = Some(*b),
    };
    let (lo, hi) = level.range(id, from, to);
    view.scan(Family::Timeseries, &lo, &hi, false, |k, v| {
        let replaced = level
            .start_of_key(k)
            .is_some_and(|s| overlay.binary_search_by_key(&s, |o| o.0).is_ok());
        if !replaced {
            if let Some(b) = Bucket::decode(v) {
                merge(&b);
            }
        }
        true
    })?;
    for (_, b) in overlay {
        if let Some(b) = b {
            merge(b);
        }
    }
    Ok(out)
}

/// One minute a write touched.
struct MinuteDone {
    start: i64,
    /// Its whole rollup after the write.
    full: Bucket,
    /// The summary of the write's points in it alone.
    added: Bucket,
    /// A stored point was overwritten (so `full` was summarised again).
    overwrote: bool,
}

/// Puts one series' points (and its catalog entries if it is new) into
/// `sink`, with the rollup of every minute and hour they touch. `cached`
/// is an upper bound of the series' stored timestamps when the caller
/// knows the series exists (`None`: looked up here). Returns the new upper
/// bound.
///
/// A minute whose points are all new extends its rollup; a minute where a
/// stored point is overwritten is summarised again from its points (a read
/// of at most that minute). An hour likewise extends its rollup by the new
/// points, or is summarised again from its minutes' rollups (a read of at
/// most 60) when one of them was. Points after the bound cannot overwrite,
/// so an append reads one rollup per minute and hour it touches and no
/// point.
pub fn write_series<V: ReadView, S: Sink>(
    view: &V,
    sink: &mut S,
    w: &SeriesWrite,
    cached: Option<i64>,
) -> Result<i64, ApiError> {
    let mut existed = cached.is_some();
    let mut bound = cached.unwrap_or(i64::MIN);
    if cached.is_none() {
        let skey = key::series_key(w.id);
        let existing = view.get_with(Family::Timeseries, &skey, |v| v.map(<[u8]>::to_vec))?;
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
                view.scan(Family::Timeseries, &lo, &hi, true, |k, _| {
                    bound = key::point_ts(k).unwrap_or(i64::MAX);
                    false
                })?;
            }
            None => {
                sink.put(&skey, &w.canonical);
                sink.put(&key::catalog_key(&w.canonical), &w.id.to_be_bytes());
            }
        }
    }
    let points = in_order(&w.points);
    let mut minutes: Vec<MinuteDone> = Vec::new();
    let mut pkey = key::point_key(w.id, 0);
    let mut i = 0;
    while i < points.len() {
        let start = key::minute_of(points[i].0);
        let end = start + key::MINUTE_MS;
        let j = i + points[i..].partition_point(|p| p.0 < end);
        let slice = &points[i..j];
        let mut overwrote = false;
        let mut added = Bucket::new(slice[0].0, slice[0].1);
        for (n, (ts, v)) in slice.iter().enumerate() {
            pkey[9..].copy_from_slice(&key::encode_ts(*ts));
            if existed && *ts <= bound && !overwrote {
                overwrote = view.get_with(Family::Timeseries, &pkey, |o| o.is_some())?;
            }
            sink.put(&pkey, &v.to_bits().to_be_bytes());
            if n > 0 {
                added.add(*ts, *v);
            }
        }
        let rkey = key::rollup_key(w.id, start);
        let full = if overwrote {
            points_rollup(view, w.id, start, end, slice)?.unwrap_or(added)
        } else if existed && start <= bound {
            // A minute after the bound has no stored point, so no rollup.
            match view.get_with(Family::Timeseries, &rkey, |v| v.and_then(Bucket::decode))? {
                Some(mut b) => {
                    b.merge(&added);
                    b
                }
                None => added,
            }
        } else {
            added
        };
        sink.put(&rkey, &full.encode());
        minutes.push(MinuteDone {
            start,
            full,
            added,
            overwrote,
        });
        i = j;
    }
    let hour = key::Level::Hour;
    let mut k = 0;
    while k < minutes.len() {
        let start = hour.floor(minutes[k].start);
        let end = start + key::HOUR_MS;
        let l = k + minutes[k..].partition_point(|m| m.start < end);
        let group = &minutes[k..l];
        let hkey = hour.key(w.id, start);
        let full = if group.iter().any(|m| m.overwrote) {
            let overlay: Vec<(i64, Option<Bucket>)> =
                group.iter().map(|m| (m.start, Some(m.full))).collect();
            merged_rollups(view, key::Level::Minute, w.id, start, end, &overlay)?
        } else {
            let mut b = if existed && start <= bound {
                view.get_with(Family::Timeseries, &hkey, |v| v.and_then(Bucket::decode))?
            } else {
                None
            };
            for m in group {
                match &mut b {
                    Some(b) => b.merge(&m.added),
                    None => b = Some(m.added),
                }
            }
            b
        };
        if let Some(b) = full {
            sink.put(&hkey, &b.encode());
        }
        k = l;
    }
    let newest = points.last().map_or(i64::MIN, |p| p.0);
    Ok(bound.max(newest))
}

/// Puts the range deletes of a retention cut into `sink`: every point of
/// series `id` before `cutoff`, the minute and hour rollups of whole
/// periods before it, and the rollups of the minute and hour the cut falls
/// in summarised again from what they keep (a read of at most one minute
/// of points and 60 minute rollups). So rollups stay equal to the points.
pub fn cut_series<V: ReadView, S: Sink>(
    view: &V,
    sink: &mut S,
    id: u64,
    cutoff: i64,
) -> Result<(), ApiError> {
    let (lo, hi) = key::point_range(id, i64::MIN, cutoff);
    sink.delete_range(&lo, &hi);
    let (minute, hour) = (key::Level::Minute, key::Level::Hour);
    let m0 = minute.floor(cutoff);
    let (lo, hi) = minute.range(id, i64::MIN, m0);
    sink.delete_range(&lo, &hi);
    let mut overlay = Vec::new();
    if m0 != cutoff {
        let kept = points_rollup(view, id, cutoff, m0 + key::MINUTE_MS, &[])?;
        let rkey = minute.key(id, m0);
        match &kept {
            Some(b) => sink.put(&rkey, &b.encode()),
            None => sink.delete(&rkey),
        }
        overlay.push((m0, kept));
    }
    let h0 = hour.floor(cutoff);
    let (lo, hi) = hour.range(id, i64::MIN, h0);
    sink.delete_range(&lo, &hi);
    if h0 != cutoff {
        // The minutes of the cut hour before m0 are deleted above.
        let kept = merged_rollups(view, minute, id, m0, h0 + key::HOUR_MS, &overlay)?;
        let hkey = hour.key(id, h0);
        match kept {
            Some(b) => sink.put(&hkey, &b.encode()),
            None => sink.delete(&hkey),
        }
    }
    Ok(())
}

/// Writes one series into a batch of its own and commits it (all or
/// nothing). Returns the series' new upper bound of stored timestamps.
pub fn commit_series(
    storage: &Storage,
    w: &SeriesWrite,
    cached: Option<i64>,
) -> Result<i64, ApiError> {
    let mut batch = storage.batch();
    let bound = write_series(storage, &mut batch.family(Family::Timeseries)?, w, cached)?;
    storage.commit(batch)?;
    Ok(bound)
}

/// Commits the retention cuts `(series id, cutoff)` in one batch.
pub fn commit_cuts(storage: &Storage, cuts: &[(u64, i64)]) -> Result<(), ApiError> {
    let mut batch = storage.batch();
    {
        let mut sink = batch.family(Family::Timeseries)?;
        for (id, cutoff) in cuts {
            cut_series(storage, &mut sink, *id, *cutoff)?;
        }
    }
    storage.commit(batch)?;
    Ok(())
}

/// A [`Sink`] that records, then applies to a [`crate::storage::read::MemView`]
/// (unit tests of the write and cut logic).
#[cfg(test)]
#[derive(Default)]
pub struct MemSink(Vec<MemOp>);

/// A key, its value (a put) or the end of a range (a range delete).
#[cfg(test)]
type MemOp = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);

#[cfg(test)]
impl Sink for MemSink {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.0.push((key.to_vec(), Some(value.to_vec()), None));
    }
    fn delete(&mut self, key: &[u8]) {
        self.0.push((key.to_vec(), None, None));
    }
    fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        self.0.push((from.to_vec(), None, Some(to.to_vec())));
    }
}

#[cfg(test)]
impl MemSink {
    pub fn apply(self, view: &mut crate::storage::read::MemView) {
        for (k, v, to) in self.0 {
            match (v, to) {
                (Some(v), _) => view.put(Family::Timeseries, &k, &v),
                (None, Some(to)) => view.delete_range(Family::Timeseries, &k, &to),
                (None, None) => view.delete(Family::Timeseries, &k),
            }
        }
    }
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
