//! Per-shard counters, merged only when read.
//!
//! Each shard writes only its own [`CoreCounters`] (cache-line aligned, so
//! cores never share a line) with plain relaxed load+store: one writer, no
//! read-modify-write, no lock. `/stats` reads every shard's counters and
//! adds them up; a reader may see a value a few increments old, never a
//! torn one.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// One shard's counters. Written only by its own core.
#[derive(Default)]
#[repr(align(128))]
pub struct CoreCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Requests this shard sent to another owner.
    pub forwarded_out: AtomicU64,
    /// Requests other shards sent to this one.
    pub forwarded_in: AtomicU64,
    /// Entity operations executed here as the owner.
    pub entity_ops: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    /// Connections refused at accept: over `server.max_connections`.
    pub connections_refused: AtomicU64,
    /// Background tasks that failed on this core.
    pub background_failures: AtomicU64,
    /// Change events committed by this shard.
    pub feed_events: AtomicU64,
    /// Open SSE streams on this shard.
    pub sse_active: AtomicU64,
    pub sse_events_sent: AtomicU64,
    pub sse_heartbeats: AtomicU64,
    /// Events a stream had not delivered when it was cut off (stalled or
    /// pruned history); the subscriber can resume from its last id.
    pub sse_dropped_events: AtomicU64,
    /// Index builds finished (by the core that finished them).
    pub index_rebuilds: AtomicU64,
    pub index_rebuild_ms: AtomicU64,
    pub index_rebuild_entities: AtomicU64,
    /// Queries resumed from a cursor.
    pub cursor_anchor_hits: AtomicU64,
    /// Index entries visited by queries.
    pub range_scan_steps: AtomicU64,
    pub query_index_hits: AtomicU64,
    pub query_full_scans: AtomicU64,
    /// Requests refused 401 (no or unknown API key) and 403 (role or
    /// tables too small).
    pub auth_unauthorized: AtomicU64,
    pub auth_forbidden: AtomicU64,
    /// Requests that presented an API key and were refused 401 (unknown
    /// key, or a key without its client certificate): what the per-peer
    /// limit counts (`http::limiter`).
    pub auth_failures: AtomicU64,
    /// Requests refused 429 because their peer failed too many keys.
    pub auth_rate_limited: AtomicU64,
    /// Peers blocked after too many failed keys.
    pub auth_lockouts: AtomicU64,
    /// TLS handshakes completed, and connections dropped during the
    /// handshake (garbage, plaintext, untrusted client, deadline).
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Semantic cache lookups (`/cache/query`) answered by an exact or a
    /// semantic hit, or missed.
    pub cache_hits_exact: AtomicU64,
    pub cache_hits_semantic: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Cache entries this core deleted past its cap, or past their TTL.
    pub cache_evictions: AtomicU64,
    pub cache_expirations: AtomicU64,
    /// Gauges: cache entries this core owns, and their stored bytes.
    pub cache_entries: AtomicU64,
    pub cache_bytes: AtomicU64,
    /// LLM interactions stored through this core, and their token counts.
    pub llm_interactions: AtomicU64,
    pub llm_tokens: AtomicU64,
    /// Sizes of the group commits made on this shard.
    pub groups: GroupSizes,
}

/// Upper bounds of the group-size buckets, in writes.
pub const GROUP_WRITE_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];
/// Upper bounds of the group-size buckets, in batch bytes.
pub const GROUP_BYTE_BOUNDS: [u64; 10] = [
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
];

/// One shard's histograms of committed group sizes (count of groups per
/// bucket, not cumulative; larger than the last bound: only in `count`).
/// Single writer, merged across shards when `/metrics` is read.
#[derive(Default)]
pub struct GroupSizes {
    pub count: AtomicU64,
    /// Groups committed on the core itself (`storage.group_commit_on_core`),
    /// not on its helper thread.
    pub on_core: AtomicU64,
    pub writes_sum: AtomicU64,
    pub bytes_sum: AtomicU64,
    pub writes: [AtomicU64; GROUP_WRITE_BOUNDS.len()],
    pub bytes: [AtomicU64; GROUP_BYTE_BOUNDS.len()],
}

/// Records a committed group of `writes` entity writes and `bytes` batch
/// bytes on the calling core; `on_core`: committed by the core itself.
pub fn record_group(c: &CoreCounters, writes: usize, bytes: usize, on_core: bool) {
    let g = &c.groups;
    let (w, b) = (writes as u64, bytes as u64);
    bump(&g.count, 1);
    bump(&g.on_core, u64::from(on_core));
    bump(&g.writes_sum, w);
    bump(&g.bytes_sum, b);
    if let Some(i) = GROUP_WRITE_BOUNDS.iter().position(|ub| w <= *ub) {
        bump(&g.writes[i], 1);
    }
    if let Some(i) = GROUP_BYTE_BOUNDS.iter().position(|ub| b <= *ub) {
        bump(&g.bytes[i], 1);
    }
}

