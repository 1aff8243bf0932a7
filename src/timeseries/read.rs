//! Reading series: finding them in the catalog, reading a time range of
//! points (`/ts/query`) and aggregating it into buckets (`/ts/aggregate`).
//!
//! Written against [`ReadView`], so the same code runs over the live
//! database (on a blocking thread: these are range reads) and over a
//! [`crate::storage::MemView`] in unit tests. Every loop checks the
//! request's deadline, as query scans do.
//!
//! Aggregation reads the raw points of the range once, streaming (memory
//! is the buckets, not the points): its cost is linear in the points of
//! the range. There are no rollups yet (see `docs/timeseries.md`).

use super::aggregate::{Agg, Bucket, Buckets};
use super::key::{self, Labels};
use crate::error::ApiError;
use crate::storage::{Family, ReadView};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// Most series one query or aggregate may match.
pub const MAX_SERIES: usize = 10_000;
/// Most groups one aggregate may produce.
pub const MAX_GROUPS: usize = 1_000;
/// A `/ts/query` page ends (with `next_cursor`) once its answer is about
/// this large, whatever its `limit`.
pub const MAX_PAGE_BYTES: usize = 8 << 20;
/// The estimated size of one point in an answer (`[ts,value],`).
const POINT_BYTES: usize = 40;
/// Most buckets of all groups of one aggregate together.
pub const MAX_TOTAL_BUCKETS: usize = 200_000;
/// The deadline is checked every this many keys.
const DEADLINE_EVERY: u64 = 4_096;

/// Which series a request reads.
#[derive(Debug, Clone)]
pub struct Selector {
    pub metric: String,
    pub entity: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// One matched series.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: u64,
    pub labels: Labels,
}

fn late() -> ApiError {
    ApiError::Timeout { ms: 0 }
}

/// The series matching `sel`, in catalog order, starting at catalog key
/// `start` when given. More than [`MAX_SERIES`] is a 400 (narrow it).
pub fn find_series<V: ReadView>(
    view: &V,
    sel: &Selector,
    start: Option<&[u8]>,
    deadline: Instant,
) -> Result<Vec<Found>, ApiError> {
    let (mut from, to) = key::catalog_range(&sel.metric, sel.entity.as_deref());
    if let Some(s) = start {
        if s > from.as_slice() {
            from = s.to_vec();
        }
    }
    let mut out = Vec::new();
    let mut seen = 0u64;
    let mut result = Ok(());
    view.scan(Family::Timeseries, &from, &to, false, |k, v| {
        seen += 1;
        if seen.is_multiple_of(DEADLINE_EVERY) && Instant::now() >= deadline {
            result = Err(late());
            return false;
        }
        let (Some(labels), Ok(id)) = (Labels::from_canonical(&k[1..]), <[u8; 8]>::try_from(v))
        else {
            return true;
        };
        if !labels.matches(sel.entity.as_deref(), &sel.tags) {
            return true;
        }
        if out.len() == MAX_SERIES {
            result = Err(ApiError::BadRequest(format!(
                "the selection matches more than {MAX_SERIES} series; narrow it with entity or tags"
            )));
            return false;
        }
        out.push(Found {
            id: u64::from_be_bytes(id),
            labels,
        });
        true
    })?;
    result.map(|()| out)
}

/// Where a `/ts/query` page resumes: a series and a timestamp in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub series: u64,
    pub ts: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{:016x}:{}", self.series, self.ts)
    }

    pub fn parse(s: &str) -> Option<Cursor> {
        let (id, ts) = s.split_once(':')?;
        if id.len() != 16 {
            return None;
        }
        Some(Cursor {
            series: u64::from_str_radix(id, 16).ok()?,
            ts: ts.parse().ok()?,
        })
    }
}

