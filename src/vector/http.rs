//! The `/vector` routes: index management, batch insert, search, delete by
//! filter, dumps. Every route answers 503 `feature_disabled` while
//! `features.vectors` is off (indexes are still maintained by writes, so
//! turning it back on finds them current).
//!
//! Limits (400 beyond them): `k` ≤ [`MAX_K`], `ef` ≤ [`MAX_EF`],
//! `dimension` ≤ [`MAX_DIMENSION`], `m` in [`MIN_M`]..=[`MAX_M`],
//! `ef_construction` ≤ [`MAX_EF_CONSTRUCTION`], `batch_insert` and `pks`
//! ≤ [`MAX_BATCH_ITEMS`] items; bodies are bounded by
//! `server.max_request_size_mb`.

use super::maintain::{self, parse_components};
use super::search::{self, ExactShare, Found, SearchShare, EXACT_MAX};
use super::{check_field, Created, Metric, VectorDef};
use super::{
    MAX_BATCH_ITEMS, MAX_DIMENSION, MAX_EF, MAX_EF_CONSTRUCTION, MAX_INDEXES, MAX_K, MAX_M, MIN_M,
};
use crate::entity::write_json_str;
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::mesh::{Rpc, Served};
use crate::node::Core;
use crate::query::Filter;
use crate::storage::Family;
use serde_json::{json, Map, Value};
use std::rc::Rc;
use std::sync::Arc;
use themis_io::{Method, Request, Response};

const fn route(
    id: RouteId,
    methods: &'static [Method],
    path: &'static str,
    role: Role,
    tables: Tables,
) -> Route {
    Route {
        id,
        methods,
        path: PathPattern::Exact(path),
        role,
        tables,
        label: "/vector",
    }
}

/// The vector routes.
pub const ROUTES: &[Route] = &[
    route(
        RouteId::VectorSearch,
        &[Method::Post],
        "/vector/search",
        Role::Read,
        Tables::BodyTable,
    ),
    route(
        RouteId::VectorBatchInsert,
        &[Method::Post],
        "/vector/batch_insert",
        Role::Write,
        Tables::BodyTable,
    ),
    route(
        RouteId::VectorDeleteByFilter,
        &[Method::Delete],
        "/vector/by-filter",
        Role::Write,
        Tables::BodyTable,
    ),
    route(
        RouteId::VectorIndexCreate,
        &[Method::Post],
        "/vector/index/create",
        Role::Admin,
        Tables::BodyTable,
    ),
    route(
        RouteId::VectorIndexDrop,
        &[Method::Post],
        "/vector/index/drop",
        Role::Admin,
        Tables::BodyTable,
    ),
    route(
        RouteId::VectorIndexStats,
        &[Method::Get, Method::Head],
        "/vector/index/stats",
        Role::Read,
        Tables::None,
    ),
    route(
        RouteId::VectorIndexConfigGet,
        &[Method::Get, Method::Head],
        "/vector/index/config",
        Role::Read,
        Tables::All,
    ),
    route(
        RouteId::VectorIndexConfigSet,
        &[Method::Put],
        "/vector/index/config",
        Role::Admin,
        Tables::All,
    ),
    route(
        RouteId::VectorIndexSave,
        &[Method::Post],
        "/vector/index/save",
        Role::Admin,
        Tables::All,
    ),
    route(
        RouteId::VectorIndexLoad,
        &[Method::Post],
        "/vector/index/load",
        Role::Admin,
        Tables::All,
    ),
];

/// Fails with 503 unless `features.vectors` is on.
pub fn require_enabled(core: &Core) -> Result<(), ApiError> {
    if core.settings().features.vectors {
        Ok(())
    } else {
        Err(ApiError::FeatureDisabled {
            flag: "features.vectors",
            enable: r#"{"features": {"vectors": true}}"#,
        })
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

fn table_of(m: &Map<String, Value>) -> Result<String, ApiError> {
    match m.get("table") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains(':') && t.len() <= 512 => {
            Ok(t.clone())
        }
        Some(v) => Err(bad(format!(
            "table: must be a non-empty string without ':', got {v}"
        ))),
        None => Err(bad("table: required")),
    }
}

fn field_of(m: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match m.get("field") {
        None => Ok(None),
        Some(Value::String(f)) => {
            check_field(f).map_err(|e| bad(format!("field: {e}")))?;
            Ok(Some(f.clone()))
        }
        Some(v) => Err(bad(format!("field: must be a string, got {v}"))),
    }
}

fn int_in(
    m: &Map<String, Value>,
    name: &str,
    min: usize,
    max: usize,
) -> Result<Option<usize>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (min as u64..=max as u64).contains(&n) => Ok(Some(n as usize)),
            _ => Err(bad(format!(
                "{name}: must be an integer in {min}..={max}, got {v}"
            ))),
        },
    }
}

