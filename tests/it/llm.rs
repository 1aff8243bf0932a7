//! The LLM interaction store against the real binary: ids, reads, listing
//! newest first with filters and a cursor walk that neither repeats nor
//! skips while new interactions arrive, visibility to `/query` and the
//! change feed, the feature flag, hostile input.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn llm_on(threads: usize) -> Opts {
    Opts::threads(threads)
        .env("THEMIS_FEATURES_LLM_STORE", "true")
        .env("THEMIS_FEATURES_CDC", "true")
}

fn store(c: &mut Client, i: usize, model: &str) -> String {
    let body = json!({
        "prompt": format!("prompt {i}"), "response": format!("response {i}"),
        "model_version": model, "prompt_template_id": if i.is_multiple_of(2) { "even" } else { "odd" },
        "token_count": i, "latency_ms": 12.5, "reasoning_chain": ["a", "b"], "metadata": {"i": i}
    });
    let r = c.request("POST", "/llm/interaction", Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["key"], format!("llm_interactions:{id}"));
    id
}

/// Every id of a listing, following `next_cursor` (pages of `limit`).
fn walk(s: &Server, query: &str, limit: usize, mut during: impl FnMut()) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut path = format!("/llm/interaction?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (st, v) = s.json("GET", &path, None);
        assert_eq!(st, 200, "{v}");
        let page = v["interactions"].as_array().unwrap();
        assert_eq!(v["count"], page.len());
        ids.extend(page.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        during();
        match v.get("next_cursor") {
            Some(c) => cursor = Some(c.as_str().unwrap().to_string()),
            None => return ids,
        }
    }
    panic!("the walk did not end");
}

#[test]
fn store_read_list_and_walk_while_new_interactions_arrive() {
    let dir = tempdir();
    let s = start_in(dir.path(), &llm_on(2));
    let mut c = s.client();
    let mut made = Vec::new();
    for i in 0..60 {
        made.push(store(&mut c, i, if i % 3 == 0 { "m-a" } else { "m-b" }));
    }
    // Ids made in order sort in order (one client: one core at a time).
    let mut sorted = made.clone();
    sorted.sort();
    assert_eq!(sorted, made);

    let (st, v) = s.json("GET", &format!("/llm/interaction/{}", made[7]), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["prompt"].clone(),
            v["token_count"].clone(),
            v["model_version"].clone()
        ),
        (json!("prompt 7"), json!(7), json!("m-b"))
    );
    assert!(v["timestamp_ms"].as_u64().is_some());

    // Newest first, in pages, with new interactions arriving during the
    // walk: every interaction that existed before appears exactly once.
    let mut extra = 0;
    let seen = walk(&s, "", 7, || {
        extra += 1;
        store(&mut c, 1000 + extra, "m-c");
    });
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an interaction was listed twice");
    let mut newest_first = made.clone();
    newest_first.reverse();
    assert_eq!(
        seen, newest_first,
        "the walk saw exactly the interactions before it, newest first"
    );

    // Filters.
    let a = walk(&s, "&model_version=m-a", 4, || {});
    assert_eq!(a.len(), 20);
    assert!(a
        .iter()
        .all(|id| made.iter().position(|m| m == id).unwrap() % 3 == 0));
    let even_a = walk(&s, "&model_version=m-a&prompt_template_id=even", 100, || {});
    assert_eq!(even_a.len(), 10);
    // A time window: from the 10th to the 19th interaction's millisecond.
    let ms = |id: &str| {
        s.json("GET", &format!("/llm/interaction/{id}"), None).1["timestamp_ms"]
            .as_u64()
            .unwrap()
    };
    let (from, to) = (ms(&made[10]), ms(&made[19]));
    let window = walk(&s, &format!("&from_ms={from}&to_ms={to}"), 1000, || {});
    for id in &window {
        let t = ms(id);
        assert!((from..=to).contains(&t), "{t} outside {from}..={to}");
    }
    for id in &made[10..20] {
        assert!(window.contains(id));
    }

    // Delete (admin).
    let (st, v) = s.json("DELETE", &format!("/llm/interaction/{}", made[0]), None);
    assert_eq!((st, v["deleted"].clone()), (200, json!(true)), "{v}");
    let (st, _) = s.json("GET", &format!("/llm/interaction/{}", made[0]), None);
    assert_eq!(st, 404);
    let (st, _) = s.json("DELETE", &format!("/llm/interaction/{}", made[0]), None);
    assert_eq!(st, 404);

    let metrics = String::from_utf8_lossy(&s.request("GET", "/metrics", None).body).into_owned();
    let stored = 60 + extra;
    assert!(
        metrics.contains(&format!("themis_llm_interactions_total {stored}")),
        "{stored}"
    );
    let tokens: usize = (0..60).sum::<usize>() + (1001..=1000 + extra).sum::<usize>();
    assert!(metrics.contains(&format!("themis_llm_tokens_total {tokens}")));

    // Acknowledged interactions survive kill -9.
    s.kill9();
    let s = start_in(dir.path(), &llm_on(2));
    let all = walk(&s, "", 1000, || {});
    assert_eq!(all.len(), stored - 1);
}

