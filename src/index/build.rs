//! Online index builds (create and rebuild), one task per core.
//!
//! How the table is divided: when it is large enough to be split by size
//! (`Storage::split_entities`), each core scans one key range of about
//! equal bytes and hands the keys it finds to their owners
//! ([`BuildKeys`]), so the table is read once in all. Otherwise (a small
//! table, or a build resumed at start-up) every core scans the whole table
//! and keeps the keys it owns. Either way the entries are made by the
//! owner of each entity:
//!
//! 1. It refreshes its catalog copy, so every write it stages from now on
//!    maintains the new index itself, and waits until every write staged
//!    before (with the older catalog) has committed (group commit).
//! 2. On the blocking pool it reads the table in chunks (key and value),
//!    keeps the keys this core owns, and computes their entries.
//! 3. Back on the core, for each entity it checks the stored value is still
//!    the one the entry was computed from (a point read and a compare). If
//!    it is, the entry is written; if not, a write changed the entity after
//!    step 1 and already wrote the right entry. A key with a staged write
//!    not yet committed is skipped too: that write was staged after step 1
//!    and commits the right entry itself (while it is in flight on the
//!    commit thread, storage could change between the check and the
//!    entry's write). Otherwise writes to a key run only on its owner, so
//!    nothing can change between that check and the entry's write.
//!
//! The last core to finish verifies a unique index has no duplicate values
//! (two cores could each have added one) and marks the index ready or
//! failed. Progress is in `GET /index/stats`.

use super::{IndexDef, IndexState};
use crate::error::ApiError;
use crate::mesh::{Rpc, Served};
use crate::node::blocking::Work;
use crate::node::{Core, Node};
use crate::obs::counters::bump;
use crate::storage::{Family, StorageError};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Entities read per chunk (one blocking read, then one batch write).
const CHUNK: usize = 256;

/// Keys read per step of a range scan (then handed to their owners).
const RANGE_CHUNK: usize = 256;

/// A key range of the table, `[from, to)`.
pub type KeyRange = (Vec<u8>, Vec<u8>);

/// A build's progress, shared by the cores building it.
#[derive(Debug)]
pub struct BuildProgress {
    /// How the table was divided: 1 by key range, 0 by ownership.
    key_ranges: std::sync::atomic::AtomicBool,
    pub entities_processed: AtomicU64,
    pub cores_done: AtomicUsize,
    pub started: Instant,
    pub finished_ms: AtomicU64,
}

impl BuildProgress {
    pub fn new() -> BuildProgress {
        BuildProgress {
            key_ranges: Default::default(),
            entities_processed: AtomicU64::new(0),
            cores_done: AtomicUsize::new(0),
            started: Instant::now(),
            finished_ms: AtomicU64::new(0),
        }
    }
}

impl BuildProgress {
    pub fn set_split(&self, key_ranges: bool) {
        self.key_ranges.store(key_ranges, Ordering::Relaxed);
    }

    /// `key_ranges` or `ownership` (for `/index/stats`).
    pub fn split(&self) -> &'static str {
        if self.key_ranges.load(Ordering::Relaxed) {
            "key_ranges"
        } else {
            "ownership"
        }
    }
}

impl Default for BuildProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds in progress or finished since start, by index id.
#[derive(Default)]
pub struct Builds {
    map: Mutex<std::collections::HashMap<u32, Arc<BuildProgress>>>,
}

impl Builds {
    pub fn get_or_start(&self, id: u32) -> Arc<BuildProgress> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id).or_default().clone()
    }

    pub fn get(&self, id: u32) -> Option<Arc<BuildProgress>> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&id).cloned()
    }
}

