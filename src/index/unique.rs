//! Unique indexes across cores: claims on the value's arbiter.
//!
//! Two writes of the same unique value can arrive on two cores at once, for
//! two different keys with two different owners. Each value therefore has
//! one arbiter, the core owning the hash of its encoded prefix
//! `[index id][values]`. A PUT first claims each of its unique values on
//! the arbiter ([`ClaimUnique`]), then writes on the key's owner, then
//! releases the claims ([`ReleaseUnique`]); the committed index entry holds
//! the value from then on.
//!
//! Invariant: at any moment a taken value is visible to its arbiter as a
//! live claim or as an index entry, so a second key is refused (409).
//! A claim expires after twice `request_timeout_ms` (a writer that died
//! between claim and release cannot block the value forever).

use super::{Catalog, IndexState};
use crate::error::ApiError;
use crate::mesh::{Rpc, Served};
use crate::node::{Core, Owned};
use crate::storage::Family;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

/// Live claims this core arbitrates: encoded value → (key, since).
#[derive(Default)]
pub struct Claims(HashMap<Vec<u8>, (String, Instant)>);

/// The encoded value prefixes of `doc` that unique indexes of `table`
/// constrain (values with a null or missing column are not constrained).
pub fn claims_for(
    catalog: &Catalog,
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

/// Claims a value on its arbiter (this core): refused while another key
/// holds a live claim or an index entry for it.
fn claim_here(core: &Core, value: Owned<'_, [u8]>, key: &str) -> Result<(), ApiError> {
    let prefix = value.key();
    let lease = core.request_timeout() * 2;
    let now = Instant::now();
    let mut claims = core.index().claims().borrow_mut();
    if let Some((holder, at)) = claims.0.get(prefix) {
        if holder != key && now.duration_since(*at) < lease {
            return Err(ApiError::Conflict(format!(
                "unique index: the value is being written by {holder}"
            )));
        }
    }
    let mut end = prefix.to_vec();
    end.push(0xFF);
    let mut holder = None;
    core.node()
        .storage
        .scan(Family::Indexes, prefix, &end, false, |k, _| {
            let other = &k[prefix.len()..];
            if other != key.as_bytes() {
                holder = Some(String::from_utf8_lossy(other).into_owned());
                return false;
            }
            true
        })?;
    if let Some(h) = holder {
        return Err(ApiError::Conflict(format!(
            "unique index: entity {h} already has this value"
        )));
    }
    claims.0.insert(prefix.to_vec(), (key.to_string(), now));
    Ok(())
}

fn release_here(core: &Core, value: Owned<'_, [u8]>, key: &str) {
    let mut claims = core.index().claims().borrow_mut();
    if claims.0.get(value.key()).is_some_and(|(k, _)| k == key) {
        claims.0.remove(value.key());
    }
}

/// Claim `value` for `key` (sent to the value's arbiter).
pub struct ClaimUnique {
    pub value: Vec<u8>,
    pub key: String,
}

impl Rpc<Core> for ClaimUnique {
    type Answer = ();
    fn serve(self, core: &Rc<Core>) -> Served<()> {
        Served::Now(match core.own(&self.value[..]) {
            Some(v) => claim_here(core, v, &self.key),
            None => Err(ApiError::Internal(
                "unique claim sent to a core that is not its arbiter",
            )),
        })
    }
}

/// Release a claim after the write committed (or failed).
pub struct ReleaseUnique {
    pub value: Vec<u8>,
    pub key: String,
}

impl Rpc<Core> for ReleaseUnique {
    type Answer = ();
    fn serve(self, core: &Rc<Core>) -> Served<()> {
        if let Some(v) = core.own(&self.value[..]) {
            release_here(core, v, &self.key);
        }
        Served::Now(Ok(()))
    }
}

/// Claims `value` for `key` on its arbiter, wherever that is.
pub async fn claim(core: &Core, value: Vec<u8>, key: &str) -> Result<(), ApiError> {
    if let Some(v) = core.own(&value[..]) {
        return claim_here(core, v, key);
    }
    let arbiter = core.owner_of(&value);
    core.call(
        arbiter,
        ClaimUnique {
            value,
            key: key.to_string(),
        },
    )
    .await
}

/// Releases a claim on its arbiter, wherever that is.
pub async fn release(core: &Core, value: Vec<u8>, key: &str) -> Result<(), ApiError> {
    if let Some(v) = core.own(&value[..]) {
        release_here(core, v, key);
        return Ok(());
    }
    let arbiter = core.owner_of(&value);
    core.call(
        arbiter,
        ReleaseUnique {
            value,
            key: key.to_string(),
        },
    )
    .await
}
