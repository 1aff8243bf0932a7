//! Secondary indexes and `POST /query` against the real binary, checked
//! against a brute-force filter over the same data.

use crate::common::*;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::sync::atomic::{AtomicBool, Ordering as AtOrd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A deterministic xorshift generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn scalar(r: &mut Rng) -> Value {
    match r.below(9) {
        0 => Value::Null,
        1 => json!(r.below(2) == 0),
        2..=4 => json!(r.below(6) as i64 - 2),
        5 => json!((r.below(40) as f64) / 4.0 - 3.0),
        _ => json!(["", "a", "ab", "b", "ba", "z"][r.below(6) as usize]),
    }
}

fn random_doc(r: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("kind".into(), json!("data"));
    for f in ["a", "b"] {
        match r.below(8) {
            0 => {}
            1 => {
                m.insert(f.into(), json!([1, 2]));
            }
            _ => {
                m.insert(f.into(), scalar(r));
            }
        }
    }
    if r.below(4) > 0 {
        m.insert("c".into(), json!({"d": scalar(r)}));
    }
    Value::Object(m)
}

fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = doc;
    for seg in path.split('.') {
        cur = cur.as_object()?.get(seg)?;
    }
    Some(cur)
}

/// Type rank in the index order; None for absent/non-scalar.
fn rank(v: Option<&Value>) -> u8 {
    match v {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(false)) => 2,
        Some(Value::Bool(true)) => 3,
        Some(Value::Number(_)) => 4,
        Some(Value::String(_)) => 5,
        Some(_) => 0,
    }
}

fn cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().unwrap().total_cmp(&y.as_f64().unwrap())
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        _ => Ordering::Equal,
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    let n = |r: u8| if r == 3 { 2 } else { r };
    n(rank(Some(a))) == n(rank(Some(b)))
}

/// The reference: which documents match, in result order.
fn brute(data: &[(String, Value)], q: &Value) -> Vec<String> {
    let mut out: Vec<&(String, Value)> = data
        .iter()
        .filter(|(_, d)| {
            let preds = q["predicates"].as_array().cloned().unwrap_or_default();
            let ranges = q["range"].as_array().cloned().unwrap_or_default();
            preds.iter().all(|p| {
                let v = lookup(d, p["column"].as_str().unwrap());
                rank(v) != 0 && cmp(v, Some(&p["value"])) == Ordering::Equal
            }) && ranges.iter().all(|r| {
                let v = lookup(d, r["column"].as_str().unwrap());
                if rank(v) == 0 {
                    return false;
                }
                let v = v.unwrap();
                for (op, ok) in [
                    ("gt", Ordering::Greater),
                    ("gte", Ordering::Greater),
                    ("lt", Ordering::Less),
                    ("lte", Ordering::Less),
                ] {
                    if let Some(b) = r.get(op) {
                        if !same_type(v, b) {
                            return false;
                        }
                        let c = cmp(Some(v), Some(b));
                        if !(c == ok || (op.ends_with('e') && c == Ordering::Equal)) {
                            return false;
                        }
                    }
                }
                true
            })
        })
        .collect();
    let order = q.get("order_by").filter(|o| !o.is_null());
    out.sort_by(|x, y| {
        let o = match order {
            Some(o) => {
                let col = o["column"].as_str().unwrap();
                cmp(lookup(&x.1, col), lookup(&y.1, col)).then(x.0.cmp(&y.0))
            }
            None => x.0.cmp(&y.0),
        };
        if order.is_some_and(|o| o["desc"] == true) {
            o.reverse()
        } else {
            o
        }
    });
    out.into_iter().map(|(k, _)| k.clone()).collect()
}

