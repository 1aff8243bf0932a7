//! Group commit against the real binary: writes gathered into groups on
//! several cores, answered only once durable (kill -9 with and without
//! `sync_writes`), per-key order, reads of pending writes inside the
//! pipeline, the change feed's no-miss watermark, unique indexes under
//! racing writers, and a failing commit.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// A metric's value in `/metrics` text (first sample of that name).
fn metric(s: &Server, name: &str) -> f64 {
    let body = s.request("GET", "/metrics", None).body;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Every change event after 0, following `next_from_seq`.
fn all_events(s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (st, p) = s.json(
            "GET",
            &format!("/changefeed?from_seq={after}&limit=500"),
            None,
        );
        assert_eq!(st, 200, "{p}");
        let events = p["events"].as_array().cloned().unwrap_or_default();
        let next = p["next_from_seq"].as_u64().unwrap_or(after);
        if events.is_empty() && next >= p["latest_sequence"].as_u64().unwrap_or(0) {
            return out;
        }
        out.extend(events);
        after = next;
    }
}

/// 8 writers over 2 cores, each rewriting its own 6 keys with increasing
/// versions (and deleting one), while a reader follows the change feed.
/// Then kill -9 and restart: every acknowledged write is there with its
/// last acknowledged version, the feed holds every acknowledged write in
/// per-key order with increasing sequences, and the follower missed no
/// event that is now visible. Run with `sync_writes` off and on, and with
/// group commit off (the old path).
#[test]
fn acknowledged_writes_survive_kill_9_in_order_with_a_gapless_feed() {
    for (sync, grouped) in [(false, true), (true, true), (false, false)] {
        let dir = tempdir();
        let opts = |fault: bool| {
            let o = Opts::threads(2)
                .env("THEMIS_FEATURES_CDC", "true")
                .env("THEMIS_STORAGE_SYNC_WRITES", &sync.to_string())
                .env("THEMIS_STORAGE_GROUP_COMMIT", &grouped.to_string());
            // A slow commit: concurrent writes gather into groups.
            if fault {
                o.env("THEMIS_TEST_FAULTS", "group_commit_delay_ms=2")
            } else {
                o
            }
        };
        let s = Arc::new(start_in(dir.path(), &opts(true)));
        const WRITERS: usize = 8;
        const KEYS: usize = 6;
        const ROUNDS: usize = 8;
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = s.client();
                let (mut seen, mut after) = (BTreeSet::new(), 0u64);
                loop {
                    let done = stop.load(Ordering::Acquire);
                    let (st, p) = c.json(
                        "GET",
                        &format!("/changefeed?from_seq={after}&limit=500"),
                        None,
                    );
                    assert_eq!(st, 200, "{p}");
                    for e in p["events"].as_array().cloned().unwrap_or_default() {
                        seen.insert(e["sequence"].as_u64().unwrap_or(0));
                    }
                    after = p["next_from_seq"].as_u64().unwrap_or(after);
                    if done {
                        return seen;
                    }
                }
            })
        };
        let barrier = Arc::new(Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut c = s.client();
                    barrier.wait();
                    let mut last = BTreeMap::new();
                    for v in 0..ROUNDS {
                        for k in 0..KEYS {
                            let key = format!("g:{w}-{k}");
                            let r = c.request(
                                "PUT",
                                &format!("/entities/{key}"),
                                Some(&json!({"w": w, "v": v}).to_string()),
                            );
                            let want = if v == 0 { 201 } else { 200 };
                            assert_eq!(r.status, want, "{key} v{v}: {:?}", r.json());
                            last.insert(key, Some(v));
                        }
                    }
                    let gone = format!("g:{w}-0");
                    let r = c.request("DELETE", &format!("/entities/{gone}"), None);
                    assert_eq!(r.json()["deleted"], true);
                    last.insert(gone, None);
                    last
                })
            })
            .collect();
        let mut acked = BTreeMap::new();
        for w in writers {
            acked.extend(w.join().unwrap());
        }
        stop.store(true, Ordering::Release);
        let followed = follower.join().unwrap();
        if grouped {
            let groups = metric(&s, "themis_group_commit_writes_count");
            let writes = metric(&s, "themis_group_commit_writes_sum");
            assert_eq!(writes as usize, WRITERS * (KEYS * ROUNDS + 1));
            assert!(groups < writes, "no group held two writes: {groups} groups");
        }
        let s = Arc::try_unwrap(s).unwrap_or_else(|_| panic!("server still shared"));
        s.kill9();

        let s = start_in(dir.path(), &opts(false));
        let mut c = s.client();
        for (key, v) in &acked {
            let r = c.request("GET", &format!("/entities/{key}"), None);
            match v {
                Some(v) => {
                    assert_eq!(r.status, 200, "sync={sync}: acknowledged {key} lost");
                    assert_eq!(r.json()["entity"]["v"], *v, "sync={sync}: {key}");
                }
                None => assert_eq!(r.status, 404, "sync={sync}: deleted {key} is back"),
            }
        }
        let events = all_events(&s);
        assert_eq!(events.len(), WRITERS * (KEYS * ROUNDS + 1), "sync={sync}");
        let mut prev = 0;
        let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for e in &events {
            let seq = e["sequence"].as_u64().unwrap_or(0);
            assert!(seq > prev, "sequences out of order: {prev} then {seq}");
            prev = seq;
            assert!(
                followed.contains(&seq) || seq > followed.last().copied().unwrap_or(0),
                "the follower skipped event {seq}"
            );
            let key = e["key"].as_str().unwrap_or_default().to_string();
            versions
                .entry(key)
                .or_default()
                .push(e["value"]["v"].as_i64().unwrap_or(-1));
        }
        for (key, vs) in versions {
            let puts: Vec<i64> = vs.iter().copied().filter(|v| *v >= 0).collect();
            let want: Vec<i64> = (0..ROUNDS as i64).collect();
            assert_eq!(puts, want, "{key}: feed order");
        }
    }
}

