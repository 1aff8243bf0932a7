//! Reading series: finding them in the catalog, reading a time range of
//! points (`/ts/query`) and aggregating it into buckets (`/ts/aggregate`).
//!
//! Written against [`ReadView`], so the same code runs over the live
//! database (on a blocking thread: these are range reads) and over a
//! [`crate::storage::MemView`] in unit tests. Every loop checks the
//! request's deadline, as query scans do.
//!
//! Aggregation reads, per series and bucket, the hour rollups of the whole
//! hours inside the bucket, the minute rollups of the whole minutes around
//! them and the raw points of the partial minutes at its edges (buckets
//! shorter than two minutes read raw points only, in one scan). So a
//! bucket costs at most its hours + 118 minute rollups + 2 minutes of
//! points, whatever the density of the data.

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
            reader.cover(b, e)?;
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

    /// Everything in `[from, to)` (one bucket or part of one), read as
    /// coarsely as it can be: hour rollups for the whole hours inside,
    /// minute rollups for the whole minutes around them, raw points for
    /// the partial minutes at the edges.
    fn cover(&mut self, from: i64, to: i64) -> Result<(), ApiError> {
        let (minute, hour) = (key::Level::Minute, key::Level::Hour);
        let (m_lo, m_hi) = (minute.ceil(from), minute.floor(to));
        if m_lo >= m_hi {
            return self.raw(from, to);
        }
        self.raw(from, m_lo)?;
        let (h_lo, h_hi) = (hour.ceil(m_lo), hour.floor(m_hi));
        if h_lo < h_hi {
            self.rollups(minute, m_lo, h_lo)?;
            self.rollups(hour, h_lo, h_hi)?;
            self.rollups(minute, h_hi, m_hi)?;
        } else {
            self.rollups(minute, m_lo, m_hi)?;
        }
        self.raw(m_hi, to)
    }

    /// The `level` rollups of the periods starting in `[from, to)`: each
    /// lies in one bucket.
    fn rollups(&mut self, level: key::Level, from: i64, to: i64) -> Result<(), ApiError> {
        if from >= to {
            return Ok(());
        }
        let (lo, hi) = level.range(self.id, from, to);
        let (rollups, buckets) = (&mut *self.rollups, &mut *self.buckets);
        self.view
            .scan(Family::Timeseries, &lo, &hi, false, |k, v| {
                if let (Some(m), Some(b)) = (level.start_of_key(k), Bucket::decode(v)) {
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
    use crate::timeseries::ingest;
    use proptest::prelude::*;
    use std::time::Duration;

    const ALL_AGGS: [Agg; 7] = [
        Agg::Count,
        Agg::Sum,
        Agg::Min,
        Agg::Max,
        Agg::Avg,
        Agg::First,
        Agg::Last,
    ];

    /// A timestamp near minute `m`: on its start, on its last ms, or
    /// anywhere in it.
    fn near_minute() -> impl Strategy<Value = i64> {
        (
            -200i64..200,
            prop_oneof![Just(0i64), Just(59_999i64), 0i64..60_000],
        )
            .prop_map(|(m, off)| m * key::MINUTE_MS + off)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Through batches of writes (out of order, duplicates, overwrites
        /// of stored points, negative timestamps, minute and hour edges)
        /// and a retention cut, every minute and hour rollup equals its
        /// points, and every aggregate equals a brute-force computation
        /// over the points left.
        #[test]
        fn aggregates_over_minute_and_hour_rollups_equal_brute_force(
            batches in proptest::collection::vec(
                proptest::collection::vec((near_minute(), -500i32..500), 1..80), 1..5),
            cutoff in proptest::option::of(near_minute()),
            queries in proptest::collection::vec(
                (near_minute(), 1i64..600, proptest::option::of(prop_oneof![
                    1_000i64..120_000, 120_000i64..3 * key::HOUR_MS,
                    Just(key::HOUR_MS), Just(2 * key::HOUR_MS)])), 1..6),
        ) {
            let l = labels("p", "e", "h");
            let mut v = MemView::default();
            let mut model: BTreeMap<i64, f64> = BTreeMap::new();
            for batch in &batches {
                let pts: Vec<(i64, f64)> = batch.iter().map(|(t, x)| (*t, f64::from(*x))).collect();
                put_series(&mut v, &l, &pts);
                for (t, x) in pts {
                    model.insert(t, x);
                }
                assert_rollups_consistent(&v, l.series_id());
            }
            if let Some(c) = cutoff {
                cut(&mut v, &l, c);
                model.retain(|t, _| *t >= c);
                assert_rollups_consistent(&v, l.series_id());
            }
            for (from, minutes, interval) in queries {
                let to = from + minutes * key::MINUTE_MS / 2 + 17;
                let a = AggregateRange {
                    sel: Selector { metric: "p".into(), entity: None, tags: BTreeMap::new() },
                    from,
                    to,
                    interval,
                    group_by: vec![],
                    aggs: ALL_AGGS.to_vec(),
                };
                let out = aggregate(&v, &a, later()).unwrap();
                let mut expect = Buckets::new(from, interval);
                for (t, x) in model.range(from..to) {
                    expect.add(*t, *x);
                }
                let got = out["groups"].get(0).map_or(json!([]), |g| g["buckets"].clone());
                prop_assert_eq!(got, expect.to_json(&a.aggs), "{} {} {:?}", from, to, interval);
            }
        }
    }

    /// A 30-day range into one bucket reads hour rollups, not minutes.
    #[test]
    fn a_month_reads_hour_rollups() {
        let mut v = MemView::default();
        let l = labels("month", "e", "h");
        // One point every 10 s for 30 days, written in daily batches.
        let day = 24 * key::HOUR_MS;
        let mut total = 0u64;
        for d in 0..30 {
            let pts: Vec<(i64, f64)> = (0..day / 10_000)
                .map(|k| (d * day + k * 10_000 - 5 * day, 1.0))
                .collect();
            total += pts.len() as u64;
            put_series(&mut v, &l, &pts);
        }
        let a = AggregateRange {
            sel: Selector {
                metric: "month".into(),
                entity: None,
                tags: BTreeMap::new(),
            },
            from: -5 * day + 1,
            to: 25 * day,
            interval: None,
            group_by: vec![],
            aggs: vec![Agg::Count],
        };
        let out = aggregate(&v, &a, later()).unwrap();
        assert_eq!(out["groups"][0]["buckets"][0]["count"], total - 1);
        // 719 hours, 59 minutes, 5 points of the first partial minute.
        assert_eq!(out["rollups_read"], 719 + 59, "{out}");
        assert_eq!(out["points_read"], 5, "{out}");
    }

    /// Writes through the real write path (`ingest::write_series`).
    fn put_series(view: &mut MemView, l: &Labels, points: &[(i64, f64)]) {
        let c = l.canonical();
        let w = ingest::SeriesWrite {
            id: l.series_id(),
            canonical: c,
            points: points.to_vec(),
        };
        let mut sink = ingest::MemSink::default();
        ingest::write_series(&*view, &mut sink, &w, None).unwrap();
        sink.apply(view);
    }

    fn cut(view: &mut MemView, l: &Labels, cutoff: i64) {
        let mut sink = ingest::MemSink::default();
        ingest::cut_series(&*view, &mut sink, l.series_id(), cutoff).unwrap();
        sink.apply(view);
    }

    /// Every stored minute and hour rollup equals the summary of the
    /// points in its period, and no period with points lacks one.
    fn assert_rollups_consistent(view: &MemView, id: u64) {
        let mut points: Vec<(i64, f64)> = Vec::new();
        let (lo, hi) = key::point_range(id, i64::MIN, i64::MAX);
        view.scan(Family::Timeseries, &lo, &hi, false, |k, v| {
            points.push((key::point_ts(k).unwrap(), key::decode_value(v).unwrap()));
            true
        })
        .unwrap();
        for level in [key::Level::Minute, key::Level::Hour] {
            let mut expect: BTreeMap<i64, Bucket> = BTreeMap::new();
            for (t, v) in &points {
                expect
                    .entry(level.floor(*t))
                    .and_modify(|b| b.add(*t, *v))
                    .or_insert_with(|| Bucket::new(*t, *v));
            }
            let mut got: BTreeMap<i64, Bucket> = BTreeMap::new();
            let (lo, hi) = level.range(
                id,
                key::MIN_TIMESTAMP_MS - key::HOUR_MS,
                key::MAX_TIMESTAMP_MS,
            );
            view.scan(Family::Timeseries, &lo, &hi, false, |k, v| {
                got.insert(level.start_of_key(k).unwrap(), Bucket::decode(v).unwrap());
                true
            })
            .unwrap();
            assert_eq!(got.len(), expect.len(), "{level:?}");
            for ((s1, g), (s2, e)) in got.iter().zip(&expect) {
                assert_eq!(s1, s2, "{level:?}");
                assert_eq!(g.count, e.count, "{level:?} {s1}");
                assert_eq!(g.min, e.min);
                assert_eq!(g.max, e.max);
                assert_eq!(g.first, e.first);
                assert_eq!(g.last, e.last);
                // Sums are merged in another order: equal up to rounding.
                assert!((g.sum - e.sum).abs() <= 1e-9 * e.sum.abs().max(1.0));
            }
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
