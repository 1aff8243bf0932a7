//! API keys, roles, table limits and cross-site protections, end to end:
//! every route of the route table is called with every kind of caller.

use crate::common::*;
use std::path::Path;
use std::time::{Duration, Instant};
use themis::http::dispatch::TABLE;
use themis::http::routes::{PathPattern, Role, RouteId};

const READ: &str = "readonly-key-0123456789";
const WRITE: &str = "readwrite-key-0123456789";
const ADMIN: &str = "admin-key-0123456789abcdef";
const LIMITED: &str = "limited-key-0123456789";
const TWO_TABLES: &str = "two-tables-key-0123456789";

fn hex_sha256(key: &str) -> String {
    themis::http::auth::sha256(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `config.yaml` in `dir` and returns the options that use it.
fn with_config(dir: &Path, yaml: &str) -> Opts {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    Opts::threads(1).arg("--config").arg(path.to_str().unwrap())
}

fn keys_yaml(extra: &str) -> String {
    format!(
        "logging: {{level: debug}}\nserver:\n  enable_auth: true\n  api_keys:\n    - {{key: {READ}, role: readonly}}\n    - {{key: {WRITE}, role: readwrite, name: writer}}\n    - {{key_sha256: {}, role: admin}}\n    - {{key: {LIMITED}, role: readwrite, tables: [a]}}\n    - {{key: {TWO_TABLES}, role: readonly, tables: [a, c]}}\n{extra}",
        hex_sha256(ADMIN)
    )
}

/// A request for every method of every route, with a body its handler can
/// read (what it answers past the auth check does not matter here).
fn requests() -> Vec<(RouteId, Role, &'static str, String, Option<&'static str>)> {
    let mut out = Vec::new();
    for r in TABLE.rows() {
        let path = match r.path {
            PathPattern::Exact(p) => p.to_string(),
            PathPattern::Prefix(p) => format!("{p}sec:1"),
        };
        for m in r.methods {
            let body = match (m.as_str(), r.id) {
                ("POST", RouteId::EntityPost) => Some(r#"{"key":"sec:2","x":1}"#),
                ("POST", RouteId::ConfigSet) => Some(r#"{"logging":{"level":"debug"}}"#),
                ("POST", RouteId::ChangefeedRetention) => Some(r#"{"before_sequence":0}"#),
                ("POST", RouteId::Query) => Some(r#"{"table":"sec"}"#),
                ("POST", _) => Some(r#"{"table":"sec","column":"x"}"#),
                ("PUT", _) => Some(r#"{"x":1}"#),
                _ => None,
            };
            out.push((r.id, r.role, m.as_str(), path.clone(), body));
        }
    }
    out
}

#[test]
fn every_route_answers_every_role_as_its_row_declares() {
    let dir = tempdir();
    // Unknown keys on every route: the failed-key limit (tested below) off.
    let yaml = keys_yaml("  auth_failure_limit: 0\n");
    let s = start_in(dir.path(), &with_config(dir.path(), &yaml));
    let bearer = |k: &str| format!("Bearer {k}");
    // Who calls, the headers it sends, and the role that gives it.
    type Caller<'a> = (&'a str, Vec<(&'a str, String)>, Role);
    let callers: Vec<Caller> = vec![
        ("no key", vec![], Role::Public),
        (
            "unknown key",
            vec![("Authorization", bearer("not-a-key-0123456789"))],
            Role::Public,
        ),
        (
            "basic auth",
            vec![("Authorization", format!("Basic {READ}"))],
            Role::Public,
        ),
        (
            "readonly",
            vec![("Authorization", bearer(READ))],
            Role::Read,
        ),
        (
            "readwrite",
            vec![("X-API-Key", WRITE.to_string())],
            Role::Write,
        ),
        (
            "admin",
            vec![("authorization", format!("bearer {ADMIN}"))],
            Role::Admin,
        ),
        (
            "admin by X-API-Key",
            vec![("x-api-key", ADMIN.to_string())],
            Role::Admin,
        ),
    ];
    let mut c = s.client();
    let mut checked = 0;
    for (id, role, method, path, body) in requests() {
        for (who, header, has) in &callers {
            let headers: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = c.request_with(method, &path, &headers, body);
            let what = format!(
                "{who}: {method} {path} ({id:?}, needs {role:?}) -> {}",
                r.status
            );
            if role == Role::Public {
                assert!(![401, 403].contains(&r.status), "{what}");
            } else if *has == Role::Public {
                assert_eq!(r.status, 401, "{what}");
                assert_eq!(
                    r.header("WWW-Authenticate"),
                    Some(r#"Bearer realm="themis""#),
                    "{what}"
                );
                if method != "HEAD" {
                    assert_eq!(r.json()["code"], "unauthorized", "{what}");
                }
            } else if *has < role {
                assert_eq!(r.status, 403, "{what}");
                if method != "HEAD" {
                    assert_eq!(r.json()["code"], "forbidden", "{what}");
                }
            } else {
                assert!(
                    ![401, 403].contains(&r.status),
                    "{what}: {:?}",
                    String::from_utf8_lossy(&r.body)
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, requests().len() * callers.len());
    // Counted, and no key ever reached the log (debug level).
    let m = c.request_with("GET", "/metrics", &[("X-API-Key", READ)], None);
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert!(text.contains("themis_auth_unauthorized_total"), "{text}");
    let out = s.output();
    for k in [READ, WRITE, ADMIN, "not-a-key-0123456789"] {
        assert!(!out.contains(k), "a key is in the log");
    }
}

/// Waits until `f` holds (SIGHUP is applied by another thread).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn keys_change_with_post_config_and_sighup_without_a_restart() {
    let dir = tempdir();
    let only_admin =
        format!("server:\n  enable_auth: true\n  api_keys:\n    - {{key: {ADMIN}, role: admin}}\n");
    let s = start_in(dir.path(), &with_config(dir.path(), &only_admin));
    let read = [("Authorization", &*format!("Bearer {READ}"))];
    let admin = [("Authorization", &*format!("Bearer {ADMIN}"))];
    // One keep-alive connection throughout: a key is checked on every
    // request, so a connection cannot outlive its key.
    let mut c = s.client();
    assert_eq!(c.request_with("GET", "/stats", &read, None).status, 401);
    let patch = format!(
        r#"{{"server":{{"api_keys":[{{"key":"{ADMIN}","role":"admin"}},{{"key":"{READ}","role":"readonly"}}]}}}}"#
    );
    let r = c.request_with("POST", "/config", &admin, Some(&patch));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let shown = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !shown.contains(READ) && !shown.contains(ADMIN),
        "GET /config shows a key"
    );
    assert_eq!(c.request_with("GET", "/stats", &read, None).status, 200);
    assert_eq!(
        c.request_with("POST", "/config", &read, Some(&patch))
            .status,
        403
    );
    // SIGHUP re-reads the file, which has no readonly key.
    s.signal("HUP");
    eventually("the file's keys apply after SIGHUP", || {
        c.request_with("GET", "/stats", &read, None).status == 401
    });
    assert_eq!(c.request_with("GET", "/stats", &admin, None).status, 200);
    // Auth can be turned off at runtime too (by an admin).
    let r = c.request_with(
        "POST",
        "/config",
        &admin,
        Some(r#"{"server":{"enable_auth":false}}"#),
    );
    assert_eq!(r.status, 200);
    assert_eq!(c.request("GET", "/stats", None).status, 200);
    let out = s.output();
    assert!(
        !out.contains(READ) && !out.contains(ADMIN),
        "a key is in the log"
    );
    assert!(out.contains("server.api_keys = (2 entries)"), "{out}");
}

#[test]
fn a_key_limited_to_tables_sees_only_them() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &with_config(dir.path(), &keys_yaml("features: {cdc: true}\n")),
    );
    let admin = [("X-API-Key", ADMIN)];
    let lim = [("X-API-Key", LIMITED)];
    let two = [("X-API-Key", TWO_TABLES)];
    let mut c = s.client();
    for k in ["a:1", "b:1", "c:1"] {
        let r = c.request_with("PUT", &format!("/entities/{k}"), &admin, Some(r#"{"v":1}"#));
        assert_eq!(r.status, 201);
    }
    let st = |c: &mut Client, m: &str, p: &str, h: &[(&str, &str)], b: Option<&str>| {
        c.request_with(m, p, h, b).status
    };
    assert_eq!(st(&mut c, "GET", "/entities/a:1", &lim, None), 200);
    assert_eq!(st(&mut c, "GET", "/entities/b:1", &lim, None), 403);
    assert_eq!(
        st(&mut c, "GET", "/entities/%62:1", &lim, None),
        403,
        "decoded key"
    );
    assert_eq!(
        st(&mut c, "GET", "/entities/b%3A1", &lim, None),
        403,
        "decoded key"
    );
    assert_eq!(st(&mut c, "GET", "/entities/nokey", &lim, None), 400);
    assert_eq!(st(&mut c, "PUT", "/entities/b:2", &lim, Some("{}")), 403);
    assert_eq!(st(&mut c, "PUT", "/entities/a:2", &lim, Some("{}")), 201);
    assert_eq!(st(&mut c, "DELETE", "/entities/b:1", &lim, None), 403);
    assert_eq!(
        st(&mut c, "POST", "/entities", &lim, Some(r#"{"key":"b:3"}"#)),
        403
    );
    assert_eq!(
        st(
            &mut c,
            "POST",
            "/entities",
            &lim,
            Some(r#"{"key":"a:3","key":"b:3"}"#)
        ),
        400,
        "duplicate key fields"
    );
    assert_eq!(
        st(&mut c, "POST", "/entities", &lim, Some(r#"{"key":"a:3"}"#)),
        201
    );
    assert_eq!(
        st(&mut c, "POST", "/query", &lim, Some(r#"{"table":"b"}"#)),
        403
    );
    assert_eq!(
        st(&mut c, "POST", "/query", &lim, Some(r#"{"table":"a"}"#)),
        200
    );
    assert_eq!(st(&mut c, "GET", "/index/stats?table=b", &lim, None), 403);
    assert_eq!(st(&mut c, "GET", "/changefeed?table=b", &lim, None), 403);
    assert_eq!(st(&mut c, "GET", "/changefeed?t%61ble=b", &lim, None), 403);
    assert_eq!(st(&mut c, "GET", "/stats", &lim, None), 200);
    // Routes that act on every table need an unlimited key.
    assert_eq!(st(&mut c, "GET", "/config", &lim, None), 403);
    // The change feed is filtered to the key's table.
    let r = c.request_with("GET", "/changefeed", &lim, None);
    assert_eq!(r.status, 200);
    let events = r.json()["events"].as_array().cloned().unwrap();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e["key"].as_str().unwrap().starts_with("a:")),
        "{events:?}"
    );
    let all = c.request_with("GET", "/changefeed", &admin, None).json();
    assert!(all["events"].as_array().unwrap().len() > events.len());
    // With several tables, the request names one.
    assert_eq!(st(&mut c, "GET", "/changefeed", &two, None), 403);
    assert_eq!(st(&mut c, "GET", "/changefeed?table=c", &two, None), 200);
    assert_eq!(st(&mut c, "GET", "/entities/c:1", &two, None), 200);
    assert_eq!(
        st(&mut c, "PUT", "/entities/c:1", &two, Some("{}")),
        403,
        "readonly"
    );
}

#[test]
fn bodies_must_be_json_and_hosts_may_be_listed() {
    let dir = tempdir();
    let yaml = "features: {cdc: true}\nserver: {allowed_hosts: [db.example, localhost:8765]}\n";
    let s = start_in(dir.path(), &with_config(dir.path(), yaml));
    let host = [("Host", "db.example")];
    let mut c = s.client();
    assert_eq!(
        c.request_with("PUT", "/entities/t:1", &host, Some("{}"))
            .status,
        201
    );
    // A "simple" cross-site request (form or text body) is refused before
    // it can delete the change history.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let body = r#"{"before_sequence":18446744073709551615}"#;
        c.send_raw(
            format!(
                "POST /changefeed/retention HTTP/1.1\r\nHost: db.example\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response(false);
        assert_eq!(r.status, 415, "{ct}");
        assert_eq!(r.json()["code"], "unsupported_media_type");
    }
    c.send_raw(b"PUT /entities/t:2 HTTP/1.1\r\nHost: db.example\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(c.read_response(false).status, 415, "no Content-Type");
    c.send_raw(b"PUT /entities/t:2 HTTP/1.1\r\nHost: db.example\r\nContent-Type: Application/JSON; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(c.read_response(false).status, 201);
    let feed = c.request_with("GET", "/changefeed", &host, None).json();
    assert_eq!(feed["count"], 2, "{feed}");
    // Hosts: listed names (any port) and listed name:port only.
    for (h, want) in [
        ("db.example", 200),
        ("DB.EXAMPLE:8080", 200),
        ("localhost:8765", 200),
        ("localhost:9999", 421),
        ("evil.example", 421),
    ] {
        let r = c.request_with("GET", "/stats", &[("Host", h)], None);
        assert_eq!(r.status, want, "{h}");
    }
    assert_eq!(
        c.request_with("GET", "/health", &[("Host", "10.0.0.1:8765")], None)
            .status,
        200
    );
}

#[test]
fn metrics_can_be_public_and_validate_warns_about_open_servers() {
    let dir = tempdir();
    let s = start_in(
        dir.path(),
        &with_config(dir.path(), &keys_yaml("  metrics_public: true\n")),
    );
    assert_eq!(s.request("GET", "/metrics", None).status, 200);
    assert_eq!(s.request("GET", "/stats", None).status, 401);
    assert_eq!(s.request("GET", "/health", None).status, 200);
    drop(s);
    // Without a config file (defaults: auth off).
    let bare = tempdir();
    let out = output_within(
        command(bare.path()).args(["--validate", "--host", "0.0.0.0", "--port", "0"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("! server.host = 0.0.0.0"), "{text}");
    let out = output_within(
        command(bare.path()).args(["--validate", "--port", "0"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("! server.host"), "{text}");
}

/// A connection remembers what its key resolved to (`http::auth::KeyCache`),
/// tagged with the keys' generation: a key revoked or changed while a
/// keep-alive connection uses it takes effect on that connection's very
/// next request.
#[test]
fn a_revoked_key_is_refused_on_an_open_keep_alive_connection() {
    let dir = tempdir();
    let yaml = format!(
        "server:\n  enable_auth: true\n  auth_failure_limit: 0\n  api_keys:\n    - {{key: {ADMIN}, role: admin}}\n    - {{key: {READ}, role: readonly}}\n"
    );
    let s = start_in(dir.path(), &with_config(dir.path(), &yaml));
    let read = [("Authorization", &*format!("Bearer {READ}"))];
    let admin = [("X-API-Key", ADMIN)];
    let mut c = s.client();
    let me = c.stream.local_addr().unwrap();
    for _ in 0..5 {
        assert_eq!(c.request_with("GET", "/stats", &read, None).status, 200);
    }
    assert_eq!(c.request_with("GET", "/config", &read, None).status, 403);
    // Another connection revokes the key.
    let mut ops = s.client();
    let only_admin = format!(r#"{{"server":{{"api_keys":[{{"key":"{ADMIN}","role":"admin"}}]}}}}"#);
    let r = ops.request_with("POST", "/config", &admin, Some(&only_admin));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let r = c.request_with("GET", "/stats", &read, None);
    assert_eq!(r.status, 401, "revoked, on the same connection");
    assert_eq!(r.json()["code"], "unauthorized");
    assert_eq!(c.request_with("GET", "/stats", &read, None).status, 401);
    // Given back with another role: the new role applies at once too.
    let as_admin = format!(
        r#"{{"server":{{"api_keys":[{{"key":"{ADMIN}","role":"admin"}},{{"key":"{READ}","role":"admin"}}]}}}}"#
    );
    assert_eq!(
        ops.request_with("POST", "/config", &admin, Some(&as_admin))
            .status,
        200
    );
    assert_eq!(c.request_with("GET", "/config", &read, None).status, 200);
    assert_eq!(c.request_with("GET", "/stats", &read, None).status, 200);
    // Any change of settings is a new generation; the answer stays right.
    assert_eq!(
        ops.request_with(
            "POST",
            "/config",
            &admin,
            Some(r#"{"logging":{"level":"debug"}}"#)
        )
        .status,
        200
    );
    assert_eq!(c.request_with("GET", "/config", &read, None).status, 200);
    // Switching keys on one connection works both ways.
    assert_eq!(c.request_with("GET", "/config", &admin, None).status, 200);
    assert_eq!(
        c.request_with(
            "GET",
            "/stats",
            &[("X-API-Key", "not-a-key-0123456789")],
            None
        )
        .status,
        401
    );
    assert_eq!(c.request_with("GET", "/stats", &read, None).status, 200);
    assert_eq!(
        c.stream.local_addr().unwrap(),
        me,
        "one connection throughout"
    );
}

fn metric(c: &mut Client, name: &str) -> u64 {
    let text = String::from_utf8_lossy(&c.request("GET", "/metrics", None).body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[test]
fn failed_keys_from_one_address_are_refused_429_for_a_while() {
    let dir = tempdir();
    let limits = "  metrics_public: true\n  auth_failure_limit: 3\n  auth_failure_window_s: 3600\n  auth_lockout_s: 3600\n";
    let s = start_in(dir.path(), &with_config(dir.path(), &keys_yaml(limits)));
    let read = [("X-API-Key", READ)];
    let bad = [("Authorization", "Bearer not-a-key-0123456789")];
    let mut c = s.client();
    // Neither a missing key nor a valid key with too small a role counts.
    for _ in 0..10 {
        assert_eq!(c.request("GET", "/stats", None).status, 401);
        assert_eq!(c.request_with("GET", "/config", &read, None).status, 403);
    }
    assert_eq!(c.request_with("GET", "/stats", &read, None).status, 200);
    // Three unknown keys: each refused 401; the third locks the address out.
    for _ in 0..3 {
        assert_eq!(c.request_with("GET", "/stats", &bad, None).status, 401);
    }
    for (who, headers) in [
        ("unknown key", &bad[..]),
        ("valid key", &read[..]),
        ("no key", &[][..]),
    ] {
        let r = c.request_with("GET", "/stats", headers, None);
        assert_eq!(r.status, 429, "{who}");
        assert_eq!(r.json()["code"], "too_many_auth_failures", "{who}");
        let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
        assert!((1..=3600).contains(&retry), "{retry}");
        assert_eq!(r.json()["retry_after_s"], retry);
    }
    // A new connection from the address too; public routes stay open.
    let mut other = s.client();
    assert_eq!(other.request_with("GET", "/stats", &read, None).status, 429);
    assert_eq!(other.request("GET", "/health", None).status, 200);
    assert_eq!(metric(&mut other, "themis_auth_failures_total"), 3);
    assert_eq!(metric(&mut other, "themis_auth_lockouts_total"), 1);
    assert_eq!(metric(&mut other, "themis_auth_rate_limited_total"), 4);
    let out = s.wait_output(
        "too many failed API keys from 127.0.0.1",
        Duration::from_secs(10),
    );
    assert!(
        out.contains("too many failed API keys from 127.0.0.1"),
        "{out}"
    );
    assert!(!out.contains("not-a-key-0123456789"), "a key is in the log");
    // The limit is hot-reloadable: turned off by SIGHUP, the lockout ends.
    std::fs::write(
        dir.path().join("config.yaml"),
        keys_yaml("  metrics_public: true\n  auth_failure_limit: 0\n"),
    )
    .unwrap();
    s.signal("HUP");
    eventually("the limit is off after SIGHUP", || {
        c.request_with("GET", "/stats", &read, None).status == 200
    });
    for _ in 0..5 {
        assert_eq!(c.request_with("GET", "/stats", &bad, None).status, 401);
    }
    assert_eq!(c.request_with("GET", "/stats", &read, None).status, 200);
}
