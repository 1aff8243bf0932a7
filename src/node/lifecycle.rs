//! The server's life: start-up (listeners, storage, the node, one pinned
//! executor per core, the meshes), signals (SIGTERM/SIGINT stop, SIGHUP
//! reloads), and shutdown.
//!
//! Shutdown (SIGTERM/SIGINT): a signal thread raises a flag; every core
//! stops accepting, lets in-flight requests finish and closes idle
//! connections; the cores wait for each other (a forwarded request may still
//! need its owner), close their channels and exit; the main thread then
//! flushes RocksDB and returns.

use super::{Core, Node};
use crate::config::{CliOverrides, Config};
use crate::mesh::{CallBatch, Mesh, MeshFaults, MeshOwner, ReplyBatch};
use crate::obs::counters::{bump, drop_one, CoreCounters};
use crate::runtime::{Runtime, RuntimeState};
use crate::storage::{Storage, StorageError};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use themis_io::listener::{
    bind_exclusive, bind_reuseport, refuse, resolve, BoundListener, ConnectionSlots,
};
use themis_io::{serve_connection, ConnectionLimits, ShutdownSignal};

/// What SIGHUP re-reads: the same file (or search) and flags as at start.
#[derive(Debug, Clone, Default)]
pub struct ReloadSource {
    pub explicit: Option<PathBuf>,
    pub cli: CliOverrides,
}

/// Test-only fault injection, from `THEMIS_TEST_FAULTS` (never set in
/// production): `forward_delay_ms=N` makes the callee of every cross-core
/// call wait N ms before serving it;
/// `peer_unavailable=1` makes every call a core serves for another answer
/// 503 (the error must reach the client as it is); `panic_path=/p` makes a
/// request for the unrouted path `/p` panic (the panic policy's test);
/// `event_time_offset_ms=N` shifts change-event timestamps (N may be
/// negative: events look older, for retention tests);
/// `retention_interval_ms=N` runs the background retention pass every N ms
/// instead of every minute; `refuse_start_build=N` makes the first N
/// index-build starts sent to another core fail as if timed out;
/// `fail_build_reads=1` makes every index build's table read fail;
/// `block_reactor_ms=N` makes a request for the unrouted path
/// `/__block_reactor` block its core's reactor for N ms (the stall
/// metric's test).
/// `fail_group_commit=1` makes every group commit fail;
/// `group_commit_delay_ms=N` holds each group commit N ms on its helper
/// thread before writing (a slow disk: groups gather, writes stay pending).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Delays and failures of cross-core calls.
    pub mesh: MeshFaults,
    /// A request for this (unrouted) path panics its core: the panic
    /// policy's test.
    pub panic_path: Option<String>,
    pub event_time_offset_ms: i64,
    pub retention_interval: Option<Duration>,
    /// How many more `StartBuild` calls to refuse.
    pub refuse_start_build: Arc<std::sync::atomic::AtomicU32>,
    pub fail_build_reads: bool,
    /// How often each core's semantic-cache sweeper runs.
    pub cache_sweep_interval: Option<Duration>,
    /// A request for `/__block_reactor` blocks its core this long.
    pub block_reactor: Option<Duration>,
    pub fail_group_commit: bool,
    pub group_commit_delay: Option<Duration>,
}

