//! Time series against the real binary: ingest on every core, queries and
//! aggregates equal to a brute-force model, crash safety, retention that
//! deletes exactly the expired points, the feature flag, hostile input.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn ts_on(threads: usize) -> Opts {
    Opts::threads(threads).env("THEMIS_FEATURES_TIMESERIES", "true")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    s.json("POST", path, Some(&body.to_string()))
}

/// A small deterministic generator (no dependency on a RNG crate's output).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Every point of `metric` in `[from, to)`, following `next_cursor` with
/// small pages: (entity, ts) → value.
fn read_all(s: &Server, metric: &str, from: i64, to: i64) -> BTreeMap<(String, i64), f64> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut q = json!({"metric": metric, "from_ms": from, "to_ms": to, "limit": 37});
        if let Some(c) = &cursor {
            q["cursor"] = c.clone().into();
        }
        let (st, v) = post(s, "/ts/query", &q);
        assert_eq!(st, 200, "{v}");
        let mut n = 0;
        for series in v["series"].as_array().unwrap() {
            let e = series["entity"].as_str().unwrap().to_string();
            for p in series["points"].as_array().unwrap() {
                let prev = out.insert((e.clone(), p[0].as_i64().unwrap()), p[1].as_f64().unwrap());
                assert!(prev.is_none(), "a point was returned twice");
                n += 1;
            }
        }
        assert_eq!(v["count"], n);
        match v.get("next_cursor") {
            Some(c) => {
                assert_eq!(n, 37, "a page with a cursor is full");
                cursor = Some(c.as_str().unwrap().to_string());
            }
            None => return out,
        }
    }
    panic!("pagination did not end");
}

