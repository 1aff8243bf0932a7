//! `/llm/interaction` routes: store, list (newest first, paged by cursor),
//! read and delete interactions. 503 `feature_disabled` while
//! `features.llm_store` is off.
//!
//! A list is a reverse range read of the table's keys, bounded three ways
//! ([`MAX_LIMIT`] interactions, [`MAX_PAGE_BYTES`], [`MAX_EXAMINED`]
//! documents looked at for the `model_version`/`prompt_template_id`
//! filters) and run on the scan lane, off the reactor. A page cut short by
//! a bound carries `next_cursor`; an index on the filtered column with
//! `/query` is the fast way to select a few interactions among many.

use super::{decode, encode, first_of_ms, TABLE};
use crate::entity::key::decode_query_value;
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::node::blocking::Work;
use crate::node::Core;
use crate::obs::counters::bump;
use crate::storage::Family;
use serde_json::{json, Map, Value};
use themis_io::{Method, Request, Response};

const PATH: &str = "/llm/interaction";
const ID_PREFIX: &str = "/llm/interaction/";

/// Field limits (bytes of the JSON value).
pub const MAX_PROMPT_BYTES: usize = 256 << 10;
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
pub const MAX_REASONING_BYTES: usize = 1 << 20;
pub const MAX_METADATA_BYTES: usize = 64 << 10;
pub const MAX_NAME_BYTES: usize = 256;
/// `limit` of a list: default and most.
const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;
/// Most bytes of interactions in one page.
pub const MAX_PAGE_BYTES: usize = 8 << 20;
/// Most documents one list request looks at (filters that match rarely end
/// a page early, with `next_cursor`).
pub const MAX_EXAMINED: usize = 100_000;

pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::LlmPut,
        methods: &[Method::Post],
        path: PathPattern::Exact(PATH),
        role: Role::Write,
        tables: Tables::Fixed(TABLE),
        label: "POST /llm/interaction",
    },
    Route {
        id: RouteId::LlmList,
        methods: &[Method::Get, Method::Head],
        path: PathPattern::Exact(PATH),
        role: Role::Read,
        tables: Tables::Fixed(TABLE),
        label: "GET /llm/interaction",
    },
    Route {
        id: RouteId::LlmGet,
        methods: &[Method::Get, Method::Head],
        path: PathPattern::Prefix(ID_PREFIX),
        role: Role::Read,
        tables: Tables::Fixed(TABLE),
        label: "GET /llm/interaction/{id}",
    },
    Route {
        id: RouteId::LlmDelete,
        methods: &[Method::Delete],
        path: PathPattern::Prefix(ID_PREFIX),
        role: Role::Admin,
        tables: Tables::Fixed(TABLE),
        label: "DELETE /llm/interaction/{id}",
    },
];