/// The index a request names: `table` and `field`, or the table's only
/// index (404 when there is none, 400 when `field` is needed).
fn find_index(core: &Core, table: &str, field: Option<&str>) -> Result<Arc<VectorDef>, ApiError> {
    let catalog = core.vector().catalog();
    if let Some(f) = field {
        return catalog
            .find(table, f)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no vector index on {table}.{f}")));
    }
    let mut all = catalog.for_table(table);
    match (all.next(), all.next()) {
        (Some(d), None) => Ok(d.clone()),
        (None, _) => Err(ApiError::NotFound(format!(
            "no vector index on table {table}"
        ))),
        (Some(_), Some(_)) => Err(bad(format!(
            "table {table} has several vector indexes: give field"
        ))),
    }
}

fn describe(d: &VectorDef) -> Value {
    json!({
        "id": d.id, "table": d.table, "field": d.field, "dimension": d.dimension,
        "metric": d.metric.name(), "m": d.m, "ef_construction": d.ef_construction,
        "ef_search": d.ef_search,
    })
}

fn reply(resp: &mut Response<'_>, status: u16, v: &Value) {
    resp.json(status, &serde_json::to_vec(v).unwrap_or_default());
}

/// Runs `call` on every core (this one directly) and collects the answers
/// in core order.
async fn on_every_core<R, F, Fut>(
    core: &Core,
    make: impl Fn() -> R,
    here: F,
) -> Result<Vec<R::Answer>, ApiError>
where
    R: Rpc<Core>,
    F: Fn(R) -> Fut,
    Fut: std::future::Future<Output = Result<R::Answer, ApiError>>,
{
    let mut futures = Vec::with_capacity(core.cores());
    let here = &here;
    for c in 0..core.cores() {
        let call = make();
        futures.push(async move {
            if c == core.id() {
                here(call).await
            } else {
                core.call(c, call).await
            }
        });
    }
    futures::future::join_all(futures)
        .await
        .into_iter()
        .collect()
}

// ---- create / drop ----------------------------------------------------

/// `POST /vector/index/create`.
pub async fn create(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let m = crate::http::body::object(
        body,
        &[
            "table",
            "field",
            "dimension",
            "metric",
            "m",
            "ef_construction",
            "ef_search",
        ],
    )?;
    let table = table_of(&m)?;
    let field = field_of(&m)?.unwrap_or_else(|| "embedding".into());
    let defaults = core.settings().config.vector_index.clone();
    let dimension =
        int_in(&m, "dimension", 1, MAX_DIMENSION)?.unwrap_or(defaults.dimension as usize);
    let metric = match m.get("metric") {
        None => Metric::L2,
        Some(Value::String(s)) => Metric::parse(s).ok_or_else(|| {
            bad(format!(
                "metric: must be \"l2\", \"cosine\" or \"dot\", got {s:?}"
            ))
        })?,
        Some(v) => return Err(bad(format!("metric: must be a string, got {v}"))),
    };
    let mm = int_in(&m, "m", MIN_M, MAX_M)?.unwrap_or(defaults.hnsw_m as usize);
    let efc = int_in(&m, "ef_construction", 1, MAX_EF_CONSTRUCTION)?
        .unwrap_or(defaults.hnsw_ef_construction as usize);
    let efs = int_in(&m, "ef_search", 1, MAX_EF)?.unwrap_or(DEFAULT_EF_SEARCH);
    if !(MIN_M..=MAX_M).contains(&mm) || dimension > MAX_DIMENSION {
        return Err(bad(format!(
            "the configured defaults are out of range (m {mm}, dimension {dimension})"
        )));
    }
    let want = VectorDef::new(0, &table, &field, dimension, metric, mm, efc, efs);
    let node = core.node().clone();
    let created = core
        .blocking(crate::node::blocking::Work::Admin, move || {
            node.vector
                .create(&node.storage, want.clone())
                .map(|c| (c, want))
        })
        .await??;
    match created {
        (Created::TooMany, _) => Err(ApiError::Conflict(format!(
            "the server has {MAX_INDEXES} vector indexes, the most it may have; drop one first"
        ))),
        (Created::Existing(d), want) => {
            if !d.same_params(&want) {
                return Err(ApiError::Conflict(format!(
                    "a vector index on {}.{} exists with other parameters ({}); drop it first",
                    d.table,
                    d.field,
                    describe(&d)
                )));
            }
            reply(resp, 200, &json!({"created": false, "index": describe(&d)}));
            Ok(())
        }
        (Created::New(def), _) => {
            tracing::info!(index = def.id, table = %def.table, field = %def.field, "vector index created; building");
            super::load::spawn(core, def.id, true);
            core.call_others(super::load::StartLoad {
                id: def.id,
                backfill: true,
            })
            .await?;
            reply(
                resp,
                202,
                &json!({"created": true, "index": describe(&def)}),
            );
            Ok(())
        }
    }
}

/// Default `ef_search` of a new index.
pub const DEFAULT_EF_SEARCH: usize = 64;

