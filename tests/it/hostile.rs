//! Hostile clients against the real binary: the io layer's bounds hold
//! end to end (memory per announced body, the whole-request deadline, the
//! connection cap).

use crate::common::{start_in, tempdir, Client, Opts};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn announced_bodies_that_never_arrive_cost_no_memory() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    // Warm up: every core has served something.
    for i in 0..20 {
        s.request("PUT", &format!("/entities/w:{i}"), Some(r#"{"a":1}"#));
    }
    let pid = s.child.id();
    let before = rss_kib(pid);
    let head = b"PUT /entities/a:b HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n";
    let mut conns = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(s.addr).expect("connect");
        c.write_all(head).expect("send head");
        c.write_all(&[b' '; 1000]).expect("send a little body");
        conns.push(c);
    }
    // Let the server read what arrived.
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "200 heads announcing 10 MiB each grew RSS by {grown_mib} MiB ({before} -> {after} KiB)"
    );
    drop(conns);
    // And the server still serves.
    assert_eq!(s.request("GET", "/entities/w:1", None).status, 200);
}

#[test]
fn a_trickling_client_is_cut_off_by_the_request_deadline() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(1).env("THEMIS_SERVER_REQUEST_TIMEOUT_MS", "1000"),
    );
    let mut c = TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_millis(50))).ok();
    c.write_all(b"PUT /entities/a:b HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .expect("head");
    let start = Instant::now();
    let mut answer = Vec::new();
    // One byte every 100 ms: every read is well within the idle timeout,
    // the whole request is not within the deadline.
    while start.elapsed() < Duration::from_secs(10) {
        if c.write_all(b" ").is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(5), "cut off late");
}

