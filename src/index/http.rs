//! `/index/create`, `/index/drop`, `/index/rebuild`, `/index/stats`.

use super::{check_column, Created, IndexDef, IndexState};
use super::{MAX_COLUMNS, MAX_INDEXES_PER_TABLE};
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::node::blocking::Work;
use crate::node::Core;
use crate::storage::{ChangeBatch, Family};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use themis_io::{Method, Request, Response};

/// The index routes (administration; `stats` only reads).
pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::IndexCreate,
        methods: &[Method::Post],
        path: PathPattern::Exact("/index/create"),
        role: Role::Admin,
        tables: Tables::BodyTable,
        label: "/index",
    },
    Route {
        id: RouteId::IndexDrop,
        methods: &[Method::Post],
        path: PathPattern::Exact("/index/drop"),
        role: Role::Admin,
        tables: Tables::BodyTable,
        label: "/index",
    },
    Route {
        id: RouteId::IndexRebuild,
        methods: &[Method::Post],
        path: PathPattern::Exact("/index/rebuild"),
        role: Role::Admin,
        tables: Tables::BodyTable,
        label: "/index",
    },
    Route {
        id: RouteId::IndexStats,
        methods: &[Method::Get, Method::Head],
        path: PathPattern::Exact("/index/stats"),
        role: Role::Read,
        tables: Tables::QueryTable,
        label: "/index",
    },
];

/// `{"table", "column" | "columns", "unique"?}`.
struct Spec {
    table: String,
    columns: Vec<String>,
    unique: bool,
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

fn parse_spec(body: &[u8], allow_unique: bool) -> Result<Spec, ApiError> {
    let m = body_object(body)?;
    for k in m.keys() {
        let ok =
            matches!(k.as_str(), "table" | "column" | "columns") || (allow_unique && k == "unique");
        if !ok {
            return Err(ApiError::BadRequest(format!("unknown field {k:?}")));
        }
    }
    let table = match m.get("table") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains(':') && t.len() <= 512 => t.clone(),
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "table: must be a non-empty string without ':', got {v}"
            )))
        }
        None => return Err(ApiError::BadRequest("table: required".into())),
    };
    let columns: Vec<String> = match (m.get("column"), m.get("columns")) {
        (Some(Value::String(c)), None) => vec![c.clone()],
        (None, Some(Value::Array(cs))) if !cs.is_empty() && cs.len() <= MAX_COLUMNS => cs
            .iter()
            .map(|c| {
                c.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::BadRequest(format!("columns: every column must be a string, got {c}"))
                })
            })
            .collect::<Result<_, _>>()?,
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either column or columns, not both".into(),
            ))
        }
        (Some(v), None) => {
            return Err(ApiError::BadRequest(format!(
                "column: must be a string, got {v}"
            )))
        }
        (None, Some(_)) => {
            return Err(ApiError::BadRequest(format!(
                "columns: must be an array of 1..={MAX_COLUMNS} strings"
            )))
        }
        (None, None) => return Err(ApiError::BadRequest("column: required".into())),
    };
    for c in &columns {
        check_column(c).map_err(|e| ApiError::BadRequest(format!("columns: {e}")))?;
    }
    let unique = match m.get("unique") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "unique: must be a boolean, got {v}"
            )))
        }
    };
    Ok(Spec {
        table,
        columns,
        unique,
    })
}

fn describe(core: &Core, d: &IndexDef) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    if let Some(p) = core.node().index.builds.get(d.id) {
        v["build"] = json!({
            "entities_processed": p.entities_processed.load(Ordering::Relaxed),
            "cores_done": p.cores_done.load(Ordering::Relaxed),
            "split": p.split(),
            "cores": core.cores(),
            "elapsed_ms": match p.finished_ms.load(Ordering::Acquire) {
                0 => p.started.elapsed().as_millis() as u64,
                ms => ms,
            },
        });
    }
    v
}

/// Starts building index `id` on every core (the other cores are reached
/// in the background, retried until they answer): each scans one key range
/// of the table when it is large enough to split by size, else the keys it
/// owns.
async fn start_build(core: &Core, id: u32) -> Result<(), ApiError> {
    let progress = core.node().index.builds.get_or_start(id);
    let table = core
        .index()
        .catalog()
        .by_id(id)
        .map(|d| d.table.clone())
        .unwrap_or_default();
    let (node, n) = (core.node().clone(), core.cores());
    let ranges = core
        .blocking(Work::Scan, move || {
            let (from, to) = crate::entity::key::table_range(&table);
            node.storage.split_entities(&from, &to, n)
        })
        .await?;
    progress.set_split(ranges.is_some());
    super::build::spawn(
        core,
        id,
        ranges.as_ref().and_then(|r| r.get(core.id()).cloned()),
    );
    super::build::start_on_others(core, id, ranges);
    Ok(())
}

/// Creates a definition, off the reactor.
async fn create_def(core: &Core, spec: Spec) -> Result<Created, ApiError> {
    let node = core.node().clone();
    core.blocking(Work::Admin, move || {
        node.index
            .create(&node.storage, &spec.table, spec.columns, spec.unique)
    })
    .await?
    .map_err(ApiError::from)
}