/// Forget this core's graph of a dropped index.
#[derive(Clone)]
struct DropShare(u32);

impl Rpc<Core> for DropShare {
    type Answer = ();
    fn serve(self, core: &Rc<Core>) -> Served<()> {
        core.vector().forget(self.0);
        Served::Now(Ok(()))
    }
}

/// `POST /vector/index/drop`.
pub async fn drop(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let m = crate::http::body::object(body, &["table", "field"])?;
    let table = table_of(&m)?;
    let def = find_index(core, &table, field_of(&m)?.as_deref())?;
    let (node, id) = (core.node().clone(), def.id);
    core.blocking(crate::node::blocking::Work::Admin, move || {
        node.vector.drop_def(&node.storage, id)
    })
    .await??;
    core.vector().forget(id);
    core.call_others(DropShare(id)).await?;
    let (node, from, to) = (core.node().clone(), def.prefix(), def.end());
    core.blocking(crate::node::blocking::Work::Admin, move || {
        let mut b = node.storage.batch();
        b.delete_range(Family::Vectors, &from, &to)?;
        node.storage.commit(b)?;
        node.storage
            .compact_range(Family::Vectors, Some(&from), Some(&to));
        Ok::<_, crate::storage::StorageError>(())
    })
    .await??;
    tracing::info!(index = id, table = %def.table, field = %def.field, "vector index dropped");
    reply(
        resp,
        200,
        &json!({"dropped": true, "table": def.table, "field": def.field}),
    );
    Ok(())
}

// ---- stats / config ----------------------------------------------------

/// One core's figures of every index.
#[derive(Clone)]
struct StatsShare;

impl Rpc<Core> for StatsShare {
    type Answer = Vec<(u32, Value)>;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        Served::Now(Ok(stats_here(core)))
    }
}

fn stats_here(core: &Core) -> Vec<(u32, Value)> {
    core.vector()
        .catalog()
        .indexes
        .iter()
        .map(|d| {
            let v = match core.vector().existing_graph(d.id) {
                Some(g) => g.stats(),
                None => json!({"core": core.id(), "state": "loading", "vectors": 0}),
            };
            (d.id, v)
        })
        .collect()
}

