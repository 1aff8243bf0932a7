//! `ReadView`: the narrow read interface (point get, batched get, bounded
//! scan) that planning, verification and backup logic is written against,
//! so it runs the same over the live database, a checkpoint, or an
//! in-memory map in a unit test ([`MemView`]).

use super::{Family, Storage, StorageError};
use std::collections::BTreeMap;

/// Reads from one consistent-enough source of the keyspace.
pub trait ReadView {
    /// Hands the value of `key` (borrowed, not copied) to `f`.
    fn get_with<R>(
        &self,
        family: Family,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StorageError>;

    /// Calls `f(key, value)` for the keys in `[from, to)`, ascending (or
    /// descending with `reverse`), until `f` returns false.
    fn scan(
        &self,
        family: Family,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;
}

impl ReadView for Storage {
    fn get_with<R>(
        &self,
        family: Family,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StorageError> {
        Storage::get_with(self, family, key, f)
    }

    fn scan(
        &self,
        family: Family,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        Storage::scan(self, family, from, to, reverse, f)
    }
}

/// An in-memory keyspace for unit tests of logic written against
/// [`ReadView`].
#[derive(Debug, Default, Clone)]
pub struct MemView {
    data: BTreeMap<(Family, Vec<u8>), Vec<u8>>,
}

impl MemView {
    pub fn put(&mut self, family: Family, key: &[u8], value: &[u8]) {
        self.data.insert((family, key.to_vec()), value.to_vec());
    }

    pub fn delete(&mut self, family: Family, key: &[u8]) {
        self.data.remove(&(family, key.to_vec()));
    }

    /// Deletes every key of `family` in `[from, to)`.
    pub fn delete_range(&mut self, family: Family, from: &[u8], to: &[u8]) {
        if from < to {
            let doomed: Vec<_> = self
                .data
                .range((family, from.to_vec())..(family, to.to_vec()))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                self.data.remove(&k);
            }
        }
    }
}

impl ReadView for MemView {
    fn get_with<R>(
        &self,
        family: Family,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, StorageError> {
        Ok(f(self.data.get(&(family, key.to_vec())).map(Vec::as_slice)))
    }

    fn scan(
        &self,
        family: Family,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        if from >= to {
            return Ok(());
        }
        let range = self
            .data
            .range((family, from.to_vec())..(family, to.to_vec()));
        if reverse {
            for ((_, k), v) in range.rev() {
                if !f(k, v) {
                    break;
                }
            }
        } else {
            for ((_, k), v) in range {
                if !f(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_view_scans_bounded_ranges_both_ways() {
        let mut m = MemView::default();
        for k in [b"a1", b"a2", b"a3", b"b1"] {
            m.put(Family::Indexes, k, b"");
        }
        m.put(Family::Entities, b"a2", b"x");
        let mut fwd = Vec::new();
        m.scan(Family::Indexes, b"a2", b"b", false, |k, _| {
            fwd.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(fwd, vec![b"a2".to_vec(), b"a3".to_vec()]);
        let mut rev = Vec::new();
        m.scan(Family::Indexes, b"a", b"c", true, |k, _| {
            rev.push(k.to_vec());
            rev.len() < 2
        })
        .unwrap();
        assert_eq!(rev, vec![b"b1".to_vec(), b"a3".to_vec()]);
        assert!(m
            .get_with(Family::Entities, b"a2", |v| v.is_some())
            .unwrap());
        assert!(!m
            .get_with(Family::Entities, b"a1", |v| v.is_some())
            .unwrap());
    }
}
