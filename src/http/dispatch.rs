//! The dispatcher: the `Handler` every connection of a core calls.
//!
//! [`TABLE`] joins every feature's route rows. A request is classified by
//! the table (404 and 405 with `Allow` come from it), then runs its
//! route's handler through the one `match` on [`RouteId`] below; its
//! latency is recorded under the route's id, and a span is exported when
//! tracing is on.

use super::auth::{Grant, KeyCache};
use super::guard;
use super::routes::{Classified, RouteId, Table};
use crate::changefeed::http::SseStream;
use crate::error::ApiError;
use crate::node::Core;
use crate::obs::counters::bump;
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime};
use themis_io::connection::ProtocolError;
use themis_io::{Handler, Request, Response, StreamOut, Transport};

/// Every route of the server: entity routes first (the hot path matches
/// on the first row).
pub static TABLE: Table = Table(&[
    crate::entity::http::ROUTES,
    crate::query::http::ROUTES,
    crate::index::http::ROUTES,
    crate::changefeed::http::ROUTES,
    crate::vector::http::ROUTES,
    super::ops::ROUTES,
    super::shards::ROUTES,
    crate::backup::http::ROUTES,
    crate::timeseries::http::ROUTES,
    crate::cache::http::ROUTES,
    crate::llm::http::ROUTES,
]);