#[test]
fn ingest_on_every_core_then_query_and_aggregate_equal_a_model() {
    let dir = tempdir();
    let s = start_in(dir.path(), &ts_on(2));
    let mut rng = Lcg(42);
    // (entity, ts) → value; last write wins. Entities e0..e7, host tag
    // h0/h1 by entity parity; timestamps in [-5000, 5000), out of order,
    // with duplicates across and within batches.
    let mut model: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let mut clients = [s.client(), s.client(), s.client()];
    for batch in 0..12 {
        let mut points = Vec::new();
        for _ in 0..250 {
            let e = rng.next() % 8;
            let ts = (rng.next() % 10_000) as i64 - 5_000;
            let v = (rng.next() % 2_000) as f64 - 1_000.0;
            points.push(json!({"metric": "cpu.load", "entity": format!("e{e}"),
                "tags": {"host": format!("h{}", e % 2)}, "timestamp_ms": ts, "value": v}));
            model.insert((format!("e{e}"), ts), v);
        }
        let r = clients[batch % 3].request(
            "POST",
            "/ts/put",
            Some(&json!({"points": points}).to_string()),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["stored"], 250);
        assert_eq!(r.json()["rejected"], 0);
    }
    // Another metric that must not leak into cpu.load's answers.
    let (st, _) = post(
        &s,
        "/ts/put",
        &json!({"metric": "cpu.load2", "entity": "e0", "value": 1, "timestamp_ms": 0}),
    );
    assert_eq!(st, 200);

    assert_eq!(read_all(&s, "cpu.load", -5_000, 5_000), model);
    let window: BTreeMap<_, _> = model
        .iter()
        .filter(|((_, t), _)| (-1234..777).contains(t))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(read_all(&s, "cpu.load", -1234, 777), window);

    // Aggregates grouped by host, 7 buckets of 1000 ms from -3500.
    let (from, to, interval) = (-3_500i64, 3_500i64, 1_000i64);
    let (st, v) = post(
        &s,
        "/ts/aggregate",
        &json!({"metric": "cpu.load", "from_ms": from, "to_ms": to, "interval_ms": interval,
                "group_by": ["host"], "aggregations": ["min", "max", "sum", "count", "avg"]}),
    );
    assert_eq!(st, 200, "{v}");
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for g in groups {
        let host = g["tags"]["host"].as_str().unwrap();
        assert_eq!(g["series"], 4);
        let mut expect: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for ((e, ts), val) in &model {
            let h = format!("h{}", e[1..].parse::<u64>().unwrap() % 2);
            if h == host && (from..to).contains(ts) {
                expect
                    .entry(from + (ts - from).div_euclid(interval) * interval)
                    .or_default()
                    .push(*val);
            }
        }
        let buckets = g["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), expect.len());
        for (b, (start, vals)) in buckets.iter().zip(expect) {
            assert_eq!(b["start_ms"], start);
            assert_eq!(b["count"], vals.len());
            let sum: f64 = vals.iter().sum();
            assert_eq!(b["sum"].as_f64().unwrap(), sum);
            assert_eq!(
                b["min"].as_f64().unwrap(),
                vals.iter().cloned().fold(f64::MAX, f64::min)
            );
            assert_eq!(
                b["max"].as_f64().unwrap(),
                vals.iter().cloned().fold(f64::MIN, f64::max)
            );
            // serde_json's default float parsing may be off by one ulp.
            let avg = b["avg"].as_f64().unwrap();
            assert!((avg - sum / vals.len() as f64).abs() < 1e-9, "{avg}");
        }
    }
    // first/last of one series over the whole range (one bucket).
    let (st, v) = post(
        &s,
        "/ts/aggregate",
        &json!({"metric": "cpu.load", "entity": "e3", "from_ms": -5000, "to_ms": 5000,
                "aggregations": ["first", "last", "count"]}),
    );
    assert_eq!(st, 200, "{v}");
    let e3: Vec<(i64, f64)> = model
        .iter()
        .filter(|((e, _), _)| e == "e3")
        .map(|((_, t), v)| (*t, *v))
        .collect();
    let b = &v["groups"][0]["buckets"][0];
    assert_eq!(b["start_ms"], -5000);
    assert_eq!(b["count"], e3.len());
    assert_eq!(b["first"].as_f64().unwrap(), e3[0].1);
    assert_eq!(b["last"].as_f64().unwrap(), e3[e3.len() - 1].1);

    // Over 4 whole minutes the aggregate reads per-minute rollups, kept
    // up to date through the overwrites above: the same answer.
    let (st, v) = post(
        &s,
        "/ts/aggregate",
        &json!({"metric": "cpu.load", "from_ms": -120_000, "to_ms": 120_000,
                "group_by": ["host"], "aggregations": ["min", "max", "sum", "count"]}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["rollups_read"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["points_read"], 0, "{v}");
    for g in v["groups"].as_array().unwrap() {
        let host = g["tags"]["host"].as_str().unwrap();
        let vals: Vec<f64> = model
            .iter()
            .filter(|((e, _), _)| format!("h{}", e[1..].parse::<u64>().unwrap() % 2) == host)
            .map(|(_, v)| *v)
            .collect();
        let b = &g["buckets"][0];
        assert_eq!(b["count"], vals.len());
        assert_eq!(b["sum"].as_f64().unwrap(), vals.iter().sum::<f64>());
        assert_eq!(
            b["min"].as_f64().unwrap(),
            vals.iter().cloned().fold(f64::MAX, f64::min)
        );
        assert_eq!(
            b["max"].as_f64().unwrap(),
            vals.iter().cloned().fold(f64::MIN, f64::max)
        );
    }

    // Tag filter.
    let (_, v) = post(
        &s,
        "/ts/query",
        &json!({"metric": "cpu.load", "tags": {"host": "h1"},
        "from_ms": -5000, "to_ms": 5000, "limit": 100000}),
    );
    let expect = model
        .keys()
        .filter(|(e, _)| e[1..].parse::<u64>().unwrap() % 2 == 1)
        .count();
    assert_eq!(v["count"], expect);

    let (st, v) = s.json("GET", "/ts/metrics", None);
    assert_eq!(st, 200);
    assert_eq!(
        v["metrics"],
        json!([{"metric": "cpu.load", "series": 8}, {"metric": "cpu.load2", "series": 1}])
    );
}

#[test]
fn acknowledged_points_survive_kill_9() {
    let dir = tempdir();
    let s = start_in(dir.path(), &ts_on(2));
    let mut c = s.client();
    let mut acked = BTreeMap::new();
    for i in 0..200i64 {
        let body = json!({"metric": "crash", "entity": format!("e{}", i % 7), "timestamp_ms": i, "value": i});
        let r = c.request("POST", "/ts/put", Some(&body.to_string()));
        assert_eq!(r.status, 200);
        acked.insert((format!("e{}", i % 7), i), i as f64);
    }
    s.kill9();
    let s = start_in(dir.path(), &ts_on(2));
    assert_eq!(read_all(&s, "crash", 0, 1000), acked);
    // Writing to existing series after the restart adds no new series.
    let (st, _) = post(
        &s,
        "/ts/put",
        &json!({"metric": "crash", "entity": "e1", "value": 5}),
    );
    assert_eq!(st, 200);
    // Overwriting a stored point after the restart keeps the rollups equal
    // to the points.
    let (st, _) = post(
        &s,
        "/ts/put",
        &json!({"metric": "crash", "entity": "e1", "timestamp_ms": 1, "value": 1000}),
    );
    assert_eq!(st, 200);
    acked.insert(("e1".into(), 1), 1000.0);
    let (_, v) = post(
        &s,
        "/ts/aggregate",
        &json!({"metric": "crash", "from_ms": -120_000, "to_ms": 120_000,
        "aggregations": ["count", "sum", "max"]}),
    );
    assert_eq!(v["points_read"], 0, "{v}");
    let b = &v["groups"][0]["buckets"][0];
    assert_eq!(b["count"], acked.len());
    assert_eq!(b["sum"].as_f64().unwrap(), acked.values().sum::<f64>());
    assert_eq!(b["max"], 1000.0);
    assert_eq!(
        s.json("GET", "/ts/metrics", None).1["metrics"][0]["series"],
        7
    );
}

fn retention_server(dir: &std::path::Path, faults: Option<&str>) -> Server {
    std::fs::write(
        dir.join("themis.yaml"),
        "features:\n  timeseries: true\n  retention:\n    enabled: true\n    interval_hours: 1\n    policies_path: ./policies.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("policies.yaml"),
        "policies:\n  - {name: old_hour, metric: 'old.*', max_age: 1h}\n",
    )
    .unwrap();
    let mut opts = Opts::threads(2).arg("--config").arg("themis.yaml");
    if let Some(f) = faults {
        opts = opts.env("THEMIS_TEST_FAULTS", f);
    }
    start_in(dir, &opts)
}

/// Points at now-3h..now-2h (expired under a 1 h policy) and
/// now-30min..now (kept), for metric `m` and `series` entities.
fn put_aged(s: &Server, m: &str, series: usize) -> (usize, usize) {
    let now = now_ms();
    let mut points = Vec::new();
    let (mut old, mut young) = (0, 0);
    for e in 0..series {
        for k in 0..50i64 {
            points.push(json!({"metric": m, "entity": format!("e{e}"), "value": k,
                "timestamp_ms": now - 3 * 3_600_000 + k * 60_000}));
            old += 1;
            points.push(json!({"metric": m, "entity": format!("e{e}"), "value": k,
                "timestamp_ms": now - 1_800_000 + k * 30_000}));
            young += 1;
        }
    }
    let (st, v) = post(s, "/ts/put", &json!({"points": points}));
    assert_eq!(st, 200, "{v}");
    (old, young)
}

fn count(s: &Server, m: &str) -> u64 {
    let (_, v) = post(
        s,
        "/ts/query",
        &json!({"metric": m, "from_ms": 0, "to_ms": now_ms() + 3_600_000, "limit": 100000}),
    );
    v["count"].as_u64().unwrap()
}

#[test]
fn retention_deletes_exactly_the_expired_points_and_a_dry_run_nothing() {
    let dir = tempdir();
    let s = retention_server(dir.path(), None);
    let (old, young) = put_aged(&s, "old.cpu", 6);
    put_aged(&s, "keep.cpu", 2);
    let (st, v) = post(&s, "/retention/run", &json!({"dry_run": true}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deleted_total"], old);
    assert_eq!(v["deleted_by_policy"], json!({"old_hour": old}));
    assert_eq!(
        count(&s, "old.cpu"),
        (old + young) as u64,
        "a dry run deletes nothing"
    );

    let (st, v) = post(&s, "/retention/run", &json!({}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deleted_total"], old);
    assert_eq!(v["series_cut"], 6);
    assert_eq!(count(&s, "old.cpu"), young as u64);
    assert_eq!(count(&s, "keep.cpu"), 200, "no policy: kept");
    let (_, v) = post(&s, "/retention/run", &json!({}));
    assert_eq!(v["deleted_total"], 0);

    let (st, v) = s.json("GET", "/ts/retention", None);
    assert_eq!(st, 200);
    assert_eq!(v["enabled"], true);
    assert_eq!(v["policies"][0]["name"], "old_hour");
    assert_eq!(v["policies"][0]["max_age_ms"], 3_600_000);
    assert_eq!(v["changefeed"]["retention_hours"], 168);
    assert_eq!(
        v["last_run"]["deleted_total"], 0,
        "the last run deleted nothing"
    );
    assert!(v["last_run"]["finished_at_ms"].as_i64().unwrap() > 0);
    let metrics = String::from_utf8(s.request("GET", "/metrics", None).body).unwrap();
    assert!(
        metrics.contains(&format!(
            "themis_retention_deleted_total{{policy=\"old_hour\"}} {old}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("themis_retention_last_run_timestamp_seconds"));

    // A per-metric setting overrides the file; it survives a restart.
    let (st, _) = s.json(
        "PUT",
        "/ts/config",
        Some(r#"{"metrics": {"keep.cpu": {"retention_hours": 1}}}"#),
    );
    assert_eq!(st, 200);
    let (_, v) = post(&s, "/retention/run", &json!({}));
    assert_eq!(v["deleted_by_policy"], json!({"config:keep.cpu": 100}));
    assert_eq!(count(&s, "keep.cpu"), 100);
    s.kill9();
    let s = retention_server(dir.path(), None);
    assert_eq!(
        s.json("GET", "/ts/config", None).1,
        json!({"default_retention_hours": null, "metrics": {"keep.cpu": {"retention_hours": 1}}, "rollup_intervals": ["1m", "1h"]})
    );
    assert_eq!(count(&s, "old.cpu"), young as u64);
    // A bad body is a 400 naming the field.
    let (st, v) = post(&s, "/retention/run", &json!({"dry_run": "yes"}));
    assert_eq!(st, 400);
    assert!(v["message"].as_str().unwrap().contains("dry_run"), "{v}");
}

#[test]
fn background_retention_runs_on_every_core() {
    let dir = tempdir();
    let s = retention_server(dir.path(), Some("retention_interval_ms=100"));
    let (_, young) = put_aged(&s, "old.mem", 8);
    let end = Instant::now() + Duration::from_secs(20);
    while count(&s, "old.mem") != young as u64 {
        assert!(Instant::now() < end, "background pass did not delete");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = s.json("GET", "/ts/retention", None).1;
    assert_eq!(v["last_run"]["per_core"].as_array().unwrap().len(), 2);
}

#[test]
fn a_bad_policies_file_refuses_start_with_the_reason() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("themis.yaml"),
        "features:\n  retention:\n    enabled: true\n    policies_path: ./policies.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies.yaml"),
        "policies:\n  - {name: a, metric: x, max_age: 10y}\n",
    )
    .unwrap();
    let out = command(dir.path())
        .args(["--port", "0", "--db", "data", "--config", "themis.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("policies[0].max_age"), "{text}");
}

#[test]
fn the_feature_flag_gates_every_route_at_runtime() {
    let dir = tempdir();
    let s = start_in(dir.path(), &Opts::threads(1));
    for (m, p, b) in [
        ("POST", "/ts/put", r#"{"metric":"m","value":1}"#),
        ("POST", "/ts/query", "{}"),
        ("POST", "/ts/aggregate", "{}"),
        ("GET", "/ts/metrics", ""),
        ("GET", "/ts/config", ""),
        ("PUT", "/ts/config", "{}"),
        ("GET", "/ts/retention", ""),
    ] {
        let (st, v) = s.json(m, p, (!b.is_empty()).then_some(b));
        assert_eq!(st, 503, "{m} {p}");
        assert_eq!(v["code"], "feature_disabled");
        assert_eq!(v["feature"], "features.timeseries");
    }
    let (st, v) = s.json("POST", "/retention/run", Some("{}"));
    assert_eq!(
        (st, v["feature"].as_str()),
        (503, Some("features.retention.enabled"))
    );
    let (st, _) = s.json(
        "POST",
        "/config",
        Some(r#"{"features":{"timeseries":true}}"#),
    );
    assert_eq!(st, 200);
    let (st, v) = s.json("POST", "/ts/put", Some(r#"{"metric":"m","value":1}"#));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stored"], 1);
}

#[test]
fn hostile_input_gets_a_400_naming_the_item_and_stores_nothing_unreported() {
    let dir = tempdir();
    let s = start_in(dir.path(), &ts_on(2));
    let too_many_tags: serde_json::Map<String, Value> = (0..17)
        .map(|i| (format!("t{i}"), Value::from("v")))
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        ("/ts/put", "not json".into(), "malformed JSON"),
        ("/ts/put", r#"{"metric":"m","value":1e999}"#.into(), ""),
        ("/ts/put", r#"{"metric":"m","value":"NaN"}"#.into(), "value: must be a finite number"),
        ("/ts/put", r#"{"metric":"m"}"#.into(), "value: required"),
        ("/ts/put", r#"{"metric":"","value":1}"#.into(), "metric"),
        ("/ts/put", r#"{"metric":"m","value":1,"timestamp_ms":1e30}"#.into(), "timestamp_ms"),
        ("/ts/put", r#"{"metric":"m","value":1,"timestamp_ms":253402300800000}"#.into(), "timestamp_ms"),
        ("/ts/put", json!({"metric":"m","value":1,"tags":too_many_tags}).to_string(), "at most 16 tags"),
        ("/ts/put", json!({"metric":"m","value":1,"tags":{"k":"v".repeat(300)}}).to_string(), "tag \"k\""),
        ("/ts/put", r#"{"metric":"m","value":1,"tags":{"k":3}}"#.into(), "tag \"k\""),
        ("/ts/put", r#"{"metric":"m","value":1,"colour":"red"}"#.into(), "unknown field"),
        ("/ts/put", r#"{"points":[]}"#.into(), "points: must not be empty"),
        ("/ts/put", r#"{"points":3}"#.into(), "points"),
        ("/ts/put", json!({"points": vec![json!({"metric":"m","value":1}); 10_001]}).to_string(), "at most 10000"),
        ("/ts/query", r#"{"metric":"m","from_ms":10,"to_ms":0}"#.into(), "from_ms (10) is after to_ms"),
        ("/ts/query", r#"{"metric":"m","to_ms":0}"#.into(), "from_ms: required"),
        ("/ts/query", r#"{"metric":"m","from_ms":0,"to_ms":1,"limit":0}"#.into(), "limit"),
        ("/ts/query", r#"{"metric":"m","from_ms":0,"to_ms":1,"cursor":"zz"}"#.into(), "cursor"),
        ("/ts/query", r#"{"from_ms":0,"to_ms":1}"#.into(), "metric"),
        ("/ts/aggregate", r#"{"metric":"m","from_ms":0,"to_ms":100000000,"interval_ms":1,"aggregations":["sum"]}"#.into(), "buckets"),
        ("/ts/aggregate", r#"{"metric":"m","from_ms":0,"to_ms":1,"aggregations":["median"]}"#.into(), "median"),
        ("/ts/aggregate", r#"{"metric":"m","from_ms":0,"to_ms":1}"#.into(), "aggregations"),
        ("/ts/aggregate", r#"{"metric":"m","from_ms":0,"to_ms":1,"interval_ms":0,"aggregations":["sum"]}"#.into(), "interval_ms"),
        ("/ts/aggregate", r#"{"metric":"m","from_ms":0,"to_ms":1,"group_by":"host","aggregations":["sum"]}"#.into(), "group_by"),
    ];
    for (path, body, needle) in cases {
        let r = s.request("POST", path, Some(&body));
        let v = r.json();
        assert_eq!(r.status, 400, "{path} {body:.80}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{path} {body:.80}: {v}"
        );
    }
    let (st, v) = s.json(
        "PUT",
        "/ts/config",
        Some(r#"{"default_retention_hours": -1}"#),
    );
    assert_eq!(st, 400, "{v}");
    // A batch: the good series is stored, the series with a bad point is
    // rejected entirely, each rejection named.
    let (st, v) = post(
        &s,
        "/ts/put",
        &json!({"points": [
            {"metric": "h", "entity": "good", "value": 1, "timestamp_ms": 1},
            {"metric": "h", "entity": "bad", "value": 1, "timestamp_ms": 1},
            {"metric": "h", "entity": "bad", "value": "x", "timestamp_ms": 2},
            {"metric": "h", "entity": "good", "value": 2, "timestamp_ms": 2},
        ]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stored"], 2);
    assert_eq!(v["rejected"], 2);
    assert_eq!(v["rejections"][0]["index"], 1);
    assert!(
        v["rejections"][0]["error"]
            .as_str()
            .unwrap()
            .contains("point #2"),
        "{v}"
    );
    assert_eq!(v["rejections"][1]["index"], 2);
    let all = read_all(&s, "h", 0, 10);
    assert_eq!(
        all.keys().map(|k| k.0.as_str()).collect::<Vec<_>>(),
        vec!["good", "good"]
    );
    // Nothing was stored by the refused requests.
    assert_eq!(
        s.json("GET", "/ts/metrics", None).1["metrics"],
        json!([{"metric": "h", "series": 1}])
    );
}

/// Sends `body` to `POST /api/v2/write?{query}` with optional gzip.
fn write_lines(s: &Server, query: &str, body: &[u8], gzip: bool) -> Resp {
    let mut c = s.client();
    let mut head = format!(
        "POST /api/v2/write?{query} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        body.len()
    );
    if gzip {
        head.push_str("Content-Encoding: gzip\r\n");
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    c.send_raw(&req);
    c.read_response(false)
}

#[test]
fn line_protocol_plain_and_gzip_and_bad_lines() {
    use std::io::Write;
    let dir = tempdir();
    let s = start_in(dir.path(), &ts_on(2));
    let r = write_lines(
        &s,
        "org=o&bucket=b&precision=ns",
        b"cpu,host=web1,dc=eu usage=1.5,idle=98i 1700000000001000000\ncpu,host=web2 usage=2 1700000000002000000\n",
        false,
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let (_, v) = post(
        &s,
        "/ts/query",
        &json!({"metric": "cpu.usage", "from_ms": 0, "to_ms": 1_800_000_000_000i64}),
    );
    assert_eq!(
        v["series"],
        json!([
            {"metric": "cpu.usage", "entity": "web1", "tags": {"dc": "eu"}, "points": [[1_700_000_000_001i64, 1.5]]},
            {"metric": "cpu.usage", "entity": "web2", "tags": {}, "points": [[1_700_000_000_002i64, 2.0]]},
        ])
    );
    // 5,000 lines, gzip, ms precision.
    let mut text = String::new();
    for i in 0..5_000 {
        text.push_str(&format!("mem,host=h{} used={i} {}\n", i % 10, 1_000 + i));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    let r = write_lines(&s, "precision=ms", &gz.finish().unwrap(), true);
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let (_, v) = post(
        &s,
        "/ts/aggregate",
        &json!({"metric": "mem.used", "from_ms": 0, "to_ms": 10_000, "aggregations": ["count", "sum"]}),
    );
    assert_eq!(v["groups"][0]["buckets"][0]["count"], 5_000);
    assert_eq!(
        v["groups"][0]["buckets"][0]["sum"],
        (0..5_000).sum::<i64>() as f64
    );
    // A bad line: 400 naming it, nothing of the request stored.
    let before = s.json("GET", "/ts/metrics", None).1;
    for (query, body, needle) in [
        (
            "",
            "ok v=1\nbad v=\"text\"\n",
            "line 2: field \"v\": string values",
        ),
        ("", "ok v=1\nbad\n", "line 2: no fields"),
        ("precision=h", "ok v=1\n", "precision"),
        ("db=x", "ok v=1\n", "unknown query parameter"),
        (
            "precision=s",
            "ok v=1 99999999999999999\n",
            "line 1: timestamp",
        ),
    ] {
        let r = write_lines(&s, query, body.as_bytes(), false);
        assert_eq!(r.status, 400, "{query} {body}");
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{msg}");
    }
    let r = write_lines(&s, "", b"not gzip at all", true);
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("gzip"));
    assert_eq!(s.json("GET", "/ts/metrics", None).1, before);
}

#[test]
fn sighup_reloads_the_policies_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempdir();
    let s = retention_server(dir.path(), None);
    let name = |s: &Server| s.json("GET", "/ts/retention", None).1["policies"][0]["name"].clone();
    assert_eq!(name(&s), "old_hour");
    std::fs::write(
        dir.path().join("policies.yaml"),
        "policies:\n  - {name: x, metric: m, max_age: 1 day}\n",
    )
    .unwrap();
    s.signal("HUP");
    let out = s.wait_output("retention policies not reloaded", Duration::from_secs(10));
    assert!(out.contains("policies[0].max_age"), "{out}");
    assert_eq!(name(&s), "old_hour");
    std::fs::write(
        dir.path().join("policies.yaml"),
        "policies:\n  - {name: new_one, metric: m, max_age: 2d}\n",
    )
    .unwrap();
    s.signal("HUP");
    let end = Instant::now() + Duration::from_secs(10);
    while name(&s) != "new_one" {
        assert!(Instant::now() < end, "not reloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rollups stay equal to the raw points through overwrites and a
/// retention cut inside a minute.
#[test]
fn rollups_match_raw_points_after_overwrites_and_a_cut_mid_minute() {
    let dir = tempdir();
    let s = retention_server(dir.path(), None);
    let cut = now_ms() - 3_600_000;
    for round in 0..2 {
        let points: Vec<Value> = (-400..400)
            .filter(|k| round == 0 || k % 3 == 0)
            .map(|k| {
                json!({"metric": "old.dense", "entity": "e", "timestamp_ms": cut + k * 250,
                            "value": (k * 7 + round * 1000) % 101})
            })
            .collect();
        let (st, v) = post(&s, "/ts/put", &json!({"points": points}));
        assert_eq!(st, 200, "{v}");
    }
    let (st, v) = post(&s, "/retention/run", &json!({}));
    assert_eq!(st, 200, "{v}");
    let deleted = v["deleted_total"].as_u64().unwrap();
    assert!(deleted > 0 && deleted < 800, "{v}");
    let raw = read_all(&s, "old.dense", cut - 200_000, cut + 200_000);
    assert_eq!(raw.len() as u64, 800 - deleted);
    let (from, to, interval) = (
        cut - 200_000 - cut.rem_euclid(60_000),
        cut + 200_000,
        120_000,
    );
    let (st, v) = post(
        &s,
        "/ts/aggregate",
        &json!({"metric": "old.dense", "from_ms": from, "to_ms": to,
        "interval_ms": interval, "aggregations": ["count", "sum", "min", "max", "first", "last"]}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["rollups_read"].as_u64().unwrap() > 0, "{v}");
    let mut expect: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for ((_, ts), val) in &raw {
        expect
            .entry(from + (ts - from).div_euclid(interval) * interval)
            .or_default()
            .push((*ts, *val));
    }
    let buckets = v["groups"][0]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), expect.len(), "{v}");
    for (b, (start, pts)) in buckets.iter().zip(expect) {
        assert_eq!(b["start_ms"], start);
        assert_eq!(b["count"], pts.len());
        assert_eq!(
            b["sum"].as_f64().unwrap(),
            pts.iter().map(|p| p.1).sum::<f64>()
        );
        assert_eq!(
            b["min"].as_f64().unwrap(),
            pts.iter().map(|p| p.1).fold(f64::MAX, f64::min)
        );
        assert_eq!(
            b["max"].as_f64().unwrap(),
            pts.iter().map(|p| p.1).fold(f64::MIN, f64::max)
        );
        assert_eq!(b["first"].as_f64().unwrap(), pts[0].1);
        assert_eq!(b["last"].as_f64().unwrap(), pts[pts.len() - 1].1);
    }
}

/// An entity policy deletes through the write pipeline: no index entry is
/// left behind and every delete is a change event.
#[test]
fn entity_policies_delete_through_the_write_pipeline() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("themis.yaml"),
        "features:\n  cdc: true\n  timeseries: true\n  retention:\n    enabled: true\n    policies_path: ./policies.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies.yaml"),
        "policies:\n  - {name: old_logs, table: logs, timestamp_field: at, max_age: 1h}\n",
    )
    .unwrap();
    let s = start_in(
        dir.path(),
        &Opts::threads(2).arg("--config").arg("themis.yaml"),
    );
    let (st, _) = s.json(
        "POST",
        "/index/create",
        Some(r#"{"table":"logs","column":"level"}"#),
    );
    assert!(st == 200 || st == 202, "{st}");
    wait_ready(&s);
    let now = now_ms();
    for i in 0..50 {
        let at: Value = match i {
            0..20 => (now - 7_200_000).into(),
            20..45 => now.into(),
            _ => "yesterday".into(), // not a number: kept
        };
        let doc = json!({"level": if i % 2 == 0 { "info" } else { "warn" }, "at": at});
        let r = s.request(
            "PUT",
            &format!("/entities/logs:{i}"),
            Some(&doc.to_string()),
        );
        assert!(r.status < 300);
    }
    s.request(
        "PUT",
        "/entities/other:1",
        Some(&json!({"at": 0}).to_string()),
    );
    let latest = s.json("GET", "/changefeed/stats", None).1["latest_sequence"]
        .as_u64()
        .unwrap();

    let (_, v) = post(&s, "/retention/run", &json!({"dry_run": true}));
    assert_eq!(v["deleted_by_policy"], json!({"old_logs": 20}), "{v}");
    assert_eq!(s.request("GET", "/entities/logs:0", None).status, 200);

    let (_, v) = post(&s, "/retention/run", &json!({}));
    assert_eq!(v["deleted_by_policy"], json!({"old_logs": 20}), "{v}");
    for i in 0..50 {
        let st = s
            .request("GET", &format!("/entities/logs:{i}"), None)
            .status;
        assert_eq!(st, if i < 20 { 404 } else { 200 }, "logs:{i}");
    }
    assert_eq!(s.request("GET", "/entities/other:1", None).status, 200);
    let (_, q) = post(
        &s,
        "/query",
        &json!({"table": "logs", "predicates": [{"column": "level", "value": "info"}], "return": "count"}),
    );
    assert_eq!(q["count"], 15, "{q}");
    // Each delete is a change event.
    let feed = s
        .json(
            "GET",
            &format!("/changefeed?from_seq={latest}&limit=100"),
            None,
        )
        .1;
    let deletes: Vec<&str> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "DELETE")
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(deletes.len(), 20, "{feed}");
    // Index entries equal the entities.
    let (st, v) = post(&s, "/api/admin/verify", &json!({}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
}

/// A large single-series write (100,000 points, run by the owner's series
/// writer off the reactor) and small writes of the same series on another
/// connection at the same time: whatever the interleaving, every point is
/// stored once, rollups equal the points (minute and hour buckets read
/// from rollups give the brute-force answer), and the core kept serving.
#[test]
fn a_large_series_write_and_small_ones_of_the_same_series_stay_consistent() {
    let dir = tempdir();
    let s = start_in(dir.path(), &ts_on(1));
    let n = 100_000i64;
    let mut text = String::new();
    for i in 0..n {
        // One point every 100 ms from -1 h: negative timestamps, hour edges.
        text.push_str(&format!(
            "big,host=a v={} {}\n",
            i % 97,
            -3_600_000 + i * 100
        ));
    }
    let big = {
        let mut c = s.client();
        let body = text.into_bytes();
        std::thread::spawn(move || {
            let mut req = format!(
                "POST /api/v2/write?precision=ms HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(&body);
            c.send_raw(&req);
            c.read_response(false).status
        })
    };
    // Small writes of the same series: overwrites of some of its
    // timestamps and appends after it.
    let mut c = s.client();
    for k in 0..200i64 {
        let ts = if k % 2 == 0 {
            -3_600_000 + k * 37 * 100
        } else {
            -3_600_000 + n * 100 + k
        };
        let body = json!({"metric": "big.v", "entity": "a", "timestamp_ms": ts, "value": 1000 + k});
        let r = c.request("POST", "/ts/put", Some(&body.to_string()));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["stored"], 1);
    }
    assert_eq!(big.join().unwrap(), 204);
    let (from, to) = (-7_200_000i64, 7_200_000i64);
    let raw = read_all_big(&s, from, to);
    assert_eq!(raw.len() as i64, n + 100);
    for (interval, rollups) in [
        (None, true),
        (Some(3_600_000i64), true),
        (Some(600_000), true),
        (Some(150_000), true),
        (Some(2_000), false),
    ] {
        let mut body = json!({"metric": "big.v", "from_ms": from, "to_ms": to,
            "aggregations": ["count", "sum", "min", "max", "first", "last"]});
        if let Some(i) = interval {
            body["interval_ms"] = i.into();
        }
        let (st, v) = post(&s, "/ts/aggregate", &body);
        assert_eq!(st, 200, "{v}");
        if rollups {
            assert!(v["rollups_read"].as_u64().unwrap() > 0, "{interval:?}: {v}");
        }
        let step = interval.unwrap_or(to - from);
        let mut expect: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
        for (ts, val) in &raw {
            expect
                .entry(from + (ts - from).div_euclid(step) * step)
                .or_default()
                .push((*ts, *val));
        }
        let buckets = v["groups"][0]["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), expect.len(), "{interval:?}");
        for (b, (start, pts)) in buckets.iter().zip(expect) {
            assert_eq!(b["start_ms"], start, "{interval:?}");
            assert_eq!(b["count"], pts.len(), "{interval:?} {start}");
            assert_eq!(
                b["sum"].as_f64().unwrap(),
                pts.iter().map(|p| p.1).sum::<f64>()
            );
            assert_eq!(
                b["min"].as_f64().unwrap(),
                pts.iter().map(|p| p.1).fold(f64::MAX, f64::min)
            );
            assert_eq!(
                b["max"].as_f64().unwrap(),
                pts.iter().map(|p| p.1).fold(f64::MIN, f64::max)
            );
            assert_eq!(b["first"].as_f64().unwrap(), pts[0].1);
            assert_eq!(b["last"].as_f64().unwrap(), pts[pts.len() - 1].1);
        }
    }
    let (st, v) = s.json("GET", "/stats", None);
    assert_eq!(st, 200, "{v}");
}

/// Every point of series `big.v` in `[from, to)`: ts → value (large pages).
fn read_all_big(s: &Server, from: i64, to: i64) -> BTreeMap<i64, f64> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = json!({"metric": "big.v", "from_ms": from, "to_ms": to, "limit": 50_000});
        if let Some(c) = &cursor {
            q["cursor"] = c.clone().into();
        }
        let (st, v) = post(s, "/ts/query", &q);
        assert_eq!(st, 200, "{v}");
        for series in v["series"].as_array().unwrap() {
            for p in series["points"].as_array().unwrap() {
                let prev = out.insert(p[0].as_i64().unwrap(), p[1].as_f64().unwrap());
                assert!(prev.is_none(), "a point was returned twice");
            }
        }
        match v.get("next_cursor") {
            Some(c) => cursor = Some(c.as_str().unwrap().to_string()),
            None => return out,
        }
    }
}
