//! The index write hook: an entity change removes its old entries and adds
//! its new ones, in the entity's own batch (so no reader ever sees an entity
//! without its entries, or entries of a value the entity no longer has).

use crate::entity::write::Change;
use crate::error::ApiError;
use crate::node::Core;
use crate::storage::Family;

/// Whether a change of an entity of `table` needs the old document (to
/// remove its entries).
#[inline]
pub fn needs_old(core: &Core, table: &str) -> bool {
    core.index().catalog().has_table(table)
}

/// Entry keys of `doc` (unparseable documents have none: they were
/// validated as JSON objects before being stored).
fn entries(
    catalog: &super::Catalog,
    table: &str,
    key: &str,
    doc: Option<&[u8]>,
    scratch: &mut Vec<u8>,
) -> Vec<Vec<u8>> {
    let Some(doc) = doc else {
        return Vec::new();
    };
    scratch.clear();
    scratch.extend_from_slice(doc);
    match simd_json::to_borrowed_value(scratch) {
        Ok(doc) => catalog
            .for_table(table)
            .map(|d| d.entry(&doc, key))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Old entries out, new entries in (unchanged entries are left alone).
pub fn on_write(core: &Core, change: &mut Change<'_, '_>) -> Result<(), ApiError> {
    let catalog = core.index().catalog();
    if !catalog.has_table(change.table) {
        return Ok(());
    }
    let mut scratch = core.index().scratch().borrow_mut();
    let old = entries(&catalog, change.table, change.key, change.old, &mut scratch);
    let new = entries(&catalog, change.table, change.key, change.new, &mut scratch);
    for e in old.iter().filter(|e| !new.contains(e)) {
        change.batch.delete(Family::Indexes, e)?;
    }
    for e in new.iter().filter(|e| !old.contains(e)) {
        change.batch.put(Family::Indexes, e, b"")?;
    }
    Ok(())
}
