//! The change feed's HTTP endpoints.
//!
//! * `GET /changefeed` — a page of events after `from_seq`, optionally
//!   waiting (`long_poll_ms`) for the first one.
//! * `GET /changefeed/stream` — Server-Sent Events: every event as it
//!   commits, heartbeats while idle, resumable with `Last-Event-ID`.
//! * `GET /changefeed/stats`, `POST /changefeed/retention`.
//!
//! All of them answer 503 `feature_disabled` while `features.cdc` is off.

use super::local::Batch;
use super::record::Filter;
use super::ReadLimits;
use crate::entity::key::decode_query_value;
use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::node::blocking::Work;
use crate::node::{Core, Faults};
use crate::obs::counters::{bump, drop_one};
use std::rc::Rc;
use std::time::{Duration, Instant};
use themis_io::{Method, ShutdownSignal, Transport};
use themis_io::{Request, Response, StreamEnd, StreamOut};

const GET: &[Method] = &[Method::Get, Method::Head];

/// The change feed's routes.
pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::ChangefeedPoll,
        methods: GET,
        path: PathPattern::Exact("/changefeed"),
        role: Role::Read,
        tables: Tables::QueryTable,
        label: "GET /changefeed",
    },
    Route {
        id: RouteId::ChangefeedStream,
        methods: &[Method::Get],
        path: PathPattern::Exact("/changefeed/stream"),
        role: Role::Read,
        tables: Tables::QueryTable,
        label: "GET /changefeed/stream",
    },
    Route {
        id: RouteId::ChangefeedStats,
        methods: GET,
        path: PathPattern::Exact("/changefeed/stats"),
        role: Role::Read,
        tables: Tables::None,
        label: "GET /changefeed/stats",
    },
    Route {
        id: RouteId::ChangefeedRetention,
        methods: &[Method::Post],
        path: PathPattern::Exact("/changefeed/retention"),
        role: Role::Admin,
        tables: Tables::All,
        label: "POST /changefeed/retention",
    },
];

/// Starts the change feed's tasks on a core: its watch task, and (on core
/// 0) the background retention pass.
pub fn start(core: &Rc<Core>, shutdown: &ShutdownSignal, faults: &Faults) {
    let feed = core.changefeed().feed().clone();
    glommio::spawn_local(feed.watch(core.node().clone(), shutdown.clone())).detach();
    if core.id() == 0 {
        let interval = faults.retention_interval.unwrap_or(Duration::from_secs(60));
        glommio::spawn_local(retention_loop(core.clone(), shutdown.clone(), interval)).detach();
    }
}

/// Prunes change events older than `cdc_retention_hours` (hot-reloadable)
/// every `interval`, on the blocking pool.
async fn retention_loop(core: Rc<Core>, shutdown: ShutdownSignal, interval: Duration) {
    loop {
        if shutdown.sleep(interval).await {
            return;
        }
        let hours = u64::from(core.settings().cdc_retention_hours);
        let node = core.node().clone();
        let result = core
            .blocking_background(Work::Feed, move || {
                node.changefeed
                    .prune_older_than(&node.storage, hours * 3_600_000)
            })
            .await
            .and_then(|r| r.map_err(ApiError::from));
        match result {
            Ok(_) => core.node().failures.clear("changefeed_retention", None),
            Err(e) => core.report_failure("changefeed_retention", None, e.to_string()),
        }
    }
}

/// Most bytes of events in one `GET /changefeed` page; a longer page ends
/// early and `next_from_seq` says where to continue.
pub const MAX_PAGE_BYTES: usize = 8 << 20;
/// `limit` bounds for `GET /changefeed`.
pub const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 100;
/// Longest `long_poll_ms` (it is also capped by `request_timeout_ms`).
const MAX_LONG_POLL_MS: u64 = 300_000;
const DEFAULT_HEARTBEAT_MS: u64 = 15_000;
const HEARTBEAT_MS_RANGE: (u64, u64) = (100, 300_000);
/// The reconnection delay suggested to SSE clients.
const RETRY_MS: u64 = 2_000;
/// One SSE read: enough to amortise a write, small enough to interleave
/// subscribers.
const STREAM_LIMITS: ReadLimits = ReadLimits {
    max_events: 256,
    max_bytes: 256 << 10,
    max_scan: 50_000,
};

/// What a `/changefeed/stream` connection needs to go on.
#[derive(Debug)]
pub struct SseStream {
    after: u64,
    filter: Filter,
    heartbeat: Duration,
}

