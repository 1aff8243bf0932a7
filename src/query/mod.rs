//! `POST /query`: predicate queries, planned over secondary indexes and
//! executed across cores.
//!
//! * [`parse`] turns the request body into a [`Query`] (every mistake is a
//!   400 naming the field).
//! * The planner ([`plan`]) looks at the table's ready indexes, probes each
//!   usable one for how many entries its key range holds (a bounded count:
//!   the statistics), and takes the most selective. Without a usable index
//!   the query is a full table scan (`full_scan_fallback`), counted in
//!   metrics.
//! * Execution: the index range is read (inline when it is short, on the
//!   blocking pool otherwise) into candidate keys. Below
//!   `query.parallel_threshold` candidates the receiving core fetches and
//!   filters them itself (`index_optimized`); above it the candidates are
//!   grouped by owning core and each owner fetches and filters its share in
//!   batches of `query.batch_size` (`index_parallel`). A full scan runs on
//!   every core at once, each over the keys it owns, on its blocking pool.
//!
//! Semantics (the reference a brute-force filter implements, see
//! `tests/it/query.rs`): a predicate or range matches when the value at the
//! column's path is a JSON scalar comparing equal (or in range) under the
//! index order — numbers numerically, strings bytewise, and a range bound
//! only matches values of its own type. A missing column or an object/array
//! value never matches. Results are ordered by `order_by` (then key), or by
//! key; a cursor continues strictly after the last row returned, so rows
//! that did not change are never returned twice or skipped.

pub mod exec;
pub mod http;
pub mod parse;
pub mod plan;

use crate::index::encoding::{scalar_ref, Scalar, ScalarRef};
pub use exec::ShardRows;
pub use parse::{parse, Query};
use std::cell::RefCell;

/// One core's query state: scratch for checking documents against filters.
#[derive(Default)]
pub struct Local {
    check: RefCell<CheckScratch>,
}

impl Local {
    pub(crate) fn check_scratch(&self) -> &RefCell<CheckScratch> {
        &self.check
    }
}

/// One column condition on a document.
#[derive(Debug, Clone)]
pub struct Cond {
    pub column: String,
    pub path: Vec<String>,
    /// Equality value, or range bounds (value, inclusive).
    pub eq: Option<Scalar>,
    pub lower: Option<(Scalar, bool)>,
    pub upper: Option<(Scalar, bool)>,
}

/// Same type for range purposes (false and true are one type).
fn same_type(a: &Scalar, b: &Scalar) -> bool {
    same_type_tags(a.tag(), b.tag())
}

fn same_type_tags(a: u8, b: u8) -> bool {
    use crate::index::encoding::{TAG_FALSE, TAG_TRUE};
    let norm = |t: u8| if t == TAG_TRUE { TAG_FALSE } else { t };
    norm(a) == norm(b)
}

impl Cond {
    pub fn matches(&self, v: &ScalarRef<'_>) -> bool {
        use std::cmp::Ordering;
        if matches!(v, ScalarRef::Absent) {
            return false;
        }
        if let Some(e) = &self.eq {
            if v.cmp_scalar(e) != Ordering::Equal {
                return false;
            }
        }
        for (bound, lower) in [(&self.lower, true), (&self.upper, false)] {
            let Some((b, inclusive)) = bound else {
                continue;
            };
            if !same_type_tags(v.tag(), b.tag()) {
                return false;
            }
            match (v.cmp_scalar(b), lower) {
                (Ordering::Less, true) | (Ordering::Greater, false) => return false,
                (Ordering::Equal, _) if !inclusive => return false,
                _ => {}
            }
        }
        true
    }
}

/// Every condition of a query, evaluated on a stored document.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub conds: Vec<Cond>,
    /// The order_by path, when the rows need a sort key.
    pub order_path: Option<Vec<String>>,
}

/// Reused parse state for [`Filter::check`] (no allocation per row in the
/// steady state).
#[derive(Default)]
pub struct CheckScratch {
    bytes: Vec<u8>,
    buffers: Option<simd_json::Buffers>,
    tape: Option<simd_json::Tape<'static>>,
}

impl Filter {
    /// Whether `doc_bytes` (a stored document) matches; on a match, the
    /// encoded sort value (empty without order_by).
    pub fn check(&self, doc_bytes: &[u8], s: &mut CheckScratch) -> Option<Vec<u8>> {
        let CheckScratch {
            bytes,
            buffers,
            tape,
        } = s;
        bytes.clear();
        bytes.extend_from_slice(doc_bytes);
        let buffers = buffers.get_or_insert_with(|| simd_json::Buffers::new(doc_bytes.len()));
        let mut t = tape.take().unwrap_or_else(simd_json::Tape::null).reset();
        let result = match simd_json::fill_tape(bytes, buffers, &mut t) {
            Ok(()) => self.evaluate(t.as_value()),
            Err(_) => None,
        };
        *tape = Some(t.reset());
        result
    }

    fn evaluate(&self, root: simd_json::tape::Value<'_, '_>) -> Option<Vec<u8>> {
        fn at<'t, 'i>(
            root: simd_json::tape::Value<'t, 'i>,
            path: &[String],
        ) -> Option<simd_json::tape::Value<'t, 'i>> {
            let mut cur = root;
            for seg in path {
                cur = cur.as_object()?.get(seg.as_str())?;
            }
            Some(cur)
        }
        for c in &self.conds {
            let v = at(root, &c.path);
            if !c.matches(&scalar_ref(v.as_ref())) {
                return None;
            }
        }
        let mut sort = Vec::new();
        if let Some(p) = &self.order_path {
            scalar_ref(at(root, p).as_ref()).encode(&mut sort);
        }
        Some(sort)
    }
}
