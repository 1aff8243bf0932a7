//! The HTTP API end to end, against the real binary.

use crate::common::*;
use serde_json::json;

#[test]
fn crud_round_trip() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));

    let (st, v) = s.json(
        "PUT",
        "/entities/users:alice",
        Some(r#"{"name":"Alice","age":30}"#),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v, json!({"key": "users:alice", "created": true}));
    let (st, v) = s.json(
        "PUT",
        "/entities/users:alice",
        Some(r#"{"name":"Alice","age":31}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["created"], false);

    let (st, v) = s.json("GET", "/entities/users:alice", None);
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"key": "users:alice", "entity": {"name": "Alice", "age": 31}})
    );

    // POST with the key in the document, and the legacy blob form.
    let (st, v) = s.json("POST", "/entities", Some(r#"{"key":"users:bob","age":7}"#));
    assert_eq!(st, 201, "{v}");
    let (_, v) = s.json("GET", "/entities/users:bob", None);
    assert_eq!(v["entity"], json!({"age": 7}));
    let (st, _) = s.json(
        "PUT",
        "/entities/users:carol",
        Some(r#"{"blob":"{\"x\":[1,2]}"}"#),
    );
    assert_eq!(st, 201);
    let (_, v) = s.json("GET", "/entities/users:carol", None);
    assert_eq!(v["entity"], json!({"x": [1, 2]}));

    // Percent-encoded keys and query strings do not break routing.
    let (st, v) = s.json("GET", "/entities/users%3Aalice?fields=all", None);
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.json("GET", "/health?probe=1", None);
    assert_eq!(st, 200);
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["shards"], 2);

    let (st, v) = s.json("DELETE", "/entities/users:alice", None);
    assert_eq!(
        (st, v),
        (200, json!({"deleted": true, "key": "users:alice"}))
    );
    let (st, v) = s.json("DELETE", "/entities/users:alice", None);
    assert_eq!(
        (st, v),
        (200, json!({"deleted": false, "key": "users:alice"}))
    );
    let (st, v) = s.json("GET", "/entities/users:alice", None);
    assert_eq!(st, 404);
    assert_eq!(v["code"], "not_found");

    // HEAD has headers, no body.
    let mut c = s.client();
    let r = c.request("HEAD", "/entities/users:bob", None);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // The connection is still usable after HEAD.
    assert_eq!(c.request("GET", "/health", None).status, 200);
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error"], true);
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status_code"], status);
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[test]
fn each_error_status() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    let mut c = s.client();
    assert_error(
        &c.request("PUT", "/entities/users:x", Some("{not json")),
        400,
        "invalid_json",
    );
    assert_error(
        &c.request("PUT", "/entities/users:x", Some("")),
        400,
        "invalid_json",
    );
    assert_error(
        &c.request("PUT", "/entities/users:x", Some("[1,2]")),
        422,
        "unprocessable_entity",
    );
    assert_error(
        &c.request("POST", "/entities", Some(r#"{"a":1}"#)),
        422,
        "unprocessable_entity",
    );
    assert_error(
        &c.request("PUT", "/entities/nocolon", Some("{}")),
        400,
        "invalid_key",
    );
    assert_error(
        &c.request("GET", "/entities/users:", None),
        400,
        "invalid_key",
    );
    assert_error(&c.request("GET", "/entities/:pk", None), 400, "invalid_key");
    assert_error(
        &c.request("GET", "/entities/users:%01x", None),
        400,
        "invalid_key",
    );
    assert_error(
        &c.request("GET", "/entities/users:%FF", None),
        400,
        "invalid_key",
    );
    let long = format!("/entities/t:{}", "k".repeat(2000));
    assert_error(&c.request("GET", &long, None), 400, "invalid_key");
    assert_error(
        &c.request("GET", "/entities/users:ghost", None),
        404,
        "not_found",
    );
    assert_error(&c.request("GET", "/nope", None), 404, "route_not_found");
    let r = c.request("POST", "/entities/users:x", Some("{}"));
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("Allow"), Some("GET, HEAD, PUT, DELETE"));
    let r = c.request("DELETE", "/health", None);
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    let r = c.request("GET", "/entities", None);
    assert_eq!(r.header("Allow"), Some("POST"));
    // After all those errors the connection still works.
    assert_eq!(c.request("GET", "/health", None).status, 200);

    // A malformed request line gets a JSON 400 and the connection closes.
    let mut c = s.client();
    c.send_raw(b"GARBAGE\r\n\r\n");
    assert_error(&c.read_response(false), 400, "bad_request");
    assert!(c.try_read_response(false).is_none());

    // Errors are counted.
    let (_, v) = s.json("GET", "/stats", None);
    assert!(v["server"]["errors_total"].as_u64().unwrap() >= 16, "{v}");
}

#[test]
fn oversized_body_is_answered_413() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(1).env("THEMIS_SERVER_MAX_REQUEST_SIZE_MB", "1"),
    );
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(1_100_000));
    let r = s.request("PUT", "/entities/t:big", Some(&big));
    assert_error(&r, 413, "payload_too_large");
    // With Expect: 100-continue the server refuses before the body is sent.
    let mut c = s.client();
    c.send_raw(b"PUT /entities/t:big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n");
    assert_error(&c.read_response(false), 413, "payload_too_large");
    // Just under the limit is fine.
    let ok = format!("{{\"a\":\"{}\"}}", "x".repeat(1_000_000));
    assert_eq!(s.request("PUT", "/entities/t:ok", Some(&ok)).status, 201);
    // Headers too large.
    let mut c = s.client();
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "h".repeat(100_000)
    );
    c.send_raw(huge.as_bytes());
    assert_error(&c.read_response(false), 431, "headers_too_large");
}

