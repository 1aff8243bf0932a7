//! Graph dumps: `POST /vector/index/save` writes each core's graph with
//! hnsw_rs's own format, start-up (and `POST /vector/index/load`) use a
//! dump instead of rebuilding when — and only when — it matches the stored
//! vectors.
//!
//! A dump of index `i` on core `c` is three files in the dump directory
//! (`<storage.rocksdb_path>-vector-dumps`): hnsw_rs's
//! `index-i-core-c.hnsw.graph` and `.hnsw.data`, and our manifest
//! `index-i-core-c.manifest.json`: the index's parameters, the number of
//! cores (ownership depends on it), the size and hash of both hnsw_rs files,
//! and the key of every live graph id.
//!
//! A dump is used only if: the parameters and the core count are the
//! same; both files have the recorded size and hash (hnsw_rs's loader
//! asserts on malformed input, and a panic aborts the server, so nothing
//! unverified reaches it); and every vector this core owns in the `vectors`
//! family equals, bit for bit after preparation, the dumped point its key
//! maps to, with no extra key on either side. Anything else: rebuild.

use super::graph::{CoreGraph, Hnsw};
use super::VectorDef;
use crate::error::ApiError;
use crate::mesh::{Rpc, Served};
use crate::node::{Core, Node};
use crate::storage::Family;
use hnsw_rs::api::AnnT;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

#[derive(Serialize, Deserialize, PartialEq)]
struct Params {
    id: u32,
    dimension: usize,
    metric: super::Metric,
    m: usize,
    ef_construction: usize,
    cores: usize,
}

#[derive(Serialize, Deserialize)]
struct FileSum {
    size: u64,
    hash: u64,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    params: Params,
    graph: FileSum,
    data: FileSum,
    ids: Vec<(usize, String)>,
}

/// The dump directory.
pub fn directory(node: &Node) -> PathBuf {
    let mut p = node.config.storage.rocksdb_path.clone().into_os_string();
    p.push("-vector-dumps");
    PathBuf::from(p)
}

fn basename(id: u32, core: usize) -> String {
    format!("index-{id}-core-{core}")
}

fn params(def: &VectorDef, cores: usize) -> Params {
    Params {
        id: def.id,
        dimension: def.dimension,
        metric: def.metric,
        m: def.m,
        ef_construction: def.ef_construction,
        cores,
    }
}

fn file_sum(path: &Path) -> std::io::Result<FileSum> {
    let mut f = std::fs::File::open(path)?;
    let mut h = rustc_hash::FxHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
        size += n as u64;
    }
    Ok(FileSum {
        size,
        hash: h.finish(),
    })
}

/// Save this core's graph of every index.
#[derive(Clone)]
pub struct SaveShare;

impl Rpc<Core> for SaveShare {
    type Answer = Vec<serde_json::Value>;
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        let core = core.clone();
        Served::Later(Box::pin(async move { save_here(&core).await }))
    }
}

/// Writes this core's dumps; one summary per index.
pub async fn save_here(core: &Core) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut out = Vec::new();
    for def in core.vector().catalog().indexes.iter() {
        let Some(g) = core.vector().existing_graph(def.id) else {
            continue;
        };
        if g.state() != super::graph::State::Ready {
            return Err(ApiError::Unavailable(
                "a vector index is still loading; save it once it is ready",
            ));
        }
        // Every queued insert applied, so each live id is in the graph.
        let last = g.last_seq();
        while !g.applied(last) {
            glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
        }
        let (graph, ids) = (g.graph_now(), g.live_ids());
        let (node, def2, me, cores) = (core.node().clone(), def.clone(), core.id(), core.cores());
        let started = Instant::now();
        let n = ids.len();
        core.blocking(crate::node::blocking::Work::Admin, move || {
            write_dump(&node, &def2, me, cores, &graph, ids)
        })
        .await?
        .map_err(|e| {
            tracing::error!(index = def.id, "vector dump failed: {e}");
            ApiError::Internal("writing the vector dump failed (see the server log)")
        })?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            index = def.id,
            core = core.id(),
            vectors = n,
            ms,
            "vector graph dumped"
        );
        out.push(serde_json::json!({"index": def.id, "table": def.table, "field": def.field, "core": core.id(), "vectors": n, "ms": ms}));
    }
    Ok(out)
}