/// `GET /vector/index/stats[?table=T]`: per index, per core.
pub async fn stats(
    core: &Core,
    req: &Request<'_>,
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    require_enabled(core)?;
    let mut table = None;
    for (k, v) in req.query_pairs() {
        match k {
            "table" => table = Some(crate::entity::key::decode_query_value(v)?),
            _ => {
                return Err(bad(format!(
                    "unknown query parameter {k:?} (allowed: table)"
                )))
            }
        }
    }
    let per_core = on_every_core(
        core,
        || StatsShare,
        |_| async { Ok::<_, ApiError>(stats_here(core)) },
    )
    .await?;
    let catalog = core.vector().catalog();
    let mut list = Vec::new();
    for d in catalog.indexes.iter() {
        if table.as_deref().is_some_and(|t| t != d.table) {
            continue;
        }
        let cores: Vec<&Value> = per_core
            .iter()
            .flat_map(|c| c.iter().filter(|(id, _)| *id == d.id).map(|(_, v)| v))
            .collect();
        let sum = |f: &str| {
            cores
                .iter()
                .map(|c| c[f].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        let ready = cores.iter().all(|c| c["state"] == "ready") && cores.len() == core.cores();
        let mut v = describe(d);
        v["state"] = if ready { "ready" } else { "loading" }.into();
        v["vectors"] = sum("vectors").into();
        v["deleted"] = sum("deleted").into();
        v["pending_inserts"] = sum("pending_inserts").into();
        v["memory_bytes_estimate"] = sum("memory_bytes_estimate").into();
        v["cores"] = json!(cores);
        list.push(v);
    }
    if table.is_some() && list.is_empty() {
        return Err(ApiError::NotFound("no vector index on that table".into()));
    }
    reply(resp, 200, &json!({"indexes": list, "count": list.len()}));
    Ok(())
}

fn config_json(core: &Core) -> Value {
    let c = &core.settings().config.vector_index;
    let indexes: Vec<Value> = core
        .vector()
        .catalog()
        .indexes
        .iter()
        .map(|d| json!({"table": d.table, "field": d.field, "ef_search": d.ef_search}))
        .collect();
    json!({
        "defaults": {
            "engine": c.engine, "hnsw_m": c.hnsw_m, "hnsw_ef_construction": c.hnsw_ef_construction,
            "dimension": c.dimension, "use_gpu": c.use_gpu, "ef_search": DEFAULT_EF_SEARCH,
        },
        "indexes": indexes,
        "limits": {
            "max_k": MAX_K, "max_ef": MAX_EF, "max_dimension": MAX_DIMENSION, "m": [MIN_M, MAX_M],
            "max_ef_construction": MAX_EF_CONSTRUCTION, "max_batch_items": MAX_BATCH_ITEMS,
            "max_indexes": MAX_INDEXES,
        },
    })
}

/// `GET /vector/index/config`.
pub fn get_config(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    reply(resp, 200, &config_json(core));
    Ok(())
}

/// `PUT /vector/index/config`: `{"table", "field"?, "ef_search"}` sets an
/// index's default search breadth; `{"hnsw_m"?, "hnsw_ef_construction"?}`
/// change the defaults of new indexes (the `vector_index.*` settings, as
/// `POST /config` would; `vector_index.dimension` is restart-only, as the
/// deployment guide says). Both may be given.
pub async fn put_config(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let m = crate::http::body::object(
        body,
        &[
            "table",
            "field",
            "ef_search",
            "hnsw_m",
            "hnsw_ef_construction",
        ],
    )?;
    let ef = int_in(&m, "ef_search", 1, MAX_EF)?;
    let target = match (m.contains_key("table"), ef) {
        (true, Some(ef)) => Some((
            find_index(core, &table_of(&m)?, field_of(&m)?.as_deref())?,
            ef,
        )),
        (false, None) if !m.contains_key("field") => None,
        _ => return Err(bad("give table (and field) with ef_search")),
    };
    let mut patch = Map::new();
    for (k, min, max) in [
        ("hnsw_m", MIN_M, MAX_M),
        ("hnsw_ef_construction", 1, MAX_EF_CONSTRUCTION),
    ] {
        if let Some(n) = int_in(&m, k, min, max)? {
            patch.insert(k.into(), n.into());
        }
    }
    if target.is_none() && patch.is_empty() {
        return Err(bad(
            "nothing to change: give {table, field?, ef_search} or hnsw_m / hnsw_ef_construction",
        ));
    }
    if !patch.is_empty() {
        core.node()
            .runtime
            .apply_patch(&json!({"vector_index": patch}))
            .map_err(|e| bad(e.join("; ")))?;
    }
    if let Some((def, ef)) = target {
        let node = core.node().clone();
        core.blocking(crate::node::blocking::Work::Admin, move || {
            node.vector.set_ef_search(&node.storage, def.id, ef)
        })
        .await??
        .ok_or_else(|| ApiError::NotFound("the vector index was dropped".into()))?;
    }
    reply(resp, 200, &config_json(core));
    Ok(())
}

// ---- batch insert ------------------------------------------------------

/// Write these entities (owned by the callee) through the write pipeline;
/// the error of each that failed.
struct WriteShare {
    items: Vec<(usize, String, Vec<u8>)>,
}

impl Rpc<Core> for WriteShare {
    type Answer = Vec<(usize, String)>;
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        let core = core.clone();
        Served::Later(Box::pin(
            async move { Ok(write_here(&core, self.items).await) },
        ))
    }
}

async fn write_here(core: &Core, items: Vec<(usize, String, Vec<u8>)>) -> Vec<(usize, String)> {
    // Staged 64 at a time (they join the same groups), then each waited
    // for: every item is answered only once durable.
    let mut failed = Vec::new();
    let mut staged = Vec::with_capacity(64);
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        for (i, key, doc) in items.by_ref().take(64) {
            let r = match core.own(key.as_str()) {
                Some(owned) => crate::entity::write::stage(core, owned, Some(&doc)),
                None => Err(ApiError::Internal(
                    "write sent to a core that does not own the key",
                )),
            };
            match r {
                Ok(p) => staged.push((i, p)),
                Err(e) => failed.push((i, e.to_string())),
            }
        }
        for (i, p) in staged.drain(..) {
            if let Err(e) = p.durable().await {
                failed.push((i, e.to_string()));
            }
        }
        glommio::executor().yield_now().await;
    }
    failed.sort_by_key(|(i, _)| *i);
    failed
}

