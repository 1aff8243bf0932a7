//! The time-series key layout in [`Family::Timeseries`], and series labels.
//!
//! Three kinds of keys, each behind its own first byte so they never
//! interleave:
//! * **catalog** `[0x01] metric 0 entity 0 (tag 0 value 0)*` → series id
//!   (u64 BE). Sorted by metric, then entity, then tags, so the series of a
//!   metric (or of one metric and entity) are one short prefix read: a query
//!   by metric or tag never touches point data to find its series.
//! * **series** `[0x02][id u64 BE]` → the canonical labels (the catalog key
//!   without its first byte): the reverse entry, which also detects the
//!   (2⁻⁶⁴-unlikely) case of two label sets hashing to one id.
//! * **rollups** `[0x04][id u64 BE][minute start, encoded as a timestamp]`
//!   and `[0x05][id u64 BE][hour start, same encoding]` → count, sum, min,
//!   max, first and last of the series' points in that minute or hour
//!   (`aggregate::Bucket::encode`), kept in the same batch as the points:
//!   aggregates over long buckets read one rollup per hour (and per minute
//!   at the bucket's edges) instead of every point.
//! * **point** `[0x03][id u64 BE][timestamp i64 BE, sign bit flipped]` →
//!   the value (f64 bits, BE). Flipping the sign bit makes the byte order of
//!   the key the numeric order of the timestamp, negative ones included, so
//!   a time range of one series is one bounded iterator, and a retention
//!   cut is one `delete_range`.
//!
//! The series id is the first 8 bytes of SHA-256 over the canonical labels:
//! any core computes it (and so the series' owner) without a lookup.
//!
//! [`Family::Timeseries`]: crate::storage::Family::Timeseries

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const CATALOG: u8 = 0x01;
pub const SERIES: u8 = 0x02;
pub const POINT: u8 = 0x03;
pub const ROLLUP: u8 = 0x04;
pub const ROLLUP_HOUR: u8 = 0x05;

/// The finer rollup granularity: one summary per series and minute.
pub const MINUTE_MS: i64 = 60_000;
/// The coarser one: one summary per series and hour (the merge of its
/// minutes' rollups).
pub const HOUR_MS: i64 = 3_600_000;

/// A rollup granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Minute,
    Hour,
}

impl Level {
    /// Its length in ms.
    pub const fn ms(self) -> i64 {
        match self {
            Level::Minute => MINUTE_MS,
            Level::Hour => HOUR_MS,
        }
    }

    const fn kind(self) -> u8 {
        match self {
            Level::Minute => ROLLUP,
            Level::Hour => ROLLUP_HOUR,
        }
    }

    /// The start of the period holding `ts` (aligned to the epoch).
    #[inline]
    pub fn floor(self, ts: i64) -> i64 {
        ts.div_euclid(self.ms()) * self.ms()
    }

    /// The first period start at or after `ts`.
    #[inline]
    pub fn ceil(self, ts: i64) -> i64 {
        let f = self.floor(ts);
        if f == ts {
            f
        } else {
            f.saturating_add(self.ms())
        }
    }

    /// The key of a series' rollup of the period starting at `start`.
    #[inline]
    pub fn key(self, id: u64, start: i64) -> [u8; 17] {
        let mut k = point_key(id, start);
        k[0] = self.kind();
        k
    }

    /// `[from, to)` of a series' rollup keys for periods starting in
    /// `[from, to)`.
    pub fn range(self, id: u64, from: i64, to: i64) -> ([u8; 17], [u8; 17]) {
        (self.key(id, from), self.key(id, to))
    }

    /// A rollup key's period start; `None` if it is not such a key.
    #[inline]
    pub fn start_of_key(self, key: &[u8]) -> Option<i64> {
        if key.len() != 17 || key[0] != self.kind() {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[9..]);
        Some(decode_ts(b))
    }
}

/// Earliest accepted timestamp: 0001-01-01T00:00:00Z, in ms.
pub const MIN_TIMESTAMP_MS: i64 = -62_135_596_800_000;
/// Latest accepted timestamp: 9999-12-31T23:59:59.999Z, in ms.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
/// Longest metric name and entity (bytes).
pub const MAX_NAME_BYTES: usize = 200;
/// Most tags on one point.
pub const MAX_TAGS: usize = 16;
/// Longest tag name (bytes).
pub const MAX_TAG_KEY_BYTES: usize = 64;
/// Longest tag value (bytes).
pub const MAX_TAG_VALUE_BYTES: usize = 256;

