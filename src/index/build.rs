//! Online index builds (create and rebuild), one task per core.
//!
//! Every core builds the entries of the entities it owns:
//!
//! 1. It refreshes its catalog copy, so every write it runs from now on
//!    maintains the new index itself.
//! 2. On the blocking pool it reads the table in chunks (key and value),
//!    keeps the keys this core owns, and computes their entries.
//! 3. Back on the core, for each entity it checks the stored value is still
//!    the one the entry was computed from (a point read and a compare). If
//!    it is, the entry is written; if not, a write changed the entity after
//!    step 1 and already wrote the right entry. Writes to a key run only on
//!    its owner, so nothing can change between that check and the entry's
//!    write.
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

/// A build's progress, shared by the cores building it.
#[derive(Debug)]
pub struct BuildProgress {
    pub entities_processed: AtomicU64,
    pub cores_done: AtomicUsize,
    pub started: Instant,
    pub finished_ms: AtomicU64,
}

impl BuildProgress {
    pub fn new() -> BuildProgress {
        BuildProgress {
            entities_processed: AtomicU64::new(0),
            cores_done: AtomicUsize::new(0),
            started: Instant::now(),
            finished_ms: AtomicU64::new(0),
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
pub fn start_on_others(core: &Core, id: u32) {
    for other in (0..core.cores()).filter(|c| *c != core.id()) {
        let Some(me) = core.rc() else { return };
        glommio::spawn_local(async move {
            let mut pause = std::time::Duration::from_millis(50);
            loop {
                if me.node().index.catalog.current().by_id(id).is_none() {
                    return;
                }
                match me.call(other, StartBuild { id }).await {
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

/// Start this core's share of building index `id` (sent to every core).
#[derive(Clone)]
pub struct StartBuild {
    pub id: u32,
}

impl Rpc<Core> for StartBuild {
    type Answer = ();
    fn serve(self, core: &Rc<Core>) -> Served<()> {
        if core.node().faults.take_start_build_refusal() {
            return Served::Now(Err(ApiError::Timeout { ms: 0 }));
        }
        spawn(core, self.id);
        Served::Now(Ok(()))
    }
}

/// Spawns this core's share of building index `id` (once per core).
pub fn spawn(core: &Core, id: u32) {
    if !core.index().claim_build(id) {
        return;
    }
    if let Some(me) = core.rc() {
        glommio::spawn_local(run(me, id)).detach();
    }
}

/// Resumes the builds a stop interrupted: from the start (entries already
/// written are rewritten). Called on every core at start-up.
pub fn resume(core: &Rc<Core>) {
    for d in core.node().index.catalog.current().indexes.iter() {
        if d.state == IndexState::Building {
            spawn(core, d.id);
        }
    }
}

/// Builds this core's share of index `id`.
async fn run(core: Rc<Core>, id: u32) {
    // Step 1: from here on this core's writes maintain the index.
    let catalog = core.index().catalog();
    let Some(def) = catalog.by_id(id).cloned() else {
        return;
    };
    if def.state != IndexState::Building {
        return;
    }
    let progress = core.node().index.builds.get_or_start(id);
    let me = core.id();
    let shards = core.cores();
    let (mut from, to) = crate::entity::key::table_range(&def.table);
    let mut processed = 0u64;
    loop {
        // Dropped or rebuilt meanwhile: stop (its entries are being deleted).
        if core.node().index.catalog.current().by_id(id).is_none() {
            return;
        }
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
                return;
            }
        };
        // Step 3, on the core.
        let mut puts = Vec::with_capacity(items.len());
        for (key, value, entry) in items {
            let same = core
                .node()
                .storage
                .with_entity(key.as_bytes(), |cur| cur == Some(&value[..]))
                .unwrap_or(false);
            if same {
                puts.push(entry);
            }
        }
        let storage = &core.node().storage;
        let written = puts
            .iter()
            .try_fold(storage.batch(), |mut b, e| {
                b.put(Family::Indexes, e, b"")?;
                Ok::<_, StorageError>(b)
            })
            .and_then(|b| storage.commit(b));
        if let Err(e) = written {
            let m = format!(
                "writing entries failed: {e}; the index stays building on this core until rebuilt"
            );
            core.report_failure("index_build", Some(id.to_string()), m);
            return;
        }
        let n = puts.len() as u64;
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
    if progress.cores_done.fetch_add(1, Ordering::AcqRel) + 1 == shards {
        finish(&core, &def, &progress).await;
    }
}

type Chunk = (Vec<(String, Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

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
