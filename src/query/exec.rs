//! Planning and executing a [`Query`] across cores.

use super::parse::{encode_cursor, Position, Query, Return};
use super::plan::{self, read_entries, COUNT_CAP, PROBE};
use super::Filter;
use crate::entity::key::table_range;
use crate::entity::write_json_str;
use crate::error::ApiError;
use crate::index::IndexDef;
use crate::mesh::{Rpc, Served};
use crate::node::blocking::Work;
use crate::node::{Core, Node};
use crate::obs::counters::bump;
use crate::storage::Family;
use serde_json::json;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Most bytes of entities in one `/query` answer: a longer page ends early
/// and `next_cursor` continues it (at least one entity is always returned).
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// Scans check their request's deadline every this many rows.
const DEADLINE_EVERY: u64 = 1024;

/// One matching row: where it sorts, never its document. Documents are read
/// only for the rows of the answer's page ([`PageFetch`]), so a query's
/// memory is bounded by its limit, not by its match set or document sizes.
pub type Row = Position;

#[derive(Debug, Clone)]
pub struct ScanTask {
    pub table: String,
    /// The key range this core scans whole; `None`: scan the table and keep
    /// the keys this core owns.
    pub range: Option<(Vec<u8>, Vec<u8>)>,
    pub filter: Arc<Filter>,
    pub after: Option<Position>,
    pub desc: bool,
    /// Rows wanted (the answer keeps the first `limit` in result order).
    pub limit: usize,
    pub count_only: bool,
    /// When the request gives up: the scan stops there (503).
    pub deadline: Instant,
}

/// A core's answer.
#[derive(Debug, Default)]
pub struct ShardRows {
    pub rows: Vec<Row>,
    pub count: u64,
    pub scanned: u64,
}

/// Fetch these keys (owned by the callee) and keep where the matching ones
/// sort.
pub struct FetchShare {
    pub keys: Vec<String>,
    pub filter: Arc<Filter>,
}

impl Rpc<Core> for FetchShare {
    type Answer = ShardRows;
    fn serve(self, core: &Rc<Core>) -> Served<ShardRows> {
        Served::Now(fetch(core, &self.keys, &self.filter))
    }
}

/// Scan the callee's share of a table (on its blocking pool).
pub struct ScanShare(pub ScanTask);

impl Rpc<Core> for ScanShare {
    type Answer = ShardRows;
    /// A scan may take a while: the peer loop keeps serving meanwhile.
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<ShardRows> {
        let core = core.clone();
        Served::Later(Box::pin(async move { scan_here(&core, self.0).await }))
    }
}

/// Scans this core's share of a table, on the blocking pool.
async fn scan_here(core: &Core, task: ScanTask) -> Result<ShardRows, ApiError> {
    let (node, me, n) = (core.node().clone(), core.id(), core.cores());
    core.blocking(Work::Scan, move || scan_share(&node, &task, me, n))
        .await?
}

/// Read the documents of a page's rows owned by the callee, in the given
/// order, until `max_bytes` are read (at least one). A row whose document
/// is gone or no longer matches the filter (a write since it matched) is
/// `None`. The answer covers a prefix of `keys`: the rows after it were not
/// read.
pub struct PageFetch {
    pub keys: Vec<String>,
    pub filter: Arc<Filter>,
    pub max_bytes: usize,
}

impl Rpc<Core> for PageFetch {
    type Answer = Vec<Option<Vec<u8>>>;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        Served::Now(fetch_page(core, &self.keys, &self.filter, self.max_bytes))
    }
}

fn fetch_page(
    core: &Core,
    keys: &[String],
    filter: &Filter,
    max_bytes: usize,
) -> Result<Vec<Option<Vec<u8>>>, ApiError> {
    let mut scratch = core.query().check_scratch().borrow_mut();
    let storage = &core.node().storage;
    let mut out = Vec::with_capacity(keys.len());
    let mut bytes = 0usize;
    for k in keys {
        if bytes >= max_bytes {
            break;
        }
        let doc = storage.get_with(Family::Entities, k.as_bytes(), |v| {
            v.filter(|v| filter.check(v, &mut scratch).is_some())
                .map(<[u8]>::to_vec)
        })?;
        bytes += doc.as_ref().map_or(0, |d| d.len() + k.len());
        out.push(doc);
    }
    Ok(out)
}

