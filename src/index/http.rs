//! `/index/create`, `/index/drop`, `/index/rebuild`, `/index/stats`.

use super::{check_column, IndexDef, IndexState, Indexes, MAX_COLUMNS};
use crate::api::Shard;
use crate::error::ApiError;
use crate::storage::Family;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use themis_io::{Request, Response};

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

fn describe(shard: &Shard, d: &IndexDef) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    if let Some(p) = shard.shared.builds.get(d.id) {
        v["build"] = json!({
            "entities_processed": p.entities_processed.load(Ordering::Relaxed),
            "cores_done": p.cores_done.load(Ordering::Relaxed),
            "cores": shard.router.shards(),
            "elapsed_ms": match p.finished_ms.load(Ordering::Acquire) {
                0 => p.started.elapsed().as_millis() as u64,
                ms => ms,
            },
        });
    }
    v
}

/// Starts building `def` on every core.
async fn start_build(shard: &Shard, id: u32) -> Result<(), ApiError> {
    shard.shared.builds.get_or_start(id);
    shard.spawn_index_build(id);
    for other in (0..shard.router.shards()).filter(|s| *s != shard.id) {
        shard
            .router
            .call(
                other,
                crate::router::ShardCall::BuildIndex { id },
                shard.request_timeout(),
            )
            .await?;
    }
    Ok(())
}

/// `POST /index/create`.
pub async fn create(shard: &Shard, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let spec = parse_spec(body, true)?;
    let indexes = &shard.shared.indexes;
    if let Some(d) = indexes.catalog.current().find(&spec.table, &spec.columns) {
        if d.unique != spec.unique {
            return Err(ApiError::Conflict(format!(
                "an index on {} {:?} exists with unique={}; drop it first",
                d.table, d.columns, d.unique
            )));
        }
        let v = json!({"created": false, "index": describe(shard, d)});
        resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
        return Ok(());
    }
    let shared = shard.shared.clone();
    let def = glommio::executor()
        .spawn_blocking(move || -> Result<IndexDef, crate::storage::StorageError> {
            let id = Indexes::next_id(&shared.storage)?;
            let def = IndexDef::new(id, &spec.table, spec.columns, spec.unique);
            Indexes::save(&shared.storage, &def)?;
            Ok(def)
        })
        .await?;
    // A concurrent create of the same index on another core may have won.
    let winner = indexes.catalog.update(|c| {
        if let Some(d) = c.find(&def.table, &def.columns) {
            return Some(d.clone());
        }
        c.indexes.push(std::sync::Arc::new(def.clone()));
        None
    });
    if let Some(d) = winner {
        let (shared, id) = (shard.shared.clone(), def.id);
        let _ = glommio::executor()
            .spawn_blocking(move || Indexes::forget(&shared.storage, id))
            .await;
        let v = json!({"created": false, "index": describe(shard, &d)});
        resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
        return Ok(());
    }
    tracing::info!(index = def.id, table = %def.table, columns = ?def.columns, unique = def.unique, "index created; building");
    start_build(shard, def.id).await?;
    let v = json!({"created": true, "index": describe(shard, &def)});
    resp.json(202, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

fn find_existing(shard: &Shard, spec: &Spec) -> Result<std::sync::Arc<IndexDef>, ApiError> {
    shard
        .shared
        .indexes
        .catalog
        .current()
        .find(&spec.table, &spec.columns)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no index on {} {:?}", spec.table, spec.columns)))
}

/// Deletes an index's entries, off the reactor.
async fn delete_entries(shard: &Shard, def: &IndexDef) -> Result<(), ApiError> {
    let (shared, from, to, id) = (shard.shared.clone(), def.prefix(), def.end(), def.id);
    glommio::executor()
        .spawn_blocking(move || {
            Indexes::forget(&shared.storage, id)?;
            shared.storage.delete_index_range(&from, &to)
        })
        .await?;
    Ok(())
}

/// `POST /index/drop`.
pub async fn drop(shard: &Shard, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let spec = parse_spec(body, false)?;
    let def = find_existing(shard, &spec)?;
    shard.shared.indexes.remove_def(def.id);
    delete_entries(shard, &def).await?;
    tracing::info!(index = def.id, table = %def.table, columns = ?def.columns, "index dropped");
    let v = json!({"dropped": true, "table": def.table, "columns": def.columns});
    resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

/// `POST /index/rebuild`: a fresh copy under a new id replaces the index
/// (writers switch at once), then the old entries are deleted.
pub async fn rebuild(shard: &Shard, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let spec = parse_spec(body, false)?;
    let old = find_existing(shard, &spec)?;
    let shared = shard.shared.clone();
    let (table, columns, unique) = (old.table.clone(), old.columns.clone(), old.unique);
    let def = glommio::executor()
        .spawn_blocking(move || -> Result<IndexDef, crate::storage::StorageError> {
            let id = Indexes::next_id(&shared.storage)?;
            let def = IndexDef::new(id, &table, columns, unique);
            Indexes::save(&shared.storage, &def)?;
            Ok(def)
        })
        .await?;
    shard.shared.indexes.catalog.update(|c| {
        c.indexes.retain(|d| d.id != old.id);
        c.indexes.push(std::sync::Arc::new(def.clone()));
    });
    delete_entries(shard, &old).await?;
    start_build(shard, def.id).await?;
    tracing::info!(old = old.id, new = def.id, "index rebuild started");
    let v = json!({"rebuilding": true, "index": describe(shard, &def)});
    resp.json(202, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

/// `GET /index/stats[?table=T[&column=C]]`: definitions, build progress,
/// and entry count and size (counted on the blocking pool).
pub async fn stats(
    shard: &Shard,
    req: &Request<'_>,
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    let (mut table, mut column) = (None, None);
    for (k, v) in req.query_pairs() {
        let v = crate::key::decode_query_value(v)?;
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
    let catalog = shard.shared.indexes.catalog.current();
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
    let shared = shard.shared.clone();
    let ranges: Vec<_> = chosen.iter().map(|d| (d.prefix(), d.end())).collect();
    let sizes = glommio::executor()
        .spawn_blocking(move || {
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
        .await?;
    let list: Vec<Value> = chosen
        .iter()
        .zip(sizes)
        .map(|(d, (n, bytes))| {
            let mut v = describe(shard, d);
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

/// The encoded value prefix a unique index claims for `doc`, when the
/// values are constrained.
pub fn unique_claims(
    catalog: &super::Catalog,
    table: &str,
    doc: &simd_json::BorrowedValue<'_>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for d in catalog
        .for_table(table)
        .filter(|d| d.unique && d.state != IndexState::Failed)
    {
        let mut p = Vec::new();
        if d.value_prefix(doc, &mut p) {
            out.push(p);
        }
    }
    out
}
