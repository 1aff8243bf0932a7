//! The semantic cache against the real binary: exact and semantic hits,
//! params as identity, the threshold boundary, TTL expiry (never served
//! after it, even before the sweeper ran), LRU eviction at the cap,
//! entries and TTLs across a restart, the feature flag, hostile input.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn cache_on(threads: usize) -> Opts {
    Opts::threads(threads)
        .env("THEMIS_FEATURES_SEMANTIC_CACHE", "true")
        .env("THEMIS_SEMANTIC_CACHE_DIMENSION", "4")
        .env("THEMIS_SEMANTIC_CACHE_SIMILARITY_THRESHOLD", "0.9")
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    s.json("POST", path, Some(&body.to_string()))
}

fn put(s: &Server, body: Value) -> Value {
    let (st, v) = post(s, "/cache/put", &body);
    assert!(st == 201 || st == 200, "{st} {v}");
    v
}

fn query(s: &Server, body: Value) -> Value {
    let (st, v) = post(s, "/cache/query", &body);
    assert_eq!(st, 200, "{v}");
    v
}

/// Polls `f` for up to 20 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exact_and_semantic_hits_params_and_threshold() {
    let dir = tempdir();
    let s = start_in(dir.path(), &cache_on(2));
    let params = json!({"model": "m1", "temperature": 0});
    let v = put(
        &s,
        json!({"prompt": "What is the capital of France?", "response": "Paris",
               "embedding": [1.0, 0.0, 0.0, 0.0], "params": params, "metadata": {"src": "t"}}),
    );
    assert_eq!(v["created"], true, "{v}");
    put(
        &s,
        json!({"prompt": "How tall is Everest?", "response": "8849 m",
               "embedding": [0.0, 1.0, 0.0, 0.0], "params": params}),
    );

    // Exact: normalised prompt (case, spacing), equal params in any key order.
    let v = query(
        &s,
        json!({"prompt": "  what is the CAPITAL of   france? ", "params": {"temperature": 0, "model": "m1"}}),
    );
    assert_eq!(
        (
            v["hit"].clone(),
            v["match"].clone(),
            v["response"].clone(),
            v["similarity"].clone()
        ),
        (json!(true), json!("exact"), json!("Paris"), json!(1.0)),
        "{v}"
    );
    assert_eq!(v["metadata"], json!({"src": "t"}));
    assert_eq!(v["prompt"], "What is the capital of France?");
    assert!(v["timestamp_ms"].as_u64().is_some());

    // Semantic: a near embedding under another prompt.
    let near = json!([0.98, 0.199, 0.0, 0.0]);
    let v = query(
        &s,
        json!({"prompt": "France's capital city?", "embedding": near, "params": params}),
    );
    assert_eq!(
        (v["hit"].clone(), v["match"].clone()),
        (json!(true), json!("semantic")),
        "{v}"
    );
    assert_eq!(v["response"], "Paris");
    let sim = v["similarity"].as_f64().unwrap();
    assert!(sim > 0.97 && sim < 1.0, "{v}");

    // Params are part of the identity: other params miss, exact and semantic.
    let other = json!({"model": "m2", "temperature": 0});
    let v = query(
        &s,
        json!({"prompt": "What is the capital of France?", "params": other}),
    );
    assert_eq!(v, json!({"hit": false}));
    let v = query(
        &s,
        json!({"prompt": "x", "embedding": near, "params": other}),
    );
    assert_eq!(v, json!({"hit": false}));
    let v = query(&s, json!({"prompt": "What is the capital of France?"}));
    assert_eq!(v, json!({"hit": false}), "no params is not m1's params");

    // The threshold boundary: a similarity equal to the threshold is a
    // hit, one just below it is not.
    let at = json!([0.6, 0.0, 0.8, 0.0]);
    let v = query(
        &s,
        json!({"prompt": "q", "embedding": at, "params": params, "threshold": 0.01}),
    );
    assert_eq!(v["hit"], true, "{v}");
    let sim = v["similarity"].as_f64().unwrap();
    assert!((sim - 0.6).abs() < 1e-5, "{v}");
    let v = query(
        &s,
        json!({"prompt": "q", "embedding": at, "params": params, "threshold": sim}),
    );
    assert_eq!(
        (v["hit"].clone(), v["response"].clone()),
        (json!(true), json!("Paris")),
        "{v}"
    );
    let v = query(
        &s,
        json!({"prompt": "q", "embedding": at, "params": params, "threshold": sim + 1e-6}),
    );
    assert_eq!(v, json!({"hit": false}));
    // The configured default (0.9) applies without a threshold.
    let v = query(
        &s,
        json!({"prompt": "q", "embedding": at, "params": params}),
    );
    assert_eq!(v, json!({"hit": false}));

    // Replacing an entry answers 200 and keeps one entry.
    let (st, v) = post(
        &s,
        "/cache/put",
        &json!({"prompt": "what is the capital of france?", "response": "Paris, France", "params": params}),
    );
    assert_eq!((st, v["created"].clone()), (200, json!(false)), "{v}");
    let v = query(
        &s,
        json!({"prompt": "What is the capital of France?", "params": params}),
    );
    assert_eq!(v["response"], "Paris, France");

    let (st, stats) = s.json("GET", "/cache/stats", None);
    assert_eq!(st, 200);
    assert_eq!(stats["entries"], 2, "{stats}");
    assert_eq!(
        stats["hits"],
        json!({"exact": 2, "semantic": 3, "total": 5}),
        "{stats}"
    );
    assert_eq!(stats["misses"], 5, "{stats}");
    assert!(stats["bytes"].as_u64().unwrap() > 0);

    let metrics = String::from_utf8_lossy(&s.request("GET", "/metrics", None).body).into_owned();
    for needle in [
        "themis_semantic_cache_hits_total{match=\"exact\"} 2",
        "themis_semantic_cache_hits_total{match=\"semantic\"} 3",
        "themis_semantic_cache_misses_total 5",
        "themis_semantic_cache_entries 2",
        "themis_semantic_cache_lookup_seconds_count",
    ] {
        assert!(metrics.contains(needle), "{needle} missing");
    }

    // Entries are entities of the reserved table: readable, not writable
    // through /entities.
    let key = v_key(&s, "How tall is Everest?", &params);
    let (st, e) = s.json("GET", &format!("/entities/{key}"), None);
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["entity"]["response"], "8849 m");
    let (st, e) = s.json(
        "PUT",
        &format!("/entities/{key}"),
        Some("{\"response\":\"x\"}"),
    );
    assert_eq!((st, e["code"].clone()), (403, json!("forbidden")), "{e}");

    // Delete one entry (admin), then clear.
    let (st, v) = s.json(
        "DELETE",
        "/cache/entry",
        Some(&json!({"prompt": "How tall is Everest?", "params": params}).to_string()),
    );
    assert_eq!((st, v["deleted"].clone()), (200, json!(true)), "{v}");
    let (st, v) = post(&s, "/cache/clear", &json!({}));
    assert_eq!((st, v["deleted"].clone()), (200, json!(1)), "{v}");
    let v = query(
        &s,
        json!({"prompt": "What is the capital of France?", "params": params}),
    );
    assert_eq!(v, json!({"hit": false}));
    eventually("entries gauge at 0", || {
        s.json("GET", "/cache/stats", None).1["entries"] == 0
    });
}

