//! The integration tests, one test binary: each binary of this package links
//! RocksDB, and on a small CI machine linking dominates, so the suites are
//! modules of one binary rather than five. They run as parallel threads of
//! one process: each starts its own server (own port, own temp dir) and sets
//! environment variables only on that child, never on this process.

mod common;

mod api;
mod architecture;
mod backup;
mod cache;
mod changefeed;
mod groupcommit;
mod hostile;
mod lifecycle;
mod llm;
mod observability;
mod query;
mod security;
mod sharding;
mod timeseries;
mod tls;
mod vectors;
