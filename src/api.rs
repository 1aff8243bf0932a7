//! The HTTP API: routes, and the entity, health and stats handlers.
//!
//! A [`Shard`] is one core's server state and the [`Handler`] its
//! connections call. Entity requests go to the key's owner: answered inline
//! when that is this core, forwarded over the [`ShardRouter`] otherwise.

use crate::changefeed::{self, http::SseStream, local::LocalFeed};
use crate::entity::{self, DocScratch};
use crate::error::ApiError;
use crate::key::{decode_path_key, parse_key};
use crate::metrics::{LatencySnapshot, Route, ShardLatency};
use crate::router::{EntityOp, ShardAnswer, ShardCall, ShardReply, ShardRequest, ShardRouter};
use crate::runtime::{LocalRuntime, Runtime};
use crate::server::Shared;
use crate::stats::bump;
use std::cell::RefCell;
use std::rc::Rc;
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
}

const ENTITY_METHODS: &str = "GET, HEAD, PUT, DELETE";

impl Shard {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        router: ShardRouter,
        spans: Option<crate::otlp::CoreSpans>,
    ) -> Self {
        let runtime = LocalRuntime::new(&shared.runtime);
        Shard {
            id,
            shared,
            router,
            latency: ShardLatency::default(),
            runtime,
            spans,
            feed: Rc::new(LocalFeed::default()),
            scratch: RefCell::new(Scratch::default()),
            record: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn counters(&self) -> &crate::stats::ShardCounters {
        &self.shared.counters[self.id]
    }

    /// The settings for the current request.
    pub fn runtime(&self) -> Rc<Runtime> {
        self.runtime.get(&self.shared.runtime)
    }

    fn request_timeout(&self) -> Duration {
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
        let existed = storage.entity_exists(key.as_bytes())?;
        if value.is_none() && !existed {
            return Ok(false);
        }
        if self.runtime().features.cdc {
            let mut record = self.record.borrow_mut();
            self.shared
                .changefeed
                .commit(storage, self.id, key, value, &mut record)?;
            bump(&self.counters().feed_events, 1);
            self.feed.poke();
        } else {
            storage.write_change(key.as_bytes(), value, None)?;
        }
        Ok(existed)
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
        let (key, value) = {
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
            let owner = self.router.owner(&key);
            if owner == self.id {
                let created = !self.apply_change(&key, Some(&s.value))?;
                s.body.clear();
                entity::render_put(&mut s.body, &key, created);
                resp.json(if created { 201 } else { 200 }, &s.body);
                return Ok(());
            }
            (key, s.value.clone())
        };
        let owner = self.router.owner(&key);
        self.forward(owner, key, EntityOp::Put(value), resp).await
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
            ShardAnswer::Snapshot(_) => {
                Err(ApiError::Unavailable("unexpected answer from a shard"))
            }
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
                ShardAnswer::Entity { .. } => {
                    return Err(ApiError::Unavailable("unexpected answer from a shard"))
                }
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
        let current = self.shared.runtime.current();
        let next = crate::runtime::parse_update(&current, &update).map_err(|errors| {
            ApiError::BadRequest(format!("configuration not changed: {}", errors.join("; ")))
        })?;
        tracing::info!(?next, "configuration updated through POST /config");
        self.shared.runtime.publish(next);
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
