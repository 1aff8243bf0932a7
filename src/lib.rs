//! THEMIS: a thread-per-core multi-model database server on RocksDB.
//!
//! Code map (see ARCHITECTURE.md for the long form):
//! * [`node`]: the cores ([`node::Core`], one part per feature), what they
//!   share ([`node::Node`]), the feature list, start-up and shutdown.
//! * [`http`]: the route table, the dispatcher, operational endpoints.
//! * [`mesh`]: key ownership and typed cross-core calls.
//! * [`storage`]: RocksDB behind a narrow API: keyspace, batches, reads.
//! * Features: [`entity`] (documents, keys, the write pipeline),
//!   [`index`], [`query`], [`changefeed`]; [`backup`] (backups,
//!   verification).
//! * [`config`], [`runtime`]: configuration and its hot-reloadable part.
//! * [`obs`]: counters, latency histograms, `/metrics`, spans, logging.
//! * [`error`]: API errors and their one mapping to HTTP.
//! * [`published`]: rarely changing values read through per-core copies.

pub mod backup;
pub mod cache;
pub mod changefeed;
pub mod cli;
pub mod config;
pub mod entity;
pub mod error;
pub mod http;
pub mod index;
pub mod llm;
pub mod mesh;
pub mod node;
pub mod obs;
pub mod published;
pub mod query;
pub mod runtime;
pub mod storage;
pub mod timeseries;
pub mod tls;
pub mod vector;

#[cfg(test)]
mod props;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Build date (UTC, YYYY-MM-DD), set by build.rs.
pub const BUILD_DATE: &str = env!("THEMIS_BUILD_DATE");
/// Short git commit, set by build.rs ("unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("THEMIS_GIT_COMMIT");
