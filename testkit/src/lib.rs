//! One test kit for everything that drives the real `themis_server` from the
//! outside (the integration tests, the load-test tests, the bench tools), so
//! that there is one launcher and one blocking HTTP/1.1 client instead of a
//! copy in each. Deliberately std + serde_json + tempfile only: depending on
//! it must not pull RocksDB or glommio into a test or tool.

pub mod http;
pub mod server;
pub mod sse;

pub use http::{Client, Resp};
pub use server::{command, output_within, tempdir, wait_with_timeout, workspace_bin, Opts, Server};
pub use sse::{Block, Sse};
