//! `/cache/*` routes, the lookup, and the per-core sweeper (TTL expiry and
//! LRU eviction). 503 `feature_disabled` while `features.semantic_cache`
//! is off; turning it off also pauses the sweeper.
//!
//! A lookup (`POST /cache/query`):
//! 1. exact: the identity's key is read on its owner ([`CacheGet`]), which
//!    checks `expires_ms` and `params_hash` and marks the entry used;
//! 2. semantic, with an `embedding`: every core searches its graph of the
//!    table's cosine index for its nearest live entry with the same
//!    `params_hash` (the vector search's filtered search: candidates are
//!    checked against their stored document, so expired and other-params
//!    entries are skipped, never returned); the nearest of all is a hit if
//!    its similarity (1 − cosine distance) is at least the threshold, and
//!    is confirmed and marked used on its owner like an exact hit.

use super::{identity, now_ms, params_hash, FIELD, NEVER, TABLE};
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::index::encoding::Scalar;
use crate::mesh::{owner_of, Rpc, Served};
use crate::node::blocking::Work;
use crate::node::{Core, Faults};
use crate::obs::counters::{bump, set};
use crate::query::{Cond, Filter};
use crate::storage::Family;
use crate::vector::distance::Metric;
use crate::vector::search::{self, SearchShare};
use crate::vector::VectorDef;
use serde_json::{json, Map, Value};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use themis_io::{Method, Response, ShutdownSignal};

pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::CachePut,
        methods: &[Method::Post],
        path: PathPattern::Exact("/cache/put"),
        role: Role::Write,
        tables: Tables::Fixed(TABLE),
        label: "POST /cache/put",
    },
    Route {
        id: RouteId::CacheQuery,
        methods: &[Method::Post],
        path: PathPattern::Exact("/cache/query"),
        role: Role::Read,
        tables: Tables::Fixed(TABLE),
        label: "POST /cache/query",
    },
    Route {
        id: RouteId::CacheStats,
        methods: &[Method::Get, Method::Head],
        path: PathPattern::Exact("/cache/stats"),
        role: Role::Read,
        tables: Tables::Fixed(TABLE),
        label: "GET /cache/stats",
    },
    Route {
        id: RouteId::CacheDeleteEntry,
        methods: &[Method::Delete],
        path: PathPattern::Exact("/cache/entry"),
        role: Role::Admin,
        tables: Tables::Fixed(TABLE),
        label: "DELETE /cache/entry",
    },
    Route {
        id: RouteId::CacheClear,
        methods: &[Method::Post],
        path: PathPattern::Exact("/cache/clear"),
        role: Role::Admin,
        tables: Tables::Fixed(TABLE),
        label: "POST /cache/clear",
    },
];

/// How often each core looks for expired entries.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Most expired entries one sweep step deletes.
const SWEEP_STEP: usize = 256;
/// Entries one step of a start-up load or a clear reads.
const SCAN_CHUNK: usize = 4096;
/// Most deletes staged together by a clear, a sweep or an eviction step.
const DELETE_STEP: usize = 256;
/// Search breadth of a semantic lookup.
const LOOKUP_EF: usize = 64;

