//! `/entities` routes, and the calls that carry an entity operation to the
//! key's owner.
//!
//! The receiving core validates the request (key, document); the owner
//! only reads or writes. On the owner itself a GET copies RocksDB's pinned
//! value straight into the connection's output buffer (the hot path: no
//! allocation, no copy in between).

use super::key::{decode_path_key, parse_key};
use super::write;
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::index::unique;
use crate::mesh::{Rpc, Served};
use crate::node::Core;
use crate::obs::counters::bump;
use std::rc::Rc;
use themis_io::{Method, Request, Response};

const KEY_PREFIX: &str = "/entities/";

/// The entity routes (first in the server's table: the hot path).
pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::EntityGet,
        methods: &[Method::Get, Method::Head],
        path: PathPattern::Prefix(KEY_PREFIX),
        role: Role::Read,
        tables: Tables::PathKey,
        label: "GET /entities/{key}",
    },
    Route {
        id: RouteId::EntityPut,
        methods: &[Method::Put],
        path: PathPattern::Prefix(KEY_PREFIX),
        role: Role::Write,
        tables: Tables::PathKey,
        label: "PUT /entities/{key}",
    },
    Route {
        id: RouteId::EntityDelete,
        methods: &[Method::Delete],
        path: PathPattern::Prefix(KEY_PREFIX),
        role: Role::Write,
        tables: Tables::PathKey,
        label: "DELETE /entities/{key}",
    },
    Route {
        id: RouteId::EntityPost,
        methods: &[Method::Post],
        path: PathPattern::Exact("/entities"),
        role: Role::Write,
        tables: Tables::BodyKey,
        label: "POST /entities",
    },
];

/// Reused per-core buffers for building bodies (in `entity::Local`).
#[derive(Default)]
pub(super) struct Scratch {
    doc: super::DocScratch,
    value: Vec<u8>,
    body: Vec<u8>,
}

/// Runs `f` with this core's entity scratch.
fn with_scratch<R>(core: &Core, f: impl FnOnce(&mut Scratch) -> R) -> R {
    f(&mut core.entity().http.borrow_mut())
}

/// The key of a `/entities/{key}` request, decoded and checked.
fn path_key<'r>(req: &Request<'r>) -> Result<std::borrow::Cow<'r, str>, ApiError> {
    let key = decode_path_key(req.path.strip_prefix(KEY_PREFIX).unwrap_or(""))?;
    parse_key(&key)?;
    Ok(key)
}

/// Tables whose entities only their feature writes (they are read, indexed,
/// queried and streamed like any other).
const RESERVED: &[(&str, &str)] = &[
    (crate::cache::TABLE, "/cache/put and /cache/entry"),
    (crate::llm::TABLE, "/llm/interaction"),
];

/// Refuses a write through `/entities` to a reserved table (403).
fn refuse_reserved(key: &str) -> Result<(), ApiError> {
    let table = super::table_of(key);
    match RESERVED.iter().find(|(t, _)| *t == table) {
        Some((t, via)) => Err(ApiError::Forbidden(format!(
            "table {t} is reserved: it is written through {via}, not /entities"
        ))),
        None => Ok(()),
    }
}

/// Read an entity on its owner; answers the complete `GET` body.
pub struct ReadEntity {
    pub key: String,
}

impl Rpc<Core> for ReadEntity {
    type Answer = Vec<u8>;
    fn serve(self, core: &Rc<Core>) -> Served<Vec<u8>> {
        bump(&core.counters().forwarded_in, 1);
        bump(&core.counters().entity_ops, 1);
        let mut body = Vec::new();
        let found = core.node().storage.with_entity(self.key.as_bytes(), |v| {
            v.map(|v| super::render_get(&mut body, &self.key, v))
        });
        Served::Now(match found {
            Ok(Some(())) => Ok(body),
            Ok(None) => Err(ApiError::EntityNotFound(self.key)),
            Err(e) => Err(e.into()),
        })
    }
}