fn random_query(r: &mut Rng) -> Value {
    let cols = ["a", "b", "c.d"];
    let mut q = json!({"table": "docs", "predicates": [{"column": "kind", "value": "data"}], "return": "keys"});
    for _ in 0..r.below(2) {
        let col = cols[r.below(3) as usize];
        q["predicates"]
            .as_array_mut()
            .unwrap()
            .push(json!({"column": col, "value": scalar(r)}));
    }
    if r.below(2) == 0 {
        let col = cols[r.below(3) as usize];
        let mut range = json!({"column": col});
        let (lo, hi) = if r.below(2) == 0 {
            (json!(r.below(5) as i64 - 2), json!(r.below(5) as i64))
        } else {
            (
                json!(["", "a", "b"][r.below(3) as usize]),
                json!(["ab", "b", "z"][r.below(3) as usize]),
            )
        };
        match r.below(3) {
            0 => range["gte"] = lo,
            1 => range["lt"] = hi,
            _ => {
                range["gt"] = lo;
                range["lte"] = hi;
            }
        }
        q["range"] = json!([range]);
    }
    if r.below(2) == 0 {
        q["order_by"] = json!({"column": cols[r.below(3) as usize], "desc": r.below(2) == 0});
    }
    q["limit"] = json!(1 + r.below(40));
    q
}

/// All pages of a query, following next_cursor.
fn all_pages(s: &Server, q: &Value) -> (Vec<String>, Value) {
    let mut keys = Vec::new();
    let mut q = q.clone();
    let mut first_plan = Value::Null;
    for page in 0.. {
        assert!(page < 1000, "too many pages");
        let r = s.request("POST", "/query", Some(&q.to_string()));
        assert_eq!(r.status, 200, "{q} -> {}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        if page == 0 {
            first_plan = v["plan"].clone();
        }
        for k in v["keys"].as_array().unwrap() {
            keys.push(k.as_str().unwrap().to_string());
        }
        match v.get("next_cursor").and_then(Value::as_str) {
            Some(c) => q["cursor"] = json!(c),
            None => break,
        }
    }
    (keys, first_plan)
}

fn load(s: &Server, n: usize, seed: u64) -> Vec<(String, Value)> {
    let mut r = Rng(seed);
    let mut c = s.client();
    (0..n)
        .map(|i| {
            let key = format!("docs:{i:04}");
            let d = random_doc(&mut r);
            let resp = c.request("PUT", &format!("/entities/{key}"), Some(&d.to_string()));
            assert!(resp.status < 300);
            (key, d)
        })
        .collect()
}

fn check_random_queries(s: &Server, data: &[(String, Value)], seed: u64, n: usize) -> Vec<String> {
    let mut r = Rng(seed);
    let mut modes = Vec::new();
    for _ in 0..n {
        let mut q = random_query(&mut r);
        q["explain"] = json!(true);
        let (got, plan) = all_pages(s, &q);
        assert_eq!(got, brute(data, &q), "query {q}");
        let count = s.json("POST", "/query", Some(&json!({"table": "docs", "predicates": q["predicates"], "range": q.get("range").cloned().unwrap_or(json!([])), "return": "count"}).to_string())).1;
        assert_eq!(
            count["count"].as_u64().unwrap() as usize,
            got.len(),
            "count of {q}"
        );
        modes.push(plan["mode"].as_str().unwrap_or("").to_string());
    }
    modes
}

/// Random documents and queries; equal to brute force without indexes,
/// with indexes, on 1 and 3 cores, while other entities of the same table
/// are written concurrently.
#[test]
fn random_queries_match_brute_force() {
    for threads in [1, 3] {
        let dir = tempdir();
        let s = Arc::new(start_in(dir.path(), &Opts::threads(threads)));
        let data = load(&s, 300, 7 + threads as u64);
        let stop = Arc::new(AtomicBool::new(false));
        let noise = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut r = Rng(99);
                let mut c = s.client();
                let mut i = 0u64;
                while !stop.load(AtOrd::SeqCst) {
                    let mut d = random_doc(&mut r);
                    d["kind"] = json!("noise");
                    let key = format!("docs:noise{}", i % 50);
                    if i % 5 == 4 {
                        c.request("DELETE", &format!("/entities/{key}"), None);
                    } else {
                        c.request("PUT", &format!("/entities/{key}"), Some(&d.to_string()));
                    }
                    i += 1;
                }
            })
        };
        let modes = check_random_queries(&s, &data, 1, 40);
        assert!(modes.iter().all(|m| m == "full_scan_fallback"));
        for spec in [
            json!({"table": "docs", "column": "a"}),
            json!({"table": "docs", "column": "b"}),
            json!({"table": "docs", "column": "c.d"}),
            json!({"table": "docs", "columns": ["a", "b"]}),
        ] {
            let (st, v) = s.json("POST", "/index/create", Some(&spec.to_string()));
            assert_eq!(st, 202, "{v}");
        }
        wait_ready(&s);
        let modes = check_random_queries(&s, &data, 1, 60);
        assert!(modes.iter().any(|m| m.starts_with("index_")), "{modes:?}");
        // Fan out every candidate set to the owners.
        let (st, _) = s.json(
            "POST",
            "/config",
            Some(r#"{"query": {"parallel_threshold": 1, "batch_size": 7}}"#),
        );
        assert_eq!(st, 200);
        let modes = check_random_queries(&s, &data, 2, 30);
        if threads > 1 {
            assert!(modes.iter().any(|m| m == "index_parallel"), "{modes:?}");
        }
        stop.store(true, AtOrd::SeqCst);
        noise.join().unwrap();
    }
}

