//! The query planner: which index (if any) a query reads.
//!
//! For each ready index of the table that can narrow the query
//! ([`index_access`]: an equality prefix, a range on the next column, or
//! the order column), the planner counts the entries in its key range, up
//! to [`PROBE`] inline. The smallest complete range wins. When every usable
//! range holds more than that, their entries are counted up to
//! [`COUNT_CAP`] (on the blocking pool) and the smallest wins. No usable
//! index: a full scan.
//!
//! Written against [`ReadView`], so the choice is unit-tested over an
//! in-memory keyspace (below).

use super::parse::Query;
use crate::error::ApiError;
use crate::index::encoding::{Scalar, TAG_FALSE, TAG_TRUE};
use crate::index::{Catalog, IndexDef, IndexState};
use crate::storage::{Family, ReadView, StorageError};
use std::sync::Arc;

/// Entries counted inline when probing an index range.
pub const PROBE: usize = 128;
/// Entries counted (on the blocking pool) to compare large ranges.
pub const COUNT_CAP: usize = 100_000;

/// What the inline probe found.
pub enum Probe {
    /// The smallest usable range, read whole: its entries' entity keys.
    Small {
        access: IndexAccess,
        count: u64,
        keys: Vec<String>,
    },
    /// Every usable range holds more than [`PROBE`] entries.
    Large(Vec<IndexAccess>),
    /// No ready index can narrow the query.
    NoIndex,
}

/// Probes every usable ready index of the query's table (bounded reads).
pub fn probe(view: &impl ReadView, catalog: &Catalog, q: &Query) -> Result<Probe, ApiError> {
    let mut best: Option<(IndexAccess, u64, Vec<String>)> = None;
    let mut large = Vec::new();
    for def in catalog
        .for_table(&q.table)
        .filter(|d| d.state == IndexState::Ready)
    {
        let Some(acc) = index_access(def, q) else {
            continue;
        };
        let e = read_entries(view, &acc.def, &acc.from, &acc.to, acc.reverse, PROBE)?;
        if e.complete {
            let n = e.keys.len() as u64;
            if best.as_ref().is_none_or(|(_, b, _)| n < *b) {
                best = Some((acc, n, e.keys));
            }
        } else {
            large.push(acc);
        }
    }
    Ok(match best {
        Some((access, count, keys)) => Probe::Small {
            access,
            count,
            keys,
        },
        None if large.is_empty() => Probe::NoIndex,
        None => Probe::Large(large),
    })
}

/// The range with the fewest entries (counted up to `cap`), and its count.
/// Blocking for large ranges: call on the blocking pool.
pub fn smallest(
    view: &impl ReadView,
    mut large: Vec<IndexAccess>,
    cap: usize,
) -> Result<(IndexAccess, u64), StorageError> {
    let mut counts = Vec::with_capacity(large.len());
    for a in &large {
        counts.push(
            read_entries(view, &a.def, &a.from, &a.to, false, cap)?
                .keys
                .len(),
        );
    }
    let (i, n) = counts
        .iter()
        .enumerate()
        .min_by_key(|(_, n)| **n)
        .map(|(i, n)| (i, *n as u64))
        .unwrap_or((0, 0));
    Ok((large.swap_remove(i), n))
}

/// How the rows are found.
#[derive(Debug, Clone)]
pub struct IndexAccess {
    pub def: Arc<IndexDef>,
    pub from: Vec<u8>,
    pub to: Vec<u8>,
    /// Index order is the result order (read with early stop).
    pub streamable: bool,
    pub reverse: bool,
    /// Bytes before the sort value / key in an entry (for cursor anchors).
    pub eq_prefix: Vec<u8>,
    /// The order column is the index column after the equality prefix.
    pub order_in_index: bool,
}

fn type_range(b: &Scalar) -> (u8, u8) {
    match b.tag() {
        TAG_FALSE | TAG_TRUE => (TAG_FALSE, TAG_TRUE + 1),
        t => (t, t + 1),
    }
}