/// Fails with 503 unless `features.semantic_cache` is on.
fn require_enabled(core: &Core) -> Result<(), ApiError> {
    if core.settings().features.semantic_cache {
        Ok(())
    } else {
        Err(ApiError::FeatureDisabled {
            flag: "features.semantic_cache",
            enable: r#"{"features": {"semantic_cache": true}}"#,
        })
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

fn settings(core: &Core) -> crate::config::SemanticCacheConfig {
    core.settings().config.semantic_cache.clone()
}

// ---- request bodies -----------------------------------------------------

fn encoded_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

fn limited(field: &str, v: &Value, max: usize) -> Result<(), ApiError> {
    let n = encoded_len(v);
    if n > max {
        return Err(bad(format!(
            "{field}: {n} bytes, more than the limit of {max}"
        )));
    }
    Ok(())
}

fn prompt_of(m: &Map<String, Value>) -> Result<String, ApiError> {
    match m.get("prompt") {
        Some(Value::String(s)) if s.trim().is_empty() => Err(bad("prompt: must not be empty")),
        Some(Value::String(s)) if s.len() > super::MAX_PROMPT_BYTES => Err(bad(format!(
            "prompt: {} bytes, more than the limit of {}",
            s.len(),
            super::MAX_PROMPT_BYTES
        ))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad("prompt: must be a string")),
        None => Err(bad("prompt: required")),
    }
}

/// `params` as canonical JSON (keys sorted) and the value itself.
fn params_of(m: &Map<String, Value>) -> Result<(String, Value), ApiError> {
    let v = match m.get("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(bad("params: must be an object (model, temperature, …)")),
    };
    limited("params", &v, super::MAX_PARAMS_BYTES)?;
    let canonical = serde_json::to_string(&v).map_err(|_| ApiError::Internal("params"))?;
    Ok((canonical, v))
}

/// The embedding, checked against the configured dimension, as the query
/// vector (normalised) and as the JSON to store.
fn embedding_of(
    m: &Map<String, Value>,
    dimension: usize,
) -> Result<Option<(Vec<f32>, Value)>, ApiError> {
    let items = match m.get("embedding") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(bad(format!(
                "embedding: must be an array of {dimension} numbers"
            )))
        }
    };
    if items.len() != dimension {
        return Err(bad(format!(
            "embedding: expected {dimension} numbers (semantic_cache.dimension), got {}",
            items.len()
        )));
    }
    let mut v = Vec::with_capacity(dimension);
    for (i, x) in items.iter().enumerate() {
        match x.as_f64().map(|f| f as f32) {
            Some(f) if f.is_finite() => v.push(f),
            _ => {
                return Err(bad(format!(
                    "embedding: component {i} must be a finite number, got {x}"
                )))
            }
        }
    }
    let stored = Value::Array(items.clone());
    Metric::Cosine
        .prepare(&mut v)
        .map_err(|e| bad(format!("embedding: {e}")))?;
    Ok(Some((v, stored)))
}

// ---- the vector index -----------------------------------------------------

/// The cosine index of the table's embeddings, created (and loaded on
/// every core) the first time it is needed. 409 when an index with another
/// dimension exists.
pub async fn ensure_index(core: &Core) -> Result<Arc<VectorDef>, ApiError> {
    let dimension = settings(core).dimension;
    let check = |d: &Arc<VectorDef>| {
        if d.dimension == dimension && d.metric == Metric::Cosine {
            Ok(d.clone())
        } else {
            Err(ApiError::Conflict(format!(
                "the vector index on {TABLE}.{FIELD} has dimension {} and metric {}, but semantic_cache.dimension is {dimension} (cosine); drop it with POST /vector/index/drop {{\"table\":\"{TABLE}\",\"field\":\"{FIELD}\"}} and the cache rebuilds it",
                d.dimension,
                d.metric.name()
            )))
        }
    };
    if let Some(d) = core.vector().catalog().find(TABLE, FIELD) {
        return check(d);
    }
    let defaults = core.settings().config.vector_index.clone();
    let want = VectorDef::new(
        0,
        TABLE,
        FIELD,
        dimension,
        Metric::Cosine,
        (defaults.hnsw_m as usize).clamp(crate::vector::MIN_M, crate::vector::MAX_M),
        (defaults.hnsw_ef_construction as usize).clamp(1, crate::vector::MAX_EF_CONSTRUCTION),
        crate::vector::http::DEFAULT_EF_SEARCH,
    );
    let node = core.node().clone();
    let created = core
        .blocking(Work::Admin, move || node.vector.create(&node.storage, want))
        .await??;
    match created {
        crate::vector::Created::New(def) => {
            tracing::info!(index = def.id, "semantic cache: vector index created");
            crate::vector::load::spawn(core, def.id, true);
            core.call_others(crate::vector::load::StartLoad {
                id: def.id,
                backfill: true,
            })
            .await?;
            Ok(def)
        }
        crate::vector::Created::Existing(d) => check(&d),
        crate::vector::Created::TooMany => Err(ApiError::Conflict(format!(
            "the semantic cache needs a vector index, and the server has {} already; drop one",
            crate::vector::MAX_INDEXES
        ))),
    }
}

