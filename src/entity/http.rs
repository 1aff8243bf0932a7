//! `/entities` routes, and the calls that carry an entity operation to the
//! key's owner.
//!
//! The receiving core validates the request (key, document); the owner
//! only reads or writes. On the owner itself a GET copies RocksDB's pinned
//! value straight into the connection's output buffer (the hot path: no
//! allocation, no copy in between).
//!
//! A forwarded request costs no more (issue 17): a GET lends the
//! connection's output buffer to the owner, which writes the whole
//! response into it exactly as it would locally and sends it back
//! ([`themis_io::LentOutput`]); the key travels in a reused buffer of the
//! asking core, and a PUT's validated document is moved to the owner and
//! back, not copied. The buffers come back with the answer and are kept
//! for the next forward ([`Scratch`]). A key cannot be *borrowed* across
//! cores: the asking request may be dropped (its client gone) while the
//! owner still reads it, so it is copied into the reused buffer (bytes, no
//! allocation).

use super::key::{decode_path_key, parse_key};
use super::write;
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::index::unique;
use crate::mesh::{Rpc, Served};
use crate::node::Core;
use crate::obs::counters::bump;
use std::rc::Rc;
use themis_io::{LentOutput, Method, Request, Response};

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
    /// Buffers that travel with forwarded requests and come back.
    hop: HopBuffers,
}

/// Buffers lent to other cores with forwarded requests, kept when they come
/// back: as many of each as requests were forwarded at once, up to
/// [`HopBuffers::MAX_KEPT`] (a buffer past [`HopBuffers::MAX_BYTES`] is
/// freed, so a burst of large documents does not pin its memory).
#[derive(Default)]
struct HopBuffers {
    keys: Vec<String>,
    /// Spare output buffers ([`Response::lend`]).
    outputs: Vec<Vec<u8>>,
    /// Validated documents moved to the owner.
    documents: Vec<Vec<u8>>,
}

impl HopBuffers {
    const MAX_KEPT: usize = 1024;
    const MAX_BYTES: usize = 1 << 20;

    fn keep<T>(list: &mut Vec<T>, item: T, capacity: usize) {
        if capacity > 0 && capacity <= Self::MAX_BYTES && list.len() < Self::MAX_KEPT {
            list.push(item);
        }
    }
}

/// A reused buffer holding `key`.
fn hop_key(core: &Core, key: &str) -> String {
    let mut buf = with_scratch(core, |s| s.hop.keys.pop()).unwrap_or_default();
    buf.clear();
    buf.push_str(key);
    buf
}

/// Keeps the buffers a forwarded request brought back.
fn keep_hop_buffers(
    core: &Core,
    key: Option<String>,
    output: Option<Vec<u8>>,
    document: Option<Vec<u8>>,
) {
    with_scratch(core, |s| {
        if let Some(k) = key {
            let cap = k.capacity();
            HopBuffers::keep(&mut s.hop.keys, k, cap);
        }
        if let Some(o) = output {
            let cap = o.capacity();
            HopBuffers::keep(&mut s.hop.outputs, o, cap);
        }
        if let Some(d) = document {
            let cap = d.capacity();
            HopBuffers::keep(&mut s.hop.documents, d, cap);
        }
    })
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

/// Read an entity on its owner, writing the whole `GET` response into the
/// asking connection's lent output buffer.
pub struct ReadEntity {
    /// The key, in a buffer of the asking core's (it comes back).
    pub key: String,
    pub out: LentOutput,
}

/// The buffers of a [`ReadEntity`], back, and whether the entity exists
/// (when not, nothing was written: the asking core answers 404).
pub struct ReadAnswer {
    pub key: String,
    pub out: LentOutput,
    pub found: bool,
}

impl Rpc<Core> for ReadEntity {
    type Answer = ReadAnswer;
    fn serve(self, core: &Rc<Core>) -> Served<ReadAnswer> {
        bump(&core.counters().forwarded_in, 1);
        bump(&core.counters().entity_ops, 1);
        let ReadEntity { key, mut out } = self;
        let found = out.write(|resp| write_entity(core, &key, resp));
        Served::Now(found.map(|found| ReadAnswer { key, out, found }))
    }
}

/// Store (`Some`) or delete (`None`) an entity on its owner; answers
/// whether it existed, with the key and document buffers.
pub struct WriteEntity {
    pub key: String,
    /// An already validated JSON object.
    pub value: Option<Vec<u8>>,
}

/// A write's answer, and its key and document buffers, given back.
pub struct Written {
    pub existed: bool,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

impl Rpc<Core> for WriteEntity {
    type Answer = Written;
    /// The wait for durability runs as its own task, so the next call from
    /// the same core is staged (in arrival order) meanwhile and can join
    /// the same group.
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<Written> {
        bump(&core.counters().forwarded_in, 1);
        let WriteEntity { key, value } = self;
        // Staged here, synchronously, in the order the calls arrive (the
        // batch holds its own copy of the document).
        let staged = match core.own(key.as_str()) {
            Some(owned) => write::stage(core, owned, value.as_deref()),
            None => Err(ApiError::Internal(
                "entity write sent to a core that does not own the key",
            )),
        };
        match staged {
            Ok(pending) => Served::Later(Box::pin(async move {
                let existed = pending.durable().await?;
                Ok(Written {
                    existed,
                    key,
                    value,
                })
            })),
            Err(e) => Served::Now(Err(e)),
        }
    }
}

/// Writes the `GET` response of entity `key`, which this core owns, into
/// `resp`: RocksDB's pinned value is copied once, straight into the output.
/// Answers whether the entity exists (when not, nothing is written).
fn write_entity(core: &Core, key: &str, resp: &mut Response<'_>) -> Result<bool, ApiError> {
    with_scratch(core, |s| {
        let prefix = &mut s.body;
        prefix.clear();
        super::write_get_prefix(prefix, key);
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
        Ok(found)
    })
}

/// `GET|HEAD /entities/{key}`.
pub async fn get(core: &Core, req: &Request<'_>, resp: &mut Response<'_>) -> Result<(), ApiError> {
    let key = path_key(req)?;
    let found = if core.own(key.as_ref()).is_none() {
        bump(&core.counters().forwarded_out, 1);
        let owner = core.owner_of(key.as_bytes());
        let spare = with_scratch(core, |s| s.hop.outputs.pop()).unwrap_or_default();
        let call = ReadEntity {
            key: hop_key(core, &key),
            out: resp.lend(spare),
        };
        // On an error the lent buffer is lost with the answer: the
        // connection writes the error into the spare that took its place.
        let answer = core.call(owner, call).await?;
        let spare = resp.restore(answer.out);
        keep_hop_buffers(core, Some(answer.key), Some(spare), None);
        answer.found
    } else {
        bump(&core.counters().entity_ops, 1);
        write_entity(core, &key, resp)?
    };
    if found {
        Ok(())
    } else {
        Err(ApiError::EntityNotFound(key.into_owned()))
    }
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
        // Moved to the owner (and back), not copied: a kept buffer takes
        // its place here.
        let spare = s.hop.documents.pop().unwrap_or_default();
        Ok(Prepared::Remote(
            key,
            std::mem::replace(&mut s.value, spare),
            claims,
        ))
    })?;
    let (key, value, claims) = match prepared {
        Prepared::Staged(key, pending) => {
            let existed = pending.durable().await?;
            answer_put(core, resp, &key, existed);
            return Ok(());
        }
        Prepared::Remote(key, value, claims) => (key, value, claims),
    };
    let written = write_claimed(core, key, value, claims).await?;
    answer_put(core, resp, &written.key, written.existed);
    keep_hop_buffers(core, None, None, written.value);
    Ok(())
}

