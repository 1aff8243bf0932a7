//! `/metrics`: everything in the Prometheus text format.
//!
//! Metric names follow the deployment guide exactly (`vccdb_*`,
//! `rocksdb_*`, `themis_index_*`), so its `prometheus.yml`, alert rules and
//! dashboards work as written. Families are built as plain data and encoded
//! by the `prometheus` crate's text encoder.

use crate::node::Node;
use crate::obs::latency::LatencySnapshot;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
    Summary,
};
use prometheus::{Encoder, TextEncoder};

/// Upper bounds (seconds) of the request latency histogram buckets.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const QUANTILES: [f64; 4] = [0.5, 0.95, 0.99, 0.999];

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, ty: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(ty);
    f.set_metric(metrics);
    f
}

fn gauge_m(v: f64, l: &[(&str, &str)]) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_gauge(g);
    m.set_label(labels(l));
    m
}

fn counter_m(v: f64, l: &[(&str, &str)]) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::default();
    m.set_counter(c);
    m.set_label(labels(l));
    m
}

fn gauge(name: &str, help: &str, v: f64) -> MetricFamily {
    family(name, help, MetricType::GAUGE, vec![gauge_m(v, &[])])
}

fn counter(name: &str, help: &str, v: f64) -> MetricFamily {
    family(name, help, MetricType::COUNTER, vec![counter_m(v, &[])])
}

/// Process figures read from /proc/self.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    pub start_time_seconds: f64,
}

pub fn process_stats() -> ProcessStats {
    let mut p = ProcessStats::default();
    // SAFETY: sysconf and getrlimit only read process-wide settings.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // rest starts at field 3 (state): field N is f[N - 3].
            p.cpu_seconds = (num(14 - 3) + num(15 - 3)) / ticks.max(1.0);
            p.virtual_bytes = num(23 - 3);
            p.resident_bytes = num(24 - 3) * page;
            let start_ticks = num(22 - 3);
            let btime = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("btime ")
                            .and_then(|v| v.trim().parse::<f64>().ok())
                    })
                })
                .unwrap_or(0.0);
            p.start_time_seconds = btime + start_ticks / ticks.max(1.0);
        }
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as f64)
        .unwrap_or(0.0);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the stack value.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        p.max_fds = lim.rlim_cur as f64;
    }
    p
}

