//! Vector search against the real binary: results checked against a
//! brute-force model of the same data (through updates, deletes, vector
//! removals and filters), restarts with and without a dump, kill -9 in the
//! middle of a batch insert, concurrent writers on several cores, and
//! hostile input.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIM: usize = 8;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 10_000) as f32 / 10_000.0
    }
    fn vector(&mut self) -> Vec<f32> {
        (0..DIM).map(|_| self.unit() * 2.0 - 1.0).collect()
    }
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// The model: each key's current vector and category.
type Model = HashMap<String, (Vec<f32>, u64)>;

fn brute(model: &Model, q: &[f32], k: usize, cat: Option<u64>) -> Vec<String> {
    let mut all: Vec<(f32, &String)> = model
        .iter()
        .filter(|(_, (_, c))| cat.is_none_or(|x| x == *c))
        .map(|(key, (v, _))| (l2(q, v), key))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    all.into_iter().take(k).map(|(_, k)| k.clone()).collect()
}

fn create(s: &Server, body: Value) -> (u16, Value) {
    s.json("POST", "/vector/index/create", Some(&body.to_string()))
}

/// Waits (at most 30 s) until every vector index is ready on every core.
fn wait_vectors_ready(s: &Server) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let v = s.json("GET", "/vector/index/stats", None).1;
        let all = v["indexes"].as_array().cloned().unwrap_or_default();
        if all.iter().all(|i| i["state"] == "ready") {
            return v;
        }
        assert!(Instant::now() < end, "vector indexes not ready: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn search(s: &Server, body: Value) -> Value {
    let (st, v) = s.json("POST", "/vector/search", Some(&body.to_string()));
    assert_eq!(st, 200, "{body} -> {v}");
    v
}

