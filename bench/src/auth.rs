//! What API-key auth adds to a request, in nanoseconds, measured on the
//! server's own code (issue 12's "auth on vs off ≤ 2 %").
//!
//! Wall-clock A/B runs of the whole server cannot resolve a cost of 1–2 %
//! on a shared 2-CPU machine (rounds swing ±5–20 %), so the cost is taken
//! apart instead, each part timed here in a tight loop on one core:
//!
//! * **parse**: `httparse` reading a keep-alive `GET /entities/b:1` with
//!   and without the `Authorization: Bearer <26-byte key>` line (what any
//!   client that sends a key costs the server, auth on or off);
//! * **guard**: `http::guard::admit` for that GET with auth off (no
//!   header) and with auth on (the key resolved from the connection's key
//!   cache, as every request after a connection's first is).
//!
//! Their sum is the added time per request; `bench/auth_cost.sh` divides
//! it by the time one GET takes the server (1 / its saturated req/s on
//! one core, measured in the same run) to give the cost as a share.
//! A tight loop runs with warm caches and trained branches, so this is
//! the cost's floor; the script also reports callgrind's instruction
//! counts of the same code inside the running server.
//!
//!     themis-auth-bench [--iterations 5000000] [--only parse-plain|parse-keyed|guard-off|guard-on]

use std::hint::black_box;
use std::time::Instant;
use themis::config::{ApiKey, ServerConfig};
use themis::http::auth::{AuthSettings, KeyCache};
use themis::http::dispatch::TABLE;
use themis::http::guard::{admit, Context, CoreGuard};
use themis::http::routes::Classified;
use themis::obs::counters::CoreCounters;
use themis_io::{Method, PeerIdentity, Request};

const KEY: &str = "bench-key-0123456789abcdef";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iterations: u64 = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    // `--only NAME` times one part, once (to count its instructions under
    // callgrind: run with two iteration counts and take the difference).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let reps = if only.is_some() { 1 } else { 5 };
    let skip = |name: &str| only.as_deref().is_some_and(|o| o != name);
    if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.into_iter().next()) {
        core_affinity::set_for_current(core);
    }

    let plain = b"GET /entities/b:1 HTTP/1.1\r\nHost: 127.0.0.1:8765\r\n\r\n".to_vec();
    let keyed = format!(
        "GET /entities/b:1 HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    )
    .into_bytes();
    let parse_plain = best_of(reps, iterations * u64::from(!skip("parse-plain")), || {
        parse(&plain)
    });
    let parse_keyed = best_of(reps, iterations * u64::from(!skip("parse-keyed")), || {
        parse(&keyed)
    });

    let off = AuthSettings::from_config(&ServerConfig::default());
    let on = AuthSettings::from_config(&ServerConfig {
        enable_auth: true,
        api_keys: vec![ApiKey {
            key: Some(KEY.into()),
            role: "readonly".into(),
            ..Default::default()
        }],
        ..ServerConfig::default()
    });
    let route = match TABLE.classify(Method::Get, "/entities/b:1") {
        Classified::Found(r) => r,
        _ => panic!("no route for GET /entities/b:1"),
    };
    let peer = PeerIdentity::from_addr(Some("127.0.0.1:40000".parse().expect("address")));
    // The requests live for the whole program: leaked once.
    let peer: &'static PeerIdentity = Box::leak(Box::new(peer));
    let bearer: &'static str = Box::leak(format!("Bearer {KEY}").into_boxed_str());
    let host = httparse::Header {
        name: "Host",
        value: b"127.0.0.1:8765",
    };
    let auth = httparse::Header {
        name: "Authorization",
        value: bearer.as_bytes(),
    };
    let headers_plain: &'static [httparse::Header<'static>] = Box::leak(Box::new([host]));
    let headers_keyed: &'static [httparse::Header<'static>] = Box::leak(Box::new([host, auth]));
    let request = |headers| Request {
        method: Method::Get,
        path: "/entities/b:1",
        query: "",
        headers,
        body: b"",
        peer,
    };
    let req_plain = request(headers_plain);
    let req_keyed = request(headers_keyed);
    let counters = CoreCounters::default();
    let guard = CoreGuard::default();
    let mut cache = KeyCache::default();
    let now = Instant::now();
    let mut run = |auth: &AuthSettings, req: &Request<'_>| {
        let cx = Context {
            counters: &counters,
            guard: &guard,
            keys: &mut cache,
            now,
            shard: 0,
        };
        let ok = admit(black_box(auth), route, black_box(req), cx).is_ok();
        assert!(ok, "the guard refused the benchmark's request");
    };
    let guard_off = best_of(reps, iterations * u64::from(!skip("guard-off")), || {
        run(&off, &req_plain)
    });
    let guard_on = best_of(reps, iterations * u64::from(!skip("guard-on")), || {
        run(&on, &req_keyed)
    });

    if let Some(o) = &only {
        let t = match o.as_str() {
            "parse-plain" => parse_plain,
            "parse-keyed" => parse_keyed,
            "guard-off" => guard_off,
            _ => guard_on,
        };
        println!("{o}: {t:.1} ns ({iterations} iterations, once)");
        return;
    }
    println!("iterations per measurement: {iterations} (best of 5)");
    println!("parse GET, no key header:      {parse_plain:7.1} ns");
    println!("parse GET, with the key header: {parse_keyed:7.1} ns");
    println!("guard, auth off:                {guard_off:7.1} ns");
    println!("guard, auth on (cached key):    {guard_on:7.1} ns");
    let header = parse_keyed - parse_plain;
    let check = guard_on - guard_off;
    println!("added by the key header:        {header:7.1} ns");
    println!("added by the auth check:        {check:7.1} ns");
    println!("AUTH_ADDED_NS {:.1}", header + check);
}

fn parse(buf: &[u8]) {
    // As the server parses (`themis_io::connection`: 64 headers at most).
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(black_box(buf));
    assert!(matches!(status, Ok(httparse::Status::Complete(_))));
    black_box(req.headers.len());
}

/// The best (lowest) mean time per call over `reps` runs of `n` calls.
fn best_of(reps: usize, n: u64, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / n.max(1) as f64);
    }
    best
}