/// Renders every metric. `latency` is the merge of all cores' histograms,
/// `qps` the request rate since the previous scrape.
pub fn render(
    shared: &Node,
    latency: &LatencySnapshot,
    route_labels: &[&'static str],
    qps: f64,
) -> Vec<u8> {
    let snaps = shared.shard_snapshots();
    let total = |f: fn(&crate::obs::counters::ShardSnapshot) -> u64| {
        snaps.iter().map(f).sum::<u64>() as f64
    };
    let rocks = shared.storage.stats();
    let tickers = shared.storage.tickers();
    let proc = process_stats();
    let mut fams = vec![
        counter(
            "vccdb_requests_total",
            "HTTP requests answered, all routes and cores.",
            total(|s| s.requests),
        ),
        counter(
            "vccdb_errors_total",
            "HTTP requests answered with status 400 or above.",
            total(|s| s.errors),
        ),
        gauge(
            "vccdb_qps",
            "Requests per second since the previous scrape.",
            qps,
        ),
        gauge(
            "process_uptime_seconds",
            "Seconds since the server started.",
            shared.started.elapsed().as_secs_f64(),
        ),
        counter(
            "process_cpu_seconds_total",
            "User and system CPU time.",
            proc.cpu_seconds,
        ),
        gauge(
            "process_resident_memory_bytes",
            "Resident memory.",
            proc.resident_bytes,
        ),
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory.",
            proc.virtual_bytes,
        ),
        gauge("process_open_fds", "Open file descriptors.", proc.open_fds),
        gauge(
            "process_max_fds",
            "Limit of open file descriptors.",
            proc.max_fds,
        ),
        gauge(
            "process_start_time_seconds",
            "Start time since the Unix epoch.",
            proc.start_time_seconds,
        ),
        gauge(
            "rocksdb_block_cache_usage_bytes",
            "Bytes in the block cache.",
            rocks.block_cache_usage_bytes as f64,
        ),
        gauge(
            "rocksdb_block_cache_capacity_bytes",
            "Block cache capacity.",
            rocks.block_cache_capacity_bytes as f64,
        ),
        counter(
            "rocksdb_block_cache_hit",
            "Block cache hits.",
            tickers.block_cache_hit as f64,
        ),
        counter(
            "rocksdb_block_cache_miss",
            "Block cache misses.",
            tickers.block_cache_miss as f64,
        ),
        gauge(
            "rocksdb_estimate_num_keys",
            "Estimated number of entities.",
            rocks.estimate_num_keys as f64,
        ),
        gauge(
            "rocksdb_pending_compaction_bytes",
            "Estimated bytes compaction still has to rewrite.",
            rocks.estimate_pending_compaction_bytes as f64,
        ),
        gauge(
            "rocksdb_memtable_size_bytes",
            "Bytes in all memtables (active and immutable).",
            rocks.cur_size_all_mem_tables_bytes as f64,
        ),
        family(
            "rocksdb_files_level",
            "SST files per LSM level.",
            MetricType::GAUGE,
            rocks
                .files_per_level
                .iter()
                .enumerate()
                .map(|(l, n)| gauge_m(*n as f64, &[("level", &format!("L{l}"))]))
                .collect(),
        ),
        gauge(
            "rocksdb_num_running_compactions",
            "Compactions running now.",
            rocks.num_running_compactions as f64,
        ),
        counter(
            "themis_index_rebuild_count",
            "Index builds (create or rebuild) finished.",
            total(|s| s.index_rebuilds),
        ),
        counter(
            "themis_index_rebuild_duration_ms_total",
            "Milliseconds spent in index builds (wall time, summed).",
            total(|s| s.index_rebuild_ms),
        ),
        counter(
            "themis_index_rebuild_entities_processed_total",
            "Entities indexed by index builds.",
            total(|s| s.index_rebuild_entities),
        ),
        counter(
            "themis_index_cursor_anchor_hits_total",
            "Query pages that resumed their index scan at the cursor's entry.",
            total(|s| s.cursor_anchor_hits),
        ),
        counter(
            "themis_index_range_scan_steps_total",
            "Index entries visited by queries.",
            total(|s| s.range_scan_steps),
        ),
        counter(
            "themis_query_index_hits_total",
            "Queries served from an index.",
            total(|s| s.query_index_hits),
        ),
        counter(
            "themis_query_full_scan_fallback_total",
            "Queries that fell back to a full table scan (no usable index).",
            total(|s| s.query_full_scans),
        ),
        gauge(
            "themis_connections_active",
            "Open client connections.",
            total(|s| s.connections_active),
        ),
        counter(
            "themis_connections_refused_total",
            "Connections refused at accept (503) because server.max_connections were open.",
            total(|s| s.connections_refused),
        ),
        counter(
            "themis_background_failures_total",
            "Background tasks (index builds, retention, sequence reservation) that failed; /health says degraded while one stands.",
            total(|s| s.background_failures),
        ),
        counter(
            "themis_auth_unauthorized_total",
            "Requests refused 401: no API key or an unknown one.",
            total(|s| s.auth_unauthorized),
        ),
        counter(
            "themis_auth_forbidden_total",
            "Requests refused 403: the API key's role or tables do not cover the request.",
            total(|s| s.auth_forbidden),
        ),
        counter(
            "themis_auth_failures_total",
            "Requests that presented an API key and were refused 401 (unknown key, or a key without its client certificate).",
            total(|s| s.auth_failures),
        ),
        counter(
            "themis_auth_rate_limited_total",
            "Requests refused 429 because their peer address failed too many keys (server.auth_failure_limit).",
            total(|s| s.auth_rate_limited),
        ),
        counter(
            "themis_auth_lockouts_total",
            "Peer addresses blocked for server.auth_lockout_s after server.auth_failure_limit failed keys.",
            total(|s| s.auth_lockouts),
        ),
        counter(
            "themis_tls_handshakes_total",
            "TLS handshakes completed.",
            total(|s| s.tls_handshakes),
        ),
        counter(
            "themis_tls_handshake_failures_total",
            "Connections dropped during the TLS handshake (not TLS, untrusted or missing client certificate, deadline).",
            total(|s| s.tls_handshake_failures),
        ),
        gauge(
            "vccdb_sse_active_connections",
            "Open change-feed SSE streams.",
            total(|s| s.sse_active),
        ),
        counter(
            "vccdb_sse_events_sent_total",
            "Change events written to SSE streams.",
            total(|s| s.sse_events_sent),
        ),
        counter(
            "vccdb_sse_heartbeats_total",
            "Heartbeat comments written to idle SSE streams.",
            total(|s| s.sse_heartbeats),
        ),
        counter(
            "vccdb_sse_dropped_events_total",
            "Events not delivered because a stream was cut off (stalled subscriber or pruned history); the subscriber can resume.",
            total(|s| s.sse_dropped_events),
        ),
        counter(
            "themis_changefeed_events_total",
            "Change events committed since start.",
            total(|s| s.feed_events),
        ),
        family(
            "themis_semantic_cache_hits_total",
            "Semantic cache lookups answered by a hit, by match (exact: same normalised prompt and params; semantic: a similar embedding).",
            MetricType::COUNTER,
            vec![
                counter_m(total(|s| s.cache_hits_exact), &[("match", "exact")]),
                counter_m(total(|s| s.cache_hits_semantic), &[("match", "semantic")]),
            ],
        ),
        counter(
            "themis_semantic_cache_misses_total",
            "Semantic cache lookups that missed.",
            total(|s| s.cache_misses),
        ),
        counter(
            "themis_semantic_cache_evictions_total",
            "Semantic cache entries deleted because a core held more than its share of max_entries or max_bytes (least recently used first).",
            total(|s| s.cache_evictions),
        ),
        counter(
            "themis_semantic_cache_expirations_total",
            "Semantic cache entries deleted by the sweeper after their TTL.",
            total(|s| s.cache_expirations),
        ),
        gauge(
            "themis_semantic_cache_entries",
            "Semantic cache entries stored.",
            total(|s| s.cache_entries),
        ),
        gauge(
            "themis_semantic_cache_bytes",
            "Bytes of the semantic cache entries stored.",
            total(|s| s.cache_bytes),
        ),
        counter(
            "themis_llm_interactions_total",
            "LLM interactions stored since start.",
            total(|s| s.llm_interactions),
        ),
        counter(
            "themis_llm_tokens_total",
            "Token counts of the LLM interactions stored since start.",
            total(|s| s.llm_tokens),
        ),
        gauge(
            "themis_changefeed_latest_sequence",
            "The change feed's latest visible sequence.",
            shared.changefeed.latest() as f64,
        ),
        gauge(
            "themis_changefeed_first_sequence",
            "The oldest change-feed sequence still stored.",
            shared.changefeed.first() as f64,
        ),
        counter(
            "themis_changefeed_sequence_gaps_total",
            "Sequences taken by writes that then failed (holes in the feed).",
            shared.changefeed.gaps() as f64,
        ),
    ];
    if shared.wal_archive.dir().is_some() {
        let a = shared.wal_archive.stats();
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        let through = load(&a.archived_through_ms);
        fams.extend([
            gauge(
                "themis_wal_archive_archived_through_seconds",
                "Unix time of the start of the last complete WAL archiving pass: every write acknowledged before it is in the archive (0 before the first pass).",
                through as f64 / 1000.0,
            ),
            gauge(
                "themis_wal_archive_lag_seconds",
                "Seconds since archived_through: the recovery point a restore from the archive would lose now.",
                if through == 0 {
                    0.0
                } else {
                    crate::backup::now_ms().saturating_sub(through) as f64 / 1000.0
                },
            ),
            counter(
                "themis_wal_archive_bytes_total",
                "WAL bytes copied into the archive since start.",
                load(&a.bytes_total) as f64,
            ),
            counter(
                "themis_wal_archive_files_total",
                "WAL files archived whole (closed by RocksDB) since start.",
                load(&a.files_total) as f64,
            ),
            counter(
                "themis_wal_archive_passes_total",
                "Completed WAL archiving passes since start.",
                load(&a.passes_total) as f64,
            ),
            counter(
                "themis_wal_archive_failures_total",
                "WAL archiving passes that failed (I/O errors; /health has the message).",
                load(&a.failures_total) as f64,
            ),
            counter(
                "themis_wal_archive_gaps_total",
                "WAL files that disappeared before they were archived whole: the archive cannot restore past them.",
                load(&a.gaps_total) as f64,
            ),
        ]);
    }
    let per_shard = |f: fn(&crate::obs::counters::ShardSnapshot) -> u64| -> Vec<Metric> {
        snaps
            .iter()
            .map(|s| counter_m(f(s) as f64, &[("shard", &s.shard.to_string())]))
            .collect()
    };
    type Field = fn(&crate::obs::counters::ShardSnapshot) -> u64;
    let shard_families: [(&str, &str, Field); 5] = [
        (
            "themis_shard_requests_total",
            "Requests answered per shard (core).",
            |s| s.requests,
        ),
        (
            "themis_shard_errors_total",
            "Error responses per shard.",
            |s| s.errors,
        ),
        (
            "themis_shard_forwarded_out_total",
            "Requests a shard forwarded to the key's owner.",
            |s| s.forwarded_out,
        ),
        (
            "themis_shard_forwarded_in_total",
            "Requests a shard executed for another shard.",
            |s| s.forwarded_in,
        ),
        (
            "themis_shard_entity_ops_total",
            "Entity operations executed by the owning shard.",
            |s| s.entity_ops,
        ),
    ];
    for (name, help, field) in shard_families {
        fams.push(family(name, help, MetricType::COUNTER, per_shard(field)));
    }
    fams.push(family(
        crate::obs::stalls::COUNT_NAME,
        "Reactor stalls per shard: times a core did not get to its ready work for server.stall_threshold_ms or longer.",
        MetricType::COUNTER,
        shared
            .stalls
            .counts()
            .iter()
            .enumerate()
            .map(|(i, n)| counter_m(*n as f64, &[("shard", &i.to_string())]))
            .collect(),
    ));
    fams.extend(shared.stalls.duration_family());

    let mut hist_metrics = Vec::new();
    let mut summary_metrics = Vec::new();
    let mut cache_lookup = None;
    for (label, h, sum_us) in latency.by_label(route_labels) {
        let sum_s = sum_us as f64 / 1e6;
        let lbl = [("route", label)];
        if label == CACHE_LOOKUP_ROUTE {
            cache_lookup = Some(hdr_histogram(&h, sum_s, &[]));
        }
        hist_metrics.push(hdr_histogram(&h, sum_s, &lbl));

        let mut sm = Summary::default();
        sm.set_sample_count(h.len());
        sm.set_sample_sum(sum_s);
        sm.set_quantile(
            QUANTILES
                .iter()
                .map(|q| {
                    let mut qq = Quantile::default();
                    qq.set_quantile(*q);
                    qq.set_value(if h.is_empty() {
                        0.0
                    } else {
                        h.value_at_quantile(*q) as f64 / 1e6
                    });
                    qq
                })
                .collect(),
        );
        let mut m = Metric::default();
        m.set_summary(sm);
        m.set_label(labels(&lbl));
        summary_metrics.push(m);
    }
    if let Some(m) = cache_lookup {
        fams.push(family(
            "themis_semantic_cache_lookup_seconds",
            "Semantic cache lookup latency (POST /cache/query, server side; the same samples as its route's request histogram).",
            MetricType::HISTOGRAM,
            vec![m],
        ));
    }
    fams.push(family(
        "themis_http_request_duration_seconds",
        "Request latency by route (server side, from parsed request to response written to the buffer).",
        MetricType::HISTOGRAM,
        hist_metrics,
    ));
    fams.push(family(
        "themis_http_request_latency_seconds",
        "Request latency quantiles by route, from HDR histograms merged across cores.",
        MetricType::SUMMARY,
        summary_metrics,
    ));
    fams.extend(group_families(shared));
    fams.extend(retention_families(shared));
    // The encoder refuses a family without samples (and drops every family
    // after it): leave those out.
    fams.retain(|f| !f.get_metric().is_empty());

    let mut out = Vec::with_capacity(16 << 10);
    if let Err(e) = TextEncoder::new().encode(&fams, &mut out) {
        tracing::error!("encoding metrics: {e}");
    }
    out
}