fn keys_of(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

/// Every result is a live key whose current vector is at the reported
/// distance (so no deleted or stale vector), matching `cat` when given;
/// returns the recall against brute force.
fn check(model: &Model, v: &Value, q: &[f32], k: usize, cat: Option<u64>) -> f64 {
    let results = v["results"].as_array().unwrap();
    for r in results {
        let key = r["key"].as_str().unwrap();
        let Some((vec, c)) = model.get(key) else {
            panic!("{key} has no vector but was returned: {v}");
        };
        let d = r["distance"].as_f64().unwrap() as f32;
        assert!(
            (d - l2(q, vec)).abs() < 1e-3,
            "{key}: stale distance {d}: {v}"
        );
        if let Some(cat) = cat {
            assert_eq!(*c, cat, "{key} does not match the filter: {v}");
        }
    }
    let want = brute(model, q, k, cat);
    assert_eq!(results.len(), want.len(), "fewer than k results: {v}");
    let got: HashSet<String> = keys_of(v).into_iter().collect();
    let hit = want.iter().filter(|k| got.contains(*k)).count();
    if want.is_empty() {
        1.0
    } else {
        hit as f64 / want.len() as f64
    }
}

fn put(s: &Server, key: &str, v: &[f32], cat: u64) {
    let body = json!({"embedding": v, "cat": cat, "name": key});
    let r = s.request("PUT", &format!("/entities/{key}"), Some(&body.to_string()));
    assert!(r.status == 200 || r.status == 201, "{}", r.status);
}

#[test]
fn search_matches_brute_force_through_updates_deletes_and_filters() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(3));
    let mut r = Rng(0x5eed);
    let mut model: Model = HashMap::new();
    // Half the data exists before the index (backfill), half after.
    for i in 0..150 {
        let (v, c) = (r.vector(), r.next() % 5);
        put(&s, &format!("v:{i}"), &v, c);
        model.insert(format!("v:{i}"), (v, c));
    }
    s.request("PUT", "/entities/v:bad", Some(r#"{"embedding":"nope"}"#));
    let (st, body) = create(
        &s,
        json!({"table": "v", "dimension": DIM, "metric": "l2", "ef_search": 200}),
    );
    assert_eq!(st, 202, "{body}");
    wait_vectors_ready(&s);
    let items: Vec<Value> = (150..300)
        .map(|i| {
            let (v, c) = (r.vector(), r.next() % 5);
            model.insert(format!("v:{i}"), (v.clone(), c));
            json!({"pk": i.to_string(), "vector": v, "cat": c, "name": format!("v:{i}")})
        })
        .collect();
    let (st, v) = s.json(
        "POST",
        "/vector/batch_insert",
        Some(&json!({"table": "v", "items": items}).to_string()),
    );
    assert_eq!(
        (st, v["inserted"].as_u64(), v["failed"].as_u64()),
        (200, Some(150), Some(0)),
        "{v}"
    );
    let stats = wait_vectors_ready(&s);
    assert_eq!(stats["indexes"][0]["vectors"], 300, "{stats}");
    let skipped: u64 = stats["indexes"][0]["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["load"]["skipped_invalid"].as_u64().unwrap())
        .sum();
    assert_eq!(
        skipped, 1,
        "the invalid field was skipped by the backfill: {stats}"
    );

    let run = |model: &Model, r: &mut Rng, label: &str| {
        let mut recall = 0.0;
        let n = 20;
        for _ in 0..n {
            let q = r.vector();
            let v = search(&s, json!({"table": "v", "vector": q, "k": 10}));
            recall += check(model, &v, &q, 10, None);
            let cat = r.next() % 5;
            let f = json!({"predicates": [{"column": "cat", "value": cat}]});
            let v = search(
                &s,
                json!({"table": "v", "vector": q, "k": 10, "filter": f, "return": "entities", "explain": true}),
            );
            recall += check(model, &v, &q, 10, Some(cat));
            for e in v["results"].as_array().unwrap() {
                assert_eq!(e["entity"]["cat"], cat, "{v}");
            }
        }
        let recall = recall / (2 * n) as f64;
        assert!(recall >= 0.9, "{label}: recall {recall}");
    };
    run(&model, &mut r, "initial");

    // Updates (new vectors), deletes, and removed vectors.
    for i in 0..120 {
        let (v, c) = (r.vector(), r.next() % 5);
        put(&s, &format!("v:{i}"), &v, c);
        model.insert(format!("v:{i}"), (v, c));
    }
    for i in 120..170 {
        s.request("DELETE", &format!("/entities/v:{i}"), None);
        model.remove(&format!("v:{i}"));
    }
    let pks: Vec<String> = (170..190).map(|i| i.to_string()).collect();
    let (st, v) = s.json(
        "DELETE",
        "/vector/by-filter",
        Some(&json!({"table": "v", "pks": pks}).to_string()),
    );
    assert_eq!((st, v["deleted"].as_u64()), (200, Some(20)), "{v}");
    for i in 170..190 {
        model.remove(&format!("v:{i}"));
    }
    // By predicate: every vector of category 4 among 190..300.
    let (st, v) = s.json(
        "DELETE",
        "/vector/by-filter",
        Some(&json!({"table": "v", "predicates": [{"column": "cat", "value": 4}], "range": [{"column": "name", "gte": "v:190", "lt": "v:3"}]}).to_string()),
    );
    assert_eq!(st, 200, "{v}");
    let removed: Vec<String> = model
        .iter()
        .filter(|(k, (_, c))| *c == 4 && k.as_str() >= "v:190" && k.as_str() < "v:3")
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(v["deleted"].as_u64(), Some(removed.len() as u64), "{v}");
    for k in removed {
        model.remove(&k);
    }
    // The entity of a removed vector stays.
    assert_eq!(s.request("GET", "/entities/v:175", None).status, 200);
    run(&model, &mut r, "after updates and deletes");

    // A secondary index on the filter column: exact candidates.
    s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"v","column":"cat"}"#),
    );
    wait_ready(&s);
    for _ in 0..10 {
        let q = r.vector();
        let cat = r.next() % 5;
        let f = json!({"predicates": [{"column": "cat", "value": cat}]});
        let v = search(
            &s,
            json!({"table": "v", "vector": q, "k": 7, "filter": f, "explain": true}),
        );
        assert_eq!(v["explain"]["mode"], "exact_candidates", "{v}");
        assert_eq!(check(&model, &v, &q, 7, Some(cat)), 1.0, "exact path: {v}");
        assert_eq!(keys_of(&v), brute(&model, &q, 7, Some(cat)));
    }

    // More than a fifth of the points are tombstones: graphs were rebuilt.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.json("GET", "/vector/index/stats", None).1;
        let rebuilds: u64 = st["indexes"][0]["cores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["rebuilds"].as_u64().unwrap())
            .sum();
        if rebuilds > 0 {
            break;
        }
        assert!(Instant::now() < end, "no rebuild: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    run(&model, &mut r, "after rebuilds");
}

#[test]
fn restarts_rebuild_or_use_a_matching_dump() {
    let dir = tempdir();
    let opts = Opts::threads(2);
    let s = start_in(dir.path(), &opts);
    create(
        &s,
        json!({"table": "d", "dimension": DIM, "metric": "cosine", "ef_search": 100}),
    );
    wait_vectors_ready(&s);
    let mut r = Rng(77);
    let items: Vec<Value> = (0..200)
        .map(|i| json!({"pk": i, "vector": r.vector()}))
        .collect();
    s.json(
        "POST",
        "/vector/batch_insert",
        Some(&json!({"table": "d", "items": items}).to_string()),
    );
    let q = r.vector();
    let body = json!({"table": "d", "vector": q, "k": 5});
    let before = keys_of(&search(&s, body.clone()));
    assert_eq!(before.len(), 5);
    let load_from = |s: &Server| -> Vec<String> {
        let st = wait_vectors_ready(s);
        assert_eq!(st["indexes"][0]["vectors"], 200, "{st}");
        st["indexes"][0]["cores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["load"]["from"].as_str().unwrap().to_string())
            .collect()
    };

    // Crash: rebuilt from the stored vectors.
    s.kill9();
    let s = start_in(dir.path(), &opts);
    assert_eq!(load_from(&s), ["rebuild", "rebuild"]);
    assert_eq!(keys_of(&search(&s, body.clone())), before);

    // A dump is used when it matches.
    let (st, v) = s.json("POST", "/vector/index/save", None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["saved"].as_array().unwrap().len(), 2, "{v}");
    let (_, s) = s.restart(&opts);
    assert_eq!(load_from(&s), ["dump", "dump"]);
    assert_eq!(keys_of(&search(&s, body.clone())), before);
    let out = s.output();
    assert!(out.contains("vector index loaded"), "{out}");

    // One vector changed since the dump: its core rebuilds, the other
    // core's dump still matches.
    let key = key_per_core("d")[0].clone();
    let pk = key.split_once(':').unwrap().1;
    let changed = json!({"embedding": r.vector()});
    s.request(
        "PUT",
        &format!("/entities/d:{pk}"),
        Some(&changed.to_string()),
    );
    let (_, s) = s.restart(&opts);
    let from = load_from(&s);
    assert_eq!(from[0], "rebuild", "{from:?}");
    assert_eq!(from[1], "dump", "{from:?}");

    // POST /vector/index/load reloads on a running server.
    let (st, _) = s.json("POST", "/vector/index/load", None);
    assert_eq!(st, 202);
    let from = load_from(&s);
    assert_eq!(from[1], "dump", "{from:?}");
    assert_eq!(search(&s, body)["count"], 5);
}

#[test]
fn kill9_during_a_batch_insert_leaves_vectors_and_graph_in_agreement() {
    let dir = tempdir();
    let opts = Opts::threads(2);
    let s = start_in(dir.path(), &opts);
    create(
        &s,
        json!({"table": "k", "dimension": 32, "m": 8, "ef_construction": 40}),
    );
    wait_vectors_ready(&s);
    let mut r = Rng(99);
    let addr = s.addr;
    let writer = std::thread::spawn(move || {
        for b in 0..40 {
            let items: Vec<Value> = (0..250)
                .map(|i| {
                    let v: Vec<f32> = (0..32).map(|_| r.unit()).collect();
                    json!({"pk": b * 250 + i, "vector": v})
                })
                .collect();
            let mut c = match Client::connect(addr) {
                Ok(c) => c,
                Err(_) => return,
            };
            let body = json!({"table": "k", "items": items}).to_string();
            c.send_raw(
                format!(
                    "POST /vector/batch_insert HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            if c.try_read_response(false).is_none() {
                return;
            }
        }
    });
    // Kill once some batches are in, while the writer keeps sending.
    let end = Instant::now() + Duration::from_secs(20);
    let count = json!({"table": "k", "return": "count"}).to_string();
    while s.json("POST", "/query", Some(&count)).1["count"]
        .as_u64()
        .unwrap_or(0)
        < 500
    {
        assert!(Instant::now() < end, "the batch insert did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.kill9();
    let _ = writer.join();
    let s = start_in(dir.path(), &opts);
    let st = wait_vectors_ready(&s);
    let q = json!({"table": "k", "return": "count"});
    let stored = s.json("POST", "/query", Some(&q.to_string())).1["count"]
        .as_u64()
        .unwrap();
    assert!(stored > 0, "nothing was written before the kill");
    assert_eq!(st["indexes"][0]["vectors"].as_u64(), Some(stored), "{st}");
    let v = search(&s, json!({"table": "k", "vector": vec![0.5; 32], "k": 3}));
    assert_eq!(v["count"], 3);
}

#[test]
fn concurrent_writers_and_searches_on_several_cores() {
    let dir = tempdir();
    let s = Arc::new(start_in(dir.path(), &Opts::threads(3)));
    create(&s, json!({"table": "c", "dimension": DIM}));
    wait_vectors_ready(&s);
    let mut r = Rng(5);
    for i in 0..200 {
        put(&s, &format!("c:{i}"), &r.vector(), 0);
    }
    for i in 150..200 {
        s.request("DELETE", &format!("/entities/c:{i}"), None);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (s, stop) = (s.clone(), stop.clone());
        writers.push(std::thread::spawn(move || {
            let mut r = Rng(1000 + w);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let i = r.next() % 150;
                put(&s, &format!("c:{i}"), &r.vector(), w);
                n += 1;
            }
            n
        }));
    }
    let mut searches = 0;
    let end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < end {
        let q = r.vector();
        let v = search(&s, json!({"table": "c", "vector": q, "k": 10}));
        assert_eq!(v["count"], 10, "{v}");
        for k in keys_of(&v) {
            let i: u64 = k[2..].parse().unwrap();
            assert!(i < 150, "deleted key {k} returned: {v}");
        }
        searches += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(writes > 0 && searches > 0);
    // After the writers: exactly the stored vectors, at their distances.
    let mut model: Model = HashMap::new();
    for i in 0..150 {
        let v = s.json("GET", &format!("/entities/c:{i}"), None).1;
        let e = &v["entity"];
        let vec: Vec<f32> = e["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        model.insert(format!("c:{i}"), (vec, 0));
    }
    let st = wait_vectors_ready(&s);
    assert_eq!(st["indexes"][0]["vectors"], 150, "{st}");
    let mut recall = 0.0;
    for _ in 0..10 {
        let q = r.vector();
        let v = search(&s, json!({"table": "c", "vector": q, "k": 10, "ef": 200}));
        recall += check(&model, &v, &q, 10, None);
    }
    assert!(recall / 10.0 >= 0.9, "recall {recall}");
}

#[test]
fn hostile_and_wrong_input_get_clear_errors() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(2));
    let status = |method: &str, path: &str, body: Value| -> (u16, Value) {
        s.json(method, path, Some(&body.to_string()))
    };
    let expect = |(st, v): (u16, Value), want: u16, needle: &str| {
        assert_eq!(st, want, "{v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains(needle),
            "{needle}: {v}"
        );
    };
    // Index parameters.
    expect(
        create(&s, json!({"table": "h", "dimension": 3, "m": 300})),
        400,
        "m: must be",
    );
    expect(
        create(&s, json!({"table": "h", "dimension": 3, "m": 1})),
        400,
        "m: must be",
    );
    expect(
        create(&s, json!({"table": "h", "dimension": 0})),
        400,
        "dimension",
    );
    expect(
        create(&s, json!({"table": "h", "dimension": 5000})),
        400,
        "dimension",
    );
    expect(
        create(
            &s,
            json!({"table": "h", "dimension": 3, "metric": "hamming"}),
        ),
        400,
        "metric",
    );
    expect(
        create(&s, json!({"table": "h:x", "dimension": 3})),
        400,
        "table",
    );
    expect(
        create(&s, json!({"table": "h", "dimension": 3, "bogus": 1})),
        400,
        "unknown field",
    );
    let (st, _) = create(&s, json!({"table": "h", "dimension": 3, "metric": "l2"}));
    assert_eq!(st, 202);
    let (st, v) = create(&s, json!({"table": "h", "dimension": 3, "metric": "l2"}));
    assert_eq!((st, &v["created"]), (200, &json!(false)), "idempotent: {v}");
    expect(
        create(&s, json!({"table": "h", "dimension": 4, "metric": "l2"})),
        409,
        "other parameters",
    );
    create(&s, json!({"table": "u", "dimension": 2, "metric": "dot"}));
    create(
        &s,
        json!({"table": "z", "dimension": 2, "metric": "cosine"}),
    );
    wait_vectors_ready(&s);
    // The server survived m = 300 (hnsw_rs would have exited).
    assert_eq!(s.request("GET", "/health", None).status, 200);

    // Searches.
    let srch = |b: Value| status("POST", "/vector/search", b);
    expect(
        srch(json!({"table": "h", "vector": [1, 2]})),
        400,
        "expected 3 numbers",
    );
    expect(
        srch(json!({"table": "h", "vector": [1, 2, "NaN"]})),
        400,
        "not a number",
    );
    expect(
        srch(json!({"table": "h", "vector": [1, 2, 1e39]})),
        400,
        "finite",
    );
    expect(srch(json!({"table": "h", "vector": "1,2,3"})), 400, "array");
    expect(
        srch(json!({"table": "h", "vector": [1, 2, 3], "k": 0})),
        400,
        "k: must be",
    );
    expect(
        srch(json!({"table": "h", "vector": [1, 2, 3], "k": 1001})),
        400,
        "k: must be",
    );
    expect(
        srch(json!({"table": "h", "vector": [1, 2, 3], "ef": 100000})),
        400,
        "ef: must be",
    );
    expect(
        srch(json!({"table": "h", "vector": [1, 2, 3], "return": "all"})),
        400,
        "return",
    );
    expect(
        srch(json!({"table": "h", "vector": [1, 2, 3], "filter": {"predicates": [{"col": "a"}]}})),
        400,
        "filter.predicates[0]",
    );
    expect(
        srch(json!({"table": "nope", "vector": [1, 2, 3]})),
        404,
        "no vector index",
    );
    expect(
        srch(json!({"table": "h", "field": "other", "vector": [1, 2, 3]})),
        404,
        "no vector index",
    );
    expect(
        srch(json!({"table": "u", "vector": [3, 4]})),
        400,
        "unit-length",
    );
    expect(
        srch(json!({"table": "z", "vector": [0, 0]})),
        400,
        "zero vector",
    );
    let r = s.request("POST", "/vector/search", Some("{not json"));
    assert_eq!(r.status, 400);
    let v = srch(json!({"table": "h", "vector": [1, 2, 3], "k": 5})).1;
    assert_eq!(v["count"], 0, "empty index: {v}");

    // Entity writes with a bad vector are refused and not stored.
    let r = s.request("PUT", "/entities/h:1", Some(r#"{"embedding":[1,2]}"#));
    assert_eq!(r.status, 400);
    assert_eq!(s.request("GET", "/entities/h:1", None).status, 404);
    let r = s.request("PUT", "/entities/u:1", Some(r#"{"embedding":[3,4]}"#));
    assert_eq!(r.status, 400, "dot needs unit vectors");
    let r = s.request(
        "PUT",
        "/entities/h:2",
        Some(r#"{"embedding":[1,2,3],"x":1}"#),
    );
    assert_eq!(r.status, 201);

    // A batch with bad items stores the good ones and names the bad ones.
    let (st, v) = status(
        "POST",
        "/vector/batch_insert",
        json!({"table": "h", "items": [
            {"pk": "a", "vector": [1, 2, 3]},
            {"pk": "b", "vector": [1, 2]},
            {"vector": [1, 2, 3]},
            {"pk": "c", "vector": [1, "x", 3]},
            {"pk": "d", "vector": [0, 0, 1], "color": "red"},
            "junk",
        ]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["inserted"].as_u64(), v["failed"].as_u64()),
        (Some(2), Some(4)),
        "{v}"
    );
    let bad: Vec<u64> = v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["index"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, [1, 2, 3, 5], "{v}");
    assert_eq!(
        s.json("GET", "/entities/h:d", None).1["entity"]["color"],
        "red"
    );
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"pk": i, "vector": [1, 2, 3]}))
        .collect();
    expect(
        status(
            "POST",
            "/vector/batch_insert",
            json!({"table": "h", "items": many}),
        ),
        400,
        "at most",
    );
    expect(
        status("DELETE", "/vector/by-filter", json!({"table": "h"})),
        400,
        "give one of",
    );
    expect(
        status(
            "DELETE",
            "/vector/by-filter",
            json!({"table": "h", "pks": ["a"], "prefix": "a"}),
        ),
        400,
        "give one of",
    );

    // Config: ef_search per index, defaults for new indexes.
    let (st, v) = status(
        "PUT",
        "/vector/index/config",
        json!({"table": "h", "ef_search": 300}),
    );
    assert_eq!(st, 200, "{v}");
    let efs: Vec<&Value> = v["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["table"] == "h")
        .map(|i| &i["ef_search"])
        .collect();
    assert_eq!(efs, [&json!(300)]);
    let (st, v) = status("PUT", "/vector/index/config", json!({"hnsw_m": 8}));
    assert_eq!((st, &v["defaults"]["hnsw_m"]), (200, &json!(8)), "{v}");
    let (st, v) = create(&s, json!({"table": "n", "dimension": 2}));
    assert_eq!((st, &v["index"]["m"]), (202, &json!(8)), "{v}");
    expect(
        status("PUT", "/vector/index/config", json!({"hnsw_m": 999})),
        400,
        "hnsw_m",
    );
    expect(
        status("PUT", "/vector/index/config", json!({})),
        400,
        "nothing to change",
    );
    let v = srch(json!({"table": "h", "vector": [1, 2, 3], "k": 2, "explain": true})).1;
    assert_eq!(v["explain"]["ef"], 300, "{v}");

    // The feature flag.
    let (st, _) = s.json("POST", "/config", Some(r#"{"features":{"vectors":false}}"#));
    assert_eq!(st, 200);
    let (st, v) = srch(json!({"table": "h", "vector": [1, 2, 3]}));
    assert_eq!(
        (st, v["code"].as_str()),
        (503, Some("feature_disabled")),
        "{v}"
    );
    s.json("POST", "/config", Some(r#"{"features":{"vectors":true}}"#));
    assert_eq!(
        srch(json!({"table": "h", "vector": [1, 2, 3], "k": 1})).0,
        200
    );

    // Drop.
    let (st, _) = status("POST", "/vector/index/drop", json!({"table": "h"}));
    assert_eq!(st, 200);
    expect(
        srch(json!({"table": "h", "vector": [1, 2, 3]})),
        404,
        "no vector index",
    );
    expect(
        status("POST", "/vector/index/drop", json!({"table": "h"})),
        404,
        "no vector index",
    );
}
