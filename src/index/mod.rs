//! Secondary indexes: the catalog, index entries, and online builds.
//!
//! An index covers one table and one or more columns (dotted paths such as
//! `address.city`). Every entity of the table has exactly one entry per
//! index, in the `indexes` column family:
//!
//! ```text
//! [index id: u32 big-endian][encoded column 1]…[encoded column N][entity key]
//! ```
//!
//! with the column values encoded by [`encoding`] (order-preserving, so a
//! range of values is a range of keys; missing values sort first). The
//! entry has an empty value: the entity key is the suffix.
//!
//! Invariants:
//! * Index entries change in the same `WriteBatch` as the entity they
//!   describe (the write hook in [`maintain`]): no reader sees one without
//!   the other. Updates delete the old entry, deletes remove it.
//! * The catalog is a [`Published`] value: writers on every core read it
//!   through their own copy, so an index created at runtime is maintained by
//!   every write that starts after the core refreshed its copy. A build
//!   refreshes its core's copy before reading any entity, which is what
//!   makes the online backfill race-free (see [`build`]).
//! * Index ids are never reused (a dropped index's entries may still be
//!   being deleted), and never given twice: [`Indexes::create`] allocates
//!   the id, persists it with the definition and publishes the definition
//!   in one step under the catalog's lock.
//! * `unique` indexes hold when two writes arrive on different cores at once:
//!   a write first claims its value on the value's arbiter core (the owner
//!   of the encoded value's hash) and releases the claim after its commit,
//!   so at any moment a taken value is visible as a claim or as an entry
//!   ([`unique`]). Values containing null or a missing column are not
//!   constrained.

pub mod build;
pub mod encoding;
pub mod http;
pub mod maintain;
pub mod unique;

use crate::published::{LocalCopy, Published};
use crate::storage::keyspace::meta::{INDEX_DEF_PREFIX as META_PREFIX, INDEX_NEXT_ID};
use crate::storage::{Family, Storage, StorageError};
use serde::{Deserialize, Serialize};
use simd_json::BorrowedValue;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
/// Most columns in a composite index.
pub const MAX_COLUMNS: usize = 8;
/// Most indexes on one table: every write of the table maintains each of
/// them, so their number bounds the work of one write.
pub const MAX_INDEXES_PER_TABLE: usize = 32;

/// Where an index is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    /// Maintained by writes, being backfilled; not used by queries yet.
    Building,
    /// Complete: queries may use it.
    Ready,
    /// The build found a violation (duplicate values in a unique index).
    Failed,
}

/// One index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexDef {
    pub id: u32,
    pub table: String,
    pub columns: Vec<String>,
    pub unique: bool,
    pub state: IndexState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    paths: Vec<Vec<String>>,
}

impl IndexDef {
    pub fn new(id: u32, table: &str, columns: Vec<String>, unique: bool) -> IndexDef {
        let mut d = IndexDef {
            id,
            table: table.to_string(),
            columns,
            unique,
            state: IndexState::Building,
            error: None,
            paths: Vec::new(),
        };
        d.prepare();
        d
    }

    fn prepare(&mut self) {
        self.paths = self
            .columns
            .iter()
            .map(|c| c.split('.').map(str::to_string).collect())
            .collect();
    }

    pub fn paths(&self) -> &[Vec<String>] {
        &self.paths
    }

    /// `[id]`: the first key of this index's range.
    pub fn prefix(&self) -> [u8; 4] {
        self.id.to_be_bytes()
    }

    /// The first key after this index's range.
    pub fn end(&self) -> [u8; 4] {
        (self.id + 1).to_be_bytes()
    }

    /// `[id][values]` of a document (the unique-claim key), and whether the
    /// values are constrained (no null or missing column).
    pub fn value_prefix(&self, doc: &BorrowedValue<'_>, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.extend_from_slice(&self.prefix());
        let mut constrained = true;
        for p in &self.paths {
            let start = out.len();
            encoding::encode_doc_value(out, encoding::lookup(doc, p));
            constrained &= out[start] > encoding::TAG_NULL;
        }
        constrained
    }

