//! Bucketed aggregation: which bucket a timestamp falls in, and the
//! running min/max/sum/count/first/last of a bucket. Pure (no storage), so
//! it is checked against a brute-force model by property tests.
//!
//! Buckets start at `from_ms + k * interval_ms` (`k ≥ 0`) and are
//! half-open `[start, start + interval)`; without an interval there is
//! one bucket starting at `from_ms`. `first`/`last` are the values at the
//! smallest/largest timestamp; on equal timestamps (only possible across
//! series of one group) the series read first wins for `first` and the
//! one read last wins for `last`. Buckets without points are left out.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Most buckets one `/ts/aggregate` may produce (per group).
pub const MAX_BUCKETS: i128 = 10_000;

/// One aggregation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Min,
    Max,
    Avg,
    Sum,
    Count,
    First,
    Last,
}

impl Agg {
    pub const NAMES: &'static str = "min, max, avg, sum, count, first, last";

    pub fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "min" => Agg::Min,
            "max" => Agg::Max,
            "avg" => Agg::Avg,
            "sum" => Agg::Sum,
            "count" => Agg::Count,
            "first" => Agg::First,
            "last" => Agg::Last,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Avg => "avg",
            Agg::Sum => "sum",
            Agg::Count => "count",
            Agg::First => "first",
            Agg::Last => "last",
        }
    }
}

/// The running state of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: (i64, f64),
    pub last: (i64, f64),
}

impl Bucket {
    pub fn new(ts: i64, v: f64) -> Bucket {
        Bucket {
            count: 1,
            sum: v,
            min: v,
            max: v,
            first: (ts, v),
            last: (ts, v),
        }
    }

    /// Merges a summary of other points (a rollup).
    pub fn merge(&mut self, o: &Bucket) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.first.0 < self.first.0 {
            self.first = o.first;
        }
        if o.last.0 >= self.last.0 {
            self.last = o.last;
        }
    }

    /// The stored form of a rollup (64 bytes).
    pub fn encode(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        let words = [
            self.count,
            self.sum.to_bits(),
            self.min.to_bits(),
            self.max.to_bits(),
            self.first.0 as u64,
            self.first.1.to_bits(),
            self.last.0 as u64,
            self.last.1.to_bits(),
        ];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Bucket> {
        if b.len() != 64 {
            return None;
        }
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_be_bytes(x)
        };
        let f = |i: usize| f64::from_bits(w(i));
        Some(Bucket {
            count: w(0),
            sum: f(1),
            min: f(2),
            max: f(3),
            first: (w(4) as i64, f(5)),
            last: (w(6) as i64, f(7)),
        })
    }

    pub fn add(&mut self, ts: i64, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if ts < self.first.0 {
            self.first = (ts, v);
        }
        if ts >= self.last.0 {
            self.last = (ts, v);
        }
    }

    pub fn value(&self, agg: Agg) -> Value {
        match agg {
            Agg::Min => self.min.into(),
            Agg::Max => self.max.into(),
            Agg::Avg => (self.sum / self.count as f64).into(),
            Agg::Sum => self.sum.into(),
            Agg::Count => self.count.into(),
            Agg::First => self.first.1.into(),
            Agg::Last => self.last.1.into(),
        }
    }
}

/// How many buckets `[from, to)` makes with `interval` (`None`: one).
pub fn bucket_count(from: i64, to: i64, interval: Option<i64>) -> i128 {
    match interval {
        None => 1,
        Some(i) => {
            let span = i128::from(to) - i128::from(from);
            (span + i128::from(i) - 1) / i128::from(i)
        }
    }
}

/// The buckets of one group.
#[derive(Debug, Clone)]
pub struct Buckets {
    from: i64,
    interval: Option<i64>,
    buckets: BTreeMap<i64, Bucket>,
}

impl Buckets {
    pub fn new(from: i64, interval: Option<i64>) -> Buckets {
        Buckets {
            from,
            interval,
            buckets: BTreeMap::new(),
        }
    }

    /// The start of the bucket holding `ts` (`ts ≥ from`).
    pub fn start_of(&self, ts: i64) -> i64 {
        match self.interval {
            None => self.from,
            Some(i) => {
                let k = (i128::from(ts) - i128::from(self.from)) / i128::from(i);
                (i128::from(self.from) + k * i128::from(i)) as i64
            }
        }
    }

