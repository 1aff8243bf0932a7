//! Filling a core's graph: at start-up from the stored vectors (or a
//! dump), and at index creation from the table's entities (the backfill).
//!
//! One task per core and index, each over the keys its core owns:
//!
//! 1. It refreshes its catalog copy, so every write it runs from now on
//!    maintains the index itself (stores the vector, updates the graph);
//!    the core's graph, loading, remembers the keys those writes touch.
//! 2. On the blocking pool it reads chunks: the index's range of the
//!    `vectors` family (start-up), or the table's entities and their field
//!    (backfill).
//! 3. Back on the core, keys a write touched meanwhile are skipped (the
//!    write already did the right thing); the rest are stored (backfill)
//!    and queued for the helper thread's bulk insert. Writes of a key run
//!    only on its owner, so nothing changes between that check and the
//!    store.
//! 4. Once the helper applied every chunk, the graph is ready.
//!
//! Start-up first tries a dump ([`super::dump`]); it is used only when it
//! matches the stored vectors, otherwise the graph is rebuilt. The log
//! says which, and how long it took.

use super::graph::State;
use super::maintain::extract;
use super::VectorDef;
use crate::mesh::{Rpc, Served};
use crate::node::{Core, Node};
use crate::storage::{Family, StorageError};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stored vectors read per chunk at start-up.
const RESTORE_CHUNK: usize = 2048;
/// Entities read per chunk by a backfill.
const BACKFILL_CHUNK: usize = 512;

/// Start this core's share of filling index `id`.
#[derive(Clone)]
pub struct StartLoad {
    pub id: u32,
    pub backfill: bool,
}

impl Rpc<Core> for StartLoad {
    type Answer = ();
    fn serve(self, core: &Rc<Core>) -> Served<()> {
        spawn(core, self.id, self.backfill);
        Served::Now(Ok(()))
    }
}

/// Spawns this core's load of index `id`.
pub fn spawn(core: &Core, id: u32, backfill: bool) {
    if let Some(me) = core.rc() {
        glommio::spawn_local(run(me, id, backfill)).detach();
    }
}

/// Start-up: every index's graph is loaded on every core.
pub fn resume(core: &Rc<Core>) {
    for d in core.node().vector.catalog.current().indexes.iter() {
        spawn(core, d.id, false);
    }
}

type Chunk = (Vec<(String, Vec<f32>)>, u64, Option<Vec<u8>>);

async fn run(core: Rc<Core>, id: u32, backfill: bool) {
    // Step 1: from here on this core's writes maintain the index.
    let catalog = core.vector().catalog();
    let Some(def) = catalog.by_id(id).cloned() else {
        return;
    };
    let g = core.vector().graph(core.id(), &def);
    if !g.claim_loader() || g.state() == State::Ready {
        return;
    }
    let started = Instant::now();
    let mut from_dump = false;
    if !backfill {
        from_dump = super::dump::try_load(&core, &def, &g).await;
    }
    let (mut loaded, mut skipped) = (0u64, 0u64);
    if !from_dump {
        let (mut from, to) = if backfill {
            crate::entity::key::table_range(&def.table)
        } else {
            (def.prefix().to_vec(), def.end().to_vec())
        };
        let (me, cores) = (core.id(), core.cores());
        loop {
            if core.node().vector.catalog.current().by_id(id).is_none() {
                return; // dropped meanwhile
            }
            let (node, d, start, end) =
                (core.node().clone(), def.clone(), from.clone(), to.clone());
            let chunk = core
                .blocking_background(crate::node::blocking::Work::Build, move || {
                    read_chunk(&node, &d, &start, &end, me, cores, backfill)
                })
                .await
                .and_then(|r| r.map_err(crate::error::ApiError::from));
            let (items, bad, next) = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(index = id, "vector index load read failed: {e}");
                    return;
                }
            };
            skipped += bad;
            let items: Vec<(String, Vec<f32>)> =
                items.into_iter().filter(|(k, _)| !g.touched(k)).collect();
            if backfill && !items.is_empty() {
                if let Err(e) = store(&core, &def, &items) {
                    tracing::error!(index = id, "vector index backfill write failed: {e}");
                    return;
                }
            }
            loaded += g.load_chunk(items) as u64;
            match next {
                Some(k) => from = k,
                None => break,
            }
            glommio::executor().yield_now().await;
        }
    }
    // Step 4: searchable once the helper applied every chunk.
    let last = g.last_seq();
    while !g.applied(last) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let ms = started.elapsed().as_millis() as u64;
    let from = match (backfill, from_dump) {
        (true, _) => "backfill",
        (false, true) => "dump",
        (false, false) => "rebuild",
    };
    if from_dump {
        loaded = g.live() as u64;
    }
    g.finish_loading(from, ms, loaded, skipped);
    tracing::info!(
        index = id,
        table = %def.table,
        field = %def.field,
        core = core.id(),
        from,
        vectors = loaded,
        skipped_invalid = skipped,
        ms,
        "vector index loaded"
    );
}

/// Stores backfilled vectors (one batch per chunk).
fn store(core: &Core, def: &VectorDef, items: &[(String, Vec<f32>)]) -> Result<(), StorageError> {
    let storage = &core.node().storage;
    let mut b = storage.batch();
    for (key, v) in items {
        b.put(
            Family::Vectors,
            &def.entry(key),
            &super::distance::encode(v),
        )?;
    }
    storage.commit(b)
}

/// Reads one chunk from `from`: this core's (key, vector) pairs, how many
/// entities had an invalid vector, and where the next chunk starts.
fn read_chunk(
    node: &Node,
    def: &Arc<VectorDef>,
    from: &[u8],
    to: &[u8],
    me: usize,
    cores: usize,
    backfill: bool,
) -> Result<Chunk, StorageError> {
    let mut out = Vec::new();
    let mut bad = 0u64;
    let mut seen = 0usize;
    let mut next = None;
    let limit = if backfill {
        BACKFILL_CHUNK
    } else {
        RESTORE_CHUNK
    };
    let family = if backfill {
        Family::Entities
    } else {
        Family::Vectors
    };
    let mut scratch = Vec::new();
    node.storage.scan(family, from, to, false, |k, v| {
        if seen == limit {
            next = Some(k.to_vec());
            return false;
        }
        seen += 1;
        let key = if backfill { k } else { &k[4.min(k.len())..] };
        if cores > 1 && crate::mesh::owner_of(key, cores) != me {
            return true;
        }
        let Ok(key) = std::str::from_utf8(key) else {
            return true;
        };
        if backfill {
            scratch.clear();
            scratch.extend_from_slice(v);
            match simd_json::to_borrowed_value(&mut scratch).map(|doc| extract(def, &doc)) {
                Ok(Ok(Some(vec))) => out.push((key.to_string(), vec)),
                Ok(Ok(None)) => {}
                _ => bad += 1,
            }
        } else {
            match super::distance::decode(v) {
                Some(vec) if vec.len() == def.dimension => out.push((key.to_string(), vec)),
                _ => bad += 1,
            }
        }
        true
    })?;
    Ok((out, bad, next))
}
