//! Verification: is a database intact? Written against
//! [`ReadView`], so it checks the live database (through a snapshot that
//! verifies block checksums, `Storage::verifying_view`), a backup opened
//! read-only, or an in-memory keyspace in a unit test alike.
//!
//! One pass over every column family reads every key, so every data block
//! of every SST is read and its checksum checked (a flipped byte in an SST
//! fails the read of its block); on the way, THEMIS's invariants:
//!
//! * `meta`: the format version and every index definition decode;
//! * `indexes`: every entry decodes and points at an entity that carries
//!   the entry's values (no stale entry). Entries of an index that has no
//!   definition (a dropped index whose entries are still being deleted)
//!   are counted, not reported as problems;
//! * `entities`: every key is `table:pk`, every value a JSON object, and
//!   every entity has its entry in every ready index of its table;
//! * `changefeed`: keys are 8-byte sequences, each record decodes and names
//!   its own sequence, nothing lies below the pruned mark. Missing
//!   sequences between the first and the latest are counted as gaps (with
//!   the first ranges), not errors: a write that failed after taking its
//!   sequence, a start-up after a crash (which skips the rest of the
//!   reserved block) and writes in flight when a backup was cut all leave
//!   holes by design (`changefeed/mod.rs`);
//! * `vectors`, `timeseries`: keys are counted and their blocks checked;
//!   their record formats are checked by their features once they store
//!   data.
//!
//! Bounded: the report keeps the first [`MAX_PROBLEMS`] problems and
//! [`MAX_GAP_RANGES`] gap ranges (counts are complete); reads are paced to
//! an I/O rate; the pass stops (reporting `complete: false`) at a deadline
//! or when cancelled.

use super::Pace;
use crate::changefeed::record::Event;
use crate::index::{IndexDef, IndexState};
use crate::storage::keyspace::meta;
use crate::storage::{Family, ReadView, StorageError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Problems listed in a report (all are counted).
pub const MAX_PROBLEMS: usize = 20;
/// Change-feed gap ranges listed in a report (all are counted).
pub const MAX_GAP_RANGES: usize = 16;
/// Above every key of every family (entity keys are UTF-8, index entries
/// start with an id, events with a sequence, meta keys are ASCII).
const END: &[u8] = &[0xFF; 64];
/// Keys between two checks of the deadline and cancellation.
const CHECK_EVERY: u64 = 256;

/// When to stop.
pub struct Limits<'a> {
    pub deadline: Instant,
    pub io_limit_mb_per_s: u32,
    pub cancel: &'a AtomicBool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct FamilyCount {
    pub keys: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexCheck {
    pub id: u32,
    pub table: String,
    pub columns: Vec<String>,
    pub state: IndexState,
    pub entries: u64,
    /// Entries whose entity is gone or no longer has the entry's values.
    pub stale_entries: u64,
    /// Entities without their entry (checked for ready indexes only).
    pub missing_entries: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct FeedCheck {
    /// The pruned mark: the oldest sequence that may exist.
    pub first_sequence: u64,
    pub first_stored: Option<u64>,
    pub latest_stored: Option<u64>,
    pub events: u64,
    /// Sequences missing between the first and the latest stored.
    pub gaps: u64,
    /// The first missing ranges, inclusive.
    pub gap_ranges: Vec<[u64; 2]>,
}

/// What a verification found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// No problem found and every key examined.
    pub ok: bool,
    pub complete: bool,
    /// Why the pass stopped early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub duration_ms: u64,
    pub format_version: u32,
    pub families: BTreeMap<&'static str, FamilyCount>,
    pub entities: u64,
    pub indexes: Vec<IndexCheck>,
    /// Entries of indexes without a definition (a drop's pending cleanup).
    pub orphan_index_entries: u64,
    pub changefeed: FeedCheck,
    pub problem_count: u64,
    pub problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }
}

struct Pass<'a> {
    report: Report,
    limits: Limits<'a>,
    pace: Pace,
    seen: u64,
}

