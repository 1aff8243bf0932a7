//! `themis-vector-bench`: THEMIS's frozen-copy HNSW search in-process, on
//! Fashion-MNIST, without HTTP: what the search itself costs, apart from
//! a request's fixed cost (bench/vectors.sh measures through HTTP).
//!
//! Builds the graph as the server does (hnsw_rs, m 16, ef_construction
//! 200, parallel insert; dumped to and reloaded from `--work` so that
//! later runs skip the build), freezes it as the server does and, to
//! compare, with the layer-0 lists re-pruned (src/vector/prune.rs), and
//! optionally loads another library's graph (`--other-graph`: hnswlib's,
//! exported by bench/hnswlib_export.py) into the same search code. For
//! each ef it alternates rounds of every copy over the same queries on
//! one thread, and prints recall@10 against brute force, queries/s and
//! queries per CPU second (medians of the rounds; the CPU figure is the
//! thread's own time, which other processes on a shared machine disturb
//! far less) and distances computed per query.
//!
//!     themis-vector-bench --work /tmp/vb [--queries 500] [--efs 16,32,64]

use clap::Parser;
use flate2::read::GzDecoder;
use hnsw_rs::api::AnnT;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;
use themis::vector::distance::{l2_squared, Metric};
use themis::vector::frozen::{Frozen, Layout, Scratch};
use themis::vector::graph::{new_graph, Hnsw};
use themis::vector::VectorDef;

const DATA: &str = "/usr/share/datasets/fashion-mnist";

#[derive(Parser, Debug)]
struct Args {
    /// Where the graph dump is kept between runs.
    #[arg(long)]
    work: PathBuf,
    #[arg(long, default_value_t = 60_000)]
    base: usize,
    #[arg(long, default_value_t = 500)]
    queries: usize,
    #[arg(long, default_value = "1,16,32,64,128")]
    efs: String,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also search this graph (hnswlib's, exported by a script: n, entry,
    /// then per point: label, layer-0 links, upper layers' links, all as
    /// labels).
    #[arg(long)]
    other_graph: Option<PathBuf>,
    /// Leave out the copy with re-pruned lists.
    #[arg(long)]
    no_pruned: bool,
}

/// A graph exported from another library (see `Args::other_graph`).
fn other_graph(path: &PathBuf, base: &[f32], dim: usize) -> anyhow::Result<Frozen> {
    let raw = std::fs::read(path)?;
    let mut at = 0usize;
    let u32_at = |at: &mut usize| {
        let v = u32::from_le_bytes(raw[*at..*at + 4].try_into().unwrap_or([0; 4]));
        *at += 4;
        v
    };
    let u64_at = |at: &mut usize| {
        let v = u64::from_le_bytes(raw[*at..*at + 8].try_into().unwrap_or([0; 8]));
        *at += 8;
        v
    };
    let n = u64_at(&mut at) as usize;
    let entry = u64_at(&mut at) as u32;
    let mut level0 = vec![Vec::new(); n];
    let mut upper: Vec<HashMap<u32, Box<[u32]>>> = Vec::new();
    for _ in 0..n {
        let label = u64_at(&mut at) as usize;
        let deg = u32_at(&mut at);
        level0[label] = (0..deg).map(|_| u64_at(&mut at) as u32).collect();
        let levels = u32_at(&mut at) as usize;
        if upper.len() < levels {
            upper.resize(levels, HashMap::new());
        }
        for layer in upper.iter_mut().take(levels) {
            let deg = u32_at(&mut at);
            let list: Box<[u32]> = (0..deg).map(|_| u64_at(&mut at) as u32).collect();
            layer.insert(label as u32, list);
        }
    }
    let vectors: Vec<Vec<f32>> = (0..n)
        .map(|i| base[i * dim..(i + 1) * dim].to_vec())
        .collect();
    Ok(Frozen::from_lists(
        Metric::L2,
        &vectors,
        &level0,
        upper,
        entry,
    ))
}

/// An IDX image file as f32 rows.
fn images(path: &str) -> anyhow::Result<(usize, Vec<f32>)> {
    let mut raw = Vec::new();
    GzDecoder::new(std::fs::File::open(path)?).read_to_end(&mut raw)?;
    anyhow::ensure!(
        raw.len() > 16 && raw[..4] == [0, 0, 8, 3],
        "{path}: not IDX"
    );
    let n = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
    Ok((n, raw[16..].iter().map(|&b| f32::from(b)).collect()))
}

/// This thread's CPU time in seconds (a figure that other processes on
/// the same CPU disturb far less than wall time).
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let dim = 784;
    let (n, base) = images(&format!("{DATA}/train-images-idx3-ubyte.gz"))?;
    let (nq, queries) = images(&format!("{DATA}/t10k-images-idx3-ubyte.gz"))?;
    let nb = a.base.min(n);
    let nq = a.queries.min(nq);
    let row = |v: &[f32], i: usize| -> Vec<f32> { v[i * dim..(i + 1) * dim].to_vec() };
    let queries: Vec<Vec<f32>> = (0..nq).map(|i| row(&queries, i)).collect();