/// `POST /vector/batch_insert`: `{"table", "field"?, "items": [{"pk",
/// "vector", ...fields}]}`; each item becomes entity `table:pk` with its
/// fields and the vector in the index's field. Bad items are reported by
/// position; the others are stored.
pub async fn batch_insert(
    core: &Core,
    body: &[u8],
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    require_enabled(core)?;
    let m = crate::http::body::object(body, &["table", "field", "items"])?;
    let table = table_of(&m)?;
    let def = find_index(core, &table, field_of(&m)?.as_deref())?;
    let items = match m.get("items") {
        Some(Value::Array(a)) if a.len() <= MAX_BATCH_ITEMS => a,
        Some(Value::Array(a)) => {
            return Err(bad(format!(
                "items: {} items, at most {MAX_BATCH_ITEMS}",
                a.len()
            )))
        }
        _ => return Err(bad("items: required, an array of {pk, vector, ...fields}")),
    };
    let mut failures: Vec<(usize, String)> = Vec::new();
    let mut by_owner: Vec<Vec<(usize, String, Vec<u8>)>> = vec![Vec::new(); core.cores()];
    let mut pks: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match prepare_item(&def, item) {
            Ok((pk, key, doc)) => {
                by_owner[core.owner_of(key.as_bytes())].push((i, key, doc));
                pks.push(pk);
            }
            Err(e) => {
                pks.push(match item.get("pk") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                });
                failures.push((i, e));
            }
        }
    }
    let mut futures = Vec::new();
    for (owner, share) in by_owner.into_iter().enumerate() {
        if share.is_empty() {
            continue;
        }
        futures.push(async move {
            if owner == core.id() {
                Ok(write_here(core, share).await)
            } else {
                core.call(owner, WriteShare { items: share }).await
            }
        });
    }
    for r in futures::future::join_all(futures).await {
        failures.extend(r?);
    }
    failures.sort_by_key(|(i, _)| *i);
    let failed: Vec<Value> = failures
        .iter()
        .map(|(i, e)| json!({"index": i, "pk": pks.get(*i), "error": e}))
        .collect();
    let v = json!({
        "table": table,
        "field": def.field,
        "inserted": items.len() - failures.len(),
        "failed": failures.len(),
        "failures": failed,
    });
    reply(resp, 200, &v);
    Ok(())
}

/// An item's pk, entity key and document.
fn prepare_item(def: &VectorDef, item: &Value) -> Result<(String, String, Vec<u8>), String> {
    let Value::Object(obj) = item else {
        return Err("an item must be an object {pk, vector, ...fields}".into());
    };
    let pk = match obj.get("pk") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(v) => return Err(format!("pk: must be a string or number, got {v}")),
        None => return Err("pk: required".into()),
    };
    let key = format!("{}:{pk}", def.table);
    crate::entity::key::parse_key(&key).map_err(|e| format!("pk: {e}"))?;
    let vector = match obj.get("vector") {
        Some(Value::Array(a)) => parse_components(a.iter().map(Value::as_f64), a.len(), def)
            .map_err(|e| format!("vector: {e}"))?,
        Some(v) => {
            return Err(format!(
                "vector: must be an array of numbers, got {}",
                short(v)
            ))
        }
        None => return Err("vector: required".into()),
    };
    let mut doc = Map::new();
    for (k, v) in obj {
        if k != "pk" && k != "vector" {
            doc.insert(k.clone(), v.clone());
        }
    }
    let components: Vec<Value> = vector.iter().map(|x| json!(x)).collect();
    let mut slot = &mut doc;
    let path = def.path();
    for seg in &path[..path.len() - 1] {
        let next = slot
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(inner) = next else {
            return Err("field path".into());
        };
        slot = inner;
    }
    slot.insert(path[path.len() - 1].clone(), Value::Array(components));
    let bytes = serde_json::to_vec(&Value::Object(doc)).map_err(|e| e.to_string())?;
    Ok((pk, key, bytes))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 64 {
        format!("{}…", s.chars().take(64).collect::<String>())
    } else {
        s
    }
}

// ---- search -------------------------------------------------------------