impl Faults {
    /// Whether to refuse this `StartBuild` (counts one down).
    pub fn take_start_build_refusal(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.refuse_start_build
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl Faults {
    pub fn from_env() -> Faults {
        let mut f = Faults::default();
        if let Ok(spec) = std::env::var("THEMIS_TEST_FAULTS") {
            for item in spec.split(',') {
                let item = item.trim();
                if let Some(ms) = item.strip_prefix("forward_delay_ms=") {
                    f.mesh.call_delay = ms.parse().ok().map(Duration::from_millis);
                } else if let Some(p) = item.strip_prefix("panic_path=") {
                    f.panic_path = Some(p.to_string());
                } else if item == "peer_unavailable=1" {
                    f.mesh.serve_unavailable = true;
                } else if let Some(ms) = item.strip_prefix("event_time_offset_ms=") {
                    f.event_time_offset_ms = ms.parse().unwrap_or(0);
                } else if let Some(ms) = item.strip_prefix("retention_interval_ms=") {
                    f.retention_interval = ms.parse().ok().map(Duration::from_millis);
                } else if let Some(n) = item.strip_prefix("refuse_start_build=") {
                    f.refuse_start_build = Arc::new(n.parse().unwrap_or(0).into());
                } else if let Some(ms) = item.strip_prefix("cache_sweep_ms=") {
                    f.cache_sweep_interval = ms.parse().ok().map(Duration::from_millis);
                } else if item == "fail_build_reads=1" {
                    f.fail_build_reads = true;
                } else if let Some(ms) = item.strip_prefix("block_reactor_ms=") {
                    f.block_reactor = ms.parse().ok().map(Duration::from_millis);
                } else if item == "fail_group_commit=1" {
                    f.fail_group_commit = true;
                } else if let Some(ms) = item.strip_prefix("group_commit_delay_ms=") {
                    f.group_commit_delay = ms.parse().ok().map(Duration::from_millis);
                }
            }
        }
        f
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("executor {shard} failed: {message}")]
    Executor { shard: usize, message: String },
    #[error("{0}")]
    Timeseries(String),
}

/// The CPUs this process may run on (its affinity mask, so taskset,
/// systemd CPUAffinity and container cpusets are respected).
pub fn usable_cpus() -> Vec<usize> {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if ids.is_empty() {
        (0..std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1))
            .collect()
    } else {
        ids
    }
}

/// Raises a resource's soft limit to its hard limit.
fn raise_soft_limit(resource: libc::__rlimit_resource_t) {
    // SAFETY: plain getrlimit/setrlimit on a stack value.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(resource, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(resource, &lim);
        }
    }
}

/// glommio registers memory with io_uring and needs RLIMIT_MEMLOCK; every
/// client connection and SSE subscriber is a file descriptor, and the
/// common soft limit of 1024 is far below what a server holds.
fn raise_limits() {
    raise_soft_limit(libc::RLIMIT_MEMLOCK);
    raise_soft_limit(libc::RLIMIT_NOFILE);
}

/// Keeps glibc's allocator from changing the memory map on the request
/// path. By default each malloc arena grows its heap a few pages at a time
/// with `mprotect` and gives freed top memory back at 128 KiB: under a
/// write load a core made ~1,250 `mprotect` calls a second. Each one takes
/// the process's `mmap_lock` for writing, so it waits for every other
/// thread's page fault in flight; with RocksDB's flush thread faulting on
/// the same CPU, the core blocked there for a scheduler tick (4 ms) at a
/// time (sched_switch traces of the reactor, open-loop PUT). Growing
/// arenas 16 MiB at a time, keeping up to 32 MiB free at their top, and
/// serving allocations up to 4 MiB from the heaps instead of fresh
/// mappings brings that to zero calls in a run. A `MALLOC_*_` environment
/// variable set by the operator wins.
fn tune_allocator() {
    let settings = [
        ("MALLOC_TOP_PAD_", libc::M_TOP_PAD, 16 << 20),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 32 << 20),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 4 << 20),
    ];
    for (env, param, value) in settings {
        if std::env::var_os(env).is_none() {
            // SAFETY: mallopt only sets allocator parameters; called before
            // any executor thread starts.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

struct Coordination {
    stop: AtomicBool,
    ready: AtomicUsize,
    /// Shards whose executor ended (or never started).
    exited: AtomicUsize,
    drained: AtomicUsize,
    shards: usize,
}

/// The panic policy: a panic anywhere aborts the whole process.
///
/// A core whose thread died would leave a half-alive server: its keys
/// answer 503 forever, `/health` stays green on the other cores, and
/// SIGTERM waits for it. Aborting instead lets the supervisor restart the
/// server (`Restart=on-failure` in the unit file, a Kubernetes restart),
/// and every acknowledged write is in the WAL, so nothing acknowledged is
/// lost.
fn install_panic_policy() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}; aborting (the supervisor restarts the server)");
        default(info);
        eprintln!("themis_server: panic; aborting the process (panic policy)");
        std::process::abort();
    }));
}

