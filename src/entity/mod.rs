//! Entities: JSON objects under `table:pk` keys, the server's user data.
//!
//! * [`key`]: key rules and percent-decoding.
//! * [`document`]: request body → stored value (validation), stored value →
//!   response body (no re-encoding).
//! * [`write`]: the write pipeline every entity change runs through on its
//!   owner, and the order in which features add to it.
//! * [`group`]: the group commit: a core's staged writes gathered into one
//!   batch, committed off the reactor, answered once durable.
//! * [`http`]: `/entities` routes, and the calls that carry them to the
//!   key's owner.

pub mod document;
pub mod group;
pub mod http;
pub mod key;
pub mod write;

pub use document::{
    prepare_document, render_delete, render_get, render_put, write_get_prefix, write_json_str,
    DocScratch,
};

/// One core's entity state: reused buffers, so that serving an entity
/// request allocates nothing in the steady state.
#[derive(Default)]
pub struct Local {
    /// The old document, read by the write pipeline.
    old: std::cell::RefCell<Vec<u8>>,
    /// Request bodies being validated, response bodies being built.
    http: std::cell::RefCell<http::Scratch>,
    /// Writes staged and not yet durable, and their groups.
    group: group::Local,
}

/// The table of a key (`table:pk` → `table`).
#[inline]
pub fn table_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(t, _)| t)
}
