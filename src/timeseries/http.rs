//! The time-series routes, and the retention pass that runs on each core.
//!
//! * `POST /ts/put`, `POST /ts/query`, `POST /ts/aggregate`,
//!   `GET /ts/metrics`, `GET|PUT /ts/config`: 503 `feature_disabled` while
//!   `features.timeseries` is off.
//! * `GET /ts/retention`, `POST /retention/run`: `features.retention`.
//!
//! Reads (`query`, `aggregate`, `metrics`) are range reads: they run on the
//! scan lane off the reactor, bounded by the request's deadline. Writes go
//! to each series' owner ([`super::ingest::PutSeries`]).

use super::aggregate::{bucket_count, Agg, MAX_BUCKETS};
use super::ingest::{self, SeriesWrite};
use super::key;
use super::read::{self, AggregateRange, Cursor, QueryRange, Selector};
use super::retention::{self, PassReport};
use super::settings::TsSettings;
use super::writer::{self, PutSeries};
use crate::entity::key::decode_query_value;
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::mesh::{Rpc, Served};
use crate::node::blocking::Work;
use crate::node::{Core, Faults};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use themis_io::{Method, Request, Response, ShutdownSignal};

const GET: &[Method] = &[Method::Get, Method::Head];

/// The time-series routes.
pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::TsPut,
        methods: &[Method::Post],
        path: PathPattern::Exact("/ts/put"),
        role: Role::Write,
        tables: Tables::All,
        label: "POST /ts/put",
    },
    Route {
        id: RouteId::TsQuery,
        methods: &[Method::Post],
        path: PathPattern::Exact("/ts/query"),
        role: Role::Read,
        tables: Tables::All,
        label: "POST /ts/query",
    },
    Route {
        id: RouteId::TsAggregate,
        methods: &[Method::Post],
        path: PathPattern::Exact("/ts/aggregate"),
        role: Role::Read,
        tables: Tables::All,
        label: "POST /ts/aggregate",
    },
    Route {
        id: RouteId::TsMetrics,
        methods: GET,
        path: PathPattern::Exact("/ts/metrics"),
        role: Role::Read,
        tables: Tables::All,
        label: "GET /ts/metrics",
    },
    Route {
        id: RouteId::TsConfigGet,
        methods: GET,
        path: PathPattern::Exact("/ts/config"),
        role: Role::Read,
        tables: Tables::All,
        label: "GET /ts/config",
    },
    Route {
        id: RouteId::TsConfigSet,
        methods: &[Method::Put],
        path: PathPattern::Exact("/ts/config"),
        role: Role::Admin,
        tables: Tables::All,
        label: "PUT /ts/config",
    },
    Route {
        id: RouteId::TsRetention,
        methods: GET,
        path: PathPattern::Exact("/ts/retention"),
        role: Role::Read,
        tables: Tables::All,
        label: "GET /ts/retention",
    },
    Route {
        id: RouteId::TsWrite,
        methods: &[Method::Post],
        path: PathPattern::Exact("/api/v2/write"),
        role: Role::Write,
        tables: Tables::All,
        label: "POST /api/v2/write",
    },
    Route {
        id: RouteId::RetentionRun,
        methods: &[Method::Post],
        path: PathPattern::Exact("/retention/run"),
        role: Role::Admin,
        tables: Tables::All,
        label: "POST /retention/run",
    },
];

/// Most points one `/ts/query` page returns.
pub const MAX_QUERY_LIMIT: usize = 100_000;
const DEFAULT_QUERY_LIMIT: usize = 1_000;

/// Fails with 503 unless `features.timeseries` is on.
pub fn require_enabled(core: &Core) -> Result<(), ApiError> {
    if core.settings().features.timeseries {
        Ok(())
    } else {
        Err(ApiError::FeatureDisabled {
            flag: "features.timeseries",
            enable: r#"{"features": {"timeseries": true}}"#,
        })
    }
}

