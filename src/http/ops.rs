//! Operational endpoints: `/health`, `/stats`, `/metrics`, `/config`.
//!
//! `/stats` and `/metrics` merge what every core recorded: counters are
//! read from each core's slot, latency histograms are copied from each
//! core over the mesh ([`LatencyCopy`]) and added up here.

use super::dispatch::LABELS;
use super::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::error::ApiError;
use crate::mesh::{Rpc, Served};
use crate::node::Core;
use crate::obs::latency::LatencySnapshot;
use std::rc::Rc;
use std::time::Instant;
use themis_io::{Method, Response};

const GET: &[Method] = &[Method::Get, Method::Head];

/// The operational routes.
pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::Health,
        methods: GET,
        path: PathPattern::Exact("/health"),
        role: Role::Public,
        tables: Tables::None,
        label: "GET /health",
    },
    Route {
        id: RouteId::Stats,
        methods: GET,
        path: PathPattern::Exact("/stats"),
        role: Role::Read,
        tables: Tables::None,
        label: "GET /stats",
    },
    Route {
        id: RouteId::Stats,
        methods: GET,
        path: PathPattern::Exact("/api/stats"),
        role: Role::Read,
        tables: Tables::None,
        label: "GET /stats",
    },
    Route {
        id: RouteId::Metrics,
        methods: GET,
        path: PathPattern::Exact("/metrics"),
        role: Role::Read,
        tables: Tables::None,
        label: "GET /metrics",
    },
    Route {
        id: RouteId::ConfigGet,
        methods: GET,
        path: PathPattern::Exact("/config"),
        role: Role::Admin,
        tables: Tables::All,
        label: "/config",
    },
    Route {
        id: RouteId::ConfigSet,
        methods: &[Method::Post],
        path: PathPattern::Exact("/config"),
        role: Role::Admin,
        tables: Tables::All,
        label: "/config",
    },
];

/// A copy of the callee's latency histograms.
pub struct LatencyCopy;

impl Rpc<Core> for LatencyCopy {
    type Answer = Box<LatencySnapshot>;
    fn serve(self, core: &Rc<Core>) -> Served<Box<LatencySnapshot>> {
        Served::Now(Ok(Box::new(core.latency().snapshot())))
    }
}

/// All cores' latency histograms merged; a merge this core made less than
/// a second ago is served again, so scrapes cannot make every core copy its
/// histograms on every request.
async fn merged_latency(core: &Core) -> Result<Rc<LatencySnapshot>, ApiError> {
    let now = Instant::now();
    if let Some(recent) = core.latency().recent_merge(now) {
        return Ok(recent);
    }
    let mut merged = core.latency().snapshot();
    for other in (0..core.cores()).filter(|c| *c != core.id()) {
        merged.merge(&*core.call(other, LatencyCopy).await?);
    }
    Ok(core.latency().keep_merge(now, merged))
}

fn json(resp: &mut Response<'_>, v: &serde_json::Value) {
    resp.json(200, &serde_json::to_vec(v).unwrap_or_default());
}

/// `GET /health`: `healthy`, or `degraded` (still 200) while a failed
/// background task stands, naming it and its core.
pub fn health(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    let node = core.node();
    let failed = node.counters.iter().any(|c| {
        c.background_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    });
    let standing = if failed {
        node.failures.standing()
    } else {
        Vec::new()
    };
    let mut v = serde_json::json!({
        "status": if standing.is_empty() { "healthy" } else { "degraded" },
        "version": crate::VERSION,
        "uptime_seconds": node.started.elapsed().as_secs(),
        "shards": core.cores(),
    });
    if !standing.is_empty() {
        v["failures"] = serde_json::to_value(&standing).unwrap_or_default();
    }
    json(resp, &v);
    Ok(())
}

pub async fn stats(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    let latency = merged_latency(core).await?;
    json(resp, &core.node().stats_json(&latency, &LABELS[..]));
    Ok(())
}

pub async fn metrics(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    let latency = merged_latency(core).await?;
    let node = core.node();
    let qps = node.qps_since_last_scrape();
    let body = crate::obs::prometheus::render(node, &latency, &LABELS[..], qps);
    resp.send(200, "text/plain; version=0.0.4; charset=utf-8", &body);
    Ok(())
}

pub fn get_config(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    json(resp, &core.settings().config_json());
    Ok(())
}

pub fn post_config(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    let update: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let change = core.node().runtime.apply_patch(&update).map_err(|errors| {
        ApiError::BadRequest(format!("configuration not changed: {}", errors.join("; ")))
    })?;
    tracing::info!(changed = ?change.changed, "configuration updated through POST /config");
    get_config(core, resp)
}