/// `POST /index/create`.
pub async fn create(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let spec = parse_spec(body, true)?;
    let existing = core
        .node()
        .index
        .catalog
        .current()
        .find(&spec.table, &spec.columns)
        .cloned();
    let unique = spec.unique;
    let table = spec.table.clone();
    let created = match existing {
        Some(d) => Created::Existing(d),
        None => create_def(core, spec).await?,
    };
    match created {
        Created::TooMany => {
            return Err(ApiError::Conflict(format!(
                "table {table} has {MAX_INDEXES_PER_TABLE} indexes, the most a table may have; drop one first"
            )))
        }
        Created::Existing(d) => {
            if d.unique != unique {
                return Err(ApiError::Conflict(format!(
                    "an index on {} {:?} exists with unique={}; drop it first",
                    d.table, d.columns, d.unique
                )));
            }
            let v = json!({"created": false, "index": describe(core, &d)});
            resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
        }
        Created::New(def) => {
            tracing::info!(index = def.id, table = %def.table, columns = ?def.columns, unique = def.unique, "index created; building");
            start_build(core, def.id).await?;
            let v = json!({"created": true, "index": describe(core, &def)});
            resp.json(202, &serde_json::to_vec(&v).unwrap_or_default());
        }
    }
    Ok(())
}

fn find_existing(core: &Core, spec: &Spec) -> Result<std::sync::Arc<IndexDef>, ApiError> {
    core.node()
        .index
        .catalog
        .current()
        .find(&spec.table, &spec.columns)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no index on {} {:?}", spec.table, spec.columns)))
}

/// Deletes an index's entries (its definition is gone already), off the
/// reactor.
async fn delete_entries(core: &Core, def: &IndexDef) -> Result<(), ApiError> {
    let (node, from, to) = (core.node().clone(), def.prefix(), def.end());
    core.blocking(Work::Admin, move || {
        let mut b: ChangeBatch<'_> = node.storage.batch();
        b.delete_range(Family::Indexes, &from, &to)?;
        node.storage.commit(b)?;
        node.storage
            .compact_range(Family::Indexes, Some(&from), Some(&to));
        Ok::<_, crate::storage::StorageError>(())
    })
    .await??;
    Ok(())
}

/// `POST /index/drop`.
pub async fn drop(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let spec = parse_spec(body, false)?;
    let def = find_existing(core, &spec)?;
    let (node, id) = (core.node().clone(), def.id);
    core.blocking(Work::Admin, move || node.index.drop_def(&node.storage, id))
        .await??;
    delete_entries(core, &def).await?;
    tracing::info!(index = def.id, table = %def.table, columns = ?def.columns, "index dropped");
    let v = json!({"dropped": true, "table": def.table, "columns": def.columns});
    resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

/// `POST /index/rebuild`: a fresh copy under a new id replaces the index
/// (writers switch at once), then the old entries are deleted.
pub async fn rebuild(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let spec = parse_spec(body, false)?;
    let old = find_existing(core, &spec)?;
    let (node, prev) = (core.node().clone(), old.clone());
    let def = core
        .blocking(Work::Admin, move || {
            node.index.recreate(&node.storage, &prev)
        })
        .await??;
    delete_entries(core, &old).await?;
    start_build(core, def.id).await?;
    tracing::info!(old = old.id, new = def.id, "index rebuild started");
    let v = json!({"rebuilding": true, "index": describe(core, &def)});
    resp.json(202, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

/// `GET /index/stats[?table=T[&column=C]]`: definitions, build progress,
/// and entry count and size (counted on the blocking pool).
///
/// `forced_table`: the table a key limited to one table sees when the
/// request names none (`http::auth`).
pub async fn stats(
    core: &Core,
    req: &Request<'_>,
    resp: &mut Response<'_>,
    forced_table: Option<&str>,
) -> Result<(), ApiError> {
    let (mut table, mut column) = (forced_table.map(str::to_string), None);
    for (k, v) in req.query_pairs() {
        let v = crate::entity::key::decode_query_value(v)?;
        match k {
            "table" => table = Some(v),
            "column" => column = Some(v),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?} (allowed: table, column)"
                )))
            }
        }
    }
    let catalog = core.node().index.catalog.current();
    let chosen: Vec<_> = catalog
        .indexes
        .iter()
        .filter(|d| table.as_deref().is_none_or(|t| d.table == t))
        .filter(|d| {
            column
                .as_deref()
                .is_none_or(|c| d.columns.iter().any(|x| x == c) || d.columns.join(",") == c)
        })
        .cloned()
        .collect();
    if (table.is_some() || column.is_some()) && chosen.is_empty() {
        return Err(ApiError::NotFound("no index matches".into()));
    }
    let shared = core.node().clone();
    let ranges: Vec<_> = chosen.iter().map(|d| (d.prefix(), d.end())).collect();
    let sizes = core
        .blocking(Work::Scan, move || {
            ranges
                .iter()
                .map(|(from, to)| {
                    let (mut n, mut bytes) = (0u64, 0u64);
                    let r = shared
                        .storage
                        .scan(Family::Indexes, from, to, false, |k, v| {
                            n += 1;
                            bytes += (k.len() + v.len()) as u64;
                            true
                        });
                    r.map(|()| (n, bytes))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
    let list: Vec<Value> = chosen
        .iter()
        .zip(sizes)
        .map(|(d, (n, bytes))| {
            let mut v = describe(core, d);
            v["entry_count"] = n.into();
            v["size_bytes_estimate"] = bytes.into();
            v["usable_by_queries"] = (d.state == IndexState::Ready).into();
            v
        })
        .collect();
    let v = json!({"indexes": list, "count": list.len()});
    resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}
