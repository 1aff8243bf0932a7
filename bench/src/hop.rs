//! The cost of one cross-core hop, as the server pays it.
//!
//! With N cores, (N−1)/N of all keyed requests are forwarded to their
//! owner over the mesh (`themis::mesh`). Where no many-core machine is at
//! hand, the scaling curve cannot be drawn, but what it depends on can be
//! measured: this program runs two glommio executors (pinned to CPUs 0 and
//! 1 when there are two), joins them with the same two channel meshes the
//! server uses, and has core 0 call core 1 with a call shaped like a
//! forwarded PUT (a key and a 1 KiB body, answered with a small value).
//!
//! It reports, for one call at a time (latency) and for 64 in flight
//! (throughput): nanoseconds per call (wall time over calls), the round
//! trip (that times the calls in flight), calls per second; from a
//! counting allocator, heap allocations and bytes per call on both cores
//! together (the body the caller owns is not counted: it is allocated
//! before the clock starts, as the connection's buffer would hold it); and
//! how many calls travelled in one channel message (the mesh batches the
//! calls made to one core in one reactor tick).
//!
//! Each phase prints one line of `name=value` fields, for scripts
//! (`bench/hop.sh` runs this binary against an older build's, alternating).
//!
//!     themis-hop-bench [--calls 200000] [--body 1024]

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use std::alloc::{GlobalAlloc, Layout, System};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use themis::mesh::{serve_peers, CallBatch, Mesh, MeshFaults, MeshOwner, ReplyBatch, Rpc, Served};

/// Counts every allocation made by the process.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A core's context: only its mesh endpoint.
struct Ctx {
    mesh: Mesh<Ctx>,
}

impl MeshOwner for Ctx {
    fn mesh(&self) -> &Mesh<Ctx> {
        &self.mesh
    }
}

/// Shaped like a forwarded PUT: the key and body travel, a small answer
/// comes back.
struct Put {
    key: String,
    body: Vec<u8>,
}

impl Rpc<Ctx> for Put {
    type Answer = usize;
    fn serve(self, _: &Rc<Ctx>) -> Served<usize> {
        Served::Now(Ok(self.key.len() + self.body.len()))
    }
}

struct Args {
    calls: u64,
    body: usize,
}

fn args() -> Args {
    let mut a = Args {
        calls: 200_000,
        body: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), v) {
            ("--calls", Some(v)) => a.calls = v,
            ("--body", Some(v)) => a.body = v as usize,
            _ => {
                eprintln!("usage: themis-hop-bench [--calls N] [--body BYTES]");
                std::process::exit(2);
            }
        }
    }
    a
}

fn main() {
    let a = args();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let requests = MeshBuilder::<CallBatch<Ctx>, _>::full(2, 1024);
    let replies = MeshBuilder::<ReplyBatch<Ctx>, _>::full(2, 1024);
    let mut handles = Vec::new();
    for id in 0..2usize {
        let (requests, replies) = (requests.clone(), replies.clone());
        let placement = if cpus >= 2 {
            Placement::Fixed(id)
        } else {
            Placement::Unbound
        };
        let (calls, body) = (a.calls, a.body);
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("hop-{id}"))
            .spawn(move || async move {
                let (req_tx, mut req_rx) = requests.join().await.expect("join requests");
                let (rep_tx, mut rep_rx) = replies.join().await.expect("join replies");
                let ctx = Rc::new(Ctx {
                    mesh: Mesh::new(id, 2, Some(req_tx), MeshFaults::default()),
                });
                let _tasks = serve_peers(&ctx, &mut req_rx, &mut rep_rx, rep_tx);
                if id == 0 {
                    run_caller(&ctx, calls, body).await;
                    DONE.store(true, Ordering::Release);
                } else {
                    // Serve until the caller is done.
                    while !DONE.load(Ordering::Acquire) {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
            .expect("executor");
        handles.push(h);
    }
    for h in handles {
        h.join().expect("join executor");
    }
}

async fn run_caller(ctx: &Rc<Ctx>, calls: u64, body: usize) {
    let timeout = Duration::from_secs(30);
    let bodies: Vec<Vec<u8>> = (0..64).map(|_| vec![b'x'; body]).collect();
    // Warm up, one at a time and 64 at once, so that the pools the mesh
    // reuses (envelopes, reply slots, batch vectors) reach their steady
    // size before the clock starts.
    for i in 0..10_000u64 {
        let put = Put {
            key: format!("t:{i}"),
            body: bodies[0].clone(),
        };
        ctx.mesh.call(1, put, timeout).await.expect("warm-up call");
    }
    for round in 0..100u64 {
        let calls = (0..64u64).map(|i| {
            let put = Put {
                key: format!("t:{round}:{i}"),
                body: bodies[0].clone(),
            };
            ctx.mesh.call(1, put, timeout)
        });
        for answer in futures::future::join_all(calls).await {
            answer.expect("warm-up call");
        }
    }
    println!("body {body} B, {calls} calls per phase, CPUs: core 0 -> core 1");
    for in_flight in [1u64, 64] {
        // The key and body each call carries, made before the clock starts
        // (a connection's buffers hold them; their copies are the hop's).
        let mut made: Vec<(String, Vec<u8>)> =
            (0..calls).map(|i| (format!("t:{i}"), Vec::new())).collect();
        for (i, m) in made.iter_mut().enumerate() {
            m.1 = bodies[i % 64].clone();
        }
        let start = Instant::now();
        let per = calls / in_flight;
        let mut made = made.into_iter();
        let mut lanes = Vec::new();
        for _ in 0..in_flight {
            let mine: Vec<(String, Vec<u8>)> = made.by_ref().take(per as usize).collect();
            let ctx = ctx.clone();
            lanes.push(async move {
                for (key, body) in mine {
                    ctx.mesh
                        .call(1, Put { key, body }, timeout)
                        .await
                        .expect("call");
                }
            });
        }
        // The lanes' own vectors were allocated above; only the calls count.
        let (a1, b1) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let sent_before = ctx.mesh.stats();
        futures::future::join_all(lanes).await;
        let elapsed = start.elapsed();
        let (a2, b2) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let n = per * in_flight;
        let allocs = (a2 - a1) as f64 / n as f64;
        let bytes = (b2 - b1) as f64 / n as f64;
        let sent = ctx.mesh.stats();
        let messages = sent.call_batches - sent_before.call_batches;
        let ns_per_call = elapsed.as_nanos() as f64 / n as f64;
        println!(
            "in_flight={in_flight} ns_per_call={ns_per_call:.0} round_trip_ns={:.0} calls_per_s={:.0} allocs_per_call={allocs:.3} bytes_per_call={bytes:.1} calls_per_message={:.2}",
            ns_per_call * in_flight as f64,
            n as f64 / elapsed.as_secs_f64(),
            (sent.calls - sent_before.calls) as f64 / messages.max(1) as f64,
        );
    }
}