/// Runs the server until SIGTERM/SIGINT. Blocks the calling thread.
pub fn run(config: Config, reload: ReloadSource, faults: Faults) -> Result<(), ServerError> {
    install_panic_policy();
    tune_allocator();
    let cpus_avail = usable_cpus();
    let n = config.effective_threads(cpus_avail.len());
    let cpus: Vec<usize> = (0..n).map(|i| cpus_avail[i % cpus_avail.len()]).collect();
    if n > cpus_avail.len() {
        tracing::warn!(
            worker_threads = n,
            cpus = cpus_avail.len(),
            "more worker threads than usable CPUs: some cores run several executors"
        );
    }

    let addr_text = format!("{}:{}", config.server.host, config.server.port);
    let listen_err = |source| ServerError::Listen {
        addr: addr_text.clone(),
        source,
    };
    let tls = match crate::tls::TlsFiles::from_config(&config.server) {
        Some(files) => {
            let (state, cert) = crate::tls::TlsState::start(files)?;
            tracing::info!(
                subject = %cert.subject,
                expires = %cert.not_after,
                days_left = cert.days_left,
                mutual = config.server.tls_ca.is_some(),
                "TLS on: HTTPS only"
            );
            Some(state)
        }
        None => None,
    };
    let addr = resolve(&config.server.host, config.server.port).map_err(listen_err)?;
    let listeners = bind_reuseport(addr, n, config.server.listen_backlog).map_err(listen_err)?;
    let local = listeners[0].local_addr();
    // `server.shard_ports`: each core's own port, bound now so that a busy
    // one fails start-up like the shared port does.
    let mut own_listeners: Vec<Option<BoundListener>> = (0..n).map(|_| None).collect();
    if let Some(ports) = config.shard_ports(n).map_err(|why| ServerError::Listen {
        addr: addr_text.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    })? {
        for (slot, port) in own_listeners.iter_mut().zip(ports) {
            let at = std::net::SocketAddr::new(local.ip(), port);
            let bound = bind_exclusive(at, config.server.listen_backlog).map_err(|source| {
                ServerError::Listen {
                    addr: at.to_string(),
                    source,
                }
            })?;
            *slot = Some(bound);
        }
    }
    let ports = super::Ports {
        shared: local.port(),
        per_core: own_listeners
            .iter()
            .map(|l| l.as_ref().map(|l| l.local_addr().port()))
            .collect::<Option<Vec<u16>>>(),
    };

    let storage = Storage::open(&config.storage)?;
    // Before anything writes: a database of another on-disk format is
    // refused (an older one is converted only by themis-migrate).
    crate::storage::format::check_or_init(&storage)?;
    let changefeed = crate::changefeed::ChangeFeed::open(&storage, n, faults.event_time_offset_ms)?;
    let index = Arc::new(crate::index::Indexes::open(&storage)?);
    let vector = Arc::new(crate::vector::Vectors::open(&storage)?);
    let timeseries =
        crate::timeseries::Timeseries::open(&config, &storage).map_err(ServerError::Timeseries)?;
    raise_limits();

    let wal_archive =
        crate::backup::archive::WalArchive::new(config.storage.wal_archive_path.clone());
    let node = Arc::new(Node {
        counters: (0..n).map(|_| CoreCounters::default()).collect(),
        cpus: cpus.clone(),
        started: Instant::now(),
        last_scrape: Mutex::new((Instant::now(), 0)),
        runtime: RuntimeState::new(Runtime::from_config(&config)),
        storage,
        changefeed,
        index,
        vector,
        config,
        reload,
        faults: faults.clone(),
        failures: Default::default(),
        backup: Default::default(),
        wal_archive,
        tls,
        timeseries,
        ports,
        stalls: crate::obs::stalls::Stalls::new(n),
    });
    let coord = Arc::new(Coordination {
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        exited: AtomicUsize::new(0),
        drained: AtomicUsize::new(0),
        shards: n,
    });
    spawn_signal_thread(coord.clone(), node.clone());

    let spans_tx = if node.config.tracing.enabled {
        match crate::obs::otlp::Endpoint::parse(&node.config.tracing.otlp_endpoint) {
            Ok(ep) => {
                tracing::info!(endpoint = %ep.addr, "exporting request spans over OTLP/HTTP");
                Some(crate::obs::otlp::start(
                    node.config.tracing.service_name.clone(),
                    ep,
                ))
            }
            Err(e) => {
                tracing::error!("{e}; request spans are not exported");
                None
            }
        }
    } else {
        None
    };
    // Each message is a batch of calls or replies (`mesh::batch`): 1,024
    // of them queued towards one core is far more than one tick gathers.
    let requests = MeshBuilder::<CallBatch<Core>, _>::full(n, 1024);
    let replies = MeshBuilder::<ReplyBatch<Core>, _>::full(n, 1024);
    let mut handles = Vec::with_capacity(n);
    for (i, (listener, own_listener)) in listeners.into_iter().zip(own_listeners).enumerate() {
        let (node, coord) = (node.clone(), coord.clone());
        let (requests, replies, faults) = (requests.clone(), replies.clone(), faults.clone());
        let spans_tx = spans_tx.clone();
        // Dropped when the shard's future ends, or when its executor could
        // not be built and the closure is dropped unrun.
        let guard = ExitGuard(coord.clone());
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpus[i]))
            .name(&format!("themis-shard-{i}"))
            .io_memory(256 << 10)
            // Helper threads for work that must not block the reactor, one
            // per running slot of every lane (`node::blocking`), free to run
            // on any CPU rather than compete with their own executor.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(super::blocking::POOL_THREADS))
            .spawn(move || async move {
                let _guard = guard;
                core_main(CoreSetup {
                    id: i,
                    listener,
                    own_listener,
                    node,
                    coord,
                    requests,
                    replies,
                    faults,
                    spans_tx,
                })
                .await
            })
            .map_err(|e| ServerError::Executor {
                shard: i,
                message: e.to_string(),
            })?;
        handles.push(handle);
    }

    // Every core must join the mesh before any can serve; if one failed to
    // start, the others would wait forever, so give up loudly instead.
    let deadline = Instant::now() + Duration::from_secs(30);
    while coord.ready.load(Ordering::Acquire) < n {
        if coord.exited.load(Ordering::Acquire) > 0 || Instant::now() > deadline {
            let mut message = String::from("a shard did not start in time");
            if coord.exited.load(Ordering::Acquire) > 0 {
                message = String::from("a shard exited during start-up");
            }
            return Err(ServerError::Executor { shard: 0, message });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let shard_ports = node.ports.per_core.clone();
    tracing::info!(%local, shards = n, ?cpus, ?shard_ports, "THEMIS listening");
    match shard_ports {
        Some(p) => println!("THEMIS listening on {local} ({n} shards; shard ports {p:?})"),
        None => println!("THEMIS listening on {local} ({n} shards)"),
    }

    let mut failure = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure = Some(ServerError::Executor {
                    shard: i,
                    message: e,
                })
            }
            Err(e) => {
                failure = Some(ServerError::Executor {
                    shard: i,
                    message: e.to_string(),
                })
            }
        }
    }
    tracing::info!("all shards stopped; flushing storage");
    if failure.is_none() {
        node.changefeed.close(&node.storage)?;
    }
    node.storage.flush()?;
    // The last WAL bytes (and the file the flush retired) into the archive.
    if node.wal_archive.dir().is_some() {
        if let Err(e) = node.wal_archive.pass(node.storage.path()) {
            tracing::error!("final WAL archiving pass failed: {e}");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct ExitGuard(Arc<Coordination>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.exited.fetch_add(1, Ordering::AcqRel);
    }
}

/// SIGHUP: re-read the configuration and apply its hot-reloadable values,
/// exactly as `POST /config` would; restart-only changes are reported.
fn reload_from_file(node: &Node) {
    let src = &node.reload;
    match crate::config::load(src.explicit.as_deref(), &src.cli) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            match node.runtime.apply_reload(&loaded.config) {
                Ok(change) => {
                    if !change.restart_only.is_empty() {
                        tracing::warn!(
                            keys = ?change.restart_only,
                            "SIGHUP: restart-only settings changed in the file; they apply after a restart"
                        );
                    }
                    tracing::info!(changed = ?change.changed, "SIGHUP: configuration reloaded");
                }
                Err(errors) => {
                    tracing::error!("SIGHUP: configuration not reloaded: {}", errors.join("; "))
                }
            }
        }
        Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e}"),
    }
    if let Some(tls) = &node.tls {
        match tls.reload() {
            Ok(cert) => tracing::info!(
                subject = %cert.subject,
                expires = %cert.not_after,
                days_left = cert.days_left,
                "SIGHUP: TLS certificate and key reloaded; new handshakes use them"
            ),
            Err(e) => tracing::error!(
                "SIGHUP: TLS certificate or key refused, still serving the previous one: {e}"
            ),
        }
    }
}

