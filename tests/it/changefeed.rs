//! Change data capture against the real binary: the feed, long polling,
//! the SSE stream, retention, crash consistency and the feature flag.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use themis_testkit::Sse;

fn cdc(threads: usize) -> Opts {
    Opts::threads(threads).env("THEMIS_FEATURES_CDC", "true")
}

/// `GET /changefeed?...` as JSON (status must be 200).
fn page(s: &Server, query: &str) -> Value {
    let r = s.request("GET", &format!("/changefeed?{query}"), None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Every event after `from`, following `next_from_seq`.
fn all_events(s: &Server, from: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = from;
    loop {
        let p = page(s, &format!("from_seq={after}&limit=500"));
        let events = p["events"].as_array().unwrap().clone();
        let next = p["next_from_seq"].as_u64().unwrap();
        if events.is_empty() && next >= p["latest_sequence"].as_u64().unwrap() {
            return out;
        }
        out.extend(events);
        after = next;
    }
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect()
}

/// Opens `GET /changefeed/stream?{query}` on `s`.
fn open_sse(s: &Server, query: &str, last_event_id: Option<u64>) -> Sse {
    Sse::open(s.addr, query, last_event_id).expect("connect")
}

#[test]
fn feature_flag_gates_every_endpoint_at_runtime() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    for (m, p) in [
        ("GET", "/changefeed?from_seq=0&limit=1"),
        ("GET", "/changefeed/stream"),
        ("GET", "/changefeed/stats"),
        ("POST", "/changefeed/retention"),
    ] {
        let r = s.request(m, p, Some("{}"));
        assert_eq!(r.status, 503, "{m} {p}");
        let v = r.json();
        assert_eq!(v["code"], "feature_disabled");
        assert_eq!(v["feature"], "features.cdc");
        assert!(v["message"].as_str().unwrap().contains("features.cdc"));
    }
    // Writes while the flag is off record nothing.
    s.request("PUT", "/entities/t:off", Some("{}"));
    let (st, _) = s.json("POST", "/config", Some(r#"{"features":{"cdc":true}}"#));
    assert_eq!(st, 200);
    let p = page(&s, "from_seq=0&limit=1");
    assert_eq!(
        (p["count"].as_u64(), p["latest_sequence"].as_u64()),
        (Some(0), Some(0))
    );
    s.request("PUT", "/entities/t:on", Some(r#"{"v":1}"#));
    let p = page(&s, "from_seq=0&limit=1");
    assert_eq!(p["events"][0]["key"], "t:on");
    assert_eq!(p["events"][0]["sequence"], 1);

    // An open stream is closed with a comment when the flag goes off.
    let mut sse = open_sse(&s, "from_seq=0", None);
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.next_event(Duration::from_secs(10)).unwrap().0, 1);
    let (st, _) = s.json("POST", "/config", Some(r#"{"features":{"cdc":false}}"#));
    assert_eq!(st, 200);
    let mut closed = false;
    while let Some(b) = sse.next(Duration::from_secs(10)) {
        if b.comments.iter().any(|c| c.contains("features.cdc")) {
            closed = true;
            break;
        }
    }
    assert!(closed, "stream not closed after the flag went off");
    assert_eq!(s.request("GET", "/changefeed", None).status, 503);
}

#[test]
fn events_have_the_documented_shape() {
    let dir = tempdir();
    let s = start_in(dir.path(), &cdc(1));
    s.request(
        "PUT",
        "/entities/users:alice",
        Some(r#"{"name":"Alice","age":30}"#),
    );
    s.request("POST", "/entities", Some(r#"{"key":"users:bob","age":4}"#));
    s.request("DELETE", "/entities/users:alice", None);
    // Deleting a missing entity changes nothing: no event.
    s.request("DELETE", "/entities/users:alice", None);
    let p = page(&s, "from_seq=0&limit=10");
    assert_eq!(p["count"], 3);
    assert_eq!(p["latest_sequence"], 3);
    let e = &p["events"];
    assert_eq!(e[0]["type"], "PUT");
    assert_eq!(e[0]["key"], "users:alice");
    assert_eq!(e[0]["value"], json!({"name":"Alice","age":30}));
    assert_eq!(e[0]["metadata"], json!({"table":"users","pk":"alice"}));
    assert!(e[0]["timestamp_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(e[1]["value"], json!({"age":4}));
    assert_eq!(e[2]["type"], "DELETE");
    assert_eq!(e[2]["value"], Value::Null);
    assert_eq!(seqs(e.as_array().unwrap()), vec![1, 2, 3]);
    // from_seq is exclusive; filters by table and key prefix.
    let p = page(&s, "from_seq=2");
    assert_eq!(seqs(p["events"].as_array().unwrap()), vec![3]);
    s.request("PUT", "/entities/orders:1", Some("{}"));
    let p = page(&s, "from_seq=0&table=orders");
    assert_eq!(seqs(p["events"].as_array().unwrap()), vec![4]);
    let p = page(&s, "from_seq=0&key_prefix=users%3Ab");
    assert_eq!(seqs(p["events"].as_array().unwrap()), vec![2]);
    // A filtered page tells the reader how far it looked.
    assert_eq!(p["next_from_seq"], 4);
    let stats = s.json("GET", "/changefeed/stats", None).1;
    assert_eq!(stats["first_sequence"], 1);
    assert_eq!(stats["latest_sequence"], 4);
    assert_eq!(stats["event_count"], 4);
    assert!(stats["size_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn malformed_parameters_get_400_naming_the_field() {
    let dir = tempdir();
    let s = start_in(dir.path(), &cdc(1));
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=ten", "limit"),
        ("from_seq=-1", "from_seq"),
        ("long_poll_ms=999999", "long_poll_ms"),
        ("tabel=users", "tabel"),
        ("table=", "table"),
    ] {
        let r = s.request("GET", &format!("/changefeed?{q}"), None);
        assert_eq!(r.status, 400, "{q}");
        assert!(r.json()["message"].as_str().unwrap().contains(field), "{q}");
    }
    let mut sse = open_sse(&s, "heartbeat_ms=5", None);
    assert_eq!(sse.status(), 400);
    let mut sse = open_sse(&s, "", None);
    assert_eq!(sse.status(), 200);
    let r = {
        let mut c = s.client();
        c.send_raw(b"GET /changefeed/stream HTTP/1.1\r\nHost: t\r\nLast-Event-ID: abc\r\n\r\n");
        c.read_response(false)
    };
    assert_eq!(r.status, 400);
    for body in [
        "{}",
        r#"{"before_sequence":1,"max_age_hours":1}"#,
        r#"{"before_sequence":0}"#,
        r#"{"max_age_hours":-1}"#,
        r#"{"max_age_hours":"1"}"#,
        r#"{"keep":1}"#,
        "[1]",
        "nope",
    ] {
        let r = s.request("POST", "/changefeed/retention", Some(body));
        assert_eq!(r.status, 400, "{body}");
    }
    assert_eq!(s.request("DELETE", "/changefeed", None).status, 405);
}

#[test]
fn long_poll_returns_on_the_first_event_or_at_the_deadline() {
    let dir = tempdir();
    let s = Arc::new(start_in(dir.path(), &cdc(2)));
    // Nothing happens: the request waits, then answers empty.
    let t = Instant::now();
    let p = page(&s, "from_seq=0&long_poll_ms=800");
    assert_eq!(p["count"], 0);
    assert!(
        t.elapsed() >= Duration::from_millis(750),
        "{:?}",
        t.elapsed()
    );

    // A write on either core ends the wait with that event.
    for key in ["a:1", "b:2", "c:3", "d:4"] {
        let latest = page(&s, "from_seq=0")["latest_sequence"].as_u64().unwrap();
        let writer = {
            let s = s.clone();
            let key = key.to_string();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                s.request("PUT", &format!("/entities/{key}"), Some("{}"));
            })
        };
        let t = Instant::now();
        let p = page(&s, &format!("from_seq={latest}&long_poll_ms=20000"));
        let waited = t.elapsed();
        writer.join().unwrap();
        assert_eq!(p["count"], 1);
        assert_eq!(p["events"][0]["key"], key);
        assert!(
            waited < Duration::from_secs(10),
            "long poll took {waited:?}"
        );
    }
}

/// Writers on every core; a long-poll reader and an SSE reader run all
/// along and must each see sequences 1..=N exactly once, in order.
#[test]
fn concurrent_writers_on_all_cores_readers_miss_nothing() {
    let dir = tempdir();
    let s = Arc::new(start_in(dir.path(), &cdc(3)));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (s, done) = (s.clone(), done.clone());
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut after = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let p = page(&s, &format!("from_seq={after}&limit=37&long_poll_ms=200"));
                let events = p["events"].as_array().unwrap();
                got.extend(seqs(events));
                after = p["next_from_seq"].as_u64().unwrap();
                if finished && events.is_empty() {
                    return got;
                }
            }
        })
    };
    let mut sse = open_sse(&s, "from_seq=0&heartbeat_ms=100", None);
    assert_eq!(sse.status(), 200);

    const WRITERS: usize = 6;
    const OPS: usize = 150;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut c = s.client();
                let mut changes = 0u64;
                for i in 0..OPS {
                    let key = format!("k{}:{}", w, i % 40);
                    if i % 7 == 6 {
                        let r = c.request("DELETE", &format!("/entities/{key}"), None);
                        if r.json()["deleted"] == true {
                            changes += 1;
                        }
                    } else {
                        let body = format!(r#"{{"w":{w},"i":{i}}}"#);
                        let r = c.request("PUT", &format!("/entities/{key}"), Some(&body));
                        assert!(r.status == 200 || r.status == 201);
                        changes += 1;
                    }
                }
                changes
            })
        })
        .collect();
    let total: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    done.store(true, Ordering::SeqCst);
    let polled = poller.join().unwrap();
    let expected: Vec<u64> = (1..=total).collect();
    assert_eq!(
        polled, expected,
        "long-poll reader missed or repeated events"
    );

    let mut streamed = Vec::new();
    let mut last_value: HashMap<String, Value> = HashMap::new();
    while (streamed.len() as u64) < total {
        let (id, ev) = sse
            .next_event(Duration::from_secs(20))
            .expect("SSE stream stalled");
        assert_eq!(ev["sequence"], id);
        streamed.push(id);
        last_value.insert(ev["key"].as_str().unwrap().into(), ev["value"].clone());
    }
    assert_eq!(streamed, expected, "SSE reader missed or repeated events");
    // Replaying the feed gives the data.
    for (key, v) in last_value {
        let r = s.request("GET", &format!("/entities/{key}"), None);
        if v.is_null() {
            assert_eq!(r.status, 404, "{key}");
        } else {
            assert_eq!(r.json()["entity"], v, "{key}");
        }
    }
    let m = String::from_utf8(s.request("GET", "/metrics", None).body).unwrap();
    assert!(
        m.contains(&format!("themis_changefeed_latest_sequence {total}")),
        "{m}"
    );
    assert!(m.contains("vccdb_sse_active_connections 1"));
}

#[test]
fn stream_sends_retry_heartbeats_and_resumes_from_last_event_id() {
    let dir = tempdir();
    let s = start_in(dir.path(), &cdc(2));
    let mut sse = open_sse(&s, "heartbeat_ms=150", None);
    assert_eq!(sse.status(), 200);
    let head = sse.head.clone().unwrap();
    assert!(head.contains("Content-Type: text/event-stream"));
    assert!(head.contains("Cache-Control: no-cache"));
    let first = sse.next(Duration::from_secs(5)).unwrap();
    assert!(first.retry.is_some(), "{first:?}");
    s.request("PUT", "/entities/x:1", Some(r#"{"n":1}"#));
    let (id, ev) = sse.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!((id, ev["key"].as_str()), (1, Some("x:1")));
    // Idle: heartbeats.
    let mut beats = 0;
    while beats < 2 {
        let b = sse.next(Duration::from_secs(5)).expect("heartbeat");
        if b.comments.iter().any(|c| c == "heartbeat") {
            beats += 1;
        }
    }
    drop(sse);
    // Changes while disconnected, then resume after id 1.
    s.request("PUT", "/entities/x:2", Some(r#"{"n":2}"#));
    s.request("DELETE", "/entities/x:1", None);
    let mut sse = open_sse(&s, "", Some(1));
    assert_eq!(sse.status(), 200);
    let got: Vec<u64> = (0..2)
        .map(|_| sse.next_event(Duration::from_secs(5)).unwrap().0)
        .collect();
    assert_eq!(got, vec![2, 3]);
    // Lines of a document stored with line breaks arrive as one event.
    s.request("PUT", "/entities/x:3", Some("{\n  \"multi\": \"line\"\n}"));
    let (_, ev) = sse.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(ev["value"], json!({"multi":"line"}));
    let m = String::from_utf8(s.request("GET", "/metrics", None).body).unwrap();
    assert!(!m.contains("vccdb_sse_heartbeats_total 0\n"), "{m}");
    assert!(!m.contains("vccdb_sse_events_sent_total 0\n"));
    // A graceful stop ends the stream with a comment.
    let status = s.stop();
    assert!(status.success());
    let mut said_bye = false;
    while let Some(b) = sse.next(Duration::from_secs(5)) {
        said_bye |= b.comments.iter().any(|c| c.contains("shutting down"));
    }
    assert!(said_bye);
}

#[test]
fn crash_after_acknowledged_writes_leaves_feed_and_data_equal() {
    let dir = tempdir();
    let s = start_in(dir.path(), &cdc(2));
    let mut c = s.client();
    let mut acknowledged = 0;
    for i in 0..300 {
        let key = format!("c:{}", i % 50);
        let r = if i % 5 == 4 {
            c.request("DELETE", &format!("/entities/{key}"), None)
        } else {
            c.request(
                "PUT",
                &format!("/entities/{key}"),
                Some(&format!(r#"{{"i":{i}}}"#)),
            )
        };
        assert!(r.status < 300);
        if r.json().get("deleted").is_none_or(|d| d == true) {
            acknowledged += 1;
        }
    }
    s.kill9();
    let s = start_in(dir.path(), &cdc(2));
    let events = all_events(&s, 0);
    assert_eq!(events.len(), acknowledged);
    assert_eq!(seqs(&events), (1..=acknowledged as u64).collect::<Vec<_>>());
    let mut state: BTreeMap<String, Value> = BTreeMap::new();
    for e in &events {
        state.insert(e["key"].as_str().unwrap().into(), e["value"].clone());
    }
    for i in 0..50 {
        let key = format!("c:{i}");
        let r = s.request("GET", &format!("/entities/{key}"), None);
        match state.get(&key) {
            Some(v) if !v.is_null() => assert_eq!(&r.json()["entity"], v, "{key}"),
            _ => assert_eq!(r.status, 404, "{key}"),
        }
    }
    // After a crash the sequence resumes above the reserved mark, never
    // reusing a number a reader may have seen; the skipped numbers are
    // counted as gaps.
    s.request("PUT", "/entities/c:new", Some("{}"));
    let latest = page(&s, "from_seq=0&limit=1")["latest_sequence"]
        .as_u64()
        .unwrap_or(0);
    assert!(latest > acknowledged as u64, "{latest}");
    let after = all_events(&s, acknowledged as u64);
    assert_eq!(seqs(&after), vec![latest]);
    let stats = s.json("GET", "/changefeed/stats", None).1;
    assert_eq!(
        stats["sequence_gaps"].as_u64(),
        Some(latest - 1 - acknowledged as u64)
    );
}

#[test]
fn retention_on_demand_410_and_no_reuse_after_restart() {
    let dir = tempdir();
    let s = start_in(dir.path(), &cdc(1));
    for i in 0..10 {
        s.request("PUT", &format!("/entities/r:{i}"), Some("{}"));
    }
    let (st, v) = s.json(
        "POST",
        "/changefeed/retention",
        Some(r#"{"before_sequence":6}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["deleted"].as_u64(), v["first_sequence"].as_u64()),
        (Some(5), Some(6))
    );
    // Asking for pruned history: 410 with the oldest sequence.
    let r = s.request("GET", "/changefeed?from_seq=2", None);
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["oldest_available_sequence"], 6);
    let mut sse = open_sse(&s, "from_seq=1", None);
    assert_eq!(sse.status(), 410);
    // from_seq=0 means "from the oldest available"; 5 is the edge.
    assert_eq!(seqs(&all_events(&s, 0)), (6..=10).collect::<Vec<_>>());
    assert_eq!(seqs(&all_events(&s, 5)), (6..=10).collect::<Vec<_>>());
    let stats = s.json("GET", "/changefeed/stats", None).1;
    assert_eq!(
        (
            stats["first_sequence"].as_u64(),
            stats["event_count"].as_u64()
        ),
        (Some(6), Some(5))
    );
    // Everything older than a minute: nothing (all are new).
    let (_, v) = s.json(
        "POST",
        "/changefeed/retention",
        Some(r#"{"max_age_hours":0.02}"#),
    );
    assert_eq!(v["deleted"], 0);
    // Prune everything, restart: sequences are not reused.
    let (_, v) = s.json(
        "POST",
        "/changefeed/retention",
        Some(r#"{"before_sequence":1000}"#),
    );
    assert_eq!(
        (v["deleted"].as_u64(), v["first_sequence"].as_u64()),
        (Some(5), Some(11))
    );
    assert!(s.stop().success());
    let s = start_in(dir.path(), &cdc(1));
    s.request("PUT", "/entities/r:after", Some("{}"));
    let events = all_events(&s, 0);
    assert_eq!(seqs(&events), vec![11]);
}

#[test]
fn background_retention_follows_the_hot_reloaded_setting() {
    let dir = tempdir();
    // Events stamped two hours in the past; a retention pass every 100 ms.
    let opts = cdc(2).env(
        "THEMIS_TEST_FAULTS",
        "event_time_offset_ms=-7200000,retention_interval_ms=100",
    );
    let s = start_in(dir.path(), &opts);
    for i in 0..20 {
        s.request("PUT", &format!("/entities/bg:{i}"), Some("{}"));
    }
    // Default retention (168 h) keeps them.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(page(&s, "from_seq=0&limit=100")["count"], 20);
    let (st, _) = s.json("POST", "/config", Some(r#"{"cdc_retention_hours":1}"#));
    assert_eq!(st, 200);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = s.json("GET", "/changefeed/stats", None).1;
        if stats["event_count"] == 0 {
            assert_eq!(stats["first_sequence"], 21);
            break;
        }
        assert!(Instant::now() < end, "not pruned: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.request("GET", "/changefeed?from_seq=3", None).status, 410);
}

/// A subscriber that stops reading is cut off; writers never wait for it.
#[test]
fn stalled_subscriber_is_disconnected_without_slowing_writers() {
    let dir = tempdir();
    let opts = cdc(1).env("THEMIS_SERVER_REQUEST_TIMEOUT_MS", "1000");
    let s = start_in(dir.path(), &opts);
    let mut stalled = open_sse(&s, "from_seq=0", None);
    assert_eq!(stalled.status(), 200);
    // Never read from `stalled` again. Shrink its receive window.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200_000));
    let mut live = open_sse(&s, "", None);
    assert_eq!(live.status(), 200);
    let mut c = s.client();
    let t = Instant::now();
    for i in 0..150 {
        let r = c.request("PUT", &format!("/entities/big:{}", i % 10), Some(&big));
        assert!(r.status < 300);
        // The live subscriber keeps up.
        let (id, _) = live
            .next_event(Duration::from_secs(20))
            .expect("live stream");
        assert_eq!(id, i + 1);
    }
    assert!(t.elapsed() < Duration::from_secs(60));
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let m = String::from_utf8(s.request("GET", "/metrics", None).body).unwrap();
        let dropped = m
            .lines()
            .find_map(|l| l.strip_prefix("vccdb_sse_dropped_events_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 && m.contains("vccdb_sse_active_connections 1\n") {
            break;
        }
        assert!(Instant::now() < end, "stalled subscriber not cut off");
        // Keep the feed moving so the stalled stream attempts writes.
        c.request("PUT", "/entities/big:0", Some(&big));
        live.next_event(Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stalled);
}

#[test]
fn an_http10_stream_is_not_chunked_and_ends_with_the_connection() {
    use std::io::{Read, Write};
    let dir = tempdir();
    let s = start_in(dir.path(), &cdc(1));
    s.request("PUT", "/entities/h:1", Some(r#"{"a":1}"#));
    let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_millis(200))).ok();
    c.write_all(b"GET /changefeed/stream?from_seq=0 HTTP/1.0\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < end && !String::from_utf8_lossy(&got).contains("\"h:1\"") {
        if let Ok(n) = c.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    // Raw events: the body starts with an SSE field, not a chunk size.
    assert!(
        body.starts_with("retry:") || body.starts_with(':') || body.starts_with("id:"),
        "{body}"
    );
    assert!(body.contains("\"h:1\""), "{body}");
}
