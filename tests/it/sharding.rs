//! Shard-aware clients (`server.shard_ports`, `GET /shards`) and the
//! reactor stall metric, against the real binary.

use crate::common::{
    command, key_per_core, output_within, start_in, tempdir, Client, Opts, Server,
};
use std::net::SocketAddr;
use std::time::Duration;

fn with_shard_ports(threads: usize) -> Opts {
    Opts::threads(threads).env("THEMIS_SERVER_SHARD_PORTS", "true")
}

/// Each core's own address, from `GET /shards`.
fn core_addrs(s: &Server) -> Vec<SocketAddr> {
    let (st, v) = s.json("GET", "/shards", None);
    assert_eq!(st, 200, "{v}");
    v["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| SocketAddr::new(s.addr.ip(), c["port"].as_u64().unwrap() as u16))
        .collect()
}

/// Per-shard counters, read over a connection to `addr`.
fn per_shard(addr: SocketAddr, field: &str) -> Vec<u64> {
    let v = Client::connect(addr)
        .unwrap()
        .request("GET", "/stats", None)
        .json();
    v["server"]["per_shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[field].as_u64().unwrap())
        .collect()
}

#[test]
fn shards_describes_the_mapping_and_each_key_s_owner() {
    let dir = tempdir();
    let s = start_in(dir.path(), &with_shard_ports(2));
    let (st, v) = s.json("GET", "/shards", None);
    assert_eq!(st, 200);
    assert_eq!(v["shards"], 2);
    assert_eq!(v["shard_ports"], true);
    assert_eq!(v["port"], s.addr.port());
    assert_eq!(v["hash"]["name"], themis_shardmap::HASH_NAME);
    let ports: Vec<u64> = v["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["port"].as_u64().unwrap())
        .collect();
    assert!(ports
        .iter()
        .all(|p| *p != 0 && *p != u64::from(s.addr.port())));
    assert_ne!(ports[0], ports[1]);

    for key in key_per_core("users") {
        let owner = themis::mesh::owner_of(key.as_bytes(), 2);
        let (st, v) = s.json("GET", &format!("/shards?key={key}"), None);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["key"]["key"], key.as_str());
        assert_eq!(v["key"]["owner"], owner);
        assert_eq!(v["key"]["port"], ports[owner]);
        assert_eq!(
            v["key"]["hash"],
            format!("{:016x}", themis_shardmap::key_hash(key.as_bytes()))
        );
    }
    // Percent-decoded like an entity path: the owner of the stored key.
    let (_, v) = s.json("GET", "/shards?key=t%3Aa%20b", None);
    assert_eq!(v["key"]["key"], "t:a b");
    assert_eq!(v["key"]["owner"], themis::mesh::owner_of(b"t:a b", 2));

    // Hostile or wrong input: a clear 400, never a panic.
    let long = format!("t:{}", "x".repeat(2000));
    for bad in [
        "/shards?key=nocolon",
        "/shards?key=",
        "/shards?key=%FF%FE",
        "/shards?key=a:b&key=a:c",
        "/shards?nope=1",
        "/shards?key=a:%01",
        &format!("/shards?key={long}"),
    ] {
        let (st, v) = s.json("GET", bad, None);
        assert_eq!(st, 400, "{bad}: {v}");
        assert_eq!(v["error"], true, "{bad}: {v}");
    }
    let head = s.request("HEAD", "/shards", None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(s.request("POST", "/shards", Some("{}")).status, 405);

    // Without shard ports every core's port is null.
    let dir2 = tempdir();
    let plain = start_in(dir2.path(), &Opts::threads(2));
    let (_, v) = plain.json("GET", "/shards?key=a:b", None);
    assert_eq!(v["shard_ports"], false);
    assert!(
        v["cores"][0]["port"].is_null() && v["key"]["port"].is_null(),
        "{v}"
    );
}

/// A core's own port is accepted by that core alone; its own keys are
/// served without a hop, other keys are forwarded to their owner (the
/// documented answer to a client that picked the wrong port).
#[test]
fn a_shard_port_serves_its_core_and_forwards_other_keys() {
    let dir = tempdir();
    let s = start_in(dir.path(), &with_shard_ports(2));
    let addrs = core_addrs(&s);
    let keys = key_per_core("acct");
    for core in 0..2 {
        let other = 1 - core;
        let before = per_shard(addrs[core], "connections_accepted");
        for _ in 0..5 {
            let r = Client::connect(addrs[core])
                .unwrap()
                .request("GET", "/health", None);
            assert_eq!(r.status, 200);
        }
        let after = per_shard(addrs[core], "connections_accepted");
        assert_eq!(
            after[other], before[other],
            "only core {core} accepts on its port"
        );
        assert_eq!(after[core], before[core] + 6, "5 probes and the stats read");

        let mut c = Client::connect(addrs[core]).unwrap();
        let fwd = per_shard(addrs[core], "forwarded_out")[core];
        let own = format!("/entities/{}", keys[core]);
        let body = format!("{{\"on\":{core}}}");
        assert_eq!(c.request("PUT", &own, Some(&body)).status / 100, 2);
        assert_eq!(c.request("GET", &own, None).json()["entity"]["on"], core);
        assert_eq!(per_shard(addrs[core], "forwarded_out")[core], fwd, "no hop");

        let foreign = format!("/entities/{}", keys[other]);
        assert_eq!(c.request("PUT", &foreign, Some(&body)).status / 100, 2);
        let got = Client::connect(addrs[other])
            .unwrap()
            .request("GET", &foreign, None)
            .json();
        assert_eq!(got["entity"]["on"], core, "{got}");
        assert_eq!(
            per_shard(addrs[core], "forwarded_out")[core],
            fwd + 1,
            "the wrong port's request was forwarded to the owner"
        );
    }
}

/// docs/shard_client.py computes owners exactly as the server does (checked
/// against `GET /shards?key=` for keys of every length class), and sending
/// each key to its owner's port takes no hop at all.
#[test]
fn the_documented_python_client_agrees_with_the_server() {
    let dir = tempdir();
    // Three shards: the multiply-shift over a count that is no power of two.
    let s = start_in(dir.path(), &with_shard_ports(3));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/shard_client.py");
    let out = output_within(
        std::process::Command::new("python3").args([
            script,
            "--check",
            "127.0.0.1",
            &s.addr.port().to_string(),
            "120",
        ]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "python3 docs/shard_client.py --check failed (python3 is needed by this test):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 124 keys over 3 shards"));
    let (_, v) = s.json("GET", "/stats", None);
    assert_eq!(v["server"]["forwarded_total"], 0, "{}", v["server"]);
    let ops: u64 = v["server"]["per_shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["entity_ops"].as_u64().unwrap())
        .sum();
    assert!(ops >= 2 * 124, "{ops}");
}

#[test]
fn shard_ports_past_65535_are_refused_at_start() {
    let dir = tempdir();
    let out = output_within(
        command(dir.path())
            .args(["--port", "65534", "--threads", "2", "--db"])
            .arg(dir.path().join("data"))
            .env("THEMIS_SERVER_SHARD_PORTS", "true"),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("server.shard_ports") && text.contains("65536"),
        "{text}"
    );
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{text}"))
}

/// A core that blocks its reactor shows in `themis_reactor_stalls_total`
/// and the stall duration histogram.
#[test]
fn a_blocked_reactor_is_counted_as_a_stall() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(1)
            .env("THEMIS_SERVER_STALL_THRESHOLD_MS", "50")
            .env("THEMIS_TEST_FAULTS", "block_reactor_ms=300"),
    );
    let text = String::from_utf8(s.request("GET", "/metrics", None).body).unwrap();
    let before = metric(&text, "themis_reactor_stalls_total{shard=\"0\"}");
    assert!(text.contains("# TYPE themis_reactor_stall_duration_seconds histogram"));
    assert_eq!(s.request("GET", "/__block_reactor", None).status, 404);
    // The probe records the stall when the reactor comes back.
    std::thread::sleep(Duration::from_millis(100));
    let text = String::from_utf8(s.request("GET", "/metrics", None).body).unwrap();
    assert!(metric(&text, "themis_reactor_stalls_total{shard=\"0\"}") >= before + 1.0);
    assert!(
        metric(
            &text,
            "themis_reactor_stall_duration_seconds_count{shard=\"0\"}"
        ) >= 1.0
    );
    // At least the stall minus the probe interval (25 ms).
    assert!(
        metric(
            &text,
            "themis_reactor_stall_duration_seconds_sum{shard=\"0\"}"
        ) >= 0.25
    );
}

/// `--validate` checks each core's own port too.
#[test]
fn validate_checks_the_shard_ports() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("c.yaml"),
        "storage:\n  rocksdb_path: ./db\nserver:\n  host: 127.0.0.1\n  worker_threads: 1\n  shard_ports: true\n",
    )
    .unwrap();
    // The shard port (base + 1) is taken; the base port is free.
    let taken = (0..50)
        .find_map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let p = l.local_addr().ok()?.port();
            (p > 1024 && std::net::TcpListener::bind(("127.0.0.1", p - 1)).is_ok()).then_some(l)
        })
        .expect("a port whose neighbour below is free");
    let shard_port = taken.local_addr().unwrap().port();
    let base = (shard_port - 1).to_string();
    let out = output_within(
        command(dir.path()).args(["--config", "c.yaml", "--port", &base, "--validate"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("✗ Shard ports not available: {shard_port}")),
        "{text}"
    );
    drop(taken);
    let out = output_within(
        command(dir.path()).args(["--config", "c.yaml", "--port", &base, "--validate"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "✓ Shard ports {shard_port}..={shard_port} available (one per core)"
        )),
        "{text}"
    );
}
