//! Observability: what the server records about itself, per core, merged
//! only when read.
//!
//! * [`counters`]: per-core counters (single writer each).
//! * [`latency`]: per-core HDR latency histograms, one per route.
//! * [`prometheus`]: `/metrics` in the Prometheus text format.
//! * [`otlp`]: request spans exported over OTLP/HTTP.
//! * [`logging`]: the `tracing` subscriber (level, format, rotation).
//! * [`stalls`]: reactor stalls found by glommio's stall detection, per
//!   core.

pub mod counters;
pub mod latency;
pub mod logging;
pub mod otlp;
pub mod prometheus;
pub mod stalls;