/// `POST /vector/search`.
pub async fn search(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    const ALLOWED: &[&str] = &[
        "table", "field", "vector", "k", "ef", "filter", "return", "explain",
    ];
    // The vector read straight into numbers when the body is an object
    // and `vector` an array or absent; otherwise the general parse, which
    // gives the errors (see search_body.rs).
    let (m, components) = match super::search_body::parse(body) {
        Some(b) => {
            crate::http::body::only(&b.rest, ALLOWED)?;
            (b.rest, b.vector)
        }
        None => (crate::http::body::object(body, ALLOWED)?, None),
    };
    let table = table_of(&m)?;
    let def = find_index(core, &table, field_of(&m)?.as_deref())?;
    let mut query = match (components, m.get("vector")) {
        (Some(c), _) => parse_components(c.iter().copied(), c.len(), &def)
            .map_err(|e| bad(format!("vector: {e}")))?,
        (None, Some(Value::Array(a))) => {
            parse_components(a.iter().map(Value::as_f64), a.len(), &def)
                .map_err(|e| bad(format!("vector: {e}")))?
        }
        (None, Some(v)) => {
            return Err(bad(format!(
                "vector: must be an array of numbers, got {}",
                short(v)
            )))
        }
        (None, None) => return Err(bad("vector: required")),
    };
    def.metric
        .prepare(&mut query)
        .map_err(|e| bad(format!("vector: {e}")))?;
    let k = int_in(&m, "k", 1, MAX_K)?.unwrap_or(10);
    let ef = int_in(&m, "ef", 1, MAX_EF)?.unwrap_or(def.ef_search).max(k);
    let entities = match m.get("return") {
        None => false,
        Some(Value::String(s)) if s == "keys" => false,
        Some(Value::String(s)) if s == "entities" => true,
        Some(v) => {
            return Err(bad(format!(
                "return: must be \"keys\" or \"entities\", got {v}"
            )))
        }
    };
    let explain = matches!(m.get("explain"), Some(Value::Bool(true)));
    let filter = match m.get("filter") {
        None | Some(Value::Null) => None,
        Some(Value::Object(f)) => Some(parse_filter(&table, f)?),
        Some(v) => {
            return Err(bad(format!(
                "filter: must be an object {{predicates?, range?}}, got {v}"
            )))
        }
    };
    let query: Arc<[f32]> = Arc::from(query);

    // Plan: exact candidates from a secondary index, or the graphs.
    let mut exact: Option<Vec<String>> = None;
    if let Some((q, _)) = &filter {
        exact = candidates(core, q).await?;
    }
    let (shares, mode) = match (&exact, &filter) {
        (Some(keys), Some((_, f))) => {
            let mut by_owner: Vec<Vec<String>> = vec![Vec::new(); core.cores()];
            for k in keys {
                by_owner[core.owner_of(k.as_bytes())].push(k.clone());
            }
            let mut futures = Vec::new();
            for (owner, keys) in by_owner.into_iter().enumerate() {
                let call = ExactShare {
                    def: def.clone(),
                    query: query.clone(),
                    k,
                    keys,
                    filter: f.clone(),
                };
                futures.push(async move {
                    if owner == core.id() {
                        search::exact_here(core, call).await
                    } else {
                        core.call(owner, call).await
                    }
                });
            }
            (futures::future::join_all(futures).await, "exact_candidates")
        }
        _ => {
            let f = filter.as_ref().map(|(_, f)| f.clone());
            let make = || SearchShare {
                def: def.clone(),
                query: query.clone(),
                k,
                ef,
                filter: f.clone(),
            };
            let mut futures = Vec::new();
            for c in 0..core.cores() {
                let call = make();
                futures.push(async move {
                    if c == core.id() {
                        search::search_here(core, call).await
                    } else {
                        core.call(c, call).await
                    }
                });
            }
            let mode = if f.is_some() { "hnsw_filtered" } else { "hnsw" };
            (futures::future::join_all(futures).await, mode)
        }
    };
    let mut lists = Vec::with_capacity(shares.len());
    let mut per_core = Vec::new();
    for s in shares {
        let s = s?;
        per_core.push(json!({"mode": s.mode, "checked": s.checked, "found": s.found.len()}));
        lists.push(s.found);
    }
    let found = search::merge(lists, k);
    let out = render(core, &def, &table, found, k, entities, explain.then(|| {
        json!({"mode": mode, "ef": ef, "k": k, "cores": core.cores(), "metric": def.metric.name(),
               "exact_candidates": exact.as_ref().map(Vec::len), "per_core": per_core})
    }))?;
    resp.json(200, &out);
    Ok(())
}

/// `filter` → the `/query` parser's conditions (same rules, same errors).
fn parse_filter(
    table: &str,
    f: &Map<String, Value>,
) -> Result<(crate::query::Query, Arc<Filter>), ApiError> {
    let mut q = Map::new();
    q.insert("table".into(), Value::String(table.to_string()));
    for (k, v) in f {
        if k != "predicates" && k != "range" {
            return Err(bad(format!(
                "filter: unknown field {k:?} (allowed: predicates, range)"
            )));
        }
        q.insert(k.clone(), v.clone());
    }
    let body = serde_json::to_vec(&Value::Object(q)).unwrap_or_default();
    let query = crate::query::parse(&body).map_err(|e| match e {
        ApiError::BadRequest(m) => bad(format!("filter.{m}")),
        other => other,
    })?;
    let filter = Arc::new(query.filter.clone());
    Ok((query, filter))
}

/// The filter's candidates from the smallest ready secondary index, when
/// there are at most [`EXACT_MAX`].
async fn candidates(core: &Core, q: &crate::query::Query) -> Result<Option<Vec<String>>, ApiError> {
    use crate::query::plan::{self, Probe};
    let catalog = core.index().catalog();
    let node = core.node().clone();
    match plan::probe(&node.storage, &catalog, q)? {
        Probe::Small { keys, .. } => Ok(Some(keys)),
        Probe::NoIndex => Ok(None),
        Probe::Large(large) => Ok(core
            .blocking(crate::node::blocking::Work::Scan, move || {
                let (acc, n) = plan::smallest(&node.storage, large, EXACT_MAX + 1)?;
                if n as usize > EXACT_MAX {
                    return Ok::<_, crate::storage::StorageError>(None);
                }
                let e = plan::read_entries(
                    &node.storage,
                    &acc.def,
                    &acc.from,
                    &acc.to,
                    false,
                    EXACT_MAX + 1,
                )?;
                Ok((e.complete && e.keys.len() <= EXACT_MAX).then_some(e.keys))
            })
            .await??),
    }
}