    let t = Instant::now();
    let cache = a.work.join(format!("truth-{nb}-{nq}.json"));
    let cached: Option<Vec<Vec<usize>>> = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let truth: Vec<Vec<usize>> = if let Some(t) = cached {
        t
    } else {
        queries
            .iter()
            .map(|q| {
                let mut all: Vec<(f32, usize)> = (0..nb)
                    .map(|i| (l2_squared(q, &base[i * dim..(i + 1) * dim]), i))
                    .collect();
                all.select_nth_unstable_by(10, |x, y| x.0.total_cmp(&y.0));
                all[..10].sort_by(|x, y| x.0.total_cmp(&y.0));
                all[..10].iter().map(|x| x.1).collect()
            })
            .collect()
    };
    std::fs::create_dir_all(&a.work)?;
    std::fs::write(&cache, serde_json::to_vec(&truth)?)?;
    eprintln!("ground truth: {:.1}s", t.elapsed().as_secs_f64());

    let def = VectorDef::new(1, "fm", "embedding", dim, Metric::L2, 16, 200, 64);
    std::fs::create_dir_all(&a.work)?;
    let name = format!("fm-{nb}");
    let graph: Hnsw = if a.work.join(format!("{name}.hnsw.graph")).exists() {
        let io: &'static hnsw_rs::hnswio::HnswIo =
            Box::leak(Box::new(hnsw_rs::hnswio::HnswIo::new(&a.work, &name)));
        io.load_hnsw_with_dist(themis::vector::distance::GraphDistance(Metric::L2))?
    } else {
        let t = Instant::now();
        let g = new_graph(&def, nb);
        let items: Vec<(&[f32], usize)> = (0..nb)
            .map(|i| (&base[i * dim..(i + 1) * dim], i))
            .collect();
        g.parallel_insert_slice(&items);
        eprintln!("build: {:.1}s", t.elapsed().as_secs_f64());
        g.file_dump(&a.work, &name)?;
        g
    };

    let t = Instant::now();
    let plain = Frozen::of(&graph, Metric::L2, &mut Layout::default());
    eprintln!(
        "freeze, as the server does: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let mut layout = Layout::pruned();
    let t = Instant::now();
    let pruned = Frozen::of(&graph, Metric::L2, &mut layout);
    eprintln!("freeze, pruned: {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let _again = Frozen::of(&graph, Metric::L2, &mut layout);
    eprintln!(
        "freeze again, nothing changed: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    println!(
        "layer-0 links per point: hnsw_rs's {:.1}, pruned {:.1}",
        plain.links_per_point(),
        pruned.links_per_point()
    );

    let other = match &a.other_graph {
        Some(p) => Some(other_graph(p, &base, dim)?),
        None => None,
    };
    if let Some(o) = &other {
        println!(
            "other graph: layer-0 links per point {:.1}",
            o.links_per_point()
        );
    }
    println!("| ef | copy | recall@10 | q/s | q per CPU second | distances/query |");
    println!("| --- | --- | --- | ---: | ---: | ---: |");
    for ef in a.efs.split(',').map(str::parse::<usize>) {
        let ef = ef?;
        let k = if ef == 1 { 1 } else { 10 };
        let mut copies: Vec<(&str, &Frozen)> = vec![("hnsw_rs lists", &plain)];
        if !a.no_pruned {
            copies.push(("pruned", &pruned));
        }
        if let Some(o) = &other {
            copies.push(("other graph", o));
        }
        let mut rows = Vec::new();
        for (label, copy) in copies {
            rows.push((label, copy, Vec::new(), Vec::new(), 0.0, 0u64));
        }
        for _ in 0..a.rounds {
            for (_, copy, qps, cpu_qps, rec, dist) in rows.iter_mut() {
                let mut scratch = Scratch::default();
                let mut hits = 0usize;
                let t = Instant::now();
                let c = thread_cpu();
                let found: Vec<Vec<(usize, f32)>> = queries
                    .iter()
                    .map(|q| copy.search(q, k, ef, &mut scratch, |_| true))
                    .collect();
                cpu_qps.push(nq as f64 / (thread_cpu() - c));
                qps.push(nq as f64 / t.elapsed().as_secs_f64());
                for (f, t) in found.iter().zip(&truth) {
                    hits += f.iter().filter(|(id, _)| t[..k].contains(id)).count();
                }
                *rec = hits as f64 / (nq * k) as f64;
                *dist = scratch.distances / nq as u64;
            }
        }
        for (label, _, mut qps, mut cpu_qps, rec, dist) in rows {
            qps.sort_by(f64::total_cmp);
            cpu_qps.sort_by(f64::total_cmp);
            println!(
                "| {ef}{} | {label} | {rec:.4} | {:.0} | {:.0} | {dist} |",
                if k == 1 { " (k 1)" } else { "" },
                qps[qps.len() / 2],
                cpu_qps[cpu_qps.len() / 2]
            );
        }
    }
    Ok(())
}
