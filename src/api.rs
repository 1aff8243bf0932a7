//! The HTTP API: routes, and the entity, health and stats handlers.
//!
//! A [`Shard`] is one core's server state and the [`Handler`] its
//! connections call. Entity requests go to the key's owner: answered inline
//! when that is this core, forwarded over the [`ShardRouter`] otherwise.

use crate::entity::{self, DocScratch};
use crate::error::ApiError;
use crate::key::{decode_path_key, parse_key};
use crate::router::{EntityOp, ShardReply, ShardRequest, ShardRouter};
use crate::server::Shared;
use crate::stats::bump;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;
use themis_io::connection::ProtocolError;
use themis_io::{Handler, Method, Request, Response};

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
    scratch: RefCell<Scratch>,
}

const ENTITY_METHODS: &str = "GET, HEAD, PUT, DELETE";

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>, router: ShardRouter) -> Self {
        Shard {
            id,
            shared,
            router,
            scratch: RefCell::new(Scratch::default()),
        }
    }

    fn counters(&self) -> &crate::stats::ShardCounters {
        &self.shared.counters[self.id]
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.shared.config.server.request_timeout_ms)
    }

    async fn route(&self, req: &Request<'_>, resp: &mut Response<'_>) -> Result<(), ApiError> {
        let path = req.path;
        if let Some(raw_key) = path.strip_prefix("/entities/") {
            return match req.method {
                Method::Get | Method::Head => self.get_entity(raw_key, resp).await,
                Method::Put => self.put_entity(raw_key, req.body, resp).await,
                Method::Delete => self.delete_entity(raw_key, resp).await,
                m => Err(not_allowed(m, path, ENTITY_METHODS)),
            };
        }
        match path {
            "/entities" => match req.method {
                Method::Post => self.post_entity(req.body, resp).await,
                m => Err(not_allowed(m, path, "POST")),
            },
            "/health" => match req.method {
                Method::Get | Method::Head => {
                    self.health(resp);
                    Ok(())
                }
                m => Err(not_allowed(m, path, "GET, HEAD")),
            },
            "/stats" | "/api/stats" => match req.method {
                Method::Get | Method::Head => {
                    self.stats(resp);
                    Ok(())
                }
                m => Err(not_allowed(m, path, "GET, HEAD")),
            },
            _ => Err(ApiError::RouteNotFound(format!(
                "{} {}",
                req.method.as_str(),
                path
            ))),
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
                bump(&self.counters().entity_ops, 1);
                let created = self.shared.storage.put_entity(key.as_bytes(), &s.value)?;
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
        bump(&self.counters().entity_ops, 1);
        let deleted = self.shared.storage.delete_entity(key.as_bytes())?;
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
        let reply = self
            .router
            .forward(owner, key, op, self.request_timeout())
            .await?;
        resp.json(reply.status, &reply.body);
        Ok(())
    }

    /// Runs a request forwarded by another shard (this shard owns its key).
    pub fn execute_forwarded(&self, req: ShardRequest) -> ShardReply {
        bump(&self.counters().forwarded_in, 1);
        bump(&self.counters().entity_ops, 1);
        let mut body = Vec::new();
        let storage = &self.shared.storage;
        let result: Result<u16, ApiError> = match req.op {
            EntityOp::Get => storage
                .with_entity(req.key.as_bytes(), |v| {
                    v.map(|v| entity::render_get(&mut body, &req.key, v))
                })
                .map_err(ApiError::from)
                .and_then(|found| match found {
                    Some(()) => Ok(200),
                    None => Err(ApiError::EntityNotFound(req.key.clone())),
                }),
            EntityOp::Put(value) => storage
                .put_entity(req.key.as_bytes(), &value)
                .map(|created| {
                    entity::render_put(&mut body, &req.key, created);
                    if created {
                        201
                    } else {
                        200
                    }
                })
                .map_err(ApiError::from),
            EntityOp::Delete => storage
                .delete_entity(req.key.as_bytes())
                .map(|deleted| {
                    entity::render_delete(&mut body, &req.key, deleted);
                    200
                })
                .map_err(ApiError::from),
        };
        match result {
            Ok(status) => ShardReply {
                id: req.id,
                status,
                body,
            },
            Err(e) => {
                if e.status() >= 500 {
                    tracing::error!(code = e.code(), "{e}");
                }
                ShardReply {
                    id: req.id,
                    status: e.status(),
                    body: e.body(),
                }
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

    fn stats(&self, resp: &mut Response<'_>) {
        let v = self.shared.stats_json();
        resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
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
    async fn handle(&self, req: &Request<'_>, resp: &mut Response<'_>) {
        bump(&self.counters().requests, 1);
        if let Err(e) = self.route(req, resp).await {
            e.write(resp);
        }
        if resp.status() >= 400 {
            bump(&self.counters().errors, 1);
        }
        tracing::debug!(
            method = req.method.as_str(),
            path = req.path,
            status = resp.status(),
            shard = self.id,
            "request"
        );
    }

    fn protocol_error(&self, err: ProtocolError, resp: &mut Response<'_>) {
        bump(&self.counters().requests, 1);
        bump(&self.counters().errors, 1);
        ApiError::from(err).write(resp);
    }
}