/// Fails with 503 unless `features.llm_store` is on.
fn require_enabled(core: &Core) -> Result<(), ApiError> {
    if core.settings().features.llm_store {
        Ok(())
    } else {
        Err(ApiError::FeatureDisabled {
            flag: "features.llm_store",
            enable: r#"{"features": {"llm_store": true}}"#,
        })
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Checks a JSON value's encoded size against `max`.
fn sized(field: &str, v: &Value, max: usize) -> Result<(), ApiError> {
    let n = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    if n > max {
        return Err(bad(format!(
            "{field}: {n} bytes, more than the limit of {max}"
        )));
    }
    Ok(())
}

fn string_field(
    m: &Map<String, Value>,
    field: &str,
    required: bool,
    max: usize,
) -> Result<Option<Value>, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(bad(format!("{field}: required"))),
        Some(Value::String(s)) if required && s.is_empty() => {
            Err(bad(format!("{field}: must not be empty")))
        }
        Some(v @ Value::String(s)) => {
            if s.len() > max {
                return Err(bad(format!(
                    "{field}: {} bytes, more than the limit of {max}",
                    s.len()
                )));
            }
            Ok(Some(v.clone()))
        }
        Some(v) => Err(bad(format!("{field}: must be a string, got {}", kind(v)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The stored document of a `POST /llm/interaction` body (without `id`
/// and `timestamp_ms`), and its token count.
pub fn parse_interaction(body: &[u8]) -> Result<(Map<String, Value>, u64), ApiError> {
    const FIELDS: &[&str] = &[
        "prompt",
        "response",
        "model_version",
        "prompt_template_id",
        "token_count",
        "latency_ms",
        "reasoning_chain",
        "metadata",
    ];
    let m = crate::http::body::object(body, FIELDS)?;
    let mut doc = Map::new();
    for (field, required, max) in [
        ("prompt", true, MAX_PROMPT_BYTES),
        ("response", true, MAX_RESPONSE_BYTES),
        ("model_version", true, MAX_NAME_BYTES),
        ("prompt_template_id", false, MAX_NAME_BYTES),
    ] {
        if let Some(v) = string_field(&m, field, required, max)? {
            doc.insert(field.into(), v);
        }
    }
    let mut tokens = 0;
    if let Some(v) = m.get("token_count").filter(|v| !v.is_null()) {
        match v.as_u64() {
            Some(n) if n <= 1 << 53 => {
                tokens = n;
                doc.insert("token_count".into(), v.clone());
            }
            _ => {
                return Err(bad(format!(
                    "token_count: must be an integer in 0..=2^53, got {v}"
                )))
            }
        }
    }
    if let Some(v) = m.get("latency_ms").filter(|v| !v.is_null()) {
        match v.as_f64() {
            Some(x) if x >= 0.0 && x.is_finite() => {
                doc.insert("latency_ms".into(), v.clone());
            }
            _ => return Err(bad(format!("latency_ms: must be a number >= 0, got {v}"))),
        }
    }
    if let Some(v) = m.get("reasoning_chain").filter(|v| !v.is_null()) {
        if !(v.is_array() || v.is_string()) {
            return Err(bad(format!(
                "reasoning_chain: must be an array or a string, got {}",
                kind(v)
            )));
        }
        sized("reasoning_chain", v, MAX_REASONING_BYTES)?;
        doc.insert("reasoning_chain".into(), v.clone());
    }
    if let Some(v) = m.get("metadata").filter(|v| !v.is_null()) {
        if !v.is_object() {
            return Err(bad(format!("metadata: must be an object, got {}", kind(v))));
        }
        sized("metadata", v, MAX_METADATA_BYTES)?;
        doc.insert("metadata".into(), v.clone());
    }
    Ok((doc, tokens))
}

/// `POST /llm/interaction`: 201 `{"id", "timestamp_ms", "key"}`.
pub async fn put(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let (fields, tokens) = parse_interaction(body)?;
    let (id, ms) = core.llm().ids.next(crate::cache::now_ms());
    let mut doc = Map::new();
    doc.insert("id".into(), Value::String(id.clone()));
    doc.insert("timestamp_ms".into(), ms.into());
    doc.extend(fields);
    let value = serde_json::to_vec(&Value::Object(doc))
        .map_err(|_| ApiError::Internal("encoding an interaction"))?;
    let key = format!("{TABLE}:{id}");
    crate::entity::http::write_document(core, key.clone(), value).await?;
    bump(&core.counters().llm_interactions, 1);
    bump(&core.counters().llm_tokens, tokens);
    resp.json(
        201,
        &json!({"id": id, "timestamp_ms": ms, "key": key})
            .to_string()
            .into_bytes(),
    );
    Ok(())
}

/// The id in the path of `/llm/interaction/{id}`, checked.
fn path_id<'r>(req: &Request<'r>) -> Result<&'r str, ApiError> {
    let id = req.path.strip_prefix(ID_PREFIX).unwrap_or("");
    match decode(id) {
        Some(_) => Ok(id),
        None => Err(bad(format!(
            "{id:?} is not an interaction id (26 characters of Crockford base32)"
        ))),
    }
}

/// `GET /llm/interaction/{id}`: the stored interaction.
pub async fn get(core: &Core, req: &Request<'_>, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let id = path_id(req)?;
    let key = format!("{TABLE}:{id}");
    // Any core may read: an acknowledged write is committed to storage.
    let found = core
        .node()
        .storage
        .with_entity(key.as_bytes(), |v| v.map(|v| resp.json(200, v)).is_some())?;
    if found {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("interaction {id} not found")))
    }
}

/// `DELETE /llm/interaction/{id}` (admin).
pub async fn delete(
    core: &Core,
    req: &Request<'_>,
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    require_enabled(core)?;
    let id = path_id(req)?;
    let key = format!("{TABLE}:{id}");
    if !crate::entity::http::delete_document(core, &key).await? {
        return Err(ApiError::NotFound(format!("interaction {id} not found")));
    }
    resp.json(
        200,
        &json!({"deleted": true, "id": id}).to_string().into_bytes(),
    );
    Ok(())
}

/// What a list asks for.
#[derive(Debug, Default, Clone)]
pub struct ListRequest {
    pub model_version: Option<String>,
    pub prompt_template_id: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub limit: usize,
    /// Read strictly below this id.
    pub cursor: Option<String>,
}

pub fn parse_list(req: &Request<'_>) -> Result<ListRequest, ApiError> {
    let mut l = ListRequest {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    let ms = |name: &str, v: &str| -> Result<u64, ApiError> {
        v.parse::<u64>()
            .ok()
            .filter(|n| *n < 1 << 48)
            .ok_or_else(|| bad(format!("{name}: must be Unix milliseconds, got {v:?}")))
    };
    for (name, value) in req.query_pairs() {
        let name = decode_query_value(name)?;
        let value = decode_query_value(value)?;
        match &*name {
            "model_version" => l.model_version = Some(value),
            "prompt_template_id" => l.prompt_template_id = Some(value),
            "from_ms" => l.from_ms = Some(ms("from_ms", &value)?),
            "to_ms" => l.to_ms = Some(ms("to_ms", &value)?),
            "limit" => {
                l.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!("limit: must be an integer in 1..={MAX_LIMIT}, got {value:?}"))
                    })?
            }
            "cursor" => {
                if decode(&value).is_none() {
                    return Err(bad(format!(
                        "cursor: unknown cursor {value:?} (use the next_cursor of a previous page)"
                    )));
                }
                l.cursor = Some(value);
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?} (allowed: model_version, prompt_template_id, from_ms, to_ms, limit, cursor)"
                )))
            }
        }
    }
    if let (Some(f), Some(t)) = (l.from_ms, l.to_ms) {
        if f > t {
            return Err(bad(format!("from_ms ({f}) is after to_ms ({t})")));
        }
    }
    Ok(l)
}