fn spawn_signal_thread(coord: Arc<Coordination>, shared: Arc<Node>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return;
        }
    };
    std::thread::Builder::new()
        .name("themis-signals".into())
        .spawn(move || {
            let mut first_stop: Option<Instant> = None;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    reload_from_file(&shared);
                    shared.timeseries.reload_policies();
                    continue;
                }
                // A second stop signal means "now" — but only when it comes
                // a moment later: `timeout` and some supervisors deliver the
                // same SIGTERM twice (to the process and its group).
                if let Some(t) = first_stop {
                    if t.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                }
                first_stop.get_or_insert_with(Instant::now);
                if coord.stop.swap(true, Ordering::AcqRel) {
                    tracing::warn!(signal = sig, "second signal: exiting immediately");
                    std::process::exit(130);
                }
                tracing::info!(signal = sig, "shutting down: finishing in-flight requests");
                // A running verification is an in-flight request: stop it.
                shared.backup.cancel();
            }
        })
        .ok();
}

/// Everything one executor starts with.
struct CoreSetup {
    id: usize,
    listener: BoundListener,
    /// This core's own port (`server.shard_ports`).
    own_listener: Option<BoundListener>,
    node: Arc<Node>,
    coord: Arc<Coordination>,
    requests: MeshBuilder<CallBatch<Core>, glommio::channels::channel_mesh::Full>,
    replies: MeshBuilder<ReplyBatch<Core>, glommio::channels::channel_mesh::Full>,
    faults: Faults,
    spans_tx: Option<crossbeam_channel::Sender<Vec<crate::obs::otlp::SpanRecord>>>,
}