/// The key of an entry, from its put's answer (a put of the same identity
/// returns it).
fn v_key(s: &Server, prompt: &str, params: &Value) -> String {
    let (st, v) = post(
        s,
        "/cache/put",
        &json!({"prompt": prompt, "response": "8849 m", "params": params}),
    );
    assert_eq!(st, 200, "{v}");
    v["key"].as_str().unwrap().to_string()
}

#[test]
fn expired_entries_are_never_served_and_the_sweeper_deletes_them() {
    let dir = tempdir();
    // The sweeper is effectively off: only the lookup's own check stands.
    let s = start_in(
        dir.path(),
        &cache_on(2).env("THEMIS_TEST_FAULTS", "cache_sweep_ms=3600000"),
    );
    put(
        &s,
        json!({"prompt": "short", "response": "r", "ttl_seconds": 1, "embedding": [0, 0, 1, 0]}),
    );
    put(
        &s,
        json!({"prompt": "long", "response": "r2", "ttl_seconds": 3600}),
    );
    assert_eq!(query(&s, json!({"prompt": "short"}))["hit"], true);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(query(&s, json!({"prompt": "short"})), json!({"hit": false}));
    assert_eq!(
        query(
            &s,
            json!({"prompt": "other", "embedding": [0, 0, 1, 0], "threshold": 0.5})
        ),
        json!({"hit": false}),
        "an expired entry is not a semantic hit either"
    );
    assert_eq!(query(&s, json!({"prompt": "long"}))["hit"], true);
    s.stop();

    // With the sweeper on, the expired entry is deleted from storage.
    let s = start_in(dir.path(), &cache_on(2));
    put(
        &s,
        json!({"prompt": "soon", "response": "r", "ttl_seconds": 1}),
    );
    eventually("two expirations", || {
        s.json("GET", "/cache/stats", None).1["expirations"] == 2
    });
    let (_, st) = s.json("GET", "/cache/stats", None);
    assert_eq!(st["entries"], 1, "{st}");
    let (_, q) = post(
        &s,
        "/query",
        &json!({"table": "semantic_cache", "return": "count"}),
    );
    assert_eq!(q["count"], 1, "{q}");
}

