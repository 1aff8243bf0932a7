//! `themis-query-bench`: figures for indexed queries and full scans.
//!
//! * `load`: writes N entities `qb:<i>` with `{"grp": i % groups,
//!   "grp_copy": i % groups, "pad": …}` over pipelined connections (with
//!   N / groups entities per group, an equality query on `grp` returns that
//!   many rows).
//! * `run --mode indexed|scan|get`: closed loop over C connections for D
//!   seconds; `indexed` queries `grp = random group` (the index), `scan`
//!   the same on the unindexed `grp_copy` (a full scan), `get` fetches one
//!   random entity. Prints requests/s and latency percentiles as JSON.
//!
//! Plain threads and blocking sockets, one per connection.

use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use themis_testkit::Client;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8765")]
    addr: SocketAddr,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Indexed,
    Scan,
    Get,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    Load {
        #[arg(long, default_value_t = 1_000_000)]
        entities: u64,
        #[arg(long, default_value_t = 100_000)]
        groups: u64,
        #[arg(long, default_value_t = 16)]
        connections: u64,
        #[arg(long, default_value_t = 128)]
        pad: usize,
    },
    Run {
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 1_000_000)]
        entities: u64,
        #[arg(long, default_value_t = 100_000)]
        groups: u64,
    },
}

fn load(addr: SocketAddr, entities: u64, groups: u64, connections: u64, pad: usize) {
    let start = Instant::now();
    let pad = "x".repeat(pad);
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let pad = pad.clone();
            std::thread::spawn(move || {
                let mut conn = Client::connect(addr).expect("connect");
                let mine: Vec<u64> = (c..entities).step_by(connections as usize).collect();
                for chunk in mine.chunks(64) {
                    let mut out = Vec::new();
                    for i in chunk {
                        let g = i % groups;
                        let doc = format!(r#"{{"grp":{g},"grp_copy":{g},"pad":"{pad}"}}"#);
                        out.extend_from_slice(
                            format!(
                                "PUT /entities/qb:{i} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{doc}",
                                doc.len()
                            )
                            .as_bytes(),
                        );
                    }
                    conn.send_raw(&out);
                    for _ in chunk {
                        let st = conn.read_response(false).status;
                        assert!(st < 300, "PUT failed: {st}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("loader");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"entities\":{entities},\"groups\":{groups},\"seconds\":{secs:.1},\"puts_per_s\":{:.0}}}",
        entities as f64 / secs
    );
}

fn run(
    addr: SocketAddr,
    mode: Mode,
    connections: usize,
    duration: f64,
    entities: u64,
    groups: u64,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conn = Client::connect(addr).expect("connect");
                let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("hist");
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1);
                let mut rows = 0u64;
                let mut errors = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let req = match mode {
                        Mode::Get => format!("GET /entities/qb:{} HTTP/1.1\r\nHost: b\r\n\r\n", x % entities),
                        Mode::Indexed | Mode::Scan => {
                            let col = if matches!(mode, Mode::Indexed) { "grp" } else { "grp_copy" };
                            let q = format!(
                                r#"{{"table":"qb","predicates":[{{"column":"{col}","value":{}}}],"limit":100}}"#,
                                x % groups
                            );
                            format!(
                                "POST /query HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{q}",
                                q.len()
                            )
                        }
                    };
                    let t = Instant::now();
                    conn.send_raw(req.as_bytes());
                    let resp = conn.read_response(false);
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    if resp.status != 200 {
                        errors += 1;
                    } else if !matches!(mode, Mode::Get) {
                        // "count":N
                        let s = String::from_utf8_lossy(&resp.body);
                        if let Some(p) = s.find("\"count\":") {
                            let n: String = s[p + 8..].chars().take_while(char::is_ascii_digit).collect();
                            rows += n.parse::<u64>().unwrap_or(0);
                        }
                    }
                }
                (h, rows, errors)
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(duration));
    stop.store(true, Ordering::Relaxed);
    let mut merged = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("hist");
    let (mut rows, mut errors) = (0, 0);
    for h in handles {
        let (hist, r, e) = h.join().expect("worker");
        merged.add(&hist).expect("merge");
        rows += r;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = merged.len();
    let q = |p: f64| merged.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "{{\"mode\":\"{mode:?}\",\"connections\":{connections},\"requests\":{n},\"errors\":{errors},\"per_s\":{:.1},\"rows_per_request\":{:.2},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        n as f64 / secs,
        if n > 0 { rows as f64 / n as f64 } else { 0.0 },
        q(0.5),
        q(0.99),
        merged.max() as f64 / 1000.0
    );
}

fn main() {
    let a = Args::parse();
    match a.cmd {
        Cmd::Load {
            entities,
            groups,
            connections,
            pad,
        } => load(a.addr, entities, groups, connections, pad),
        Cmd::Run {
            mode,
            connections,
            duration,
            entities,
            groups,
        } => run(a.addr, mode, connections, duration, entities, groups),
    }
}