/// Two PUTs of one key while the first is still being committed: the
/// second sees the first (it answers "replaced"), wins, and leaves exactly
/// the index entry of its own value; a DELETE behind a pending PUT deletes.
#[test]
fn a_write_behind_a_pending_write_of_its_key_sees_it() {
    let dir = tempdir();
    let s = Arc::new(start_in(
        dir.path(),
        &Opts::threads(1).env("THEMIS_TEST_FAULTS", "group_commit_delay_ms=150"),
    ));
    let (st, _) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"p","column":"u"}"#),
    );
    assert_eq!(st, 202);
    wait_ready(&s);
    let put = |u: i64| {
        let s = s.clone();
        std::thread::spawn(move || {
            s.request("PUT", "/entities/p:1", Some(&json!({ "u": u }).to_string()))
                .status
        })
    };
    let a = put(1);
    std::thread::sleep(Duration::from_millis(40));
    let b = put(2);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    // Whichever arrived first created the key; the other replaced it.
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(statuses, [200, 201]);
    let winner = if a == 200 { 1 } else { 2 };
    let (_, v) = s.json("GET", "/entities/p:1", None);
    assert_eq!(v["entity"]["u"], winner);
    for (u, n) in [(1, (winner == 1) as u64), (2, (winner == 2) as u64)] {
        let q =
            json!({"table": "p", "predicates": [{"column": "u", "value": u}], "return": "count"});
        let (_, r) = s.json("POST", "/query", Some(&q.to_string()));
        assert_eq!(r["count"], n, "u={u}: {r}");
    }
    // A PUT, then a DELETE of the same key while the PUT is pending.
    let p = {
        let s = s.clone();
        std::thread::spawn(move || s.request("PUT", "/entities/p:2", Some(r#"{"u":3}"#)).status)
    };
    std::thread::sleep(Duration::from_millis(40));
    let (_, d) = s.json("DELETE", "/entities/p:2", None);
    let p = p.join().unwrap();
    assert_eq!(p, 201);
    assert_eq!(d["deleted"], true, "the DELETE did not see the pending PUT");
    assert_eq!(s.request("GET", "/entities/p:2", None).status, 404);
    let q = json!({"table": "p", "predicates": [{"column": "u", "value": 3}], "return": "count"});
    assert_eq!(s.json("POST", "/query", Some(&q.to_string())).1["count"], 0);
}

/// Writers on both cores race for a few unique values while commits are
/// slow (claims and pending writes overlap): each value ends with exactly
/// one holder, the one that was answered 2xx.
#[test]
fn unique_values_hold_under_racing_writers_with_pending_groups() {
    let dir = tempdir();
    let s = Arc::new(start_in(
        dir.path(),
        &Opts::threads(2).env("THEMIS_TEST_FAULTS", "group_commit_delay_ms=5"),
    ));
    let (st, _) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"acct","column":"email","unique":true}"#),
    );
    assert_eq!(st, 202);
    wait_ready(&s);
    const WRITERS: usize = 6;
    const EMAILS: usize = 5;
    let barrier = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = s.client();
                barrier.wait();
                let mut won = Vec::new();
                for e in 0..EMAILS {
                    let key = format!("acct:{w}-{e}");
                    let r = c.request(
                        "PUT",
                        &format!("/entities/{key}"),
                        Some(&json!({ "email": format!("e{e}@x") }).to_string()),
                    );
                    match r.status {
                        201 => won.push((e, key)),
                        409 => {}
                        other => panic!("{key}: {other}"),
                    }
                }
                won
            })
        })
        .collect();
    let won: Vec<(usize, String)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    for e in 0..EMAILS {
        let holders: Vec<&String> = won
            .iter()
            .filter(|(x, _)| *x == e)
            .map(|(_, k)| k)
            .collect();
        assert_eq!(holders.len(), 1, "e{e}@x answered 201 to {holders:?}");
        let q = json!({"table": "acct", "predicates": [{"column": "email", "value": format!("e{e}@x")}], "return": "keys"});
        let (_, r) = s.json("POST", "/query", Some(&q.to_string()));
        assert_eq!(r["count"], 1, "e{e}@x: {r}");
        assert_eq!(r["keys"][0].as_str(), Some(holders[0].as_str()), "{r}");
    }
}