/// Adds `n` to a counter that only the calling core writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Sets a gauge that only the calling core writes.
#[inline]
pub fn set(c: &AtomicU64, v: u64) {
    c.store(v, Ordering::Relaxed);
}

/// Subtracts one from a single-writer gauge.
#[inline]
pub fn drop_one(c: &AtomicU64) {
    c.store(
        c.load(Ordering::Relaxed).saturating_sub(1),
        Ordering::Relaxed,
    );
}

/// A snapshot of one shard, as reported by `/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub cpu: usize,
    pub requests: u64,
    pub errors: u64,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    pub entity_ops: u64,
    pub connections_accepted: u64,
    pub connections_active: u64,
    pub connections_refused: u64,
    pub background_failures: u64,
    pub feed_events: u64,
    pub sse_active: u64,
    pub sse_events_sent: u64,
    pub sse_heartbeats: u64,
    pub sse_dropped_events: u64,
    pub index_rebuilds: u64,
    pub index_rebuild_ms: u64,
    pub index_rebuild_entities: u64,
    pub cursor_anchor_hits: u64,
    pub range_scan_steps: u64,
    pub query_index_hits: u64,
    pub query_full_scans: u64,
    pub auth_unauthorized: u64,
    pub auth_forbidden: u64,
    pub auth_failures: u64,
    pub auth_rate_limited: u64,
    pub auth_lockouts: u64,
    pub tls_handshakes: u64,
    pub tls_handshake_failures: u64,
    pub cache_hits_exact: u64,
    pub cache_hits_semantic: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    pub cache_expirations: u64,
    pub cache_entries: u64,
    pub cache_bytes: u64,
    pub llm_interactions: u64,
    pub llm_tokens: u64,
}

impl CoreCounters {
    pub fn snapshot(&self, shard: usize, cpu: usize) -> ShardSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ShardSnapshot {
            shard,
            cpu,
            requests: r(&self.requests),
            errors: r(&self.errors),
            forwarded_out: r(&self.forwarded_out),
            forwarded_in: r(&self.forwarded_in),
            entity_ops: r(&self.entity_ops),
            connections_accepted: r(&self.connections_accepted),
            connections_active: r(&self.connections_active),
            connections_refused: r(&self.connections_refused),
            background_failures: r(&self.background_failures),
            feed_events: r(&self.feed_events),
            sse_active: r(&self.sse_active),
            sse_events_sent: r(&self.sse_events_sent),
            sse_heartbeats: r(&self.sse_heartbeats),
            sse_dropped_events: r(&self.sse_dropped_events),
            index_rebuilds: r(&self.index_rebuilds),
            index_rebuild_ms: r(&self.index_rebuild_ms),
            index_rebuild_entities: r(&self.index_rebuild_entities),
            cursor_anchor_hits: r(&self.cursor_anchor_hits),
            range_scan_steps: r(&self.range_scan_steps),
            query_index_hits: r(&self.query_index_hits),
            query_full_scans: r(&self.query_full_scans),
            auth_unauthorized: r(&self.auth_unauthorized),
            auth_forbidden: r(&self.auth_forbidden),
            auth_failures: r(&self.auth_failures),
            auth_rate_limited: r(&self.auth_rate_limited),
            auth_lockouts: r(&self.auth_lockouts),
            tls_handshakes: r(&self.tls_handshakes),
            tls_handshake_failures: r(&self.tls_handshake_failures),
            cache_hits_exact: r(&self.cache_hits_exact),
            cache_hits_semantic: r(&self.cache_hits_semantic),
            cache_misses: r(&self.cache_misses),
            cache_evictions: r(&self.cache_evictions),
            cache_expirations: r(&self.cache_expirations),
            cache_entries: r(&self.cache_entries),
            cache_bytes: r(&self.cache_bytes),
            llm_interactions: r(&self.llm_interactions),
            llm_tokens: r(&self.llm_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_cache_line_sized() {
        assert_eq!(std::mem::align_of::<CoreCounters>(), 128);
        let c = CoreCounters::default();
        bump(&c.requests, 2);
        drop_one(&c.connections_active);
        let s = c.snapshot(0, 3);
        assert_eq!((s.requests, s.connections_active, s.cpu), (2, 0, 3));
    }
}