async fn core_main(setup: CoreSetup) -> Result<(), String> {
    let CoreSetup {
        id,
        listener,
        own_listener,
        node,
        coord,
        requests,
        replies,
        faults,
        spans_tx,
    } = setup;
    let n = coord.shards;
    let (req_tx, mut req_rx, rep_tx, mut rep_rx) = if n > 1 {
        let (qt, qr) = requests
            .join()
            .await
            .map_err(|e| format!("joining request mesh: {e}"))?;
        let (pt, pr) = replies
            .join()
            .await
            .map_err(|e| format!("joining reply mesh: {e}"))?;
        (Some(qt), Some(qr), Some(pt), Some(pr))
    } else {
        (None, None, None, None)
    };
    let core = Core::new(
        id,
        node.clone(),
        Mesh::new(id, n, req_tx, faults.mesh),
        spans_tx.map(|tx| crate::obs::otlp::CoreSpans::new(tx, id)),
    );
    if core.spans().is_some() {
        // Ship buffered spans at least every half second.
        let (core, coord) = (core.clone(), coord.clone());
        glommio::spawn_local(async move {
            while !coord.stop.load(Ordering::Acquire) {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                if let Some(s) = core.spans() {
                    s.flush();
                }
            }
            if let Some(s) = core.spans() {
                s.flush();
            }
        })
        .detach();
    }

    // Cross-core traffic: replies complete local waiters; calls from peers
    // run here and answer on the reply mesh.
    let peer_tasks = match (req_rx.as_mut(), rep_rx.as_mut(), rep_tx) {
        (Some(qr), Some(pr), Some(pt)) => crate::mesh::serve_peers(&core, qr, pr, pt),
        _ => Vec::new(),
    };

    let listener = listener.into_glommio();
    let own_listener = own_listener.map(BoundListener::into_glommio);
    let shutdown = ShutdownSignal::new();
    {
        let (coord, shutdown) = (coord.clone(), shutdown.clone());
        glommio::spawn_local(async move {
            while !coord.stop.load(Ordering::Acquire) {
                glommio::timer::sleep(Duration::from_millis(25)).await;
            }
            shutdown.fire();
        })
        .detach();
    }
    super::features::start(&core, &shutdown, &faults);
    let stall_threshold = Duration::from_millis(node.config.server.stall_threshold_ms);
    if !stall_threshold.is_zero() {
        let (node, shutdown) = (node.clone(), shutdown.clone());
        glommio::spawn_local(async move {
            node.stalls
                .core(id)
                .probe(id, stall_threshold, &shutdown)
                .await
        })
        .detach();
    }
    coord.ready.fetch_add(1, Ordering::AcqRel);

    let acceptor = Acceptor {
        core: core.clone(),
        limits: ConnectionLimits {
            max_body: node.config.max_body_bytes(),
            idle_timeout: Duration::from_millis(node.config.server.idle_timeout_ms),
            ..ConnectionLimits::default()
        },
        // This core's share of `server.max_connections`, for both its ports.
        slots: ConnectionSlots::per_core(node.config.server.max_connections, n),
        gate: glommio::sync::Gate::new(),
        tls: node.tls.as_ref().map(|t| Rc::new(t.local())),
        handshake_timeout: Duration::from_millis(node.config.server.tls_handshake_timeout_ms),
        shutdown,
    };
    futures_lite::future::zip(acceptor.accept_loop(&listener), async {
        if let Some(own) = &own_listener {
            acceptor.accept_loop(own).await;
        }
    })
    .await;
    drop(listener);
    drop(own_listener);
    let _ = acceptor.gate.close().await;

    // Calls from other cores may still need this core: wait until every
    // core has drained its connections.
    coord.drained.fetch_add(1, Ordering::AcqRel);
    while coord.drained.load(Ordering::Acquire) < n {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    core.mesh().close();
    for t in peer_tasks {
        t.await;
    }
    Ok(())
}

/// What a core's accept loops share: its connection slots and gate, the
/// connection limits, TLS. One core may accept on two listeners (the
/// shared port and, with `server.shard_ports`, its own); both serve
/// connections the same way.
struct Acceptor {
    core: Rc<Core>,
    limits: ConnectionLimits,
    slots: ConnectionSlots,
    gate: glommio::sync::Gate,
    tls: Option<Rc<crate::tls::LocalTls>>,
    handshake_timeout: Duration,
    shutdown: ShutdownSignal,
}

impl Acceptor {
    /// Accepts on `listener` until shutdown, serving each connection as a
    /// task of the gate.
    async fn accept_loop(&self, listener: &glommio::net::TcpListener) {
        let Acceptor {
            core,
            limits,
            slots,
            gate,
            tls,
            handshake_timeout,
            shutdown,
        } = self;
        let (id, limits, handshake_timeout) = (core.id(), *limits, *handshake_timeout);
        loop {
            let accept = async { Some(listener.accept().await) };
            let stop = async {
                shutdown.wait().await;
                None
            };
            match futures_lite::future::or(accept, stop).await {
                None => break,
                Some(Ok(stream)) => {
                    let Some(slot) = slots.try_acquire() else {
                        bump(&core.counters().connections_refused, 1);
                        refuse(stream, Duration::from_millis(200)).await;
                        continue;
                    };
                    // The request and write deadlines follow the current
                    // (hot-reloadable) `server.request_timeout_ms`.
                    let limits = ConnectionLimits {
                        request_timeout: core.request_timeout(),
                        write_timeout: core.request_timeout(),
                        ..limits
                    };
                    let (core, shutdown, tls) = (core.clone(), shutdown.clone(), tls.clone());
                    let spawned = gate.spawn(async move {
                        let counters = core.counters();
                        bump(&counters.connections_accepted, 1);
                        bump(&counters.connections_active, 1);
                        let _ = stream.set_nodelay(true);
                        let served = match (tls, &core.node().tls) {
                            (Some(local), Some(state)) => {
                                let peer = stream.peer_addr().ok();
                                let config = local.get(state);
                                match crate::tls::accept(config, stream, handshake_timeout).await {
                                    Ok(conn) => {
                                        bump(&counters.tls_handshakes, 1);
                                        serve_connection(conn, &*core, &limits, &shutdown).await
                                    }
                                    Err(why) => {
                                        bump(&counters.tls_handshake_failures, 1);
                                        crate::tls::log_refusal(core.id(), peer, &why);
                                        Ok(())
                                    }
                                }
                            }
                            _ => serve_connection(stream, &*core, &limits, &shutdown).await,
                        };
                        if let Err(e) = served {
                            tracing::debug!(shard = core.id(), "connection ended: {e}");
                        }
                        drop_one(&counters.connections_active);
                        drop(slot);
                    });
                    match spawned {
                        Ok(task) => {
                            task.detach();
                        }
                        Err(e) => tracing::warn!(shard = id, "cannot spawn connection task: {e}"),
                    }
                }
                Some(Err(e)) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(shard = id, "accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}