/// Fails with 503 unless `features.cdc` is on.
pub fn require_enabled(core: &Core) -> Result<(), ApiError> {
    if core.settings().features.cdc {
        Ok(())
    } else {
        Err(ApiError::FeatureDisabled {
            flag: "features.cdc",
            enable: r#"{"features": {"cdc": true}}"#,
        })
    }
}

#[derive(Debug, Default)]
struct Params {
    from_seq: Option<u64>,
    limit: Option<usize>,
    long_poll_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    filter: Filter,
}

fn number(name: &str, v: &str, min: u64, max: u64) -> Result<u64, ApiError> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "{name}: must be an integer in {min}..={max}, got {v:?}"
        ))),
    }
}

/// Parses the query string; any parameter not in `allowed` is an error.
fn parse_params(req: &Request<'_>, allowed: &[&str]) -> Result<Params, ApiError> {
    let mut p = Params::default();
    for (name, raw) in req.query_pairs() {
        let name = decode_query_value(name)?;
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {name:?} (allowed: {})",
                allowed.join(", ")
            )));
        }
        let v = decode_query_value(raw)?;
        match name.as_str() {
            "from_seq" => p.from_seq = Some(number("from_seq", &v, 0, u64::MAX)?),
            "limit" => p.limit = Some(number("limit", &v, 1, MAX_LIMIT as u64)? as usize),
            "long_poll_ms" => {
                p.long_poll_ms = Some(number("long_poll_ms", &v, 0, MAX_LONG_POLL_MS)?)
            }
            "heartbeat_ms" => {
                let (lo, hi) = HEARTBEAT_MS_RANGE;
                p.heartbeat_ms = Some(number("heartbeat_ms", &v, lo, hi)?)
            }
            "key_prefix" | "table" if v.is_empty() => {
                return Err(ApiError::BadRequest(format!("{name}: must not be empty")))
            }
            "key_prefix" => p.filter.key_prefix = Some(v),
            "table" => p.filter.table = Some(v),
            _ => {}
        }
    }
    Ok(p)
}

/// Applies the table filter of a key limited to one table when the
/// request named no table (a named table was checked by `http::auth`).
fn force_table(p: &mut Params, forced: Option<&str>) {
    if p.filter.table.is_none() {
        p.filter.table = forced.map(str::to_string);
    }
}

/// Appends `"events":[...]` members.
fn write_events(out: &mut Vec<u8>, batch: &Batch) {
    out.extend_from_slice(b"{\"events\":[");
    for (i, e) in batch.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.json());
    }
    out.extend_from_slice(b"]");
}

/// `GET /changefeed`.
///
/// `forced_table`: the table a key limited to one table reads when the
/// request names none (`http::auth`).
pub async fn poll(
    core: &Core,
    req: &Request<'_>,
    resp: &mut Response<'_>,
    forced_table: Option<&str>,
) -> Result<(), ApiError> {
    require_enabled(core)?;
    let mut p = parse_params(
        req,
        &["from_seq", "limit", "long_poll_ms", "key_prefix", "table"],
    )?;
    force_table(&mut p, forced_table);
    let rt = core.settings();
    let wait = Duration::from_millis(p.long_poll_ms.unwrap_or(0).min(rt.request_timeout_ms));
    let deadline = Instant::now() + wait;
    let limits = ReadLimits {
        max_events: p.limit.unwrap_or(DEFAULT_LIMIT),
        max_bytes: MAX_PAGE_BYTES,
        max_scan: 100_000,
    };
    let feed = core.changefeed().feed();
    let shared = core.node();
    let from = p.from_seq.unwrap_or(0);
    let mut after = from;
    let _reader = (!wait.is_zero()).then(|| feed.reader());
    let batch = loop {
        let gen = feed.generation();
        let batch = feed.read(core, after, &p.filter, limits).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !batch.events.is_empty()
            || remaining.is_zero()
            || feed.stopping()
            || !core.settings().features.cdc
        {
            break batch;
        }
        after = batch.scanned_to;
        if batch.more {
            continue;
        }
        futures_lite::future::or(feed.changed(gen), glommio::timer::sleep(remaining)).await;
    };
    let mut body = Vec::with_capacity(256);
    write_events(&mut body, &batch);
    let mut num = itoa::Buffer::new();
    body.extend_from_slice(b",\"count\":");
    body.extend_from_slice(num.format(batch.events.len()).as_bytes());
    body.extend_from_slice(b",\"latest_sequence\":");
    body.extend_from_slice(num.format(shared.changefeed.latest()).as_bytes());
    body.extend_from_slice(b",\"next_from_seq\":");
    body.extend_from_slice(num.format(batch.scanned_to.max(from)).as_bytes());
    body.push(b'}');
    resp.json(200, &body);
    Ok(())
}

