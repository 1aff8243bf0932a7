//! How one change event is stored and served.
//!
//! In the `changefeed` column family the RocksDB key is the sequence as
//! 8 bytes big-endian (so key order is sequence order; see `Storage`), and
//! the value is:
//!
//! ```text
//! [0]           format version (1)
//! [1..9]        timestamp_ms, u64 little-endian
//! [9..11]       entity key length, u16 little-endian (keys are <= 1024 bytes)
//! [11..11+len]  entity key (UTF-8, `table:pk`)
//! [11+len..]    the event exactly as served: one compact JSON object
//! ```
//!
//! The header lets readers filter by key or table and prune by age without
//! parsing JSON; the JSON is rendered once, on the writing core, and copied
//! verbatim into every long-poll answer and SSE frame.

use crate::entity::write_json_str;

const VERSION: u8 = 1;
const HEADER: usize = 11;

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// Writes the stored record of one event into `out` (cleared first).
/// `value` is the entity's JSON object for a PUT, `None` for a DELETE.
pub fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    kind: ChangeKind,
    key: &str,
    value: Option<&[u8]>,
    timestamp_ms: u64,
) {
    out.clear();
    out.push(VERSION);
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    let klen = u16::try_from(key.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&klen.to_le_bytes());
    out.extend_from_slice(&key.as_bytes()[..usize::from(klen)]);
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"sequence\":");
    out.extend_from_slice(num.format(seq).as_bytes());
    out.extend_from_slice(match kind {
        ChangeKind::Put => b",\"type\":\"PUT\",\"key\":",
        ChangeKind::Delete => b",\"type\":\"DELETE\",\"key\":",
    });
    write_json_str(out, key);
    out.extend_from_slice(b",\"value\":");
    match value {
        Some(v) => out.extend_from_slice(v),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"timestamp_ms\":");
    out.extend_from_slice(num.format(timestamp_ms).as_bytes());
    let (table, pk) = key.split_once(':').unwrap_or((key, ""));
    out.extend_from_slice(b",\"metadata\":{\"table\":");
    write_json_str(out, table);
    out.extend_from_slice(b",\"pk\":");
    write_json_str(out, pk);
    out.extend_from_slice(b"}}");
}

/// One stored event, owned.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    record: Box<[u8]>,
    key_end: usize,
}

impl Event {
    /// Wraps a stored record; None when it is not in a known format.
    pub fn from_record(seq: u64, record: &[u8]) -> Option<Event> {
        if record.len() < HEADER || record[0] != VERSION {
            return None;
        }
        let klen = usize::from(u16::from_le_bytes([record[9], record[10]]));
        let key_end = HEADER + klen;
        if record.len() < key_end || std::str::from_utf8(&record[HEADER..key_end]).is_err() {
            return None;
        }
        Some(Event {
            seq,
            record: record.into(),
            key_end,
        })
    }

    pub fn timestamp_ms(&self) -> u64 {
        timestamp_of(&self.record).unwrap_or(0)
    }

    pub fn key(&self) -> &str {
        std::str::from_utf8(&self.record[HEADER..self.key_end]).unwrap_or("")
    }

    pub fn table(&self) -> &str {
        let k = self.key();
        k.split_once(':').map_or(k, |(t, _)| t)
    }

    /// The event JSON, as served.
    pub fn json(&self) -> &[u8] {
        &self.record[self.key_end..]
    }

    /// Bytes this event occupies in memory (for cache bounds).
    pub fn footprint(&self) -> usize {
        self.record.len() + std::mem::size_of::<Event>()
    }
}

/// The timestamp of a stored record, without copying it.
pub fn timestamp_of(record: &[u8]) -> Option<u64> {
    let ts: [u8; 8] = record.get(1..9)?.try_into().ok()?;
    Some(u64::from_le_bytes(ts))
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub key_prefix: Option<String>,
    pub table: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        if let Some(p) = &self.key_prefix {
            if !e.key().starts_with(p.as_str()) {
                return false;
            }
        }
        if let Some(t) = &self.table {
            if e.table() != t {
                return false;
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.key_prefix.is_none() && self.table.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_json() {
        let mut out = Vec::new();
        encode(
            &mut out,
            42,
            ChangeKind::Put,
            "users:a\"b",
            Some(br#"{"n":1}"#),
            1234,
        );
        let e = Event::from_record(42, &out).unwrap();
        assert_eq!(e.key(), "users:a\"b");
        assert_eq!(e.table(), "users");
        assert_eq!(e.timestamp_ms(), 1234);
        let v: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sequence":42,"type":"PUT","key":"users:a\"b","value":{"n":1},
                "timestamp_ms":1234,"metadata":{"table":"users","pk":"a\"b"}})
        );
        encode(&mut out, 43, ChangeKind::Delete, "t:x:y", None, 5);
        let e = Event::from_record(43, &out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(v["type"], "DELETE");
        assert_eq!(v["value"], serde_json::Value::Null);
        assert_eq!(v["metadata"]["pk"], "x:y");
    }

    #[test]
    fn rejects_foreign_records_and_orders_keys() {
        assert!(Event::from_record(1, b"").is_none());
        assert!(Event::from_record(1, &[9; 20]).is_none());
    }

    #[test]
    fn filters() {
        let mut out = Vec::new();
        encode(&mut out, 1, ChangeKind::Put, "orders:9", Some(b"{}"), 0);
        let e = Event::from_record(1, &out).unwrap();
        let f = |p: Option<&str>, t: Option<&str>| Filter {
            key_prefix: p.map(Into::into),
            table: t.map(Into::into),
        };
        assert!(f(None, None).matches(&e));
        assert!(f(Some("orders:"), None).matches(&e));
        assert!(!f(Some("users"), None).matches(&e));
        assert!(f(None, Some("orders")).matches(&e));
        assert!(!f(None, Some("order")).matches(&e));
    }
}