impl Pass<'_> {
    /// Counts one key; false when the pass must stop.
    fn tick(&mut self, family: Family, key: &[u8], value: &[u8]) -> bool {
        let c = self.report.families.entry(family.name()).or_default();
        c.keys += 1;
        c.bytes += (key.len() + value.len()) as u64;
        self.pace.read((key.len() + value.len()) as u64);
        self.seen += 1;
        if self.seen.is_multiple_of(CHECK_EVERY) && self.report.stopped.is_none() {
            if self.limits.cancel.load(Ordering::Acquire) {
                self.report.stopped = Some("cancelled".into());
            } else if Instant::now() >= self.limits.deadline {
                self.report.stopped = Some("time limit reached".into());
            }
        }
        self.report.stopped.is_none()
    }

    fn scan_failed(&mut self, family: Family, r: Result<(), StorageError>) {
        if let Err(e) = r {
            self.report
                .problem(format!("{}: reading failed: {e}", family.name()));
        }
    }

    fn running(&self) -> bool {
        self.report.stopped.is_none()
    }
}

fn parse_doc<'b>(scratch: &'b mut Vec<u8>, doc: &[u8]) -> Option<simd_json::BorrowedValue<'b>> {
    scratch.clear();
    scratch.extend_from_slice(doc);
    simd_json::to_borrowed_value(scratch).ok()
}

/// Verifies everything `view` holds.
pub fn run(view: &impl ReadView, limits: Limits<'_>) -> Report {
    let started = Instant::now();
    let mut pass = Pass {
        pace: Pace::mb_per_s(limits.io_limit_mb_per_s),
        limits,
        report: Report::default(),
        seen: 0,
    };
    for f in Family::ALL {
        pass.report
            .families
            .insert(f.name(), FamilyCount::default());
    }
    let mut defs = check_meta(view, &mut pass);
    if pass.running() {
        check_index_entries(view, &mut pass, &mut defs);
    }
    if pass.running() {
        check_entities(view, &mut pass, &mut defs);
    }
    if pass.running() {
        check_feed(view, &mut pass);
    }
    for f in [Family::Vectors, Family::Timeseries] {
        if pass.running() {
            let r = view.scan(f, b"", END, false, |k, v| pass.tick(f, k, v));
            pass.scan_failed(f, r);
        }
    }
    let mut report = pass.report;
    report.indexes = defs.into_values().map(|(_, c)| c).collect();
    report.complete = report.stopped.is_none();
    report.ok = report.complete && report.problem_count == 0;
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

type Defs = BTreeMap<u32, (IndexDef, IndexCheck)>;

fn check_meta(view: &impl ReadView, pass: &mut Pass<'_>) -> Defs {
    let mut defs = Defs::new();
    let mut version = None;
    let r = view.scan(Family::Meta, b"", END, false, |k, v| {
        if k == meta::FORMAT_VERSION {
            match <[u8; 4]>::try_from(v) {
                Ok(b) => version = Some(u32::from_be_bytes(b)),
                Err(_) => pass
                    .report
                    .problem(format!("meta: format version record of {} bytes", v.len())),
            }
        } else if k.starts_with(meta::INDEX_DEF_PREFIX) {
            match serde_json::from_slice::<IndexDef>(v) {
                Ok(raw) => {
                    let mut d = IndexDef::new(raw.id, &raw.table, raw.columns.clone(), raw.unique);
                    d.state = raw.state;
                    let check = IndexCheck {
                        id: d.id,
                        table: d.table.clone(),
                        columns: d.columns.clone(),
                        state: d.state,
                        entries: 0,
                        stale_entries: 0,
                        missing_entries: 0,
                    };
                    defs.insert(d.id, (d, check));
                }
                Err(e) => pass.report.problem(format!(
                    "meta: index definition {} does not decode: {e}",
                    String::from_utf8_lossy(k)
                )),
            }
        }
        pass.tick(Family::Meta, k, v)
    });
    pass.scan_failed(Family::Meta, r);
    pass.report.format_version = version.unwrap_or(0);
    defs
}

fn check_index_entries(view: &impl ReadView, pass: &mut Pass<'_>, defs: &mut Defs) {
    let mut scratch = Vec::new();
    let mut lookup_err = None;
    let r = view.scan(Family::Indexes, b"", END, false, |entry, v| {
        let Some(id) = entry.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])) else {
            pass.report.problem(format!("indexes: entry {entry:02x?} is shorter than an index id"));
            return pass.tick(Family::Indexes, entry, v);
        };
        let Some((def, check)) = defs.get_mut(&id) else {
            pass.report.orphan_index_entries += 1;
            return pass.tick(Family::Indexes, entry, v);
        };
        check.entries += 1;
        match def.split_entry(entry) {
            None => pass.report.problem(format!(
                "index {id}: entry {:?} does not decode",
                String::from_utf8_lossy(entry)
            )),
            Some((_, key)) => {
                let fresh = view.get_with(Family::Entities, key.as_bytes(), |doc| {
                    doc.and_then(|d| parse_doc(&mut scratch, d))
                        .is_some_and(|doc| def.entry(&doc, key) == entry)
                });
                match fresh {
                    Ok(true) => {}
                    Ok(false) => {
                        check.stale_entries += 1;
                        pass.report.problem(format!(
                            "index {id} ({}): entry for {key:?} does not match the entity (missing or other values)",
                            def.table
                        ));
                    }
                    Err(e) => {
                        lookup_err = Some(e);
                        return false;
                    }
                }
            }
        }
        pass.tick(Family::Indexes, entry, v)
    });
    pass.scan_failed(Family::Indexes, r);
    if let Some(e) = lookup_err {
        pass.scan_failed(Family::Entities, Err(e));
    }
}

