//! `themis-cdc-bench`: change-feed figures that the request load generator
//! cannot take.
//!
//! * `latency`: N SSE subscribers, writes at a fixed rate; for every event
//!   each subscriber receives, the time from just before the PUT was sent
//!   to the moment the event arrived (write-to-subscriber latency).
//! * `idle`: opens N SSE subscribers that receive nothing and reports the
//!   server's resident memory before and after (what a held subscriber
//!   costs).
//!
//! Plain threads and blocking sockets: the figures are about the server,
//! and at these rates one thread per subscriber is no bottleneck.

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use themis_testkit::{Client, Sse};

#[derive(Parser, Debug)]
struct Args {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:8765")]
    addr: SocketAddr,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write-to-subscriber latency.
    Latency {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Writes per second (open loop).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of measured writes (after 1 s of warm-up).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Padding of each written document, bytes.
        #[arg(long, default_value_t = 256)]
        doc_size: usize,
    },
    /// Memory held by idle subscribers.
    Idle {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// The server's process id (to read its resident memory).
        #[arg(long)]
        pid: u32,
        /// Seconds to hold the subscribers before measuring.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
}

/// Opens an SSE stream and returns it once the response head arrived.
fn subscribe(addr: SocketAddr) -> std::io::Result<Sse> {
    let mut sse = Sse::open(addr, "heartbeat_ms=60000", None)?;
    match sse.try_status(Duration::from_secs(60)) {
        Some(200) => Ok(sse),
        _ => Err(std::io::Error::other(format!(
            "stream refused: {}",
            sse.head.as_deref().unwrap_or("no response")
        ))),
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Reads events; records `now - t` (µs) for every `"t":` found after
/// `"value":{` in an event's data.
fn receive(
    mut sse: Sse,
    start: Instant,
    stop: Arc<AtomicBool>,
    warmup_us: u64,
) -> (Histogram<u64>, u64) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(block) = sse.next(Duration::from_millis(200)) else {
            if sse.ended() {
                break;
            }
            continue;
        };
        let now = start.elapsed().as_micros() as u64;
        let Some(data) = block.data else {
            continue;
        };
        let Some(p) = data.find("\"value\":{\"t\":") else {
            continue;
        };
        let digits: String = data[p + 13..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(t) = digits.parse::<u64>() {
            n += 1;
            if t >= warmup_us {
                let _ = h.record(now.saturating_sub(t).max(1));
            }
        }
    }
    (h, n)
}

fn latency(addr: SocketAddr, subscribers: usize, rate: u64, duration: u64, doc_size: usize) {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let warmup_us = 1_000_000;
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let (stop, ready) = (stop.clone(), ready.clone());
            std::thread::spawn(move || {
                let r = subscribe(addr).expect("subscribe");
                ready.wait();
                receive(r, start, stop, warmup_us)
            })
        })
        .collect();
    ready.wait();
    // Open loop: the n-th write is due at n / rate; latency is measured from
    // the moment just before it is sent.
    let total = rate * (duration + 1);
    let pad = "x".repeat(doc_size);
    let mut conn = Client::connect(addr).expect("writer connect");
    let begin = start.elapsed();
    let mut late = 0u64;
    for i in 0..total {
        let due = begin + Duration::from_nanos(i * 1_000_000_000 / rate);
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(1) {
            late += 1;
        }
        let t = start.elapsed().as_micros() as u64;
        let body = format!("{{\"t\":{t},\"pad\":\"{pad}\"}}");
        let req = format!(
            "PUT /entities/cdcbench:{} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            i % 1000,
            body.len(),
            body
        );
        conn.send_raw(req.as_bytes());
        let st = conn.read_response(false).status;
        assert!(st < 300, "write failed: {st}");
    }
    let achieved = total as f64 / (start.elapsed() - begin).as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut received = 0;
    for r in readers {
        let (h, n) = r.join().expect("reader");
        merged.add(&h).expect("merge");
        received += n;
    }
    let q = |p: f64| merged.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "{{\"subscribers\":{subscribers},\"rate\":{rate},\"writes\":{total},\"late_writes\":{late},\"achieved_rate\":{achieved:.0},\"events_received\":{received},\"expected\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        total * subscribers as u64,
        q(0.5),
        q(0.99),
        q(0.999),
        merged.max() as f64 / 1000.0
    );
}

fn idle(addr: SocketAddr, subscribers: usize, pid: u32, hold: u64) {
    let before = rss_bytes(pid);
    let opened = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        match subscribe(addr) {
            Ok(r) => {
                held.push(r);
                opened.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("subscriber {} failed: {e}", held.len());
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(hold));
    let after = rss_bytes(pid);
    let n = opened.load(Ordering::Relaxed);
    let per = after.saturating_sub(before) / n.max(1) as u64;
    println!(
        "{{\"subscribers\":{n},\"rss_before_bytes\":{before},\"rss_after_bytes\":{after},\"bytes_per_subscriber\":{per}}}"
    );
    drop(held);
}

fn main() {
    let args = Args::parse();
    match args.cmd {
        Cmd::Latency {
            subscribers,
            rate,
            duration,
            doc_size,
        } => latency(args.addr, subscribers, rate, duration, doc_size),
        Cmd::Idle {
            subscribers,
            pid,
            hold,
        } => idle(args.addr, subscribers, pid, hold),
    }
}
