//! The test kit, bound to this package's `themis_server` binary.

use std::path::Path;
use std::process::Command;

pub use themis_testkit::{output_within, tempdir, Client, Opts, Resp, Server};

pub const BIN: &str = env!("CARGO_BIN_EXE_themis_server");

/// Starts the server with its data in `dir/data`.
pub fn start_in(dir: &Path, opts: &Opts) -> Server {
    Server::start(Path::new(BIN), dir, opts)
}

/// A command for the binary, run in `dir` without the caller's `THEMIS_*`.
pub fn command(dir: &Path) -> Command {
    themis_testkit::command(Path::new(BIN), dir)
}