// ---- put ------------------------------------------------------------------

/// `POST /cache/put`: 201 (new) or 200 (replaced) `{"key", "created",
/// "expires_ms"}`.
pub async fn put(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let cfg = settings(core);
    let m = crate::http::body::object(
        body,
        &[
            "prompt",
            "response",
            "embedding",
            "params",
            "metadata",
            "ttl_seconds",
        ],
    )?;
    let prompt = prompt_of(&m)?;
    let response = match m.get("response") {
        None | Some(Value::Null) => return Err(bad("response: required")),
        Some(v) => v.clone(),
    };
    limited("response", &response, super::MAX_RESPONSE_BYTES)?;
    let (canonical, params) = params_of(&m)?;
    let metadata = m.get("metadata").cloned().unwrap_or(Value::Null);
    if !(metadata.is_null() || metadata.is_object()) {
        return Err(bad("metadata: must be an object"));
    }
    limited("metadata", &metadata, super::MAX_METADATA_BYTES)?;
    let ttl = match m.get("ttl_seconds") {
        None | Some(Value::Null) => cfg.default_ttl_seconds,
        Some(v) => v
            .as_u64()
            .filter(|t| *t <= super::MAX_TTL_SECONDS)
            .ok_or_else(|| {
                bad(format!(
                    "ttl_seconds: must be an integer in 0..={} (0: no expiry), got {v}",
                    super::MAX_TTL_SECONDS
                ))
            })?,
    };
    let embedding = embedding_of(&m, cfg.dimension)?;
    if embedding.is_some() {
        ensure_index(core).await?;
    }
    let now = now_ms();
    let expires_ms = if ttl == 0 { NEVER } else { now + ttl * 1000 };
    let mut doc = Map::new();
    doc.insert("prompt".into(), Value::String(prompt.clone()));
    doc.insert("response".into(), response);
    doc.insert("params".into(), params);
    doc.insert("params_hash".into(), Value::String(params_hash(&canonical)));
    doc.insert("metadata".into(), metadata);
    doc.insert("timestamp_ms".into(), now.into());
    doc.insert("expires_ms".into(), expires_ms.into());
    if let Some((_, stored)) = embedding {
        doc.insert(FIELD.into(), stored);
    }
    let value = serde_json::to_vec(&Value::Object(doc))
        .map_err(|_| ApiError::Internal("encoding a cache entry"))?;
    let key = identity(&prompt, &canonical);
    let existed = crate::entity::http::write_document(core, key.clone(), value).await?;
    let out = json!({"key": key, "created": !existed, "expires_ms": (expires_ms != NEVER).then_some(expires_ms)});
    resp.json(if existed { 200 } else { 201 }, out.to_string().as_bytes());
    Ok(())
}

// ---- lookup ---------------------------------------------------------------

/// Reads a cache entry on its owner: its stored document if it is live at
/// `now_ms` and has `params_hash`; marks it used.
pub struct CacheGet {
    pub key: String,
    pub params_hash: String,
    pub now_ms: u64,
}

impl Rpc<Core> for CacheGet {
    type Answer = Option<Vec<u8>>;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        Served::Now(get_here(core, &self))
    }
}