/// A `/ts/query` request, parsed.
#[derive(Debug, Clone)]
pub struct QueryRange {
    pub sel: Selector,
    pub from: i64,
    pub to: i64,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

fn labels_json(l: &Labels) -> Value {
    json!({"metric": l.metric, "entity": l.entity, "tags": l.tags})
}

/// Reads up to `limit` points of the matching series in `[from, to)`,
/// series by series in catalog order, each in timestamp order. Series
/// without points in the range are left out.
pub fn query<V: ReadView>(view: &V, q: &QueryRange, deadline: Instant) -> Result<Value, ApiError> {
    let start = match q.cursor {
        Some(c) => {
            let canonical = view
                .get_with(Family::Timeseries, &key::series_key(c.series), |v| {
                    v.map(<[u8]>::to_vec)
                })?
                .ok_or_else(|| {
                    ApiError::BadRequest("cursor: names a series that does not exist".into())
                })?;
            Some(key::catalog_key(&canonical))
        }
        None => None,
    };
    let found = find_series(view, &q.sel, start.as_deref(), deadline)?;
    let mut series_out = Vec::new();
    let mut count = 0usize;
    // An estimate of the answer's size: labels of each series, and points.
    let mut bytes = 0usize;
    let mut next: Option<Cursor> = None;
    let mut seen = 0u64;
    let mut timed_out = false;
    'series: for f in &found {
        let from = match q.cursor {
            Some(c) if c.series == f.id => c.ts.max(q.from),
            _ => q.from,
        };
        if from >= q.to {
            continue;
        }
        bytes += 64 + f.labels.canonical().len();
        let (lo, hi) = key::point_range(f.id, from, q.to);
        let mut points: Vec<Value> = Vec::new();
        view.scan(Family::Timeseries, &lo, &hi, false, |k, v| {
            seen += 1;
            if seen.is_multiple_of(DEADLINE_EVERY) && Instant::now() >= deadline {
                timed_out = true;
                return false;
            }
            let (Some(ts), Some(val)) = (key::point_ts(k), key::decode_value(v)) else {
                return true;
            };
            if count == q.limit || bytes >= MAX_PAGE_BYTES {
                next = Some(Cursor { series: f.id, ts });
                return false;
            }
            count += 1;
            bytes += POINT_BYTES;
            points.push(json!([ts, val]));
            true
        })?;
        if timed_out {
            return Err(late());
        }
        if !points.is_empty() {
            let mut s = labels_json(&f.labels);
            s["points"] = Value::Array(points);
            series_out.push(s);
        }
        if next.is_some() {
            break 'series;
        }
    }
    let mut out = json!({"series": series_out, "count": count});
    if let Some(c) = next {
        out["next_cursor"] = c.encode().into();
    }
    Ok(out)
}

/// A `/ts/aggregate` request, parsed.
#[derive(Debug, Clone)]
pub struct AggregateRange {
    pub sel: Selector,
    pub from: i64,
    pub to: i64,
    pub interval: Option<i64>,
    pub group_by: Vec<String>,
    pub aggs: Vec<Agg>,
}

/// Aggregates the matching series' points in `[from, to)` into buckets,
/// one bucket list per group (the values of the `group_by` tags; a series
/// without one of them has `null` there).
pub fn aggregate<V: ReadView>(
    view: &V,
    a: &AggregateRange,
    deadline: Instant,
) -> Result<Value, ApiError> {
    let found = find_series(view, &a.sel, None, deadline)?;
    let mut groups: BTreeMap<Vec<Option<String>>, (u64, Buckets)> = BTreeMap::new();
    let mut seen = 0u64;
    let mut rollups = 0u64;
    // Rollups pay off when a bucket spans at least two minutes.
    let use_rollups = a.interval.unwrap_or(a.to.saturating_sub(a.from)) >= 2 * key::MINUTE_MS;
    for f in &found {
        let group: Vec<Option<String>> = a
            .group_by
            .iter()
            .map(|t| f.labels.tags.get(t).cloned())
            .collect();
        if !groups.contains_key(&group) && groups.len() == MAX_GROUPS {
            return Err(ApiError::BadRequest(format!(
                "group_by makes more than {MAX_GROUPS} groups; group by fewer tags or narrow the selection"
            )));
        }
        let (n, buckets) = groups
            .entry(group)
            .or_insert_with(|| (0, Buckets::new(a.from, a.interval)));
        *n += 1;
        let mut reader = Reader {
            view,
            id: f.id,
            buckets,
            seen: &mut seen,
            rollups: &mut rollups,
            deadline,
        };
        if !use_rollups {
            reader.raw(a.from, a.to)?;
            check_total(&groups)?;
            continue;
        }
        let mut b = a.from;
        while b < a.to {
            let e = match a.interval {
                Some(i) => b.saturating_add(i).min(a.to),
                None => a.to,
            };
            let (lo, hi) = (key::minute_ceil(b), key::minute_of(e));
            if lo < hi {
                reader.raw(b, lo)?;
                reader.rollups(lo, hi)?;
                reader.raw(hi, e)?;
            } else {
                reader.raw(b, e)?;
            }
            if Instant::now() >= deadline {
                return Err(late());
            }
            b = e;
        }
        check_total(&groups)?;
    }
    let list: Vec<Value> = groups
        .into_iter()
        .map(|(group, (n, buckets))| {
            let tags: Map<String, Value> = a
                .group_by
                .iter()
                .cloned()
                .zip(
                    group
                        .into_iter()
                        .map(|v| v.map_or(Value::Null, Value::from)),
                )
                .collect();
            json!({"tags": tags, "series": n, "buckets": buckets.to_json(&a.aggs)})
        })
        .collect();
    Ok(json!({"groups": list, "points_read": seen, "rollups_read": rollups}))
}