/// `GET /changefeed/stream`: checks the request and sends the head.
pub fn open_stream(
    core: &Core,
    req: &Request<'_>,
    resp: &mut Response<'_>,
    forced_table: Option<&str>,
) -> Result<SseStream, ApiError> {
    require_enabled(core)?;
    let mut p = parse_params(req, &["from_seq", "key_prefix", "table", "heartbeat_ms"])?;
    force_table(&mut p, forced_table);
    let resume = match req.header("last-event-id") {
        Some(v) => {
            let v = std::str::from_utf8(v).unwrap_or("").trim();
            Some(v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "Last-Event-ID: must be an event sequence, got {v:?}"
                ))
            })?)
        }
        None => None,
    };
    let feed = &core.node().changefeed;
    // Resuming wins over from_seq; with neither, the stream starts live.
    let after = match resume.or(p.from_seq) {
        Some(a) => feed.start_after(a)?,
        None => feed.latest(),
    };
    resp.start_stream(
        200,
        "text/event-stream; charset=utf-8",
        &[("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")],
    );
    Ok(SseStream {
        after,
        filter: p.filter,
        heartbeat: Duration::from_millis(p.heartbeat_ms.unwrap_or(DEFAULT_HEARTBEAT_MS)),
    })
}

/// One event as an SSE frame. The event JSON is compact unless the client
/// stored a document with line breaks; those become several `data:` lines,
/// which the client joins back with `\n` (JSON whitespace).
fn write_frame(out: &mut Vec<u8>, seq: u64, json: &[u8]) {
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b'\n');
    for line in json.split(|b| *b == b'\n' || *b == b'\r') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

enum Woken {
    Changed,
    Heartbeat,
}

/// Streams events until the client leaves, the server stops, the feature
/// is turned off, or the client cannot keep up.
pub async fn run_stream<T: Transport>(core: &Core, mut s: SseStream, out: &mut StreamOut<'_, T>) {
    let counters = core.counters();
    bump(&counters.sse_active, 1);
    let _reader = core.changefeed().feed().reader();
    let end = stream_loop(core, &mut s, out).await;
    drop_one(&counters.sse_active);
    let behind = core.node().changefeed.latest().saturating_sub(s.after);
    match end {
        Ok(()) | Err(StreamEnd::Closed) => {}
        Err(StreamEnd::Stalled) => {
            bump(&counters.sse_dropped_events, behind);
            tracing::warn!(
                shard = core.id(),
                after = s.after,
                behind,
                "SSE subscriber stopped reading; disconnected (it can resume with Last-Event-ID)"
            );
        }
        Err(StreamEnd::Shutdown) => {
            let b = out.buffer();
            b.extend_from_slice(b": server shutting down; resume with Last-Event-ID\n\n");
            let _ = out.flush(Duration::from_millis(500)).await;
        }
    }
}

