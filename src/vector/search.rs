//! `POST /vector/search` across cores: plan, fan out, merge.
//!
//! Every core holds the graph of the vectors it owns, so a search asks
//! every core (typed calls over the mesh, in parallel) for its local top-k
//! and the receiving core merges them by distance (ties by key).
//!
//! With a filter (`/query`'s predicates and ranges) every result matches
//! it, checked against the stored entity:
//! * **exact candidates**: when a ready secondary index narrows the filter
//!   to at most [`EXACT_MAX`] entities (the `/query` planner), those
//!   candidates are grouped by owning core and each owner computes exact
//!   distances from the stored vectors; no graph is walked;
//! * **filtered HNSW**: otherwise each core searches its graph with
//!   over-fetch, checks the candidates' documents, and widens the search
//!   (×4) until it has k matches or has seen every point; past
//!   [`OVERFETCH_MAX`] candidates it scans its stored vectors exactly on
//!   its blocking pool. So k results come back whenever k match.
//!
//! hnsw_rs's own filtered search (issue #27: it returned non-matching
//! points before 0.3.3) is not used: candidates are checked here.

use super::distance::{self, Metric};
use super::graph::{sort_hits, Hit, State};
use super::VectorDef;
use crate::error::ApiError;
use crate::mesh::{Rpc, Served};
use crate::node::{Core, Node};
use crate::query::{CheckScratch, Filter};
use crate::storage::Family;
use std::rc::Rc;
use std::sync::Arc;

/// Most filter candidates computed exactly (secondary-index path).
pub const EXACT_MAX: usize = 20_000;
/// Most graph candidates one core checks against a filter before it scans
/// its stored vectors instead.
pub const OVERFETCH_MAX: usize = 2048;
/// Exact candidates handled inline by an owner; more go to its blocking
/// pool.
const INLINE_EXACT: usize = 512;

/// One result of a core.
#[derive(Debug, Clone)]
pub struct Found {
    pub key: String,
    /// The graph distance (reported through [`Metric::reported`]).
    pub distance: f32,
}

/// A core's answer.
#[derive(Debug, Default)]
pub struct ShareAnswer {
    pub found: Vec<Found>,
    /// Candidates whose document was checked against the filter (or
    /// distances computed exactly).
    pub checked: u64,
    /// How this core searched.
    pub mode: &'static str,
}

/// Search this core's graph of index `index`.
pub struct SearchShare {
    pub def: Arc<VectorDef>,
    pub query: Arc<[f32]>,
    pub k: usize,
    pub ef: usize,
    pub filter: Option<Arc<Filter>>,
}

impl Rpc<Core> for SearchShare {
    type Answer = ShareAnswer;
    /// An exact scan may wait for the blocking pool.
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<ShareAnswer> {
        let core = core.clone();
        Served::Later(Box::pin(async move { search_here(&core, self).await }))
    }
}

/// Exact distances for these candidate keys (owned by the callee).
pub struct ExactShare {
    pub def: Arc<VectorDef>,
    pub query: Arc<[f32]>,
    pub k: usize,
    pub keys: Vec<String>,
    pub filter: Arc<Filter>,
}

impl Rpc<Core> for ExactShare {
    type Answer = ShareAnswer;
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<ShareAnswer> {
        let core = core.clone();
        Served::Later(Box::pin(async move { exact_here(&core, self).await }))
    }
}

fn loading(def: &VectorDef, core: usize) -> ApiError {
    tracing::debug!(index = def.id, core, "vector search while the graph loads");
    ApiError::Unavailable("the vector index is still loading on a core; retry shortly")
}

