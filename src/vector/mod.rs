//! Vector search: HNSW indexes (hnsw_rs) on an entity field, one graph per
//! core and index, searched across cores.
//!
//! A vector index covers one table's field (default `embedding`): a JSON
//! array of `dimension` finite numbers. From its creation on, every entity
//! write of the table maintains it in the write pipeline ([`maintain`]).
//!
//! * **Source of truth**: the `vectors` column family,
//!   `[index id u32 BE][entity key] → the vector as little-endian f32`,
//!   written in the entity's own batch. A graph is derived state: rebuilt
//!   on start-up from that family ([`load`]) and never the only copy.
//! * **One graph per core** ([`graph`]): each core indexes the vectors of
//!   the entities it owns. hnsw_rs cannot delete a point, so each core maps
//!   graph ids to keys and back; an update gives the key a new id (the old
//!   one becomes a tombstone), a delete drops the mapping, and a search only
//!   keeps ids that are still mapped — so it never returns a deleted or
//!   stale vector. Past [`REBUILD_DELETED_SHARE`] tombstones the core's
//!   graph is rebuilt off the reactor.
//! * **Graph writes never run on a reactor**: each core's index has a
//!   helper thread that inserts (bulk loads with hnsw_rs's rayon
//!   `parallel_insert`). A vector written but not yet in the graph is
//!   searched exactly, so a search sees every acknowledged write.
//! * **Searches** fan out to every core ([`search`]); each returns its
//!   local top-k and the receiving core merges them. Filters take
//!   `/query`'s predicates and ranges and are exact.
//! * The catalog ([`Catalog`]) is persisted in `meta` and published like
//!   the secondary index catalog: create and drop run under its lock, a
//!   create of an existing index with the same parameters is a no-op and
//!   with different ones a 409.

pub mod block;
pub mod distance;
pub mod dump;
pub mod frozen;
pub mod graph;
pub mod http;
pub mod load;
pub mod maintain;
pub mod prune;
pub mod search;
pub mod search_body;

pub use distance::Metric;

use crate::published::{LocalCopy, Published};
use crate::storage::keyspace::meta::{
    VECTOR_INDEX_DEF_PREFIX as META_PREFIX, VECTOR_INDEX_NEXT_ID,
};
use crate::storage::{Family, Storage, StorageError};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Largest `dimension` of an index.
pub const MAX_DIMENSION: usize = 4096;
/// Largest `k` of a search.
pub const MAX_K: usize = 1000;
/// Largest `ef` (search breadth) of a search or an index's `ef_search`.
pub const MAX_EF: usize = 2000;
/// `m` (links per node): hnsw_rs exits the process above 256; 128 is
/// already far past any useful value.
pub const MAX_M: usize = 128;
pub const MIN_M: usize = 2;
pub const MAX_EF_CONSTRUCTION: usize = 10_000;
/// Most items in one `batch_insert`.
pub const MAX_BATCH_ITEMS: usize = 10_000;
/// Most vector indexes in the server (each has a helper thread per core).
pub const MAX_INDEXES: usize = 16;
/// A core's graph is rebuilt when this share of its points are tombstones.
pub const REBUILD_DELETED_SHARE: f64 = 0.2;
/// ... and it has at least this many points.
pub const REBUILD_MIN_POINTS: usize = 64;

/// One vector index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VectorDef {
    pub id: u32,
    pub table: String,
    pub field: String,
    pub dimension: usize,
    pub metric: Metric,
    pub m: usize,
    pub ef_construction: usize,
    /// Search breadth when a search does not give `ef` (hot: `PUT
    /// /vector/index/config`).
    pub ef_search: usize,
    #[serde(skip)]
    path: Vec<String>,
}

impl VectorDef {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u32,
        table: &str,
        field: &str,
        dimension: usize,
        metric: Metric,
        m: usize,
        ef_construction: usize,
        ef_search: usize,
    ) -> VectorDef {
        let mut d = VectorDef {
            id,
            table: table.to_string(),
            field: field.to_string(),
            dimension,
            metric,
            m,
            ef_construction,
            ef_search,
            path: Vec::new(),
        };
        d.prepare();
        d
    }

    fn prepare(&mut self) {
        self.path = self.field.split('.').map(str::to_string).collect();
    }

    /// The field's dotted path.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// `[id]`: the first key of this index's range in `vectors`.
    pub fn prefix(&self) -> [u8; 4] {
        self.id.to_be_bytes()
    }

    /// The first key after this index's range.
    pub fn end(&self) -> [u8; 4] {
        (self.id + 1).to_be_bytes()
    }

    /// The `vectors` key of entity `key`.
    pub fn entry(&self, key: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + key.len());
        out.extend_from_slice(&self.prefix());
        out.extend_from_slice(key.as_bytes());
        out
    }

    /// Whether `other` asks for the same index (what an idempotent create
    /// compares).
    pub fn same_params(&self, other: &VectorDef) -> bool {
        (self.dimension, self.metric, self.m, self.ef_construction)
            == (
                other.dimension,
                other.metric,
                other.m,
                other.ef_construction,
            )
    }
}

/// Every vector index.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub indexes: Vec<Arc<VectorDef>>,
    next_id: u32,
}

impl Catalog {
    pub fn for_table<'a>(
        &'a self,
        table: &'a str,
    ) -> impl Iterator<Item = &'a Arc<VectorDef>> + 'a {
        self.indexes.iter().filter(move |d| d.table == table)
    }

    pub fn has_table(&self, table: &str) -> bool {
        self.indexes.iter().any(|d| d.table == table)
    }

    pub fn find(&self, table: &str, field: &str) -> Option<&Arc<VectorDef>> {
        self.indexes
            .iter()
            .find(|d| d.table == table && d.field == field)
    }

    pub fn by_id(&self, id: u32) -> Option<&Arc<VectorDef>> {
        self.indexes.iter().find(|d| d.id == id)
    }
}