/// A failing commit fails its writes with 500 and applies nothing: no
/// entity, no event (the sequence is a gap), and the feed's watermark is
/// not held back by it.
#[test]
fn a_failed_group_commit_answers_500_and_applies_nothing() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &Opts::threads(1)
            .env("THEMIS_FEATURES_CDC", "true")
            .env("THEMIS_TEST_FAULTS", "fail_group_commit=1"),
    );
    let r = s.request("PUT", "/entities/f:1", Some(r#"{"a":1}"#));
    assert_eq!(r.status, 500, "{:?}", r.json());
    assert!(
        r.json()["message"].to_string().contains("commit failed"),
        "{:?}",
        r.json()
    );
    assert_eq!(s.request("GET", "/entities/f:1", None).status, 404);
    let (_, stats) = s.json("GET", "/changefeed/stats", None);
    assert_eq!(stats["sequence_gaps"], 1, "{stats}");
    let (_, p) = s.json("GET", "/changefeed?from_seq=0&limit=10", None);
    assert_eq!(p["events"].as_array().map(Vec::len), Some(0), "{p}");
    assert!(
        p["next_from_seq"].as_u64().unwrap_or(0) >= 1,
        "watermark held back: {p}"
    );
}

/// Where groups commit follows `storage.group_commit_on_core`: on the core
/// without `sync_writes` when it is on; always on the helper thread when it
/// is off or writes are synced (an fsync must never run on the core).
#[test]
fn groups_commit_on_the_core_only_when_configured_and_unsynced() {
    for (on_core, sync, expect_on_core) in [
        (true, false, true),
        (false, false, false),
        (true, true, false),
    ] {
        let dir = tempdir();
        let s = start_in(
            dir.path(),
            &Opts::threads(1)
                .env("THEMIS_STORAGE_GROUP_COMMIT_ON_CORE", &on_core.to_string())
                .env("THEMIS_STORAGE_SYNC_WRITES", &sync.to_string()),
        );
        for i in 0..20 {
            let r = s.request("PUT", &format!("/entities/g:{i}"), Some(r#"{"v":1}"#));
            assert_eq!(r.status, 201);
        }
        let all = metric(&s, "themis_group_commit_writes_count");
        let here = metric(&s, "themis_group_commits_on_core_total");
        assert!(all >= 1.0, "no group committed");
        let want = if expect_on_core { all } else { 0.0 };
        assert_eq!(
            here, want,
            "on_core={on_core} sync={sync}: {here} of {all} on the core"
        );
        assert_eq!(s.request("GET", "/entities/g:19", None).status, 200);
    }
}