/// The latency label of each route id.
pub static LABELS: LazyLock<[&'static str; RouteId::COUNT]> = LazyLock::new(|| TABLE.labels());

/// Runs the handler of route `id`: the one `match` on route ids.
async fn run(
    core: &Core,
    id: RouteId,
    req: &Request<'_>,
    resp: &mut Response<'_>,
    grant: Grant<'_>,
) -> Result<Option<SseStream>, ApiError> {
    use super::ops;
    use crate::vector::http as vector;
    use crate::{cache::http as cache, llm::http as llm};
    use crate::{changefeed::http as feed, entity::http as entity, index::http as index};
    let done = |r: Result<(), ApiError>| r.map(|()| None);
    match id {
        RouteId::EntityGet => done(entity::get(core, req, resp).await),
        RouteId::EntityPut => done(entity::put(core, req, resp).await),
        RouteId::EntityDelete => done(entity::delete(core, req, resp).await),
        RouteId::EntityPost => done(entity::post(core, req, resp).await),
        RouteId::Query => done(crate::query::http::query(core, req, resp).await),
        RouteId::IndexCreate => done(index::create(core, req.body, resp).await),
        RouteId::IndexDrop => done(index::drop(core, req.body, resp).await),
        RouteId::IndexRebuild => done(index::rebuild(core, req.body, resp).await),
        RouteId::IndexStats => done(index::stats(core, req, resp, grant.forced_table).await),
        RouteId::ChangefeedPoll => done(feed::poll(core, req, resp, grant.forced_table).await),
        RouteId::ChangefeedStream => {
            feed::open_stream(core, req, resp, grant.forced_table).map(Some)
        }
        RouteId::ChangefeedStats => done(feed::stats(core, resp)),
        RouteId::ChangefeedRetention => done(feed::retention(core, req.body, resp).await),
        RouteId::VectorSearch => done(vector::search(core, req.body, resp).await),
        RouteId::VectorBatchInsert => done(vector::batch_insert(core, req.body, resp).await),
        RouteId::VectorDeleteByFilter => done(vector::delete_by_filter(core, req.body, resp).await),
        RouteId::VectorIndexCreate => done(vector::create(core, req.body, resp).await),
        RouteId::VectorIndexDrop => done(vector::drop(core, req.body, resp).await),
        RouteId::VectorIndexStats => done(vector::stats(core, req, resp).await),
        RouteId::VectorIndexConfigGet => done(vector::get_config(core, resp)),
        RouteId::VectorIndexConfigSet => done(vector::put_config(core, req.body, resp).await),
        RouteId::VectorIndexSave => done(vector::save(core, resp).await),
        RouteId::VectorIndexLoad => done(vector::load(core, resp).await),
        RouteId::Health => done(ops::health(core, resp)),
        RouteId::Stats => done(ops::stats(core, resp).await),
        RouteId::Metrics => done(ops::metrics(core, resp).await),
        RouteId::ConfigGet => done(ops::get_config(core, resp)),
        RouteId::ConfigSet => done(ops::post_config(core, req.body, resp)),
        RouteId::Backup => done(crate::backup::http::backup(core, req.body, resp).await),
        RouteId::Verify => done(crate::backup::http::verify(core, req.body, resp).await),
        RouteId::TsPut => done(crate::timeseries::http::put(core, req.body, resp).await),
        RouteId::TsQuery => done(crate::timeseries::http::query(core, req.body, resp).await),
        RouteId::TsAggregate => {
            done(crate::timeseries::http::aggregate(core, req.body, resp).await)
        }
        RouteId::TsMetrics => done(crate::timeseries::http::metrics(core, resp).await),
        RouteId::TsConfigGet => done(crate::timeseries::http::get_config(core, resp)),
        RouteId::TsConfigSet => {
            done(crate::timeseries::http::put_config(core, req.body, resp).await)
        }
        RouteId::TsRetention => done(crate::timeseries::http::retention(core, resp).await),
        RouteId::RetentionRun => done(crate::timeseries::http::run(core, req.body, resp).await),
        RouteId::TsWrite => done(crate::timeseries::http::write_lines(core, req, resp).await),
        RouteId::CachePut => done(cache::put(core, req.body, resp).await),
        RouteId::CacheQuery => done(cache::query(core, req.body, resp).await),
        RouteId::CacheStats => done(cache::stats(core, resp)),
        RouteId::CacheDeleteEntry => done(cache::delete_entry(core, req.body, resp).await),
        RouteId::CacheClear => done(cache::clear(core, resp).await),
        RouteId::LlmPut => done(llm::put(core, req.body, resp).await),
        RouteId::LlmList => done(llm::list(core, req, resp).await),
        RouteId::LlmGet => done(llm::get(core, req, resp).await),
        RouteId::LlmDelete => done(llm::delete(core, req, resp).await),
        RouteId::Shards => done(super::shards::shards(core, req, resp)),
        RouteId::Other => Err(not_found(req)),
    }
}

fn not_found(req: &Request<'_>) -> ApiError {
    ApiError::RouteNotFound(format!("{} {}", req.method.as_str(), req.path))
}

/// What a core keeps per connection, between its requests.
#[derive(Debug, Default)]
pub struct ConnState {
    /// The last key the connection presented and what it resolved to.
    pub keys: KeyCache,
}

/// Every transport (plain TCP, TLS) is served by the same code.
impl<T: Transport> Handler<T> for Core {
    type Stream = SseStream;
    type Conn = ConnState;

    async fn stream(&self, state: SseStream, out: &mut StreamOut<'_, T>) {
        crate::changefeed::http::run_stream(self, state, out).await;
    }

    async fn handle(
        &self,
        conn: &mut ConnState,
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Option<SseStream> {
        let start = Instant::now();
        let wall = self.spans().map(|_| SystemTime::now());
        bump(&self.counters().requests, 1);
        let (id, result) = match TABLE.classify(req.method, req.path) {
            Classified::Found(route) => {
                let rt = self.settings();
                let cx = guard::Context {
                    counters: self.counters(),
                    guard: self.guard(),
                    keys: &mut conn.keys,
                    now: start,
                    shard: self.id(),
                };
                match guard::admit(&rt.auth, route, req, cx) {
                    Ok(grant) => (route.id, run(self, route.id, req, resp, grant).await),
                    Err(e) => (route.id, Err(e)),
                }
            }
            Classified::WrongMethod(allow) => (
                RouteId::Other,
                Err(ApiError::MethodNotAllowed {
                    method: req.method.as_str(),
                    path: req.path.to_string(),
                    allow,
                }),
            ),
            Classified::NoSuchPath => {
                if self.node().faults.panic_path.as_deref() == Some(req.path) {
                    panic!("injected fault: panic_path {}", req.path);
                }
                if let Some(d) = self.node().faults.block_reactor {
                    if req.path == "/__block_reactor" {
                        // Test fault: a blocking call on the reactor.
                        std::thread::sleep(d);
                    }
                }
                (RouteId::Other, Err(not_found(req)))
            }
        };
        let stream = result.unwrap_or_else(|e| {
            e.write(resp);
            None
        });
        let status = resp.status();
        if status >= 400 {
            bump(&self.counters().errors, 1);
        }
        let elapsed = start.elapsed();
        if cfg!(not(feature = "no-latency-metrics")) {
            self.latency().record(id as usize, elapsed);
        }
        if let (Some(spans), Some(wall)) = (self.spans(), wall) {
            let (trace_id, parent_span_id) = match req
                .header("traceparent")
                .and_then(crate::obs::otlp::parse_traceparent)
            {
                Some((t, p)) => (t, Some(p)),
                None => (
                    (u128::from(spans.next_id()) << 64) | u128::from(spans.next_id()),
                    None,
                ),
            };
            let start_unix_nanos = crate::obs::otlp::unix_nanos(wall);
            spans.push(crate::obs::otlp::SpanRecord {
                trace_id,
                span_id: spans.next_id(),
                parent_span_id,
                name: LABELS[id as usize],
                method: req.method.as_str(),
                start_unix_nanos,
                end_unix_nanos: start_unix_nanos + elapsed.as_nanos() as u64,
                status,
                shard: self.id(),
            });
        }
        tracing::debug!(
            method = req.method.as_str(),
            path = req.path,
            route = LABELS[id as usize],
            status,
            latency_us = elapsed.as_micros() as u64,
            shard = self.id(),
            "request"
        );
        stream
    }

    fn protocol_error(&self, err: ProtocolError, resp: &mut Response<'_>) {
        bump(&self.counters().requests, 1);
        bump(&self.counters().errors, 1);
        self.latency()
            .record(RouteId::Other as usize, Duration::ZERO);
        ApiError::from(err).write(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::super::routes::Role;
    use super::*;
    use themis_io::Method;

    #[test]
    fn the_table_is_complete_and_consistent() {
        TABLE.check().unwrap();
    }

    fn id(method: Method, path: &str) -> Option<RouteId> {
        match TABLE.classify(method, path) {
            Classified::Found(r) => Some(r.id),
            _ => None,
        }
    }

    #[test]
    fn classification_404_and_405_come_from_the_table() {
        assert_eq!(
            id(Method::Get, "/entities/users:1"),
            Some(RouteId::EntityGet)
        );
        assert_eq!(
            id(Method::Head, "/entities/users:1"),
            Some(RouteId::EntityGet)
        );
        assert_eq!(id(Method::Post, "/entities"), Some(RouteId::EntityPost));
        assert_eq!(id(Method::Get, "/api/stats"), Some(RouteId::Stats));
        assert_eq!(id(Method::Post, "/config"), Some(RouteId::ConfigSet));
        match TABLE.classify(Method::Post, "/entities/users:1") {
            Classified::WrongMethod(allow) => assert_eq!(allow, "GET, HEAD, PUT, DELETE"),
            _ => panic!("405 expected"),
        }
        match TABLE.classify(Method::Delete, "/config") {
            Classified::WrongMethod(allow) => assert_eq!(allow, "GET, HEAD, POST"),
            _ => panic!("405 expected"),
        }
        assert!(matches!(
            TABLE.classify(Method::Get, "/nope"),
            Classified::NoSuchPath
        ));
    }

    /// `docs/openapi.yaml` lists exactly the table's routes, with their
    /// roles.
    #[test]
    fn the_openapi_document_matches_the_table() {
        use super::super::routes::PathPattern;
        use std::collections::BTreeSet;
        let doc: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../docs/openapi.yaml")).unwrap();
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_mapping().unwrap() {
            for (method, op) in ops.as_mapping().unwrap() {
                let method = method.as_str().unwrap();
                if method == "parameters" {
                    continue;
                }
                let role = op["x-themis-role"].as_str().unwrap_or("?").to_string();
                documented.insert((path.as_str().unwrap().to_string(), method.to_string(), role));
            }
        }
        let mut routed = BTreeSet::new();
        for r in TABLE.rows() {
            let path = match r.path {
                PathPattern::Exact(p) => p.to_string(),
                PathPattern::Prefix(p) => format!("{p}{{key}}"),
            };
            let role = format!("{:?}", r.role).to_lowercase();
            for m in r.methods {
                routed.insert((path.clone(), m.as_str().to_lowercase(), role.clone()));
            }
        }
        assert_eq!(documented, routed);
    }

    /// The role of every route, written out here independently of the
    /// route rows: a new route, or a changed role, fails this test until
    /// it is listed (and so reviewed) here, and in `docs/security.md`.
    const EXPECTED_ROLES: &[(&str, &str, Role)] = &[
        ("GET", "/entities/{key}", Role::Read),
        ("HEAD", "/entities/{key}", Role::Read),
        ("PUT", "/entities/{key}", Role::Write),
        ("DELETE", "/entities/{key}", Role::Write),
        ("POST", "/entities", Role::Write),
        ("POST", "/query", Role::Read),
        ("POST", "/index/create", Role::Admin),
        ("POST", "/index/drop", Role::Admin),
        ("POST", "/index/rebuild", Role::Admin),
        ("GET", "/index/stats", Role::Read),
        ("HEAD", "/index/stats", Role::Read),
        ("GET", "/changefeed", Role::Read),
        ("HEAD", "/changefeed", Role::Read),
        ("GET", "/changefeed/stream", Role::Read),
        ("GET", "/changefeed/stats", Role::Read),
        ("HEAD", "/changefeed/stats", Role::Read),
        ("POST", "/changefeed/retention", Role::Admin),
        ("POST", "/vector/search", Role::Read),
        ("POST", "/vector/batch_insert", Role::Write),
        ("DELETE", "/vector/by-filter", Role::Write),
        ("POST", "/vector/index/create", Role::Admin),
        ("POST", "/vector/index/drop", Role::Admin),
        ("GET", "/vector/index/stats", Role::Read),
        ("HEAD", "/vector/index/stats", Role::Read),
        ("GET", "/vector/index/config", Role::Read),
        ("HEAD", "/vector/index/config", Role::Read),
        ("PUT", "/vector/index/config", Role::Admin),
        ("POST", "/vector/index/save", Role::Admin),
        ("POST", "/vector/index/load", Role::Admin),
        ("GET", "/health", Role::Public),
        ("HEAD", "/health", Role::Public),
        ("GET", "/stats", Role::Read),
        ("HEAD", "/stats", Role::Read),
        ("GET", "/api/stats", Role::Read),
        ("HEAD", "/api/stats", Role::Read),
        ("GET", "/metrics", Role::Read),
        ("HEAD", "/metrics", Role::Read),
        ("GET", "/config", Role::Admin),
        ("HEAD", "/config", Role::Admin),
        ("POST", "/config", Role::Admin),
        ("GET", "/shards", Role::Read),
        ("HEAD", "/shards", Role::Read),
        ("POST", "/api/admin/backup", Role::Admin),
        ("POST", "/admin/backup", Role::Admin),
        ("POST", "/api/admin/verify", Role::Admin),
        ("POST", "/admin/verify", Role::Admin),
        ("POST", "/ts/put", Role::Write),
        ("POST", "/ts/query", Role::Read),
        ("POST", "/ts/aggregate", Role::Read),
        ("GET", "/ts/metrics", Role::Read),
        ("HEAD", "/ts/metrics", Role::Read),
        ("GET", "/ts/config", Role::Read),
        ("HEAD", "/ts/config", Role::Read),
        ("PUT", "/ts/config", Role::Admin),
        ("GET", "/ts/retention", Role::Read),
        ("HEAD", "/ts/retention", Role::Read),
        ("POST", "/api/v2/write", Role::Write),
        ("POST", "/retention/run", Role::Admin),
        ("POST", "/cache/put", Role::Write),
        ("POST", "/cache/query", Role::Read),
        ("GET", "/cache/stats", Role::Read),
        ("HEAD", "/cache/stats", Role::Read),
        ("DELETE", "/cache/entry", Role::Admin),
        ("POST", "/cache/clear", Role::Admin),
        ("POST", "/llm/interaction", Role::Write),
        ("GET", "/llm/interaction", Role::Read),
        ("HEAD", "/llm/interaction", Role::Read),
        ("GET", "/llm/interaction/{key}", Role::Read),
        ("HEAD", "/llm/interaction/{key}", Role::Read),
        ("DELETE", "/llm/interaction/{key}", Role::Admin),
    ];

    fn routed_roles() -> Vec<(String, String, Role)> {
        use super::super::routes::PathPattern;
        let mut v = Vec::new();
        for r in TABLE.rows() {
            let path = match r.path {
                PathPattern::Exact(p) => p.to_string(),
                PathPattern::Prefix(p) => format!("{p}{{key}}"),
            };
            for m in r.methods {
                v.push((m.as_str().to_string(), path.clone(), r.role));
            }
        }
        v
    }

    #[test]
    fn every_route_has_the_reviewed_role() {
        let expected: Vec<(String, String, Role)> = EXPECTED_ROLES
            .iter()
            .map(|(m, p, r)| (m.to_string(), p.to_string(), *r))
            .collect();
        assert_eq!(routed_roles(), expected);
    }

    /// `docs/security.md` lists every route with its role, as the table
    /// says (its table rows are `| METHOD | path | role |`).
    #[test]
    fn the_security_document_matches_the_table() {
        let doc = include_str!("../../docs/security.md");
        let mut documented = Vec::new();
        let start = doc
            .find("<!-- routes:begin -->")
            .expect("docs/security.md has a routes:begin marker");
        let end = doc.find("<!-- routes:end -->").expect("routes:end marker");
        for line in doc[start..end].lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() >= 5
                && !cells[1].is_empty()
                && !cells[1].starts_with('-')
                && cells[1] != "Method"
            {
                let path = cells[2].trim_matches('`').to_string();
                for m in cells[1].split(',').map(str::trim) {
                    documented.push((m.to_string(), path.clone(), cells[3].to_string()));
                }
            }
        }
        let routed: Vec<(String, String, String)> = routed_roles()
            .into_iter()
            .map(|(m, p, r)| (m, p, super::super::auth::role_name(r).to_string()))
            .collect();
        assert_eq!(documented, routed);
    }

    #[test]
    fn labels_and_roles() {
        assert_eq!(LABELS[RouteId::ConfigGet as usize], "/config");
        assert_eq!(LABELS[RouteId::ConfigSet as usize], "/config");
        assert_eq!(LABELS[RouteId::Other as usize], "other");
        let role = |m, p| match TABLE.classify(m, p) {
            Classified::Found(r) => r.role,
            _ => panic!("no route"),
        };
        assert_eq!(role(Method::Get, "/health"), Role::Public);
        assert_eq!(role(Method::Get, "/entities/a:b"), Role::Read);
        assert_eq!(role(Method::Put, "/entities/a:b"), Role::Write);
        assert_eq!(role(Method::Post, "/index/create"), Role::Admin);
    }
}