/// Stores `value` (an already validated JSON object) as entity `key`,
/// through its owner's write pipeline, with the table's unique claims;
/// answers whether it existed. For features that keep their data as
/// entities (the LLM store, the semantic cache).
pub async fn write_document(core: &Core, key: String, value: Vec<u8>) -> Result<bool, ApiError> {
    let claims = unique_claims(core, &key, &value);
    Ok(write_claimed(core, key, value, claims).await?.existed)
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
/// releases the claims after the write. The key and document are moved to
/// the owner and come back in the answer.
async fn write_claimed(
    core: &Core,
    key: String,
    value: Vec<u8>,
    claims: Vec<Vec<u8>>,
) -> Result<Written, ApiError> {
    let mut claimed = Vec::new();
    let mut claiming = Ok(());
    for value in claims {
        match unique::claim(core, value.clone(), &key).await {
            Ok(()) => claimed.push(value),
            Err(e) => {
                claiming = Err(e);
                break;
            }
        }
    }
    // The claims are released under the key after the write: keep a copy
    // only when there are some (tables with unique indexes).
    let claims_key = (!claimed.is_empty()).then(|| key.clone());
    let result = match claiming {
        Err(e) => Err(e),
        Ok(()) => write_owned(core, key, value).await,
    };
    if matches!(result, Err(ApiError::Timeout { .. })) {
        // The owner has not answered: it may still be committing. Claims
        // are released only once the owner answered; these expire after
        // their lease (twice request_timeout_ms) instead.
        claimed.clear();
    }
    if let Some(key) = claims_key {
        for value in claimed {
            if let Err(e) = unique::release(core, value, &key).await {
                tracing::warn!("releasing a unique claim failed (it expires): {e}");
            }
        }
    }
    result
}

/// Writes `value` as entity `key` on its owner: here, or moved there by a
/// [`WriteEntity`] call (the buffers come back in its answer).
async fn write_owned(core: &Core, key: String, value: Vec<u8>) -> Result<Written, ApiError> {
    if let Some(owned) = core.own(key.as_str()) {
        let existed = write::apply(core, owned, Some(&value)).await?;
        return Ok(Written {
            existed,
            key,
            value: Some(value),
        });
    }
    bump(&core.counters().forwarded_out, 1);
    let owner = core.owner_of(key.as_bytes());
    let call = WriteEntity {
        key,
        value: Some(value),
    };
    core.call(owner, call).await
}

/// Deletes entity `key` on its owner; answers whether it existed.
pub async fn delete_document(core: &Core, key: &str) -> Result<bool, ApiError> {
    match core.own(key) {
        Some(owned) => write::apply(core, owned, None).await,
        None => {
            bump(&core.counters().forwarded_out, 1);
            let owner = core.owner_of(key.as_bytes());
            let call = WriteEntity {
                key: hop_key(core, key),
                value: None,
            };
            let written = core.call(owner, call).await?;
            keep_hop_buffers(core, Some(written.key), None, None);
            Ok(written.existed)
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