fn fetch(core: &Core, keys: &[String], filter: &Filter) -> Result<ShardRows, ApiError> {
    let mut found: Vec<Option<Row>> = Vec::with_capacity(keys.len());
    found.resize_with(keys.len(), || None);
    let mut scratch = core.query().check_scratch().borrow_mut();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    core.node().storage.with_entities(&refs, |i, v| {
        if let Some(v) = v {
            if let Some(sort) = filter.check(v, &mut scratch) {
                found[i] = Some(Row {
                    key: keys[i].clone(),
                    sort,
                });
            }
        }
    })?;
    let rows: Vec<Row> = found.into_iter().flatten().collect();
    Ok(ShardRows {
        count: rows.len() as u64,
        scanned: keys.len() as u64,
        rows,
    })
}

/// Keeps the first `limit` rows of `rows` in result order.
fn keep_first(rows: &mut Vec<Row>, limit: usize, desc: bool) {
    rows.sort_by(|a, b| {
        let o = (&a.sort, &a.key).cmp(&(&b.sort, &b.key));
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    rows.truncate(limit);
}

/// Scans the table's keys owned by core `me` (on a blocking thread), until
/// the request's deadline.
fn scan_share(
    shared: &Node,
    t: &ScanTask,
    me: usize,
    shards: usize,
) -> Result<ShardRows, ApiError> {
    let (mut from, to) = t.range.clone().unwrap_or_else(|| table_range(&t.table));
    let by_owner = t.range.is_none() && shards > 1;
    let key_order = t.filter.order_path.is_none();
    if let (Some(a), true, false) = (&t.after, key_order, t.desc) {
        // Key order: start right after the cursor's key.
        let mut after = a.key.as_bytes().to_vec();
        after.push(0);
        if after > from {
            from = after;
        }
    }
    if from >= to {
        return Ok(ShardRows::default());
    }
    let mut out = ShardRows::default();
    let mut scratch = super::CheckScratch::default();
    let mut seen = 0u64;
    let mut late = false;
    shared
        .storage
        .scan(Family::Entities, &from, &to, false, |k, v| {
            seen += 1;
            if seen.is_multiple_of(DEADLINE_EVERY) && Instant::now() >= t.deadline {
                late = true;
                return false;
            }
            if by_owner && crate::mesh::owner_of(k, shards) != me {
                return true;
            }
            out.scanned += 1;
            let Some(sort) = t.filter.check(v, &mut scratch) else {
                return true;
            };
            let key = String::from_utf8_lossy(k).into_owned();
            let pos = Position { sort, key };
            if let Some(a) = &t.after {
                if !pos.after(a, t.desc) {
                    return true;
                }
            }
            out.count += 1;
            if t.count_only {
                return true;
            }
            out.rows.push(pos);
            if key_order && !t.desc && out.rows.len() >= t.limit {
                return false; // rows arrive in key order: enough
            }
            if out.rows.len() >= 2 * t.limit.max(64) {
                keep_first(&mut out.rows, t.limit, t.desc);
            }
            true
        })?;
    if late {
        return Err(ApiError::Timeout { ms: 0 });
    }
    if !t.count_only {
        keep_first(&mut out.rows, t.limit, t.desc);
    }
    Ok(out)
}

/// The plan, for `explain`.
#[derive(Debug, Default)]
struct PlanInfo {
    mode: &'static str,
    index: Option<Arc<IndexDef>>,
    estimated: u64,
    actual: u64,
    cursor_anchor: bool,
    /// How a full scan was divided over the cores.
    scan_split: Option<&'static str>,
}

/// Executes `q` and writes the answer. The request's deadline
/// (`server.request_timeout_ms` from now) bounds every step on every core:
/// past it the query stops and answers 503.
pub async fn execute(core: &Core, q: Query) -> Result<Vec<u8>, ApiError> {
    let timeout = core.request_timeout();
    let deadline = Instant::now() + timeout;
    let ms = timeout.as_millis() as u64;
    match run(core, q, deadline).await {
        Err(ApiError::Timeout { .. }) => Err(ApiError::Timeout { ms }),
        other => other,
    }
}

fn check_deadline(deadline: Instant) -> Result<(), ApiError> {
    if Instant::now() >= deadline {
        return Err(ApiError::Timeout { ms: 0 });
    }
    Ok(())
}

async fn run(core: &Core, q: Query, deadline: Instant) -> Result<Vec<u8>, ApiError> {
    let rt = core.settings();
    let (threshold, batch) = (rt.parallel_threshold, rt.batch_size.max(1));
    let catalog = core.index().catalog();
    let shared = core.node().clone();
    let desc = q.order.as_ref().is_some_and(|o| o.desc);
    let count_only = q.ret == Return::Count;
    let want = if count_only { usize::MAX } else { q.limit + 1 };
    // Rows kept before trimming back to `want` (a top-K, not the match set).
    let keep_at = want.saturating_mul(2).max(128);

    // Plan: probe every usable ready index (bounded, inline), keep the
    // smallest range; compare large ones with a capped count.
    let probe = plan::probe(&shared.storage, &catalog, &q)?;
    let best = match probe {
        plan::Probe::Small {
            access,
            count,
            keys,
        } => Some((access, count, Some(keys))),
        plan::Probe::Large(large) => {
            let s2 = shared.clone();
            let (access, count) = core
                .blocking(Work::Scan, move || {
                    plan::smallest(&s2.storage, large, COUNT_CAP)
                })
                .await??;
            Some((access, count, None))
        }
        plan::Probe::NoIndex => None,
    };

    let mut info = PlanInfo::default();
    let mut rows: Vec<Row> = Vec::new();
    let mut total = 0u64;
    let filter = Arc::new(q.filter.clone());
    let counters = core.counters();
    match best {
        Some((mut acc, estimated, probed)) => {
            bump(&counters.query_index_hits, 1);
            info.index = Some(acc.def.clone());
            info.estimated = estimated;
            // A streamable plan starts right after the cursor's entry.
            let mut probed = probed;
            if let (Some(c), true) = (&q.cursor, acc.streamable) {
                let mut anchor = acc.eq_prefix.clone();
                if acc.order_in_index {
                    anchor.extend_from_slice(&c.sort);
                }
                anchor.extend_from_slice(c.key.as_bytes());
                if acc.reverse {
                    if anchor < acc.to {
                        acc.to = anchor;
                    }
                } else {
                    anchor.push(0);
                    if anchor > acc.from {
                        acc.from = anchor;
                    }
                }
                probed = None;
                info.cursor_anchor = true;
                bump(&counters.cursor_anchor_hits, 1);
            }
            let parallel = estimated as usize >= threshold;
            info.mode = if parallel {
                "index_parallel"
            } else {
                "index_optimized"
            };
            let mut pending: Option<Vec<String>> = probed;
            let mut done = false;
            while !done {
                check_deadline(deadline)?;
                let chunk = match pending.take() {
                    Some(keys) => {
                        done = true;
                        keys
                    }
                    None => {
                        let (s2, d, f, t, r) = (
                            shared.clone(),
                            acc.def.clone(),
                            acc.from.clone(),
                            acc.to.clone(),
                            acc.reverse,
                        );
                        let cap = batch.max(PROBE);
                        let e = core
                            .blocking(Work::Scan, move || {
                                read_entries(&s2.storage, &d, &f, &t, r, cap)
                            })
                            .await??;
                        match (e.complete, e.last) {
                            (false, Some(mut last)) => {
                                // Continue after the last entry read.
                                if acc.reverse {
                                    acc.to = last;
                                } else {
                                    last.push(0);
                                    acc.from = last;
                                }
                            }
                            _ => done = true,
                        }
                        e.keys
                    }
                };
                info.actual += chunk.len() as u64;
                bump(&counters.range_scan_steps, chunk.len() as u64);
                let got = fetch_filter(core, chunk, &filter, parallel, batch).await?;
                for r in got {
                    if let Some(c) = &q.cursor {
                        if !r.after(c, desc) {
                            continue;
                        }
                    }
                    total += 1;
                    if !count_only {
                        rows.push(r);
                    }
                }
                if acc.streamable && !count_only && rows.len() >= want {
                    break;
                }
                if rows.len() >= keep_at {
                    keep_first(&mut rows, want, desc);
                }
            }
        }
        None => {
            bump(&counters.query_full_scans, 1);
            info.mode = "full_scan_fallback";
            let shards = core.cores();
            let s2 = shared.clone();
            let table = q.table.clone();
            let ranges = if shards > 1 {
                core.blocking(Work::Scan, move || {
                    let (from, to) = table_range(&table);
                    s2.storage.split_entities(&from, &to, shards)
                })
                .await?
            } else {
                None
            };
            info.scan_split = Some(if ranges.is_some() {
                "key_ranges"
            } else {
                "ownership"
            });
            let task = ScanTask {
                range: None,
                table: q.table.clone(),
                filter: filter.clone(),
                after: q.cursor.clone(),
                desc,
                limit: if count_only { 0 } else { want },
                count_only,
                deadline,
            };
            let mut futures = Vec::new();
            for s in 0..shards {
                let mut part = task.clone();
                part.range = ranges.as_ref().map(|r| r[s].clone());
                futures.push(async move {
                    if s == core.id() {
                        scan_here(core, part).await
                    } else {
                        core.call(s, ScanShare(part)).await
                    }
                });
            }
            for r in futures::future::join_all(futures).await {
                let r = r?;
                info.actual += r.scanned;
                total += r.count;
                rows.extend(r.rows);
            }
        }
    }
    if !count_only {
        keep_first(&mut rows, want, desc);
    }
    let mut more = !count_only && rows.len() > q.limit;
    rows.truncate(q.limit);

    // The answer is written directly: stored entities are copied as they
    // are, never parsed and re-encoded.
    let mut out = Vec::with_capacity(256 + rows.iter().map(|r| r.key.len() + 4).sum::<usize>());
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"table\":");
    write_json_str(&mut out, &q.table);
    // The last row the page covers (the cursor continues after it).
    let mut last: Option<usize> = rows.len().checked_sub(1);
    match q.ret {
        Return::Count => {
            out.extend_from_slice(b",\"count\":");
            out.extend_from_slice(num.format(total).as_bytes());
        }
        Return::Keys => {
            out.extend_from_slice(b",\"count\":");
            out.extend_from_slice(num.format(rows.len()).as_bytes());
            out.extend_from_slice(b",\"keys\":[");
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(&mut out, &r.key);
            }
            out.push(b']');
        }
        Return::Entities => {
            let mut page = Vec::with_capacity(64);
            page.extend_from_slice(b",\"entities\":[");
            let (covered, returned) =
                write_page(core, &rows, &filter, batch, deadline, &mut page).await?;
            page.push(b']');
            if covered < rows.len() {
                more = true;
                last = covered.checked_sub(1);
            }
            out.extend_from_slice(b",\"count\":");
            out.extend_from_slice(num.format(returned).as_bytes());
            out.extend_from_slice(&page);
        }
    }
    if more {
        if let Some(last) = last.and_then(|i| rows.get(i)) {
            out.extend_from_slice(b",\"next_cursor\":");
            write_json_str(&mut out, &encode_cursor(last, q.fingerprint));
        }
    }
    if q.explain {
        let plan = json!({
            "mode": info.mode,
            "index": info.index.as_ref().map(|d| json!({"id": d.id, "table": d.table, "columns": d.columns, "unique": d.unique})),
            "estimated_candidates": info.estimated,
            "actual_candidates": info.actual,
            "cursor_anchor": info.cursor_anchor,
            "scan_split": info.scan_split,
            "shards": core.cores(),
            "parallel_threshold": threshold,
            "batch_size": batch,
        });
        out.extend_from_slice(b",\"plan\":");
        let _ = serde_json::to_writer(&mut out, &plan);
    }
    out.push(b'}');
    Ok(out)
}