async fn stream_loop<T: Transport>(
    core: &Core,
    s: &mut SseStream,
    out: &mut StreamOut<'_, T>,
) -> Result<(), StreamEnd> {
    let counters = core.counters();
    let feed = core.changefeed().feed();
    let stall = || Duration::from_millis(core.settings().request_timeout_ms);
    let b = out.buffer();
    b.extend_from_slice(b"retry: ");
    b.extend_from_slice(itoa::Buffer::new().format(RETRY_MS).as_bytes());
    b.extend_from_slice(b"\n: connected; streaming events after sequence ");
    b.extend_from_slice(itoa::Buffer::new().format(s.after).as_bytes());
    b.extend_from_slice(b"\n\n");
    out.flush(stall()).await?;
    let mut last_write = Instant::now();
    loop {
        if !core.settings().features.cdc {
            out.buffer()
                .extend_from_slice(b": features.cdc was turned off; stream closed\n\n");
            return out.flush(stall()).await;
        }
        if feed.stopping() || out.shutting_down() {
            return Err(StreamEnd::Shutdown);
        }
        let gen = feed.generation();
        let batch = match feed.read(core, s.after, &s.filter, STREAM_LIMITS).await {
            Ok(b) => b,
            Err(e) => {
                if let ApiError::HistoryPruned { .. } = e {
                    let behind = core.node().changefeed.latest().saturating_sub(s.after);
                    bump(&counters.sse_dropped_events, behind);
                }
                let b = out.buffer();
                b.extend_from_slice(b"event: error\ndata: ");
                b.extend_from_slice(&e.body());
                b.extend_from_slice(b"\n\n");
                return out.flush(stall()).await;
            }
        };
        if !batch.events.is_empty() {
            let b = out.buffer();
            for e in &batch.events {
                write_frame(b, e.seq, e.json());
            }
            out.flush(stall()).await?;
            bump(&counters.sse_events_sent, batch.events.len() as u64);
            last_write = Instant::now();
        }
        s.after = batch.scanned_to;
        if batch.more {
            continue;
        }
        let beat_at = last_write + s.heartbeat;
        let woken = out
            .wait(futures_lite::future::or(
                async {
                    feed.changed(gen).await;
                    Woken::Changed
                },
                async {
                    glommio::timer::sleep(beat_at.saturating_duration_since(Instant::now())).await;
                    Woken::Heartbeat
                },
            ))
            .await?;
        if let Woken::Heartbeat = woken {
            out.buffer().extend_from_slice(b": heartbeat\n\n");
            out.flush(stall()).await?;
            bump(&counters.sse_heartbeats, 1);
            last_write = Instant::now();
        }
    }
}

/// `GET /changefeed/stats`.
pub fn stats(core: &Core, resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let shared = core.node();
    let feed = &shared.changefeed;
    let shards = shared.shard_snapshots();
    let v = serde_json::json!({
        "first_sequence": feed.first(),
        "latest_sequence": feed.latest(),
        "event_count": feed.event_count(),
        "size_bytes": super::store::size_bytes(&shared.storage),
        "sequence_gaps": feed.gaps(),
        "retention_hours": core.settings().cdc_retention_hours,
        "sse_subscribers": shards.iter().map(|s| s.sse_active).sum::<u64>(),
    });
    resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

/// `POST /changefeed/retention` with `{"before_sequence": N}` or
/// `{"max_age_hours": H}`.
pub async fn retention(core: &Core, body: &[u8], resp: &mut Response<'_>) -> Result<(), ApiError> {
    require_enabled(core)?;
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let obj = v.as_object().ok_or_else(|| {
        ApiError::BadRequest(
            "body must be {\"before_sequence\": N} or {\"max_age_hours\": H}".into(),
        )
    })?;
    for k in obj.keys() {
        if k != "before_sequence" && k != "max_age_hours" {
            return Err(ApiError::BadRequest(format!(
                "unknown field {k:?} (allowed: before_sequence, max_age_hours)"
            )));
        }
    }
    enum Prune {
        Before(u64),
        Age(u64),
    }
    let prune = match (obj.get("before_sequence"), obj.get("max_age_hours")) {
        (Some(b), None) => match b.as_u64() {
            Some(n) if n >= 1 => Prune::Before(n),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "before_sequence: must be an integer >= 1, got {b}"
                )))
            }
        },
        (None, Some(h)) => match h.as_f64() {
            Some(x) if x > 0.0 && x <= 87_600.0 => Prune::Age((x * 3_600_000.0) as u64),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "max_age_hours: must be a number in (0, 87600], got {h}"
                )))
            }
        },
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of before_sequence and max_age_hours".into(),
            ))
        }
    };
    let shared = core.node().clone();
    let outcome = core
        .blocking(Work::Admin, move || {
            let feed = &shared.changefeed;
            match prune {
                Prune::Before(n) => feed.prune_before(&shared.storage, n),
                Prune::Age(ms) => feed.prune_older_than(&shared.storage, ms),
            }
        })
        .await??;
    let v = serde_json::json!({
        "deleted": outcome.deleted,
        "first_sequence": outcome.first_sequence,
        "latest_sequence": core.node().changefeed.latest(),
    });
    resp.json(200, &serde_json::to_vec(&v).unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_frame;

    #[test]
    fn frames_split_line_breaks_into_data_lines() {
        let mut out = Vec::new();
        write_frame(&mut out, 7, b"{\"a\":1}");
        assert_eq!(out, b"id: 7\ndata: {\"a\":1}\n\n");
        out.clear();
        write_frame(&mut out, 8, b"{\n\"a\":1}");
        assert_eq!(out, b"id: 8\ndata: {\ndata: \"a\":1}\n\n");
    }
}