/// Store (`Some`) or delete (`None`) an entity on its owner; answers
/// whether it existed.
pub struct WriteEntity {
    pub key: String,
    /// An already validated JSON object.
    pub value: Option<Vec<u8>>,
}

impl Rpc<Core> for WriteEntity {
    type Answer = bool;
    /// The wait for durability runs as its own task, so the next call from
    /// the same core is staged (in arrival order) meanwhile and can join
    /// the same group.
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<bool> {
        bump(&core.counters().forwarded_in, 1);
        // Staged here, synchronously, in the order the calls arrive.
        let staged = match core.own(self.key.as_str()) {
            Some(owned) => write::stage(core, owned, self.value.as_deref()),
            None => Err(ApiError::Internal(
                "entity write sent to a core that does not own the key",
            )),
        };
        match staged {
            Ok(pending) => Served::Later(Box::pin(pending.durable())),
            Err(e) => Served::Now(Err(e)),
        }
    }
}

/// `GET|HEAD /entities/{key}`.
pub async fn get(core: &Core, req: &Request<'_>, resp: &mut Response<'_>) -> Result<(), ApiError> {
    let key = path_key(req)?;
    if core.own(key.as_ref()).is_none() {
        bump(&core.counters().forwarded_out, 1);
        let owner = core.owner_of(key.as_bytes());
        let body = core
            .call(
                owner,
                ReadEntity {
                    key: key.into_owned(),
                },
            )
            .await?;
        resp.json(200, &body);
        return Ok(());
    }
    bump(&core.counters().entity_ops, 1);
    with_scratch(core, |s| {
        let prefix = &mut s.body;
        prefix.clear();
        super::write_get_prefix(prefix, &key);
        let found = core
            .node()
            .storage
            .with_entity(key.as_bytes(), |value| match value {
                Some(v) => {
                    resp.start(200, "application/json", prefix.len() + v.len() + 1, &[]);
                    resp.body(prefix);
                    resp.body(v);
                    resp.body(b"}");
                    true
                }
                None => false,
            })?;
        if found {
            Ok(())
        } else {
            Err(ApiError::EntityNotFound(key.into_owned()))
        }
    })
}

/// `PUT /entities/{key}`.
pub async fn put(core: &Core, req: &Request<'_>, resp: &mut Response<'_>) -> Result<(), ApiError> {
    let key = path_key(req)?;
    store(core, Some(key.into_owned()), req.body, resp).await
}

/// `POST /entities` (the key is the body's `key` field).
pub async fn post(core: &Core, req: &Request<'_>, resp: &mut Response<'_>) -> Result<(), ApiError> {
    store(core, None, req.body, resp).await
}

fn answer_put(core: &Core, resp: &mut Response<'_>, key: &str, existed: bool) {
    with_scratch(core, |s| {
        s.body.clear();
        super::render_put(&mut s.body, key, !existed);
        resp.json(if existed { 200 } else { 201 }, &s.body);
    });
}

/// A validated PUT/POST: staged on this core (its owner, no claims), or
/// (key, document, unique claims) to claim and write on the owner.
enum Prepared {
    Staged(String, write::Pending),
    Remote(String, Vec<u8>, Vec<Vec<u8>>),
}

/// Validates the document here, then writes it on the owner. A table with
/// unique indexes first claims each unique value on its arbiter
/// ([`unique`]), and releases the claims after the write.
async fn store(
    core: &Core,
    key: Option<String>,
    body: &[u8],
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    let prepared = with_scratch(core, |s| -> Result<_, ApiError> {
        let from_body = super::prepare_document(body, key.is_none(), &mut s.doc, &mut s.value)?;
        let key = match (key, from_body) {
            (_, Some(k)) => {
                parse_key(&k)?;
                k
            }
            (Some(k), None) => k,
            (None, None) => return Err(ApiError::Internal("POST body validated without a key")),
        };
        refuse_reserved(&key)?;
        let claims = unique_claims(core, &key, &s.value);
        if claims.is_empty() {
            if let Some(owned) = core.own(key.as_str()) {
                // The common case: no claims, this core owns the key.
                let pending = write::stage(core, owned, Some(&s.value))?;
                return Ok(Prepared::Staged(key, pending));
            }
        }
        Ok(Prepared::Remote(key, s.value.clone(), claims))
    })?;
    let (key, value, claims) = match prepared {
        Prepared::Staged(key, pending) => {
            let existed = pending.durable().await?;
            answer_put(core, resp, &key, existed);
            return Ok(());
        }
        Prepared::Remote(key, value, claims) => (key, value, claims),
    };
    let existed = write_claimed(core, key.clone(), value, claims).await?;
    answer_put(core, resp, &key, existed);
    Ok(())
}