fn check_entities(view: &impl ReadView, pass: &mut Pass<'_>, defs: &mut Defs) {
    let mut by_table: HashMap<String, Vec<u32>> = HashMap::new();
    for (id, (d, _)) in defs.iter() {
        if d.state == IndexState::Ready {
            by_table.entry(d.table.clone()).or_default().push(*id);
        }
    }
    let mut scratch = Vec::new();
    let mut lookup_err = None;
    let r = view.scan(Family::Entities, b"", END, false, |k, v| {
        pass.report.entities += 1;
        let key = match std::str::from_utf8(k)
            .ok()
            .filter(|k| crate::entity::key::parse_key(k).is_ok())
        {
            Some(key) => key,
            None => {
                pass.report.problem(format!(
                    "entities: key {:?} is not a valid table:pk",
                    String::from_utf8_lossy(k)
                ));
                return pass.tick(Family::Entities, k, v);
            }
        };
        let doc = parse_doc(&mut scratch, v);
        if !doc
            .as_ref()
            .is_some_and(|d| matches!(d, simd_json::BorrowedValue::Object(_)))
        {
            pass.report
                .problem(format!("entities: {key:?} is not a JSON object"));
            return pass.tick(Family::Entities, k, v);
        }
        if let (Some(doc), Some(ids)) = (doc, by_table.get(crate::entity::table_of(key))) {
            for id in ids {
                let Some((def, check)) = defs.get_mut(id) else {
                    continue;
                };
                let entry = def.entry(&doc, key);
                match view.get_with(Family::Indexes, &entry, |e| e.is_some()) {
                    Ok(true) => {}
                    Ok(false) => {
                        check.missing_entries += 1;
                        pass.report.problem(format!(
                            "index {id} ({}): entity {key:?} has no entry",
                            def.table
                        ));
                    }
                    Err(e) => {
                        lookup_err = Some(e);
                        return false;
                    }
                }
            }
        }
        pass.tick(Family::Entities, k, v)
    });
    pass.scan_failed(Family::Entities, r);
    if let Some(e) = lookup_err {
        pass.scan_failed(Family::Indexes, Err(e));
    }
}