fn write_dump(
    node: &Node,
    def: &VectorDef,
    core: usize,
    cores: usize,
    graph: &Hnsw,
    ids: Vec<(usize, String)>,
) -> anyhow::Result<()> {
    let dir = directory(node);
    std::fs::create_dir_all(&dir)?;
    let base = basename(def.id, core);
    // The manifest goes last (and by rename): a dump without one is ignored.
    let manifest_path = dir.join(format!("{base}.manifest.json"));
    let _ = std::fs::remove_file(&manifest_path);
    let written = graph.file_dump(&dir, &base)?;
    if written != base {
        anyhow::bail!("hnsw_rs wrote {written} instead of {base}");
    }
    let graph_sum = file_sum(&dir.join(format!("{base}.hnsw.graph")))?;
    let data_sum = file_sum(&dir.join(format!("{base}.hnsw.data")))?;
    let m = Manifest {
        params: params(def, cores),
        graph: graph_sum,
        data: data_sum,
        ids,
    };
    let tmp = dir.join(format!("{base}.manifest.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&m)?)?;
    std::fs::rename(&tmp, &manifest_path)?;
    Ok(())
}

/// Loads and verifies this core's dump of `def` (blocking). `None` when
/// there is none or it does not match; the reason is logged.
fn read_dump(
    node: &Node,
    def: &VectorDef,
    core: usize,
    cores: usize,
) -> Option<(Hnsw, Vec<(usize, String)>)> {
    let dir = directory(node);
    let base = basename(def.id, core);
    let raw = std::fs::read(dir.join(format!("{base}.manifest.json"))).ok()?;
    let why = |reason: &str| {
        tracing::info!(index = def.id, core, "vector dump not used: {reason}");
    };
    let Ok(m) = serde_json::from_slice::<Manifest>(&raw) else {
        why("unreadable manifest");
        return None;
    };
    if m.params != params(def, cores) {
        why("index parameters or core count differ");
        return None;
    }
    for (name, sum) in [("graph", &m.graph), ("data", &m.data)] {
        match file_sum(&dir.join(format!("{base}.hnsw.{name}"))) {
            Ok(s) if s.size == sum.size && s.hash == sum.hash => {}
            _ => {
                why("dump files changed or missing");
                return None;
            }
        }
    }
    // hnsw_rs ties a loaded graph's lifetime to its loader; the loader is
    // small (paths and options, no data: points own their vectors without
    // mmap), so it is leaked to give the graph a 'static lifetime.
    let io: &'static hnsw_rs::hnswio::HnswIo =
        Box::leak(Box::new(hnsw_rs::hnswio::HnswIo::new(&dir, &base)));
    let graph: Hnsw = match io.load_hnsw_with_dist(super::distance::GraphDistance(def.metric)) {
        Ok(g) => g,
        Err(e) => {
            why(&format!("hnsw_rs could not load it: {e}"));
            return None;
        }
    };
    // Every stored vector of this core equals its dumped point.
    let points: HashMap<usize, Vec<f32>> = graph
        .get_point_indexation()
        .into_iter()
        .map(|p| (p.get_origin_id(), p.get_v().to_vec()))
        .collect();
    let by_key: HashMap<&str, usize> = m.ids.iter().map(|(id, k)| (k.as_str(), *id)).collect();
    let mut matched = 0usize;
    let mut ok = true;
    let scanned = node
        .storage
        .scan(Family::Vectors, &def.prefix(), &def.end(), false, |k, v| {
            let key = &k[4..];
            if cores > 1 && crate::mesh::owner_of(key, cores) != core {
                return true;
            }
            let same = std::str::from_utf8(key)
                .ok()
                .and_then(|key| by_key.get(key))
                .and_then(|id| points.get(id))
                .zip(super::distance::decode(v))
                .is_some_and(|(dumped, mut stored)| {
                    def.metric.prepare(&mut stored).is_ok()
                        && stored.len() == dumped.len()
                        && stored
                            .iter()
                            .zip(dumped)
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                });
            ok = same;
            matched += 1;
            same
        });
    if scanned.is_err() || !ok || matched != m.ids.len() {
        why("stored vectors changed since the dump");
        return None;
    }
    Some((graph, m.ids))
}

/// Start-up: fills `g` from a matching dump. False: rebuild instead.
pub async fn try_load(core: &Core, def: &Arc<VectorDef>, g: &CoreGraph) -> bool {
    let (node, d, me, cores) = (core.node().clone(), def.clone(), core.id(), core.cores());
    let loaded = core
        .blocking_background(crate::node::blocking::Work::Build, move || {
            read_dump(&node, &d, me, cores)
        })
        .await
        .ok()
        .flatten();
    let Some((graph, ids)) = loaded else {
        return false;
    };
    if g.any_touched() {
        tracing::info!(
            index = def.id,
            core = me,
            "writes arrived while the dump loaded; rebuilding instead"
        );
        return false;
    }
    g.load_dump(graph, ids);
    true
}
