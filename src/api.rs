//! The HTTP API: routes, and the entity, health and stats handlers.
//!
//! A [`Shard`] is one core's server state and the [`Handler`] its
//! connections call. Entity requests go to the key's owner: answered inline
//! when that is this core, forwarded over the [`ShardRouter`] otherwise.

use crate::changefeed::{self, http::SseStream, local::LocalFeed};
use crate::entity::{self, DocScratch};
use crate::error::ApiError;
use crate::index::Catalog;
use crate::key::{decode_path_key, parse_key};
use crate::metrics::{LatencySnapshot, Route, ShardLatency};
use crate::published::LocalCopy;
use crate::router::{EntityOp, ShardAnswer, ShardCall, ShardReply, ShardRequest, ShardRouter};
use crate::runtime::{LocalRuntime, Runtime};
use crate::server::Shared;
use crate::stats::bump;
use crate::storage::{Family, IndexWrites};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use themis_io::connection::ProtocolError;
use themis_io::{Handler, Method, Request, Response, StreamOut};

/// Reused per-core buffers for building bodies.
#[derive(Default)]
struct Scratch {
    doc: DocScratch,
    value: Vec<u8>,
    body: Vec<u8>,
}

/// One core's server state.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub router: ShardRouter,
    /// This core's latency histograms.
    pub latency: ShardLatency,
    /// This core's copy of the hot-reloadable settings.
    runtime: LocalRuntime,
    /// Span buffer when OTLP export is on.
    pub spans: Option<crate::otlp::CoreSpans>,
    /// This core's change-feed readers and recent events.
    pub feed: Rc<LocalFeed>,
    scratch: RefCell<Scratch>,
    /// Scratch for change-feed records (separate: written while `scratch`
    /// is borrowed).
    record: RefCell<Vec<u8>>,
    /// Scratch for parsing old and new documents for index entries.
    index_scratch: RefCell<Vec<u8>>,
    /// This core's copy of the index catalog.
    catalog: LocalCopy<Catalog>,
    /// Unique values this core arbitrates: encoded value → (key, since).
    claims: RefCell<HashMap<Vec<u8>, (String, Instant)>>,
    /// This shard itself, for spawning tasks that outlive a request.
    me: Weak<Shard>,
    /// Parse state for query filters.
    check_scratch: RefCell<crate::query::CheckScratch>,
}

const ENTITY_METHODS: &str = "GET, HEAD, PUT, DELETE";

