//! Runs a workload: spawns pinned client threads, each with its share of the
//! connections, preloads, warms up, measures, and merges the results.

use crate::client::Conn;
use crate::shards::ShardMap;
use crate::workload::{Generator, LoopMode, Op, Workload};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What one thread (and, merged, the whole run) measured.
pub struct Results {
    /// Latency in microseconds, per [`Op`].
    pub hist: Vec<Histogram<u64>>,
    /// Responses per op and status.
    pub statuses: Vec<BTreeMap<u16, u64>>,
    pub io_errors: u64,
    /// Measured wall time.
    pub elapsed: Duration,
    pub cpus: Vec<usize>,
}

impl Results {
    fn new() -> Results {
        Results {
            hist: Op::ALL
                .iter()
                .map(|_| {
                    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
                })
                .collect(),
            statuses: vec![BTreeMap::new(); Op::ALL.len()],
            io_errors: 0,
            elapsed: Duration::ZERO,
            cpus: Vec::new(),
        }
    }

    fn merge(&mut self, other: Results) {
        for (a, b) in self.hist.iter_mut().zip(other.hist.iter()) {
            let _ = a.add(b);
        }
        for (a, b) in self.statuses.iter_mut().zip(other.statuses) {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
        }
        self.io_errors += other.io_errors;
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    fn record(&mut self, op: Op, status: u16, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.hist[op.index()].record(us);
        *self.statuses[op.index()].entry(status).or_default() += 1;
    }
}

/// Coordination shared by all client threads.
struct Shared {
    w: Workload,
    addr: SocketAddr,
    /// `--shard-aware`: the server's key → core mapping.
    map: Option<ShardMap>,
    doc: Vec<u8>,
    total_conns: usize,
    preloaded: AtomicUsize,
    measure_start: OnceLock<Instant>,
    measured: AtomicU64,
}

/// Default client CPUs: the last `threads` CPUs of the affinity mask, so a
/// server started on the first CPUs does not share cores with the client.
fn client_cpus(threads: usize, explicit: Option<Vec<usize>>) -> Vec<Option<usize>> {
    if let Some(list) = explicit {
        return (0..threads)
            .map(|i| list.get(i % list.len().max(1)).copied())
            .collect();
    }
    let all: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if all.is_empty() {
        return vec![None; threads];
    }
    (0..threads)
        .map(|i| Some(all[(all.len() - 1 - (i % all.len())) % all.len()]))
        .collect()
}

pub fn run(
    w: &Workload,
    addr: SocketAddr,
    map: Option<ShardMap>,
    cpus: Option<Vec<usize>>,
) -> Result<Results, String> {
    let shared = Arc::new(Shared {
        w: w.clone(),
        addr,
        map,
        doc: w.document(),
        total_conns: w.connections,
        preloaded: AtomicUsize::new(0),
        measure_start: OnceLock::new(),
        measured: AtomicU64::new(0),
    });
    let placement = client_cpus(w.threads, cpus);
    let mut handles = Vec::new();
    let mut first_conn = 0;
    for (t, cpu) in placement.iter().enumerate() {
        let conns = w.connections / w.threads + usize::from(t < w.connections % w.threads);
        let shared = shared.clone();
        let place = match cpu {
            Some(c) => glommio::Placement::Fixed(*c),
            None => glommio::Placement::Unbound,
        };
        let start = first_conn;
        first_conn += conns;
        let h = glommio::LocalExecutorBuilder::new(place)
            .name(&format!("loadtest-{t}"))
            .io_memory(128 << 10)
            .spawn(move || async move { run_thread(shared, start, conns).await })
            .map_err(|e| format!("client thread {t}: {e}"))?;
        handles.push(h);
    }
    let mut total = Results::new();
    for h in handles {
        let r = h.join().map_err(|e| format!("client thread: {e}"))??;
        total.merge(r);
    }
    total.cpus = placement.into_iter().flatten().collect();
    Ok(total)
}

async fn run_thread(shared: Arc<Shared>, first: usize, conns: usize) -> Result<Results, String> {
    let results = Rc::new(RefCell::new(Results::new()));
    let mut tasks = Vec::new();
    for c in first..first + conns {
        let (shared, results) = (shared.clone(), results.clone());
        tasks.push(glommio::spawn_local(async move {
            drive(shared, c, results).await
        }));
    }
    let mut failure = None;
    for t in tasks {
        if let Err(e) = t.await {
            failure = Some(e);
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let r = Rc::try_unwrap(results)
        .map_err(|_| "results still shared".to_string())?
        .into_inner();
    Ok(r)
}

/// One connection: preload its share of the keys, wait for everyone, then
/// run the measured loop.
async fn drive(
    shared: Arc<Shared>,
    index: usize,
    results: Rc<RefCell<Results>>,
) -> Result<(), String> {
    let w = &shared.w;
    // Shard-aware: this connection serves one core, on that core's port.
    let (addr, core) = match &shared.map {
        Some(m) => (m.addrs[index % m.shards], Some(index % m.shards)),
        None => (shared.addr, None),
    };
    let mut conn = Conn::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    if w.preload {
        let mut key = index as u64;
        let mut pending = 0usize;
        while key < w.keys || pending > 0 {
            while pending < 16 && key < w.keys {
                conn.push_request(Op::Put, &w.table, &w.key_prefix, key, &shared.doc);
                key += shared.total_conns as u64;
                pending += 1;
            }
            conn.flush().await.map_err(|e| format!("preload: {e}"))?;
            let status = conn
                .read_status()
                .await
                .map_err(|e| format!("preload: {e}"))?;
            if !(200..300).contains(&status) {
                return Err(format!("preload PUT answered {status}"));
            }
            pending -= 1;
        }
    }
    if shared.preloaded.fetch_add(1, Ordering::AcqRel) + 1 == shared.total_conns {
        let _ = shared
            .measure_start
            .set(Instant::now() + Duration::from_secs_f64(w.warmup_s));
    }
    let measure_start = loop {
        if let Some(t) = shared.measure_start.get() {
            break *t;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    };
    let end = if w.duration_s > 0.0 {
        Some(measure_start + Duration::from_secs_f64(w.duration_s))
    } else {
        None
    };
    let mut gen = Generator::new(w, 0x5eed ^ (index as u64).wrapping_mul(0x9E37_79B9));
    let mut key_text = String::new();
    // The next key: any, or (shard-aware) one that this connection's core
    // owns, drawn from the same distribution by rejection.
    let mut next_key = |gen: &mut Generator| -> Result<u64, String> {
        let (Some(map), Some(core)) = (&shared.map, core) else {
            return Ok(gen.key());
        };
        for _ in 0..(1000 * map.shards) {
            let k = gen.key();
            key_text.clear();
            let _ = write!(key_text, "{}:{}{k}", w.table, w.key_prefix);
            if map.owner(key_text.as_bytes()) == core {
                return Ok(k);
            }
        }
        Err(format!("core {core} owns none of the {} keys", w.keys))
    };
    let quota_reached =
        |shared: &Shared| w.requests > 0 && shared.measured.load(Ordering::Relaxed) >= w.requests;
    let mut last = measure_start;

    match w.mode {
        LoopMode::Closed => {
            let mut inflight: VecDeque<(Op, Instant)> = VecDeque::with_capacity(w.pipeline);
            let mut stopping = false;
            loop {
                let now = Instant::now();
                if end.is_some_and(|e| now >= e) || quota_reached(&shared) {
                    stopping = true;
                }
                if !stopping {
                    while inflight.len() < w.pipeline {
                        let op = gen.op();
                        let key = next_key(&mut gen)?;
                        conn.push_request(op, &w.table, &w.key_prefix, key, &shared.doc);
                        inflight.push_back((op, Instant::now()));
                    }
                    if let Err(e) = conn.flush().await {
                        results.borrow_mut().io_errors += 1;
                        return Err(format!("write: {e}"));
                    }
                }
                let Some((op, sent)) = inflight.pop_front() else {
                    break;
                };
                let status = match conn.read_status().await {
                    Ok(s) => s,
                    Err(e) => {
                        results.borrow_mut().io_errors += 1;
                        return Err(format!("read: {e}"));
                    }
                };
                let done = Instant::now();
                if sent >= measure_start && end.is_none_or(|e| sent < e) {
                    results.borrow_mut().record(op, status, done - sent);
                    shared.measured.fetch_add(1, Ordering::Relaxed);
                    last = done;
                }
            }
        }
        LoopMode::Open => {
            let interval = Duration::from_secs_f64(shared.total_conns as f64 / w.rate as f64);
            // Stagger the connections over one interval.
            let offset = interval.mul_f64(index as f64 / shared.total_conns as f64);
            let mut intended =
                Instant::now().max(measure_start - Duration::from_secs_f64(w.warmup_s)) + offset;
            loop {
                if end.is_some_and(|e| intended >= e) || quota_reached(&shared) {
                    break;
                }
                let now = Instant::now();
                if intended > now {
                    glommio::timer::sleep(intended - now).await;
                }
                let op = gen.op();
                let key = next_key(&mut gen)?;
                conn.push_request(op, &w.table, &w.key_prefix, key, &shared.doc);
                if let Err(e) = conn.flush().await {
                    results.borrow_mut().io_errors += 1;
                    return Err(format!("write: {e}"));
                }
                let status = match conn.read_status().await {
                    Ok(s) => s,
                    Err(e) => {
                        results.borrow_mut().io_errors += 1;
                        return Err(format!("read: {e}"));
                    }
                };
                let done = Instant::now();
                if intended >= measure_start {
                    // Latency from the intended send time: queueing caused
                    // by a slow server is charged to it.
                    results.borrow_mut().record(op, status, done - intended);
                    shared.measured.fetch_add(1, Ordering::Relaxed);
                    last = done;
                }
                intended += interval;
            }
        }
    }
    let mut r = results.borrow_mut();
    r.elapsed = r.elapsed.max(last.saturating_duration_since(measure_start));
    Ok(())
}
