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
    let (gone, came) = diff(old, new);
    for e in &gone {
        change.batch.delete(Family::Indexes, e)?;
    }
    for e in &came {
        change.batch.put(Family::Indexes, e, b"")?;
    }
    Ok(())
}

/// The entries only in `old` and those only in `new`: both sorted, then
/// merged (O(n log n), whatever the number of indexes).
fn diff(mut old: Vec<Vec<u8>>, mut new: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    old.sort_unstable();
    new.sort_unstable();
    let (mut gone, mut came) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (Some(a), Some(b)) => match a.cmp(b) {
                std::cmp::Ordering::Less => gone.extend(o.next()),
                std::cmp::Ordering::Greater => came.extend(n.next()),
                std::cmp::Ordering::Equal => {
                    o.next();
                    n.next();
                }
            },
            (Some(_), None) => gone.extend(o.next()),
            (None, Some(_)) => came.extend(n.next()),
            (None, None) => return (gone, came),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::diff;

    #[test]
    fn diff_keeps_unchanged_entries_and_finds_the_rest() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
        let (gone, came) = diff(v(&["c", "a", "b"]), v(&["b", "d", "a"]));
        assert_eq!(gone, v(&["c"]));
        assert_eq!(came, v(&["d"]));
        let (gone, came) = diff(v(&["a"]), Vec::new());
        assert_eq!((gone, came), (v(&["a"]), Vec::new()));
        let (gone, came) = diff(Vec::new(), v(&["x", "y"]));
        assert_eq!((gone, came), (Vec::new(), v(&["x", "y"])));
    }
}