/// The key range of `def` that holds every row the query can match, if the
/// index helps at all.
pub fn index_access(def: &Arc<IndexDef>, q: &Query) -> Option<IndexAccess> {
    let conds = &q.filter.conds;
    let mut prefix = def.prefix().to_vec();
    let mut k = 0;
    for col in &def.columns {
        match conds.iter().find(|c| &c.column == col && c.eq.is_some()) {
            Some(c) => {
                if let Some(e) = &c.eq {
                    e.encode(&mut prefix);
                }
                k += 1;
            }
            None => break,
        }
    }
    let eq_prefix = prefix.clone();
    let n = def.columns.len();
    let order_col = q.order.as_ref().map(|o| o.column.as_str());
    let desc = q.order.as_ref().is_some_and(|o| o.desc);
    let (from, to, ranged) = if k < n {
        let next = &def.columns[k];
        match conds.iter().find(|c| &c.column == next && c.eq.is_none()) {
            Some(c) => {
                let bound_type = c.lower.as_ref().or(c.upper.as_ref()).map(|(b, _)| b)?;
                let (t0, t1) = type_range(bound_type);
                let mut from = prefix.clone();
                match &c.lower {
                    Some((b, inclusive)) => {
                        b.encode(&mut from);
                        if !inclusive {
                            from.push(0xFF);
                        }
                    }
                    None => from.push(t0),
                }
                let mut to = prefix.clone();
                match &c.upper {
                    Some((b, inclusive)) => {
                        b.encode(&mut to);
                        if *inclusive {
                            to.push(0xFF);
                        }
                    }
                    None => to.push(t1),
                }
                (from, to, true)
            }
            None => {
                let mut to = prefix.clone();
                to.push(0xFF);
                (prefix, to, false)
            }
        }
    } else {
        let mut to = prefix.clone();
        to.push(0xFF);
        (prefix, to, false)
    };
    let order_in_index = order_col.is_some_and(|c| k < n && def.columns[k] == c && k + 1 == n);
    let order_is_eq_col = order_col.is_some_and(|c| def.columns[..k].iter().any(|x| x == c));
    let usable = k > 0 || ranged || order_in_index;
    if !usable {
        return None;
    }
    let streamable = match order_col {
        None => k == n,
        Some(_) => order_in_index || (k == n && order_is_eq_col),
    };
    Some(IndexAccess {
        def: def.clone(),
        from,
        to,
        streamable,
        reverse: streamable && desc,
        eq_prefix,
        order_in_index,
    })
}

/// Entity keys of the index entries in `[from, to)`, at most `cap`.
pub struct Entries {
    pub keys: Vec<String>,
    /// All entries of the range were read.
    pub complete: bool,
    /// The last entry read (where a continuation starts).
    pub last: Option<Vec<u8>>,
}