#[test]
fn least_recently_used_entries_go_past_the_cap_and_entries_survive_kill_9() {
    let dir = tempdir();
    let opts = cache_on(1).env("THEMIS_SEMANTIC_CACHE_MAX_ENTRIES", "3");
    let s = start_in(dir.path(), &opts);
    for p in ["a", "b", "c"] {
        put(&s, json!({"prompt": p, "response": p, "ttl_seconds": 0}));
    }
    // Use "a": "b" is now the least recently used.
    assert_eq!(query(&s, json!({"prompt": "a"}))["hit"], true);
    put(
        &s,
        json!({"prompt": "d", "response": "d", "ttl_seconds": 0}),
    );
    eventually("one eviction", || {
        s.json("GET", "/cache/stats", None).1["evictions"] == 1
    });
    assert_eq!(query(&s, json!({"prompt": "b"})), json!({"hit": false}));
    for p in ["a", "c", "d"] {
        assert_eq!(query(&s, json!({"prompt": p}))["hit"], true, "{p}");
    }
    // Entries and their TTLs survive kill -9.
    put(
        &s,
        json!({"prompt": "ttl", "response": "t", "ttl_seconds": 2}),
    );
    eventually("cap kept", || {
        s.json("GET", "/cache/stats", None).1["entries"] == 3
    });
    let before: Vec<Value> = ["ttl", "d"]
        .iter()
        .map(|p| query(&s, json!({"prompt": p})))
        .collect();
    s.kill9();
    let s = start_in(dir.path(), &opts);
    for (p, b) in ["ttl", "d"].iter().zip(&before) {
        if b["hit"] == true {
            let v = query(&s, json!({"prompt": p}));
            // "ttl" may have expired by now: then it is a miss, never stale.
            if *p == "d" {
                assert_eq!(v["response"], "d", "{v}");
            }
        }
    }
    eventually("the restarted core to count its entries", || {
        s.json("GET", "/cache/stats", None).1["entries"].as_u64() >= Some(2)
    });
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(query(&s, json!({"prompt": "ttl"})), json!({"hit": false}));
}

#[test]
fn the_flag_gates_every_route_and_bad_input_is_a_400() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    for (m, p) in [
        ("POST", "/cache/put"),
        ("POST", "/cache/query"),
        ("GET", "/cache/stats"),
        ("DELETE", "/cache/entry"),
        ("POST", "/cache/clear"),
    ] {
        let body = (m != "GET").then_some("{\"prompt\":\"x\",\"response\":\"y\"}");
        let (st, v) = s.json(m, p, body);
        assert_eq!(
            (st, v["feature"].clone()),
            (503, json!("features.semantic_cache")),
            "{m} {p} {v}"
        );
    }
    s.stop();

    let s = start_in(dir.path(), &cache_on(1));
    let big = "x".repeat(70 << 10);
    let cases = [
        ("/cache/put", json!({"response": "r"}), "prompt: required"),
        ("/cache/put", json!({"prompt": "p"}), "response: required"),
        (
            "/cache/put",
            json!({"prompt": "", "response": "r"}),
            "prompt: must not be empty",
        ),
        (
            "/cache/put",
            json!({"prompt": 5, "response": "r"}),
            "prompt: must be a string",
        ),
        (
            "/cache/put",
            json!({"prompt": big, "response": "r"}),
            "more than the limit",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "embedding": [1, 2]}),
            "expected 4 numbers",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "embedding": [1, "NaN", 0, 0]}),
            "finite number",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "embedding": [1e39, 0, 0, 0]}),
            "finite number",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "embedding": [0, 0, 0, 0]}),
            "zero vector",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "ttl_seconds": -1}),
            "ttl_seconds",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "ttl_seconds": 1.5}),
            "ttl_seconds",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "params": [1]}),
            "params: must be an object",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "metadata": 3}),
            "metadata: must be an object",
        ),
        (
            "/cache/put",
            json!({"prompt": "p", "response": "r", "nope": 1}),
            "unknown field",
        ),
        (
            "/cache/query",
            json!({"prompt": "p", "threshold": 0}),
            "threshold",
        ),
        (
            "/cache/query",
            json!({"prompt": "p", "threshold": 1.5}),
            "threshold",
        ),
        (
            "/cache/query",
            json!({"prompt": "p", "embedding": [1, 0, 0]}),
            "expected 4 numbers",
        ),
        (
            "/cache/query",
            json!({"embedding": [1, 0, 0, 0]}),
            "prompt: required",
        ),
    ];
    for (path, body, needle) in cases {
        let (st, v) = post(&s, path, &body);
        assert_eq!(st, 400, "{path} {body} → {v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains(needle),
            "{path} {body} → {v}"
        );
    }
    let (st, v) = s.json("POST", "/cache/put", Some("[1,2"));
    assert_eq!((st, v["code"].clone()), (400, json!("invalid_json")));
    let (st, _) = s.json("GET", "/cache/put", None);
    assert_eq!(st, 405);
    // Nothing was stored by the refused requests.
    let (_, v) = s.json("GET", "/cache/stats", None);
    assert_eq!(v["entries"], 0, "{v}");
}