/// The answer: results in order, with entities read when asked.
fn render(
    core: &Core,
    def: &VectorDef,
    table: &str,
    found: Vec<Found>,
    k: usize,
    entities: bool,
    explain: Option<Value>,
) -> Result<Vec<u8>, ApiError> {
    let mut docs: Vec<Option<Vec<u8>>> = vec![None; found.len()];
    if entities {
        let refs: Vec<&[u8]> = found.iter().map(|f| f.key.as_bytes()).collect();
        core.node().storage.with_entities(&refs, |i, v| {
            docs[i] = v.map(<[u8]>::to_vec);
        })?;
    }
    let mut out = Vec::with_capacity(64 + found.len() * 64);
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"table\":");
    write_json_str(&mut out, table);
    out.extend_from_slice(b",\"field\":");
    write_json_str(&mut out, &def.field);
    out.extend_from_slice(b",\"results\":[");
    let mut count = 0;
    for (f, doc) in found.iter().zip(&docs) {
        if entities && doc.is_none() {
            continue; // deleted since: its vector is gone too
        }
        if count > 0 {
            out.push(b',');
        }
        count += 1;
        out.extend_from_slice(b"{\"key\":");
        write_json_str(&mut out, &f.key);
        out.extend_from_slice(b",\"pk\":");
        write_json_str(&mut out, f.key.split_once(':').map_or("", |(_, pk)| pk));
        out.extend_from_slice(b",\"distance\":");
        // f32's shortest form (an f64 rendering would add noise digits).
        let d = def.metric.reported(f.distance);
        if d.is_finite() {
            let _ = std::io::Write::write_fmt(&mut out, format_args!("{d}"));
        } else {
            out.extend_from_slice(b"null");
        }
        if let Some(doc) = doc {
            out.extend_from_slice(b",\"entity\":");
            out.extend_from_slice(doc);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"k\":");
    out.extend_from_slice(num.format(k).as_bytes());
    out.extend_from_slice(b",\"count\":");
    out.extend_from_slice(num.format(count).as_bytes());
    if let Some(e) = explain {
        out.extend_from_slice(b",\"explain\":");
        let _ = serde_json::to_writer(&mut out, &e);
    }
    out.push(b'}');
    Ok(out)
}

// ---- delete by filter ----------------------------------------------------

/// Which vectors `DELETE /vector/by-filter` removes.
#[derive(Clone)]
enum Selector {
    Pks(Arc<Vec<String>>),
    Prefix(String),
    Filter(Arc<Filter>),
}

/// Remove the selected vectors this core owns.
#[derive(Clone)]
struct DeleteShare {
    def: Arc<VectorDef>,
    selector: Selector,
}

impl Rpc<Core> for DeleteShare {
    type Answer = u64;
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<u64> {
        let core = core.clone();
        Served::Later(Box::pin(async move { delete_here(&core, self).await }))
    }
}

async fn delete_here(core: &Core, s: DeleteShare) -> Result<u64, ApiError> {
    let (me, cores) = (core.id(), core.cores());
    let keys: Vec<String> = match &s.selector {
        Selector::Pks(keys) => keys
            .iter()
            .filter(|k| core.owner_of(k.as_bytes()) == me)
            .cloned()
            .collect(),
        _ => {
            let (node, def, sel) = (core.node().clone(), s.def.clone(), s.selector.clone());
            core.blocking(crate::node::blocking::Work::Scan, move || {
                let mut from = def.prefix().to_vec();
                if let Selector::Prefix(p) = &sel {
                    from.extend_from_slice(def.table.as_bytes());
                    from.push(b':');
                    from.extend_from_slice(p.as_bytes());
                }
                let to = match &sel {
                    Selector::Prefix(_) => prefix_end(&from),
                    _ => def.end().to_vec(),
                };
                let mut keys = Vec::new();
                node.storage
                    .scan(Family::Vectors, &from, &to, false, |k, _| {
                        let key = &k[4..];
                        if cores <= 1 || crate::mesh::owner_of(key, cores) == me {
                            if let Ok(key) = std::str::from_utf8(key) {
                                keys.push(key.to_string());
                            }
                        }
                        true
                    })?;
                Ok::<_, crate::storage::StorageError>(keys)
            })
            .await??
        }
    };
    let mut deleted = 0u64;
    let storage = &core.node().storage;
    for chunk in keys.chunks(256) {
        let mut batch = storage.batch();
        let mut gone = Vec::new();
        {
            let mut scratch = core.query().check_scratch().borrow_mut();
            for key in chunk {
                let entry = s.def.entry(key);
                if !storage.get_with(Family::Vectors, &entry, |v| v.is_some())? {
                    continue;
                }
                if let Selector::Filter(f) = &s.selector {
                    let matches = storage.with_entity(key.as_bytes(), |v| {
                        v.is_some_and(|v| f.check(v, &mut scratch).is_some())
                    })?;
                    if !matches {
                        continue;
                    }
                }
                batch.delete(Family::Vectors, &entry)?;
                gone.push(key.clone());
            }
        }
        if gone.is_empty() {
            continue;
        }
        storage.commit(batch)?;
        deleted += gone.len() as u64;
        let staged = gone
            .into_iter()
            .map(|key| maintain::Staged {
                index: s.def.id,
                key,
                vector: None,
            })
            .collect();
        maintain::apply(core, staged);
        glommio::executor().yield_now().await;
    }
    Ok(deleted)
}

