//! Printing results: a table for people, JSON for machines.

use crate::runner::Results;
use crate::workload::{Op, Workload};
use serde_json::{json, Value};
use std::fmt::Write;

const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
];

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn secs(r: &Results) -> f64 {
    r.elapsed.as_secs_f64().max(1e-9)
}

pub fn table(w: &Workload, url: &str, r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "themis-loadtest {url}{}  workload={} mix={:?} mode={:?}{} conns={} threads={} pipeline={} keys={} dist={:?} doc={}B  client cpus={:?}",
        if w.shard_aware { " (shard-aware)" } else { "" },
        w.name,
        w.mix,
        w.mode,
        if w.mode == crate::workload::LoopMode::Open { format!(" rate={}/s", w.rate) } else { String::new() },
        w.connections,
        w.threads,
        w.pipeline,
        w.keys,
        w.distribution,
        w.doc_size,
        r.cpus
    );
    let _ = writeln!(
        s,
        "{:<7} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}   statuses",
        "op",
        "count",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "non-2xx"
    );
    let mut total = 0u64;
    for op in Op::ALL {
        let h = &r.hist[op.index()];
        if h.is_empty() {
            continue;
        }
        total += h.len();
        let non2xx: u64 = r.statuses[op.index()]
            .iter()
            .filter(|(k, _)| !(200..300).contains(*k))
            .map(|(_, v)| v)
            .sum();
        let _ = write!(
            s,
            "{:<7} {:>10} {:>11.0}",
            op.name(),
            h.len(),
            h.len() as f64 / secs(r)
        );
        for (_, p) in PERCENTILES {
            let _ = write!(s, " {:>8.3}", ms(h.value_at_percentile(p)));
        }
        let _ = write!(s, " {:>8.3} {:>9}  ", ms(h.max()), non2xx);
        for (k, v) in &r.statuses[op.index()] {
            let _ = write!(s, " {k}:{v}");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "total   {total:>10} {:>11.0} req/s over {:.2}s, {} connection errors",
        total as f64 / secs(r),
        secs(r),
        r.io_errors
    );
    s
}

pub fn to_json(w: &Workload, url: &str, r: &Results) -> Value {
    let mut ops = serde_json::Map::new();
    let mut total = 0u64;
    for op in Op::ALL {
        let h = &r.hist[op.index()];
        if h.is_empty() {
            continue;
        }
        total += h.len();
        let mut lat = serde_json::Map::new();
        for (name, p) in PERCENTILES {
            lat.insert(format!("{name}_ms"), json!(ms(h.value_at_percentile(p))));
        }
        lat.insert("max_ms".into(), json!(ms(h.max())));
        lat.insert("mean_ms".into(), json!(h.mean() / 1000.0));
        let statuses: serde_json::Map<String, Value> = r.statuses[op.index()]
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        ops.insert(
            op.name().to_string(),
            json!({"count": h.len(), "throughput_rps": h.len() as f64 / secs(r), "latency": lat, "statuses": statuses}),
        );
    }
    json!({
        "url": url,
        "workload": w,
        "client_cpus": r.cpus,
        "elapsed_s": secs(r),
        "total": {"count": total, "throughput_rps": total as f64 / secs(r), "connection_errors": r.io_errors},
        "ops": ops,
    })
}
