//! `themis-baseline`: the ceilings THEMIS is measured against.
//!
//! Same stack as the server (glommio executors pinned per core, one
//! SO_REUSEPORT listener each, the `themis-io` connection loop), with the
//! database taken away:
//!
//! * `--kind http`: every request is answered with a fixed 1 KiB JSON body —
//!   the ceiling of our network path.
//! * `--kind kv`: `GET /entities/{key}` is a RocksDB point read answered
//!   from the pinned slice, `PUT` a RocksDB put — the ceiling of a
//!   thread-per-core KV-over-HTTP, without THEMIS's ownership, forwarding,
//!   validation or counters.

use clap::Parser;
use std::rc::Rc;
use std::sync::Arc;
use themis_io::connection::ProtocolError;
use themis_io::listener::{bind_reuseport, resolve};
use themis_io::{
    serve_connection, ConnectionLimits, Handler, Method, Request, Response, ShutdownSignal,
    StreamOut,
};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_parser = ["http", "kv"])]
    kind: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8766)]
    port: u16,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin to (default: the first `threads` CPUs).
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// RocksDB directory for --kind kv.
    #[arg(long, default_value = "./baseline-data")]
    db: String,
    #[arg(long, default_value_t = 1024)]
    block_cache_mb: usize,
}

struct Fixed {
    body: Vec<u8>,
}

impl Handler for Fixed {
    type Stream = ();
    type Conn = ();
    async fn handle(
        &self,
        _conn: &mut (),
        _req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Option<()> {
        resp.json(200, &self.body);
        None
    }
    async fn stream(&self, _state: (), _out: &mut StreamOut<'_>) {}
    fn protocol_error(&self, _err: ProtocolError, resp: &mut Response<'_>) {
        resp.close_connection();
        resp.json(400, b"{\"error\":true}");
    }
}

struct Kv {
    db: Arc<rocksdb::DB>,
}

impl Handler for Kv {
    type Stream = ();
    type Conn = ();
    async fn stream(&self, _state: (), _out: &mut StreamOut<'_>) {}
    async fn handle(
        &self,
        _conn: &mut (),
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Option<()> {
        let Some(key) = req.path.strip_prefix("/entities/") else {
            resp.json(404, b"{\"error\":true}");
            return None;
        };
        match req.method {
            Method::Get => match self.db.get_pinned(key.as_bytes()) {
                Ok(Some(v)) => {
                    // Same body as THEMIS, written without an allocation.
                    let (head, mid) = (b"{\"key\":\"", b"\",\"entity\":");
                    let len = head.len() + key.len() + mid.len() + v.len() + 1;
                    resp.start(200, "application/json", len, &[]);
                    resp.body(head);
                    resp.body(key.as_bytes());
                    resp.body(mid);
                    resp.body(&v);
                    resp.body(b"}");
                }
                Ok(None) => resp.json(404, b"{\"error\":true}"),
                Err(_) => resp.json(500, b"{\"error\":true}"),
            },
            Method::Put => match self.db.put(key.as_bytes(), req.body) {
                Ok(()) => resp.json(200, b"{\"ok\":true}"),
                Err(_) => resp.json(500, b"{\"error\":true}"),
            },
            _ => resp.json(405, b"{\"error\":true}"),
        }
        None
    }
    fn protocol_error(&self, _err: ProtocolError, resp: &mut Response<'_>) {
        resp.close_connection();
        resp.json(400, b"{\"error\":true}");
    }
}

fn fixed_body() -> Vec<u8> {
    let head = br#"{"key":"bench:k1","entity":{"payload":""#;
    let tail = br#""}}"#;
    let mut b = head.to_vec();
    b.extend(std::iter::repeat_n(b'x', 1024 - 14));
    b.extend_from_slice(tail);
    b
}

async fn serve<H: Handler + 'static>(listener: themis_io::listener::BoundListener, handler: Rc<H>) {
    let listener = listener.into_glommio();
    let shutdown = ShutdownSignal::new();
    let limits = ConnectionLimits::default();
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let (h, sd) = (handler.clone(), shutdown.clone());
                glommio::spawn_local(async move {
                    let _ = stream.set_nodelay(true);
                    let _ = serve_connection(stream, &*h, &limits, &sd).await;
                })
                .detach();
            }
            Err(e) => {
                eprintln!("accept: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn main() -> Result<(), String> {
    let a = Args::parse();
    let cpus: Vec<usize> = match &a.cpus {
        Some(c) => c.clone(),
        None => core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect(),
    };
    if cpus.is_empty() {
        return Err("no CPUs".into());
    }
    let addr = resolve(&a.host, a.port).map_err(|e| e.to_string())?;
    let listeners =
        bind_reuseport(addr, a.threads, 1024).map_err(|e| format!("listen {addr}: {e}"))?;
    let db = if a.kind == "kv" {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let mut table = rocksdb::BlockBasedOptions::default();
        let cache = rocksdb::Cache::new_lru_cache(a.block_cache_mb << 20);
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        Some(Arc::new(
            rocksdb::DB::open(&opts, &a.db).map_err(|e| e.to_string())?,
        ))
    } else {
        None
    };
    let mut handles = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let db = db.clone();
        let cpu = cpus[i % cpus.len()];
        let h = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .io_memory(256 << 10)
            .spawn(move || async move {
                match db {
                    Some(db) => serve(l, Rc::new(Kv { db })).await,
                    None => serve(l, Rc::new(Fixed { body: fixed_body() })).await,
                }
            })
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }
    println!(
        "baseline {} listening on {addr} ({} threads, cpus {:?})",
        a.kind,
        a.threads,
        &cpus[..a.threads.min(cpus.len())]
    );
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
