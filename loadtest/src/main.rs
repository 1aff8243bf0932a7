//! `themis-loadtest`: the load generator THEMIS ships.
//!
//! Thread-per-core like the server: each client thread runs its own glommio
//! executor pinned to one CPU and drives its share of the keep-alive
//! connections. Latencies go into per-thread HDR histograms, merged at the
//! end. In open-loop mode each request has an intended send time on a fixed
//! schedule and its latency counts from that time, so a stalled server is
//! charged for the requests it delayed (no coordinated omission).

mod client;
mod report;
mod runner;
mod shards;
mod workload;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use workload::{KeyDist, LoopMode, Mix, Workload};

/// Drive a running THEMIS server over HTTP/1.1 and report throughput and
/// latency percentiles.
#[derive(Debug, Parser)]
#[command(name = "themis-loadtest", version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:8765")]
    url: String,
    /// Workload file (YAML); flags given explicitly override its fields.
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    #[arg(long, value_enum)]
    mix: Option<Mix>,
    /// Fraction of GETs for --mix mixed.
    #[arg(long)]
    read_ratio: Option<f64>,
    #[arg(long, value_enum)]
    mode: Option<LoopMode>,
    /// Requests per second, all connections together (open loop).
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, short = 'c')]
    connections: Option<usize>,
    /// Client threads (one pinned CPU each).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// CPUs to pin client threads to, e.g. "1,3" (default: the last CPUs).
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Requests in flight per connection (closed loop).
    #[arg(long)]
    pipeline: Option<usize>,
    /// Measured seconds.
    #[arg(long, short = 'd')]
    duration: Option<f64>,
    /// Unmeasured seconds before measuring.
    #[arg(long)]
    warmup: Option<f64>,
    /// Stop after this many measured requests.
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    #[arg(long)]
    keys: Option<u64>,
    #[arg(long, value_enum)]
    distribution: Option<KeyDist>,
    #[arg(long)]
    zipf_exponent: Option<f64>,
    /// Document size in bytes for PUT.
    #[arg(long)]
    doc_size: Option<usize>,
    #[arg(long)]
    table: Option<String>,
    /// Skip the preload phase.
    #[arg(long)]
    no_preload: bool,
    /// Send each key to the core that owns it: reads `GET /shards`, and
    /// with the server's `server.shard_ports` connects to each core's own
    /// port (each connection serves one core and draws only its keys).
    #[arg(long)]
    shard_aware: bool,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn build_workload(a: &Args) -> Result<Workload, String> {
    let mut w = match &a.file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Workload::default(),
    };
    macro_rules! set {
        ($field:ident, $arg:expr) => {
            if let Some(v) = $arg.clone() {
                w.$field = v;
            }
        };
    }
    set!(mix, a.mix);
    set!(read_ratio, a.read_ratio);
    set!(mode, a.mode);
    set!(rate, a.rate);
    set!(connections, a.connections);
    set!(threads, a.threads);
    set!(pipeline, a.pipeline);
    set!(duration_s, a.duration);
    set!(warmup_s, a.warmup);
    set!(requests, a.requests);
    set!(keys, a.keys);
    set!(distribution, a.distribution);
    set!(zipf_exponent, a.zipf_exponent);
    set!(doc_size, a.doc_size);
    set!(table, a.table);
    if a.no_preload {
        w.preload = false;
    }
    if a.shard_aware {
        w.shard_aware = true;
    }
    w.validate()?;
    Ok(w)
}

fn parse_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if url.starts_with("https://") {
        return Err("https is not supported by the load generator".into());
    }
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = (|| -> Result<(), String> {
        let w = build_workload(&args)?;
        let addr = parse_addr(&args.url)?;
        let map = if w.shard_aware {
            let map = shards::fetch(addr, &w.table, &w.key_prefix)?;
            if !map.own_ports {
                eprintln!(
                    "themis-loadtest: the server has no shard ports (server.shard_ports); \
                     keys still go to their owner's share of the connections, all on {addr}"
                );
            }
            if w.connections < map.shards {
                return Err(format!(
                    "--shard-aware needs at least one connection per core ({} cores)",
                    map.shards
                ));
            }
            Some(map)
        } else {
            None
        };
        let res = runner::run(&w, addr, map, args.cpus.clone())?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report::to_json(&w, &args.url, &res))
                    .unwrap_or_default()
            );
        } else {
            print!("{}", report::table(&w, &args.url, &res));
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("themis-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