    /// The full entry key of `key` with document `doc`.
    pub fn entry(&self, doc: &BorrowedValue<'_>, key: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + key.len());
        self.value_prefix(doc, &mut out);
        out.extend_from_slice(key.as_bytes());
        out
    }

    /// Splits an entry key into the encoded values and the entity key.
    pub fn split_entry<'a>(&self, entry: &'a [u8]) -> Option<(&'a [u8], &'a str)> {
        let mut i = 4;
        for _ in &self.paths {
            i += encoding::encoded_len(entry.get(i..)?)?;
        }
        Some((&entry[4..i], std::str::from_utf8(&entry[i..]).ok()?))
    }
}

/// Every index, grouped for the write path.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub indexes: Vec<Arc<IndexDef>>,
    /// The next unused id (persisted in `meta` before it is used).
    next_id: u32,
}

impl Catalog {
    pub fn for_table<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a Arc<IndexDef>> + 'a {
        self.indexes.iter().filter(move |d| d.table == table)
    }

    pub fn has_table(&self, table: &str) -> bool {
        self.indexes.iter().any(|d| d.table == table)
    }

    pub fn find(&self, table: &str, columns: &[String]) -> Option<&Arc<IndexDef>> {
        self.indexes
            .iter()
            .find(|d| d.table == table && d.columns == columns)
    }

    pub fn by_id(&self, id: u32) -> Option<&Arc<IndexDef>> {
        self.indexes.iter().find(|d| d.id == id)
    }
}