fn require_retention(core: &Core) -> Result<(), ApiError> {
    if core.node().timeseries.retention_enabled {
        Ok(())
    } else {
        Err(ApiError::FeatureDisabled {
            flag: "features.retention.enabled",
            enable: "(restart-only: set features.retention.enabled: true in the config file)",
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

fn json_resp(resp: &mut Response<'_>, status: u16, v: &Value) {
    resp.json(status, &serde_json::to_vec(v).unwrap_or_default());
}

/// `POST /ts/put`: one point, or `{"points": [...]}`.
pub async fn put(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let now = now_ms();
    // A large body is parsed and grouped off the reactor.
    let (single, grouped) = if body.len() > INLINE_PARSE_BYTES {
        let body = body.to_vec();
        core.blocking(Work::Scan, move || parse_put(&body, now))
            .await??
    } else {
        parse_put(body, now)?
    };
    let mut rejected = grouped.rejected;
    if single {
        if let Some((_, why)) = rejected.first() {
            return Err(bad(why.clone()));
        }
    }
    let (stored, failed) = store(core, grouped.series).await;
    rejected.extend(failed);
    rejected.sort_by_key(|r| r.0);
    if stored == 0 {
        if let Some((i, why)) = rejected.first() {
            let what = if single {
                why.clone()
            } else {
                format!(
                    "all {} points were rejected; the first: point #{i}: {why}",
                    rejected.len()
                )
            };
            return Err(bad(what));
        }
    }
    let list: Vec<Value> = rejected
        .iter()
        .map(|(i, why)| json!({"index": i, "error": why}))
        .collect();
    json_resp(
        resp,
        200,
        &json!({"stored": stored, "rejected": list.len(), "rejections": list}),
    );
    Ok(())
}

/// A `/ts/put` body: whether it is one point, and its points grouped.
fn parse_put(body: &[u8], now: i64) -> Result<(bool, ingest::Grouped), ApiError> {
    let obj = body_object(body)?;
    let single = !obj.contains_key("points");
    let points: Vec<Value> = if single {
        vec![Value::Object(obj)]
    } else {
        if obj.len() != 1 {
            return Err(bad(
                "a batch is {\"points\": [...]} with no other field".into()
            ));
        }
        match obj.into_iter().next().map(|(_, v)| v) {
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(bad("points: must not be empty".into()))
            }
            Some(Value::Array(a)) if a.len() > ingest::MAX_POINTS => {
                return Err(bad(format!(
                    "points: at most {} points per request, got {}",
                    ingest::MAX_POINTS,
                    a.len()
                )))
            }
            Some(Value::Array(a)) => a,
            _ => return Err(bad("points: must be an array of points".into())),
        }
    };
    Ok((single, ingest::group(&points, now)))
}

/// Writes each series on its owner, one call per owner core, all in
/// flight at once. Answers how many points were stored and, for each
/// series that was not, its points' positions with the reason.
async fn store(
    core: &Core,
    series: Vec<(SeriesWrite, Vec<usize>)>,
) -> (usize, Vec<(usize, String)>) {
    let (stored, failed) = store_series(core, series).await;
    let mut rejected = Vec::new();
    for (positions, e) in failed {
        rejected.extend(
            positions
                .into_iter()
                .map(|i| (i, format!("not stored: {e}"))),
        );
    }
    (stored, rejected)
}

/// [`store`]'s work: points stored, and each failed series' positions with
/// the reason.
async fn store_series(
    core: &Core,
    series: Vec<(SeriesWrite, Vec<usize>)>,
) -> (usize, Vec<(Vec<usize>, String)>) {
    let mut by_owner: BTreeMap<usize, Vec<(SeriesWrite, Vec<usize>)>> = BTreeMap::new();
    for (w, positions) in series {
        let owner = core.owner_of(&w.id.to_be_bytes());
        by_owner.entry(owner).or_default().push((w, positions));
    }
    let calls = by_owner.into_iter().map(|(owner, list)| {
        let (writes, positions): (Vec<SeriesWrite>, Vec<Vec<usize>>) = list.into_iter().unzip();
        let counts: Vec<usize> = writes.iter().map(|w| w.points.len()).collect();
        // Local writes are placed (inline, or in the queue) right here,
        // when `join_all` collects the calls.
        let (local, remote) = if owner == core.id() {
            (Some(writer::write_here(core, writes)), None)
        } else {
            (None, Some(writes))
        };
        async move {
            let results = match (local, remote) {
                (Some(f), _) => Ok(f.await),
                (None, Some(w)) => core.call(owner, PutSeries(w)).await,
                (None, None) => Ok(Vec::new()),
            };
            (positions, counts, results)
        }
    });
    let mut stored = 0usize;
    let mut failed = Vec::new();
    for (positions, counts, results) in futures::future::join_all(calls).await {
        let results = match results {
            Ok(r) => r,
            Err(e) => vec![Err(e.to_string()); positions.len()],
        };
        for ((pos, n), r) in positions.into_iter().zip(counts).zip(results) {
            match r {
                Ok(()) => stored += n,
                Err(e) => failed.push((pos, e)),
            }
        }
    }
    (stored, failed)
}

/// Bodies up to this size are parsed on the reactor; larger (or gzip)
/// ones on the scan lane.
const INLINE_PARSE_BYTES: usize = 64 << 10;

/// `POST /api/v2/write?precision=ns|us|ms|s[&entity_tag=host]`: InfluxDB
/// line protocol (`Content-Encoding: gzip` accepted). 204 when every point
/// was stored; 400 naming the first bad line, and then nothing is stored.
/// `org` and `bucket` (sent by Influx clients) are accepted and not used:
/// THEMIS has one database.
pub async fn write_lines(
    core: &Core,
    req: &Request<'_>,
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    use super::lineproto::{self, Precision};
    require_enabled(core)?;
    let mut precision = Precision::Ns;
    let mut entity_tag = "host".to_string();
    for (name, raw) in req.query_pairs() {
        let v = decode_query_value(raw)?;
        match decode_query_value(name)?.as_str() {
            "precision" => {
                precision = Precision::parse(&v).ok_or_else(|| {
                    bad(format!("precision: must be ns, us, ms or s, got {v:?}"))
                })?
            }
            "entity_tag" if !v.is_empty() => entity_tag = v,
            "org" | "bucket" | "orgID" => {}
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?} (allowed: precision, entity_tag, org, bucket, orgID)"
                )))
            }
        }
    }
    let gzip = match req.header("content-encoding") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"gzip") => true,
        Some(v) if v.eq_ignore_ascii_case(b"identity") => false,
        Some(v) => {
            return Err(bad(format!(
                "Content-Encoding {:?} is not supported (gzip or identity)",
                String::from_utf8_lossy(v)
            )))
        }
    };
    let now = now_ms();
    let parse = move |body: &[u8]| -> Result<Vec<SeriesWrite>, ApiError> {
        let decoded;
        let text = if gzip {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(lineproto::MAX_DECODED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("gzip body: {e}")))?;
            if out.len() as u64 > lineproto::MAX_DECODED_BYTES {
                return Err(bad(format!(
                    "gzip body: more than {} bytes decompressed",
                    lineproto::MAX_DECODED_BYTES
                )));
            }
            decoded = out;
            &decoded[..]
        } else {
            body
        };
        let text =
            std::str::from_utf8(text).map_err(|e| bad(format!("the body is not UTF-8 ({e})")))?;
        lineproto::parse_series(text, precision, &entity_tag, now).map_err(bad)
    };
    let series = if gzip || req.body.len() > INLINE_PARSE_BYTES {
        let body = req.body.to_vec();
        core.blocking(Work::Scan, move || parse(&body)).await??
    } else {
        parse(req.body)?
    };
    let total: usize = series.iter().map(|s| s.points.len()).sum();
    let series = series.into_iter().map(|w| (w, Vec::new())).collect();
    let (stored, failed) = store_series(core, series).await;
    if let Some((_, why)) = failed.first() {
        tracing::error!(
            stored,
            failed = failed.len(),
            "line protocol write partly failed: {why}"
        );
        return Err(ApiError::Unavailable(
            "some series could not be stored (each series is all or nothing); see the server log",
        ));
    }
    debug_assert_eq!(stored, total);
    resp.start(204, "text/plain", 0, &[]);
    Ok(())
}

