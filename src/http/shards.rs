//! `GET /shards`: the key → core mapping, for shard-aware clients.
//!
//! Every keyed request runs on the key's owner (`mesh::owner_of`); a
//! request that arrives on another core takes a hop there and back. A
//! client that computes the owner itself and, with `server.shard_ports`,
//! connects to that core's own port skips the hop. This route tells it what
//! to compute (the hash's name, the shard count) and where to connect
//! (each core's port). `?key=` answers the owner of one key, so a client
//! can check its implementation against the server's.
//!
//! A request on a core's own port for a key another core owns is not
//! refused: it is forwarded like on the shared port (a stale or wrong
//! client is slower, never wrong).

use super::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::entity::key::{decode_query_value, parse_key};
use crate::error::ApiError;
use crate::node::Core;
use serde_json::{json, Value};
use themis_io::{Method, Request, Response};

pub const ROUTES: &[Route] = &[Route {
    id: RouteId::Shards,
    methods: &[Method::Get, Method::Head],
    path: PathPattern::Exact("/shards"),
    role: Role::Read,
    // The mapping is no table's data: a hash of the key the client sent.
    tables: Tables::None,
    label: "GET /shards",
}];

/// What a request for a key another core owns gets on a core's own port.
const WRONG_PORT: &str = "forwarded to the owner, as on the shared port";

/// `GET /shards[?key=K]`.
pub fn shards(core: &Core, req: &Request<'_>, resp: &mut Response<'_>) -> Result<(), ApiError> {
    let mut key = None;
    for (name, raw) in req.query_pairs() {
        let name = decode_query_value(name)?;
        if name != "key" {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {name:?} (allowed: key)"
            )));
        }
        if key.is_some() {
            return Err(ApiError::BadRequest("key is given more than once".into()));
        }
        let k = decode_query_value(raw)?;
        parse_key(&k)?;
        key = Some(k);
    }
    let mut v = describe(core);
    if let Some(k) = key {
        let owner = core.owner_of(k.as_bytes());
        v["key"] = json!({
            "key": k,
            "hash": format!("{:016x}", themis_shardmap::key_hash(k.as_bytes())),
            "owner": owner,
            "port": core_port(core, owner),
        });
    }
    resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

/// Core `i`'s own port (`None` without `server.shard_ports`).
fn core_port(core: &Core, i: usize) -> Option<u16> {
    core.node()
        .ports
        .per_core
        .as_ref()
        .and_then(|p| p.get(i).copied())
}

fn describe(core: &Core) -> Value {
    let node = core.node();
    let n = core.cores();
    let cores: Vec<Value> = (0..n)
        .map(|i| json!({"core": i, "cpu": node.cpus.get(i), "port": core_port(core, i)}))
        .collect();
    json!({
        "shards": n,
        "hash": {
            "name": themis_shardmap::HASH_NAME,
            "input": "the entity key's UTF-8 bytes as stored (table:pk, percent-decoded)",
            "owner": "(hash * shards) >> 64, in 128-bit arithmetic",
            "reference": "docs/sharding.md",
        },
        "port": node.ports.shared,
        "shard_ports": node.ports.per_core.is_some(),
        "wrong_port": WRONG_PORT,
        "cores": cores,
    })
}
