//! Planning and executing a [`Query`] across cores.

use super::parse::{encode_cursor, Position, Query, Return};
use super::plan::{self, read_entries, COUNT_CAP, PROBE};
use super::Filter;
use crate::entity::key::table_range;
use crate::entity::write_json_str;
use crate::error::ApiError;
use crate::index::IndexDef;
use crate::mesh::{Rpc, Served};
use crate::node::{Core, Node};
use crate::obs::counters::bump;
use crate::storage::Family;
use serde_json::json;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// One matching row.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub value: Vec<u8>,
    pub sort: Vec<u8>,
}

impl Row {
    fn position(&self) -> Position {
        Position {
            sort: self.sort.clone(),
            key: self.key.clone(),
        }
    }
}

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
}

/// A core's answer.
#[derive(Debug, Default)]
pub struct ShardRows {
    pub rows: Vec<Row>,
    pub count: u64,
    pub scanned: u64,
}

/// Fetch these keys (owned by the callee) and keep the matching ones.
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
    Ok(glommio::executor()
        .spawn_blocking(move || scan_share(&node, &task, me, n))
        .await?)
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
                    value: v.to_vec(),
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

/// Scans the table's keys owned by core `me` (on a blocking thread).
fn scan_share(
    shared: &Node,
    t: &ScanTask,
    me: usize,
    shards: usize,
) -> Result<ShardRows, crate::storage::StorageError> {
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
    shared
        .storage
        .scan(Family::Entities, &from, &to, false, |k, v| {
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
            out.rows.push(Row {
                key: pos.key,
                value: v.to_vec(),
                sort: pos.sort,
            });
            if key_order && !t.desc && out.rows.len() >= t.limit {
                return false; // rows arrive in key order: enough
            }
            if out.rows.len() >= 2 * t.limit.max(64) {
                keep_first(&mut out.rows, t.limit, t.desc);
            }
            true
        })?;
    if !t.count_only {
        keep_first(&mut out.rows, t.limit, t.desc);
    }
    Ok(out)
}

/// Tables smaller than this (in SST bytes) are split by ownership.
const SPLIT_MIN_BYTES: u64 = 8 << 20;

/// Splits the table's key range into `n` ranges holding about equal bytes
/// (RocksDB's size estimates of the SST files, found by bisection over the
/// 8 key bytes after `table:`). `None` when the table is small or mostly
/// still in memtables: then every core scans the table and keeps the keys
/// it owns.
fn split_table(shared: &Node, table: &str, n: usize) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let (from, to) = table_range(table);
    let total = shared.storage.approximate_entity_bytes(&from, &to);
    if total < SPLIT_MIN_BYTES {
        return None;
    }
    let key_at = |x: u64| {
        let mut k = from.clone();
        k.extend_from_slice(&x.to_be_bytes());
        k
    };
    let mut bounds = vec![from.clone()];
    for i in 1..n {
        let target = total / n as u64 * i as u64;
        let (mut lo, mut hi) = (0u64, u64::MAX);
        for _ in 0..64 {
            if hi - lo <= 1 {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            if shared.storage.approximate_entity_bytes(&from, &key_at(mid)) < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let b = key_at(hi);
        if b <= *bounds.last()? {
            return None;
        }
        bounds.push(b);
    }
    bounds.push(to);
    Some(
        bounds
            .windows(2)
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect(),
    )
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

/// Executes `q` and writes the answer.
pub async fn execute(core: &Core, q: Query) -> Result<Vec<u8>, ApiError> {
    let rt = core.settings();
    let (threshold, batch) = (rt.parallel_threshold, rt.batch_size.max(1));
    let catalog = core.index().catalog();
    let shared = core.node().clone();
    let desc = q.order.as_ref().is_some_and(|o| o.desc);
    let count_only = q.ret == Return::Count;
    let want = if count_only { usize::MAX } else { q.limit + 1 };

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
            let (access, count) = glommio::executor()
                .spawn_blocking(move || plan::smallest(&s2.storage, large, COUNT_CAP))
                .await?;
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
                        let e = glommio::executor()
                            .spawn_blocking(move || read_entries(&s2.storage, &d, &f, &t, r, cap))
                            .await?;
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
                        if !r.position().after(c, desc) {
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
            }
        }
        None => {
            bump(&counters.query_full_scans, 1);
            info.mode = "full_scan_fallback";
            let shards = core.cores();
            let s2 = shared.clone();
            let table = q.table.clone();
            let ranges = if shards > 1 {
                glommio::executor()
                    .spawn_blocking(move || split_table(&s2, &table, shards))
                    .await
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
    let more = !count_only && rows.len() > q.limit;
    rows.truncate(q.limit);

    // The answer is written directly: stored entities are copied as they
    // are, never parsed and re-encoded.
    let mut out = Vec::with_capacity(
        64 + rows
            .iter()
            .map(|r| r.key.len() + r.value.len() + 24)
            .sum::<usize>(),
    );
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"table\":");
    write_json_str(&mut out, &q.table);
    out.extend_from_slice(b",\"count\":");
    let count = if count_only { total } else { rows.len() as u64 };
    out.extend_from_slice(num.format(count).as_bytes());
    match q.ret {
        Return::Count => {}
        Return::Keys => {
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
            out.extend_from_slice(b",\"entities\":[");
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                crate::entity::render_get(&mut out, &r.key, &r.value);
            }
            out.push(b']');
        }
    }
    if more {
        if let Some(last) = rows.last() {
            out.extend_from_slice(b",\"next_cursor\":");
            write_json_str(&mut out, &encode_cursor(&last.position(), q.fingerprint));
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