/// What identifies a series: metric, entity (may be empty) and tags
/// (sorted by name: a `BTreeMap`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels {
    pub metric: String,
    pub entity: String,
    pub tags: BTreeMap<String, String>,
}

/// A name is printable: no control characters (so no NUL, the separator).
fn check_text(what: &str, s: &str, min: usize, max: usize) -> Result<(), String> {
    if s.len() < min || s.len() > max {
        return Err(format!(
            "{what}: length must be {min}..={max} bytes, got {}",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what}: must not contain control characters"));
    }
    Ok(())
}

impl Labels {
    /// Checks every documented bound; the error names the offending label.
    pub fn validate(&self) -> Result<(), String> {
        check_text("metric", &self.metric, 1, MAX_NAME_BYTES)?;
        check_text("entity", &self.entity, 0, MAX_NAME_BYTES)?;
        if self.tags.len() > MAX_TAGS {
            return Err(format!(
                "tags: at most {MAX_TAGS} tags per point, got {}",
                self.tags.len()
            ));
        }
        for (k, v) in &self.tags {
            check_text("tag name", k, 1, MAX_TAG_KEY_BYTES)?;
            check_text(&format!("tag {k:?}"), v, 1, MAX_TAG_VALUE_BYTES)?;
        }
        Ok(())
    }

    /// The canonical encoding (the catalog key without its kind byte).
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.metric.len() + self.entity.len() + 2);
        out.extend_from_slice(self.metric.as_bytes());
        out.push(0);
        out.extend_from_slice(self.entity.as_bytes());
        out.push(0);
        for (k, v) in &self.tags {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    /// Decodes [`Labels::canonical`]; `None` if it is not one.
    pub fn from_canonical(bytes: &[u8]) -> Option<Labels> {
        let body = bytes.strip_suffix(&[0])?;
        let mut parts = body.split(|b| *b == 0);
        let text = |p: &[u8]| String::from_utf8(p.to_vec()).ok();
        let metric = text(parts.next()?)?;
        let entity = text(parts.next()?)?;
        let mut tags = BTreeMap::new();
        while let Some(k) = parts.next() {
            tags.insert(text(k)?, text(parts.next()?)?);
        }
        Some(Labels {
            metric,
            entity,
            tags,
        })
    }

    /// The series id: the first 8 bytes of SHA-256 of the canonical form.
    pub fn series_id(&self) -> u64 {
        series_id_of(&self.canonical())
    }

    /// Whether this series matches a query's `entity` and `tags` (every
    /// given tag must be present with the given value).
    pub fn matches(&self, entity: Option<&str>, tags: &BTreeMap<String, String>) -> bool {
        entity.is_none_or(|e| e == self.entity)
            && tags.iter().all(|(k, v)| self.tags.get(k) == Some(v))
    }
}

/// The series id of a canonical label encoding.
pub fn series_id_of(canonical: &[u8]) -> u64 {
    let d = Sha256::digest(canonical);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The catalog key of a series.
pub fn catalog_key(canonical: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(canonical.len() + 1);
    k.push(CATALOG);
    k.extend_from_slice(canonical);
    k
}

/// `[from, to)` of the catalog keys of `metric`, narrowed to `entity`
/// when given.
pub fn catalog_range(metric: &str, entity: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let mut from = vec![CATALOG];
    from.extend_from_slice(metric.as_bytes());
    from.push(0);
    if let Some(e) = entity {
        from.extend_from_slice(e.as_bytes());
        from.push(0);
    }
    let mut to = from.clone();
    // The separator 0 becomes 1: just past every key with this prefix.
    if let Some(last) = to.last_mut() {
        *last = 1;
    }
    (from, to)
}

/// `[from, to)` of every catalog key.
pub fn whole_catalog() -> (Vec<u8>, Vec<u8>) {
    (vec![CATALOG], vec![CATALOG + 1])
}

/// The reverse entry of a series.
pub fn series_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = SERIES;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// A timestamp as 8 bytes whose byte order is its numeric order.
#[inline]
pub fn encode_ts(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`encode_ts`].
#[inline]
pub fn decode_ts(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// The key of one point.
#[inline]
pub fn point_key(id: u64, ts: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = POINT;
    k[1..9].copy_from_slice(&id.to_be_bytes());
    k[9..].copy_from_slice(&encode_ts(ts));
    k
}

/// `[from, to)` of a series' point keys for timestamps in `[from_ms, to_ms)`
/// (`to_ms = i64::MAX` reaches the end of the series).
pub fn point_range(id: u64, from_ms: i64, to_ms: i64) -> ([u8; 17], Vec<u8>) {
    let from = point_key(id, from_ms);
    let to = if to_ms == i64::MAX {
        // Just past the series' last possible key.
        let mut t = point_key(id, -1).to_vec();
        t[9..].copy_from_slice(&[0xff; 8]);
        t.push(0);
        t
    } else {
        point_key(id, to_ms).to_vec()
    };
    (from, to)
}

/// The start of the minute holding `ts` (minutes are aligned to the epoch).
#[inline]
pub fn minute_of(ts: i64) -> i64 {
    Level::Minute.floor(ts)
}

/// The key of a series' rollup of the minute starting at `minute`.
#[inline]
pub fn rollup_key(id: u64, minute: i64) -> [u8; 17] {
    Level::Minute.key(id, minute)
}

/// A point key's timestamp; `None` if the key is not a point key.
#[inline]
pub fn point_ts(key: &[u8]) -> Option<i64> {
    if key.len() != 17 || key[0] != POINT {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[9..]);
    Some(decode_ts(b))
}

/// A stored value.
#[inline]
pub fn decode_value(v: &[u8]) -> Option<f64> {
    Some(f64::from_bits(u64::from_be_bytes(v.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(metric: &str, entity: &str, tags: &[(&str, &str)]) -> Labels {
        Labels {
            metric: metric.into(),
            entity: entity.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn canonical_round_trips_and_ranges_cover_exactly_a_metric() {
        let l = labels("cpu", "host1", &[("dc", "eu"), ("az", "b")]);
        assert_eq!(Labels::from_canonical(&l.canonical()), Some(l.clone()));
        let k = catalog_key(&l.canonical());
        let (from, to) = catalog_range("cpu", None);
        assert!(k >= from && k < to);
        let (from, to) = catalog_range("cpu", Some("host1"));
        assert!(k >= from && k < to);
        let other = catalog_key(&labels("cpu2", "host1", &[]).canonical());
        let (from, to) = catalog_range("cpu", None);
        assert!(!(other >= from && other < to), "cpu2 is not cpu");
        let (from, to) = catalog_range("cpu", Some("host"));
        assert!(!(k >= from && k < to), "host is not host1");
    }

    #[test]
    fn bounds_are_enforced_and_named() {
        assert!(labels("", "e", &[])
            .validate()
            .unwrap_err()
            .contains("metric"));
        assert!(labels("m\0x", "e", &[])
            .validate()
            .unwrap_err()
            .contains("control"));
        let many: Vec<(String, String)> = (0..17).map(|i| (format!("t{i}"), "v".into())).collect();
        let l = Labels {
            metric: "m".into(),
            entity: String::new(),
            tags: many.into_iter().collect(),
        };
        assert!(l.validate().unwrap_err().contains("at most 16"));
        let long = "v".repeat(MAX_TAG_VALUE_BYTES + 1);
        assert!(labels("m", "", &[("k", &long)])
            .validate()
            .unwrap_err()
            .contains("tag \"k\""));
        assert!(labels("m", "", &[("k", "v")]).validate().is_ok());
    }

    proptest! {
        #[test]
        fn timestamp_encoding_preserves_order(a in any::<i64>(), b in any::<i64>()) {
            prop_assert_eq!(decode_ts(encode_ts(a)), a);
            prop_assert_eq!(a.cmp(&b), encode_ts(a).cmp(&encode_ts(b)));
            prop_assert_eq!(a.cmp(&b), point_key(7, a).cmp(&point_key(7, b)));
        }

        #[test]
        fn a_series_range_holds_exactly_its_timestamps(
            id in any::<u64>(), other in any::<u64>(), ts in any::<i64>(),
            from in any::<i64>(), to in any::<i64>(),
        ) {
            let (lo, hi) = point_range(id, from, to);
            let k = point_key(id, ts);
            let inside = k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice();
            let expect = ts >= from && (ts < to || to == i64::MAX);
            prop_assert_eq!(inside, expect);
            if other != id {
                let k = point_key(other, ts);
                prop_assert!(!(k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice()));
            }
        }

        #[test]
        fn labels_round_trip(metric in "[a-z.]{1,8}", entity in "[a-z0-9]{0,5}",
                             tags in proptest::collection::btree_map("[a-z]{1,4}", "[a-z0-9]{1,4}", 0..4)) {
            let l = Labels { metric, entity, tags };
            prop_assert_eq!(Labels::from_canonical(&l.canonical()), Some(l));
        }
    }
}