/// Sends [`StartBuild`] to every other core. A core that cannot be reached
/// now (a timeout) is retried in the background until it answers or the
/// index is gone, so no core's share is left unbuilt (a start is
/// idempotent, see [`spawn`]).
pub fn start_on_others(core: &Core, id: u32, ranges: Option<Vec<KeyRange>>) {
    for other in (0..core.cores()).filter(|c| *c != core.id()) {
        let Some(me) = core.rc() else { return };
        let range = ranges.as_ref().and_then(|r| r.get(other).cloned());
        glommio::spawn_local(async move {
            let mut pause = std::time::Duration::from_millis(50);
            loop {
                if me.node().index.catalog.current().by_id(id).is_none() {
                    return;
                }
                let start = StartBuild {
                    id,
                    range: range.clone(),
                };
                match me.call(other, start).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(
                            index = id,
                            core = other,
                            "starting an index build failed, retrying: {e}"
                        );
                        glommio::timer::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
        })
        .detach();
    }
}

/// Start this core's share of building index `id` (sent to every core):
/// the key range it scans, or `None` for the keys it owns.
#[derive(Clone)]
pub struct StartBuild {
    pub id: u32,
    pub range: Option<KeyRange>,
}

impl Rpc<Core> for StartBuild {
    type Answer = ();
    fn serve(self, core: &Rc<Core>) -> Served<()> {
        if core.node().faults.take_start_build_refusal() {
            return Served::Now(Err(ApiError::Timeout { ms: 0 }));
        }
        spawn(core, self.id, self.range);
        Served::Now(Ok(()))
    }
}

/// Build the entries of these keys, owned by the callee (sent by the core
/// scanning the range they are in).
pub struct BuildKeys {
    pub id: u32,
    pub keys: Vec<String>,
}

impl Rpc<Core> for BuildKeys {
    type Answer = u64;
    /// It waits for a blocking read: the peer loop keeps serving meanwhile.
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<u64> {
        let core = core.clone();
        Served::Later(Box::pin(async move {
            build_keys(&core, self.id, self.keys).await
        }))
    }
}

/// Spawns this core's share of building index `id` (once per core).
pub fn spawn(core: &Core, id: u32, range: Option<KeyRange>) {
    if !core.index().claim_build(id) {
        return;
    }
    if let Some(me) = core.rc() {
        glommio::spawn_local(run(me, id, range)).detach();
    }
}

/// Resumes the builds a stop interrupted: from the start (entries already
/// written are rewritten). Called on every core at start-up.
pub fn resume(core: &Rc<Core>) {
    for d in core.node().index.catalog.current().indexes.iter() {
        if d.state == IndexState::Building {
            spawn(core, d.id, None);
        }
    }
}

/// Builds this core's share of index `id`: a key range, or the keys it
/// owns.
async fn run(core: Rc<Core>, id: u32, range: Option<KeyRange>) {
    let done = match range {
        Some(range) => run_range(&core, id, range).await,
        None => run_owned(&core, id).await,
    };
    let Some(def) = done else { return };
    let progress = core.node().index.builds.get_or_start(id);
    if progress.cores_done.fetch_add(1, Ordering::AcqRel) + 1 == core.cores() {
        finish(&core, &def, &progress).await;
    }
}

/// Scans `range` for keys and has their owners build their entries; the
/// definition when done, `None` when the index went away or a step failed.
async fn run_range(core: &Rc<Core>, id: u32, range: KeyRange) -> Option<Arc<IndexDef>> {
    let def = core.index().catalog().by_id(id).cloned()?;
    if def.state != IndexState::Building {
        return None;
    }
    let progress = core.node().index.builds.get_or_start(id);
    let (mut from, to) = range;
    loop {
        core.node().index.catalog.current().by_id(id)?;
        let (node, start, end) = (core.node().clone(), from.clone(), to.clone());
        let read = if core.node().faults.fail_build_reads {
            Err(ApiError::Internal("injected fault: fail_build_reads"))
        } else {
            core.blocking_background(Work::Build, move || read_keys(&node, &start, &end))
                .await
                .and_then(|r| r.map_err(ApiError::from))
        };
        let (keys, next) = match read {
            Ok(r) => r,
            Err(e) => {
                let m = format!(
                    "reading the table failed: {e}; the index stays building until rebuilt"
                );
                core.report_failure("index_build", Some(id.to_string()), m);
                return None;
            }
        };
        let mut by_owner: Vec<Vec<String>> = vec![Vec::new(); core.cores()];
        for k in keys {
            by_owner[core.owner_of(k.as_bytes())].push(k);
        }
        let sends = by_owner
            .into_iter()
            .enumerate()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(owner, keys)| hand_to_owner(core, id, owner, keys));
        for sent in futures::future::join_all(sends).await {
            match sent {
                Ok(n) => {
                    progress.entities_processed.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    let m = format!(
                        "building entries failed: {e}; the index stays building until rebuilt"
                    );
                    core.report_failure("index_build", Some(id.to_string()), m);
                    return None;
                }
            }
        }
        match next {
            Some(k) => from = k,
            None => return Some(def),
        }
    }
}