fn def_key(id: u32) -> Vec<u8> {
    let mut key = META_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// What [`Vectors::create`] did.
pub enum Created {
    New(Arc<VectorDef>),
    /// The same table and field were indexed already (its definition).
    Existing(Arc<VectorDef>),
    TooMany,
}

/// The server-wide vector state (the node's part): the catalog every core
/// reads through its own copy.
pub struct Vectors {
    pub catalog: Published<Catalog>,
}

impl Vectors {
    /// Loads the definitions stored in `meta`.
    pub fn open(storage: &Storage) -> Result<Vectors, StorageError> {
        let (defs, stored_next) = storage.load_definitions::<VectorDef>(
            META_PREFIX,
            VECTOR_INDEX_NEXT_ID,
            "vector index",
        )?;
        let indexes: Vec<Arc<VectorDef>> = defs
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
        tracing::info!(indexes = indexes.len(), "vector index catalog loaded");
        Ok(Vectors {
            catalog: Published::new(Catalog { indexes, next_id }),
        })
    }

    fn put_def(
        b: &mut crate::storage::ChangeBatch<'_>,
        def: &VectorDef,
    ) -> Result<(), StorageError> {
        b.put(
            Family::Meta,
            &def_key(def.id),
            &serde_json::to_vec(def).unwrap_or_default(),
        )
    }

    /// Creates the index `want` describes (its id is allocated here), in
    /// one step under the catalog's lock: the id and definition are
    /// persisted (fsynced) and published. Blocking: off the reactor.
    pub fn create(&self, storage: &Storage, want: VectorDef) -> Result<Created, StorageError> {
        self.catalog.update(|c| {
            if let Some(d) = c.find(&want.table, &want.field) {
                return Ok(Created::Existing(d.clone()));
            }
            if c.indexes.len() >= MAX_INDEXES {
                return Ok(Created::TooMany);
            }
            let id = c.next_id.max(1);
            let mut def = want;
            def.id = id;
            def.prepare();
            let mut b = storage.batch();
            b.put(Family::Meta, VECTOR_INDEX_NEXT_ID, &(id + 1).to_be_bytes())?;
            Vectors::put_def(&mut b, &def)?;
            storage.commit_synced(b)?;
            c.next_id = id + 1;
            let def = Arc::new(def);
            c.indexes.push(def.clone());
            Ok(Created::New(def))
        })
    }

    /// Changes an index's `ef_search` (persisted, then published).
    pub fn set_ef_search(
        &self,
        storage: &Storage,
        id: u32,
        ef_search: usize,
    ) -> Result<Option<Arc<VectorDef>>, StorageError> {
        self.catalog.update(|c| {
            let Some(slot) = c.indexes.iter_mut().find(|d| d.id == id) else {
                return Ok(None);
            };
            let mut def = (**slot).clone();
            def.ef_search = ef_search;
            let mut b = storage.batch();
            Vectors::put_def(&mut b, &def)?;
            storage.commit_synced(b)?;
            *slot = Arc::new(def);
            Ok(Some(slot.clone()))
        })
    }

    /// Drops index `id`: its definition's removal is persisted, then
    /// published (its vectors are deleted afterwards). Blocking.
    pub fn drop_def(&self, storage: &Storage, id: u32) -> Result<(), StorageError> {
        self.catalog.update(|c| {
            let mut b = storage.batch();
            b.delete(Family::Meta, &def_key(id))?;
            storage.commit_synced(b)?;
            c.indexes.retain(|d| d.id != id);
            Ok(())
        })
    }
}

/// One core's vector state (the core's part).
pub struct Local {
    catalog: LocalCopy<Catalog>,
    shared: Arc<Vectors>,
    /// This core's graph of each index, by id (made on first use).
    graphs: RefCell<HashMap<u32, Rc<graph::CoreGraph>>>,
    /// Scratch for parsing documents.
    scratch: RefCell<Vec<u8>>,
}

impl Local {
    pub fn new(shared: &Arc<Vectors>) -> Local {
        Local {
            catalog: LocalCopy::new(&shared.catalog),
            shared: shared.clone(),
            graphs: Default::default(),
            scratch: Default::default(),
        }
    }

    /// The catalog for the current request (refreshed when it changed).
    pub fn catalog(&self) -> Rc<Catalog> {
        self.catalog.get(&self.shared.catalog)
    }

    /// This core's graph of `def` (made, empty and loading, on first use).
    pub fn graph(&self, core_id: usize, def: &Arc<VectorDef>) -> Rc<graph::CoreGraph> {
        if let Some(g) = self.graphs.borrow().get(&def.id) {
            return g.clone();
        }
        let g = Rc::new(graph::CoreGraph::new(core_id, def.clone()));
        self.graphs.borrow_mut().insert(def.id, g.clone());
        g
    }

    /// This core's graph of index `id`, if it was made.
    pub fn existing_graph(&self, id: u32) -> Option<Rc<graph::CoreGraph>> {
        self.graphs.borrow().get(&id).cloned()
    }

    /// Forgets this core's graph of an index (dropped, or reloaded): its
    /// helper thread ends once the last search holding it is done.
    pub fn forget(&self, id: u32) {
        self.graphs.borrow_mut().remove(&id);
    }
}

/// Validates a field path.
pub fn check_field(f: &str) -> Result<(), String> {
    crate::index::check_column(f).map_err(|e| e.replace("column", "field"))
}
