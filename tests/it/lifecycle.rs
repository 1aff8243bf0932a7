//! Start-up, configuration, durability and shutdown of the real binary.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn data_survives_a_graceful_restart() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    for i in 0..50 {
        let (st, _) = s.json(
            "PUT",
            &format!("/entities/r:{i}"),
            Some(&format!("{{\"i\":{i}}}")),
        );
        assert_eq!(st, 201);
    }
    let (status, s) = s.restart(&Opts::threads(1));
    assert!(status.success(), "SIGTERM must exit 0, got {status:?}");
    for i in 0..50 {
        let (st, v) = s.json("GET", &format!("/entities/r:{i}"), None);
        assert_eq!(st, 200);
        assert_eq!(v["entity"], json!({"i": i}));
    }
    let out = s.output();
    assert!(s.stop().success(), "{out}");
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    let mut clients: Vec<Client> = (0..4).map(|_| s.client()).collect();
    for i in 0..400 {
        let r = clients[i % 4].request(
            "PUT",
            &format!("/entities/d:{i}"),
            Some(&format!("{{\"i\":{i}}}")),
        );
        assert_eq!(r.status, 201);
    }
    let r = clients[0].request("DELETE", "/entities/d:7", None);
    assert_eq!(r.json()["deleted"], true);
    s.kill9();

    let s = start_in(dir.path(), &Opts::threads(2));
    let mut c = s.client();
    for i in 0..400 {
        let r = c.request("GET", &format!("/entities/d:{i}"), None);
        if i == 7 {
            assert_eq!(r.status, 404);
        } else {
            assert_eq!(r.status, 200, "acknowledged write d:{i} lost");
            assert_eq!(r.json()["entity"]["i"], i);
        }
    }
}

#[test]
fn sigterm_while_clients_are_connected_exits_cleanly() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    // Idle keep-alive connections must not hold the shutdown up.
    let mut idle: Vec<Client> = (0..5).map(|_| s.client()).collect();
    for c in idle.iter_mut() {
        assert_eq!(c.request("GET", "/health", None).status, 200);
    }
    let status = s.stop();
    assert!(status.success());
    for c in idle.iter_mut() {
        assert!(
            c.try_read_response(false).is_none(),
            "idle connection should be closed"
        );
    }
}

#[test]
fn config_precedence_file_env_cli() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("config.yaml"),
        "server:\n  worker_threads: 1\n  request_timeout_ms: 5000\nstorage:\n  block_cache_size_mb: 16\n",
    )
    .unwrap();
    // The file is found by the search path (cwd is the temp dir).
    let s = start_in(dir.path(), &Opts::default());
    assert_eq!(s.json("GET", "/health", None).1["shards"], 1);
    let (_, v) = s.json("GET", "/stats", None);
    assert_eq!(
        v["storage"]["rocksdb"]["block_cache_capacity_bytes"],
        16u64 << 20
    );
    drop(s);
    // Environment beats the file.
    let s = start_in(
        dir.path(),
        &Opts::default().env("THEMIS_WORKER_THREADS", "2"),
    );
    assert_eq!(s.json("GET", "/health", None).1["shards"], 2);
    drop(s);
    // The command line beats the environment.
    let s = start_in(
        dir.path(),
        &Opts::threads(1).env("THEMIS_WORKER_THREADS", "2"),
    );
    assert_eq!(s.json("GET", "/health", None).1["shards"], 1);
    drop(s);
    // --config wins over the search path.
    std::fs::write(
        dir.path().join("other.json"),
        r#"{"server": {"worker_threads": 2}}"#,
    )
    .unwrap();
    let s = start_in(
        dir.path(),
        &Opts::default().arg("--config").arg("other.json"),
    );
    assert_eq!(s.json("GET", "/health", None).1["shards"], 2);
}

#[test]
fn unknown_keys_are_warned_about_by_name() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("config.yaml"),
        "server:\n  worker_threads: 1\n  wroker_threads: 4\n",
    )
    .unwrap();
    let s = start_in(
        dir.path(),
        &Opts::default().env("THEMIS_STORAGE_BOGUS", "1"),
    );
    let out = s.wait_output("THEMIS_STORAGE_BOGUS", Duration::from_secs(10));
    assert!(out.contains("server.wroker_threads"), "{out}");
    assert!(out.contains("THEMIS_STORAGE_BOGUS"), "{out}");
}

#[test]
fn invalid_config_refuses_to_start() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("config.yaml"),
        "server:\n  request_timeout_ms: 10\n",
    )
    .unwrap();
    let out = output_within(&mut command(dir.path()), Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.request_timeout_ms") && err.contains("1000..=300000"),
        "{err}"
    );
}

#[test]
fn validate_passes_and_fails() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("good.yaml"),
        "storage:\n  rocksdb_path: ./db\n  memtable_size_mb: 8\n  block_cache_size_mb: 8\nserver:\n  host: 127.0.0.1\n  port: 0\n  worker_threads: 1\n",
    )
    .unwrap();
    let out = output_within(
        command(dir.path()).args(["--config", "good.yaml", "--validate"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for expect in [
        "✓ Config file valid",
        "✓ Storage path accessible",
        "✓ Port 0 available",
        "✓ Memory limits: memtable (32 MB",
        "✓ Worker threads: 1",
    ] {
        assert!(text.contains(expect), "missing {expect:?} in:\n{text}");
    }

    // Bad value: non-zero exit naming the key.
    std::fs::write(dir.path().join("bad.yaml"), "logging:\n  level: chatty\n").unwrap();
    let out = output_within(
        command(dir.path()).args(["--config", "bad.yaml", "--validate"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("✗") && text.contains("logging.level"),
        "{text}"
    );

    // Port in use: non-zero exit.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = output_within(
        command(dir.path()).args(["--config", "good.yaml", "--port", &port, "--validate"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("✗ Port {port} not available")),
        "{text}"
    );

    // Missing explicit file.
    let out = output_within(
        command(dir.path()).args(["--config", "missing.yaml", "--validate"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
}

#[test]
fn busy_port_is_a_clear_startup_error() {
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = output_within(
        command(dir.path()).args([
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--threads",
            "1",
            "--db",
            "data",
        ]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
}

#[test]
fn version_line() {
    let dir = tempdir();
    let out = output_within(
        command(dir.path()).arg("--version"),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("THEMIS v0."), "{text}");
    assert!(
        text.contains("(build: ") && text.contains(", commit: "),
        "{text}"
    );
}

#[test]
fn a_second_server_cannot_share_the_port() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    let other = tempdir();
    let out = output_within(
        command(other.path())
            .args([
                "--host",
                "127.0.0.1",
                "--threads",
                "1",
                "--db",
                "data",
                "--port",
            ])
            .arg(s.addr.port().to_string()),
        Duration::from_secs(30),
    );
    assert!(
        !out.status.success(),
        "a second server joined port {}",
        s.addr.port()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
}

#[test]
fn silent_and_stalled_connections_are_closed_after_the_idle_timeout() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(1).env("THEMIS_SERVER_IDLE_TIMEOUT_MS", "1000"),
    );
    let mut idle = s.client();
    assert_eq!(idle.request("GET", "/health", None).status, 200);
    let mut stalled = s.client();
    stalled.send_raw(b"GET /health HTTP/1.1\r\nHo");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        idle.try_read_response(false).is_none(),
        "idle connection still open"
    );
    assert!(
        stalled.try_read_response(false).is_none(),
        "stalled connection still open"
    );
    // A busy connection is not affected.
    let mut busy = s.client();
    for _ in 0..5 {
        assert_eq!(busy.request("GET", "/health", None).status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
}