/// One page of a list.
#[derive(Debug, Default)]
pub struct Page {
    /// `[doc,doc,…]` without the brackets.
    pub docs: Vec<u8>,
    pub count: usize,
    pub next_cursor: Option<String>,
}

/// Reads one page, newest first. Blocking: a range read.
pub fn read_page(view: &impl crate::storage::ReadView, l: &ListRequest) -> Result<Page, ApiError> {
    #[derive(serde::Deserialize)]
    struct Filtered {
        model_version: Option<String>,
        prompt_template_id: Option<String>,
    }
    let key_of = |v: u128| format!("{TABLE}:{}", encode(v));
    let from = key_of(first_of_ms(l.from_ms.unwrap_or(0)));
    let mut to = match l.to_ms {
        Some(t) => key_of(first_of_ms(t + 1)),
        None => format!("{TABLE};"),
    };
    if let Some(c) = &l.cursor {
        to = to.min(format!("{TABLE}:{c}"));
    }
    let filtered = l.model_version.is_some() || l.prompt_template_id.is_some();
    let mut page = Page::default();
    let mut examined = 0usize;
    let mut last_seen: Option<String> = None;
    let mut cut = false;
    view.scan(
        Family::Entities,
        from.as_bytes(),
        to.as_bytes(),
        true,
        &mut |k: &[u8], v: &[u8]| {
            let id = std::str::from_utf8(&k[TABLE.len() + 1..]).unwrap_or("");
            if page.count == l.limit
                || examined == MAX_EXAMINED
                || page.docs.len() + v.len() > MAX_PAGE_BYTES && page.count > 0
            {
                cut = true;
                return false;
            }
            examined += 1;
            last_seen = Some(id.to_string());
            if filtered {
                let Ok(f) = serde_json::from_slice::<Filtered>(v) else {
                    return true;
                };
                if l.model_version.is_some() && f.model_version != l.model_version {
                    return true;
                }
                if l.prompt_template_id.is_some() && f.prompt_template_id != l.prompt_template_id {
                    return true;
                }
            }
            if page.count > 0 {
                page.docs.push(b',');
            }
            page.docs.extend_from_slice(v);
            page.count += 1;
            true
        },
    )?;
    if cut {
        page.next_cursor = last_seen;
    }
    Ok(page)
}

/// `GET /llm/interaction`: `{"interactions":[…],"count",…,"next_cursor"?}`.
pub async fn list(core: &Core, req: &Request<'_>, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let l = parse_list(req)?;
    let node = core.node().clone();
    let page = core
        .blocking(Work::Scan, move || read_page(&node.storage, &l))
        .await??;
    let mut out = Vec::with_capacity(page.docs.len() + 64);
    out.extend_from_slice(b"{\"interactions\":[");
    out.extend_from_slice(&page.docs);
    out.extend_from_slice(b"],\"count\":");
    out.extend_from_slice(page.count.to_string().as_bytes());
    if let Some(c) = &page.next_cursor {
        out.extend_from_slice(b",\"next_cursor\":\"");
        out.extend_from_slice(c.as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
    resp.json(200, &out);
    Ok(())
}