/// Writes the documents of `rows` (the page, in order) as entities, read
/// from their owners `batch` rows at a time, until [`MAX_RESPONSE_BYTES`].
/// Returns how many rows the page covers (a prefix of `rows`; the cursor
/// continues after it) and how many entities were written (rows whose
/// document changed since it matched are left out).
async fn write_page(
    core: &Core,
    rows: &[Row],
    filter: &Arc<Filter>,
    batch: usize,
    deadline: Instant,
    out: &mut Vec<u8>,
) -> Result<(usize, usize), ApiError> {
    let shards = core.cores();
    let (mut covered, mut returned) = (0usize, 0usize);
    let start = out.len();
    while covered < rows.len() {
        check_deadline(deadline)?;
        let budget = MAX_RESPONSE_BYTES.saturating_sub(out.len() - start);
        if budget == 0 {
            break;
        }
        let chunk = &rows[covered..rows.len().min(covered + batch)];
        let mut by_owner: Vec<Vec<String>> = vec![Vec::new(); shards];
        for r in chunk {
            by_owner[core.owner_of(r.key.as_bytes())].push(r.key.clone());
        }
        let futures = by_owner.into_iter().enumerate().map(|(owner, keys)| {
            let filter = filter.clone();
            async move {
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                if owner == core.id() {
                    return fetch_page(core, &keys, &filter, budget);
                }
                let call = PageFetch {
                    keys,
                    filter,
                    max_bytes: budget,
                };
                core.call(owner, call).await
            }
        });
        let mut docs: Vec<std::vec::IntoIter<Option<Vec<u8>>>> = Vec::with_capacity(shards);
        for d in futures::future::join_all(futures).await {
            docs.push(d?.into_iter());
        }
        for r in chunk {
            // An owner stops at its byte budget: the page ends at the first
            // row it did not read.
            let Some(doc) = docs[core.owner_of(r.key.as_bytes())].next() else {
                return Ok((covered, returned));
            };
            covered += 1;
            if let Some(doc) = doc {
                if returned > 0 {
                    out.push(b',');
                }
                crate::entity::render_get(out, &r.key, &doc);
                returned += 1;
            }
            if out.len() - start >= MAX_RESPONSE_BYTES {
                return Ok((covered, returned));
            }
        }
    }
    Ok((covered, returned))
}