/// The first key after every key starting with `p`.
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xFF; p.len() + 1]
}

/// `DELETE /vector/by-filter`: `{"table", "field"?}` with one of `pks`,
/// `prefix` (of the pk) or `predicates`/`range`. Removes those entities'
/// vectors; the entities stay.
pub async fn delete_by_filter(
    core: &Core,
    body: &[u8],
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    require_enabled(core)?;
    let m = crate::http::body::object(
        body,
        &["table", "field", "pks", "prefix", "predicates", "range"],
    )?;
    let table = table_of(&m)?;
    let def = find_index(core, &table, field_of(&m)?.as_deref())?;
    let given = ["pks", "prefix", "predicates", "range"]
        .iter()
        .filter(|k| m.contains_key(**k))
        .count();
    let is_filter = m.contains_key("predicates") || m.contains_key("range");
    let selector = if let Some(p) = m.get("pks") {
        if given > 1 {
            return Err(bad("give one of pks, prefix, or predicates/range"));
        }
        let Value::Array(a) = p else {
            return Err(bad("pks: must be an array of strings"));
        };
        if a.len() > MAX_BATCH_ITEMS {
            return Err(bad(format!(
                "pks: {} items, at most {MAX_BATCH_ITEMS}",
                a.len()
            )));
        }
        let mut keys = Vec::with_capacity(a.len());
        for p in a {
            let pk = match p {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                v => {
                    return Err(bad(format!(
                        "pks: every pk must be a string or number, got {v}"
                    )))
                }
            };
            let key = format!("{table}:{pk}");
            crate::entity::key::parse_key(&key)?;
            keys.push(key);
        }
        Selector::Pks(Arc::new(keys))
    } else if let Some(p) = m.get("prefix") {
        if given > 1 {
            return Err(bad("give one of pks, prefix, or predicates/range"));
        }
        match p {
            Value::String(s) if s.len() <= crate::entity::key::MAX_KEY_LEN => {
                Selector::Prefix(s.clone())
            }
            v => {
                return Err(bad(format!(
                    "prefix: must be a string (the start of the pk), got {v}"
                )))
            }
        }
    } else if is_filter {
        let mut f = Map::new();
        for k in ["predicates", "range"] {
            if let Some(v) = m.get(k) {
                f.insert(k.into(), v.clone());
            }
        }
        let (q, filter) = parse_filter(&table, &f)?;
        if q.filter.conds.is_empty() {
            return Err(bad("predicates/range: give at least one condition"));
        }
        Selector::Filter(filter)
    } else {
        return Err(bad("give one of pks, prefix, or predicates/range"));
    };
    let call = DeleteShare {
        def: def.clone(),
        selector,
    };
    let counts = on_every_core(core, || call.clone(), |c| delete_here(core, c)).await?;
    let deleted: u64 = counts.iter().sum();
    reply(
        resp,
        200,
        &json!({"table": table, "field": def.field, "deleted": deleted}),
    );
    Ok(())
}

// ---- save / load ---------------------------------------------------------

/// `POST /vector/index/save`: every core dumps its graphs.
pub async fn save(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let parts = on_every_core(
        core,
        || super::dump::SaveShare,
        |_| super::dump::save_here(core),
    )
    .await?;
    let saved: Vec<Value> = parts.into_iter().flatten().collect();
    let dir = super::dump::directory(core.node());
    reply(resp, 200, &json!({"saved": saved, "directory": dir}));
    Ok(())
}

/// Reload this core's graphs (from a matching dump, else rebuilt).
#[derive(Clone)]
struct LoadShare;

impl Rpc<Core> for LoadShare {
    type Answer = ();
    fn serve(self, core: &Rc<Core>) -> Served<()> {
        reload_here(core);
        Served::Now(Ok(()))
    }
}

fn reload_here(core: &Core) {
    for def in core.vector().catalog().indexes.iter() {
        core.vector().forget(def.id);
        core.vector().graph(core.id(), def);
        super::load::spawn(core, def.id, false);
    }
}

/// `POST /vector/index/load`: every core reloads its graphs; searches
/// answer 503 until they are ready (see `/vector/index/stats`).
pub async fn load(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    on_every_core(
        core,
        || LoadShare,
        |_| async {
            reload_here(core);
            Ok::<_, ApiError>(())
        },
    )
    .await?;
    reply(
        resp,
        202,
        &json!({"loading": true, "directory": super::dump::directory(core.node())}),
    );
    Ok(())
}
