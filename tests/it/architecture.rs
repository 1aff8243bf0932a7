//! The shape's guarantees seen from outside: errors raised on another core
//! reach the client with their own status, and index ids are never given
//! twice, even to creates racing on several cores.

use crate::common::{key_per_core, start_in, tempdir, wait_ready, Client, Opts};
use std::collections::HashSet;
use std::sync::{Arc, Barrier};

#[test]
fn a_remote_error_keeps_its_status_and_code() {
    let dir = tempdir();
    // First run, healthy: a unique index (its build talks to every core).
    {
        let s = start_in(dir.path(), &Opts::threads(2));
        let (st, v) = s.json(
            "POST",
            "/index/create",
            Some(r#"{"table":"u","column":"email","unique":true}"#),
        );
        assert_eq!(st, 202, "{v}");
        wait_ready(&s);
        s.stop();
    }
    // Second run: every call a core serves for another answers 503.
    let s = start_in(
        dir.path(),
        &Opts::threads(2).env("THEMIS_TEST_FAULTS", "peer_unavailable=1"),
    );
    let mut c = s.client();
    // Entity reads: the local one is a 404, the remote one the 503.
    let mut statuses = Vec::new();
    for k in key_per_core("t") {
        let r = c.request("GET", &format!("/entities/{k}"), None);
        if r.status == 503 {
            assert_eq!(r.json()["code"], "unavailable", "{}", r.json());
        }
        statuses.push(r.status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![404, 503]);
    // A full scan runs a share on every core: the remote share's 503 is the
    // answer (it used to come back as a 422 wrapping the JSON as text).
    let r = c.request("POST", "/query", Some(r#"{"table":"t"}"#));
    assert_eq!(r.status, 503, "{}", r.json());
    assert_eq!(r.json()["code"], "unavailable");
    // Unique claims on a remote arbiter: 503, never a 409 (which used to
    // be what any arbiter failure became).
    let mut seen = HashSet::new();
    for i in 0..16 {
        let body = format!(r#"{{"email":"e{i}@x"}}"#);
        let r = c.request("PUT", &format!("/entities/u:{i}"), Some(&body));
        assert!(
            r.status == 201 || r.status == 503,
            "PUT u:{i}: {} {}",
            r.status,
            r.json()
        );
        if r.status == 503 {
            assert_eq!(r.json()["code"], "unavailable");
        }
        seen.insert(r.status);
    }
    assert!(seen.contains(&503), "some claim or write must cross cores");
}

#[test]
fn concurrent_index_creates_on_several_cores_get_distinct_ids() {
    const CREATES: usize = 12;
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(3));
    let barrier = Arc::new(Barrier::new(CREATES));
    let addr = s.addr;
    let handles: Vec<_> = (0..CREATES)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // A connection each: the kernel spreads them over the cores.
                let mut c = Client::connect(addr).expect("connect");
                barrier.wait();
                let body = format!(r#"{{"table":"t{i}","column":"c"}}"#);
                let r = c.request("POST", "/index/create", Some(&body));
                assert_eq!(r.status, 202, "{}", r.json());
                r.json()["index"]["id"].as_u64().unwrap_or(0)
            })
        })
        .collect();
    let ids: Vec<u64> = handles
        .into_iter()
        .map(|h| h.join().expect("create thread"))
        .collect();
    let distinct: HashSet<_> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), CREATES, "ids given twice: {ids:?}");
    assert!(!distinct.contains(&0));
    // The catalog agrees, and after a restart the next id is a new one.
    let (_, v) = s.json("GET", "/index/stats", None);
    let listed: HashSet<u64> = v["indexes"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(listed, distinct);
    s.stop();
    let s = start_in(dir.path(), &Opts::threads(3));
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"after","column":"c"}"#),
    );
    assert_eq!(st, 202, "{v}");
    let id = v["index"]["id"].as_u64().unwrap_or(0);
    assert!(!distinct.contains(&id) && id > 0, "{id} reused");
}

#[test]
fn a_write_the_client_was_told_timed_out_is_never_applied_later() {
    let dir = tempdir();
    let keys = key_per_core("late");
    {
        let s = start_in(
            dir.path(),
            &Opts::threads(2)
                .env("THEMIS_SERVER_REQUEST_TIMEOUT_MS", "1000")
                .env("THEMIS_TEST_FAULTS", "forward_delay_ms=2000"),
        );
        let mut c = s.client();
        let mut outcome = Vec::new();
        for k in &keys {
            let r = c.request("PUT", &format!("/entities/{k}"), Some(r#"{"v":1}"#));
            assert!(r.status == 201 || r.status == 503, "{}", r.status);
            outcome.push((k.clone(), r.status));
        }
        let mut statuses: Vec<u16> = outcome.iter().map(|(_, st)| *st).collect();
        statuses.sort();
        assert_eq!(statuses, vec![201, 503], "one key local, one remote");
        // The delayed call reaches the owner after the caller's deadline.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        s.stop();
        let s = start_in(dir.path(), &Opts::threads(2));
        for (k, st) in outcome {
            let got = s.request("GET", &format!("/entities/{k}"), None).status;
            let want = if st == 201 { 200 } else { 404 };
            assert_eq!(got, want, "{k} answered {st} to the PUT");
        }
    }
}