fn timestamp(obj: &Map<String, Value>, name: &str) -> Result<i64, ApiError> {
    match obj.get(name) {
        None => Err(bad(format!("{name}: required"))),
        Some(v) => match v.as_i64() {
            Some(t) if (key::MIN_TIMESTAMP_MS..=key::MAX_TIMESTAMP_MS + 1).contains(&t) => Ok(t),
            _ => Err(bad(format!(
                "{name}: must be an integer in {}..={}, got {v}",
                key::MIN_TIMESTAMP_MS,
                key::MAX_TIMESTAMP_MS + 1
            ))),
        },
    }
}

fn check_fields(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown field {k:?} (allowed: {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

/// `metric`, `entity`, `tags`, `from_ms`, `to_ms` of a read.
fn selector(obj: &Map<String, Value>) -> Result<(Selector, i64, i64), ApiError> {
    let metric = match obj.get("metric") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= key::MAX_NAME_BYTES => s.clone(),
        _ => {
            return Err(bad(format!(
                "metric: required, a string of 1..={} bytes",
                key::MAX_NAME_BYTES
            )))
        }
    };
    let entity = match obj.get("entity") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(bad(format!("entity: must be a string, got {other}"))),
    };
    let mut tags = BTreeMap::new();
    match obj.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.len() <= key::MAX_TAGS => {
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| bad(format!("tag {k:?}: value must be a string, got {v}")))?;
                tags.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => {
            return Err(bad(format!(
                "tags: must be an object of at most {} string values",
                key::MAX_TAGS
            )))
        }
    }
    let from = timestamp(obj, "from_ms")?;
    let to = timestamp(obj, "to_ms")?;
    if from > to {
        return Err(bad(format!("from_ms ({from}) is after to_ms ({to})")));
    }
    Ok((
        Selector {
            metric,
            entity,
            tags,
        },
        from,
        to,
    ))
}

