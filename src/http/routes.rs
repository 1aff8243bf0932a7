//! Routes as data: what a route is, and how a request finds its route.
//!
//! Every feature exports its routes as a table of [`Route`] rows (method,
//! path pattern, required role, metrics label); `http::dispatch` joins the
//! tables into [`Table`], and everything else is derived from it: which
//! route a request takes, 404 versus 405 with the `Allow` header, the
//! latency label, and the role a caller needs. Adding an endpoint is one
//! row here in its feature, one [`RouteId`] variant, and one arm of the
//! dispatcher's `match`.

use themis_io::Method;

/// The role a caller needs for a route (enforced by `http::auth` when
/// `server.enable_auth` is on; every key's role grants the ones below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Anyone (liveness probes).
    Public,
    Read,
    Write,
    Admin,
}

/// Which table a request of a route touches: what a key limited to some
/// tables (`server.api_keys[].tables`) is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// No table's data (health, counters): any key with the role.
    None,
    /// Every table (configuration, change-feed retention): only keys that
    /// are not limited.
    All,
    /// The table of the entity key in the path (`/entities/{key}`).
    PathKey,
    /// The table of the body's `key` field (`POST /entities`).
    BodyKey,
    /// The body's `table` field (queries, index administration).
    BodyTable,
    /// The `table` query parameter; when absent, a key limited to one
    /// table reads that table (change feed, index stats).
    QueryTable,
    /// Always this one table (a feature that keeps its data in a reserved
    /// table: the semantic cache, the LLM store).
    Fixed(&'static str),
}

/// Every route. Also the index of its latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    EntityGet,
    EntityPut,
    EntityDelete,
    EntityPost,
    Query,
    IndexCreate,
    IndexDrop,
    IndexRebuild,
    IndexStats,
    ChangefeedPoll,
    /// Timed until the stream's head is sent (the stream itself is not).
    ChangefeedStream,
    ChangefeedStats,
    ChangefeedRetention,
    VectorSearch,
    VectorBatchInsert,
    VectorDeleteByFilter,
    VectorIndexCreate,
    VectorIndexDrop,
    VectorIndexStats,
    VectorIndexConfigGet,
    VectorIndexConfigSet,
    VectorIndexSave,
    VectorIndexLoad,
    Health,
    Stats,
    Metrics,
    ConfigGet,
    ConfigSet,
    Backup,
    Verify,
    TsPut,
    TsQuery,
    TsAggregate,
    TsMetrics,
    TsConfigGet,
    TsConfigSet,
    TsRetention,
    RetentionRun,
    TsWrite,
    CachePut,
    CacheQuery,
    CacheStats,
    CacheDeleteEntry,
    CacheClear,
    LlmPut,
    LlmList,
    LlmGet,
    LlmDelete,
    Shards,
    /// No route: unknown path, wrong method, or refused before routing.
    Other,
}

impl RouteId {
    /// How many route ids there are (histogram slots).
    pub const COUNT: usize = RouteId::Other as usize + 1;
}

/// Which paths a route serves.
#[derive(Debug, Clone, Copy)]
pub enum PathPattern {
    Exact(&'static str),
    /// The path starts with this; the rest is the route's argument
    /// (`/entities/{key}`).
    Prefix(&'static str),
}

impl PathPattern {
    #[inline]
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == *p,
            PathPattern::Prefix(p) => path.starts_with(p),
        }
    }
}

/// One row of a route table.
#[derive(Debug)]
pub struct Route {
    pub id: RouteId,
    pub methods: &'static [Method],
    pub path: PathPattern,
    pub role: Role,
    /// The table a request touches (for keys limited to some tables).
    pub tables: Tables,
    /// The `route` label of its latency metrics (rows may share one).
    pub label: &'static str,
}

/// The route tables of every feature, joined.
pub struct Table(pub &'static [&'static [Route]]);

/// How a request was classified.
pub enum Classified {
    Found(&'static Route),
    /// The path exists, the method does not: 405 with this `Allow`.
    WrongMethod(String),
    /// 404.
    NoSuchPath,
}

impl Table {
    pub fn rows(&self) -> impl Iterator<Item = &'static Route> {
        self.0.iter().flat_map(|t| t.iter())
    }

    /// The route of `method path`. Linear in the table, cheap on the hot
    /// path because entity routes come first and a miss is a string
    /// compare.
    #[inline]
    pub fn classify(&self, method: Method, path: &str) -> Classified {
        let mut path_known = false;
        for r in self.rows() {
            if r.path.matches(path) {
                if r.methods.contains(&method) {
                    return Classified::Found(r);
                }
                path_known = true;
            }
        }
        if path_known {
            Classified::WrongMethod(self.allow(path))
        } else {
            Classified::NoSuchPath
        }
    }

    /// The `Allow` header of a path: every method of every row serving it,
    /// in table order.
    fn allow(&self, path: &str) -> String {
        let mut methods: Vec<Method> = Vec::new();
        for r in self.rows().filter(|r| r.path.matches(path)) {
            for m in r.methods {
                if !methods.contains(m) {
                    methods.push(*m);
                }
            }
        }
        methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The label of each route id (`other` for [`RouteId::Other`]).
    pub fn labels(&self) -> [&'static str; RouteId::COUNT] {
        let mut labels = ["other"; RouteId::COUNT];
        for r in self.rows() {
            labels[r.id as usize] = r.label;
        }
        labels
    }

    /// Checks the table: every id but `Other` has a row, and rows of one
    /// id agree on label and role. Run by a unit test.
    pub fn check(&self) -> Result<(), String> {
        let mut seen: [Option<&Route>; RouteId::COUNT] = [None; RouteId::COUNT];
        for r in self.rows() {
            if r.id == RouteId::Other {
                return Err("RouteId::Other has no row".into());
            }
            if let Some(prev) = seen[r.id as usize] {
                if prev.label != r.label || prev.role != r.role || prev.tables != r.tables {
                    return Err(format!("rows of {:?} disagree", r.id));
                }
            }
            seen[r.id as usize] = Some(r);
        }
        match seen[..RouteId::Other as usize]
            .iter()
            .position(Option::is_none)
        {
            Some(i) => Err(format!("route id #{i} has no row")),
            None => Ok(()),
        }
    }
}
