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
//! `tests/query.rs`): a predicate or range matches when the value at the
//! column's path is a JSON scalar comparing equal (or in range) under the
//! index order — numbers numerically, strings bytewise, and a range bound
//! only matches values of its own type. A missing column or an object/array
//! value never matches. Results are ordered by `order_by` (then key), or by
//! key; a cursor continues strictly after the last row returned, so rows
//! that did not change are never returned twice or skipped.

pub mod exec;
pub mod parse;

use crate::index::encoding::Scalar;
pub use exec::{run_share, ShardRows, ShardTask};
pub use parse::{parse, Query};

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
    use crate::index::encoding::{TAG_FALSE, TAG_TRUE};
    let norm = |t: u8| if t == TAG_TRUE { TAG_FALSE } else { t };
    norm(a.tag()) == norm(b.tag())
}

impl Cond {
    pub fn matches(&self, v: &Scalar) -> bool {
        if matches!(v, Scalar::Absent) {
            return false;
        }
        if let Some(e) = &self.eq {
            if v.cmp_total(e) != std::cmp::Ordering::Equal {
                return false;
            }
        }
        if let Some((b, inclusive)) = &self.lower {
            if !same_type(v, b) {
                return false;
            }
            match v.cmp_total(b) {
                std::cmp::Ordering::Less => return false,
                std::cmp::Ordering::Equal if !inclusive => return false,
                _ => {}
            }
        }
        if let Some((b, inclusive)) = &self.upper {
            if !same_type(v, b) {
                return false;
            }
            match v.cmp_total(b) {
                std::cmp::Ordering::Greater => return false,
                std::cmp::Ordering::Equal if !inclusive => return false,
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

impl Filter {
    /// Whether `doc` (stored JSON bytes) matches; on a match, the encoded
    /// sort value (empty without order_by).
    pub fn check(&self, doc_bytes: &[u8], scratch: &mut Vec<u8>) -> Option<Vec<u8>> {
        scratch.clear();
        scratch.extend_from_slice(doc_bytes);
        let doc = simd_json::to_borrowed_value(scratch).ok()?;
        for c in &self.conds {
            let v =
                crate::index::encoding::scalar_of(crate::index::encoding::lookup(&doc, &c.path));
            if !c.matches(&v) {
                return None;
            }
        }
        let mut sort = Vec::new();
        if let Some(p) = &self.order_path {
            crate::index::encoding::encode_doc_value(
                &mut sort,
                crate::index::encoding::lookup(&doc, p),
            );
        }
        Some(sort)
    }
}
