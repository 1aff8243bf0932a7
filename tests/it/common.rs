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

/// One key of `table` owned by each core of a 2-core server: whichever core
/// a connection lands on, one of the two is local and one is remote.
pub fn key_per_core(table: &str) -> [String; 2] {
    let mut keys = [None, None];
    for i in 0.. {
        let k = format!("{table}:{i}");
        keys[themis::mesh::owner_of(k.as_bytes(), 2)].get_or_insert(k);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    keys.map(|k| k.unwrap_or_default())
}
