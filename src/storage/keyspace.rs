//! The keyspace: every column family and every key prefix of the database,
//! in one place.
//!
//! Invariant: user data never meets internal data. Entities are the only
//! user data and live alone in [`Family::Entities`]; everything the server
//! derives or keeps for itself lives in the internal families, so no table
//! or key a client chooses can collide with an internal key.
//!
//! Each feature owns the encoding of its keys inside its family (the index
//! entry layout in `index`, the sequence key in `changefeed::record`); what
//! this module fixes is which family and which `meta` prefix each one uses.

/// A column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Entities, `table:pk` → JSON object. The only user data.
    Entities,
    /// Secondary index entries (`index`): `[id u32 BE][values][entity key]`.
    Indexes,
    /// Change events (`changefeed`): sequence u64 BE → record.
    Changefeed,
    /// Vectors (`vector`): `[index id u32 BE][entity key]` → the vector as
    /// little-endian f32. The source of truth the graphs are built from.
    Vectors,
    /// Time series (`timeseries::key`): catalog, series and point keys.
    Timeseries,
    /// Small server metadata, by the prefixes below.
    Meta,
}

impl Family {
    /// Every family, user data first.
    pub const ALL: [Family; 6] = [
        Family::Entities,
        Family::Indexes,
        Family::Changefeed,
        Family::Vectors,
        Family::Timeseries,
        Family::Meta,
    ];

    /// The RocksDB column family name (stable on disk).
    pub const fn name(self) -> &'static str {
        match self {
            Family::Entities => "entities",
            Family::Indexes => "indexes",
            Family::Changefeed => "changefeed",
            Family::Vectors => "vectors",
            Family::Timeseries => "timeseries",
            Family::Meta => "meta",
        }
    }

    /// Written like a log (append at the end, delete from the front): no
    /// point lookups, so no bloom filters.
    pub const fn is_log(self) -> bool {
        matches!(self, Family::Changefeed)
    }

    /// Holds user data.
    pub const fn is_user(self) -> bool {
        matches!(self, Family::Entities)
    }
}

/// Keys in [`Family::Meta`]. Every internal record the server keeps outside
/// its own family is listed here.
pub mod meta {
    /// `index/<id u32 BE>` → an index definition (JSON).
    pub const INDEX_DEF_PREFIX: &[u8] = b"index/";
    /// The next unused index id (u32 BE); ids are never reused.
    pub const INDEX_NEXT_ID: &[u8] = b"index.next_id";
    /// The change feed's first sequence after the last prune (u64 BE).
    pub const FEED_FIRST_SEQUENCE: &[u8] = b"changefeed.first_sequence";
    /// The change feed's reserved mark: no sequence above it was ever
    /// handed out (u64 BE; written synced).
    pub const FEED_RESERVED: &[u8] = b"changefeed.reserved";
    /// The on-disk format version (u32 BE; absent: version 0, the layout
    /// before versions were recorded). See `storage::format`.
    pub const FORMAT_VERSION: &[u8] = b"format.version";
    /// `vindex/<id u32 BE>` → a vector index definition (JSON).
    pub const VECTOR_INDEX_DEF_PREFIX: &[u8] = b"vindex/";
    /// The next unused vector index id (u32 BE); ids are never reused.
    pub const VECTOR_INDEX_NEXT_ID: &[u8] = b"vindex.next_id";
    /// Time-series per-metric settings (`/ts/config`, JSON; written synced).
    pub const TIMESERIES_CONFIG: &[u8] = b"timeseries.config";
    /// Present once every series has hour rollups (written after the
    /// one-time backfill of a database from before them).
    pub const TIMESERIES_HOUR_ROLLUPS: &[u8] = b"timeseries.hour_rollups";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_only_entities_is_user_data() {
        let mut names: Vec<_> = Family::ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Family::ALL.len());
        assert_eq!(
            Family::ALL.iter().filter(|f| f.is_user()).count(),
            1,
            "entities alone hold user data"
        );
    }

    #[test]
    fn meta_prefixes_do_not_overlap() {
        let keys = [
            meta::INDEX_DEF_PREFIX,
            meta::INDEX_NEXT_ID,
            meta::FEED_FIRST_SEQUENCE,
            meta::FEED_RESERVED,
            meta::FORMAT_VERSION,
            meta::VECTOR_INDEX_DEF_PREFIX,
            meta::VECTOR_INDEX_NEXT_ID,
            meta::TIMESERIES_CONFIG,
            meta::TIMESERIES_HOUR_ROLLUPS,
        ];
        for a in keys {
            for b in keys {
                if a != b {
                    assert!(!b.starts_with(a), "{a:?} is a prefix of {b:?}");
                }
            }
        }
    }
}