/// This core's top-k for a search.
pub async fn search_here(core: &Core, s: SearchShare) -> Result<ShareAnswer, ApiError> {
    let Some(g) = core.vector().existing_graph(s.def.id) else {
        return Err(loading(&s.def, core.id()));
    };
    if g.state() != State::Ready {
        return Err(loading(&s.def, core.id()));
    }
    let Some(filter) = s.filter.clone() else {
        let (hits, _) = g.candidates(&s.query, s.k, s.ef);
        return Ok(ShareAnswer {
            checked: hits.len() as u64,
            found: to_found(hits),
            mode: "hnsw",
        });
    };
    let mut fetch = (s.k * 2).max(16);
    let mut checked = 0u64;
    loop {
        let (hits, exhausted) = g.candidates(&s.query, fetch, s.ef.max(fetch));
        checked += hits.len() as u64;
        let matching = keep_matching(core, hits, &filter)?;
        if matching.len() >= s.k || exhausted {
            let mut found = to_found(matching);
            found.truncate(s.k);
            return Ok(ShareAnswer {
                found,
                checked,
                mode: "hnsw_filtered",
            });
        }
        if fetch >= OVERFETCH_MAX {
            break;
        }
        fetch = (fetch * 4).min(OVERFETCH_MAX);
    }
    // Too few matches near the query: scan this core's stored vectors.
    let (node, def, query, k, me, n) = (
        core.node().clone(),
        s.def.clone(),
        s.query.clone(),
        s.k,
        core.id(),
        core.cores(),
    );
    let mut answer = core
        .blocking(crate::node::blocking::Work::Scan, move || {
            scan_exact(&node, &def, &query, k, &filter, me, n)
        })
        .await??;
    answer.checked += checked;
    Ok(answer)
}

fn to_found(hits: Vec<Hit>) -> Vec<Found> {
    hits.into_iter()
        .map(|h| Found {
            key: h.key.to_string(),
            distance: h.distance,
        })
        .collect()
}

/// The hits whose stored entity matches the filter, in order.
fn keep_matching(core: &Core, hits: Vec<Hit>, filter: &Filter) -> Result<Vec<Hit>, ApiError> {
    let mut ok = vec![false; hits.len()];
    let refs: Vec<&[u8]> = hits.iter().map(|h| h.key.as_bytes()).collect();
    let mut scratch = core.query().check_scratch().borrow_mut();
    core.node().storage.with_entities(&refs, |i, v| {
        ok[i] = v.is_some_and(|v| filter.check(v, &mut scratch).is_some());
    })?;
    Ok(hits
        .into_iter()
        .zip(ok)
        .filter_map(|(h, ok)| ok.then_some(h))
        .collect())
}

/// Exact top-k over every stored vector of `def` owned by core `me` that
/// matches `filter`. Blocking: reads the whole index range.
fn scan_exact(
    node: &Node,
    def: &VectorDef,
    query: &[f32],
    k: usize,
    filter: &Filter,
    me: usize,
    cores: usize,
) -> Result<ShareAnswer, ApiError> {
    let mut all: Vec<(f32, String)> = Vec::new();
    let metric = def.metric;
    node.storage
        .scan(Family::Vectors, &def.prefix(), &def.end(), false, |k, v| {
            let key = &k[4..];
            if cores > 1 && crate::mesh::owner_of(key, cores) != me {
                return true;
            }
            if let (Ok(key), Some(d)) = (std::str::from_utf8(key), exact_distance(metric, query, v))
            {
                all.push((d, key.to_string()));
            }
            true
        })?;
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut found = Vec::with_capacity(k);
    let mut scratch = CheckScratch::default();
    let mut checked = 0u64;
    for chunk in all.chunks(256) {
        let refs: Vec<&[u8]> = chunk.iter().map(|(_, key)| key.as_bytes()).collect();
        let mut ok = vec![false; chunk.len()];
        node.storage.with_entities(&refs, |i, v| {
            ok[i] = v.is_some_and(|v| filter.check(v, &mut scratch).is_some());
        })?;
        checked += chunk.len() as u64;
        for ((d, key), ok) in chunk.iter().zip(ok) {
            if ok && found.len() < k {
                found.push(Found {
                    key: key.clone(),
                    distance: *d,
                });
            }
        }
        if found.len() >= k {
            break;
        }
    }
    Ok(ShareAnswer {
        found,
        checked,
        mode: "exact_scan",
    })
}