/// Stores `value` (an already validated JSON object) as entity `key`,
/// through its owner's write pipeline, with the table's unique claims;
/// answers whether it existed. For features that keep their data as
/// entities (the LLM store, the semantic cache).
pub async fn write_document(core: &Core, key: String, value: Vec<u8>) -> Result<bool, ApiError> {
    let claims = unique_claims(core, &key, &value);
    write_claimed(core, key, value, claims).await
}

/// The unique values `value` (a validated document of entity `key`) must
/// claim: none unless its table has a unique index.
fn unique_claims(core: &Core, key: &str, value: &[u8]) -> Vec<Vec<u8>> {
    let catalog = core.index().catalog();
    let table = super::table_of(key);
    if !catalog.for_table(table).any(|d| d.unique) {
        return Vec::new();
    }
    let mut copy = value.to_vec();
    let claims = match simd_json::to_borrowed_value(&mut copy) {
        Ok(doc) => unique::claims_for(&catalog, table, &doc),
        Err(_) => Vec::new(),
    };
    claims
}

/// Claims each unique value on its arbiter, writes on the owner, and
/// releases the claims after the write.
async fn write_claimed(
    core: &Core,
    key: String,
    value: Vec<u8>,
    claims: Vec<Vec<u8>>,
) -> Result<bool, ApiError> {
    let mut claimed = Vec::new();
    let mut result = Ok(false);
    for value in claims {
        match unique::claim(core, value.clone(), &key).await {
            Ok(()) => claimed.push(value),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = match core.own(key.as_str()) {
            Some(owned) => write::apply(core, owned, Some(&value)).await,
            None => {
                bump(&core.counters().forwarded_out, 1);
                let owner = core.owner_of(key.as_bytes());
                let call = WriteEntity {
                    key: key.clone(),
                    value: Some(value),
                };
                core.call(owner, call).await
            }
        };
    }
    if matches!(result, Err(ApiError::Timeout { .. })) {
        // The owner has not answered: it may still be committing. Claims
        // are released only once the owner answered; these expire after
        // their lease (twice request_timeout_ms) instead.
        claimed.clear();
    }
    for value in claimed {
        if let Err(e) = unique::release(core, value, &key).await {
            tracing::warn!("releasing a unique claim failed (it expires): {e}");
        }
    }
    result
}

/// Deletes entity `key` on its owner; answers whether it existed.
pub async fn delete_document(core: &Core, key: &str) -> Result<bool, ApiError> {
    match core.own(key) {
        Some(owned) => write::apply(core, owned, None).await,
        None => {
            bump(&core.counters().forwarded_out, 1);
            let owner = core.owner_of(key.as_bytes());
            let call = WriteEntity {
                key: key.to_string(),
                value: None,
            };
            core.call(owner, call).await
        }
    }
}

/// `DELETE /entities/{key}`.
pub async fn delete(
    core: &Core,
    req: &Request<'_>,
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    let key = path_key(req)?;
    refuse_reserved(&key)?;
    let existed = delete_document(core, &key).await?;
    with_scratch(core, |s| {
        s.body.clear();
        super::render_delete(&mut s.body, &key, existed);
        resp.json(200, &s.body);
    });
    Ok(())
}