/// Runs a read on the scan lane, bounded by the request's deadline.
async fn scan<T: Send + 'static>(
    core: &Core,
    f: impl FnOnce(&crate::storage::Storage, Instant) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let timeout = core.request_timeout();
    let deadline = Instant::now() + timeout;
    let node = core.node().clone();
    match core
        .blocking(Work::Scan, move || f(&node.storage, deadline))
        .await?
    {
        Err(ApiError::Timeout { .. }) => Err(ApiError::Timeout {
            ms: timeout.as_millis() as u64,
        }),
        other => other,
    }
}

/// `POST /ts/query`.
pub async fn query(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let obj = body_object(body)?;
    check_fields(
        &obj,
        &[
            "metric", "entity", "tags", "from_ms", "to_ms", "limit", "cursor",
        ],
    )?;
    let (sel, from, to) = selector(&obj)?;
    let limit = match obj.get("limit") {
        None => DEFAULT_QUERY_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= MAX_QUERY_LIMIT as u64 => n as usize,
            _ => {
                return Err(bad(format!(
                    "limit: must be an integer in 1..={MAX_QUERY_LIMIT}, got {v}"
                )))
            }
        },
    };
    let cursor = match obj.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            Cursor::parse(s)
                .ok_or_else(|| bad(format!("cursor: not a cursor this server issued: {s:?}")))?,
        ),
        Some(other) => return Err(bad(format!("cursor: must be a string, got {other}"))),
    };
    let q = QueryRange {
        sel,
        from,
        to,
        limit,
        cursor,
    };
    let v = scan(core, move |s, deadline| read::query(s, &q, deadline)).await?;
    json_resp(resp, 200, &v);
    Ok(())
}

