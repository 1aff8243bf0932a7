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

/// Waits (at most 30 s, then fails) until every index is ready.
pub fn wait_ready(s: &Server) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = s.json("GET", "/index/stats", None).1;
        let all = v["indexes"].as_array().cloned().unwrap_or_default();
        if all.iter().all(|i| i["state"] == "ready") {
            return;
        }
        assert!(std::time::Instant::now() < end, "indexes not ready: {v}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