impl Shard {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        router: ShardRouter,
        spans: Option<crate::otlp::CoreSpans>,
    ) -> Rc<Self> {
        let runtime = LocalRuntime::new(&shared.runtime);
        let catalog = LocalCopy::new(&shared.indexes.catalog);
        Rc::new_cyclic(|me| Shard {
            catalog,
            claims: RefCell::new(HashMap::new()),
            me: me.clone(),
            check_scratch: RefCell::new(Default::default()),
            index_scratch: RefCell::new(Vec::new()),
            id,
            shared,
            router,
            latency: ShardLatency::default(),
            runtime,
            spans,
            feed: Rc::new(LocalFeed::default()),
            scratch: RefCell::new(Scratch::default()),
            record: RefCell::new(Vec::new()),
        })
    }

    pub(crate) fn check_scratch(&self) -> &RefCell<crate::query::CheckScratch> {
        &self.check_scratch
    }

    /// The index catalog for the current request.
    pub fn catalog(&self) -> Rc<Catalog> {
        self.catalog.get(&self.shared.indexes.catalog)
    }

    /// Starts this core's share of an index build.
    pub fn spawn_index_build(&self, id: u32) {
        if let Some(me) = self.me.upgrade() {
            glommio::spawn_local(crate::index::build::run(me, id)).detach();
        }
    }

    pub(crate) fn counters(&self) -> &crate::stats::ShardCounters {
        &self.shared.counters[self.id]
    }

    /// The settings for the current request.
    pub fn runtime(&self) -> Rc<Runtime> {
        self.runtime.get(&self.shared.runtime)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.runtime().request_timeout_ms)
    }

    /// Which route a request takes (`Other` for unknown paths and wrong
    /// methods).
    fn classify(req: &Request<'_>) -> Route {
        let m = req.method;
        if req.path.starts_with("/entities/") {
            return match m {
                Method::Get | Method::Head => Route::EntityGet,
                Method::Put => Route::EntityPut,
                Method::Delete => Route::EntityDelete,
                _ => Route::Other,
            };
        }
        match (req.path, m) {
            ("/entities", Method::Post) => Route::EntityPost,
            ("/health", Method::Get | Method::Head) => Route::Health,
            ("/stats" | "/api/stats", Method::Get | Method::Head) => Route::Stats,
            ("/metrics", Method::Get | Method::Head) => Route::Metrics,
            ("/config", Method::Get | Method::Head | Method::Post) => Route::Config,
            ("/changefeed", Method::Get | Method::Head) => Route::ChangefeedPoll,
            ("/changefeed/stream", Method::Get) => Route::ChangefeedStream,
            ("/changefeed/stats", Method::Get | Method::Head) => Route::ChangefeedStats,
            ("/changefeed/retention", Method::Post) => Route::ChangefeedRetention,
            ("/query", Method::Post) => Route::Query,
            ("/index/create" | "/index/drop" | "/index/rebuild", Method::Post) => Route::IndexAdmin,
            ("/index/stats", Method::Get | Method::Head) => Route::IndexAdmin,
            _ => Route::Other,
        }
    }

    async fn route(
        &self,
        route: Route,
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Result<Option<SseStream>, ApiError> {
        match route {
            Route::ChangefeedStream => changefeed::http::open_stream(self, req, resp).map(Some),
            _ => self.route_plain(route, req, resp).await.map(|()| None),
        }
    }

    async fn route_plain(
        &self,
        route: Route,
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Result<(), ApiError> {
        let raw_key = req.path.strip_prefix("/entities/").unwrap_or("");
        match route {
            Route::EntityGet => self.get_entity(raw_key, resp).await,
            Route::EntityPut => self.put_entity(raw_key, req.body, resp).await,
            Route::EntityDelete => self.delete_entity(raw_key, resp).await,
            Route::EntityPost => self.post_entity(req.body, resp).await,
            Route::Health => {
                self.health(resp);
                Ok(())
            }
            Route::Stats => self.stats(resp).await,
            Route::Metrics => self.metrics(resp).await,
            Route::Config => {
                if req.method == Method::Post {
                    self.post_config(req.body, resp)
                } else {
                    self.get_config(resp);
                    Ok(())
                }
            }
            Route::ChangefeedPoll => changefeed::http::poll(self, req, resp).await,
            Route::ChangefeedStats => changefeed::http::stats(self, resp),
            Route::ChangefeedRetention => changefeed::http::retention(self, req.body, resp).await,
            Route::Query => {
                let q = crate::query::parse(req.body)?;
                let body = crate::query::exec::execute(self, q).await?;
                resp.json(200, &body);
                Ok(())
            }
            Route::IndexAdmin => match req.path {
                "/index/create" => crate::index::http::create(self, req.body, resp).await,
                "/index/drop" => crate::index::http::drop(self, req.body, resp).await,
                "/index/rebuild" => crate::index::http::rebuild(self, req.body, resp).await,
                _ => crate::index::http::stats(self, req, resp).await,
            },
            Route::ChangefeedStream | Route::Other => Err(unrouted(req)),
        }
    }

    /// Applies an entity change on its owner — `Some(value)` stores,
    /// `None` deletes — together with its change event when `features.cdc`
    /// is on. Returns whether the entity existed before. A delete of a
    /// missing entity changes nothing and records no event.
    fn apply_change(&self, key: &str, value: Option<&[u8]>) -> Result<bool, ApiError> {
        bump(&self.counters().entity_ops, 1);
        let storage = &self.shared.storage;
        let catalog = self.catalog();
        let table = key.split_once(':').map_or(key, |(t, _)| t);
        let mut index = IndexWrites::default();
        let existed = if catalog.has_table(table) {
            // Old entries out, new entries in, in the entity's own batch.
            let mut scratch = self.index_scratch.borrow_mut();
            let old = storage.with_entity(key.as_bytes(), |old| {
                old.map(|o| {
                    scratch.clear();
                    scratch.extend_from_slice(o);
                })
            })?;
            let mut old_entries = Vec::new();
            if old.is_some() {
                if let Ok(doc) = simd_json::to_borrowed_value(&mut scratch) {
                    old_entries = catalog
                        .for_table(table)
                        .map(|d| d.entry(&doc, key))
                        .collect();
                }
            }
            let mut new_entries = Vec::new();
            if let Some(v) = value {
                scratch.clear();
                scratch.extend_from_slice(v);
                if let Ok(doc) = simd_json::to_borrowed_value(&mut scratch) {
                    new_entries = catalog
                        .for_table(table)
                        .map(|d| d.entry(&doc, key))
                        .collect();
                }
            }
            for e in &old_entries {
                if !new_entries.contains(e) {
                    index.deletes.push(e.clone());
                }
            }
            for e in new_entries {
                if !old_entries.contains(&e) {
                    index.puts.push(e);
                }
            }
            old.is_some()
        } else {
            storage.entity_exists(key.as_bytes())?
        };
        if value.is_none() && !existed {
            return Ok(false);
        }
        if self.runtime().features.cdc {
            let mut record = self.record.borrow_mut();
            self.shared
                .changefeed
                .commit(storage, self.id, key, value, &index, &mut record)?;
            bump(&self.counters().feed_events, 1);
            self.feed.poke();
        } else {
            storage.write_change(key.as_bytes(), value, None, &index)?;
        }
        Ok(existed)
    }

    /// Claims a unique value on this core (its arbiter): refused while
    /// another key holds a live claim or an index entry for it.
    fn claim_unique(&self, prefix: &[u8], key: &str) -> Result<(), ApiError> {
        let lease = self.request_timeout() * 2;
        let now = Instant::now();
        let mut claims = self.claims.borrow_mut();
        if let Some((holder, at)) = claims.get(prefix) {
            if holder != key && now.duration_since(*at) < lease {
                return Err(ApiError::Conflict(format!(
                    "unique index: the value is being written by {holder}"
                )));
            }
        }
        let mut end = prefix.to_vec();
        end.push(0xFF);
        let mut holder = None;
        self.shared
            .storage
            .scan(Family::Indexes, prefix, &end, false, |k, _| {
                let other = &k[prefix.len()..];
                if other != key.as_bytes() {
                    holder = Some(String::from_utf8_lossy(other).into_owned());
                    return false;
                }
                true
            })?;
        if let Some(h) = holder {
            return Err(ApiError::Conflict(format!(
                "unique index: entity {h} already has this value"
            )));
        }
        claims.insert(prefix.to_vec(), (key.to_string(), now));
        Ok(())
    }

    fn release_unique(&self, prefix: &[u8], key: &str) {
        let mut claims = self.claims.borrow_mut();
        if claims.get(prefix).is_some_and(|(k, _)| k == key) {
            claims.remove(prefix);
        }
    }

    /// Claims (`release == false`) or releases a unique value on its
    /// arbiter core.
    async fn unique_call(&self, prefix: Vec<u8>, key: &str, release: bool) -> Result<(), ApiError> {
        let arbiter = if self.router.shards() == 1 {
            0
        } else {
            crate::router::owner_of(&prefix, self.router.shards())
        };
        if arbiter == self.id {
            if release {
                self.release_unique(&prefix, key);
                return Ok(());
            }
            return self.claim_unique(&prefix, key);
        }
        let call = if release {
            ShardCall::UniqueRelease {
                prefix,
                key: key.to_string(),
            }
        } else {
            ShardCall::UniqueClaim {
                prefix,
                key: key.to_string(),
            }
        };
        match self
            .router
            .call(arbiter, call, self.request_timeout())
            .await?
        {
            ShardAnswer::Claim(Ok(())) => Ok(()),
            ShardAnswer::Claim(Err(msg)) => Err(ApiError::Conflict(msg)),
            _ => Err(ApiError::Unavailable("unexpected answer from a shard")),
        }
    }

    async fn get_entity(&self, raw_key: &str, resp: &mut Response<'_>) -> Result<(), ApiError> {
        let key = decode_path_key(raw_key)?;
        parse_key(&key)?;
        let owner = self.router.owner(&key);
        if owner != self.id {
            return self
                .forward(owner, key.into_owned(), EntityOp::Get, resp)
                .await;
        }
        bump(&self.counters().entity_ops, 1);
        // Hot path: the body goes from RocksDB's pinned slice straight into
        // the connection's output buffer.
        let mut scratch = self.scratch.borrow_mut();
        let prefix = &mut scratch.body;
        prefix.clear();
        entity::write_get_prefix(prefix, &key);
        let found = self
            .shared
            .storage
            .with_entity(key.as_bytes(), |value| match value {
                Some(v) => {
                    resp.start(200, "application/json", prefix.len() + v.len() + 1, &[]);
                    resp.body(prefix);
                    resp.body(v);
                    resp.body(b"}");
                    true
                }
                None => false,
            })?;
        if found {
            Ok(())
        } else {
            Err(ApiError::EntityNotFound(key.into_owned()))
        }
    }

    async fn put_entity(
        &self,
        raw_key: &str,
        body: &[u8],
        resp: &mut Response<'_>,
    ) -> Result<(), ApiError> {
        let key = decode_path_key(raw_key)?;
        parse_key(&key)?;
        self.store(key.into_owned(), body, false, resp).await
    }

    async fn post_entity(&self, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
        self.store(String::new(), body, true, resp).await
    }

    /// Validates the document here, then writes it on the owner.
    async fn store(
        &self,
        key: String,
        body: &[u8],
        key_in_body: bool,
        resp: &mut Response<'_>,
    ) -> Result<(), ApiError> {
        let (key, value, claims) = {
            let mut guard = self.scratch.borrow_mut();
            let s = &mut *guard;
            let from_body = entity::prepare_document(body, key_in_body, &mut s.doc, &mut s.value)?;
            let key = match from_body {
                Some(k) => {
                    parse_key(&k)?;
                    k
                }
                None => key,
            };
            let catalog = self.catalog();
            let table = key.split_once(':').map_or(key.as_str(), |(t, _)| t);
            let claims = if catalog.for_table(table).any(|d| d.unique) {
                let mut copy = s.value.clone();
                let claims = match simd_json::to_borrowed_value(&mut copy) {
                    Ok(doc) => crate::index::http::unique_claims(&catalog, table, &doc),
                    Err(_) => Vec::new(),
                };
                claims
            } else {
                Vec::new()
            };
            let owner = self.router.owner(&key);
            if owner == self.id && claims.is_empty() {
                let created = !self.apply_change(&key, Some(&s.value))?;
                s.body.clear();
                entity::render_put(&mut s.body, &key, created);
                resp.json(if created { 201 } else { 200 }, &s.body);
                return Ok(());
            }
            (key, s.value.clone(), claims)
        };
        // Unique values: claim each on its arbiter core first, write, then
        // release (the committed index entry now holds the value).
        let mut claimed = Vec::new();
        let mut result = Ok(());
        for prefix in claims {
            match self.unique_call(prefix.clone(), &key, false).await {
                Ok(()) => claimed.push(prefix),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let owner = self.router.owner(&key);
            result = if owner == self.id {
                self.apply_change(&key, Some(&value)).map(|existed| {
                    let mut body = Vec::new();
                    entity::render_put(&mut body, &key, !existed);
                    resp.json(if existed { 200 } else { 201 }, &body);
                })
            } else {
                self.forward(owner, key.clone(), EntityOp::Put(value), resp)
                    .await
            };
        }
        for prefix in claimed {
            if let Err(e) = self.unique_call(prefix, &key, true).await {
                tracing::warn!("releasing a unique claim failed (it expires): {e}");
            }
        }
        result
    }

    async fn delete_entity(&self, raw_key: &str, resp: &mut Response<'_>) -> Result<(), ApiError> {
        let key = decode_path_key(raw_key)?;
        parse_key(&key)?;
        let owner = self.router.owner(&key);
        if owner != self.id {
            return self
                .forward(owner, key.into_owned(), EntityOp::Delete, resp)
                .await;
        }
        let deleted = self.apply_change(&key, None)?;
        let mut scratch = self.scratch.borrow_mut();
        scratch.body.clear();
        entity::render_delete(&mut scratch.body, &key, deleted);
        resp.json(200, &scratch.body);
        Ok(())
    }

    async fn forward(
        &self,
        owner: usize,
        key: String,
        op: EntityOp,
        resp: &mut Response<'_>,
    ) -> Result<(), ApiError> {
        bump(&self.counters().forwarded_out, 1);
        match self
            .router
            .call(owner, ShardCall::Entity { key, op }, self.request_timeout())
            .await?
        {
            ShardAnswer::Entity { status, body } => {
                resp.json(status, &body);
                Ok(())
            }
            _ => Err(ApiError::Unavailable("unexpected answer from a shard")),
        }
    }

    /// All cores' latency histograms merged (this core's plus a snapshot
    /// from every other core).
    async fn merged_latency(&self) -> Result<LatencySnapshot, ApiError> {
        let mut merged = self.latency.snapshot();
        let timeout = self.request_timeout();
        for other in (0..self.router.shards()).filter(|s| *s != self.id) {
            match self
                .router
                .call(other, ShardCall::Snapshot, timeout)
                .await?
            {
                ShardAnswer::Snapshot(snap) => merged.merge(&snap),
                _ => return Err(ApiError::Unavailable("unexpected answer from a shard")),
            }
        }
        Ok(merged)
    }

    /// Answers a call from another shard.
    pub fn execute_forwarded(&self, req: ShardRequest) -> ShardReply {
        let answer = match req.call {
            ShardCall::Entity { key, op } => {
                let (status, body) = self.execute_owned(&key, op);
                ShardAnswer::Entity { status, body }
            }
            ShardCall::Snapshot => ShardAnswer::Snapshot(Box::new(self.latency.snapshot())),
            ShardCall::BuildIndex { id } => {
                self.spawn_index_build(id);
                ShardAnswer::Ack
            }
            ShardCall::UniqueClaim { prefix, key } => {
                ShardAnswer::Claim(self.claim_unique(&prefix, &key).map_err(|e| e.to_string()))
            }
            ShardCall::UniqueRelease { prefix, key } => {
                self.release_unique(&prefix, &key);
                ShardAnswer::Claim(Ok(()))
            }
            ShardCall::Query(task) => ShardAnswer::Query(
                crate::query::run_share(self, *task).map_err(|e| (e.status(), e.body())),
            ),
        };
        ShardReply { id: req.id, answer }
    }

    /// Answers a query share from another core (scans off the reactor).
    pub async fn execute_query_share(&self, req: ShardRequest) -> ShardReply {
        let answer = match req.call {
            ShardCall::Query(task) => ShardAnswer::Query(
                crate::query::exec::run_share_async(self, *task)
                    .await
                    .map_err(|e| (e.status(), e.body())),
            ),
            _ => ShardAnswer::Ack,
        };
        ShardReply { id: req.id, answer }
    }

    /// Runs an entity operation forwarded to this shard (it owns `key`).
    fn execute_owned(&self, key: &str, op: EntityOp) -> (u16, Vec<u8>) {
        bump(&self.counters().forwarded_in, 1);
        let mut body = Vec::new();
        let storage = &self.shared.storage;
        let result: Result<u16, ApiError> = match op {
            EntityOp::Get => {
                bump(&self.counters().entity_ops, 1);
                storage
                    .with_entity(key.as_bytes(), |v| {
                        v.map(|v| entity::render_get(&mut body, key, v))
                    })
                    .map_err(ApiError::from)
                    .and_then(|found| match found {
                        Some(()) => Ok(200),
                        None => Err(ApiError::EntityNotFound(key.to_string())),
                    })
            }
            EntityOp::Put(value) => self.apply_change(key, Some(&value)).map(|existed| {
                entity::render_put(&mut body, key, !existed);
                if existed {
                    200
                } else {
                    201
                }
            }),
            EntityOp::Delete => self.apply_change(key, None).map(|deleted| {
                entity::render_delete(&mut body, key, deleted);
                200
            }),
        };
        match result {
            Ok(status) => (status, body),
            Err(e) => {
                if e.status() >= 500 {
                    tracing::error!(code = e.code(), "{e}");
                }
                (e.status(), e.body())
            }
        }
    }

    fn health(&self, resp: &mut Response<'_>) {
        let v = serde_json::json!({
            "status": "healthy",
            "version": crate::VERSION,
            "uptime_seconds": self.shared.started.elapsed().as_secs(),
            "shards": self.router.shards(),
        });
        resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    }

    async fn stats(&self, resp: &mut Response<'_>) -> Result<(), ApiError> {
        let latency = self.merged_latency().await?;
        let v = self.shared.stats_json(&latency);
        resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
        Ok(())
    }

    async fn metrics(&self, resp: &mut Response<'_>) -> Result<(), ApiError> {
        let latency = self.merged_latency().await?;
        let qps = self.shared.qps_since_last_scrape();
        let body = crate::exposition::render(&self.shared, &latency, qps);
        resp.send(200, "text/plain; version=0.0.4; charset=utf-8", &body);
        Ok(())
    }

    fn get_config(&self, resp: &mut Response<'_>) {
        let v = self.shared.config_json(&self.runtime());
        resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    }

    fn post_config(&self, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
        let update: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        let change = self.shared.runtime.apply_patch(&update).map_err(|errors| {
            ApiError::BadRequest(format!("configuration not changed: {}", errors.join("; ")))
        })?;
        tracing::info!(changed = ?change.changed, "configuration updated through POST /config");
        self.get_config(resp);
        Ok(())
    }
}

/// 405 with `Allow` for a known path, 404 otherwise.
fn unrouted(req: &Request<'_>) -> ApiError {
    let path = req.path;
    let allow = if path.starts_with("/entities/") {
        Some(ENTITY_METHODS)
    } else {
        match path {
            "/entities" => Some("POST"),
            "/health" | "/stats" | "/api/stats" | "/metrics" => Some("GET, HEAD"),
            "/config" => Some("GET, HEAD, POST"),
            "/changefeed" | "/changefeed/stats" => Some("GET, HEAD"),
            "/changefeed/stream" => Some("GET"),
            "/changefeed/retention" => Some("POST"),
            "/query" | "/index/create" | "/index/drop" | "/index/rebuild" => Some("POST"),
            "/index/stats" => Some("GET, HEAD"),
            _ => None,
        }
    };
    match allow {
        Some(allow) => not_allowed(req.method, path, allow),
        None => ApiError::RouteNotFound(format!("{} {}", req.method.as_str(), path)),
    }
}

fn not_allowed(method: Method, path: &str, allow: &'static str) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.as_str(),
        path: path.to_string(),
        allow,
    }
}

impl Handler for Shard {
    type Stream = SseStream;

    async fn stream(&self, state: SseStream, out: &mut StreamOut<'_>) {
        changefeed::http::run_stream(self, state, out).await;
    }

    async fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Option<SseStream> {
        let start = Instant::now();
        let wall = self.spans.as_ref().map(|_| SystemTime::now());
        bump(&self.counters().requests, 1);
        let route = Self::classify(req);
        let stream = match self.route(route, req, resp).await {
            Ok(s) => s,
            Err(e) => {
                e.write(resp);
                None
            }
        };
        let status = resp.status();
        if status >= 400 {
            bump(&self.counters().errors, 1);
        }
        let elapsed = start.elapsed();
        if cfg!(not(feature = "no-latency-metrics")) {
            self.latency.record(route, elapsed);
        }
        if let (Some(spans), Some(wall)) = (&self.spans, wall) {
            let (trace_id, parent_span_id) = match req
                .header("traceparent")
                .and_then(crate::otlp::parse_traceparent)
            {
                Some((t, p)) => (t, Some(p)),
                None => (
                    (u128::from(spans.next_id()) << 64) | u128::from(spans.next_id()),
                    None,
                ),
            };
            let start_unix_nanos = crate::otlp::unix_nanos(wall);
            spans.push(crate::otlp::SpanRecord {
                trace_id,
                span_id: spans.next_id(),
                parent_span_id,
                name: route.label(),
                method: req.method.as_str(),
                start_unix_nanos,
                end_unix_nanos: start_unix_nanos + elapsed.as_nanos() as u64,
                status,
                shard: self.id,
            });
        }
        tracing::debug!(
            method = req.method.as_str(),
            path = req.path,
            route = route.label(),
            status,
            latency_us = elapsed.as_micros() as u64,
            shard = self.id,
            "request"
        );
        stream
    }

    fn protocol_error(&self, err: ProtocolError, resp: &mut Response<'_>) {
        bump(&self.counters().requests, 1);
        bump(&self.counters().errors, 1);
        self.latency.record(Route::Other, Duration::ZERO);
        ApiError::from(err).write(resp);
    }
}