#[test]
fn explain_shows_full_scan_then_index_and_metrics_count_them() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    let mut c = s.client();
    for i in 0..200 {
        let body = json!({"status": if i % 20 == 0 { "vip" } else { "std" }, "address": {"city": format!("c{}", i % 7)}});
        c.request(
            "PUT",
            &format!("/entities/cust:{i}"),
            Some(&body.to_string()),
        );
    }
    let q = json!({"table": "cust", "predicates": [{"column": "status", "value": "vip"}], "explain": true});
    let v = s.json("POST", "/query", Some(&q.to_string())).1;
    assert_eq!(v["plan"]["mode"], "full_scan_fallback");
    assert_eq!(v["count"], 10);
    assert_eq!(v["entities"][0]["entity"]["status"], "vip");
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"cust","column":"status"}"#),
    );
    assert_eq!((st, v["created"].as_bool()), (202, Some(true)));
    // Creating it again is idempotent.
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"cust","column":"status"}"#),
    );
    assert_eq!((st, v["created"].as_bool()), (200, Some(false)));
    wait_ready(&s);
    let v = s.json("POST", "/query", Some(&q.to_string())).1;
    assert_eq!(v["plan"]["mode"], "index_optimized");
    assert_eq!(v["plan"]["index"]["columns"], json!(["status"]));
    assert_eq!(v["plan"]["estimated_candidates"], 10);
    assert_eq!(v["plan"]["actual_candidates"], 10);
    assert_eq!(v["count"], 10);
    // The more selective of two indexes wins.
    s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"cust","column":"address.city"}"#),
    );
    wait_ready(&s);
    let q2 = json!({"table": "cust", "predicates": [{"column": "status", "value": "std"}, {"column": "address.city", "value": "c3"}], "explain": true, "return": "count"});
    let v = s.json("POST", "/query", Some(&q2.to_string())).1;
    assert_eq!(v["plan"]["index"]["columns"], json!(["address.city"]));
    let stats = s
        .json("GET", "/index/stats?table=cust&column=status", None)
        .1;
    assert_eq!(stats["indexes"][0]["entry_count"], 200);
    assert_eq!(stats["indexes"][0]["state"], "ready");
    let m = String::from_utf8(s.request("GET", "/metrics", None).body).unwrap();
    for name in [
        "themis_query_full_scan_fallback_total 1",
        "themis_index_rebuild_count 2",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
    assert!(!m.contains("themis_query_index_hits_total 0\n"));
    assert!(!m.contains("themis_index_range_scan_steps_total 0\n"));
    assert!(!m.contains("themis_index_rebuild_entities_processed_total 0\n"));
    // Drop: gone, queries fall back; rebuild of a missing index is 404.
    let (st, _) = s.json(
        "POST",
        "/index/drop",
        Some(r#"{"table":"cust","column":"status"}"#),
    );
    assert_eq!(st, 200);
    assert_eq!(
        s.request(
            "POST",
            "/index/drop",
            Some(r#"{"table":"cust","column":"status"}"#)
        )
        .status,
        404
    );
    assert_eq!(
        s.request(
            "POST",
            "/index/rebuild",
            Some(r#"{"table":"cust","column":"status"}"#)
        )
        .status,
        404
    );
    let v = s.json("POST", "/query", Some(&q.to_string())).1;
    assert_eq!(v["plan"]["mode"], "full_scan_fallback");
    // Rebuild keeps serving the same answers.
    let (st, _) = s.json(
        "POST",
        "/index/rebuild",
        Some(r#"{"table":"cust","column":"address.city"}"#),
    );
    assert_eq!(st, 202);
    wait_ready(&s);
    let v = s.json("POST", "/query", Some(&q2.to_string())).1;
    let expected = (0..200).filter(|i| i % 7 == 3 && i % 20 != 0).count();
    assert_eq!(v["count"], expected);
}

#[test]
fn index_entries_follow_updates_deletes_and_restarts() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"p","column":"color"}"#),
    );
    wait_ready(&s);
    let keys_of = |s: &Server, color: &str| -> Vec<String> {
        let q = json!({"table": "p", "predicates": [{"column": "color", "value": color}], "return": "keys"});
        let v = s.json("POST", "/query", Some(&q.to_string())).1;
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    s.request("PUT", "/entities/p:1", Some(r#"{"color":"red"}"#));
    s.request("PUT", "/entities/p:2", Some(r#"{"color":"red"}"#));
    assert_eq!(keys_of(&s, "red"), vec!["p:1", "p:2"]);
    s.request("PUT", "/entities/p:1", Some(r#"{"color":"blue"}"#));
    assert_eq!(keys_of(&s, "red"), vec!["p:2"]);
    assert_eq!(keys_of(&s, "blue"), vec!["p:1"]);
    s.request("DELETE", "/entities/p:2", None);
    assert!(keys_of(&s, "red").is_empty());
    let stats = s.json("GET", "/index/stats?table=p", None).1;
    assert_eq!(
        stats["indexes"][0]["entry_count"], 1,
        "stale entries left: {stats}"
    );
    s.kill9();
    let s = start_in(dir.path(), &Opts::threads(2));
    assert_eq!(keys_of(&s, "blue"), vec!["p:1"]);
    let q = json!({"table": "p", "predicates": [{"column": "color", "value": "blue"}], "explain": true});
    assert_eq!(
        s.json("POST", "/query", Some(&q.to_string())).1["plan"]["mode"],
        "index_optimized"
    );
}

#[test]
fn backfill_while_writing_is_complete() {
    let dir = tempdir();
    let s = Arc::new(start_in(dir.path(), &Opts::threads(3)));
    let mut c = s.client();
    for i in 0..1500 {
        c.request(
            "PUT",
            &format!("/entities/bf:{i}"),
            Some(&json!({"g": i % 10}).to_string()),
        );
    }
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut c = s.client();
            // Move entities between groups while the index builds.
            for i in 0..600 {
                let body = json!({"g": 100 + i % 3});
                c.request(
                    "PUT",
                    &format!("/entities/bf:{}", i * 2),
                    Some(&body.to_string()),
                );
            }
        })
    };
    let (st, _) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"bf","column":"g"}"#),
    );
    assert_eq!(st, 202);
    writer.join().unwrap();
    wait_ready(&s);
    let mut total = 0;
    for g in (0..10).chain(100..103) {
        let q = json!({"table": "bf", "predicates": [{"column": "g", "value": g}], "return": "count", "explain": true});
        let via_index = s.json("POST", "/query", Some(&q.to_string())).1;
        assert!(via_index["plan"]["mode"]
            .as_str()
            .unwrap()
            .starts_with("index_"));
        let n = via_index["count"].as_u64().unwrap();
        let expected = if g < 10 {
            (0..1500)
                .filter(|i| i % 10 == g && !(i % 2 == 0 && i / 2 < 600))
                .count() as u64
        } else {
            (0..600).filter(|i| 100 + i % 3 == g).count() as u64
        };
        assert_eq!(n, expected, "group {g}");
        total += n;
    }
    assert_eq!(total, 1500);
    let stats = s.json("GET", "/index/stats?table=bf", None).1;
    assert_eq!(stats["indexes"][0]["entry_count"], 1500, "{stats}");
}

/// Two writers on different cores race for the same unique value: exactly
/// one wins every round.
#[test]
fn unique_index_holds_across_cores() {
    let dir = tempdir();
    let s = Arc::new(start_in(dir.path(), &Opts::threads(2)));
    let (st, _) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"acct","column":"email","unique":true}"#),
    );
    assert_eq!(st, 202);
    wait_ready(&s);
    // Keys owned by different shards.
    let keys = crate::common::key_per_core("acct");
    for round in 0..40 {
        let email = format!("u{round}@x");
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = keys
            .iter()
            .map(|k| {
                let (s, k, email, barrier) = (s.clone(), k.clone(), email.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut c = s.client();
                    barrier.wait();
                    c.request(
                        "PUT",
                        &format!("/entities/{k}"),
                        Some(&json!({"email": email}).to_string()),
                    )
                    .status
                })
            })
            .collect();
        let mut statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        statuses.sort();
        assert!(
            statuses == vec![200, 409] || statuses == vec![201, 409],
            "round {round}: {statuses:?}"
        );
        let q = json!({"table": "acct", "predicates": [{"column": "email", "value": email}], "return": "count"});
        assert_eq!(s.json("POST", "/query", Some(&q.to_string())).1["count"], 1);
    }
    // null and missing values are not constrained.
    assert!(
        s.request("PUT", "/entities/acct:n1", Some(r#"{"email":null}"#))
            .status
            < 300
    );
    assert!(
        s.request("PUT", "/entities/acct:n2", Some(r#"{"email":null}"#))
            .status
            < 300
    );
    assert!(s.request("PUT", "/entities/acct:n3", Some(r#"{}"#)).status < 300);
    // A unique index over duplicate data fails to build, with the reason.
    s.request("PUT", "/entities/dup:1", Some(r#"{"v":1}"#));
    s.request("PUT", "/entities/dup:2", Some(r#"{"v":1}"#));
    s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"dup","column":"v","unique":true}"#),
    );
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = s.json("GET", "/index/stats?table=dup", None).1;
        if v["indexes"][0]["state"] == "failed" {
            assert!(v["indexes"][0]["error"]
                .as_str()
                .unwrap()
                .contains("duplicate"));
            break;
        }
        assert!(Instant::now() < end, "{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_requests_get_400_naming_the_field() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    for (body, field) in [
        (r#"{"predicates":[]}"#, "table"),
        (
            r#"{"table":"t","range":[{"column":"a","like":"x"}]}"#,
            "unknown operator",
        ),
        (
            r#"{"table":"t","range":[{"column":"a","gt":1,"lt":"b"}]}"#,
            "range[0]",
        ),
        (r#"{"table":"t","limit":100000}"#, "limit"),
        (r#"{"table":"t","cursor":"xyz"}"#, "cursor"),
        (
            r#"{"table":"t","predicates":[{"column":"a","value":{"x":1}}]}"#,
            "predicates[0].value",
        ),
        (r#"{"table":"t","return":"all"}"#, "return"),
    ] {
        let r = s.request("POST", "/query", Some(body));
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.json()["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    for body in [
        r#"{"column":"a"}"#,
        r#"{"table":"t"}"#,
        r#"{"table":"t","column":"a..b"}"#,
        r#"{"table":"t","column":"a","columns":["b"]}"#,
        r#"{"table":"t","column":"a","unique":"yes"}"#,
    ] {
        assert_eq!(
            s.request("POST", "/index/create", Some(body)).status,
            400,
            "{body}"
        );
    }
    assert_eq!(s.request("GET", "/query", None).status, 405);
    assert_eq!(
        s.request("GET", "/index/stats?table=none", None).status,
        404
    );
}

/// A table large enough (in SST files) for full scans to be split into key
/// ranges across cores: answers equal the brute-force ones.
#[test]
fn full_scan_split_by_key_range_is_exact() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(3));
    let mut r = Rng(5);
    let mut c = s.client();
    let mut data = Vec::new();
    for i in 0..3000u64 {
        let key = format!("big:{:x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20);
        // Incompressible padding, so the SST files are really this big.
        let pad: String = (0..500)
            .map(|_| format!("{:08x}", r.next() as u32))
            .collect();
        let d = json!({"kind": "data", "a": (i % 13) as i64, "pad": pad});
        c.request("PUT", &format!("/entities/{key}"), Some(&d.to_string()));
        data.push((key, d));
    }
    drop(c);
    assert!(s.stop().success()); // flushes: the table is now in SST files
    let s = start_in(dir.path(), &Opts::threads(3));
    data.sort_by(|a, b| a.0.cmp(&b.0));
    data.dedup_by(|a, b| a.0 == b.0);
    for q in [
        json!({"table": "big", "predicates": [{"column": "a", "value": 5}], "return": "keys", "limit": 37}),
        json!({"table": "big", "range": [{"column": "a", "gte": 3, "lt": 9}], "order_by": {"column": "a", "desc": true}, "return": "keys", "limit": 500}),
    ] {
        let (got, plan) = {
            let mut q2 = q.clone();
            q2["explain"] = json!(true);
            all_pages(&s, &q2)
        };
        assert_eq!(plan["mode"], "full_scan_fallback");
        assert_eq!(plan["scan_split"], "key_ranges", "{plan}");
        let big: Vec<(String, Value)> = data.clone();
        let mut q3 = q.clone();
        q3["predicates"] = q.get("predicates").cloned().unwrap_or(json!([]));
        assert_eq!(got, brute(&big, &q3), "{q}");
    }
    // An index build divides the table the same way (each core scans one
    // range and hands keys to their owners), and the index is exact.
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"big","column":"a"}"#),
    );
    assert_eq!(st, 202, "{v}");
    wait_ready(&s);
    let (_, v) = s.json("GET", "/index/stats?table=big", None);
    assert_eq!(v["indexes"][0]["build"]["split"], "key_ranges", "{v}");
    for q in [
        json!({"table": "big", "predicates": [{"column": "a", "value": 5}], "return": "keys", "limit": 1000}),
        json!({"table": "big", "range": [{"column": "a", "gte": 3, "lt": 9}], "return": "keys", "limit": 5000}),
    ] {
        let mut q2 = q.clone();
        q2["explain"] = json!(true);
        let (got, plan) = all_pages(&s, &q2);
        assert_ne!(plan["mode"], "full_scan_fallback", "{plan}");
        let mut q3 = q.clone();
        q3["predicates"] = q.get("predicates").cloned().unwrap_or(json!([]));
        assert_eq!(got, brute(&data, &q3), "{q}");
    }
}

/// With CDC on, entity, index entries and change event commit together:
/// after `kill -9` the feed, the data and the index all agree.
#[test]
fn index_entries_and_change_events_commit_together() {
    let dir = tempdir();
    let opts = Opts::threads(2).env("THEMIS_FEATURES_CDC", "true");
    let s = start_in(dir.path(), &opts);
    s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"o","column":"state"}"#),
    );
    wait_ready(&s);
    let mut c = s.client();
    let states = ["new", "paid", "shipped"];
    for i in 0..300 {
        let key = format!("o:{}", i % 60);
        if i % 11 == 10 {
            c.request("DELETE", &format!("/entities/{key}"), None);
        } else {
            let body = json!({"state": states[i % 3], "n": i});
            c.request("PUT", &format!("/entities/{key}"), Some(&body.to_string()));
        }
    }
    drop(c);
    s.kill9();
    let s = start_in(dir.path(), &opts);
    // Replay the feed into the final state of every key.
    let mut state: std::collections::BTreeMap<String, Value> = Default::default();
    let mut after = 0;
    loop {
        let p = s
            .json(
                "GET",
                &format!("/changefeed?from_seq={after}&limit=1000"),
                None,
            )
            .1;
        let events = p["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        for e in &events {
            state.insert(e["key"].as_str().unwrap().into(), e["value"].clone());
        }
        after = p["next_from_seq"].as_u64().unwrap();
    }
    assert_eq!(state.len(), 60, "the feed must cover every key");
    let mut indexed = 0;
    for st in states {
        let q = json!({"table": "o", "predicates": [{"column": "state", "value": st}], "return": "keys", "limit": 1000, "explain": true});
        let v = s.json("POST", "/query", Some(&q.to_string())).1;
        assert_eq!(v["plan"]["mode"], "index_optimized");
        let mut got: Vec<String> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        got.sort();
        let want: Vec<String> = state
            .iter()
            .filter(|(_, v)| v["state"] == st)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(got, want, "state {st}");
        indexed += got.len();
        for k in &want {
            let r = s.request("GET", &format!("/entities/{k}"), None);
            assert_eq!(r.json()["entity"], state[k], "{k}");
        }
    }
    let live = state.values().filter(|v| !v.is_null()).count();
    assert!(
        live > 30 && indexed == live,
        "{indexed} indexed of {live} live"
    );
}