/// Fetches and filters candidate keys, in their order: here, or grouped by
/// owning core in batches.
async fn fetch_filter(
    core: &Core,
    keys: Vec<String>,
    filter: &Arc<Filter>,
    parallel: bool,
    batch: usize,
) -> Result<Vec<Row>, ApiError> {
    let shards = core.cores();
    if !parallel || shards == 1 {
        return Ok(fetch(core, &keys, filter)?.rows);
    }
    let mut by_owner: Vec<Vec<String>> = vec![Vec::new(); shards];
    for k in &keys {
        by_owner[core.owner_of(k.as_bytes())].push(k.clone());
    }
    let mut futures = Vec::new();
    for (owner, share) in by_owner.into_iter().enumerate() {
        for part in share.chunks(batch) {
            let part = part.to_vec();
            let filter = filter.clone();
            futures.push(async move {
                if owner == core.id() {
                    return Ok::<_, ApiError>(fetch(core, &part, &filter)?.rows);
                }
                let share = FetchShare { keys: part, filter };
                Ok(core.call(owner, share).await?.rows)
            });
        }
    }
    let mut found: HashMap<String, Row> = HashMap::new();
    for r in futures::future::join_all(futures).await {
        for row in r? {
            found.insert(row.key.clone(), row);
        }
    }
    Ok(keys.into_iter().filter_map(|k| found.remove(&k)).collect())
}