#[test]
fn expect_continue_and_chunked_bodies() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    let mut c = s.client();
    c.send_raw(b"PUT /entities/t:c HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n");
    assert_eq!(c.read_response(false).status, 100);
    c.send_raw(b"{\"a\":1}");
    assert_eq!(c.read_response(false).status, 201);

    c.send_raw(b"PUT /entities/t:ch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n5\r\n\":[1]\r\n1\r\n}\r\n0\r\n\r\n");
    assert_eq!(c.read_response(false).status, 201);
    let r = c.request("GET", "/entities/t:ch", None);
    assert_eq!(r.json()["entity"], json!({"a": [1]}));

    // Content-Length and Transfer-Encoding together are refused.
    let mut c = s.client();
    c.send_raw(b"PUT /entities/t:x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n");
    assert_error(&c.read_response(false), 400, "bad_request");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    let mut c = s.client();
    let mut batch = Vec::new();
    for i in 0..20 {
        let body = format!("{{\"i\":{i}}}");
        batch.extend_from_slice(
            format!(
                "PUT /entities/p:{i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    for i in 0..20 {
        batch.extend_from_slice(
            format!("GET /entities/p:{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
    }
    c.send_raw(&batch);
    for _ in 0..20 {
        assert_eq!(c.read_response(false).status, 201);
    }
    for i in 0..20 {
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["entity"]["i"], i);
    }
}

/// A forwarded GET is written by the owner into the asking connection's
/// own output buffer (lent there and back), or, when earlier pipelined
/// answers wait in it, into a spare that is copied back: either way the
/// answer is the local one's, byte for byte where it matters.
#[test]
fn forwarded_reads_answer_exactly_like_local_ones() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    // One key per core: on any connection one is local, one forwarded.
    let keys = crate::common::key_per_core("fw");
    let mut c = s.client();
    for k in &keys {
        let r = c.request("PUT", &format!("/entities/{k}"), Some(r#"{"v":"x"}"#));
        assert_eq!(r.status, 201);
    }
    // One request at a time: the connection's buffer is empty, and lent.
    for k in &keys {
        let r = c.request("GET", &format!("/entities/{k}"), None);
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"key": k, "entity": {"v": "x"}}));
        let h = c.request("HEAD", &format!("/entities/{k}"), None);
        assert_eq!(h.status, 200);
        assert!(h.body.is_empty());
        assert_eq!(h.header("Content-Length"), r.header("Content-Length"));
        let missing = c.request("GET", &format!("/entities/{k}x"), None);
        assert_error(&missing, 404, "not_found");
    }
    // Pipelined: earlier answers wait in the buffer while one is forwarded.
    let mut batch = Vec::new();
    for _ in 0..3 {
        for k in &keys {
            batch.extend_from_slice(
                format!("GET /entities/{k} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            batch.extend_from_slice(
                format!("HEAD /entities/{k} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
        }
    }
    c.send_raw(&batch);
    for _ in 0..3 {
        for k in &keys {
            let r = c.read_response(false);
            assert_eq!(r.status, 200);
            assert_eq!(r.json(), json!({"key": k, "entity": {"v": "x"}}));
            let h = c.read_response(true);
            assert_eq!(h.status, 200);
            assert!(h.body.is_empty());
        }
    }
    assert_eq!(c.request("GET", "/health", None).status, 200);
    let (_, v) = s.json("GET", "/api/stats", None);
    assert!(
        v["server"]["forwarded_total"].as_u64().unwrap_or(0) >= 9,
        "{v}"
    );
}

#[test]
fn two_shards_both_serve_and_forward() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    let mut clients: Vec<Client> = (0..8).map(|_| s.client()).collect();
    for i in 0..64 {
        let c = &mut clients[i % 8];
        assert_eq!(
            c.request("PUT", &format!("/entities/k:{i}"), Some("{\"v\":1}"))
                .status,
            201
        );
    }
    for i in 0..64 {
        let c = &mut clients[i % 8];
        assert_eq!(
            c.request("GET", &format!("/entities/k:{i}"), None).status,
            200
        );
    }
    let (_, v) = s.json("GET", "/api/stats", None);
    let shards = v["server"]["per_shard"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for sh in shards {
        // Keys are spread over both owners by hash.
        assert!(sh["entity_ops"].as_u64().unwrap() > 0, "{v}");
    }
    assert!(v["server"]["forwarded_total"].as_u64().unwrap() > 0, "{v}");
    assert!(v["server"]["requests_total"].as_u64().unwrap() >= 128);
    let rocks = &v["storage"]["rocksdb"];
    for field in [
        "estimate_num_keys",
        "block_cache_usage_bytes",
        "block_cache_capacity_bytes",
        "memtable_size_bytes",
        "cur_size_all_mem_tables_bytes",
        "estimate_pending_compaction_bytes",
        "num_running_compactions",
    ] {
        assert!(rocks[field].is_u64(), "missing {field}: {v}");
    }
    assert_eq!(rocks["files_per_level"].as_array().unwrap().len(), 7);
    assert!(rocks["estimate_num_keys"].as_u64().unwrap() > 0);
}

#[test]
fn forward_past_the_timeout_gets_503() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(2)
            .env("THEMIS_SERVER_REQUEST_TIMEOUT_MS", "1000")
            .env("THEMIS_TEST_FAULTS", "forward_delay_ms=3000"),
    );
    // One key owned by each shard: whichever core this connection landed on,
    // exactly one of the two requests must cross to the other core.
    let keys = crate::common::key_per_core("t");
    let mut c = s.client();
    let mut statuses = Vec::new();
    for k in &keys {
        let r = c.request("GET", &format!("/entities/{k}"), None);
        if r.status == 503 {
            assert_eq!(r.json()["code"], "request_timeout");
        }
        statuses.push(r.status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![404, 503]);
}

/// Deterministic pseudo-random bytes (xorshift64*), so the test needs no
/// extra crate and replays exactly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mangled_requests_never_take_a_core_down() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    let seeds: [&[u8]; 6] = [
        b"GET /entities/users:alice HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT /entities/t:k HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{\"a\":[1]}",
        b"POST /entities HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n{\"key\":\"t:z\",\"v\":1}",
        b"PUT /entities/t:c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n",
        b"POST /config HTTP/1.1\r\nHost: t\r\nContent-Length: 24\r\n\r\n{\"request_timeout_ms\":5}",
        b"DELETE /entities/t:%41%3A HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    let mut rng = Rng(0x7e57_1234_5678_9abc);
    for round in 0..300 {
        let mut msg = seeds[round % seeds.len()].to_vec();
        // Flip, insert, delete or duplicate a few bytes.
        for _ in 0..1 + rng.below(6) {
            let i = rng.below(msg.len().max(1));
            match rng.below(4) {
                0 => msg[i] = rng.next() as u8,
                1 => msg.insert(i, rng.next() as u8),
                2 => {
                    msg.remove(i);
                }
                _ => {
                    let end = (i + rng.below(16)).min(msg.len());
                    let copy = msg[i..end].to_vec();
                    msg.splice(i..i, copy);
                }
            }
            if msg.is_empty() {
                msg.push(b'G');
            }
        }
        let mut c = s.client();
        c.stream
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        c.send_raw(&msg);
        // Whatever it answers (or waits for more input), it must not die.
        let _ = std::io::Read::read(&mut c.stream, &mut [0u8; 4096]);
    }
    // Every core still serves: keys owned by both shards answer.
    for i in 0..20 {
        let (st, _) = s.json("PUT", &format!("/entities/alive:{i}"), Some("{}"));
        assert!(st == 201 || st == 200, "{st}");
    }
    let (st, v) = s.json("GET", "/health", None);
    assert_eq!((st, v["status"].as_str()), (200, Some("healthy")));
    assert!(!s.output().contains("panicked"), "{}", s.output());
}
