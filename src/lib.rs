//! THEMIS: a thread-per-core multi-model database server on RocksDB.
//!
//! Code map (see ARCHITECTURE.md for the long form):
//! * [`config`]: the typed configuration, its sources and validation.
//! * [`server`]: executors, listeners, shutdown.
//! * [`api`]: routes and handlers, per core.
//! * [`router`]: key ownership and cross-core forwarding.
//! * [`entity`], [`key`]: entity documents and keys.
//! * [`storage`]: the RocksDB instance behind a narrow API.
//! * [`stats`]: per-core counters merged when read.
//! * [`metrics`], [`exposition`]: per-core latency histograms and `/metrics`.
//! * [`runtime`]: hot-reloadable settings (`POST /config`, SIGHUP).
//! * [`otlp`]: request spans exported over OTLP/HTTP.
//! * [`error`]: API errors and their mapping to HTTP.

pub mod api;
pub mod changefeed;
pub mod cli;
pub mod config;
pub mod entity;
pub mod error;
pub mod exposition;
pub mod index;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod published;
pub mod query;
pub mod router;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod storage;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Build date (UTC, YYYY-MM-DD), set by build.rs.
pub const BUILD_DATE: &str = env!("THEMIS_BUILD_DATE");
/// Short git commit, set by build.rs ("unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("THEMIS_GIT_COMMIT");