/// Fails when the groups' buckets together exceed [`MAX_TOTAL_BUCKETS`]
/// (checked after each series, so memory stays bounded).
fn check_total(groups: &BTreeMap<Vec<Option<String>>, (u64, Buckets)>) -> Result<(), ApiError> {
    let total: usize = groups.values().map(|(_, b)| b.len()).sum();
    if total > MAX_TOTAL_BUCKETS {
        return Err(ApiError::BadRequest(format!(
            "the answer would hold more than {MAX_TOTAL_BUCKETS} buckets over all groups; \
             use a longer interval_ms, fewer group_by tags or a narrower selection"
        )));
    }
    Ok(())
}

/// Reads one series into one group's buckets: raw points, or the
/// per-minute rollups of whole minutes.
struct Reader<'a, V> {
    view: &'a V,
    id: u64,
    buckets: &'a mut Buckets,
    seen: &'a mut u64,
    rollups: &'a mut u64,
    deadline: Instant,
}

impl<V: ReadView> Reader<'_, V> {
    /// Raw points in `[from, to)`.
    fn raw(&mut self, from: i64, to: i64) -> Result<(), ApiError> {
        if from >= to {
            return Ok(());
        }
        let (lo, hi) = key::point_range(self.id, from, to);
        let mut timed_out = false;
        let (seen, buckets, deadline) = (&mut *self.seen, &mut *self.buckets, self.deadline);
        self.view
            .scan(Family::Timeseries, &lo, &hi, false, |k, v| {
                *seen += 1;
                if seen.is_multiple_of(DEADLINE_EVERY) && Instant::now() >= deadline {
                    timed_out = true;
                    return false;
                }
                if let (Some(ts), Some(val)) = (key::point_ts(k), key::decode_value(v)) {
                    buckets.add(ts, val);
                }
                true
            })?;
        if timed_out {
            return Err(late());
        }
        Ok(())
    }

    /// The rollups of the minutes starting in `[from, to)`: each lies in
    /// one bucket.
    fn rollups(&mut self, from: i64, to: i64) -> Result<(), ApiError> {
        let (lo, hi) = key::rollup_range(self.id, from, to);
        let (rollups, buckets) = (&mut *self.rollups, &mut *self.buckets);
        self.view
            .scan(Family::Timeseries, &lo, &hi, false, |k, v| {
                if let (Some(m), Some(b)) = (key::rollup_minute(k), Bucket::decode(v)) {
                    *rollups += 1;
                    buckets.merge(m, &b);
                }
                true
            })?;
        Ok(())
    }
}