/// The meta key of index `id`'s definition.
fn def_key(id: u32) -> Vec<u8> {
    let mut key = META_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// What [`Indexes::create`] did.
pub enum Created {
    /// A new definition, published (state `building`).
    New(IndexDef),
    /// The same table and columns were indexed already.
    Existing(Arc<IndexDef>),
    /// The table has [`MAX_INDEXES_PER_TABLE`] indexes already.
    TooMany,
}

/// The server-wide index state (the node's part): the catalog every core
/// reads through its own copy, and the progress of builds.
pub struct Indexes {
    pub catalog: Published<Catalog>,
    pub builds: build::Builds,
}

impl Indexes {
    /// Loads the definitions stored in `meta`.
    pub fn open(storage: &Storage) -> Result<Indexes, StorageError> {
        let (defs, stored_next) =
            storage.load_definitions::<IndexDef>(META_PREFIX, INDEX_NEXT_ID, "index")?;
        let indexes: Vec<Arc<IndexDef>> = defs
            .into_iter()
            .map(|mut d| {
                d.prepare();
                Arc::new(d)
            })
            .collect();
        let next_id = indexes
            .iter()
            .map(|d| d.id.saturating_add(1))
            .fold(stored_next.max(1), u32::max);
        tracing::info!(indexes = indexes.len(), "index catalog loaded");
        Ok(Indexes {
            catalog: Published::new(Catalog { indexes, next_id }),
            builds: Default::default(),
        })
    }

    /// Persists a definition whose state changed.
    pub fn save(storage: &Storage, def: &IndexDef) -> Result<(), StorageError> {
        let mut b = storage.batch();
        b.put(
            Family::Meta,
            &def_key(def.id),
            &serde_json::to_vec(def).unwrap_or_default(),
        )?;
        storage.commit_synced(b)
    }

    pub fn forget(storage: &Storage, id: u32) -> Result<(), StorageError> {
        let mut b = storage.batch();
        b.delete(Family::Meta, &def_key(id))?;
        storage.commit_synced(b)
    }

    /// Creates an index on `table` `columns`. Under the catalog's lock, in
    /// one step: the id is allocated, the next id and the definition are
    /// persisted (fsynced), and the definition is published. So two
    /// concurrent creates on two cores never get the same id, and the same
    /// index is never created twice. Blocking (a synced write): off the
    /// reactor.
    pub fn create(
        &self,
        storage: &Storage,
        table: &str,
        columns: Vec<String>,
        unique: bool,
    ) -> Result<Created, StorageError> {
        self.catalog.update(|c| {
            if let Some(d) = c.find(table, &columns) {
                return Ok(Created::Existing(d.clone()));
            }
            if c.for_table(table).count() >= MAX_INDEXES_PER_TABLE {
                return Ok(Created::TooMany);
            }
            allocate(c, storage, table, columns, unique).map(Created::New)
        })
    }

    /// A fresh copy of `old` under a new id takes its place (a rebuild),
    /// in one step as [`Indexes::create`]; the old definition's removal is
    /// persisted in the same step (its entries are deleted afterwards).
    pub fn recreate(&self, storage: &Storage, old: &IndexDef) -> Result<IndexDef, StorageError> {
        self.catalog.update(|c| {
            let def = allocate(c, storage, &old.table, old.columns.clone(), old.unique)?;
            Indexes::forget(storage, old.id)?;
            c.indexes.retain(|d| d.id != old.id);
            Ok(def)
        })
    }

    /// Records a finished build's outcome (ready or failed), persisted and
    /// then published, under the catalog's lock — only if the index still
    /// exists: a drop or rebuild that won the race is never undone by a
    /// build finishing late. Returns whether it was recorded. Blocking.
    pub fn finish_build(&self, storage: &Storage, def: IndexDef) -> Result<bool, StorageError> {
        self.catalog.update(|c| {
            let Some(slot) = c.indexes.iter_mut().find(|d| d.id == def.id) else {
                return Ok(false);
            };
            Indexes::save(storage, &def)?;
            *slot = Arc::new(def);
            Ok(true)
        })
    }

    /// Drops index `id`: its definition's removal is persisted, then
    /// published, under the catalog's lock (its entries are deleted
    /// afterwards; queries no longer see it). Blocking.
    pub fn drop_def(&self, storage: &Storage, id: u32) -> Result<(), StorageError> {
        self.catalog.update(|c| {
            Indexes::forget(storage, id)?;
            c.indexes.retain(|d| d.id != id);
            Ok(())
        })
    }
}

/// Allocates the next id for a new definition, persists both, and adds the
/// definition to `c` (the caller holds the catalog's lock).
fn allocate(
    c: &mut Catalog,
    storage: &Storage,
    table: &str,
    columns: Vec<String>,
    unique: bool,
) -> Result<IndexDef, StorageError> {
    let id = c.next_id.max(1);
    let def = IndexDef::new(id, table, columns, unique);
    let mut b = storage.batch();
    b.put(Family::Meta, INDEX_NEXT_ID, &(id + 1).to_be_bytes())?;
    b.put(
        Family::Meta,
        &def_key(id),
        &serde_json::to_vec(&def).unwrap_or_default(),
    )?;
    storage.commit_synced(b)?;
    c.next_id = id + 1;
    c.indexes.push(Arc::new(def.clone()));
    Ok(def)
}

/// One core's index state (the core's part).
pub struct Local {
    /// This core's copy of the catalog.
    catalog: LocalCopy<Catalog>,
    /// Where it is refreshed from.
    shared: Arc<Indexes>,
    /// Unique values this core arbitrates.
    claims: RefCell<unique::Claims>,
    /// Scratch for parsing documents into entries.
    scratch: RefCell<Vec<u8>>,
    /// Builds this core has started (ids are never reused), so that a
    /// repeated start (a retried `StartBuild`) never builds a share twice.
    started_builds: RefCell<std::collections::HashSet<u32>>,
}

impl Local {
    pub fn new(shared: &Arc<Indexes>) -> Local {
        Local {
            catalog: LocalCopy::new(&shared.catalog),
            shared: shared.clone(),
            claims: Default::default(),
            scratch: Default::default(),
            started_builds: Default::default(),
        }
    }

    /// Marks build `id` started on this core; false if it already was.
    pub(crate) fn claim_build(&self, id: u32) -> bool {
        self.started_builds.borrow_mut().insert(id)
    }

    /// The catalog for the current request (refreshed when it changed).
    pub fn catalog(&self) -> Rc<Catalog> {
        self.catalog.get(&self.shared.catalog)
    }

    fn claims(&self) -> &RefCell<unique::Claims> {
        &self.claims
    }

    fn scratch(&self) -> &RefCell<Vec<u8>> {
        &self.scratch
    }
}

/// Validates a column path.
pub fn check_column(c: &str) -> Result<(), String> {
    if c.is_empty() || c.len() > 256 {
        return Err(format!("column {c:?}: must be 1..256 bytes"));
    }
    if c.split('.').any(str::is_empty) {
        return Err(format!("column {c:?}: empty segment in dotted path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> BorrowedValue<'static> {
        let bytes: &'static mut [u8] = s.as_bytes().to_vec().leak();
        simd_json::to_borrowed_value(bytes).unwrap()
    }

    #[test]
    fn entries_split_back_into_values_and_key() {
        let d = IndexDef::new(7, "users", vec!["address.city".into(), "age".into()], false);
        let v = doc(r#"{"address":{"city":"Köln"},"age":30}"#);
        let e = d.entry(&v, "users:a:b");
        assert_eq!(&e[..4], &7u32.to_be_bytes());
        let (vals, key) = d.split_entry(&e).unwrap();
        assert_eq!(key, "users:a:b");
        let (city, n) = encoding::decode(vals).unwrap();
        assert_eq!(city, encoding::Scalar::String("Köln".into()));
        assert_eq!(
            encoding::decode(&vals[n..]).unwrap().0,
            encoding::Scalar::Number(30.0)
        );
    }

    #[test]
    fn missing_and_null_values_are_not_constrained() {
        let d = IndexDef::new(1, "t", vec!["email".into()], true);
        let mut out = Vec::new();
        assert!(d.value_prefix(&doc(r#"{"email":"a@b"}"#), &mut out));
        assert!(!d.value_prefix(&doc(r#"{"email":null}"#), &mut out));
        assert!(!d.value_prefix(&doc(r#"{"other":1}"#), &mut out));
        assert!(!d.value_prefix(&doc(r#"{"email":[1]}"#), &mut out));
    }

    fn storage(dir: &std::path::Path) -> Storage {
        let cfg = crate::config::StorageConfig {
            rocksdb_path: dir.to_path_buf(),
            memtable_size_mb: 4,
            block_cache_size_mb: 8,
            ..Default::default()
        };
        Storage::open(&cfg).unwrap()
    }

    #[test]
    fn a_build_finishing_after_a_drop_does_not_bring_the_index_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let st = storage(dir.path());
            let ix = Indexes::open(&st).unwrap();
            let Created::New(def) = ix.create(&st, "t", vec!["a".into()], false).unwrap() else {
                panic!("new index expected");
            };
            let mut done = def.clone();
            done.state = IndexState::Ready;
            ix.drop_def(&st, def.id).unwrap();
            assert!(
                !ix.finish_build(&st, done).unwrap(),
                "dropped: not recorded"
            );
            assert!(ix.catalog.current().by_id(def.id).is_none());
            // A rebuild's old definition is gone from storage too.
            let Created::New(kept) = ix.create(&st, "t", vec!["b".into()], false).unwrap() else {
                panic!("new index expected");
            };
            let fresh = ix.recreate(&st, &kept).unwrap();
            assert!(fresh.id > kept.id);
        }
        let st = storage(dir.path());
        let ix = Indexes::open(&st).unwrap();
        let ids: Vec<u32> = ix.catalog.current().indexes.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![3], "only the rebuilt copy survives a restart");
        // Ids are never reused after a restart.
        let Created::New(next) = ix.create(&st, "t", vec!["c".into()], false).unwrap() else {
            panic!("new index expected");
        };
        assert_eq!(next.id, 4);
    }

    #[test]
    fn columns_are_checked() {
        assert!(check_column("a.b").is_ok());
        assert!(check_column("a..b").is_err());
        assert!(check_column("").is_err());
    }
}