#[test]
fn connections_beyond_the_cap_get_503_with_retry_after() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(1).env("THEMIS_SERVER_MAX_CONNECTIONS", "2"),
    );
    let mut a = Client::connect(s.addr).expect("a");
    let mut b = Client::connect(s.addr).expect("b");
    assert_eq!(a.request("GET", "/health", None).status, 200);
    assert_eq!(b.request("GET", "/health", None).status, 200);
    let mut c = TcpStream::connect(s.addr).expect("c");
    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "got {text:?}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    drop(a);
    drop(c);
    // A freed slot admits the next client.
    let mut admitted = false;
    for _ in 0..50 {
        let mut d = Client::connect(s.addr).expect("d");
        d.send_raw(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        admitted = d.try_read_response(false).is_some_and(|r| r.status == 200);
        if admitted {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(admitted, "a freed slot must admit a new connection");
    // Counted (asked on a connection that holds a slot).
    let v = b.request("GET", "/stats", None).json();
    let refused: u64 = v["server"]["per_shard"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["connections_refused"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    assert!(refused >= 1, "{v}");
}

#[test]
fn a_panic_aborts_the_whole_server_rather_than_leaving_it_half_alive() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempdir();
    let mut s = start_in(
        dir.path(),
        &Opts::threads(2).env("THEMIS_TEST_FAULTS", "panic_path=/__panic"),
    );
    assert_eq!(
        s.request("PUT", "/entities/p:1", Some(r#"{"a":1}"#)).status,
        201
    );
    let mut c = Client::connect(s.addr).expect("connect");
    c.send_raw(b"GET /__panic HTTP/1.1\r\nHost: t\r\n\r\n");
    let status = themis_testkit::wait_with_timeout(&mut s.child, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(6), "SIGABRT expected, got {status:?}");
    assert!(s.output().contains("panic policy"), "{}", s.output());
    // The acknowledged write survived; the restarted server serves it.
    let s = start_in(dir.path(), &Opts::threads(2));
    assert_eq!(s.request("GET", "/entities/p:1", None).status, 200);
}

#[test]
fn duplicate_keys_and_oversized_requests_get_clear_errors() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    // Duplicate keys would let a unique index be bypassed.
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"u","column":"email","unique":true}"#),
    );
    assert_eq!(st, 202, "{v}");
    let r = s.request(
        "PUT",
        "/entities/u:m",
        Some(r#"{"email":"mallory@x","email":"alice@x"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.json());
    assert!(r.json()["message"].as_str().unwrap_or("").contains("email"));
    // At most 32 indexes per table.
    for i in 0..31 {
        let body = format!(r#"{{"table":"u","column":"c{i}"}}"#);
        assert_eq!(s.json("POST", "/index/create", Some(&body)).0, 202);
    }
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"u","column":"x"}"#),
    );
    assert_eq!(st, 409, "{v}");
    assert!(v["message"].as_str().unwrap_or("").contains("32"));
    // At most 64 conditions per query.
    let preds: Vec<String> = (0..65)
        .map(|i| format!(r#"{{"column":"c{i}","value":1}}"#))
        .collect();
    let q = format!(r#"{{"table":"u","predicates":[{}]}}"#, preds.join(","));
    let (st, v) = s.json("POST", "/query", Some(&q));
    assert_eq!(st, 400, "{v}");
    // A change-feed sequence past every bound is a clean answer, not a panic.
    let (st, v) = s.json("POST", "/config", Some(r#"{"features":{"cdc":true}}"#));
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.json("GET", "/changefeed?from_seq=18446744073709551615", None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["count"], 0);
}

#[test]
fn a_query_over_large_documents_pages_by_bytes_and_loses_nothing() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    // 40 documents of ~512 KiB: 20 MiB of matches, sorted on a column no
    // index covers, so every row must be considered before the first is
    // returned.
    let pad = "x".repeat(512 << 10);
    for i in 0..40 {
        let body = format!(r#"{{"rank":{},"pad":"{pad}"}}"#, (i * 7) % 40);
        let path = format!("/entities/big:{i:02}");
        assert_eq!(s.request("PUT", &path, Some(&body)).status, 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            None => r#"{"table":"big","order_by":{"column":"rank"},"limit":1000}"#.to_string(),
            Some(c) => format!(
                r#"{{"table":"big","order_by":{{"column":"rank"}},"limit":1000,"cursor":"{c}"}}"#
            ),
        };
        let r = s.request("POST", "/query", Some(&q));
        assert_eq!(r.status, 200);
        assert!(
            r.body.len() < (9 << 20),
            "a page of {} bytes is over the 8 MiB cap",
            r.body.len()
        );
        let v = r.json();
        let entities = v["entities"].as_array().cloned().unwrap_or_default();
        assert_eq!(v["count"].as_u64(), Some(entities.len() as u64));
        assert!(!entities.is_empty());
        for e in &entities {
            seen.push(e["entity"]["rank"].as_u64().unwrap_or(u64::MAX));
        }
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "too many pages");
    }
    assert!(pages >= 3, "20 MiB came back in {pages} page(s)");
    assert_eq!(seen, (0..40).collect::<Vec<u64>>());
}

#[test]
fn a_build_start_that_times_out_is_retried_until_every_core_builds() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(2).env("THEMIS_TEST_FAULTS", "refuse_start_build=3"),
    );
    for i in 0..40 {
        let body = format!(r#"{{"n":{i}}}"#);
        s.request("PUT", &format!("/entities/b:{i}"), Some(&body));
    }
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"b","column":"n"}"#),
    );
    assert_eq!(st, 202, "{v}");
    crate::common::wait_ready(&s);
    let (_, v) = s.json(
        "POST",
        "/query",
        Some(r#"{"table":"b","range":[{"column":"n","gte":0}],"limit":100,"return":"keys","explain":true}"#),
    );
    assert_eq!(v["count"], 40, "{v}");
}

#[test]
fn a_failed_background_task_makes_health_degraded_and_is_counted() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(2).env("THEMIS_TEST_FAULTS", "fail_build_reads=1"),
    );
    assert_eq!(s.json("GET", "/health", None).1["status"], "healthy");
    s.request("PUT", "/entities/f:1", Some(r#"{"n":1}"#));
    let (st, _) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"f","column":"n"}"#),
    );
    assert_eq!(st, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (st, v) = s.json("GET", "/health", None);
        assert_eq!(st, 200);
        if v["status"] == "degraded" || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["status"], "degraded", "{v}");
    let f = &v["failures"][0];
    assert_eq!(f["task"], "index_build", "{v}");
    assert!(f["core"].is_u64(), "{v}");
    let metrics = String::from_utf8_lossy(&s.request("GET", "/metrics", None).body).into_owned();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("themis_background_failures_total "))
        .unwrap_or("");
    assert!(!line.ends_with(" 0") && !line.is_empty(), "{line}");
}
