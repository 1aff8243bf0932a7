//! The load generator end to end: against a real `themis_server`, each mode
//! produces a well-formed report with the counts it promised.

use std::process::Command;
use themis_testkit::{tempdir, workspace_bin, Opts, Server};

/// This package's binary; the server is another package's, found next to
/// this test.
const LOADTEST: &str = env!("CARGO_BIN_EXE_themis-loadtest");

/// A one-thread server (built by `cargo test --workspace`) in `dir`.
fn start_server(dir: &std::path::Path) -> Server {
    Server::start(&workspace_bin("themis_server"), dir, &Opts::threads(1))
}

fn loadtest(addr: std::net::SocketAddr, args: &[&str]) -> serde_json::Value {
    let out = Command::new(LOADTEST)
        .args([
            "--url",
            &format!("http://{addr}"),
            "--json",
            "--threads",
            "1",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn closed_open_and_count_bounded_runs_report_consistently() {
    let dir = tempdir();
    let s = start_server(dir.path());

    // Closed loop, mixed, zipfian, after a preload: only 2xx answers.
    let r = loadtest(
        s.addr,
        &[
            "--mix",
            "mixed",
            "--read-ratio",
            "0.8",
            "--distribution",
            "zipfian",
            "-c",
            "4",
            "-d",
            "1",
            "--warmup",
            "0.2",
            "--keys",
            "200",
        ],
    );
    let get = &r["ops"]["GET"];
    let put = &r["ops"]["PUT"];
    assert!(
        get["count"].as_u64().unwrap() > 0 && put["count"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert!(
        get["count"].as_u64() > put["count"].as_u64(),
        "read ratio not respected: {r}"
    );
    assert_eq!(
        get["statuses"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["200"],
        "{r}"
    );
    for p in ["p50_ms", "p90_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms"] {
        assert!(get["latency"][p].as_f64().unwrap() > 0.0, "{p}: {r}");
    }

    // Count-bounded: stops by itself after about N measured requests.
    let r = loadtest(
        s.addr,
        &[
            "-n",
            "300",
            "-d",
            "0",
            "-c",
            "4",
            "--warmup",
            "0",
            "--keys",
            "200",
            "--no-preload",
        ],
    );
    let n = r["total"]["count"].as_u64().unwrap();
    assert!((300..=304).contains(&n), "{n}");

    // Open loop at a fixed rate sends what was scheduled.
    let r = loadtest(
        s.addr,
        &[
            "--mode",
            "open",
            "--rate",
            "400",
            "-c",
            "4",
            "-d",
            "1",
            "--warmup",
            "0",
            "--keys",
            "200",
            "--no-preload",
        ],
    );
    let n = r["total"]["count"].as_u64().unwrap();
    assert!(
        (380..=404).contains(&n),
        "open loop sent {n} of 400 scheduled"
    );

    // DELETE workload: the first delete of each key finds it, later ones 200 too.
    let r = loadtest(
        s.addr,
        &[
            "--mix",
            "delete",
            "-n",
            "100",
            "-d",
            "0",
            "-c",
            "2",
            "--warmup",
            "0",
            "--keys",
            "50",
            "--no-preload",
        ],
    );
    assert!(r["ops"]["DELETE"]["count"].as_u64().unwrap() >= 100, "{r}");
}

#[test]
fn bad_arguments_and_unreachable_servers_fail_cleanly() {
    let out = Command::new(LOADTEST)
        .args(["--read-ratio", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read_ratio"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(LOADTEST)
        .args([
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "-d",
            "1",
            "-c",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect"));
}

/// `--shard-aware` against a 2-core server with shard ports: every
/// measured request goes to its owner's port, so the server forwards
/// nothing; the same run without the flag does take hops.
#[test]
fn shard_aware_runs_take_no_hop() {
    let dir = tempdir();
    let s = Server::start(
        &workspace_bin("themis_server"),
        dir.path(),
        &Opts::threads(2).env("THEMIS_SERVER_SHARD_PORTS", "true"),
    );
    let forwarded = || s.json("GET", "/stats", None).1["server"]["forwarded_total"].as_u64();
    let args = [
        "--mix",
        "put",
        "-n",
        "400",
        "-d",
        "0",
        "-c",
        "4",
        "--warmup",
        "0",
        "--keys",
        "500",
        "--no-preload",
    ];
    let before = forwarded();
    let mut with_flag = args.to_vec();
    with_flag.push("--shard-aware");
    let r = loadtest(s.addr, &with_flag);
    assert_eq!(r["workload"]["shard_aware"], true, "{r}");
    assert!(r["ops"]["PUT"]["count"].as_u64().unwrap() >= 400, "{r}");
    assert_eq!(forwarded(), before, "a shard-aware run forwarded requests");

    let r = loadtest(s.addr, &args);
    assert!(r["ops"]["PUT"]["count"].as_u64().unwrap() >= 400, "{r}");
    assert!(
        forwarded() > before,
        "the default path should take hops for about half the keys"
    );
}