fn get_here(core: &Core, g: &CacheGet) -> Result<Option<Vec<u8>>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        expires_ms: Option<u64>,
        #[serde(borrow)]
        params_hash: Option<&'a str>,
    }
    let doc = core
        .node()
        .storage
        .with_entity(g.key.as_bytes(), |v| v.map(<[u8]>::to_vec))?;
    let Some(doc) = doc else {
        return Ok(None);
    };
    let live = match serde_json::from_slice::<Head<'_>>(&doc) {
        Ok(h) => h.expires_ms.unwrap_or(NEVER) > g.now_ms && h.params_hash == Some(&g.params_hash),
        Err(_) => false,
    };
    if !live {
        return Ok(None);
    }
    core.cache().lru.borrow_mut().touch(&g.key);
    Ok(Some(doc))
}

async fn get_on_owner(core: &Core, g: CacheGet) -> Result<Option<Vec<u8>>, ApiError> {
    let owner = core.owner_of(g.key.as_bytes());
    if owner == core.id() {
        get_here(core, &g)
    } else {
        core.call(owner, g).await
    }
}

/// The hit answer from a stored entry.
fn hit(doc: &[u8], matched: &str, similarity: f64) -> Result<Vec<u8>, ApiError> {
    let Ok(Value::Object(mut d)) = serde_json::from_slice::<Value>(doc) else {
        return Err(ApiError::Internal("a stored cache entry is not an object"));
    };
    let mut take = |k: &str| d.remove(k).unwrap_or(Value::Null);
    let out = json!({
        "hit": true,
        "response": take("response"),
        "similarity": similarity,
        "match": matched,
        "prompt": take("prompt"),
        "metadata": take("metadata"),
        "timestamp_ms": take("timestamp_ms"),
    });
    Ok(out.to_string().into_bytes())
}