/// The route whose latency is the cache lookup histogram.
const CACHE_LOOKUP_ROUTE: &str = "POST /cache/query";

/// A Prometheus histogram (the [`BUCKETS`]) from an HDR histogram of
/// microseconds.
fn hdr_histogram(h: &hdrhistogram::Histogram<u64>, sum_s: f64, l: &[(&str, &str)]) -> Metric {
    let mut hist = Histogram::default();
    hist.set_sample_count(h.len());
    hist.set_sample_sum(sum_s);
    hist.set_bucket(
        BUCKETS
            .iter()
            .map(|ub| {
                let mut b = Bucket::default();
                b.set_upper_bound(*ub);
                let limit_us = (ub * 1e6) as u64;
                let below = if h.is_empty() {
                    0
                } else {
                    h.count_between(0, limit_us)
                };
                b.set_cumulative_count(below);
                b
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_histogram(hist);
    m.set_label(labels(l));
    m
}

/// Group commit sizes (writes and bytes per committed group), merged over
/// the shards.
fn group_families(shared: &Node) -> Vec<MetricFamily> {
    use crate::obs::counters::{GROUP_BYTE_BOUNDS, GROUP_WRITE_BOUNDS};
    use std::sync::atomic::Ordering::Relaxed;
    let shards = &shared.counters;
    let sum = |f: &dyn Fn(&crate::obs::counters::GroupSizes) -> u64| -> u64 {
        shards.iter().map(|c| f(&c.groups)).sum()
    };
    let count = sum(&|g| g.count.load(Relaxed));
    let hist = |bounds: &[u64],
                bucket: &dyn Fn(&crate::obs::counters::GroupSizes, usize) -> u64,
                total: u64| {
        let mut h = Histogram::default();
        h.set_sample_count(count);
        h.set_sample_sum(total as f64);
        let mut cumulative = 0;
        h.set_bucket(
            bounds
                .iter()
                .enumerate()
                .map(|(i, ub)| {
                    cumulative += sum(&|g| bucket(g, i));
                    let mut b = Bucket::default();
                    b.set_upper_bound(*ub as f64);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect(),
        );
        let mut m = Metric::default();
        m.set_histogram(h);
        vec![m]
    };
    vec![
        counter(
            "themis_group_commits_on_core_total",
            "Group commits done by the core itself (storage.group_commit_on_core, without sync_writes), not by its helper thread; themis_group_commit_writes_count counts all.",
            sum(&|g| g.on_core.load(Relaxed)) as f64,
        ),
        family(
            "themis_group_commit_writes",
            "Entity writes per group commit (one WAL write, and one fsync with sync_writes).",
            MetricType::HISTOGRAM,
            hist(
                &GROUP_WRITE_BOUNDS,
                &|g, i| g.writes[i].load(Relaxed),
                sum(&|g| g.writes_sum.load(Relaxed)),
            ),
        ),
        family(
            "themis_group_commit_bytes",
            "Batch bytes per group commit.",
            MetricType::HISTOGRAM,
            hist(
                &GROUP_BYTE_BOUNDS,
                &|g, i| g.bytes[i].load(Relaxed),
                sum(&|g| g.bytes_sum.load(Relaxed)),
            ),
        ),
    ]
}

/// Time-series retention: points deleted per policy, and when a pass last
/// finished (absent until one has run).
fn retention_families(shared: &Node) -> Vec<MetricFamily> {
    let ts = &shared.timeseries;
    let deleted: Vec<Metric> = ts
        .deleted_by_policy()
        .iter()
        .map(|(p, n)| counter_m(*n as f64, &[("policy", p)]))
        .collect();
    let mut fams = vec![family(
        "themis_retention_deleted_total",
        "Time-series points deleted by retention, by policy.",
        MetricType::COUNTER,
        deleted,
    )];
    if let Some(ms) = ts.last_run_ms() {
        fams.push(gauge(
            "themis_retention_last_run_timestamp_seconds",
            "When the last time-series retention pass finished on any core (Unix seconds).",
            ms as f64 / 1000.0,
        ));
    }
    fams
}