/// Reads at most `cap` entries of `def` in `[from, to)`.
pub fn read_entries(
    view: &impl ReadView,
    def: &IndexDef,
    from: &[u8],
    to: &[u8],
    reverse: bool,
    cap: usize,
) -> Result<Entries, crate::storage::StorageError> {
    let mut e = Entries {
        keys: Vec::new(),
        complete: true,
        last: None,
    };
    view.scan(Family::Indexes, from, to, reverse, |k, _| {
        if e.keys.len() >= cap {
            e.complete = false;
            return false;
        }
        if let Some((_, key)) = def.split_entry(k) {
            e.keys.push(key.to_string());
        }
        e.last = Some(k.to_vec());
        true
    })?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::read::MemView;

    fn def(id: u32, cols: &[&str], state: IndexState) -> Arc<IndexDef> {
        let mut d = IndexDef::new(id, "t", cols.iter().map(|c| c.to_string()).collect(), false);
        d.state = state;
        Arc::new(d)
    }

    fn catalog(defs: Vec<Arc<IndexDef>>) -> Catalog {
        let mut c = Catalog::default();
        c.indexes = defs;
        c
    }

    /// Writes the entries of `n` documents built by `doc(i)` for `defs`.
    fn fill(view: &mut MemView, defs: &[Arc<IndexDef>], n: usize, doc: impl Fn(usize) -> String) {
        for i in 0..n {
            let mut bytes = doc(i).into_bytes();
            let v = simd_json::to_borrowed_value(&mut bytes).unwrap();
            for d in defs {
                view.put(Family::Indexes, &d.entry(&v, &format!("t:{i}")), b"");
            }
        }
    }

    fn query(body: &str) -> Query {
        super::super::parse(body.as_bytes()).unwrap()
    }

    fn chosen(p: &Probe) -> Option<u32> {
        match p {
            Probe::Small { access, .. } => Some(access.def.id),
            _ => None,
        }
    }

    #[test]
    fn picks_the_more_selective_of_two_indexes() {
        let (city, age) = (
            def(1, &["city"], IndexState::Ready),
            def(2, &["age"], IndexState::Ready),
        );
        let mut v = MemView::default();
        // 60 documents: 3 cities (20 each), ages 0..60 (1 each).
        fill(&mut v, &[city.clone(), age.clone()], 60, |i| {
            format!(r#"{{"city":"c{}","age":{i}}}"#, i % 3)
        });
        let c = catalog(vec![city, age]);
        let q = query(
            r#"{"table":"t","predicates":[{"column":"city","value":"c1"},{"column":"age","value":7}]}"#,
        );
        let p = probe(&v, &c, &q).unwrap();
        assert_eq!(chosen(&p), Some(2), "age=7 holds 1 entry, city=c1 holds 20");
        if let Probe::Small { count, keys, .. } = p {
            assert_eq!((count, keys), (1, vec!["t:7".to_string()]));
        }
        let q = query(
            r#"{"table":"t","predicates":[{"column":"city","value":"c1"}],"range":[{"column":"age","gte":0}]}"#,
        );
        assert_eq!(chosen(&probe(&v, &c, &q).unwrap()), Some(1), "20 < 60");
    }

    #[test]
    fn skips_indexes_that_are_not_ready_or_cannot_narrow() {
        let building = def(1, &["city"], IndexState::Building);
        let other = def(2, &["name"], IndexState::Ready);
        let mut v = MemView::default();
        fill(&mut v, &[building.clone(), other.clone()], 10, |i| {
            format!(r#"{{"city":"c{}","name":"n{i}"}}"#, i % 2)
        });
        let c = catalog(vec![building, other]);
        let q = query(r#"{"table":"t","predicates":[{"column":"city","value":"c1"}]}"#);
        assert!(matches!(probe(&v, &c, &q).unwrap(), Probe::NoIndex));
    }

    #[test]
    fn large_ranges_are_compared_by_a_capped_count() {
        let (a, b) = (
            def(1, &["a"], IndexState::Ready),
            def(2, &["b"], IndexState::Ready),
        );
        let mut v = MemView::default();
        // a=1 for every document (400), b=1 for the first 200.
        fill(&mut v, &[a.clone(), b.clone()], 400, |i| {
            format!(r#"{{"a":1,"b":{}}}"#, u8::from(i < 200))
        });
        let c = catalog(vec![a, b]);
        let q = query(
            r#"{"table":"t","predicates":[{"column":"a","value":1},{"column":"b","value":1}]}"#,
        );
        let Probe::Large(large) = probe(&v, &c, &q).unwrap() else {
            panic!("both ranges exceed the probe");
        };
        assert_eq!(large.len(), 2);
        let (acc, n) = smallest(&v, large, COUNT_CAP).unwrap();
        assert_eq!((acc.def.id, n), (2, 200));
    }

    #[test]
    fn order_by_an_indexed_column_streams_in_index_order() {
        let age = def(1, &["age"], IndexState::Ready);
        let q = query(r#"{"table":"t","order_by":{"column":"age","desc":true}}"#);
        let acc = index_access(&age, &q).expect("the order column narrows nothing but orders");
        assert!(acc.streamable && acc.reverse && acc.order_in_index);
        let unordered = query(r#"{"table":"t"}"#);
        assert!(index_access(&age, &unordered).is_none());
    }
}