/// The graph distance between `query` (prepared) and a stored vector.
pub fn exact_distance(metric: Metric, query: &[f32], stored: &[u8]) -> Option<f32> {
    let mut v = distance::decode(stored)?;
    if v.len() != query.len() {
        return None;
    }
    metric.prepare(&mut v).ok()?;
    Some(metric.graph_distance(query, &v))
}

/// Exact distances of candidates owned by this core.
pub async fn exact_here(core: &Core, s: ExactShare) -> Result<ShareAnswer, ApiError> {
    if s.keys.len() <= INLINE_EXACT {
        return exact_keys(
            core.node(),
            &s,
            &mut core.query().check_scratch().borrow_mut(),
        );
    }
    let node = core.node().clone();
    core.blocking(crate::node::blocking::Work::Scan, move || {
        exact_keys(&node, &s, &mut CheckScratch::default())
    })
    .await?
}

fn exact_keys(
    node: &Node,
    s: &ExactShare,
    scratch: &mut CheckScratch,
) -> Result<ShareAnswer, ApiError> {
    let refs: Vec<&[u8]> = s.keys.iter().map(|k| k.as_bytes()).collect();
    let mut ok = vec![false; refs.len()];
    node.storage.with_entities(&refs, |i, v| {
        ok[i] = v.is_some_and(|v| s.filter.check(v, scratch).is_some());
    })?;
    let mut hits = Vec::new();
    for (key, ok) in s.keys.iter().zip(ok) {
        if !ok {
            continue;
        }
        let entry = s.def.entry(key);
        let d = node.storage.get_with(Family::Vectors, &entry, |v| {
            v.and_then(|v| exact_distance(s.def.metric, &s.query, v))
        })?;
        if let Some(d) = d {
            hits.push(Hit {
                key: Rc::from(key.as_str()),
                distance: d,
            });
        }
    }
    sort_hits(&mut hits);
    hits.truncate(s.k);
    Ok(ShareAnswer {
        found: to_found(hits),
        checked: s.keys.len() as u64,
        mode: "exact_candidates",
    })
}

/// The `k` best of every core's results, by distance then key.
pub fn merge(shares: Vec<Vec<Found>>, k: usize) -> Vec<Found> {
    let mut all: Vec<Found> = shares.into_iter().flatten().collect();
    all.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then_with(|| a.key.cmp(&b.key))
    });
    all.dedup_by(|a, b| a.key == b.key);
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(key: &str, d: f32) -> Found {
        Found {
            key: key.into(),
            distance: d,
        }
    }

    #[test]
    fn merge_takes_the_k_nearest_with_ties_by_key() {
        let got = merge(
            vec![
                vec![f("t:a", 0.5), f("t:c", 2.0)],
                vec![f("t:b", 0.5), f("t:d", 1.0)],
                vec![],
            ],
            3,
        );
        let keys: Vec<&str> = got.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["t:a", "t:b", "t:d"]);
    }

    proptest! {
        #[test]
        fn merge_equals_sorting_everything(
            shares in prop::collection::vec(prop::collection::vec(0u32..50, 0..20), 1..5),
            k in 1usize..30,
        ) {
            // Distinct keys across shares, each share sorted (as cores answer).
            let mut n = 0;
            let shares: Vec<Vec<Found>> = shares.into_iter().map(|mut s| {
                s.sort_unstable();
                s.into_iter().map(|d| { n += 1; f(&format!("t:{n:04}"), d as f32) }).collect()
            }).collect();
            let mut all: Vec<(u32, String)> = shares.iter().flatten()
                .map(|x| (x.distance as u32, x.key.clone())).collect();
            all.sort();
            all.truncate(k);
            let got: Vec<(u32, String)> = merge(shares, k).into_iter()
                .map(|x| (x.distance as u32, x.key)).collect();
            prop_assert_eq!(got, all);
        }
    }
}