/// `GET /ts/metrics`: every metric and its series count, in name order.
pub fn metrics<V: ReadView>(view: &V, deadline: Instant) -> Result<Value, ApiError> {
    let (from, to) = key::whole_catalog();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = 0u64;
    let mut timed_out = false;
    view.scan(Family::Timeseries, &from, &to, false, |k, _| {
        seen += 1;
        if seen.is_multiple_of(DEADLINE_EVERY) && Instant::now() >= deadline {
            timed_out = true;
            return false;
        }
        if let Some(end) = k[1..].iter().position(|b| *b == 0) {
            let metric = String::from_utf8_lossy(&k[1..1 + end]);
            match counts.get_mut(metric.as_ref()) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(metric.into_owned(), 1);
                }
            }
        }
        true
    })?;
    if timed_out {
        return Err(late());
    }
    let list: Vec<Value> = counts
        .iter()
        .map(|(m, n)| json!({"metric": m, "series": n}))
        .collect();
    Ok(json!({"metrics": list, "count": list.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::read::MemView;
    use std::time::Duration;

    fn put_series(view: &mut MemView, l: &Labels, points: &[(i64, f64)]) {
        let c = l.canonical();
        let id = l.series_id();
        view.put(Family::Timeseries, &key::catalog_key(&c), &id.to_be_bytes());
        view.put(Family::Timeseries, &key::series_key(id), &c);
        let mut minutes: BTreeMap<i64, Bucket> = BTreeMap::new();
        for (ts, v) in points {
            view.put(
                Family::Timeseries,
                &key::point_key(id, *ts),
                &v.to_bits().to_be_bytes(),
            );
            minutes
                .entry(key::minute_of(*ts))
                .and_modify(|b| b.add(*ts, *v))
                .or_insert_with(|| Bucket::new(*ts, *v));
        }
        for (m, b) in minutes {
            view.put(Family::Timeseries, &key::rollup_key(id, m), &b.encode());
        }
    }

    /// Buckets of two minutes or more read rollups for whole minutes and
    /// raw points at the edges: the same answer as reading every point.
    #[test]
    fn rollups_and_raw_points_give_the_same_buckets() {
        let mut v = MemView::default();
        let mut x = 7u64;
        let mut pts = BTreeMap::new();
        for _ in 0..3_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let ts = (x >> 33) as i64 % 1_800_000 - 900_000;
            pts.insert(ts, ((x >> 20) % 100) as f64);
        }
        let pts: Vec<(i64, f64)> = pts.into_iter().collect();
        put_series(&mut v, &labels("r", "a", "h"), &pts);
        for (from, to, interval) in [
            (-900_000, 900_000, Some(150_000)),
            (-873_123, 812_345, Some(123_457)),
            (-873_123, 812_345, None),
            (-500_001, 100_001, Some(1_000)),
        ] {
            let a = AggregateRange {
                sel: Selector {
                    metric: "r".into(),
                    entity: None,
                    tags: BTreeMap::new(),
                },
                from,
                to,
                interval,
                group_by: vec![],
                aggs: vec![
                    Agg::Count,
                    Agg::Sum,
                    Agg::Min,
                    Agg::Max,
                    Agg::First,
                    Agg::Last,
                ],
            };
            let out = aggregate(&v, &a, later()).unwrap();
            let mut expect = Buckets::new(from, interval);
            for (ts, val) in &pts {
                if (from..to).contains(ts) {
                    expect.add(*ts, *val);
                }
            }
            assert_eq!(
                out["groups"][0]["buckets"],
                expect.to_json(&a.aggs),
                "{from} {to} {interval:?}"
            );
            if interval != Some(1_000) {
                assert!(out["rollups_read"].as_u64().unwrap() > 0);
                assert!(out["points_read"].as_u64().unwrap() < pts.len() as u64 / 2);
            }
        }
    }

    fn labels(metric: &str, entity: &str, host: &str) -> Labels {
        Labels {
            metric: metric.into(),
            entity: entity.into(),
            tags: [("host".to_string(), host.to_string())].into(),
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn query_pages_through_series_with_cursors() {
        let mut v = MemView::default();
        let pts: Vec<(i64, f64)> = (-5..5).map(|t| (t * 10, t as f64)).collect();
        put_series(&mut v, &labels("cpu", "a", "h1"), &pts);
        put_series(&mut v, &labels("cpu", "b", "h2"), &pts);
        put_series(&mut v, &labels("cpu2", "a", "h1"), &pts);
        let sel = Selector {
            metric: "cpu".into(),
            entity: None,
            tags: BTreeMap::new(),
        };
        let mut q = QueryRange {
            sel,
            from: -30,
            to: 30,
            limit: 4,
            cursor: None,
        };
        let mut all = Vec::new();
        for _ in 0..10 {
            let page = query(&v, &q, later()).unwrap();
            for s in page["series"].as_array().unwrap() {
                for p in s["points"].as_array().unwrap() {
                    all.push((
                        s["entity"].as_str().unwrap().to_string(),
                        p[0].as_i64().unwrap(),
                    ));
                }
            }
            match page.get("next_cursor") {
                Some(c) => q.cursor = Cursor::parse(c.as_str().unwrap()),
                None => break,
            }
        }
        let expect: Vec<(String, i64)> = ["a", "b"]
            .iter()
            .flat_map(|e| (-3..3).map(move |t| (e.to_string(), t * 10)))
            .collect();
        assert_eq!(all, expect);
    }

    #[test]
    fn aggregate_groups_by_tag() {
        let mut v = MemView::default();
        put_series(&mut v, &labels("m", "a", "h1"), &[(0, 1.0), (5, 3.0)]);
        put_series(&mut v, &labels("m", "b", "h1"), &[(1, 10.0)]);
        put_series(&mut v, &labels("m", "c", "h2"), &[(12, 7.0)]);
        let a = AggregateRange {
            sel: Selector {
                metric: "m".into(),
                entity: None,
                tags: BTreeMap::new(),
            },
            from: 0,
            to: 20,
            interval: Some(10),
            group_by: vec!["host".into()],
            aggs: vec![Agg::Sum, Agg::Count, Agg::Max],
        };
        let out = aggregate(&v, &a, later()).unwrap();
        assert_eq!(
            out["groups"],
            json!([
                {"tags": {"host": "h1"}, "series": 2, "buckets": [{"start_ms": 0, "sum": 14.0, "count": 3, "max": 10.0}]},
                {"tags": {"host": "h2"}, "series": 1, "buckets": [{"start_ms": 10, "sum": 7.0, "count": 1, "max": 7.0}]},
            ])
        );
        let m = metrics(&v, later()).unwrap();
        assert_eq!(m["metrics"], json!([{"metric": "m", "series": 3}]));
    }

    #[test]
    fn a_page_ends_at_its_byte_budget_and_the_cursor_resumes_it() {
        let mut v = MemView::default();
        let long = "x".repeat(250);
        for i in 0..9_000 {
            let l = Labels {
                metric: "wide".into(),
                entity: format!("e{i:05}"),
                tags: (0..4).map(|t| (format!("t{t}"), long.clone())).collect(),
            };
            put_series(&mut v, &l, &[(i, 1.0)]);
        }
        let mut q = QueryRange {
            sel: Selector {
                metric: "wide".into(),
                entity: None,
                tags: BTreeMap::new(),
            },
            from: 0,
            to: 10_000,
            limit: MAX_PAGE_BYTES,
            cursor: None,
        };
        let first = query(&v, &q, later()).unwrap();
        let n = first["count"].as_u64().unwrap();
        assert!(n > 0 && n < 9_000, "{n}");
        assert!(serde_json::to_vec(&first).unwrap().len() <= MAX_PAGE_BYTES + 4_096);
        q.cursor = Cursor::parse(first["next_cursor"].as_str().unwrap());
        let rest = query(&v, &q, later()).unwrap();
        assert_eq!(n + rest["count"].as_u64().unwrap(), 9_000);
        assert!(rest.get("next_cursor").is_none());
    }

    #[test]
    fn too_many_buckets_over_all_groups_is_refused() {
        let mut groups: BTreeMap<Vec<Option<String>>, (u64, Buckets)> = BTreeMap::new();
        for g in 0..21 {
            let mut b = Buckets::new(0, Some(1));
            for t in 0..10_000 {
                b.add(t, 1.0);
            }
            groups.insert(vec![Some(g.to_string())], (1, b));
            if g < 19 {
                assert!(check_total(&groups).is_ok());
            }
        }
        let e = check_total(&groups).unwrap_err();
        assert!(e.to_string().contains("more than 200000 buckets"), "{e}");
    }
}