/// `POST /ts/aggregate`.
pub async fn aggregate(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let obj = body_object(body)?;
    check_fields(
        &obj,
        &[
            "metric",
            "entity",
            "tags",
            "from_ms",
            "to_ms",
            "interval_ms",
            "group_by",
            "aggregations",
        ],
    )?;
    let (sel, from, to) = selector(&obj)?;
    let interval = match obj.get("interval_ms") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(i) if i >= 1 => Some(i),
            _ => {
                return Err(bad(format!(
                    "interval_ms: must be an integer >= 1, got {v}"
                )))
            }
        },
    };
    let buckets = bucket_count(from, to, interval);
    if buckets > MAX_BUCKETS {
        return Err(bad(format!(
            "interval_ms: [from_ms, to_ms) would make {buckets} buckets; at most {MAX_BUCKETS}"
        )));
    }
    let group_by: Vec<String> = match obj.get("group_by") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= key::MAX_TAGS => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("group_by: tag names are strings, got {t}")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(bad(format!(
                "group_by: must be an array of at most {} tag names",
                key::MAX_TAGS
            )))
        }
    };
    let aggs: Vec<Agg> = match obj.get("aggregations") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 7 => a
            .iter()
            .map(|n| {
                n.as_str().and_then(Agg::parse).ok_or_else(|| {
                    bad(format!(
                        "aggregations: unknown aggregation {n} (allowed: {})",
                        Agg::NAMES
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad(format!(
                "aggregations: required, a non-empty array of: {}",
                Agg::NAMES
            )))
        }
    };
    let a = AggregateRange {
        sel,
        from,
        to,
        interval,
        group_by,
        aggs,
    };
    let v = scan(core, move |s, deadline| read::aggregate(s, &a, deadline)).await?;
    json_resp(resp, 200, &v);
    Ok(())
}

/// `GET /ts/metrics`.
pub async fn metrics(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let v = scan(core, read::metrics).await?;
    json_resp(resp, 200, &v);
    Ok(())
}

/// `GET /ts/config`.
pub fn get_config(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let s = core.node().timeseries.settings();
    json_resp(resp, 200, &serde_json::to_value(&*s).unwrap_or_default());
    Ok(())
}

/// `PUT /ts/config`: replaces the settings (stored synced).
pub async fn put_config(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let s = TsSettings::parse(body).map_err(bad)?;
    let node = core.node().clone();
    let v = serde_json::to_value(&s).unwrap_or_default();
    core.blocking(Work::Admin, move || {
        node.timeseries.save_settings(&node.storage, s)
    })
    .await??;
    json_resp(resp, 200, &v);
    Ok(())
}

/// A copy of the callee's last retention pass.
pub struct LastPass;

impl Rpc<Core> for LastPass {
    type Answer = Option<PassReport>;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        Served::Now(Ok(core.timeseries().last_pass()))
    }
}

/// Runs one retention pass on the callee.
pub struct RunPass {
    pub dry_run: bool,
}

impl Rpc<Core> for RunPass {
    type Answer = PassReport;
    const SPAWN: bool = true;
    fn serve(self, core: &Rc<Core>) -> Served<Self::Answer> {
        let core = core.clone();
        Served::Later(Box::pin(async move {
            run_pass(&core, self.dry_run, false).await
        }))
    }
}

/// Adds up per-core pass reports.
fn merged(reports: &[PassReport]) -> Value {
    let mut by_policy: BTreeMap<String, u64> = BTreeMap::new();
    for r in reports {
        for (p, n) in &r.deleted_by_policy {
            *by_policy.entry(p.clone()).or_default() += n;
        }
    }
    json!({
        "dry_run": reports.iter().any(|r| r.dry_run),
        "started_at_ms": reports.iter().map(|r| r.started_at_ms).min(),
        "finished_at_ms": reports.iter().map(|r| r.finished_at_ms).max(),
        "series_cut": reports.iter().map(|r| r.series_cut).sum::<u64>(),
        "deleted_total": reports.iter().map(|r| r.deleted_total).sum::<u64>(),
        "deleted_by_policy": by_policy,
        "per_core": reports,
    })
}

/// `GET /ts/retention`: the rules in force and the last run.
pub async fn retention(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let ts = &core.node().timeseries;
    let mut reports: Vec<PassReport> = core.timeseries().last_pass().into_iter().collect();
    for other in (0..core.cores()).filter(|c| *c != core.id()) {
        reports.extend(core.call(other, LastPass).await?);
    }
    let last = (!reports.is_empty()).then(|| merged(&reports));
    let v = json!({
        "enabled": ts.retention_enabled,
        "interval_hours": ts.interval_hours,
        "policies_path": ts.policies_path,
        "policies": ts.policies().policies,
        "settings": *ts.settings(),
        "changefeed": {"policy": "cdc_retention_hours", "retention_hours": core.settings().cdc_retention_hours},
        "last_run": last,
    });
    json_resp(resp, 200, &v);
    Ok(())
}

/// `POST /retention/run` with optional `{"dry_run": true}`: one pass on
/// every core now; answers what it deleted (or would delete).
pub async fn run(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_retention(core)?;
    let dry_run = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let obj = body_object(body)?;
        check_fields(&obj, &["dry_run"])?;
        match obj.get("dry_run") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(bad(format!("dry_run: must be a boolean, got {other}"))),
        }
    };
    let me = async { run_pass(core, dry_run, false).await };
    let others = futures::future::join_all(
        (0..core.cores())
            .filter(|c| *c != core.id())
            .map(|c| core.call(c, RunPass { dry_run })),
    );
    let (mine, theirs) = futures::future::join(me, others).await;
    let mut reports = vec![mine?];
    for r in theirs {
        reports.push(r?);
    }
    reports.sort_by_key(|r| r.core);
    json_resp(resp, 200, &merged(&reports));
    Ok(())
}