    pub fn add(&mut self, ts: i64, v: f64) {
        let start = self.start_of(ts);
        self.buckets
            .entry(start)
            .and_modify(|b| b.add(ts, v))
            .or_insert_with(|| Bucket::new(ts, v));
    }

    /// Merges a rollup whose points all lie in the bucket holding `ts`.
    pub fn merge(&mut self, ts: i64, b: &Bucket) {
        let start = self.start_of(ts);
        self.buckets
            .entry(start)
            .and_modify(|x| x.merge(b))
            .or_insert(*b);
    }

    /// How many buckets hold points.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&i64, &Bucket)> {
        self.buckets.iter()
    }

    /// `[{"start_ms", <agg>...}]`, ascending.
    pub fn to_json(&self, aggs: &[Agg]) -> Value {
        let list = self
            .buckets
            .iter()
            .map(|(start, b)| {
                let mut m = Map::new();
                m.insert("start_ms".into(), (*start).into());
                for a in aggs {
                    m.insert(a.name().into(), b.value(*a));
                }
                Value::Object(m)
            })
            .collect();
        Value::Array(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rollups_encode_and_merge_like_adding_points() {
        let mut a = Bucket::new(5, 2.0);
        a.add(9, -1.0);
        assert_eq!(Bucket::decode(&a.encode()), Some(a));
        let mut b = Bucket::new(-3, 7.0);
        b.add(20, 4.0);
        let mut merged = a;
        merged.merge(&b);
        let mut added = Bucket::new(-3, 7.0);
        for (t, v) in [(5, 2.0), (9, -1.0), (20, 4.0)] {
            added.add(t, v);
        }
        assert_eq!(merged, added);
    }

    #[test]
    fn bucket_edges_and_negative_timestamps() {
        let b = Buckets::new(-100, Some(30));
        assert_eq!(b.start_of(-100), -100);
        assert_eq!(b.start_of(-71), -100);
        assert_eq!(b.start_of(-70), -70);
        assert_eq!(b.start_of(-1), -10);
        assert_eq!(b.start_of(0), -10);
        assert_eq!(b.start_of(20), 20);
        assert_eq!(bucket_count(-100, 0, Some(30)), 4);
        assert_eq!(bucket_count(0, 60, Some(30)), 2);
        assert_eq!(bucket_count(0, 1, None), 1);
    }

    proptest! {
        /// Every aggregate of every bucket equals a brute-force computation
        /// over the points that fall in it.
        #[test]
        fn buckets_equal_brute_force(
            from in -1_000i64..1_000,
            span in 1i64..5_000,
            interval in proptest::option::of(1i64..700),
            raw in proptest::collection::vec((0i64..5_000, -1_000i32..1_000), 0..200),
        ) {
            let to = from + span;
            let points: Vec<(i64, f64)> = raw
                .into_iter()
                .map(|(o, v)| (from + o % span, f64::from(v)))
                .collect();
            let mut b = Buckets::new(from, interval);
            for (ts, v) in &points {
                b.add(*ts, *v);
            }
            let mut expected: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
            for (ts, v) in &points {
                let start = match interval {
                    None => from,
                    Some(i) => from + (ts - from).div_euclid(i) * i,
                };
                prop_assert!(start <= *ts && *ts < to);
                expected.entry(start).or_default().push((*ts, *v));
            }
            let got: Vec<_> = b.iter().collect();
            prop_assert_eq!(got.len(), expected.len());
            for ((start, bucket), (estart, pts)) in got.into_iter().zip(expected) {
                prop_assert_eq!(*start, estart);
                prop_assert_eq!(bucket.count, pts.len() as u64);
                prop_assert_eq!(bucket.sum, pts.iter().map(|p| p.1).sum::<f64>());
                prop_assert_eq!(bucket.min, pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min));
                prop_assert_eq!(bucket.max, pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max));
                let first = pts.iter().min_by_key(|p| p.0).map(|p| p.0);
                let last = pts.iter().map(|p| p.0).max();
                prop_assert_eq!(Some(bucket.first.0), first);
                prop_assert_eq!(Some(bucket.last.0), last);
                // first: the earliest added among equal timestamps; last: the latest.
                let fv = pts.iter().find(|p| Some(p.0) == first).map(|p| p.1);
                let lv = pts.iter().rev().find(|p| Some(p.0) == last).map(|p| p.1);
                prop_assert_eq!(Some(bucket.first.1), fv);
                prop_assert_eq!(Some(bucket.last.1), lv);
            }
        }
    }
}