#[test]
fn interactions_are_entities_for_indexes_queries_and_the_change_feed() {
    let dir = tempdir();
    let s = start_in(dir.path(), &llm_on(2));
    let (st, v) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"llm_interactions","column":"model_version"}"#),
    );
    assert!(st == 200 || st == 201 || st == 202, "{st} {v}");
    let mut c = s.client();
    let ids: Vec<String> = (0..10)
        .map(|i| store(&mut c, i, if i < 4 { "gpt-x" } else { "gpt-y" }))
        .collect();
    wait_ready(&s);
    let (st, v) = s.json(
        "POST",
        "/query",
        Some(r#"{"table":"llm_interactions","predicates":[{"column":"model_version","value":"gpt-x"}],"return":"keys"}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(4), "{v}");
    let (st, v) = s.json(
        "POST",
        "/query",
        Some(r#"{"table":"llm_interactions","range":[{"column":"token_count","gte":7}],"return":"count"}"#),
    );
    assert_eq!((st, v["count"].clone()), (200, json!(3)), "{v}");
    let (st, v) = s.json(
        "GET",
        "/changefeed?table=llm_interactions&from_seq=0&limit=100",
        None,
    );
    assert_eq!(st, 200, "{v}");
    let keys: Vec<Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].clone())
        .collect();
    let want: Vec<Value> = ids
        .iter()
        .map(|i| json!(format!("llm_interactions:{i}")))
        .collect();
    assert_eq!(keys, want);
    // Writes through /entities are refused: the store owns the table.
    let (st, v) = s.json(
        "PUT",
        &format!("/entities/llm_interactions:{}", ids[0]),
        Some("{}"),
    );
    assert_eq!(st, 403, "{v}");
    let (st, _) = s.json(
        "DELETE",
        &format!("/entities/llm_interactions:{}", ids[0]),
        None,
    );
    assert_eq!(st, 403);
}

#[test]
fn the_flag_gates_every_route_and_bad_input_is_a_400() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    for (m, p) in [
        ("POST", "/llm/interaction"),
        ("GET", "/llm/interaction"),
        ("GET", "/llm/interaction/01J00000000000000000000000"),
        ("DELETE", "/llm/interaction/01J00000000000000000000000"),
    ] {
        let body = (m == "POST").then_some("{}");
        let (st, v) = s.json(m, p, body);
        assert_eq!(
            (st, v["feature"].clone()),
            (503, json!("features.llm_store")),
            "{m} {p} {v}"
        );
    }
    s.stop();
    let s = start_in(dir.path(), &llm_on(1));
    let ok = json!({"prompt": "p", "response": "r", "model_version": "m"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (without("prompt"), "prompt: required"),
        (without("response"), "response: required"),
        (without("model_version"), "model_version: required"),
        (with("prompt", json!(3)), "prompt: must be a string"),
        (with("token_count", json!(-1)), "token_count"),
        (with("token_count", json!(1.5)), "token_count"),
        (with("latency_ms", json!(-3)), "latency_ms"),
        (with("metadata", json!([1])), "metadata: must be an object"),
        (with("reasoning_chain", json!(5)), "reasoning_chain"),
        (
            with("model_version", json!("m".repeat(300))),
            "more than the limit",
        ),
        (
            with("response", json!("r".repeat((1 << 20) + 1))),
            "more than the limit",
        ),
        (with("nope", json!(1)), "unknown field"),
    ];
    for (body, needle) in cases {
        let (st, v) = s.json("POST", "/llm/interaction", Some(&body.to_string()));
        assert_eq!(st, 400, "{needle}: {v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains(needle),
            "{needle}: {v}"
        );
    }
    for path in [
        "/llm/interaction?cursor=nope",
        "/llm/interaction?cursor=zzzzzzzzzzzzzzzzzzzzzzzzzz",
        "/llm/interaction?limit=0",
        "/llm/interaction?limit=1001",
        "/llm/interaction?from_ms=x",
        "/llm/interaction?from_ms=5&to_ms=4",
        "/llm/interaction?colour=red",
        "/llm/interaction/not-an-id",
    ] {
        let (st, v) = s.json("GET", path, None);
        assert_eq!(st, 400, "{path}: {v}");
    }
    let (st, v) = s.json("GET", "/llm/interaction", None);
    assert_eq!((st, v), (200, json!({"interactions": [], "count": 0})));
}