fn check_feed(view: &impl ReadView, pass: &mut Pass<'_>) {
    let pruned = view
        .get_with(Family::Meta, meta::FEED_FIRST_SEQUENCE, |v| {
            v.and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
        })
        .ok()
        .flatten()
        .unwrap_or(0);
    let mut feed = FeedCheck {
        first_sequence: pruned.max(1),
        ..FeedCheck::default()
    };
    let r = view.scan(Family::Changefeed, b"", END, false, |k, v| {
        let Ok(seq) = <[u8; 8]>::try_from(k).map(u64::from_be_bytes) else {
            pass.report.problem(format!(
                "changefeed: key of {} bytes is not a sequence",
                k.len()
            ));
            return pass.tick(Family::Changefeed, k, v);
        };
        if seq < pruned {
            pass.report.problem(format!(
                "changefeed: event {seq} lies below the pruned mark {pruned}"
            ));
        }
        if let Some(prev) = feed.latest_stored {
            if seq > prev + 1 {
                feed.gaps += seq - prev - 1;
                if feed.gap_ranges.len() < MAX_GAP_RANGES {
                    feed.gap_ranges.push([prev + 1, seq - 1]);
                }
            }
        }
        feed.first_stored.get_or_insert(seq);
        feed.latest_stored = Some(seq);
        feed.events += 1;
        match Event::from_record(seq, v) {
            None => pass
                .report
                .problem(format!("changefeed: event {seq} does not decode")),
            Some(e) => {
                let head = format!("{{\"sequence\":{seq},");
                if !e.json().starts_with(head.as_bytes()) {
                    pass.report.problem(format!(
                        "changefeed: event stored under {seq} names another sequence"
                    ));
                }
            }
        }
        pass.tick(Family::Changefeed, k, v)
    });
    pass.scan_failed(Family::Changefeed, r);
    pass.report.changefeed = feed;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changefeed::record::{encode, ChangeKind};
    use crate::changefeed::store::seq_key;
    use crate::storage::read::MemView;

    fn limits(cancel: &AtomicBool) -> Limits<'_> {
        Limits {
            deadline: Instant::now() + std::time::Duration::from_secs(60),
            io_limit_mb_per_s: 0,
            cancel,
        }
    }

    fn consistent() -> (MemView, IndexDef) {
        let mut m = MemView::default();
        m.put(Family::Meta, meta::FORMAT_VERSION, &1u32.to_be_bytes());
        let mut def = IndexDef::new(7, "u", vec!["age".into()], false);
        def.state = IndexState::Ready;
        m.put(
            Family::Meta,
            &[meta::INDEX_DEF_PREFIX, &7u32.to_be_bytes()].concat(),
            &serde_json::to_vec(&def).unwrap(),
        );
        let mut rec = Vec::new();
        for (i, (key, doc)) in [("u:1", r#"{"age":30}"#), ("u:2", r#"{"age":40}"#)]
            .into_iter()
            .enumerate()
        {
            m.put(Family::Entities, key.as_bytes(), doc.as_bytes());
            let mut s = doc.as_bytes().to_vec();
            let v = simd_json::to_borrowed_value(&mut s).unwrap();
            m.put(Family::Indexes, &def.entry(&v, key), b"");
            let seq = [1, 4][i];
            encode(&mut rec, seq, ChangeKind::Put, key, Some(doc.as_bytes()), 5);
            m.put(Family::Changefeed, &seq_key(seq), &rec);
        }
        (m, def)
    }

    #[test]
    fn a_consistent_keyspace_verifies_and_gaps_are_counted_not_errors() {
        let (m, _) = consistent();
        let cancel = AtomicBool::new(false);
        let r = run(&m, limits(&cancel));
        assert!(r.ok, "{r:?}");
        assert_eq!(r.format_version, 1);
        assert_eq!(r.entities, 2);
        assert_eq!(r.indexes[0].entries, 2);
        assert_eq!(r.changefeed.events, 2);
        assert_eq!(r.changefeed.gaps, 2);
        assert_eq!(r.changefeed.gap_ranges, vec![[2, 3]]);
        assert_eq!(r.families["entities"].keys, 2);
    }

    #[test]
    fn stale_missing_and_undecodable_records_are_problems() {
        let (mut m, def) = consistent();
        // u:1 changed without its index entries: one stale, one missing.
        m.put(Family::Entities, b"u:1", br#"{"age":31}"#);
        m.put(Family::Entities, b"bad", b"{}");
        m.put(Family::Entities, b"u:3", b"[1]");
        m.put(Family::Changefeed, &seq_key(9), b"garbage");
        let mut rec = Vec::new();
        encode(&mut rec, 11, ChangeKind::Delete, "u:9", None, 5);
        m.put(Family::Changefeed, &seq_key(12), &rec);
        m.put(Family::Indexes, &99u32.to_be_bytes(), b"");
        let cancel = AtomicBool::new(false);
        let r = run(&m, limits(&cancel));
        assert!(!r.ok);
        let i = &r.indexes[0];
        assert_eq!((i.id, i.stale_entries, i.missing_entries), (def.id, 1, 1));
        assert_eq!(r.orphan_index_entries, 1);
        assert_eq!(r.problem_count, 6, "{:#?}", r.problems);
        let all = r.problems.join("\n");
        for needle in [
            "does not match",
            "has no entry",
            "not a valid table:pk",
            "not a JSON object",
            "event 9 does not decode",
            "names another sequence",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
    }

    #[test]
    fn a_cancelled_pass_is_incomplete() {
        let mut m = MemView::default();
        for i in 0..1000u32 {
            m.put(Family::Entities, format!("t:{i}").as_bytes(), b"{}");
        }
        let cancel = AtomicBool::new(true);
        let r = run(&m, limits(&cancel));
        assert!(!r.complete && !r.ok);
        assert_eq!(r.stopped.as_deref(), Some("cancelled"));
        assert!(r.entities < 1000);
    }
}