/// Has `owner` build the entries of `keys`, retrying a call that failed on
/// the way (a timeout) until the index goes away; building a key twice
/// writes the same entry.
async fn hand_to_owner(
    core: &Rc<Core>,
    id: u32,
    owner: usize,
    keys: Vec<String>,
) -> Result<u64, ApiError> {
    if owner == core.id() {
        return build_keys(core, id, keys).await;
    }
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let call = BuildKeys {
            id,
            keys: keys.clone(),
        };
        match core.call(owner, call).await {
            Ok(n) => return Ok(n),
            Err(e @ ApiError::Storage(_)) => return Err(e),
            Err(e) => {
                if core.node().index.catalog.current().by_id(id).is_none() {
                    return Ok(0);
                }
                tracing::warn!(
                    index = id,
                    core = owner,
                    "handing keys to their owner failed, retrying: {e}"
                );
                glommio::timer::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// On the owner of `keys`: refreshes the catalog (from here on its writes
/// maintain the index), reads the keys and computes their entries off the
/// reactor, then writes each entry whose entity is unchanged (step 3).
async fn build_keys(core: &Core, id: u32, keys: Vec<String>) -> Result<u64, ApiError> {
    let Some(def) = core.index().catalog().by_id(id).cloned() else {
        return Ok(0);
    };
    crate::entity::write::settled(core).await;
    let node = core.node().clone();
    let items = core
        .blocking_background(Work::Build, move || entries_of(&node, &def, &keys))
        .await??;
    Ok(write_unchanged(core, items)?)
}

/// This core's share by ownership: scans the whole table and keeps the
/// keys it owns. The definition when done.
async fn run_owned(core: &Rc<Core>, id: u32) -> Option<Arc<IndexDef>> {
    let core = core.clone();
    // Step 1: from here on this core's writes maintain the index.
    let catalog = core.index().catalog();
    let def = catalog.by_id(id).cloned()?;
    if def.state != IndexState::Building {
        return None;
    }
    crate::entity::write::settled(&core).await;
    let progress = core.node().index.builds.get_or_start(id);
    let me = core.id();
    let shards = core.cores();
    let (mut from, to) = crate::entity::key::table_range(&def.table);
    let mut processed = 0u64;
    loop {
        // Dropped or rebuilt meanwhile: stop (its entries are being deleted).
        core.node().index.catalog.current().by_id(id)?;
        // Step 2, off the reactor.
        let (shared, d, start) = (core.node().clone(), def.clone(), from.clone());
        let to2 = to.clone();
        let chunk = if core.node().faults.fail_build_reads {
            Err(ApiError::Internal("injected fault: fail_build_reads"))
        } else {
            core.blocking_background(Work::Build, move || {
                read_chunk(&shared, &d, &start, &to2, me, shards)
            })
            .await
            .and_then(|r| r.map_err(ApiError::from))
        };
        let (items, next) = match chunk {
            Ok(c) => c,
            Err(e) => {
                let m = format!("reading the table failed: {e}; the index stays building on this core until rebuilt");
                core.report_failure("index_build", Some(id.to_string()), m);
                return None;
            }
        };
        // Step 3, on the core.
        let written = write_unchanged(&core, items);
        if let Err(e) = &written {
            let m = format!(
                "writing entries failed: {e}; the index stays building on this core until rebuilt"
            );
            core.report_failure("index_build", Some(id.to_string()), m);
            return None;
        }
        let n = written.unwrap_or(0);
        processed += n;
        progress.entities_processed.fetch_add(n, Ordering::Relaxed);
        bump(&core.counters().index_rebuild_entities, n);
        match next {
            Some(k) => from = k,
            None => break,
        }
        glommio::executor().yield_now().await;
    }
    tracing::debug!(index = id, shard = me, processed, "index build: core done");
    Some(def)
}

/// Step 3 on the owner: writes each entry whose entity still holds the
/// value it was computed from (a write since step 1 wrote the right entry
/// itself). Returns how many were written.
fn write_unchanged(
    core: &Core,
    items: Vec<(String, Vec<u8>, Vec<u8>)>,
) -> Result<u64, StorageError> {
    let storage = &core.node().storage;
    let mut batch = storage.batch();
    let mut n = 0u64;
    for (key, value, entry) in items {
        let Some(owned) = core.own(key.as_str()) else {
            continue;
        };
        if crate::entity::write::is_pending(core, &owned) {
            continue;
        }
        let same = storage
            .with_entity(key.as_bytes(), |cur| cur == Some(&value[..]))
            .unwrap_or(false);
        if same {
            batch.put(Family::Indexes, &entry, b"")?;
            n += 1;
        }
    }
    storage.commit(batch)?;
    Ok(n)
}

/// The keys of `[from, to)`, up to [`RANGE_CHUNK`], and where the next
/// step starts.
fn read_keys(
    shared: &Node,
    from: &[u8],
    to: &[u8],
) -> Result<(Vec<String>, Option<Vec<u8>>), StorageError> {
    let mut keys = Vec::new();
    let mut next = None;
    shared
        .storage
        .scan(Family::Entities, from, to, false, |k, _| {
            if keys.len() == RANGE_CHUNK {
                next = Some(k.to_vec());
                return false;
            }
            if let Ok(k) = std::str::from_utf8(k) {
                keys.push(k.to_string());
            }
            true
        })?;
    Ok((keys, next))
}

/// (key, value, entry) of each of `keys` that exists (on a helper thread).
fn entries_of(shared: &Node, def: &IndexDef, keys: &[String]) -> Result<Vec<Item>, StorageError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut scratch = Vec::new();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    shared.storage.with_entities(&refs, |i, v| {
        let Some(v) = v else { return };
        scratch.clear();
        scratch.extend_from_slice(v);
        if let Ok(doc) = simd_json::to_borrowed_value(&mut scratch) {
            let entry = def.entry(&doc, &keys[i]);
            out.push((keys[i].clone(), v.to_vec(), entry));
        }
    })?;
    Ok(out)
}

/// An entity's key, its stored value, and its entry computed from it.
type Item = (String, Vec<u8>, Vec<u8>);

type Chunk = (Vec<Item>, Option<Vec<u8>>);

/// Reads up to [`CHUNK`] entities of the table from `from`; returns this
/// core's (key, value, entry) and where the next chunk starts.
fn read_chunk(
    shared: &Node,
    def: &IndexDef,
    from: &[u8],
    to: &[u8],
    me: usize,
    shards: usize,
) -> Result<Chunk, StorageError> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut next = None;
    let mut scratch = Vec::new();
    shared
        .storage
        .scan(Family::Entities, from, to, false, |k, v| {
            if seen == CHUNK {
                next = Some(k.to_vec());
                return false;
            }
            seen += 1;
            if shards > 1 && crate::mesh::owner_of(k, shards) != me {
                return true;
            }
            let Ok(key) = std::str::from_utf8(k) else {
                return true;
            };
            scratch.clear();
            scratch.extend_from_slice(v);
            if let Ok(doc) = simd_json::to_borrowed_value(&mut scratch) {
                let entry = def.entry(&doc, key);
                out.push((key.to_string(), v.to_vec(), entry));
            }
            true
        })?;
    Ok((out, next))
}

/// Marks the index ready (or failed, for duplicate unique values).
async fn finish(core: &Core, def: &Arc<IndexDef>, progress: &BuildProgress) {
    let shared = core.node().clone();
    let d = def.clone();
    let verdict = core
        .blocking_background(Work::Build, move || {
            if d.unique {
                find_duplicate(&shared, &d)
            } else {
                Ok(None)
            }
        })
        .await
        .and_then(|r| r.map_err(ApiError::from));
    let mut next = (**def).clone();
    match verdict {
        Ok(None) => next.state = IndexState::Ready,
        Ok(Some(msg)) => {
            next.state = IndexState::Failed;
            next.error = Some(msg);
        }
        Err(e) => {
            next.state = IndexState::Failed;
            next.error = Some(format!("verification failed: {e}"));
        }
    }
    // Recorded only if the index was not dropped or rebuilt meanwhile (the
    // check and the save happen under the catalog's lock).
    let node = core.node().clone();
    let outcome = next.clone();
    let recorded = core
        .blocking_background(Work::Build, move || {
            node.index.finish_build(&node.storage, outcome)
        })
        .await
        .and_then(|r| r.map_err(ApiError::from));
    match recorded {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            let m = format!("recording the finished build failed: {e}");
            core.report_failure("index_build", Some(def.id.to_string()), m);
            return;
        }
    }
    let ms = progress.started.elapsed().as_millis() as u64;
    progress.finished_ms.store(ms.max(1), Ordering::Release);
    let c = core.counters();
    bump(&c.index_rebuilds, 1);
    bump(&c.index_rebuild_ms, ms);
    tracing::info!(
        index = def.id,
        table = %def.table,
        columns = ?def.columns,
        state = ?next.state,
        ms,
        "index build finished"
    );
}

/// The first pair of entities with equal constrained values, if any.
fn find_duplicate(shared: &Node, def: &IndexDef) -> Result<Option<String>, StorageError> {
    let mut prev: Option<(Vec<u8>, String)> = None;
    let mut found = None;
    shared
        .storage
        .scan(Family::Indexes, &def.prefix(), &def.end(), false, |k, _| {
            let Some((vals, key)) = def.split_entry(k) else {
                return true;
            };
            let constrained = {
                let mut i = 0;
                let mut ok = true;
                while i < vals.len() {
                    ok &= vals[i] > super::encoding::TAG_NULL;
                    i += super::encoding::encoded_len(&vals[i..]).unwrap_or(vals.len());
                }
                ok
            };
            if constrained {
                if let Some((pv, pk)) = &prev {
                    if pv == vals {
                        found = Some(format!(
                            "duplicate value in unique index: entities {pk} and {key}"
                        ));
                        return false;
                    }
                }
                prev = Some((vals.to_vec(), key.to_string()));
            }
            true
        })?;
    Ok(found)
}