/// One retention pass over the series this core owns (see
/// [`retention`]). A manual pass while another runs on this core is a 409.
pub async fn run_pass(
    core: &Core,
    dry_run: bool,
    background: bool,
) -> Result<PassReport, ApiError> {
    let local = core.timeseries();
    if local.pass_running.replace(true) {
        return Err(ApiError::Conflict(format!(
            "a retention pass is already running on core {}",
            core.id()
        )));
    }
    // Cleared however the pass ends, even if its future is dropped.
    struct Running<'a>(&'a std::cell::Cell<bool>);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.set(false);
        }
    }
    let _running = Running(&local.pass_running);
    let report = pass_steps(core, dry_run, background).await?;
    if !dry_run {
        core.node().timeseries.record_pass(&report);
        *local.last_pass.borrow_mut() = Some(report.clone());
    }
    Ok(report)
}

async fn pass_steps(core: &Core, dry_run: bool, background: bool) -> Result<PassReport, ApiError> {
    let node = core.node().clone();
    let started = now_ms();
    let mut report = PassReport {
        core: core.id(),
        dry_run,
        started_at_ms: started,
        ..Default::default()
    };
    let (me, cores) = (core.id(), core.cores());
    let file = node.timeseries.policies();
    let settings = node.timeseries.settings();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (n, f, s, a) = (node.clone(), file.clone(), settings.clone(), after.take());
        let job =
            move || retention::plan_step(&n.storage, a.as_deref(), me, cores, started, &f, &s);
        let (cuts, next) = if background {
            core.blocking_background(Work::Admin, job).await??
        } else {
            core.blocking(Work::Admin, job).await??
        };
        if !cuts.is_empty() && !dry_run {
            // This core owns these series: the cut runs in its series
            // queue, so it never interleaves with a write of them, and off
            // the reactor (range deletes, and the cut minute and hour
            // summarised again: `ingest::cut_series`).
            let list: Vec<(u64, i64)> = cuts.iter().map(|c| (c.id, c.cutoff)).collect();
            writer::cut(core, list).await?;
        }
        for c in cuts {
            report.series_cut += 1;
            report.deleted_total += c.count;
            *report.deleted_by_policy.entry(c.policy).or_default() += c.count;
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    for p in &file.policies {
        let (Some(table), Some(field)) = (&p.table, &p.timestamp_field) else {
            continue;
        };
        let deleted = entity_policy(
            core,
            table,
            field,
            started - p.max_age_ms,
            dry_run,
            background,
        )
        .await?;
        report.deleted_total += deleted;
        *report.deleted_by_policy.entry(p.name.clone()).or_default() += deleted;
    }
    report.finished_at_ms = now_ms();
    if report.deleted_total > 0 {
        tracing::info!(
            shard = me,
            dry_run,
            deleted = report.deleted_total,
            series = report.series_cut,
            by_policy = ?report.deleted_by_policy,
            "time-series retention pass"
        );
    }
    Ok(report)
}

/// One entity policy on this core: entities of `table` it owns whose
/// `field` is below `cutoff` are deleted one by one through the write
/// pipeline (so their index entries go and each emits a change event).
/// Each is checked again on the owner just before its delete, so an
/// entity updated since the read is kept. Returns how many were deleted
/// (or, for a dry run, would be).
async fn entity_policy(
    core: &Core,
    table: &str,
    field: &str,
    cutoff: i64,
    dry_run: bool,
    background: bool,
) -> Result<u64, ApiError> {
    let node = core.node().clone();
    let (me, cores) = (core.id(), core.cores());
    let mut after: Option<Vec<u8>> = None;
    let mut deleted = 0u64;
    loop {
        let (n, t, f, a) = (
            node.clone(),
            table.to_string(),
            field.to_string(),
            after.take(),
        );
        let job = move || {
            retention::plan_entity_step(&n.storage, &t, &f, cutoff, a.as_deref(), me, cores)
        };
        let (keys, next) = if background {
            core.blocking_background(Work::Admin, job).await??
        } else {
            core.blocking(Work::Admin, job).await??
        };
        for key in &keys {
            let Some(owned) = core.own(key.as_str()) else {
                continue;
            };
            // The current value: a staged write may have renewed it.
            let still = crate::entity::write::read_current(core, &owned, |v| {
                v.is_some_and(|v| retention::entity_expired(v, field, cutoff))
            })?;
            if !still {
                continue;
            }
            if dry_run || crate::entity::write::apply(core, owned, None).await? {
                deleted += 1;
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(deleted),
        }
    }
}

/// Starts each core's background retention pass when
/// `features.retention.enabled` (every `interval_hours`, or the test
/// fault's `retention_interval_ms`).
pub fn start(core: &Rc<Core>, shutdown: &ShutdownSignal, faults: &Faults) {
    writer::start(core);
    let ts = &core.node().timeseries;
    if !ts.retention_enabled {
        return;
    }
    let interval = faults
        .retention_interval
        .unwrap_or(Duration::from_secs(u64::from(ts.interval_hours) * 3600));
    glommio::spawn_local(retention_loop(core.clone(), shutdown.clone(), interval)).detach();
}

async fn retention_loop(core: Rc<Core>, shutdown: ShutdownSignal, interval: Duration) {
    loop {
        if shutdown.sleep(interval).await {
            return;
        }
        match run_pass(&core, false, true).await {
            Ok(_) => core.node().failures.clear("timeseries_retention", None),
            Err(ApiError::Conflict(_)) => {} // a manual pass is running
            Err(e) => core.report_failure("timeseries_retention", None, e.to_string()),
        }
    }
}