/// `POST /cache/query`.
pub async fn query(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let cfg = settings(core);
    let m = crate::http::body::object(body, &["prompt", "embedding", "params", "threshold"])?;
    let prompt = prompt_of(&m)?;
    let (canonical, _) = params_of(&m)?;
    let threshold = match m.get("threshold") {
        None | Some(Value::Null) => cfg.similarity_threshold,
        Some(v) => v
            .as_f64()
            .filter(|t| *t > 0.0 && *t <= 1.0)
            .ok_or_else(|| bad(format!("threshold: must be a number in (0, 1], got {v}")))?,
    };
    let embedding = embedding_of(&m, cfg.dimension)?;
    let hash = params_hash(&canonical);
    let now = now_ms();
    let exact = CacheGet {
        key: identity(&prompt, &canonical),
        params_hash: hash.clone(),
        now_ms: now,
    };
    if let Some(doc) = get_on_owner(core, exact).await? {
        bump(&core.counters().cache_hits_exact, 1);
        resp.json(200, &hit(&doc, "exact", 1.0)?);
        return Ok(());
    }
    if let Some((vector, _)) = embedding {
        if let Some((key, similarity)) = nearest(core, vector, &hash, now).await? {
            if similarity as f32 >= threshold as f32 {
                let g = CacheGet {
                    key,
                    params_hash: hash,
                    now_ms: now,
                };
                if let Some(doc) = get_on_owner(core, g).await? {
                    bump(&core.counters().cache_hits_semantic, 1);
                    resp.json(200, &hit(&doc, "semantic", similarity)?);
                    return Ok(());
                }
            }
        }
    }
    bump(&core.counters().cache_misses, 1);
    resp.json(200, br#"{"hit":false}"#);
    Ok(())
}

/// The nearest live entry with `params_hash` over every core, and its
/// cosine similarity. `None` when there is none, or while the index is
/// not ready (a semantic lookup then misses rather than fails).
async fn nearest(
    core: &Core,
    vector: Vec<f32>,
    params_hash: &str,
    now: u64,
) -> Result<Option<(String, f64)>, ApiError> {
    let Some(def) = core.vector().catalog().find(TABLE, FIELD).cloned() else {
        return Ok(None);
    };
    if def.dimension != vector.len() {
        return Ok(None);
    }
    let filter = Arc::new(Filter {
        conds: vec![
            Cond {
                column: "params_hash".into(),
                path: vec!["params_hash".into()],
                eq: Some(Scalar::String(params_hash.to_string())),
                lower: None,
                upper: None,
            },
            Cond {
                column: "expires_ms".into(),
                path: vec!["expires_ms".into()],
                eq: None,
                lower: Some((Scalar::Number(now as f64), false)),
                upper: None,
            },
        ],
        order_path: None,
    });
    let query: Arc<[f32]> = Arc::from(vector);
    let mut futures = Vec::with_capacity(core.cores());
    for c in 0..core.cores() {
        let call = SearchShare {
            def: def.clone(),
            query: query.clone(),
            k: 1,
            ef: def.ef_search.max(LOOKUP_EF),
            filter: Some(filter.clone()),
        };
        futures.push(async move {
            if c == core.id() {
                search::search_here(core, call).await
            } else {
                core.call(c, call).await
            }
        });
    }
    let mut lists = Vec::with_capacity(futures.len());
    for share in futures::future::join_all(futures).await {
        match share {
            Ok(s) => lists.push(s.found),
            // A graph still loading: no semantic hit from it.
            Err(ApiError::Unavailable(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(search::merge(lists, 1)
        .into_iter()
        .next()
        .map(|f| (f.key, 1.0 - f64::from(def.metric.reported(f.distance)))))
}

// ---- stats, delete, clear -------------------------------------------------

/// `GET /cache/stats`.
pub fn stats(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let cfg = settings(core);
    let snaps = core.node().shard_snapshots();
    let sum = |f: fn(&crate::obs::counters::ShardSnapshot) -> u64| snaps.iter().map(f).sum::<u64>();
    let (exact, semantic, misses) = (
        sum(|s| s.cache_hits_exact),
        sum(|s| s.cache_hits_semantic),
        sum(|s| s.cache_misses),
    );
    let lookups = exact + semantic + misses;
    let out = json!({
        "entries": sum(|s| s.cache_entries),
        "bytes": sum(|s| s.cache_bytes),
        "hits": {"exact": exact, "semantic": semantic, "total": exact + semantic},
        "misses": misses,
        "hit_rate": if lookups == 0 { 0.0 } else { (exact + semantic) as f64 / lookups as f64 },
        "evictions": sum(|s| s.cache_evictions),
        "expirations": sum(|s| s.cache_expirations),
        "max_entries": cfg.max_entries,
        "max_bytes": cfg.max_bytes,
        "dimension": cfg.dimension,
        "similarity_threshold": cfg.similarity_threshold,
        "default_ttl_seconds": cfg.default_ttl_seconds,
    });
    resp.json(200, out.to_string().as_bytes());
    Ok(())
}

/// `DELETE /cache/entry` `{"prompt", "params"?}` (admin).
pub async fn delete_entry(
    core: &Core,
    body: &[u8],
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    require_enabled(core)?;
    let m = crate::http::body::object(body, &["prompt", "params"])?;
    let prompt = prompt_of(&m)?;
    let (canonical, _) = params_of(&m)?;
    let key = identity(&prompt, &canonical);
    let deleted = crate::entity::http::delete_document(core, &key).await?;
    resp.json(
        200,
        json!({"deleted": deleted, "key": key})
            .to_string()
            .as_bytes(),
    );
    Ok(())
}

/// Deletes every entry a core owns.
#[derive(Clone)]
struct ClearShare;

impl Rpc<Core> for ClearShare {
    type Answer = u64;
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<u64> {
        let core = core.clone();
        Served::Later(Box::pin(async move { clear_here(&core).await }))
    }
}

/// This core's keys of the table after `after`, at most [`SCAN_CHUNK`],
/// with `(bytes, expires_ms)`: a range read, on a lane.
async fn owned_chunk(
    core: &Core,
    after: Option<String>,
) -> Result<Vec<(String, u64, u64)>, ApiError> {
    let node = core.node().clone();
    let (me, cores) = (core.id(), core.cores());
    core.blocking_background(Work::Build, move || {
        let mut from = match &after {
            Some(k) => k.clone().into_bytes(),
            None => format!("{TABLE}:").into_bytes(),
        };
        if after.is_some() {
            from.push(0);
        }
        let to = format!("{TABLE};");
        let mut out = Vec::new();
        node.storage
            .scan(Family::Entities, &from, to.as_bytes(), false, |k, v| {
                if cores == 1 || owner_of(k, cores) == me {
                    let key = String::from_utf8_lossy(k).into_owned();
                    out.push((key, v.len() as u64, super::maintain::expires_of(v)));
                }
                out.len() < SCAN_CHUNK
            })
            .map(|()| out)
    })
    .await?
    .map_err(ApiError::from)
}

async fn clear_here(core: &Core) -> Result<u64, ApiError> {
    let mut deleted = 0u64;
    loop {
        // Deleted keys are gone from the next read: always start over.
        let chunk = owned_chunk(core, None).await?;
        if chunk.is_empty() {
            return Ok(deleted);
        }
        let keys: Vec<Rc<str>> = chunk.iter().map(|c| Rc::from(c.0.as_str())).collect();
        for part in keys.chunks(DELETE_STEP) {
            deleted += delete_owned(core, part).await?;
        }
    }
}

/// Deletes entries this core owns through the write pipeline: all staged
/// first (so they share group commits), then awaited. Returns how many
/// existed; one that did not is dropped from the bookkeeping. A key with a
/// write still in flight is skipped: the bookkeeping (updated at commit)
/// does not know that write yet, and it must not be undone.
async fn delete_owned(core: &Core, keys: &[Rc<str>]) -> Result<u64, ApiError> {
    let mut pending = Vec::with_capacity(keys.len());
    let mut refused = None;
    for key in keys {
        if let Some(owned) = core.own(&**key) {
            if crate::entity::write::is_pending(core, &owned) {
                continue;
            }
            match crate::entity::write::stage(core, owned, None) {
                Ok(p) => pending.push((key, p)),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
    }
    let mut existed = 0;
    for (key, p) in pending {
        if p.durable().await? {
            existed += 1;
        } else {
            core.cache().lru.borrow_mut().removed(key);
        }
    }
    match refused {
        Some(e) => Err(e),
        None => Ok(existed),
    }
}

/// `POST /cache/clear` (admin): `{"deleted": n}`.
pub async fn clear(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let mut futures = Vec::with_capacity(core.cores());
    for c in 0..core.cores() {
        futures.push(async move {
            if c == core.id() {
                clear_here(core).await
            } else {
                core.call(c, ClearShare).await
            }
        });
    }
    let mut deleted = 0;
    for n in futures::future::join_all(futures).await {
        deleted += n?;
    }
    resp.json(200, json!({"deleted": deleted}).to_string().as_bytes());
    Ok(())
}

// ---- bookkeeping, eviction, expiry ----------------------------------------

/// Publishes this core's entry count and bytes (gauges merged by `/stats`,
/// `/metrics` and `/cache/stats`).
pub fn publish_gauges(core: &Core) {
    let lru = core.cache().lru.borrow();
    set(&core.counters().cache_entries, lru.len());
    set(&core.counters().cache_bytes, lru.bytes());
}

/// This core's share of the caps.
fn caps(core: &Core) -> (u64, u64) {
    let cfg = settings(core);
    let n = core.cores() as u64;
    ((cfg.max_entries / n).max(1), (cfg.max_bytes / n).max(1))
}

/// Whether this core holds more than its share.
pub fn over_cap(core: &Core) -> bool {
    let (entries, bytes) = caps(core);
    let lru = core.cache().lru.borrow();
    lru.len() > entries || lru.bytes() > bytes
}

/// Starts this core's eviction task unless one runs: it deletes the least
/// recently used entries through the write pipeline until the core is
/// within its share, yielding between steps.
pub fn evict(core: &Core) {
    let local = core.cache();
    if local.evicting.replace(true) {
        return;
    }
    let Some(me) = core.rc() else {
        local.evicting.set(false);
        return;
    };
    glommio::spawn_local(async move {
        // glommio runs a spawned task at once, and this one is spawned
        // from inside a write's after-commit hook: let that write finish.
        futures_lite::future::yield_now().await;
        while over_cap(&me) {
            let (cap, _) = caps(&me);
            let len = me.cache().lru.borrow().len();
            let n = (len.saturating_sub(cap) as usize).clamp(1, DELETE_STEP);
            let keys = me.cache().lru.borrow().oldest_n(n);
            if keys.is_empty() {
                break;
            }
            match delete_owned(&me, &keys).await {
                Ok(n) => bump(&me.counters().cache_evictions, n),
                Err(e) => {
                    me.report_failure("cache_eviction", None, e.to_string());
                    break;
                }
            }
            publish_gauges(&me);
            glommio::executor().yield_if_needed().await;
        }
        me.cache().evicting.set(false);
    })
    .detach();
}

/// Deletes up to [`SWEEP_STEP`] entries expired at `now`; returns how many
/// were due.
async fn sweep_step(core: &Core, now: u64) -> Result<usize, ApiError> {
    let due = core.cache().lru.borrow().expired(now, SWEEP_STEP);
    let n = due.len();
    if n > 0 {
        let expired = delete_owned(core, &due).await?;
        bump(&core.counters().cache_expirations, expired);
        publish_gauges(core);
    }
    Ok(n)
}

/// Loads this core's bookkeeping from storage (start-up), in chunks.
async fn load(core: &Core) -> Result<(), ApiError> {
    let mut after = None;
    loop {
        let chunk = owned_chunk(core, after.take()).await?;
        let full = chunk.len() == SCAN_CHUNK;
        {
            let mut lru = core.cache().lru.borrow_mut();
            for (key, bytes, expires) in &chunk {
                lru.loaded(key, *bytes, *expires);
            }
        }
        after = chunk.last().map(|c| c.0.clone());
        if !full {
            break;
        }
    }
    publish_gauges(core);
    Ok(())
}

/// Each core's cache task: loads its bookkeeping once the feature is on,
/// then expires entries every [`SWEEP_EVERY`] and evicts past the caps.
/// Core 0 also creates the vector index when the feature is on.
pub async fn sweep_loop(core: Rc<Core>, shutdown: ShutdownSignal, every: Duration) {
    loop {
        if shutdown.sleep(every).await {
            return;
        }
        if !core.settings().features.semantic_cache {
            continue;
        }
        let local = core.cache();
        if !local.loaded.get() {
            if core.id() == 0 {
                if let Err(e) = ensure_index(&core).await {
                    tracing::warn!("semantic cache: {e}");
                }
            }
            match load(&core).await {
                Ok(()) => {
                    local.loaded.set(true);
                    core.node().failures.clear("cache_load", None);
                }
                Err(e) => {
                    core.report_failure("cache_load", None, e.to_string());
                    continue;
                }
            }
        }
        loop {
            match sweep_step(&core, now_ms()).await {
                Ok(n) if n == SWEEP_STEP => glommio::executor().yield_if_needed().await,
                Ok(_) => {
                    core.node().failures.clear("cache_expiry", None);
                    break;
                }
                Err(e) => {
                    core.report_failure("cache_expiry", None, e.to_string());
                    break;
                }
            }
        }
        if over_cap(&core) {
            evict(&core);
        }
    }
}

/// Starts the cache task on a core.
pub fn start(core: &Rc<Core>, shutdown: &ShutdownSignal, faults: &Faults) {
    let every = faults.cache_sweep_interval.unwrap_or(SWEEP_EVERY);
    glommio::spawn_local(sweep_loop(core.clone(), shutdown.clone(), every)).detach();
}
