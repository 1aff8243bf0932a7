//! The vector write hook: an entity write on a table with vector indexes
//! keeps the `vectors` family in the entity's own batch, and the core's
//! graph follows after the commit.
//!
//! For each vector index of the table, the new document's field is read:
//! * missing or `null`: the entity has no vector (a stored one is deleted);
//! * an array of `dimension` finite numbers (that fit an f32, and suit the
//!   metric: non-zero for cosine, unit length for dot): stored, unless the
//!   stored vector is the same;
//! * anything else: the write is refused with a 400 naming the field.
//!
//! The stored vector (a point read of `vectors`, not the old document) is
//! what a new one is compared with, so a vector removed by
//! `DELETE /vector/by-filter` comes back with the entity's next write that
//! carries it.
//!
//! The graph changes are staged in the write's [`Held`] (which joins its
//! group's) and applied by [`after_commit`] only if the batch committed.
//! When the key has a staged write still uncommitted (group commit), the
//! stored vector is not yet what the entity will hold, so the new vector is
//! written without comparing.

use super::distance;
use super::VectorDef;
use crate::entity::write::Change;
use crate::error::ApiError;
use crate::node::Core;
use crate::storage::Family;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// A graph change waiting for its write's commit.
pub struct Staged {
    pub index: u32,
    pub key: String,
    /// `None`: the key no longer has a vector.
    pub vector: Option<Vec<f32>>,
}

/// Graph changes waiting for their write's (or group's) commit.
pub type Held = crate::node::features::Held<Staged>;

/// The vector at `def`'s field of a parsed document: `Ok(None)` when
/// missing or null, `Err` with the reason when it is not a valid vector.
pub fn extract(def: &VectorDef, doc: &BorrowedValue<'_>) -> Result<Option<Vec<f32>>, String> {
    let mut cur = doc;
    for seg in def.path() {
        match cur.as_object().and_then(|o| o.get(seg.as_str())) {
            Some(v) => cur = v,
            None => return Ok(None),
        }
    }
    if cur.is_null() {
        return Ok(None);
    }
    let Some(items) = cur.as_array() else {
        return Err(format!(
            "field {}: must be an array of {} numbers",
            def.field, def.dimension
        ));
    };
    let v = parse_components(items.iter().map(|x| x.cast_f64()), items.len(), def)
        .map_err(|e| format!("field {}: {e}", def.field))?;
    Ok(Some(v))
}

/// Checks and converts the components of a vector for `def` (`None` in
/// `items` marks a non-number).
pub fn parse_components(
    items: impl Iterator<Item = Option<f64>>,
    len: usize,
    def: &VectorDef,
) -> Result<Vec<f32>, String> {
    if len != def.dimension {
        return Err(format!(
            "expected {} numbers (the index's dimension), got {len}",
            def.dimension
        ));
    }
    let mut out = Vec::with_capacity(len);
    for (i, x) in items.enumerate() {
        let Some(x) = x else {
            return Err(format!("component {i} is not a number"));
        };
        let f = x as f32;
        if !f.is_finite() {
            return Err(format!("component {i} ({x}) is not a finite 32-bit float"));
        }
        out.push(f);
    }
    let mut check = out.clone();
    def.metric.prepare(&mut check)?;
    Ok(out)
}

/// Stores, replaces or deletes the vectors of the change's entity, in its
/// batch; stages the graph changes.
pub fn on_write(core: &Core, change: &mut Change<'_, '_>) -> Result<(), ApiError> {
    let catalog = core.vector().catalog();
    if !catalog.has_table(change.table) {
        return Ok(());
    }
    let local = core.vector();
    let mut scratch = local.scratch.borrow_mut();
    let parsed = match change.new {
        Some(doc) => {
            scratch.clear();
            scratch.extend_from_slice(doc);
            simd_json::to_borrowed_value(&mut scratch[..]).ok()
        }
        None => None,
    };
    let storage = &core.node().storage;
    for def in catalog.for_table(change.table) {
        let new = match &parsed {
            Some(doc) => extract(def, doc).map_err(ApiError::BadRequest)?,
            None => None,
        };
        let entry = def.entry(change.key);
        let new_bytes = new.as_deref().map(distance::encode);
        let same = !change.pending
            && storage.get_with(Family::Vectors, &entry, |old| old == new_bytes.as_deref())?;
        if same {
            continue;
        }
        match &new_bytes {
            Some(b) => change.batch.put(Family::Vectors, &entry, b)?,
            None => change.batch.delete(Family::Vectors, &entry)?,
        }
        change.after.vector.0.push(Staged {
            index: def.id,
            key: change.key.to_string(),
            vector: new,
        });
    }
    Ok(())
}

/// After the batch (or group): the graphs follow committed writes, in
/// write order.
pub fn after_commit(core: &Core, committed: bool, held: Held) {
    if committed && !held.0.is_empty() {
        apply(core, held.0);
    }
}

/// Applies committed graph changes on this core.
pub fn apply(core: &Core, staged: Vec<Staged>) {
    let local = core.vector();
    let catalog = local.catalog();
    for s in staged {
        let Some(def) = catalog.by_id(s.index) else {
            continue;
        };
        let g = local.graph(core.id(), def);
        match s.vector {
            Some(v) => g.upsert(&s.key, v),
            None => g.remove(&s.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::Metric;

    fn def(metric: Metric) -> VectorDef {
        VectorDef::new(1, "t", "e.v", 3, metric, 16, 100, 50)
    }

    fn doc(s: &str) -> BorrowedValue<'static> {
        let bytes: &'static mut [u8] = s.as_bytes().to_vec().leak();
        simd_json::to_borrowed_value(bytes).unwrap()
    }

    #[test]
    fn fields_are_read_and_checked() {
        let d = def(Metric::L2);
        assert_eq!(
            extract(&d, &doc(r#"{"e":{"v":[1,2.5,-3]}}"#)).unwrap(),
            Some(vec![1.0, 2.5, -3.0])
        );
        assert_eq!(extract(&d, &doc(r#"{"e":{"v":null}}"#)).unwrap(), None);
        assert_eq!(extract(&d, &doc(r#"{"x":1}"#)).unwrap(), None);
        for bad in [
            r#"{"e":{"v":[1,2]}}"#,
            r#"{"e":{"v":[1,2,"3"]}}"#,
            r#"{"e":{"v":"1,2,3"}}"#,
            r#"{"e":{"v":[1,2,1e300]}}"#,
            r#"{"e":{"v":[1,2,[3]]}}"#,
        ] {
            let e = extract(&d, &doc(bad)).unwrap_err();
            assert!(e.starts_with("field e.v"), "{bad}: {e}");
        }
        assert!(extract(&def(Metric::Cosine), &doc(r#"{"e":{"v":[0,0,0]}}"#)).is_err());
        assert!(extract(&def(Metric::Dot), &doc(r#"{"e":{"v":[1,1,1]}}"#)).is_err());
        assert!(extract(&def(Metric::Dot), &doc(r#"{"e":{"v":[1,0,0]}}"#)).is_ok());
    }
}
